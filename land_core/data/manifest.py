"""The training-set format: a folder of cases plus ``manifest.json``.

Layout::

    DATASET/
      manifest.json
      <case_id>/ct.nii.gz         CT in HU (int16)
      <case_id>/lungs.nii.gz      lung mask: 0 background, 1 right lung, 2 left lung (or 1 for both)
      <case_id>/nodules.nii.gz    nodule texture map: 0 background, 1..5 LIDC texture score
      <case_id>/condition.nii.gz  the LAND condition encoding (float32; lungs 0.5, nodules texture/5)
      <case_id>/case.json         geometry, each nodule's centre (mm), diameter, texture, subtype,
                                  characteristics and HU statistics with histogram, and provenance

``manifest.json``::

    {"format": "land-dataset/1", "software": "land-studio 0.1.0", "source": "...", "n_cases": 2,
     "cases": [{"id": "phantom_s0000", "ct": "phantom_s0000/ct.nii.gz", "lungs": ...,
                "nodules": ..., "condition": ..., "info": "phantom_s0000/case.json",
                "n_nodules": 3, "textures": [1, 4, 5]}, ...]}

Paths are relative to the manifest's folder. All four images of a case share one grid.
:func:`load_manifest` validates everything and reports every bad case by name at once.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from land_core import __version__
from land_core.errors import ImageFileError, LandError, ManifestError
from land_core.io import read_volume, write_json_atomic, write_volume
from land_core.masks.condition import encode_condition, texture_to_subtype
from land_core.masks.nodules import NoduleSpec, rasterize_nodule
from land_core.metrics.histograms import HU_BIN_EDGES, hu_summary
from land_core.volume import Volume

MANIFEST_FORMAT = "land-dataset/1"
MANIFEST_NAME = "manifest.json"
CASE_FILES = {
    "ct": "ct.nii.gz",
    "lungs": "lungs.nii.gz",
    "nodules": "nodules.nii.gz",
    "condition": "condition.nii.gz",
    "info": "case.json",
}
IMAGE_KEYS = ("ct", "lungs", "nodules", "condition")


@dataclass
class CaseEntry:
    """One case of a manifest, with absolute paths."""

    id: str
    ct: Path
    lungs: Path
    nodules: Path
    condition: Path
    info: Path
    extra: dict = field(default_factory=dict)

    def paths(self) -> dict[str, Path]:
        return {k: getattr(self, k) for k in CASE_FILES}

    def read_info(self) -> dict:
        return json.loads(self.info.read_text(encoding="utf-8"))


@dataclass
class Manifest:
    """A validated dataset: its folder and its cases."""

    root: Path
    cases: list[CaseEntry]
    doc: dict

    def __len__(self) -> int:
        return len(self.cases)


def _nodule_stats(
    ct: Volume,
    nodules: Volume,
    info_nodules: list[dict],
    specs: Sequence[NoduleSpec] | None,
    labels: np.ndarray | None = None,
) -> list[dict]:
    """Per-nodule HU statistics: from ``labels`` (nodule i is label i + 1) or the specs when given,
    else from the nodule map's connected components."""
    out = [dict(n) for n in info_nodules]
    if labels is not None:
        from scipy import ndimage

        if labels.shape != ct.shape:
            raise LandError(f"the nodule label map has shape {labels.shape}, the CT {ct.shape}")
        boxes = ndimage.find_objects(labels if labels.dtype.kind in "iu" else labels.astype(np.int64), max_label=len(out)) if out else []
        for i, (entry, box) in enumerate(zip(out, boxes), start=1):
            values = ct.array[box][labels[box] == i] if box is not None else np.zeros(0)
            entry["hu"] = hu_summary(values)
        return out
    if specs:
        if out and len(out) != len(specs):
            raise LandError(f"case info lists {len(out)} nodules but {len(specs)} nodule specs were given")
        if not out:
            out = [s.to_dict() for s in specs]
        for entry, spec in zip(out, specs):
            box, inside = rasterize_nodule(spec, ct)
            entry.setdefault("subtype", spec.subtype)
            entry["hu"] = hu_summary(ct.array[box][inside])
        return out
    from scipy import ndimage

    comps, n = ndimage.label(nodules.array > 0)
    if n == 0:
        return out
    found = []
    for idx, sl in enumerate(ndimage.find_objects(comps), start=1):
        inside = comps[sl] == idx
        textures = nodules.array[sl][inside]
        texture = int(np.bincount(textures).argmax())
        zyx = np.array(np.nonzero(inside)).mean(axis=1) + [s.start for s in sl]
        center = nodules.index_to_world(zyx[::-1])
        voxel_mm3 = float(np.prod(nodules.spacing))
        found.append({
            "center_mm": [round(float(c), 2) for c in center],
            "diameter_mm": round(float((6 * inside.sum() * voxel_mm3 / np.pi) ** (1 / 3)), 2),
            "texture": texture,
            "subtype": texture_to_subtype(texture),
            "hu": hu_summary(ct.array[sl][inside]),
        })
    return out or found


def write_case(
    case_dir: str | os.PathLike,
    *,
    ct: Volume,
    lungs: Volume,
    nodules: Volume,
    info: dict,
    nodule_specs: Sequence[NoduleSpec] | None = None,
    nodule_labels: Volume | np.ndarray | None = None,
) -> dict:
    """Write one case (CT, lungs, nodules, condition, case.json) atomically; return its manifest entry.

    ``info`` goes into case.json with the geometry, the HU bin edges and, per nodule, HU statistics
    and a histogram: from ``nodule_labels`` when given (a label map on the CT grid in which nodule i
    of ``info["nodules"]`` has label i + 1 -- for nodules whose voxels are known, e.g. LIDC
    consensus masks, including ones left out of the texture map), else from ``nodule_specs``, else
    from the nodule map's connected components. The condition is the ``nodule_lung_texture``
    encoding of lungs and nodules. case.json is written last, so a case folder with a case.json is
    complete. Nodules whose ``texture`` is None are listed in case.json but not in the entry's
    ``textures``.
    """
    case_dir = Path(case_dir)
    for name, vol in (("lungs", lungs), ("nodules", nodules)):
        if not ct.same_grid(vol):
            raise LandError(f"{case_dir.name}: the {name} mask is not on the CT's grid")
    if isinstance(nodule_labels, Volume):
        if not ct.same_grid(nodule_labels):
            raise LandError(f"{case_dir.name}: the nodule label map is not on the CT's grid")
        nodule_labels = nodule_labels.array
    if nodule_labels is not None and np.shape(nodule_labels) != ct.shape:
        raise LandError(f"{case_dir.name}: the nodule label map has shape {np.shape(nodule_labels)}, the CT {ct.shape}")
    ct.check_finite(f"{case_dir.name} CT")
    condition = encode_condition(lungs, nodules)
    case_dir.mkdir(parents=True, exist_ok=True)
    ct_i16 = ct.with_array(np.clip(np.rint(ct.array), -32768, 32767).astype(np.int16))
    write_volume(ct_i16, case_dir / CASE_FILES["ct"])
    write_volume(lungs.with_array(lungs.array.astype(np.uint8)), case_dir / CASE_FILES["lungs"])
    write_volume(nodules.with_array(nodules.array.astype(np.uint8)), case_dir / CASE_FILES["nodules"])
    write_volume(condition, case_dir / CASE_FILES["condition"])
    doc = dict(info)
    doc.setdefault("case_id", case_dir.name)
    doc["geometry"] = ct.geometry()
    doc["hu_bin_edges"] = HU_BIN_EDGES.tolist()
    doc["nodules"] = _nodule_stats(ct_i16, nodules, list(info.get("nodules", [])), nodule_specs,
                                   None if nodule_labels is None else np.asarray(nodule_labels))
    lung_vals = ct_i16.array[(lungs.array > 0) & (nodules.array == 0)]
    doc["lungs"] = {"voxels": int(lung_vals.size),
                    "median_hu": float(np.median(lung_vals)) if lung_vals.size else None}
    doc["synthetic"] = bool(info.get("synthetic", False))
    write_json_atomic(case_dir / CASE_FILES["info"], doc)
    textures = sorted(int(n["texture"]) for n in doc["nodules"] if n.get("texture") is not None)
    entry = {"id": doc["case_id"], **{k: f"{case_dir.name}/{v}" for k, v in CASE_FILES.items()},
             "n_nodules": len(doc["nodules"]), "textures": textures}
    return entry


def write_manifest(root: str | os.PathLike, entries: Iterable[dict | str], *, source: str = "") -> Path:
    """Write ``root/manifest.json`` listing ``entries`` (from :func:`write_case`, or case ids whose
    folders hold the standard file names). Returns the manifest path.

    The manifest holds no time stamp or absolute path, so the same data gives the same bytes.
    """
    root = Path(root)
    cases = []
    for e in entries:
        if isinstance(e, str):
            e = {"id": e, **{k: f"{e}/{v}" for k, v in CASE_FILES.items()}}
        cases.append(e)
    ids = [c["id"] for c in cases]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ManifestError(root / MANIFEST_NAME, [f"case id {d!r} appears more than once" for d in dupes])
    doc = {
        "format": MANIFEST_FORMAT,
        "software": f"land-studio {__version__}",
        "source": source,
        "n_cases": len(cases),
        "cases": cases,
    }
    path = root / MANIFEST_NAME
    write_json_atomic(path, doc)
    return path


def build_manifest(root: str | os.PathLike, *, source: str = "") -> Path:
    """Write a manifest for every sub-folder of ``root`` that holds a ``ct.nii.gz``."""
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(root, ["not a folder"])
    ids = sorted(p.name for p in root.iterdir() if (p / CASE_FILES["ct"]).is_file())
    if not ids:
        raise ManifestError(root, [f"no case folders with a {CASE_FILES['ct']} inside"])
    return write_manifest(root, ids, source=source or "land manifest build")


def _header(path: Path) -> tuple[tuple, tuple, tuple, tuple, int]:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ImageFileError(path, "not a readable image") from None
    return (reader.GetSize(), reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection(),
            reader.GetDimension())


def _check_case(entry: CaseEntry) -> list[str]:
    """Problems of one case (file presence, readable headers, one grid, case.json) — empty if fine."""
    problems = []
    for key, path in entry.paths().items():
        if not path.is_file():
            problems.append(f"{key} file missing: {path}")
    if problems:
        return problems
    headers = {}
    for key in IMAGE_KEYS:
        try:
            headers[key] = _header(getattr(entry, key))
        except ImageFileError as exc:
            problems.append(str(exc))
    for key, (size, spacing, origin, direction, dim) in headers.items():
        if dim != 3:
            problems.append(f"{key} is {dim}D, expected 3D")
    if "ct" in headers:
        ref = headers["ct"]
        for key, h in headers.items():
            if key != "ct" and (h[0] != ref[0] or not np.allclose(h[1], ref[1], atol=1e-3)
                                or not np.allclose(h[2], ref[2], atol=1e-2)):
                problems.append(
                    f"{key} is not on the CT's grid (size {h[0]} vs {ref[0]}, spacing "
                    f"{tuple(round(s, 3) for s in h[1])} vs {tuple(round(s, 3) for s in ref[1])})"
                )
    try:
        info = entry.read_info()
        if not isinstance(info, dict):
            problems.append(f"{entry.info.name} is not a JSON object")
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        problems.append(f"{entry.info}: invalid JSON ({exc})")
    return problems


def load_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Read and validate a manifest (its path or its folder).

    With ``check_files`` every case's files must exist, have readable 3D headers on one grid, and a
    valid case.json. All problems are gathered and raised together as a :class:`ManifestError`
    naming each bad case, so a person can fix a dataset in one pass.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if not p.is_file():
        hint = " (run `land manifest build FOLDER` to make one for a folder of cases)" if p.name == MANIFEST_NAME else ""
        raise ManifestError(p, [f"no such manifest file{hint}"])
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(p, [f"not valid JSON ({exc})"]) from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
        raise ManifestError(p, [f"not a {MANIFEST_FORMAT} manifest (format: {found!r})"])
    items = doc.get("cases")
    if not isinstance(items, list) or not items:
        raise ManifestError(p, ["the dataset is empty: 'cases' lists no case"])
    root = p.parent
    problems: list[str] = []
    cases: list[CaseEntry] = []
    seen: set[str] = set()
    for i, item in enumerate(items):
        name = item.get("id") if isinstance(item, dict) else None
        label = f"case {name!r}" if name else f"case #{i + 1}"
        if not isinstance(item, dict) or not isinstance(name, str) or not name:
            problems.append(f"{label}: needs an 'id' string")
            continue
        if name in seen:
            problems.append(f"{label}: duplicate id")
            continue
        seen.add(name)
        missing = [k for k in CASE_FILES if k not in item]
        if missing:
            problems.append(f"{label}: missing keys {missing}")
            continue
        entry = CaseEntry(name, *(root / item[k] for k in CASE_FILES),
                          extra={k: v for k, v in item.items() if k not in CASE_FILES and k != "id"})
        if check_files:
            problems.extend(f"{label}: {msg}" for msg in _check_case(entry))
        cases.append(entry)
    if problems:
        raise ManifestError(p, problems)
    return Manifest(root, cases, doc)


def read_case(entry: CaseEntry) -> dict[str, Volume]:
    """Read a case's four images as Volumes (``ct``, ``lungs``, ``nodules``, ``condition``)."""
    return {k: read_volume(getattr(entry, k)) for k in IMAGE_KEYS}
