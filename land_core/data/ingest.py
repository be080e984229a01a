"""Turn LIDC-IDRI or a folder of chest CTs into a training set: ``land ingest lidc`` / ``land ingest folder``.

Each case goes through the same steps (LAND's preprocessing):

1. read the CT (DICOM series or image file) and its annotations on the CT's own grid;
2. resample to ``spacing`` mm (cubic B-spline for CT, nearest neighbour for every mask);
3. lungs: the given lung mask, or :func:`land_core.data.lungs.segment_lungs` on the resampled CT;
   every nodule is added to the nearest lung (:func:`land_core.data.lungs.include_in_lungs`);
4. crop / pad to ``size``³ around the lungs' bounding box (CT padded with -1024 HU, masks with 0);
5. write CT, lungs, nodule texture map, condition and case.json with
   :func:`land_core.data.manifest.write_case` (case.json last, so a folder with a case.json is a
   finished case).

**LIDC** (``land ingest lidc --root LIDC-IDRI``): the CT series and XML files are found by
:func:`land_core.data.lidc.find_lidc_cases`; readers' nodules (>= 3 mm) are clustered and their
consensus mask taken at ``agreement`` (LAND: 25 %); the texture of a nodule is the mean of the
readers' texture scores, rounded half up (:func:`land_core.data.lidc.consensus_texture`; missing
and 0 scores left out, so a nodule scored by only some readers gets the rounded mean of those).
*A nodule that no reader gave a texture score* cannot be put into the texture map (its condition
value would be a guess): it is left out of ``nodules.nii.gz`` but kept in the lungs (nodules are
lung, as in LAND) and in case.json with ``"texture": null`` and ``"in_texture_map": false``; the
summary counts such nodules. Nodules under 3 mm (single points) and non-nodules are only counted.
case.json holds per nodule: centre (mm, LPS world), longest axial diameter (mm, between boundary
pixel centres, as pylidc), volume, number of readers, the consensus scores (rounded mean of the
ordinal scores; the most common value for the categorical ``internalStructure`` and
``calcification``, ties to the lower value), the mean scores, every reader's scores and diameter,
and the HU statistics with histogram inside the consensus mask. Case ids are the patient ids
(``LIDC-IDRI-0001``; ``_1``, ``_2``... by series UID when a patient has several CT series).

**Folder** (``land ingest folder --images DIR [--masks DIR]``): every CT file (NIfTI, NRRD,
MetaImage) or DICOM folder in ``--images`` is a case named by its stem (the name without
``.nii.gz`` / ``.nrrd`` / ...; a DICOM folder's name). Masks are found in ``--masks`` (which may be
the images folder) by name: ``<stem>_lungs.<ext>`` (0 background, 1 right lung, 2 left lung, or 1
for both) and ``<stem>_nodules.<ext>`` (0 background, 1..5 the LIDC texture score of each nodule
voxel -- a binary 0/1 nodule mask would read as texture 1, ground glass), in any supported format,
on the CT's grid. Without a lung mask the lungs are segmented; without a nodule mask the case has no
nodules. Nodules are described in case.json from the connected components of the texture map.

Runs are resumable: a case whose case.json exists, was made with the same settings and whose images
all read back is skipped (and listed in the manifest again). Cases run in parallel in worker
processes (:class:`concurrent.futures.ProcessPoolExecutor`, ``spawn`` start method so no thread
state of the parent is forked); at most ``workers`` cases are in flight, so when a worker dies
(killed for lack of memory) only those cases are affected, and they are run again one by one, each
in its own process, so the case that kills its worker fails alone. A case that fails is logged with
its reason and listed in ``failures.json`` next to ``manifest.json``; the run carries on. With
one worker the cases run in this process. A CT series whose XML file cannot be parsed is a failed
case; series that are not annotated CTs (X-rays, scouts, CTs without XML) are listed in
failures.json under ``not_used``.

``manifest.json`` lists the good cases of this run's inputs (made now or skipped as done); a case's
``n_nodules`` and ``textures`` count the nodules that are in its texture map (so not those without a
texture score or outside the crop), which is what a sampler balancing the rare textures needs.
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures as cf
import contextlib
import json
import logging
import math
import multiprocessing
import os
import sys
import time
import traceback
from collections import Counter
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Sequence

import numpy as np

from land_core import __version__
from land_core.errors import ImageFileError, LandError
from land_core.volume import Volume

if TYPE_CHECKING:  # pragma: no cover
    from land_core.data.lidc import Characteristics, LidcCase

log = logging.getLogger(__name__)

FAILURES_NAME = "failures.json"
FAILURES_FORMAT = "land-ingest-failures/1"
#: Bumped when the pipeline changes what it writes, so that older cases are made again.
INGEST_VERSION = 1
LUNGS_SUFFIX = "_lungs"
NODULES_SUFFIX = "_nodules"
DEFAULT_SIZE = 256
DEFAULT_SPACING = 1.0
#: LIDC scores that are categories, not grades: their consensus is the most common value.
CATEGORICAL_SCORES = ("internalStructure", "calcification")


# ----------------------------------------------------------------------------- errors
class IngestError(LandError):
    """A case (or a whole ingest run) cannot be made; names the case or file and the problem."""

    def __init__(self, where: str | os.PathLike, problem: str):
        self.where = os.fspath(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}")


class MaskGridError(IngestError):
    """A mask file is not on its CT's grid (other size, spacing, origin or direction)."""


class MaskLabelError(IngestError):
    """A mask file holds labels outside the allowed range (lungs 0-2, nodules 0-5)."""


# Short names for the summary's "failures by reason", found along the exception's class hierarchy.
_CATEGORIES = {
    "LidcXmlError": "annotation XML unusable",
    "LidcGeometryError": "contour outside the CT series",
    "LidcError": "CT series unusable",
    "MaskGridError": "mask not on the CT's grid",
    "MaskLabelError": "mask labels out of range",
    "MaskError": "mask labels out of range",
    "LungSegmentationError": "no lungs found",
    "ImageFileError": "image file unreadable",
    "VolumeError": "image unusable",
    "IngestError": "case unusable",
    "LandError": "input problem",
}
WORKER_DIED = "worker process died"


def failure_category(exc: BaseException) -> str:
    """A short name for the kind of failure, to count failures by reason."""
    for cls in type(exc).__mro__:
        if cls.__name__ in _CATEGORIES:
            return _CATEGORIES[cls.__name__]
    return f"unexpected error ({type(exc).__name__})"


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[0] if lines else repr(exc)
    return f"{type(exc).__name__}: {text}"


# ----------------------------------------------------------------------------- settings and tasks
@dataclass(frozen=True)
class IngestSettings:
    """What every case is made into: ``size``³ voxels at ``spacing`` mm; LIDC consensus ``agreement``;
    an optional local lungmask weights file for the lung segmentation."""

    size: int = DEFAULT_SIZE
    spacing: float = DEFAULT_SPACING
    agreement: float = 0.25
    lung_weights: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 8:
            raise IngestError("settings", f"--size must be a whole number of voxels >= 8, got {self.size!r}")
        try:
            spacing = float(self.spacing)
        except (TypeError, ValueError):
            raise IngestError("settings", f"--spacing must be a number of mm, got {self.spacing!r}") from None
        if not math.isfinite(spacing) or spacing <= 0:
            raise IngestError("settings", f"--spacing must be a positive number of mm, got {self.spacing!r}")
        if not 0 < float(self.agreement) <= 1:
            raise IngestError("settings", f"--agreement must be in (0, 1], got {self.agreement!r}")
        if self.lung_weights is not None and not Path(self.lung_weights).is_file():
            raise IngestError(self.lung_weights, "lungmask weights file not found")
        object.__setattr__(self, "size", int(self.size))
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "agreement", float(self.agreement))


@dataclass
class _Task:
    """One case to make, with everything a worker process needs (picklable)."""

    case_id: str
    mode: str  # "lidc" or "folder"
    out: Path
    settings: IngestSettings
    source: str  # for messages and failures.json: the input, relative to the root when inside it
    root: Path
    lidc_case: "LidcCase | None" = None
    image: Path | None = None
    lungs_mask: Path | None = None
    nodules_mask: Path | None = None

    def key(self) -> dict:
        """The settings a finished case was made with (stored in case.json as ``ingest``)."""
        s = self.settings
        key = {"mode": self.mode, "version": INGEST_VERSION, "size": s.size, "spacing": s.spacing,
               "lung_weights": Path(s.lung_weights).name if s.lung_weights else None}
        if self.mode == "lidc":
            key["agreement"] = s.agreement
        else:
            key["lungs_mask"] = self.lungs_mask.name if self.lungs_mask else None
            key["nodules_mask"] = self.nodules_mask.name if self.nodules_mask else None
        return key


@dataclass
class CaseResult:
    """What happened to one case: ``written``, ``skipped`` (already done) or ``failed``."""

    case_id: str
    status: str
    source: str
    entry: dict | None = None
    textures: list[int] = field(default_factory=list)  # of the nodules in the texture map
    n_untextured: int = 0
    reason: str = ""
    category: str = ""
    traceback: str | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def failure(self) -> dict:
        out = {"case": self.case_id, "source": self.source, "category": self.category, "reason": self.reason}
        if self.traceback:
            out["traceback"] = self.traceback
        return out


@dataclass
class IngestReport:
    """The outcome of an ingest run; :meth:`summary` is what the command prints."""

    mode: str
    out: Path
    results: list[CaseResult]
    not_used: list[dict] = field(default_factory=list)
    manifest: Path | None = None
    failures_file: Path | None = None

    def _with(self, status: str) -> list[CaseResult]:
        return [r for r in self.results if r.status == status]

    @property
    def written(self) -> list[CaseResult]:
        return self._with("written")

    @property
    def skipped(self) -> list[CaseResult]:
        return self._with("skipped")

    @property
    def failed(self) -> list[CaseResult]:
        return self._with("failed")

    def texture_counts(self) -> dict[int, int]:
        """Nodules per texture score 1-5 in the texture maps of the dataset (written + skipped)."""
        counts = Counter(t for r in self.results if r.status != "failed" for t in r.textures)
        return {t: counts.get(t, 0) for t in range(1, 6)}

    def n_untextured(self) -> int:
        return sum(r.n_untextured for r in self.results if r.status != "failed")

    def failures_by_reason(self) -> dict[str, int]:
        return dict(Counter(r.category for r in self.failed).most_common())

    def summary(self) -> str:
        lines = [
            f"land ingest {self.mode}: {len(self.written)} case(s) written, {len(self.skipped)} skipped "
            f"(already done), {len(self.failed)} failed"
            + (f"; {len(self.not_used)} series not used" if self.not_used else "")
        ]
        tex = self.texture_counts()
        line = "nodules by texture: " + ", ".join(f"{t}: {n}" for t, n in tex.items())
        if self.n_untextured():
            line += f" (+ {self.n_untextured()} without a texture score: in case.json, not in the texture map)"
        lines.append(line)
        if self.failed:
            lines.append("failures by reason:")
            lines += [f"  {reason}: {n}" for reason, n in self.failures_by_reason().items()]
        if self.manifest is not None:
            lines.append(f"manifest: {self.manifest} ({len(self.written) + len(self.skipped)} case(s))")
        if self.failures_file is not None:
            lines.append(f"failures: {self.failures_file}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
class _NoteHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.notes: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.notes.append(record.getMessage())


@contextlib.contextmanager
def _capture_notes() -> Iterator[list[str]]:
    """Collect the engine's warnings during one case instead of printing them: the main process logs
    them with the case name in front (so messages logged while making a case leave the name out),
    and they do not tear the progress bar."""
    logger = logging.getLogger("land_core")
    handler = _NoteHandler()
    old = logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        yield handler.notes
    finally:
        logger.removeHandler(handler)
        logger.propagate = old


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(Path(root).resolve()))
    except ValueError:
        return str(path)


def longest_axial_diameter(mask: np.ndarray, spacing_xyz: Sequence[float]) -> float:
    """Longest distance (mm) between two boundary pixel centres on one axial slice of ``mask[z, y, x]``.

    The same measure as pylidc's annotation diameter (computed from the contour pixels); 0 for an
    empty mask or single pixels.
    """
    from scipy import ndimage
    from scipy.spatial.distance import pdist

    sx, sy = float(spacing_xyz[0]), float(spacing_xyz[1])
    best = 0.0
    for sl in np.asarray(mask, dtype=bool):
        if not sl.any():
            continue
        edge = sl & ~ndimage.binary_erosion(sl)
        pts = np.argwhere(edge) * np.array([sy, sx])
        if len(pts) > 1:
            best = max(best, float(pdist(pts).max()))
    return best


def consensus_scores(chars: Sequence["Characteristics"]) -> tuple[dict, dict]:
    """(consensus, mean) of the readers' scores for one nodule; ``None`` where nobody scored.

    Ordinal scores: the mean of the known scores, rounded half up (texture exactly as
    :func:`land_core.data.lidc.consensus_texture`). Categorical ones (internal structure,
    calcification): the most common value, ties to the lower one; their mean is not given.
    """
    from land_core.data.lidc import CHARACTERISTIC_RANGES, consensus_texture, round_half_up

    consensus: dict[str, int | None] = {}
    means: dict[str, float | None] = {}
    scores = [c.as_dict() for c in chars]
    for name in CHARACTERISTIC_RANGES:
        known = [s[name] for s in scores if s[name] is not None]
        if name in CATEGORICAL_SCORES:
            counts = Counter(known)
            consensus[name] = min(counts, key=lambda v: (-counts[v], v)) if known else None
            continue
        means[name] = round(float(np.mean(known)), 3) if known else None
        if name == "texture":
            consensus[name] = consensus_texture(known)
        else:
            consensus[name] = round_half_up(float(np.mean(known))) if known else None
    return consensus, means


def _lungs_and_crop(
    task: _Task, ct: Volume, lungs: Volume | None, labels: Volume
) -> tuple[Volume, Volume, Volume, dict]:
    """Resampled CT -> (CT, lungs, labels) cropped to size³ around the lungs, and crop facts.

    ``lungs`` None: segmented here. ``labels`` (nodule labels or textures) are added to the lungs.
    """
    from land_core.data.lungs import include_in_lungs, segment_lungs
    from land_core.preprocess import crop_or_pad, mask_bbox

    if lungs is None:
        lungs = segment_lungs(ct, weights=task.settings.lung_weights)
    lungs = include_in_lungs(lungs, labels.array > 0)
    bbox = mask_bbox(lungs)
    if bbox is None:
        raise IngestError(task.source, "the lung mask is empty; nothing to crop around")
    size = task.settings.size
    ct_c = crop_or_pad(ct, size, bbox=bbox, kind="ct")
    lungs_c = crop_or_pad(lungs, size, bbox=bbox, kind="mask")
    labels_c = crop_or_pad(labels, size, bbox=bbox, kind="mask")
    total = int(np.count_nonzero(lungs.array))
    kept = int(np.count_nonzero(lungs_c.array))
    extent = [round(float(e), 1) for e in (np.asarray(bbox[1]) - np.asarray(bbox[0])) * np.asarray(ct.spacing)]
    crop = {"lung_extent_mm": extent, "lung_fraction_in_crop": round(kept / total, 4) if total else None}
    if total and kept < 0.99 * total:
        log.warning("the lungs (%s mm) do not fit the %d³ crop at %g mm: %.1f %% of lung voxels are cut off",
                    " × ".join(f"{e:g}" for e in extent), size, task.settings.spacing,
                    100.0 * (1 - kept / total))
    return ct_c, lungs_c, labels_c, crop


def _entry_summary(doc: dict) -> tuple[list[int], int]:
    """Textures of the nodules in the texture map, and the number of nodules without a texture."""
    textures, untextured = [], 0
    for n in doc.get("nodules", []):
        t = n.get("texture")
        if t is None:
            untextured += 1
        elif n.get("in_texture_map", True):
            textures.append(int(t))
    return sorted(textures), untextured


def _finish_entry(entry: dict, doc: dict) -> tuple[dict, list[int], int]:
    textures, untextured = _entry_summary(doc)
    entry = dict(entry)
    entry["n_nodules"] = len(textures)
    entry["textures"] = textures
    return entry, textures, untextured


def _done_entry(task: _Task) -> tuple[dict, list[int], int] | None:
    """The manifest entry of a finished case made with the same settings, or None to make it (again)."""
    from land_core.data.manifest import CASE_FILES, IMAGE_KEYS
    from land_core.io import read_volume

    case_dir = task.out / task.case_id
    info = case_dir / CASE_FILES["info"]
    if not info.is_file():
        return None
    try:
        doc = json.loads(info.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (ValueError, UnicodeDecodeError, OSError) as exc:
        log.warning("case.json is unreadable (%s); the case is made again", exc)
        return None
    if doc.get("ingest") != task.key():
        log.warning("was made with other settings (%s); the case is made again", doc.get("ingest"))
        return None
    volumes = []
    for key in IMAGE_KEYS:
        try:
            volumes.append(read_volume(case_dir / CASE_FILES[key]))
        except LandError as exc:
            log.warning("%s; the case is made again", exc)
            return None
    size = (task.settings.size,) * 3
    if any(v.shape != size or not volumes[0].same_grid(v) for v in volumes):
        log.warning("the images are not all %d³ on one grid; the case is made again", task.settings.size)
        return None
    entry = {"id": task.case_id, **{k: f"{task.case_id}/{v}" for k, v in CASE_FILES.items()}}
    return _finish_entry(entry, doc)


# ----------------------------------------------------------------------------- one case
def _ingest_lidc(task: _Task) -> tuple[dict, dict]:
    """Make one LIDC case; returns (manifest entry from write_case, case.json content)."""
    from land_core.data.lidc import annotation_mask, load_lidc_case, nodule_label_volume
    from land_core.data.manifest import write_case
    from land_core.masks.condition import texture_to_subtype
    from land_core.preprocess import resample, resample_like

    case = task.lidc_case
    assert case is not None
    s = task.settings
    data = load_lidc_case(case, level=s.agreement)
    ct, index, nodules = data.ct, data.index, data.nodules
    labels = nodule_label_volume(nodules, index)
    ct_r = resample(ct, s.spacing, "ct")
    labels_r = resample_like(labels, ct_r, "mask")
    ct_c, lungs_c, labels_c, crop = _lungs_and_crop(task, ct_r, None, labels_r)

    lut = np.zeros(len(nodules) + 1, dtype=np.uint8)
    voxel_mm3 = float(np.prod(ct.spacing))
    in_crop = np.bincount(labels_c.array.ravel().astype(np.int64), minlength=len(nodules) + 1)
    entries = []
    for i, nod in enumerate(nodules, start=1):
        if nod.texture is not None:
            lut[i] = nod.texture
        consensus, means = consensus_scores(nod.characteristics)
        readers = []
        for ann in nod.annotations:
            m = annotation_mask(ann, index)
            session = data.annotations.readers[ann.reader]
            readers.append({
                "reader": ann.reader + 1,
                "radiologist_id": session.radiologist_id,
                "nodule_id": ann.nodule_id,
                "diameter_mm": round(longest_axial_diameter(m.mask, ct.spacing), 2),
                "has_characteristics": ann.has_characteristics,
                **ann.characteristics.as_dict(),
            })
        n_vox = int(nod.mask.sum())
        entries.append({
            "center_mm": [round(float(c), 2) for c in nod.centroid_mm],
            "diameter_mm": round(longest_axial_diameter(nod.mask, ct.spacing), 2),
            "volume_mm3": round(n_vox * voxel_mm3, 1),
            "texture": nod.texture,
            "subtype": texture_to_subtype(nod.texture) if nod.texture is not None else None,
            "in_texture_map": bool(nod.texture is not None and in_crop[i] > 0),
            "voxels": int(in_crop[i]),
            "n_readers": len(nod.annotations),
            "agreement": s.agreement,
            "characteristics": consensus,
            "mean_scores": means,
            "readers": readers,
        })
        if nod.texture is None:
            log.warning("nodule %d (%s) has no texture score from any reader: kept in case.json and the "
                        "lungs, left out of the texture map", i,
                        ", ".join(f"reader {a.reader + 1} {a.nodule_id}" for a in nod.annotations))
        elif in_crop[i] == 0:
            log.warning("nodule %d at %s mm lies outside the %d³ crop", i,
                        entries[-1]["center_mm"], s.size)
    nodule_map = labels_c.with_array(lut[labels_c.array])
    ann = data.annotations
    info = {
        "case_id": task.case_id,
        "synthetic": False,
        "source": {
            "dataset": "LIDC-IDRI",
            "patient_id": case.patient_id,
            "series_instance_uid": case.series_instance_uid,
            "study_instance_uid": ann.study_instance_uid,
            "series_folder": _rel(case.folder, task.root),
            "xml_files": [_rel(x, task.root) for x in case.xml_files],
            "n_slices": int(ct.shape[0]),
        },
        "original_geometry": ct.geometry(),
        "ingest": task.key(),
        "software": f"land-studio {__version__}",
        "crop": crop,
        "n_reading_sessions": len(ann.readers),
        "small_nodules": sum(len(r.small_nodules) for r in ann.readers),
        "non_nodules": sum(len(r.non_nodules) for r in ann.readers),
        "nodules": entries,
        "notes": list(ann.notes),
    }
    entry = write_case(task.out / task.case_id, ct=ct_c, lungs=lungs_c, nodules=nodule_map, info=info,
                       nodule_labels=labels_c)
    return entry, info


def _read_label_mask(path: Path, ct: Volume, what: str, max_label: int, task: _Task) -> Volume:
    """A lung or nodule mask on ``ct``'s grid, with labels 0..``max_label``; errors name the file."""
    from land_core.io import read_mask

    mask = read_mask(path)
    if mask.size_xyz != ct.size_xyz or not ct.same_grid(mask, tol=1e-2):
        raise MaskGridError(
            path,
            f"the {what} mask is not on the grid of its CT {task.source}: mask {'×'.join(map(str, mask.size_xyz))} "
            f"voxels at spacing {tuple(round(v, 3) for v in mask.spacing)} mm, origin "
            f"{tuple(round(v, 2) for v in mask.origin)}; CT {'×'.join(map(str, ct.size_xyz))} voxels at "
            f"{tuple(round(v, 3) for v in ct.spacing)} mm, origin {tuple(round(v, 2) for v in ct.origin)}",
        )
    lo, hi = int(mask.array.min()), int(mask.array.max())
    if lo < 0 or hi > max_label:
        meaning = ("0 background, 1 right lung, 2 left lung (or 1 for both); a lobe mask must be merged first"
                   if what == "lungs" else "0 background, 1-5 the nodule's LIDC texture score")
        raise MaskLabelError(path, f"the {what} mask holds labels {lo}..{hi}; expected {meaning}")
    # the CT's exact geometry, so that rounding differences in the header do not split the grids
    return ct.with_array(mask.array.astype(np.uint8))


def _ingest_folder(task: _Task) -> tuple[dict, dict]:
    """Make one case of ``land ingest folder``; returns (manifest entry, case.json content)."""
    from land_core.data.manifest import write_case
    from land_core.io import read_volume
    from land_core.preprocess import resample, resample_like

    assert task.image is not None
    s = task.settings
    ct = read_volume(task.image)
    lungs = _read_label_mask(task.lungs_mask, ct, "lungs", 2, task) if task.lungs_mask else None
    nods = _read_label_mask(task.nodules_mask, ct, "nodules", 5, task) if task.nodules_mask else None
    ct_r = resample(ct, s.spacing, "ct")
    lungs_r = resample_like(lungs, ct_r, "mask") if lungs is not None else None
    if nods is not None:
        nods_r = resample_like(nods, ct_r, "mask")
    else:
        nods_r = ct_r.with_array(np.zeros(ct_r.shape, dtype=np.uint8))
    ct_c, lungs_c, nods_c, crop = _lungs_and_crop(task, ct_r, lungs_r, nods_r)
    info = {
        "case_id": task.case_id,
        "synthetic": False,
        "source": {
            "image": _rel(task.image, task.root),
            "lungs_mask": task.lungs_mask.name if task.lungs_mask else None,
            "nodules_mask": task.nodules_mask.name if task.nodules_mask else None,
            "lungs_from": "mask" if lungs is not None else "segment_lungs",
        },
        "original_geometry": ct.geometry(),
        "ingest": task.key(),
        "software": f"land-studio {__version__}",
        "crop": crop,
    }
    entry = write_case(task.out / task.case_id, ct=ct_c, lungs=lungs_c, nodules=nods_c, info=info)
    doc = json.loads((task.out / task.case_id / "case.json").read_text(encoding="utf-8"))
    return entry, doc


def run_case(task: _Task) -> CaseResult:
    """Make (or skip) one case; never raises for a bad case -- the failure is in the result.

    Runs in a worker process. The previous case.json is removed before anything is written, so a
    case interrupted half-way has no case.json and is made again by the next run.
    """
    t0 = time.perf_counter()
    result = CaseResult(task.case_id, "failed", task.source)
    with _capture_notes() as notes:
        try:
            done = _done_entry(task)
            if done is not None:
                result.status = "skipped"
                result.entry, result.textures, result.n_untextured = done
            else:
                (task.out / task.case_id / "case.json").unlink(missing_ok=True)
                entry, doc = _ingest_lidc(task) if task.mode == "lidc" else _ingest_folder(task)
                result.status = "written"
                result.entry, result.textures, result.n_untextured = _finish_entry(entry, doc)
        except LandError as exc:
            result.reason = str(exc)
            result.category = failure_category(exc)
        except Exception as exc:  # a bug or an unforeseen input: report it, never stop the run
            result.reason = f"{task.source}: {_one_line(exc)}"
            result.category = failure_category(exc)
            result.traceback = traceback.format_exc()
    result.notes = list(notes)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


# ----------------------------------------------------------------------------- running many
def _init_worker(itk_threads: int) -> None:
    """Share the cores between workers (ITK would otherwise start all-core thread pools in each)."""
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, itk_threads))


def _died(task: _Task) -> CaseResult:
    return CaseResult(
        task.case_id, "failed", task.source, category=WORKER_DIED,
        reason=f"{task.source}: the worker process making this case died (killed for lack of memory?); "
               "try fewer --workers",
    )


def _crashed(task: _Task, exc: BaseException) -> CaseResult:
    return CaseResult(task.case_id, "failed", task.source, reason=_one_line(exc), category=failure_category(exc),
                      traceback="".join(traceback.format_exception(exc)))


def _pool(workers: int, threads: int) -> cf.ProcessPoolExecutor:
    return cf.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                  initializer=_init_worker, initargs=(threads,))


def _run_in_pool(queue: collections.deque, workers: int, threads: int,
                 on_result: Callable[[CaseResult], None]) -> list[_Task]:
    """Run queued tasks, at most ``workers`` at a time; return the tasks in flight if the pool broke."""
    with _pool(workers, threads) as pool:
        running: dict[cf.Future, _Task] = {}
        try:
            while queue or running:
                while queue and len(running) < workers:
                    task = queue.popleft()
                    running[pool.submit(run_case, task)] = task
                done, _ = cf.wait(running, return_when=cf.FIRST_COMPLETED)
                if any(isinstance(f.exception(), BrokenProcessPool) for f in done):
                    cf.wait(running)  # the broken pool settles every future
                    done = set(running)
                broken = []
                for fut in done:
                    task = running.pop(fut)
                    exc = fut.exception()
                    if isinstance(exc, BrokenProcessPool):
                        broken.append(task)
                    elif exc is not None:
                        on_result(_crashed(task, exc))
                    else:
                        on_result(fut.result())
                if broken:
                    return broken
        except BaseException:  # Ctrl-C: drop what has not started
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return []


def run_tasks(tasks: Sequence[_Task], workers: int, on_result: Callable[[CaseResult], None]) -> None:
    """Run every task, in this process (``workers`` 1) or in ``workers`` processes; each result goes
    to ``on_result`` as soon as it is known. A dead worker takes only the cases it was running down
    with it; those are run again one by one, each in a fresh process."""
    if workers <= 1:
        for task in tasks:
            on_result(run_case(task))
        return
    threads = max(1, (os.cpu_count() or 1) // workers)
    queue = collections.deque(tasks)
    while queue:
        suspects = _run_in_pool(queue, workers, threads, on_result)
        for task in suspects:
            log.warning("%s: a worker process died while this case ran; running it again on its own", task.case_id)
            again = _run_in_pool(collections.deque([task]), 1, threads, on_result)
            if again:
                on_result(_died(task))


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _execute(mode: str, out: Path, tasks: list[_Task], *, workers: int | None, progress: bool,
             source: str, not_used: list[dict], early_failures: list[CaseResult], notes: list[str]) -> IngestReport:
    """Run the tasks with a progress bar, then write manifest.json and failures.json."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from land_core.data.manifest import write_manifest
    from land_core.io import write_json_atomic

    workers = _default_workers() if workers is None else int(workers)
    if workers < 1:
        raise IngestError("--workers", f"must be at least 1, got {workers}")
    workers = min(workers, max(1, len(tasks)))
    out.mkdir(parents=True, exist_ok=True)
    results: list[CaseResult] = list(early_failures)
    for r in early_failures:
        log.error("%s: failed: %s", r.case_id, r.reason)

    with logging_redirect_tqdm(), tqdm(total=len(tasks), desc=f"ingest {mode}", unit="case",
                                       disable=not progress, file=sys.stderr) as bar:
        def on_result(r: CaseResult) -> None:
            for note in r.notes:
                log.warning("%s: %s", r.case_id, note)
            if r.status == "failed":
                log.error("%s: failed: %s", r.case_id, r.reason)
                if r.traceback:
                    log.debug("%s: %s", r.case_id, r.traceback)
            results.append(r)
            bar.set_postfix(failed=sum(x.status == "failed" for x in results), refresh=False)
            bar.update(1)

        log.info("%d case(s) to make or check with %d worker(s)", len(tasks), workers)
        run_tasks(tasks, workers, on_result)

    results.sort(key=lambda r: r.case_id)
    report = IngestReport(mode, out, results, not_used)
    good = [r.entry for r in results if r.status != "failed" and r.entry is not None]
    if good:
        report.manifest = write_manifest(out, good, source=source)
    failed = report.failed
    report.failures_file = out / FAILURES_NAME
    write_json_atomic(report.failures_file, {
        "format": FAILURES_FORMAT,
        "software": f"land-studio {__version__}",
        "source": source,
        "n_failed": len(failed),
        "by_reason": report.failures_by_reason(),
        "failures": [r.failure() for r in failed],
        "not_used": not_used,
        "notes": notes,
    })
    return report


# ----------------------------------------------------------------------------- LIDC
def _lidc_case_ids(cases: Sequence) -> list[str]:
    """Patient ids, with ``_1``, ``_2``... (by series UID) for a patient with several series."""
    by_patient: dict[str, list[int]] = {}
    for i, c in enumerate(cases):
        by_patient.setdefault(c.patient_id, []).append(i)
    ids = [""] * len(cases)
    for pid, members in by_patient.items():
        if len(members) == 1:
            ids[members[0]] = pid
        else:
            for k, i in enumerate(sorted(members, key=lambda i: cases[i].series_instance_uid), start=1):
                ids[i] = f"{pid}_{k}"
    return ids


def ingest_lidc(
    root: str | os.PathLike,
    out: str | os.PathLike,
    settings: IngestSettings | None = None,
    *,
    workers: int | None = None,
    progress: bool = True,
    min_slices: int = 10,
) -> IngestReport:
    """Make a training set from a TCIA LIDC-IDRI download (see the module docstring for the steps).

    Returns the report; failed cases are in it and in ``out/failures.json``, never raised. Raises
    :class:`IngestError` only when ``root`` holds no usable CT series at all.
    """
    from land_core.data.lidc import LidcXmlError, NotCtAnnotationError, find_lidc_cases, parse_lidc_xml

    settings = settings or IngestSettings()
    root, out = Path(root), Path(out)
    log.info("looking for LIDC-IDRI CT series and annotation files under %s", root)
    scan = find_lidc_cases(root, min_slices=min_slices)
    not_used: list[dict] = []
    broken_series: list[tuple] = []
    for r in scan.rejected:
        # a CT series whose XML file exists but cannot be read is a failed case, not an unused series
        broken = []
        if r.reason.startswith("no LIDC CT annotation XML"):
            for xml in sorted({*r.folder.glob("*.xml"), *r.folder.glob("*.XML")}):
                try:
                    parse_lidc_xml(xml)
                except NotCtAnnotationError:
                    continue
                except LidcXmlError as exc:
                    broken.append(exc)
        if broken:
            broken_series.append((r, broken[0]))
        else:
            not_used.append({"patient_id": r.patient_id, "series_instance_uid": r.series_instance_uid,
                             "folder": _rel(r.folder, root), "reason": r.reason})
    if not scan.cases and not broken_series:
        reasons = Counter(n["reason"] for n in not_used)
        detail = "; ".join(f"{n} × {reason}" for reason, n in reasons.most_common(3))
        raise IngestError(root, "no CT series with an LIDC annotation file found"
                          + (f" ({len(not_used)} series not used: {detail})" if not_used else ""))
    # case ids over the usable series and the ones with a broken XML, so a patient's ids stay stable
    ids = _lidc_case_ids([*scan.cases, *(r for r, _ in broken_series)])
    tasks = [
        _Task(case_id=cid, mode="lidc", out=out, settings=settings, source=_rel(c.folder, root), root=root, lidc_case=c)
        for cid, c in sorted(zip(ids, scan.cases), key=lambda p: p[0])
    ]
    early = [CaseResult(cid, "failed", _rel(r.folder, root), reason=str(exc), category=failure_category(exc))
             for cid, (r, exc) in zip(ids[len(scan.cases):], broken_series)]
    source = (f"land ingest lidc (root {root.name}, {settings.size}^3 at {settings.spacing:g} mm, "
              f"agreement {settings.agreement:g})")
    return _execute("lidc", out, tasks, workers=workers, progress=progress, source=source, not_used=not_used,
                    early_failures=early, notes=list(scan.notes))


# ----------------------------------------------------------------------------- folder
def _image_stem(path: Path) -> str | None:
    """The case name of an image file (name without its format ending), or None if not an image."""
    from land_core.io import image_format

    try:
        ending = image_format(path)
    except ImageFileError:
        return None
    return path.name[: -len(ending)]


def _mask_index(masks: Path) -> tuple[dict[str, dict[str, list[Path]]], list[Path]]:
    """``{stem: {"lungs": [...], "nodules": [...]}}`` of the mask files in ``masks``, and the other files."""
    found: dict[str, dict[str, list[Path]]] = {}
    other = []
    for p in sorted(masks.iterdir()):
        stem = _image_stem(p) if p.is_file() and not p.name.startswith(".") else None
        kind = None
        if stem is not None:
            for suffix, name in ((LUNGS_SUFFIX, "lungs"), (NODULES_SUFFIX, "nodules")):
                if stem.endswith(suffix) and len(stem) > len(suffix):
                    kind, stem = name, stem[: -len(suffix)]
        if kind is None:
            other.append(p)
            continue
        found.setdefault(stem, {"lungs": [], "nodules": []})[kind].append(p)
    return found, other


def ingest_folder(
    images: str | os.PathLike,
    out: str | os.PathLike,
    settings: IngestSettings | None = None,
    *,
    masks: str | os.PathLike | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> IngestReport:
    """Make a training set from a folder of CT files / DICOM folders and optional masks named
    ``<stem>_lungs.<ext>`` and ``<stem>_nodules.<ext>`` (see the module docstring)."""
    settings = settings or IngestSettings()
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise IngestError(images, "--images must be a folder of CT files or DICOM folders")
    mask_dir = Path(masks) if masks is not None else None
    if mask_dir is not None and not mask_dir.is_dir():
        raise IngestError(mask_dir, "--masks must be a folder")
    mask_files, _ = _mask_index(mask_dir) if mask_dir is not None else ({}, [])
    # a file named like the mask of another image in the folder is not a CT (masks kept next to
    # their images), whether or not --masks names this folder
    local_masks, _ = _mask_index(images)
    stems = {_image_stem(p) or p.name for p in images.iterdir()}
    mask_paths = {p.resolve() for stem, d in local_masks.items() if stem in stems for ps in d.values() for p in ps}

    notes: list[str] = []
    candidates: list[tuple[str, Path]] = []
    out_resolved = out.resolve()
    for p in sorted(images.iterdir()):
        if p.name.startswith(".") or p.resolve() == out_resolved or p.resolve() in mask_paths:
            continue
        if mask_dir is not None and p.resolve() == mask_dir.resolve():
            continue
        if p.is_dir():
            candidates.append((p.name, p))
        elif (stem := _image_stem(p)) is not None:
            candidates.append((stem, p))
        elif p.suffix.lower() == ".dcm":
            notes.append(f"{p}: a DICOM file directly in --images; put each series in its own sub-folder")
        else:
            notes.append(f"{p}: not a CT image (NIfTI, NRRD, MetaImage) or DICOM folder; skipped")
    for n in notes:
        log.warning("%s", n)
    if not candidates:
        raise IngestError(images, "holds no CT image files (.nii.gz, .nii, .nrrd, .mha, ...) or DICOM folders")

    tasks, early, seen = [], [], {}
    for stem, path in candidates:
        src = _rel(path, images)
        if stem in seen:
            early.append(CaseResult(
                stem, "failed", src, category="case name used twice",
                reason=f"{path}: the case name {stem!r} is already taken by {seen[stem]}; rename one"))
            continue
        seen[stem] = path.name
        found = mask_files.get(stem, {"lungs": [], "nodules": []})
        twice = [k for k, ps in found.items() if len(ps) > 1]
        if twice:
            names = ", ".join(p.name for p in found[twice[0]])
            early.append(CaseResult(stem, "failed", src, category="several masks for one case",
                                    reason=f"{mask_dir}: several {twice[0]} masks for {stem!r} ({names}); keep one"))
            continue
        tasks.append(_Task(case_id=stem, mode="folder", out=out, settings=settings, source=src, root=images,
                           image=path, lungs_mask=(found["lungs"] or [None])[0],
                           nodules_mask=(found["nodules"] or [None])[0]))
    for stem in sorted(set(mask_files) - set(seen)):
        notes.append(f"masks for {stem!r} in {mask_dir} match no image; not used")
        log.warning("%s", notes[-1])
    source = (f"land ingest folder (images {images.name}{', masks ' + mask_dir.name if mask_dir else ''}, "
              f"{settings.size}^3 at {settings.spacing:g} mm)")
    tasks.sort(key=lambda t: t.case_id)
    return _execute("folder", out, tasks, workers=workers, progress=progress, source=source, not_used=[],
                    early_failures=early, notes=notes)


# ----------------------------------------------------------------------------- CLI
def _settings(args: argparse.Namespace) -> IngestSettings:
    return IngestSettings(size=args.size, spacing=args.spacing, agreement=getattr(args, "agreement", 0.25),
                          lung_weights=str(args.lung_weights) if args.lung_weights else None)


def _finish(report: IngestReport) -> int:
    print(report.summary(), flush=True)
    if report.manifest is None:
        raise IngestError(report.out, f"no case could be made; the reasons are in {report.failures_file}")
    return 1 if report.failed else 0


def _cmd_ingest_lidc(args: argparse.Namespace) -> int:
    report = ingest_lidc(args.root, args.out, _settings(args), workers=args.workers, progress=not args.quiet,
                         min_slices=args.min_slices)
    return _finish(report)


def _cmd_ingest_folder(args: argparse.Namespace) -> int:
    report = ingest_folder(args.images, args.out, _settings(args), masks=args.masks, workers=args.workers,
                           progress=not args.quiet)
    return _finish(report)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=Path, help="dataset folder to write (created if missing)")
    p.add_argument("--workers", type=int, default=None,
                   help="cases made in parallel, each in its own process "
                   f"(default min(4, cores) = {_default_workers()})")
    p.add_argument("--size", type=int, default=DEFAULT_SIZE, help=f"cube size in voxels (default {DEFAULT_SIZE})")
    p.add_argument("--spacing", type=float, default=DEFAULT_SPACING,
                   help=f"isotropic voxel size in mm (default {DEFAULT_SPACING:g})")
    p.add_argument("--lung-weights", type=Path, default=None,
                   help="local lungmask model file for the lung segmentation (default: built-in method)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land ingest lidc`` and ``land ingest folder``."""
    p = sub.add_parser(
        "ingest",
        help="make a training set (manifest format) from LIDC-IDRI or a folder of CTs",
        description="Resample, segment the lungs, crop around them and write a training set with manifest.json. "
        "Cases already done are skipped; a case that fails is reported and listed in failures.json, and the "
        "run carries on. Exit status 0 when every case was made, 1 when some failed, 2 when none could be made.",
    )
    isub = p.add_subparsers(dest="ingest_cmd", required=True)
    lidc = isub.add_parser(
        "lidc",
        help="ingest a TCIA LIDC-IDRI download (CT series + XML annotations)",
        description="Ingest LIDC-IDRI: consensus nodule masks at --agreement, nodule texture = mean reader score "
        "rounded; nodules no reader scored stay in the lungs and case.json but not in the texture map.",
    )
    lidc.add_argument("--root", required=True, type=Path,
                      help="the LIDC-IDRI folder (LIDC-IDRI-0001/<study>/<series>/)")
    _common(lidc)
    lidc.add_argument("--agreement", type=float, default=0.25,
                      help="fraction of the readers who marked a nodule that must include a voxel in their "
                      "outline for it to be nodule (default 0.25, as LAND)")
    lidc.add_argument("--min-slices", type=int, default=10,
                      help="fewer slices than this is not a CT volume (default 10)")
    lidc.set_defaults(func=_cmd_ingest_lidc)
    folder = isub.add_parser(
        "folder",
        help="ingest CT files / DICOM folders with optional lung and nodule masks",
        description="Each CT file (.nii.gz, .nii, .nrrd, .mha, .mhd) or DICOM sub-folder of --images is a case named "
        "by its stem. Masks in --masks (may be the same folder): <stem>_lungs.<ext> (1 right, 2 left lung) and "
        "<stem>_nodules.<ext> (nodule voxels hold their texture score 1-5), on the CT's grid. Without a lung "
        "mask the lungs are segmented.",
    )
    folder.add_argument("--images", required=True, type=Path, help="folder of CT files and/or DICOM folders")
    folder.add_argument("--masks", type=Path, default=None, help="folder of <stem>_lungs / <stem>_nodules masks")
    _common(folder)
    folder.set_defaults(func=_cmd_ingest_folder)
