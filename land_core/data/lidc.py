"""LIDC-IDRI annotations: parse the per-series XML, group the readers' nodules, build consensus masks.

The LIDC-IDRI XML (``LidcReadMessage``, namespace ``http://www.nih.gov``) holds one
``readingSession`` per radiologist (usually 4; some series have 3 or 8). Each session lists

* ``unblindedReadNodule`` with a ``characteristics`` block (texture, malignancy, ...) and one ``roi``
  per slice: ``imageZposition``, ``imageSOP_UID``, ``inclusion`` and the ``edgeMap`` boundary
  pixels (``xCoord`` = column, ``yCoord`` = row). ``inclusion`` FALSE marks a hole to subtract;
* nodules under 3 mm, given as a single point and no characteristics;
* ``nonNodule`` points (lesions the reader judged not to be nodules).

Files are untrusted input, so they are parsed with :mod:`defusedxml` (no entity expansion, no
external DTDs). The parser survives the quirks of the full set: chest X-ray reads in the other
schema (``IdriReadMessage``, skipped with a note), texture 0 (treated as missing), missing
characteristics, several XML files for one series (:func:`merge_series`).

Mapping to voxels goes through the DICOM geometry (:class:`SliceIndex`), never through slice order:
a contour finds its slice by SOP Instance UID, falling back to ``imageZposition`` matched to the slice
positions within half a slice spacing.

Grouping the readers' annotations of one nodule (:func:`cluster_annotations`) follows the idea of
pylidc's ``Scan.cluster_annotations`` (annotations are linked when their contours come closer than a
tolerance; the linked groups are the connected components; the tolerance shrinks while a group is
implausible), re-implemented here because pylidc needs its own database and breaks on numpy 2. A
group is implausible when it holds two annotations by the same reader, which also works for the
series with 8 reading sessions. :func:`consensus_nodule` builds the consensus mask at an agreement
level (LAND uses 25 %) and the consensus texture (mean of the readers' scores, rounded).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from land_core.errors import LandError
from land_core.volume import Volume

log = logging.getLogger(__name__)

#: The namespace of CT annotation files.
LIDC_NAMESPACE = "http://www.nih.gov"

#: LIDC characteristic names (as in the XML) and the valid range of each score.
CHARACTERISTIC_RANGES: dict[str, tuple[int, int]] = {
    "subtlety": (1, 5),
    "internalStructure": (1, 4),
    "calcification": (1, 6),
    "sphericity": (1, 5),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
    "malignancy": (1, 5),
}

#: Agreement level LAND uses for the consensus mask (a voxel is nodule when >= 25 % of the
#: annotations of its cluster include it).
LAND_CONSENSUS_LEVEL = 0.25


# ----------------------------------------------------------------------------- errors
class LidcError(LandError):
    """An LIDC annotation file (or its series) cannot be used; names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = os.fspath(path) if path is not None else None
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class LidcXmlError(LidcError):
    """The XML file is not a usable LIDC CT annotation file (malformed, unsafe, missing fields)."""


class NotCtAnnotationError(LidcXmlError):
    """The file is a chest X-ray read (``IdriReadMessage``), not a CT annotation: skip it."""


class LidcGeometryError(LidcError):
    """A contour cannot be placed in the CT series (no slice with its SOP UID or z position)."""


# ----------------------------------------------------------------------------- dataclasses
@dataclass
class Characteristics:
    """A reader's scores for one nodule; ``None`` where missing or out of range (e.g. texture 0)."""

    subtlety: int | None = None
    internal_structure: int | None = None
    calcification: int | None = None
    sphericity: int | None = None
    margin: int | None = None
    lobulation: int | None = None
    spiculation: int | None = None
    texture: int | None = None
    malignancy: int | None = None

    def as_dict(self) -> dict[str, int | None]:
        """Scores keyed by their LIDC (XML) names, e.g. ``internalStructure``."""
        return {name: getattr(self, _ATTR[name]) for name in CHARACTERISTIC_RANGES}


_ATTR = {name: ("internal_structure" if name == "internalStructure" else name) for name in CHARACTERISTIC_RANGES}


@dataclass
class Roi:
    """One contour of a nodule on one slice.

    ``points`` is an int array ``(n, 2)`` of (x = column, y = row) pixel indices of the boundary
    pixels, in drawing order. ``inclusion`` False means the contour encloses a hole.
    """

    z_position: float | None
    sop_uid: str | None
    inclusion: bool
    points: np.ndarray


@dataclass
class NoduleAnnotation:
    """One reader's annotation of a nodule of 3 mm or more (contours and characteristics)."""

    nodule_id: str
    reader: int
    characteristics: Characteristics
    rois: list[Roi]
    has_characteristics: bool = True

    @property
    def texture(self) -> int | None:
        return self.characteristics.texture


@dataclass
class SmallNodule:
    """A nodule under 3 mm: a single point (x = column, y = row) on one slice, no characteristics."""

    nodule_id: str
    reader: int
    x: int
    y: int
    z_position: float | None
    sop_uid: str | None


@dataclass
class NonNodule:
    """A lesion the reader judged not to be a nodule: one point on one slice."""

    non_nodule_id: str
    reader: int
    x: int
    y: int
    z_position: float | None
    sop_uid: str | None


@dataclass
class ReadingSession:
    """Everything one reader marked in one series."""

    reader: int
    radiologist_id: str | None
    annotation_version: str | None
    nodules: list[NoduleAnnotation] = field(default_factory=list)
    small_nodules: list[SmallNodule] = field(default_factory=list)
    non_nodules: list[NonNodule] = field(default_factory=list)


@dataclass
class LidcSeriesAnnotations:
    """The parsed annotations of one CT series (one XML file, or several merged)."""

    series_instance_uid: str
    study_instance_uid: str | None
    readers: list[ReadingSession]
    sources: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def nodules(self) -> list[NoduleAnnotation]:
        """Every reader's annotations of nodules >= 3 mm, reader by reader."""
        return [n for r in self.readers for n in r.nodules]


# ----------------------------------------------------------------------------- XML parsing
def _local(tag: object) -> str:
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    return tag.rsplit("}", 1)[-1]


def _children(elem, name: str) -> list:
    low = name.lower()
    return [c for c in elem if _local(c.tag).lower() == low]


def _child(elem, name: str):
    found = _children(elem, name)
    return found[0] if found else None


def _text(elem, name: str) -> str | None:
    c = _child(elem, name)
    if c is None or c.text is None:
        return None
    t = c.text.strip()
    return t or None


class _Ctx:
    """Where in the file the parser is, for error messages and notes."""

    def __init__(self, path: Path):
        self.path = path
        self.notes: list[str] = []

    def error(self, where: str, problem: str) -> LidcXmlError:
        return LidcXmlError(self.path, f"{where}: {problem}")

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.debug("%s: %s", self.path, text)


def _float(ctx: _Ctx, where: str, name: str, value: str | None) -> float | None:
    if value is None:
        return None
    try:
        out = float(value)
    except ValueError:
        raise ctx.error(where, f"{name} is not a number: {value!r}") from None
    if not math.isfinite(out):
        raise ctx.error(where, f"{name} is not finite: {value!r}")
    return out


def _coord(ctx: _Ctx, where: str, name: str, value: str | None) -> int:
    if value is None:
        raise ctx.error(where, f"a point has no {name}")
    out = _float(ctx, where, name, value)
    assert out is not None
    return int(round(out))


def _point(ctx: _Ctx, where: str, elem) -> tuple[int, int]:
    return (_coord(ctx, where, "xCoord", _text(elem, "xCoord")), _coord(ctx, where, "yCoord", _text(elem, "yCoord")))


def _characteristics(ctx: _Ctx, where: str, elem) -> Characteristics:
    values: dict[str, int | None] = {}
    for name, (lo, hi) in CHARACTERISTIC_RANGES.items():
        raw = _text(elem, name)
        value: int | None = None
        if raw is not None:
            try:
                number = float(raw)
            except ValueError:
                ctx.note(f"{where}: {name} {raw!r} is not a number; treated as missing")
                number = float("nan")
            if math.isfinite(number) and number == int(number) and lo <= number <= hi:
                value = int(number)
            elif math.isfinite(number):
                # texture 0 (and 0 for any score) occurs in the real files: no score was given.
                ctx.note(f"{where}: {name} {raw} is outside {lo}-{hi}; treated as missing")
        values[_ATTR[name]] = value
    return Characteristics(**values)


def _roi(ctx: _Ctx, where: str, elem) -> Roi | None:
    z = _float(ctx, where, "imageZposition", _text(elem, "imageZposition"))
    sop = _text(elem, "imageSOP_UID")
    inc_text = (_text(elem, "inclusion") or "TRUE").upper()
    if inc_text not in ("TRUE", "FALSE"):
        raise ctx.error(where, f"inclusion must be TRUE or FALSE, got {inc_text!r}")
    points = [_point(ctx, where, e) for e in _children(elem, "edgeMap")]
    if not points:
        ctx.note(f"{where}: a contour with no edgeMap points was skipped")
        return None
    if z is None and sop is None:
        raise ctx.error(where, "a contour has neither imageZposition nor imageSOP_UID")
    return Roi(z, sop, inc_text == "TRUE", np.asarray(points, dtype=np.int64).reshape(-1, 2))


def _reading_session(ctx: _Ctx, reader: int, elem) -> ReadingSession:
    session = ReadingSession(
        reader=reader,
        radiologist_id=_text(elem, "servicingRadiologistID"),
        annotation_version=_text(elem, "annotationVersion"),
    )
    for n, nod in enumerate(_children(elem, "unblindedReadNodule")):
        nid = _text(nod, "noduleID") or f"#{n}"
        where = f"reader {reader + 1}, nodule {nid}"
        rois = [r for r in (_roi(ctx, where, e) for e in _children(nod, "roi")) if r is not None]
        if not rois:
            ctx.note(f"{where}: no contour; skipped")
            continue
        n_points = sum(len(r.points) for r in rois)
        char_elem = _child(nod, "characteristics")
        if n_points == 1:
            # LIDC marks nodules < 3 mm by their centre point only, without characteristics.
            r = rois[0]
            session.small_nodules.append(
                SmallNodule(nid, reader, int(r.points[0, 0]), int(r.points[0, 1]), r.z_position, r.sop_uid)
            )
            continue
        if char_elem is None:
            ctx.note(f"{where}: contours without characteristics; scores treated as missing")
            chars = Characteristics()
        else:
            chars = _characteristics(ctx, where, char_elem)
        if not any(r.inclusion for r in rois):
            ctx.note(f"{where}: only exclusion contours; skipped")
            continue
        session.nodules.append(NoduleAnnotation(nid, reader, chars, rois, char_elem is not None))
    for n, non in enumerate(_children(elem, "nonNodule")):
        nid = _text(non, "nonNoduleID") or f"#{n}"
        where = f"reader {reader + 1}, non-nodule {nid}"
        locus = _children(non, "locus")
        if not locus:
            ctx.note(f"{where}: no locus; skipped")
            continue
        x, y = _point(ctx, where, locus[0])
        z = _float(ctx, where, "imageZposition", _text(non, "imageZposition"))
        session.non_nodules.append(NonNodule(nid, reader, x, y, z, _text(non, "imageSOP_UID")))
    return session


def parse_lidc_xml(path: str | os.PathLike) -> LidcSeriesAnnotations:
    """Parse one LIDC-IDRI XML file into plain dataclasses.

    Raises :class:`NotCtAnnotationError` for a chest X-ray read (``IdriReadMessage``) and
    :class:`LidcXmlError` for a file that is missing, malformed, unsafe (DTD / entities) or lacks
    the series UID or any reading session. Benign quirks (texture 0, a nodule without
    characteristics, an unusual number of readers) are recorded in ``notes``.
    """
    import defusedxml
    import defusedxml.ElementTree as SafeET

    p = Path(path)
    ctx = _Ctx(p)
    if not p.is_file():
        raise LidcXmlError(p, "no such file")
    try:
        root = SafeET.parse(str(p)).getroot()
    except defusedxml.DefusedXmlException as exc:
        raise LidcXmlError(p, f"refused: the XML uses a forbidden construct ({type(exc).__name__})") from None
    except SafeET.ParseError as exc:
        raise LidcXmlError(p, f"not well-formed XML ({exc})") from None
    except OSError as exc:
        raise LidcXmlError(p, f"cannot be read ({exc.strerror or exc})") from None
    kind = _local(root.tag)
    if kind == "IdriReadMessage":
        raise NotCtAnnotationError(p, "a chest X-ray read (IdriReadMessage), not a CT annotation; skipped")
    if kind != "LidcReadMessage":
        raise LidcXmlError(p, f"not an LIDC annotation file (root element <{kind}>, expected <LidcReadMessage>)")
    ns = root.tag[1:].split("}", 1)[0] if root.tag.startswith("{") else ""
    if ns != LIDC_NAMESPACE:
        ctx.note(f"namespace {ns!r} instead of {LIDC_NAMESPACE!r}; read anyway")
    header = _child(root, "ResponseHeader")
    if header is None:
        raise LidcXmlError(p, "no ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid")
    if not series_uid:
        raise LidcXmlError(p, "the ResponseHeader has no SeriesInstanceUid")
    sessions = _children(root, "readingSession")
    if not sessions:
        raise LidcXmlError(p, "no readingSession (no reader's annotations)")
    if len(sessions) not in (3, 4, 8):
        ctx.note(f"{len(sessions)} reading sessions (expected 3, 4 or 8)")
    readers = [_reading_session(ctx, i, s) for i, s in enumerate(sessions)]
    return LidcSeriesAnnotations(
        series_instance_uid=series_uid,
        study_instance_uid=_text(header, "StudyInstanceUID"),
        readers=readers,
        sources=[p],
        notes=ctx.notes,
    )


def _session_fingerprint(session: ReadingSession) -> str:
    h = hashlib.sha256()
    for n in session.nodules:
        h.update(repr((n.nodule_id, n.characteristics)).encode())
        for r in n.rois:
            h.update(repr((r.z_position, r.sop_uid, r.inclusion)).encode())
            h.update(np.ascontiguousarray(r.points).tobytes())
    for s in session.small_nodules:
        h.update(repr(("s", s.nodule_id, s.x, s.y, s.z_position, s.sop_uid)).encode())
    for s in session.non_nodules:
        h.update(repr(("n", s.non_nodule_id, s.x, s.y, s.z_position, s.sop_uid)).encode())
    return h.hexdigest()


def _renumber(session: ReadingSession, reader: int) -> ReadingSession:
    session.reader = reader
    for group in (session.nodules, session.small_nodules, session.non_nodules):
        for item in group:
            item.reader = reader
    return session


def merge_series(parsed: Iterable[LidcSeriesAnnotations]) -> dict[str, LidcSeriesAnnotations]:
    """Merge the files of each series (some LIDC series have several XML files), keyed by series UID.

    The reading sessions of all files of a series are concatenated and renumbered. A session that
    is an exact copy of a non-empty session from an *earlier file* of the series (the same file
    shipped twice) is dropped with a note. Sessions within one file are never dropped: two readers
    who marked nothing, or marked the same thing, are still two readers, and the agreement level
    of the consensus masks depends on counting them.
    """
    out: dict[str, LidcSeriesAnnotations] = {}
    seen: dict[str, set[str]] = {}
    for item in parsed:
        uid = item.series_instance_uid
        if uid not in out:
            out[uid] = LidcSeriesAnnotations(uid, item.study_instance_uid, [], [], [])
            seen[uid] = set()
        merged = out[uid]
        merged.sources.extend(item.sources)
        merged.notes.extend(item.notes)
        this_file: set[str] = set()
        for session in item.readers:
            fp = _session_fingerprint(session)
            empty = not (session.nodules or session.small_nodules or session.non_nodules)
            if not empty and fp in seen[uid]:
                merged.notes.append(
                    f"{', '.join(map(str, item.sources))}: reader {session.reader + 1} repeats a reading "
                    "session of an earlier file of this series; dropped"
                )
                continue
            this_file.add(fp)
            merged.readers.append(_renumber(session, len(merged.readers)))
        seen[uid] |= this_file
        if merged.study_instance_uid is None:
            merged.study_instance_uid = item.study_instance_uid
    return out


# ----------------------------------------------------------------------------- geometry
@dataclass
class SliceIndex:
    """Where each DICOM slice of a CT series lies in its volume, to place LIDC contours.

    ``sop_to_index`` maps SOP Instance UIDs to z indices of ``volume.array``; ``slice_z`` holds the
    ImagePositionPatient z (mm) of every z index. ``volume`` gives the grid (its array is the CT,
    but only its shape and geometry are used here).
    """

    volume: Volume
    sop_to_index: dict[str, int]
    slice_z: np.ndarray

    @classmethod
    def from_slices(cls, volume: Volume, slices: Sequence) -> "SliceIndex":
        """Build from the ``DicomSlice`` list of :func:`land_core.io.dicom.read_dicom_series_with_slices`.

        Each slice needs ``index`` (z index in the array), ``sop_instance_uid`` and ``position``
        (x, y, z of ImagePositionPatient). Indices without a slice get z from the volume geometry.
        """
        nz = volume.shape[0]
        slice_z = np.array([volume.index_to_world((0.0, 0.0, float(k)))[2] for k in range(nz)])
        sop: dict[str, int] = {}
        for s in slices:
            k = int(s.index)
            if not 0 <= k < nz:
                continue
            if s.sop_instance_uid:
                sop[str(s.sop_instance_uid)] = k
            if s.position is not None:
                slice_z[k] = float(s.position[2])
        return cls(volume, sop, slice_z)

    @property
    def slice_spacing(self) -> float:
        """Median distance between neighbouring slice positions (mm)."""
        if len(self.slice_z) < 2:
            return float(self.volume.spacing[2])
        return float(np.median(np.abs(np.diff(np.sort(self.slice_z)))))

    def slice_of(self, sop_uid: str | None, z_position: float | None) -> int | None:
        """z index of a contour's slice: by SOP UID, else by z position within half a slice spacing."""
        if sop_uid and sop_uid in self.sop_to_index:
            return self.sop_to_index[sop_uid]
        if z_position is None:
            return None
        d = np.abs(self.slice_z - z_position)
        k = int(np.argmin(d))
        if d[k] <= 0.5 * self.slice_spacing + 1e-3:
            return k
        return None

    def roi_slice(self, roi: Roi, where: str = "") -> int:
        """Like :meth:`slice_of` for a contour, raising :class:`LidcGeometryError` when it fits no slice."""
        k = self.slice_of(roi.sop_uid, roi.z_position)
        if k is None:
            raise LidcGeometryError(
                None,
                f"{where + ': ' if where else ''}contour at z = {roi.z_position} mm (SOP UID {roi.sop_uid}) "
                f"matches no slice of the series (slices span z {self.slice_z.min():.2f} to "
                f"{self.slice_z.max():.2f} mm)",
            )
        return k


# ----------------------------------------------------------------------------- rasterising
def _closed_polyline(points: np.ndarray) -> np.ndarray:
    """Pixels of the closed polygon through ``points`` (x, y), joined by 8-connected digital lines."""
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    if len(pts) == 1:
        return pts
    a = pts
    b = np.roll(pts, -1, axis=0)
    steps = np.maximum(np.abs(b - a).max(axis=1), 1)
    out = [pts]
    for (ax, ay), (bx, by), n in zip(a, b, steps):
        if n > 1:
            t = np.arange(1, n) / n
            out.append(np.stack([np.rint(ax + t * (bx - ax)), np.rint(ay + t * (by - ay))], axis=1).astype(np.int64))
    return np.concatenate(out)


def fill_contour(points: np.ndarray, shape_yx: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray]:
    """Fill the region bounded by LIDC edge-map pixels; returns (box in the slice, bool mask of the box).

    The LIDC points are the region's boundary pixels and belong to it. The points are joined into a
    closed 8-connected outline (consecutive points may be more than one pixel apart), and the region
    is the outline plus every pixel that the outline cuts off from the outside (a hole fill of a
    4-connected background, :func:`scipy.ndimage.binary_fill_holes`). Point-in-polygon tests
    (matplotlib.path) were not used because they are undefined exactly on the boundary, which is
    where every LIDC point lies; the hole fill includes the boundary by construction and also copes
    with outlines that touch themselves. ``points`` outside the slice are allowed; the result is
    clipped to ``shape_yx``. Returns an empty box when nothing falls inside.
    """
    ny, nx = shape_yx
    pts = np.asarray(points, dtype=np.int64).reshape(-1, 2)
    # a corrupt point far outside the slice must not make a huge canvas; clipping just outside the
    # slice keeps the part of the region that lies inside unchanged for ordinary outlines
    pts = np.column_stack([np.clip(pts[:, 0], -2, nx + 1), np.clip(pts[:, 1], -2, ny + 1)])
    line = _closed_polyline(pts)
    x0, y0 = line.min(axis=0) - 1
    x1, y1 = line.max(axis=0) + 2
    canvas = np.zeros((y1 - y0, x1 - x0), dtype=bool)
    canvas[line[:, 1] - y0, line[:, 0] - x0] = True
    from scipy import ndimage

    region = ndimage.binary_fill_holes(canvas)[1:-1, 1:-1]  # drop the one-pixel margin again
    x0, y0 = x0 + 1, y0 + 1
    y1, x1 = y0 + region.shape[0], x0 + region.shape[1]
    cy0, cy1 = max(y0, 0), min(y1, ny)
    cx0, cx1 = max(x0, 0), min(x1, nx)
    if cy0 >= cy1 or cx0 >= cx1:
        return (slice(0, 0), slice(0, 0)), np.zeros((0, 0), dtype=bool)
    crop = region[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
    return (slice(int(cy0), int(cy1)), slice(int(cx0), int(cx1))), crop


Box = tuple[slice, slice, slice]


@dataclass
class AnnotationMask:
    """A boolean mask of one annotation (or a consensus) inside ``box`` of the volume array (z, y, x)."""

    box: Box
    mask: np.ndarray

    def full(self, shape: tuple[int, int, int]) -> np.ndarray:
        """The mask placed in an array of the full volume shape."""
        out = np.zeros(shape, dtype=bool)
        out[self.box] = self.mask
        return out


def _where(ann: NoduleAnnotation) -> str:
    return f"reader {ann.reader + 1}, nodule {ann.nodule_id}"


def annotation_mask(ann: NoduleAnnotation, index: SliceIndex) -> AnnotationMask:
    """Rasterise one reader's nodule: union of its inclusion contours minus its holes, per slice.

    A hole (``inclusion`` FALSE) removes its boundary pixels and everything they enclose.
    """
    nz, ny, nx = index.volume.shape
    placed = []
    for roi in ann.rois:
        k = index.roi_slice(roi, _where(ann))
        (ys, xs), m = fill_contour(roi.points, (ny, nx))
        if m.size:
            placed.append((k, ys, xs, m, roi.inclusion))
    if not placed:
        return AnnotationMask((slice(0, 0),) * 3, np.zeros((0, 0, 0), dtype=bool))
    z0 = min(p[0] for p in placed)
    z1 = max(p[0] for p in placed) + 1
    y0 = min(p[1].start for p in placed)
    y1 = max(p[1].stop for p in placed)
    x0 = min(p[2].start for p in placed)
    x1 = max(p[2].stop for p in placed)
    mask = np.zeros((z1 - z0, y1 - y0, x1 - x0), dtype=bool)
    for k, ys, xs, m, inclusion in sorted(placed, key=lambda p: not p[4]):  # inclusions first
        view = mask[k - z0, ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        if inclusion:
            view |= m
        else:
            view &= ~m
    return AnnotationMask((slice(z0, z1), slice(y0, y1), slice(x0, x1)), mask)


def contour_points_mm(ann: NoduleAnnotation, index: SliceIndex) -> np.ndarray:
    """World positions (mm, LPS) of every contour point of an annotation, shape ``(n, 3)``."""
    chunks = []
    for roi in ann.rois:
        k = index.roi_slice(roi, _where(ann))
        ijk = np.column_stack([roi.points.astype(float), np.full(len(roi.points), float(k))])
        chunks.append(index.volume.index_to_world(ijk))
    return np.concatenate(chunks) if chunks else np.zeros((0, 3))


# ----------------------------------------------------------------------------- clustering
def _components(adjacent: np.ndarray) -> np.ndarray:
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    _, labels = connected_components(csr_matrix(adjacent), directed=False)
    return labels


def _has_repeated_reader(labels: np.ndarray, readers: np.ndarray) -> bool:
    pairs = set()
    for lab, r in zip(labels.tolist(), readers.tolist()):
        if (lab, r) in pairs:
            return True
        pairs.add((lab, r))
    return False


def cluster_annotations(
    annotations: Sequence[NoduleAnnotation],
    index: SliceIndex,
    *,
    tol: float | None = None,
    factor: float = 0.9,
    min_tol: float = 0.1,
) -> list[list[NoduleAnnotation]]:
    """Group the annotations that refer to the same physical nodule.

    Two annotations are linked when the smallest distance between their contour points (mm) is at
    most ``tol`` (default: the slice spacing, as pylidc); groups are the connected components of
    the links. While a group holds two annotations by the same reader (a reader marks each nodule
    once), ``tol`` is multiplied by ``factor`` and the grouping redone; below ``min_tol`` it gives up
    with a warning and keeps the last grouping. Groups are sorted by mean z of their points.
    """
    if not 0 < factor < 1:
        raise ValueError("factor must be between 0 and 1")
    anns = list(annotations)
    if not anns:
        return []
    from scipy.spatial import cKDTree

    points = [contour_points_mm(a, index) for a in anns]
    n = len(anns)
    tol = index.slice_spacing if tol is None else float(tol)
    # the tolerance only shrinks, so pairs whose bounding boxes are further apart than the first
    # tolerance can never be linked: their distance is not computed
    lo = np.array([p.min(axis=0) for p in points])
    hi = np.array([p.max(axis=0) for p in points])
    trees = [cKDTree(p) for p in points]
    dist = np.full((n, n), np.inf)
    np.fill_diagonal(dist, 0.0)
    for i in range(n):
        for j in range(i + 1, n):
            gap = np.linalg.norm(np.maximum(0.0, np.maximum(lo[i] - hi[j], lo[j] - hi[i])))
            if gap <= tol:
                dist[i, j] = dist[j, i] = float(trees[i].query(points[j], k=1)[0].min())
    readers = np.array([a.reader for a in anns])
    labels = _components(dist <= tol)
    while _has_repeated_reader(labels, readers):
        tol *= factor
        if tol < min_tol:
            log.warning(
                "could not split every nodule group into one annotation per reader; "
                "some nodules lie too close to separate automatically"
            )
            break
        labels = _components(dist <= tol)
    groups: dict[int, list[int]] = {}
    for i, lab in enumerate(labels.tolist()):
        groups.setdefault(lab, []).append(i)
    clusters = [[anns[i] for i in members] for members in groups.values()]
    mean_z = [float(np.mean(np.concatenate([points[i][:, 2] for i in members]))) for members in groups.values()]
    order = np.argsort(mean_z, kind="stable")
    return [clusters[i] for i in order]


# ----------------------------------------------------------------------------- consensus
def round_half_up(value: float) -> int:
    """Round to the nearest integer, halves upwards (2.5 -> 3), unlike Python's banker's rounding."""
    return int(math.floor(value + 0.5))


@dataclass
class ConsensusNodule:
    """One physical nodule: the readers' annotations, the consensus mask and the consensus texture.

    ``texture`` is the mean of the readers' texture scores (missing ones left out), rounded half up;
    ``None`` when no reader gave one. ``reader_textures`` keeps every annotation's score, in the
    order of ``annotations``. ``agreement`` is the fraction of annotations including each voxel of
    ``box``; ``mask`` is ``agreement >= level``.
    """

    annotations: list[NoduleAnnotation]
    level: float
    box: Box
    agreement: np.ndarray
    mask: np.ndarray
    texture: int | None
    reader_textures: list[int | None]
    centroid_mm: tuple[float, float, float]

    @property
    def readers(self) -> list[int]:
        return [a.reader for a in self.annotations]

    @property
    def characteristics(self) -> list[Characteristics]:
        return [a.characteristics for a in self.annotations]

    def full_mask(self, shape: tuple[int, int, int]) -> np.ndarray:
        return AnnotationMask(self.box, self.mask).full(shape)


def consensus_texture(scores: Iterable[int | None]) -> int | None:
    """Mean of the known texture scores, rounded half up; ``None`` when none is known."""
    known = [s for s in scores if s is not None]
    if not known:
        return None
    return round_half_up(float(np.mean(known)))


def consensus_nodule(
    cluster: Sequence[NoduleAnnotation], index: SliceIndex, level: float = LAND_CONSENSUS_LEVEL
) -> ConsensusNodule:
    """Consensus of one cluster: a voxel is nodule when at least ``level`` of the annotations include it."""
    if not 0 < level <= 1:
        raise ValueError(f"the agreement level must be in (0, 1], got {level}")
    anns = list(cluster)
    if not anns:
        raise ValueError("a cluster needs at least one annotation")
    masks = [annotation_mask(a, index) for a in anns]
    masks = [m for m in masks if m.mask.size]
    if masks:
        lo = [min(m.box[d].start for m in masks) for d in range(3)]
        hi = [max(m.box[d].stop for m in masks) for d in range(3)]
    else:
        lo, hi = [0, 0, 0], [0, 0, 0]
    box: Box = tuple(slice(a, b) for a, b in zip(lo, hi))  # type: ignore[assignment]
    count = np.zeros(tuple(b - a for a, b in zip(lo, hi)), dtype=np.int32)
    for m in masks:
        sub = tuple(slice(m.box[d].start - lo[d], m.box[d].stop - lo[d]) for d in range(3))
        count[sub] += m.mask
    agreement = count.astype(np.float32) / float(len(anns))
    # compare counts, not float fractions, so 1 of 4 at level 0.25 is exactly in
    mask = count >= math.ceil(level * len(anns) - 1e-9)
    textures = [a.texture for a in anns]
    if mask.any():
        kz, jy, ix = np.nonzero(mask)
        c = np.array([ix.mean() + lo[2], jy.mean() + lo[1], kz.mean() + lo[0]])
        centroid = tuple(float(v) for v in index.volume.index_to_world(c))
    else:
        centroid = tuple(float(v) for v in np.mean(np.concatenate([contour_points_mm(a, index) for a in anns]), axis=0))
    return ConsensusNodule(
        annotations=anns,
        level=level,
        box=box,
        agreement=agreement,
        mask=mask,
        texture=consensus_texture(textures),
        reader_textures=textures,
        centroid_mm=centroid,  # type: ignore[arg-type]
    )


def consensus_nodules(
    series: LidcSeriesAnnotations,
    index: SliceIndex,
    level: float = LAND_CONSENSUS_LEVEL,
    **cluster_kwargs,
) -> list[ConsensusNodule]:
    """Cluster every reader's nodules (>= 3 mm) of a series and build each cluster's consensus."""
    clusters = cluster_annotations(series.nodules, index, **cluster_kwargs)
    return [consensus_nodule(c, index, level) for c in clusters]


def nodule_texture_volume(nodules: Sequence[ConsensusNodule], index: SliceIndex, unknown_texture: int = 0) -> Volume:
    """A uint8 volume on the CT grid: each consensus nodule's voxels hold its texture score (1-5).

    This is LAND's nodule condition (consensus mask x mean reader texture). A nodule whose texture
    nobody scored gets ``unknown_texture`` (default 0: left out). Where nodules overlap, the later one
    (higher in z) wins.
    """
    out = np.zeros(index.volume.shape, dtype=np.uint8)
    for nod in nodules:
        value = nod.texture if nod.texture is not None else unknown_texture
        if value:
            out[nod.box][nod.mask] = value
    return index.volume.with_array(out)


def nodule_label_volume(nodules: Sequence[ConsensusNodule], index: SliceIndex) -> Volume:
    """A uint16 volume on the CT grid labelling consensus nodule i with i + 1."""
    out = np.zeros(index.volume.shape, dtype=np.uint16)
    for i, nod in enumerate(nodules):
        out[nod.box][nod.mask] = i + 1
    return index.volume.with_array(out)


# ----------------------------------------------------------------------------- TCIA folders
@dataclass
class LidcCase:
    """One usable CT series of the TCIA download and its annotation file(s)."""

    patient_id: str
    series_instance_uid: str
    folder: Path
    xml_files: list[Path]
    n_slices: int


@dataclass
class RejectedSeries:
    """A series of the download that is not used, and why (in plain words)."""

    patient_id: str
    folder: Path
    series_instance_uid: str
    reason: str


@dataclass
class LidcScan:
    """What :func:`find_lidc_cases` found: usable cases, rejected series, and notes."""

    cases: list[LidcCase] = field(default_factory=list)
    rejected: list[RejectedSeries] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _patient_id(root: Path, folder: Path) -> str:
    try:
        parts = folder.relative_to(root).parts
    except ValueError:
        parts = folder.parts
    for part in parts:
        if part.upper().startswith("LIDC-IDRI-"):
            return part
    return parts[0] if parts else folder.name


def _image_type(path: Path) -> str:
    import SimpleITK as sitk

    try:
        reader = sitk.ImageFileReader()
        reader.SetImageIO("GDCMImageIO")
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        return reader.GetMetaData("0008|0008").strip() if reader.HasMetaDataKey("0008|0008") else ""
    except RuntimeError:
        return ""


def find_lidc_cases(root: str | os.PathLike, *, min_slices: int = 10) -> LidcScan:
    """Find each CT series and its XML under a TCIA LIDC-IDRI folder; reject the others with a reason.

    Layout: ``LIDC-IDRI/LIDC-IDRI-0001/<study>/<series>/*.dcm`` with the series' ``*.xml`` next to
    its slices. Rejected: series that are not CT (the chest X-rays, CR/DX), localisers (image type
    LOCALIZER, or fewer than ``min_slices`` slices), and CT series without a usable CT annotation
    file for that series UID. Chest X-ray XMLs are skipped with a note. Slice geometry (gaps,
    duplicates, mixed orientations) is checked when a case is loaded (:func:`load_lidc_case`).
    """
    from land_core.io.dicom import list_dicom_series

    base = Path(root)
    if not base.is_dir():
        raise LidcError(base, "not a folder")
    scan = LidcScan()
    series_list = list_dicom_series(base)
    for info in sorted(series_list, key=lambda s: str(s.folders[0]) if s.folders else s.series_uid):
        folder = info.folders[0] if info.folders else base
        pid = _patient_id(base, folder)

        def reject(reason: str) -> None:
            scan.rejected.append(RejectedSeries(pid, folder, info.series_uid, reason))

        modality = (info.modality or "").upper()
        if modality != "CT":
            kind = " (a chest X-ray)" if modality in ("CR", "DX") else ""
            reject(f"modality {modality or 'unknown'}{kind}, not CT")
            continue
        if "LOCALIZER" in _image_type(info.files[0]).upper():
            reject("a localiser (scout) image, not a CT volume")
            continue
        if info.n_files < min_slices:
            reject(f"only {info.n_files} slice(s); a localiser or partial series, not a chest CT volume")
            continue
        xmls: list[Path] = []
        for f in sorted({x for d in info.folders for x in d.glob("*.xml")} | {x for d in info.folders for x in d.glob("*.XML")}):
            try:
                parsed = parse_lidc_xml(f)
            except NotCtAnnotationError:
                scan.notes.append(f"{f}: a chest X-ray read; skipped")
                continue
            except LidcXmlError as exc:
                scan.notes.append(str(exc))
                continue
            if parsed.series_instance_uid != info.series_uid:
                scan.notes.append(f"{f}: annotates series {parsed.series_instance_uid}, not {info.series_uid}; not used")
                continue
            xmls.append(f)
        if not xmls:
            reject("no LIDC CT annotation XML for this series in its folder")
            continue
        scan.cases.append(LidcCase(pid, info.series_uid, folder, xmls, info.n_files))
    return scan


@dataclass
class LidcCaseData:
    """A loaded case: the CT, where its slices are, the merged annotations and the consensus nodules."""

    case: LidcCase
    ct: Volume
    index: SliceIndex
    annotations: LidcSeriesAnnotations
    nodules: list[ConsensusNodule]


def load_lidc_case(case: LidcCase, level: float = LAND_CONSENSUS_LEVEL) -> LidcCaseData:
    """Read a case's CT series, merge its XML files and build the consensus nodules.

    Raises :class:`LidcError` naming the series folder when the series is inconsistent (gaps,
    duplicate slices, mixed orientations) or a contour fits no slice.
    """
    from land_core.io.dicom import read_dicom_series_with_slices

    try:
        volume, slices = read_dicom_series_with_slices(case.folder, case.series_instance_uid)
    except LandError as exc:
        raise LidcError(case.folder, f"{case.patient_id}: the CT series cannot be used ({exc})") from None
    index = SliceIndex.from_slices(volume, slices)
    merged = merge_series(parse_lidc_xml(x) for x in case.xml_files)[case.series_instance_uid]
    try:
        nodules = consensus_nodules(merged, index, level)
    except LidcGeometryError as exc:
        raise LidcGeometryError(case.folder, f"{case.patient_id}: {exc.problem}") from None
    return LidcCaseData(case, volume, index, merged, nodules)


# ----------------------------------------------------------------------------- summaries and CLI
def summarize(series: LidcSeriesAnnotations) -> dict:
    """A JSON-able summary: series UID and, per reader, nodules (id, every score, ROI count), small
    nodules and non-nodules."""
    readers = []
    for r in series.readers:
        readers.append(
            {
                "reader": r.reader + 1,
                "radiologist_id": r.radiologist_id,
                "nodules": [
                    {
                        "id": n.nodule_id,
                        **n.characteristics.as_dict(),
                        "num_rois": len(n.rois),
                        "num_holes": sum(not roi.inclusion for roi in n.rois),
                        "has_characteristics": n.has_characteristics,
                    }
                    for n in r.nodules
                ],
                "small_nodules": [
                    {"id": s.nodule_id, "x": s.x, "y": s.y, "z": s.z_position, "sop_uid": s.sop_uid}
                    for s in r.small_nodules
                ],
                "non_nodules": [
                    {"id": s.non_nodule_id, "x": s.x, "y": s.y, "z": s.z_position, "sop_uid": s.sop_uid}
                    for s in r.non_nodules
                ],
            }
        )
    return {
        "series_instance_uid": series.series_instance_uid,
        "study_instance_uid": series.study_instance_uid,
        "readers": readers,
        "notes": list(series.notes),
    }


def inspect_files(paths: Sequence[str | os.PathLike]) -> Iterable[tuple[dict, bool]]:
    """For each file, yield (summary or error object, ok). X-ray reads are skipped with a note (ok)."""
    for path in paths:
        p = Path(path)
        try:
            series = parse_lidc_xml(p)
        except NotCtAnnotationError as exc:
            yield {"path": str(p), "skipped": True, "note": exc.problem}, True
        except LandError as exc:
            problem = getattr(exc, "problem", str(exc))
            yield {"path": str(p), "error": problem}, False
        else:
            yield {"path": str(p), **summarize(series)}, True


def _cmd_lidc_inspect(args: argparse.Namespace) -> int:
    failed = 0
    for obj, ok in inspect_files(args.files):
        failed += not ok
        if args.json:
            print(json.dumps(obj), flush=True)
        elif "error" in obj:
            print(f"{obj['path']}: error: {obj['error']}", flush=True)
        elif obj.get("skipped"):
            print(f"{obj['path']}: skipped: {obj['note']}", flush=True)
        else:
            print(f"{obj['path']}: series {obj['series_instance_uid']}, {len(obj['readers'])} reader(s)")
            for r in obj["readers"]:
                tex = [n["texture"] for n in r["nodules"]]
                print(
                    f"  reader {r['reader']}: {len(r['nodules'])} nodule(s) >= 3 mm (textures {tex}), "
                    f"{len(r['small_nodules'])} small nodule(s), {len(r['non_nodules'])} non-nodule(s)"
                )
            for note in obj["notes"]:
                print(f"  note: {note}")
    if failed:
        print(f"land: {failed} of {len(args.files)} file(s) could not be used", file=sys.stderr)
        return 1
    return 0


def _cmd_lidc_find(args: argparse.Namespace) -> int:
    scan = find_lidc_cases(args.root, min_slices=args.min_slices)
    if args.json:
        for c in scan.cases:
            print(json.dumps({"patient_id": c.patient_id, "series_instance_uid": c.series_instance_uid,
                              "folder": str(c.folder), "xml_files": [str(x) for x in c.xml_files],
                              "n_slices": c.n_slices}))
        for r in scan.rejected:
            print(json.dumps({"patient_id": r.patient_id, "series_instance_uid": r.series_instance_uid,
                              "folder": str(r.folder), "rejected": r.reason}))
        return 0
    for c in scan.cases:
        print(f"{c.patient_id}: CT {c.series_instance_uid} ({c.n_slices} slices, {len(c.xml_files)} XML) in {c.folder}")
    for r in scan.rejected:
        print(f"{r.patient_id}: rejected {r.series_instance_uid} in {r.folder}: {r.reason}")
    for note in scan.notes:
        print(f"note: {note}")
    print(f"{len(scan.cases)} usable CT series, {len(scan.rejected)} rejected")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land lidc inspect FILE.xml ... [--json]`` and ``land lidc find ROOT``."""
    p = sub.add_parser("lidc", help="LIDC-IDRI annotation files")
    lsub = p.add_subparsers(dest="lidc_cmd", required=True)
    c = lsub.add_parser(
        "inspect",
        help="summarise LIDC-IDRI XML files (readers, nodules, scores)",
        description="Parse each LIDC-IDRI XML file and summarise it. A file that cannot be used is "
        "reported and the next one is processed; the exit status is 1 when any file failed.",
    )
    c.add_argument("files", nargs="+", type=Path, help="LIDC XML file(s)")
    c.add_argument("--json", action="store_true", help="one JSON object per file, one per line")
    c.set_defaults(func=_cmd_lidc_inspect)
    f = lsub.add_parser(
        "find",
        help="list the CT series and annotation files of a TCIA LIDC-IDRI download",
        description="Find every CT series with its LIDC XML under ROOT (LIDC-IDRI/LIDC-IDRI-0001/<study>/"
        "<series>/) and say why the other series (X-rays, localisers, series without XML) are not used.",
    )
    f.add_argument("root", type=Path, help="the LIDC-IDRI folder")
    f.add_argument("--min-slices", type=int, default=10, help="fewer slices than this is not a CT volume (default 10)")
    f.add_argument("--json", action="store_true", help="one JSON object per series, one per line")
    f.set_defaults(func=_cmd_lidc_find)
