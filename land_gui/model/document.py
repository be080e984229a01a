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
================  ===================================================================

Geometry is in world millimetres (LPS, as :class:`~land_core.volume.Volume`); voxel indices
appear only in :meth:`Document.probe` (for the status bar) and in mask boxes.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from land_core.errors import ImageFileError, LandError, MaskError
from land_core.io import read_mask, read_volume, write_volume
from land_core.masks.condition import texture_name
from land_core.masks.nodules import NoduleSpec, load_nodules, rasterize_nodule, save_nodules
from land_core.volume import Volume

from land_gui.model.events import EmitterGroup

EVENT_TYPES = ("ct", "lung_mask", "nodules", "selection", "crosshair", "window_level", "display", "paths",
               "modified")

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
        self._name = "Untitled"
        self._ct_path: Path | None = None
        self._lung_mask_path: Path | None = None
        self._nodules_path: Path | None = None
        self._mask_dirty = False
        self._nodules_dirty = False
        # rasterised nodules on the CT grid, keyed by the (immutable-by-contract) spec object
        self._voxels: dict[int, tuple[NoduleSpec, tuple[Box, np.ndarray] | None]] = {}
        self._label_map: np.ndarray | None = None

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
        return self._mask_dirty or self._nodules_dirty

    @property
    def lung_mask_modified(self) -> bool:
        return self._mask_dirty

    @property
    def nodules_modified(self) -> bool:
        return self._nodules_dirty

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
        self._mask_dirty = self._nodules_dirty = False
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

    def _require_ct(self, what: str) -> Volume:
        if self._ct is None:
            raise LandError(f"open a CT or a template first: {what} needs the CT's grid")
        return self._ct

    def open_lung_mask(self, path: str | os.PathLike) -> None:
        """Replace the lung mask with the label image at ``path`` (it must be on the CT's grid)."""
        ct = self._require_ct("a lung mask")
        p = Path(path)
        mask = self._as_mask(read_mask(p, like=ct), ct, p)
        self._lung_mask = mask
        self._lung_mask_path = p
        self.events.lung_mask.emit(box=None)
        self.events.nodules.emit(action="flags", index=None)  # the outside-lung flags may change
        self.events.paths.emit()
        self._set_dirty(mask=False)

    def open_nodules(self, path: str | os.PathLike) -> None:
        """Replace the nodule list with the ``land-nodules/1`` JSON list at ``path``."""
        self._require_ct("a nodule list")
        p = Path(path)
        specs = load_nodules(p)
        self._nodules = specs
        self._voxels.clear()
        self._label_map = None
        self._nodules_path = p
        self.events.nodules.emit(action="reset", index=None)
        self._select(None)
        self.events.paths.emit()
        self._set_dirty(nodules=False)

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
        self._set_dirty(mask=False)
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
        self._set_dirty(nodules=False)
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

    def _set_dirty(self, mask: bool | None = None, nodules: bool | None = None) -> None:
        before = self.modified
        if mask is not None:
            self._mask_dirty = mask
        if nodules is not None:
            self._nodules_dirty = nodules
        if self.modified != before:
            self.events.modified.emit(modified=self.modified)

    # ------------------------------------------------------------------ lung mask edits
    def edit_lung_mask(self, box: Box, values: np.ndarray | int) -> np.ndarray:
        """Write ``values`` into the lung mask inside ``box`` (slices in array order ``[z, y, x]``).

        Returns the previous values of the box, which is all an undo step needs. The event names the
        box, so views redraw only what it touches.
        """
        self._require_ct("editing the lung mask")
        assert self._lung_mask is not None
        arr = self._lung_mask.array
        if len(box) != 3 or not all(isinstance(s, slice) and s.step in (None, 1) for s in box):
            raise MaskError(f"a mask box is three contiguous slices [z, y, x], got {box!r}")
        box = tuple(slice(*s.indices(n)[:2]) for s, n in zip(box, arr.shape))  # type: ignore[assignment]
        old = arr[box].copy()
        new = np.asarray(values)
        if new.ndim and new.shape != old.shape:
            raise MaskError(f"mask values of shape {new.shape} do not fit the box of shape {old.shape}")
        if new.size and (new.min() < 0 or new.max() > 255):
            raise MaskError(f"lung labels must lie in 0..255, got {new.min()}..{new.max()}")
        arr[box] = new
        self.events.lung_mask.emit(box=box)
        self.events.nodules.emit(action="flags", index=None)
        self._set_dirty(mask=True)
        return old

    # ------------------------------------------------------------------ nodules
    def _check_index(self, index: int) -> int:
        if not isinstance(index, (int, np.integer)) or not 0 <= index < len(self._nodules):
            raise IndexError(f"no nodule #{index}; the document has {len(self._nodules)}")
        return int(index)

    def _nodules_changed(self, action: str, index: int | None) -> None:
        self._label_map = None
        alive = {id(s) for s in self._nodules}
        self._voxels = {k: v for k, v in self._voxels.items() if k in alive}
        self.events.nodules.emit(action=action, index=index)
        self._set_dirty(nodules=True)

    def add_nodule(self, spec: NoduleSpec) -> int:
        """Append a nodule; returns its index. It may lie outside the lungs (see :meth:`nodule_warning`)."""
        if not isinstance(spec, NoduleSpec):
            raise MaskError(f"a nodule must be a NoduleSpec, got {type(spec).__name__}")
        self._nodules.append(copy.copy(spec))
        index = len(self._nodules) - 1
        self._nodules_changed("added", index)
        return index

    def update_nodule(self, index: int, **changes) -> NoduleSpec:
        """Change fields of nodule ``index`` (``diameter_mm=9``, ``texture=3``, ...); returns the new spec.

        Changing the diameter of an ellipsoid scales its axes with it. Invalid values raise MaskError and
        change nothing.
        """
        i = self._check_index(index)
        old = self._nodules[i]
        if "diameter_mm" in changes and old.axes_mm is not None and "axes_mm" not in changes:
            factor = float(changes["diameter_mm"]) / old.diameter_mm
            changes["axes_mm"] = tuple(a * factor for a in old.axes_mm)
        try:
            new = dataclasses.replace(old, **changes)
        except TypeError as exc:
            raise MaskError(f"nodule #{i + 1}: {exc}") from None
        if new == old:
            return copy.copy(new)
        self._nodules[i] = new
        self._nodules_changed("changed", i)
        return copy.copy(new)

    def move_nodule(self, index: int, center_mm: Sequence[float]) -> NoduleSpec:
        """Move nodule ``index`` so that its centre is at ``center_mm`` (world mm)."""
        return self.update_nodule(index, center_mm=tuple(float(c) for c in center_mm))

    def remove_nodule(self, index: int) -> NoduleSpec:
        """Remove nodule ``index``; returns it. The selection follows the nodules that remain."""
        i = self._check_index(index)
        spec = self._nodules.pop(i)
        selected = self._selected
        if selected is not None and selected >= i:
            selected = None if selected == i else selected - 1
        self._selected = selected
        self._nodules_changed("removed", i)
        self.events.selection.emit(index=selected)
        return spec

    def select_nodule(self, index: int | None) -> None:
        """Select nodule ``index`` (or nothing); the views highlight it and panels show it."""
        if index is not None:
            index = self._check_index(index)
        self._select(index)

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
