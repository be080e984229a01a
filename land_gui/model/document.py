"""The document the app edits: a CT, its lung mask, the nodules placed on it, and what is shown.

Plain Python (no Qt, no VTK), so the whole editing logic is testable without a display and the
viewers and panels are thin: they call methods here and redraw when an event says what changed.
Every method either succeeds completely or raises (a :class:`~land_core.errors.LandError` with
the file and the problem for bad input) leaving the document exactly as it was. Every change
emits events on ``document.events.<kind>`` (see :data:`EVENT_TYPES`) after the state is consistent:

================  ===================================================================
``ct``            a new CT (and with it a new grid); details ``volume``
``lung_mask``     the lung mask changed; ``box`` is the changed sub-box (slices in array
                  order, ``[z, y, x]``) or None for the whole mask
``nodules``       ``action`` (added, changed, removed, reset; or flags, when only the
                  outside-the-lungs flags may have changed) and ``index``
``selection``     the selected nodule (``index``, or None)
``crosshair``     the crosshair moved; ``position`` in world mm and ``previous``
``window_level``  ``window`` and ``level`` in HU
``display``       a display setting (``name``, ``value``), e.g. the lung overlay opacity
``paths``         a file name changed (after open or save)
``modified``      the unsaved-changes flag flipped; ``modified``
``tool``          a tool setting changed: ``name`` ('tool', 'brush' or 'nodule_template')
                  and ``value``
================  ===================================================================

Editing: the lung mask is painted with strokes (:meth:`Document.begin_stroke`,
:meth:`Document.stroke_to`, :meth:`Document.end_stroke`) of the current brush
(:attr:`Document.brush`); each dab changes only its bounding box and the event names that box.
Every edit (a stroke, a nodule placed, moved or deleted, a fill-holes run) is recorded in
:attr:`Document.undo_stack` as one step; :meth:`Document.undo` and :meth:`Document.redo` walk it.
Undoing back to the state last saved clears the unsaved-changes flag again. Opening a file or a
new document clears the history.

Autosave: :meth:`Document.autosave` writes the lung mask, the nodules and where the CT came from
(never the CT) into a folder of its own under a root folder; :meth:`Document.restore_autosave`
opens such a folder again (see :mod:`land_gui.model.autosave`).

Geometry is in world millimetres (LPS, as :class:`~land_core.volume.Volume`); voxel indices
appear only in :meth:`Document.probe` (for the status bar) and in mask boxes.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np

from land_core.errors import ImageFileError, LandError, MaskError
from land_core.io import read_mask, read_volume, write_volume
from land_core.masks import edit
from land_core.masks.condition import texture_name
from land_core.masks.nodules import NoduleSpec, load_nodules, rasterize_nodule, save_nodules
from land_core.masks.nodules import rotation_matrix as nodule_rotation  # the frame rasterisation uses
from land_core.volume import Volume

from land_gui.model import autosave as autosaving
from land_gui.model.events import EmitterGroup
from land_gui.model.tools import TOOLS, BrushSettings, step_radius
from land_gui.model.undo import MaskChange, NoduleChange, UndoStack, UndoStep

EVENT_TYPES = ("ct", "lung_mask", "nodules", "selection", "crosshair", "window_level", "display", "paths",
               "modified", "tool")
PARTS = ("lung_mask", "nodules")

#: Named CT windows, (width, level) in HU.
WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    "lung": (1500.0, -600.0),
    "mediastinum": (400.0, 40.0),
    "bone": (1000.0, 400.0),
}
DEFAULT_MASK_OPACITY = 0.3
#: The template the app starts from: ``make_phantom(seed, PhantomConfig(size=..., spacing=...))``.
TEMPLATE_SIZE = 128
TEMPLATE_SPACING_MM = 2.0
#: The nodule a click with the nodule tool places, until the person chooses other values.
DEFAULT_NODULE = NoduleSpec((0.0, 0.0, 0.0), 8.0, 5)
#: How close (mm) to a nodule's surface a click still picks that nodule.
PICK_TOLERANCE_MM = 1.5

Box = tuple[slice, slice, slice]


@dataclass(frozen=True)
class Probe:
    """What lies under a world point: the nearest voxel, its CT value and its lung label."""

    position_mm: tuple[float, float, float]
    index_xyz: tuple[int, int, int]
    value: float
    lung_label: int


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False


def _case_nodules(info_path: Path) -> list[NoduleSpec]:
    """Nodule specs from a case's ``case.json`` (its nodule entries hold the NoduleSpec fields)."""
    try:
        doc = json.loads(info_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LandError(f"{info_path}: not a readable case description ({exc})") from None
    fields = {f.name for f in dataclasses.fields(NoduleSpec)}
    specs = []
    for i, entry in enumerate(doc.get("nodules", []) if isinstance(doc, dict) else []):
        try:
            specs.append(NoduleSpec.from_dict({k: v for k, v in entry.items() if k in fields}))
        except (MaskError, TypeError, AttributeError) as exc:
            raise LandError(f"{info_path}: nodule #{i + 1}: {exc}") from None
    return specs


def _replace_spec(spec: NoduleSpec, changes: dict, what: str) -> NoduleSpec:
    """``spec`` with ``changes``; a new diameter scales an ellipsoid's axes with it. MaskError if invalid."""
    changes = dict(changes)
    if "diameter_mm" in changes and spec.axes_mm is not None and "axes_mm" not in changes:
        factor = float(changes["diameter_mm"]) / spec.diameter_mm
        changes["axes_mm"] = tuple(a * factor for a in spec.axes_mm)
    try:
        return dataclasses.replace(spec, **changes)
    except TypeError as exc:
        raise MaskError(f"{what}: {exc}") from None


def _rotation_matrix(spec: NoduleSpec) -> np.ndarray:
    """World offsets ``@`` this matrix give offsets in the nodule's own (axis-aligned) frame."""
    return nodule_rotation(spec.orientation_deg)


@dataclass
class _Stroke:
    """A paint or erase stroke in progress."""

    recorder: edit.StrokeRecorder
    value: int
    gate: tuple[float, float] | None
    normal: tuple[float, float, float] | None
    version_before: int
    text: str
    last: np.ndarray | None = None
    changed: bool = False


class Document:
    """The state of one LAND Studio window; see the module docstring for its events."""

    def __init__(self) -> None:
        self.events = EmitterGroup(self, EVENT_TYPES)
        self._ct: Volume | None = None
        self._lung_mask: Volume | None = None
        self._nodules: list[NoduleSpec] = []
        self._selected: int | None = None
        self._crosshair = np.zeros(3)
        self._window, self._level = WINDOW_PRESETS["lung"]
        self._mask_opacity = DEFAULT_MASK_OPACITY
        self._mask_outline = False
        self._name = "Untitled"
        self._ct_path: Path | None = None
        self._lung_mask_path: Path | None = None
        self._nodules_path: Path | None = None
        # unsaved changes: each part has a version that every edit replaces and undo restores; the
        # part is saved while its version is the one last saved
        self._version_ids = itertools.count(1)
        self._versions = {part: 0 for part in PARTS}
        self._saved_versions = dict(self._versions)
        #: counts every change, so the autosave knows whether it is behind
        self._edit_count = 0
        # rasterised nodules on the CT grid, keyed by the (immutable-by-contract) spec object
        self._voxels: dict[int, tuple[NoduleSpec, tuple[Box, np.ndarray] | None]] = {}
        self._label_map: np.ndarray | None = None
        self.undo_stack = UndoStack()
        self._tool = "navigate"
        self._brush = BrushSettings()
        self._nodule_template = DEFAULT_NODULE
        self._stroke: _Stroke | None = None
        self._template_seed: int | None = None
        self._autosave_key = autosaving.new_key(self._name)

    # ------------------------------------------------------------------ state, read-only
    @property
    def ct(self) -> Volume | None:
        """The CT in HU (never modified by the document), or None before anything is opened."""
        return self._ct

    @property
    def lung_mask(self) -> Volume | None:
        """uint8 lung labels on the CT grid (0 background; 1, 2 lungs), or None without a CT."""
        return self._lung_mask

    @property
    def nodules(self) -> tuple[NoduleSpec, ...]:
        """Copies of the nodules; change them with :meth:`update_nodule` and friends."""
        return tuple(copy.copy(s) for s in self._nodules)

    def nodule(self, index: int) -> NoduleSpec:
        """A copy of nodule ``index``."""
        return copy.copy(self._nodules[self._check_index(index)])

    @property
    def n_nodules(self) -> int:
        return len(self._nodules)

    @property
    def selected_nodule(self) -> int | None:
        return self._selected

    @property
    def crosshair(self) -> np.ndarray:
        """The crosshair (the point all views pass through), world mm (x, y, z)."""
        return self._crosshair.copy()

    @property
    def window(self) -> float:
        return self._window

    @property
    def level(self) -> float:
        return self._level

    @property
    def mask_opacity(self) -> float:
        """Opacity of the lung-mask overlay in the slice views, 0..1."""
        return self._mask_opacity

    @property
    def mask_outline(self) -> bool:
        """Show the lung mask as its outline (True) or as a filled overlay (False)."""
        return self._mask_outline

    @property
    def name(self) -> str:
        """What the window title calls this document (the CT's file name, or the template)."""
        return self._name

    @property
    def ct_path(self) -> Path | None:
        return self._ct_path

    @property
    def lung_mask_path(self) -> Path | None:
        return self._lung_mask_path

    @property
    def nodules_path(self) -> Path | None:
        return self._nodules_path

    @property
    def modified(self) -> bool:
        """True while the lung mask or the nodule list holds changes not saved to a file."""
        return self.lung_mask_modified or self.nodules_modified

    @property
    def lung_mask_modified(self) -> bool:
        return self._versions["lung_mask"] != self._saved_versions["lung_mask"]

    @property
    def nodules_modified(self) -> bool:
        return self._versions["nodules"] != self._saved_versions["nodules"]

    @property
    def edit_count(self) -> int:
        """How many changes the document has seen (edits, undos, redos); the autosave compares it."""
        return self._edit_count

    @property
    def template_seed(self) -> int | None:
        """The seed of the template phantom this document started from, or None."""
        return self._template_seed

    @property
    def title(self) -> str:
        """The name with a ``*`` when there are unsaved changes."""
        return self._name + ("*" if self.modified else "")

    # ------------------------------------------------------------------ opening
    def load(
        self,
        ct: Volume,
        lung_mask: Volume | np.ndarray | None = None,
        nodules: Iterable[NoduleSpec] = (),
        *,
        name: str = "Untitled",
        ct_path: str | os.PathLike | None = None,
        lung_mask_path: str | os.PathLike | None = None,
        nodules_path: str | os.PathLike | None = None,
    ) -> None:
        """Replace the whole document with ``ct`` (and optionally its lung mask and nodules).

        The lung mask must be on the CT's grid (or be an array of its shape); without one the
        document starts with an empty mask. The crosshair goes to the CT's centre, the nodule
        selection is cleared and the document counts as saved.
        """
        if not isinstance(ct, Volume):
            raise LandError(f"a CT must be a Volume, got {type(ct).__name__}")
        ct.check_finite("the CT")
        mask = self._as_mask(lung_mask, ct)
        specs = [copy.copy(s) for s in nodules]
        for s in specs:
            if not isinstance(s, NoduleSpec):
                raise MaskError(f"nodules must be NoduleSpec objects, got {type(s).__name__}")
        # nothing can fail from here on
        self._stroke = None
        self._ct, self._lung_mask, self._nodules = ct, mask, specs
        self._voxels.clear()
        self._label_map = None
        self._selected = None
        self._name = name
        self._ct_path = Path(ct_path) if ct_path is not None else None
        self._lung_mask_path = Path(lung_mask_path) if lung_mask_path is not None else None
        self._nodules_path = Path(nodules_path) if nodules_path is not None else None
        centre = ct.index_to_world((np.asarray(ct.size_xyz) - 1) / 2.0)
        self._crosshair = self._snap(centre)
        was_modified = self.modified
        self._versions = {part: next(self._version_ids) for part in PARTS}
        self._saved_versions = dict(self._versions)
        self._edit_count += 1
        self._template_seed = None
        self._autosave_key = autosaving.new_key(name)
        self.undo_stack.clear()
        self.events.ct.emit(volume=ct)
        self.events.lung_mask.emit(box=None)
        self.events.nodules.emit(action="reset", index=None)
        self.events.selection.emit(index=None)
        self.events.crosshair.emit(position=self.crosshair, previous=None)
        self.events.paths.emit()
        if was_modified:
            self.events.modified.emit(modified=False)

    @staticmethod
    def _as_mask(mask: Volume | np.ndarray | None, ct: Volume, path: str | os.PathLike | None = None) -> Volume:
        where = f"{path}: " if path is not None else ""
        if mask is None:
            return ct.with_array(np.zeros(ct.shape, dtype=np.uint8))
        if isinstance(mask, Volume):
            if not ct.same_grid(mask):
                raise MaskError(f"{where}the lung mask ({mask.size_xyz} voxels, spacing {mask.spacing}) is not on "
                                f"the CT's grid ({ct.size_xyz} voxels, spacing {ct.spacing})")
            arr = mask.array
        else:
            arr = np.asarray(mask)
            if arr.shape != ct.shape:
                raise MaskError(f"{where}the lung mask has shape {arr.shape}, the CT {ct.shape}")
        if arr.dtype.kind == "f" and not np.all(np.mod(arr, 1) == 0):
            raise MaskError(f"{where}a lung mask holds whole-number labels, this one holds fractions")
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise MaskError(f"{where}lung labels must lie in 0..255 (0 background, 1 and 2 lungs), "
                            f"found {arr.min()}..{arr.max()}")
        return ct.with_array(np.ascontiguousarray(arr, dtype=np.uint8))

    def open_ct(self, path: str | os.PathLike) -> None:
        """Open a CT image file or DICOM folder as a new document (empty lung mask, no nodules)."""
        p = Path(path)
        ct = read_volume(p)
        self.load(ct, name=p.name, ct_path=p)

    def open_case(self, folder: str | os.PathLike) -> None:
        """Open a dataset case folder: ``ct.nii.gz``, plus ``lungs.nii.gz`` and ``case.json`` when there."""
        root = Path(folder)
        ct_file = root / "ct.nii.gz"
        if not ct_file.is_file():
            raise ImageFileError(root, "is not a case folder (it has no ct.nii.gz)")
        ct = read_volume(ct_file)
        lungs_file = root / "lungs.nii.gz"
        mask = read_mask(lungs_file, like=ct) if lungs_file.is_file() else None
        mask = self._as_mask(mask, ct, lungs_file)
        info = root / "case.json"
        specs = _case_nodules(info) if info.is_file() else []
        self.load(ct, mask, specs, name=root.name, ct_path=ct_file,
                  lung_mask_path=lungs_file if lungs_file.is_file() else None)

    def open_path(self, path: str | os.PathLike) -> None:
        """Open whatever ``path`` is: a case folder, a DICOM folder, a CT file or (onto the open CT) a
        nodule list (``.json``)."""
        p = Path(path)
        if p.is_dir() and (p / "ct.nii.gz").is_file():
            self.open_case(p)
        elif p.suffix.lower() == ".json":
            self.open_nodules(p)
        else:
            self.open_ct(p)

    def new_from_template(self, seed: int = 0) -> None:
        """Start from a procedural chest phantom (CT, lung mask and nodules) made from ``seed``."""
        try:
            from land_core.data.phantom import PhantomConfig, make_phantom
        except ImportError as exc:
            raise LandError(f"templates are not available in this installation ({exc})") from None
        phantom = make_phantom(int(seed), PhantomConfig(size=TEMPLATE_SIZE, spacing=TEMPLATE_SPACING_MM))
        lungs = phantom.lungs
        self.load(phantom.ct, lungs, list(phantom.nodule_specs), name=f"Template {seed}")
        self._template_seed = int(seed)

    def _require_ct(self, what: str) -> Volume:
        if self._ct is None:
            raise LandError(f"open a CT or a template first: {what} needs the CT's grid")
        return self._ct

    def open_lung_mask(self, path: str | os.PathLike) -> None:
        """Replace the lung mask with the label image at ``path`` (it must be on the CT's grid)."""
        ct = self._require_ct("a lung mask")
        p = Path(path)
        mask = self._as_mask(read_mask(p, like=ct), ct, p)
        self._stroke = None
        self._lung_mask = mask
        self._lung_mask_path = p
        self.undo_stack.clear()  # its mask edits belong to the mask just replaced
        was = self.modified
        self._versions["lung_mask"] = next(self._version_ids)
        self._edit_count += 1
        self.events.lung_mask.emit(box=None)
        self.events.nodules.emit(action="flags", index=None)  # the outside-lung flags may change
        self.events.paths.emit()
        self._mark_saved("lung_mask", was)

    def open_nodules(self, path: str | os.PathLike) -> None:
        """Replace the nodule list with the ``land-nodules/1`` JSON list at ``path``."""
        self._require_ct("a nodule list")
        p = Path(path)
        specs = load_nodules(p)
        self._nodules = specs
        self._voxels.clear()
        self._label_map = None
        self._nodules_path = p
        self.undo_stack.clear()  # its nodule edits belong to the list just replaced
        was = self.modified
        self._versions["nodules"] = next(self._version_ids)
        self._edit_count += 1
        self.events.nodules.emit(action="reset", index=None)
        self._select(None)
        self.events.paths.emit()
        self._mark_saved("nodules", was)

    # ------------------------------------------------------------------ saving
    def _check_target(self, path: Path) -> None:
        src = self._ct_path
        if src is None:
            return
        if _same_file(path, src) or (src.is_dir() and src.resolve() in path.resolve().parents):
            raise ImageFileError(path, f"is {'inside ' if src.is_dir() else ''}the CT this document was opened "
                                       "from; LAND Studio never overwrites the source CT, choose another name")

    def save_lung_mask(self, path: str | os.PathLike | None = None) -> Path:
        """Write the lung mask (uint8, on the CT's grid) to ``path`` or to the file it came from."""
        self._require_ct("saving a lung mask")
        target = Path(path) if path is not None else self._lung_mask_path
        if target is None:
            raise LandError("the lung mask has no file yet; choose a file name to save it to")
        self._check_target(target)
        assert self._lung_mask is not None
        write_volume(self._lung_mask, target)
        self._lung_mask_path = target
        self.events.paths.emit()
        self._mark_saved("lung_mask", self.modified)
        return target

    def save_nodules(self, path: str | os.PathLike | None = None) -> Path:
        """Write the nodule list as ``land-nodules/1`` JSON to ``path`` or to the file it came from."""
        target = Path(path) if path is not None else self._nodules_path
        if target is None:
            raise LandError("the nodule list has no file yet; choose a file name to save it to")
        self._check_target(target)
        try:
            save_nodules(target, self._nodules)
        except OSError as exc:
            raise ImageFileError(target, f"cannot be written ({exc.strerror or exc})") from None
        self._nodules_path = target
        self.events.paths.emit()
        self._mark_saved("nodules", self.modified)
        return target

    def suggested_path(self, kind: str) -> Path:
        """A file name to offer when saving ``kind`` ('lung_mask' or 'nodules') for the first time."""
        current = {"lung_mask": self._lung_mask_path, "nodules": self._nodules_path}[kind]
        if current is not None:
            return current
        ending = {"lung_mask": "_lungs.nii.gz", "nodules": "_nodules.json"}[kind]
        if self._ct_path is None:
            return Path.cwd() / (self._name.replace(" ", "_").lower() + ending)
        stem = self._ct_path.name
        for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
            if stem.lower().endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        return self._ct_path.parent / (stem + ending)

    # ------------------------------------------------------------------ versions (unsaved changes)
    def _emit_modified(self, was_modified: bool) -> None:
        if self.modified != was_modified:
            self.events.modified.emit(modified=self.modified)

    def _mark_saved(self, part: str, was_modified: bool) -> None:
        self._saved_versions[part] = self._versions[part]
        self._emit_modified(was_modified)

    def _new_version(self, part: str) -> tuple[int, int]:
        """Give ``part`` a fresh version (an edit); returns (before, after)."""
        before = self._versions[part]
        self._versions[part] = after = next(self._version_ids)
        self._edit_count += 1
        return before, after

    def _set_version(self, part: str, version: int) -> None:
        self._versions[part] = version
        self._edit_count += 1

    # ------------------------------------------------------------------ lung mask edits
    def _check_box(self, box: Box) -> Box:
        assert self._lung_mask is not None
        if len(box) != 3 or not all(isinstance(s, slice) and s.step in (None, 1) for s in box):
            raise MaskError(f"a mask box is three contiguous slices [z, y, x], got {box!r}")
        return tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, self._lung_mask.shape))  # type: ignore[return-value]

    def _mask_changed(self, box: Box | None, was_modified: bool) -> None:
        """Tell the views (``box``: what changed) and the nodule flags that the mask changed."""
        self.events.lung_mask.emit(box=box)
        self.events.nodules.emit(action="flags", index=None)
        self._emit_modified(was_modified)

    def edit_lung_mask(self, box: Box, values: np.ndarray | int, text: str = "Edit lung mask") -> np.ndarray:
        """Write ``values`` into the lung mask inside ``box`` (slices in array order ``[z, y, x]``).

        Returns the previous values of the box. The change is one undo step called ``text``; the
        event names the box, so views redraw only what it touches.
        """
        self._require_ct("editing the lung mask")
        self._finish_stroke()
        assert self._lung_mask is not None
        arr = self._lung_mask.array
        box = self._check_box(box)
        old = arr[box].copy()
        new = np.asarray(values)
        if new.ndim and new.shape != old.shape:
            raise MaskError(f"mask values of shape {new.shape} do not fit the box of shape {old.shape}")
        if new.size and (new.min() < 0 or new.max() > 255):
            raise MaskError(f"lung labels must lie in 0..255, got {new.min()}..{new.max()}")
        was = self.modified
        arr[box] = new
        atom = edit.UndoAtom.capture(box, old, arr[box])
        if atom is not None:
            self.undo_stack.record(MaskChange(atom, *self._new_version("lung_mask")), text)
        self._mask_changed(box, was)
        return old

    def _apply_mask_result(self, result: tuple[Box, np.ndarray] | None, text: str) -> bool:
        """Write an edit op's ``(box, new values)`` as one undo step; False when it changes nothing."""
        if result is None:
            return False
        box, new = result
        self.edit_lung_mask(box, new, text)
        return True

    def fill_holes(self) -> bool:
        """Fill the holes enclosed by each lung label (in 3D); one undo step. False if there were none."""
        self._require_ct("filling holes")
        self._finish_stroke()
        assert self._lung_mask is not None
        return self._apply_mask_result(edit.fill_holes(self._lung_mask.array), "Fill holes")

    def keep_largest_components(self, n: int = 2) -> bool:
        """Keep the ``n`` largest connected pieces of the lung mask (the two lungs) and clear the rest;
        one undo step. False when there was nothing else."""
        self._require_ct("keeping the largest components")
        self._finish_stroke()
        assert self._lung_mask is not None
        return self._apply_mask_result(edit.keep_largest_components(self._lung_mask.array, n),
                                       "Keep largest components")

    def set_lung_mask(self, mask: Volume | np.ndarray, text: str = "Replace lung mask") -> bool:
        """Replace the lung mask's values with ``mask`` (on the CT's grid) as one undo step, e.g. an
        automatic segmentation. Only the box that changes is stored. False when nothing changed."""
        ct = self._require_ct("replacing the lung mask")
        self._finish_stroke()
        new = self._as_mask(mask, ct).array
        assert self._lung_mask is not None
        changed = edit.bounding_box(new != self._lung_mask.array)
        if changed is None:
            return False
        return self._apply_mask_result((changed, new[changed]), text)

    # ------------------------------------------------------------------ brush strokes
    @property
    def stroke_active(self) -> bool:
        """True between :meth:`begin_stroke` and :meth:`end_stroke`."""
        return self._stroke is not None

    def begin_stroke(self, erase: bool = False, normal: Sequence[float] | None = None) -> None:
        """Start a paint (or, with ``erase``, erase) stroke with the current brush; ``normal`` is the
        world normal of the view's plane (a disc brush lies in it). Dabs follow with :meth:`stroke_to`;
        :meth:`end_stroke` records the whole stroke as one undo step."""
        self._require_ct("painting")
        self._finish_stroke()
        brush = self._brush
        if brush.shape == "disc" and normal is None:
            raise MaskError("a disc brush needs the normal of the view's plane")
        self._stroke = _Stroke(
            recorder=edit.StrokeRecorder(),
            value=0 if erase else brush.label,
            gate=None if erase else brush.gate,
            normal=None if normal is None else tuple(float(v) for v in normal),
            version_before=self._versions["lung_mask"],
            text="Erase stroke" if erase else "Paint stroke",
        )

    def stroke_to(self, point_mm: Sequence[float]) -> Box | None:
        """Dab the brush at ``point_mm`` (world mm) and on the way from the previous dab, so a fast
        mouse move leaves no gaps. Returns the box that changed (also sent in the ``lung_mask``
        event), or None when nothing did."""
        stroke = self._stroke
        if stroke is None:
            raise LandError("stroke_to() needs a stroke: call begin_stroke() first")
        ct, mask = self._ct, self._lung_mask
        assert ct is not None and mask is not None
        point = np.asarray(point_mm, dtype=float).reshape(3)
        if not np.all(np.isfinite(point)):
            raise MaskError(f"a brush position must be finite, got {point.tolist()}")
        brush = self._brush
        step = max(brush.radius_mm * 0.5, min(ct.spacing) * 0.5)
        centres = edit.dab_path(stroke.last, point, step)
        stroke.last = point
        arr = mask.array
        changed: Box | None = None
        for centre in centres:
            dab = edit.brush_dab(mask, centre, brush.radius_mm, brush.shape, stroke.normal)
            if dab is None:
                continue
            old = edit.paint_dab(arr, dab, stroke.value, ct.array, stroke.gate)
            if old is not None:
                stroke.recorder.add(dab.box, old)
                changed = edit.union_box(changed, dab.box)
        if changed is None:
            return None
        was = self.modified
        if not stroke.changed:
            stroke.changed = True
            self._new_version("lung_mask")
        else:
            self._edit_count += 1
        self._mask_changed(changed, was)
        return changed

    def end_stroke(self) -> bool:
        """Finish the stroke: everything it changed becomes one undo step ("Paint stroke"). Returns
        True when it changed anything."""
        stroke, self._stroke = self._stroke, None
        if stroke is None or self._lung_mask is None:
            return False
        atom = stroke.recorder.finish(self._lung_mask.array)
        if atom is None:
            if stroke.changed:  # changed and changed back: the mask is as it was
                was = self.modified
                self._set_version("lung_mask", stroke.version_before)
                self._emit_modified(was)
            return False
        self.undo_stack.record(MaskChange(atom, stroke.version_before, self._versions["lung_mask"]), stroke.text)
        return True

    def _finish_stroke(self) -> None:
        if self._stroke is not None:
            self.end_stroke()

    # ------------------------------------------------------------------ tools
    @property
    def tool(self) -> str:
        """The active tool: 'navigate', 'paint', 'erase' or 'nodule' (see :mod:`land_gui.model.tools`)."""
        return self._tool

    def set_tool(self, tool: str) -> None:
        if tool not in TOOLS:
            raise ValueError(f"no tool {tool!r}; known: {', '.join(TOOLS)}")
        self._finish_stroke()
        if tool != self._tool:
            self._tool = tool
            self.events.tool.emit(name="tool", value=tool)

    @property
    def brush(self) -> BrushSettings:
        """The paint / erase brush (radius in mm, sphere or disc, label, HU gate)."""
        return self._brush

    def set_brush(self, **changes) -> BrushSettings:
        """Change brush settings (``radius_mm=8``, ``shape='disc'``, ``gate_enabled=True``...);
        invalid values raise MaskError and change nothing."""
        try:
            brush = dataclasses.replace(self._brush, **changes)
        except TypeError as exc:
            raise MaskError(f"brush: {exc}") from None
        if brush != self._brush:
            self._brush = brush
            self.events.tool.emit(name="brush", value=brush)
        return brush

    def resize_brush(self, steps: int) -> float:
        """Make the brush ``steps`` sizes bigger (or smaller when negative); returns the new radius."""
        return self.set_brush(radius_mm=step_radius(self._brush.radius_mm, int(steps))).radius_mm

    @property
    def nodule_template(self) -> NoduleSpec:
        """The nodule a click with the nodule tool places (its centre is where the click is)."""
        return copy.copy(self._nodule_template)

    def set_nodule_template(self, **changes) -> NoduleSpec:
        """Change the nodule the nodule tool places (``diameter_mm``, ``texture``, ``axes_mm``...)."""
        new = _replace_spec(self._nodule_template, changes, "new nodules")
        if new != self._nodule_template:
            self._nodule_template = new
            self.events.tool.emit(name="nodule_template", value=copy.copy(new))
        return copy.copy(new)

    def place_nodule(self, center_mm: Sequence[float]) -> int:
        """Add a nodule like :attr:`nodule_template` centred at ``center_mm`` and select it; returns
        its index. Each placed nodule gets its own shape seed, so lobulated ones differ."""
        self._require_ct("placing a nodule")
        seed = max((s.seed for s in self._nodules), default=-1) + 1
        spec = dataclasses.replace(self._nodule_template, center_mm=tuple(float(c) for c in center_mm), seed=seed)
        index = self.add_nodule(spec)
        self.select_nodule(index)
        return index

    def nodule_at(self, point_mm: Sequence[float], tolerance_mm: float = PICK_TOLERANCE_MM) -> int | None:
        """The nodule whose ellipsoid (grown by ``tolerance_mm``) holds ``point_mm``, the one with the
        nearest centre when several do; None when there is none."""
        point = np.asarray(point_mm, dtype=float)
        best, best_distance = None, np.inf
        for i, spec in enumerate(self._nodules):
            offset = point - np.asarray(spec.center_mm)
            local = offset @ _rotation_matrix(spec)
            semi = spec.semi_axes_mm + tolerance_mm
            if float(np.sum((local / semi) ** 2)) <= 1.0:
                distance = float(np.linalg.norm(offset))
                if distance < best_distance:
                    best, best_distance = i, distance
        return best

    # ------------------------------------------------------------------ undo / redo
    @contextlib.contextmanager
    def undo_group(self, text: str | None = None) -> Iterator[None]:
        """Make every edit inside the ``with`` block one undo step (``text``, or named after its
        first change, e.g. "Add nodule")."""
        self.undo_stack.begin_group(text)
        try:
            yield
        finally:
            self.undo_stack.end_group()

    def begin_undo_group(self, text: str | None = None) -> None:
        """Like :meth:`undo_group`, for edits that span several events (a mouse drag)."""
        self.undo_stack.begin_group(text)

    def end_undo_group(self) -> UndoStep | None:
        """Close the group :meth:`begin_undo_group` opened (nothing when an undo already closed it)."""
        return self.undo_stack.end_group() if self.undo_stack.in_group else None

    def _close_edits(self) -> None:
        """Finish a stroke or a drag still in progress, so it is a step of its own before undo / redo."""
        self._finish_stroke()
        while self.undo_stack.in_group:
            self.undo_stack.end_group()

    def undo(self) -> str | None:
        """Take back the newest step; returns its text ("Paint stroke"), or None when there is none."""
        self._close_edits()
        step = self.undo_stack.take_undo()
        if step is None:
            return None
        for change in reversed(step.changes):
            self._apply_change(change, forward=False)
        return step.text

    def redo(self) -> str | None:
        """Do the newest undone step again; returns its text, or None when there is none."""
        self._close_edits()
        step = self.undo_stack.take_redo()
        if step is None:
            return None
        for change in step.changes:
            self._apply_change(change, forward=True)
        return step.text

    def _apply_change(self, change, forward: bool) -> None:
        was = self.modified
        if isinstance(change, MaskChange):
            assert self._lung_mask is not None
            atom = change.atom
            (atom.redo if forward else atom.undo)(self._lung_mask.array)
            self._set_version("lung_mask", change.version_after if forward else change.version_before)
            self._mask_changed(atom.box, was)
        else:
            assert isinstance(change, NoduleChange)
            before, after = (change.before, change.after) if forward else (change.after, change.before)
            self._write_nodule(change.index, before, after)
            self._set_version("nodules", change.version_after if forward else change.version_before)
            self._nodules_written(change.index, before, after, was)

    # ------------------------------------------------------------------ nodules
    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._nodules):
            raise IndexError(f"no nodule #{index}; the document has {len(self._nodules)}")
        return int(index)

    def _write_nodule(self, index: int, before: NoduleSpec | None, after: NoduleSpec | None) -> None:
        """Nodule ``index`` goes from ``before`` to ``after``: inserted, removed or replaced."""
        if before is None and after is not None:
            self._nodules.insert(index, after)
        elif after is None:
            self._nodules.pop(index)
        else:
            self._nodules[index] = after

    def _nodules_written(self, index: int, before: NoduleSpec | None, after: NoduleSpec | None,
                         was_modified: bool) -> None:
        """Events after :meth:`_write_nodule`; the selection follows the nodules that move up or down."""
        self._label_map = None
        alive = {id(s) for s in self._nodules}
        self._voxels = {k: v for k, v in self._voxels.items() if k in alive}
        selected = self._selected
        if before is None and after is not None:
            action = "added"
            if selected is not None and selected >= index:
                selected += 1
        elif after is None:
            action = "removed"
            if selected is not None and selected >= index:
                selected = None if selected == index else selected - 1
        else:
            action = "changed"
        moved = selected != self._selected
        self._selected = selected
        self.events.nodules.emit(action=action, index=index)
        if action == "removed" or moved:
            self.events.selection.emit(index=selected)
        self._emit_modified(was_modified)

    def _change_nodule(self, index: int, before: NoduleSpec | None, after: NoduleSpec | None) -> None:
        """Make a nodule change, record it for undo, and say so."""
        was = self.modified
        self._write_nodule(index, before, after)
        self.undo_stack.record(NoduleChange(index, before, after, *self._new_version("nodules")))
        self._nodules_written(index, before, after, was)

    def add_nodule(self, spec: NoduleSpec) -> int:
        """Append a nodule; returns its index. It may lie outside the lungs (see :meth:`nodule_warning`)."""
        if not isinstance(spec, NoduleSpec):
            raise MaskError(f"a nodule must be a NoduleSpec, got {type(spec).__name__}")
        index = len(self._nodules)
        self._change_nodule(index, None, copy.copy(spec))
        return index

    def update_nodule(self, index: int, **changes) -> NoduleSpec:
        """Change fields of nodule ``index`` (``diameter_mm=9``, ``texture=3``, ...); returns the new spec.

        Changing the diameter of an ellipsoid scales its axes with it. Invalid values raise MaskError and
        change nothing.
        """
        i = self._check_index(index)
        old = self._nodules[i]
        new = _replace_spec(old, changes, f"nodule #{i + 1}")
        if new == old:
            return copy.copy(new)
        self._change_nodule(i, old, new)
        if i == self._selected:
            self._template_like(new)
        return copy.copy(new)

    def move_nodule(self, index: int, center_mm: Sequence[float]) -> NoduleSpec:
        """Move nodule ``index`` so that its centre is at ``center_mm`` (world mm)."""
        return self.update_nodule(index, center_mm=tuple(float(c) for c in center_mm))

    def remove_nodule(self, index: int) -> NoduleSpec:
        """Remove nodule ``index``; returns it. The selection follows the nodules that remain."""
        i = self._check_index(index)
        spec = self._nodules[i]
        self._change_nodule(i, spec, None)
        return copy.copy(spec)

    def select_nodule(self, index: int | None) -> None:
        """Select nodule ``index`` (or nothing); the views highlight it and panels show it. New
        nodules then take its size, texture and shape (:attr:`nodule_template`), also as it is edited."""
        if index is not None:
            index = self._check_index(index)
            self._template_like(self._nodules[index])
        self._select(index)

    def _template_like(self, spec: NoduleSpec) -> None:
        """New nodules take the size, texture and shape of ``spec`` (the selected nodule)."""
        self.set_nodule_template(diameter_mm=spec.diameter_mm, texture=spec.texture, axes_mm=spec.axes_mm,
                                 orientation_deg=spec.orientation_deg, lobulation=spec.lobulation,
                                 spiculation=spec.spiculation)

    def _select(self, index: int | None) -> None:
        if index != self._selected:
            self._selected = index
            self.events.selection.emit(index=index)

    def nodule_voxels(self, index: int) -> tuple[Box, np.ndarray] | None:
        """``(box, inside)`` of nodule ``index`` rasterised on the CT grid, or None when it misses the
        grid (centre outside the CT, or smaller than a voxel). Cached until the nodule changes."""
        spec = self._nodules[self._check_index(index)]
        cached = self._voxels.get(id(spec))
        if cached is not None and cached[0] is spec:
            return cached[1]
        ct = self._require_ct("a nodule's voxels")
        try:
            result: tuple[Box, np.ndarray] | None = rasterize_nodule(spec, ct)
        except MaskError:
            result = None
        self._voxels[id(spec)] = (spec, result)
        return result

    def nodule_label_map(self) -> np.ndarray | None:
        """uint8 array on the CT grid: 0 background, ``i + 1`` for nodule ``i`` (later ones win; nodules
        after the 255th share label 255)."""
        if self._ct is None:
            return None
        if self._label_map is None:
            labels = np.zeros(self._ct.shape, dtype=np.uint8)
            for i in range(len(self._nodules)):
                vox = self.nodule_voxels(i)
                if vox is not None:
                    box, inside = vox
                    labels[box][inside] = min(i + 1, 255)
            self._label_map = labels
        return self._label_map

    def nodule_warning(self, index: int) -> str | None:
        """Why nodule ``index`` cannot be generated as placed (outside the CT or the lungs), or None."""
        spec = self._nodules[self._check_index(index)]
        if self._ct is None:
            return None
        if not self._ct.contains_world(spec.center_mm):
            return "its centre lies outside the CT"
        assert self._lung_mask is not None
        i, j, k = np.rint(self._ct.world_to_index(spec.center_mm)).astype(int)
        i, j, k = (int(np.clip(v, 0, n - 1)) for v, n in zip((i, j, k), self._ct.size_xyz))
        if not self._lung_mask.array.any():
            return "no lung mask yet: its centre is outside the (empty) lung mask"
        if self._lung_mask.array[k, j, i] == 0:
            return "its centre lies outside the lung mask"
        return None

    def nodule_outside_lungs(self, index: int) -> bool:
        """True when nodule ``index``'s centre is not inside the lung mask (or not inside the CT)."""
        return self.nodule_warning(index) is not None

    def describe_nodule(self, index: int) -> str:
        """One line for lists: number, texture name and diameter."""
        s = self._nodules[self._check_index(index)]
        return f"{index + 1}. {texture_name(s.texture)}, {s.diameter_mm:.1f} mm"

    # ------------------------------------------------------------------ autosave
    @property
    def autosave_key(self) -> str:
        """The name of this document's autosave folder (new for every document opened)."""
        return self._autosave_key

    def autosave_folder(self, root: str | os.PathLike) -> Path:
        """Where :meth:`autosave` writes under ``root``."""
        return Path(root) / self._autosave_key

    def autosave_snapshot(self) -> autosaving.AutosaveSnapshot:
        """A copy of the lung mask, the nodules and where the CT came from, for :meth:`autosave`
        (take it on the thread that edits; write it on any)."""
        self._require_ct("an autosave")
        assert self._lung_mask is not None
        info = autosaving.AutosaveInfo(
            folder=Path(self._autosave_key),
            name=self._name,
            saved_at=autosaving.now(),
            source=None if self._ct_path is None else Path(os.path.abspath(self._ct_path)),
            template_seed=self._template_seed,
            lung_mask_path=None if self._lung_mask_path is None else Path(os.path.abspath(self._lung_mask_path)),
            nodules_path=None if self._nodules_path is None else Path(os.path.abspath(self._nodules_path)),
            lung_mask_modified=self.lung_mask_modified,
            nodules_modified=self.nodules_modified,
            n_nodules=len(self._nodules),
            pid=os.getpid(),
        )
        return autosaving.AutosaveSnapshot(self._autosave_key, self._lung_mask.copy(), tuple(self._nodules), info)

    def autosave(self, root: str | os.PathLike) -> Path:
        """Write the lung mask, the nodules and a small JSON (source CT, time) into this document's
        folder under ``root`` (never the CT itself), atomically file by file; returns the folder."""
        return self.autosave_snapshot().write(root)

    def remove_autosave(self, root: str | os.PathLike) -> bool:
        """Delete this document's autosave folder under ``root`` (after a save or a clean close)."""
        return autosaving.remove_autosave(self.autosave_folder(root))

    def restore_autosave(self, folder: str | os.PathLike) -> None:
        """Open an autosave again: the source CT (or the template) with the autosaved lung mask and
        nodules. The document then counts the autosaved parts as unsaved, keeps the files they
        belong to, and autosaves into the same folder. On error (a missing CT, a broken file) it
        raises LandError naming the file and stays as it was."""
        root = Path(folder)
        info = autosaving.read_info(root)
        if info.template_seed is not None:
            try:
                from land_core.data.phantom import PhantomConfig, make_phantom
            except ImportError as exc:
                raise LandError(f"{root}: it was made from a template, and templates are not available ({exc})") from None
            ct = make_phantom(info.template_seed, PhantomConfig(size=TEMPLATE_SIZE, spacing=TEMPLATE_SPACING_MM)).ct
        elif info.source is not None:
            ct = read_volume(info.source)
        else:
            raise LandError(f"{root / autosaving.INFO_FILE}: it names no source CT")
        lungs_file = root / autosaving.LUNGS_FILE
        mask = self._as_mask(read_mask(lungs_file, like=ct), ct, lungs_file)
        nodules = load_nodules(root / autosaving.NODULES_FILE)
        self.load(ct, mask, nodules, name=info.name, ct_path=info.source, lung_mask_path=info.lung_mask_path,
                  nodules_path=info.nodules_path)
        self._template_seed = info.template_seed
        self._autosave_key = root.name
        was = self.modified
        unsaved = [p for p, flag in (("lung_mask", info.lung_mask_modified), ("nodules", info.nodules_modified))
                   if flag] or list(PARTS)
        for part in unsaved:
            self._saved_versions[part] = -1  # no file holds this state
        self._edit_count += 1
        self._emit_modified(was)

    # ------------------------------------------------------------------ crosshair and display
    def _snap(self, point: np.ndarray) -> np.ndarray:
        """``point`` clamped into the CT's voxel-centre box (unchanged without a CT)."""
        if self._ct is None:
            return point
        idx = self._ct.world_to_index(point)
        clamped = np.clip(idx, 0, np.asarray(self._ct.size_xyz, dtype=float) - 1)
        return point if np.allclose(clamped, idx) else self._ct.index_to_world(clamped)

    def set_crosshair(self, position_mm: Sequence[float]) -> None:
        """Move the crosshair (all views follow); points outside the CT are pulled onto its edge."""
        point = np.asarray(position_mm, dtype=float).reshape(3)
        if not np.all(np.isfinite(point)):
            raise ValueError(f"crosshair position must be finite, got {point.tolist()}")
        point = self._snap(point)
        if np.allclose(point, self._crosshair, atol=1e-9):
            return
        previous = self._crosshair
        self._crosshair = point
        self.events.crosshair.emit(position=point.copy(), previous=previous)

    def set_window_level(self, window: float, level: float) -> None:
        """Set the CT display window (width, at least 1 HU) and level in HU."""
        window, level = float(window), float(level)
        if not (np.isfinite(window) and np.isfinite(level)):
            raise ValueError("window and level must be finite numbers of HU")
        window = max(window, 1.0)
        if (window, level) == (self._window, self._level):
            return
        self._window, self._level = window, level
        self.events.window_level.emit(window=window, level=level)

    def apply_window_preset(self, name: str) -> None:
        """Set one of :data:`WINDOW_PRESETS` ('lung', 'mediastinum', 'bone')."""
        try:
            window, level = WINDOW_PRESETS[name]
        except KeyError:
            raise ValueError(f"no window preset {name!r}; known: {', '.join(WINDOW_PRESETS)}") from None
        self.set_window_level(window, level)

    @property
    def window_preset(self) -> str | None:
        """The name of the preset the current window matches, or None."""
        for name, wl in WINDOW_PRESETS.items():
            if wl == (self._window, self._level):
                return name
        return None

    def set_mask_opacity(self, opacity: float) -> None:
        """Opacity of the lung overlay in the slice views, clamped to 0..1."""
        value = float(np.clip(float(opacity), 0.0, 1.0))
        if value != self._mask_opacity:
            self._mask_opacity = value
            self.events.display.emit(name="mask_opacity", value=value)

    def set_mask_outline(self, outline: bool) -> None:
        """Draw the lung overlay as outlines (True) or filled (False)."""
        value = bool(outline)
        if value != self._mask_outline:
            self._mask_outline = value
            self.events.display.emit(name="mask_outline", value=value)

    def probe(self, position_mm: Sequence[float]) -> Probe | None:
        """The voxel nearest ``position_mm`` with its CT value and lung label; None outside the CT."""
        if self._ct is None:
            return None
        point = np.asarray(position_mm, dtype=float)
        if not self._ct.contains_world(point):
            return None
        idx = np.rint(self._ct.world_to_index(point)).astype(int)
        i, j, k = (int(np.clip(v, 0, n - 1)) for v, n in zip(idx, self._ct.size_xyz))
        assert self._lung_mask is not None
        return Probe(tuple(float(c) for c in point), (i, j, k), float(self._ct.array[k, j, i]),
                     int(self._lung_mask.array[k, j, i]))
