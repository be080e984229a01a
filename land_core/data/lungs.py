"""Lung segmentation of chest CT without downloaded weights: 1 = right lung, 2 = left lung.

LAND conditions its generator on a lung mask. Its authors used a pretrained U-Net (lungmask), but
weights cannot be downloaded here, so the default is a classical pipeline in the spirit of Hu et al.
(IEEE TMI 2001), with every size given in millimetres so that it works at any spacing:

1. Air: voxels below ``air_threshold_hu`` (about -320 HU, halfway between lung and soft tissue).
2. Outside air and the table: an air component lies *outside the body* when most of it falls outside
   the convex hull of the body tissue, slice by slice. This also works for crops whose lungs touch
   the volume border, where the usual "remove components touching the border" would delete the lungs.
3. Lungs: the largest lung-like air component inside the body, plus the second largest when it is
   big enough and lies at the same height. Gas in the stomach or bowel is dropped: it is pure air
   (mean below ``gas_hu``), unlike parenchyma; where it touches a lung through a thin diaphragm
   (coarse slices, partial volume), the two are parted by an erosion on a coarse grid.
4. Airways: the trachea is found in the top slices as a small, round, persistent air region near the
   middle of the body, then followed slice by slice downwards at a tighter threshold
   (``airway_threshold_hu``) through the carina into both main bronchi, each ending where it divides
   into lobar bronchi, where it widens into lung (a leak) or ``bronchus_depth_mm`` below the
   carina. The airway lumen is removed from the lungs.
5. Left and right: two components are labelled by their x position (patient's right = low LPS x).
   When the lungs touch (one component), they are split by eroding until two cores appear and
   giving every voxel to the nearer core.
6. Each lung is closed in axial slices with a disc of ``closing_radius_mm`` (a rolling ball), small
   shallow concavities of its outline are added (the part of a juxtapleural nodule the ball cannot
   reach), and its holes are filled, so vessels, nodules and juxtapleural nodules stay inside.

Morphology uses Euclidean distance transforms (dilate = distance to the mask <= r) so that radii are
in mm for any spacing and the cost does not grow with the radius; scikit-image is not a dependency,
and the few pieces it would give (convex hull of a slice) are written here with numpy and scipy.

If the user names a local lungmask weights file, that model is used instead (the lungmask package must
be installed; nothing is downloaded).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from land_core.errors import LandError
from land_core.volume import Volume

log = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2


class LungSegmentationError(LandError):
    """The lungs could not be segmented (no lung-sized air inside the body, bad input, ...)."""


class LungmaskUnavailableError(LungSegmentationError):
    """A lungmask weights file was given but the lungmask package is not installed."""


@dataclass
class LungSegmentationConfig:
    """Parameters of the threshold pipeline, in HU and mm (see the module docstring)."""

    air_threshold_hu: float = -320.0
    airway_threshold_hu: float = -900.0
    closing_radius_mm: float = 10.0
    bump_max_area_mm2: float = 300.0
    bump_max_depth_mm: float = 12.0
    bump_max_width_mm: float = 30.0
    min_lung_ml: float = 5.0
    second_lung_fraction: float = 0.05
    inside_body_fraction: float = 0.5
    gas_hu: float = -950.0
    trachea_area_mm2: tuple[float, float] = (40.0, 900.0)
    trachea_search_mm: float = 80.0
    bronchus_depth_mm: float = 35.0
    airway_margin_mm: float = 1.5


# ----------------------------------------------------------------------------- orientation
@dataclass
class _Frame:
    """How the volume array maps to a canonical array: axes (world z up, world y, world x)."""

    axes: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    spacing: tuple[float, float, float]  # mm along the canonical axes (z, y, x)


def _frame(volume: Volume) -> _Frame:
    d = volume.direction
    world_of_index = [int(np.argmax(np.abs(d[:, i]))) for i in range(3)]  # index axis i -> world axis
    if sorted(world_of_index) != [0, 1, 2]:
        log.warning("oblique volume orientation; treating the array axes as (z, y, x)")
        world_of_index = [0, 1, 2]
    index_of_world = {w: i for i, w in enumerate(world_of_index)}
    axes = []
    flips = []
    spacing = []
    for w in (2, 1, 0):  # canonical array axes: world z, world y, world x
        i = index_of_world[w]
        axes.append(2 - i)  # array axis of index axis i
        flips.append(bool(d[w, i] < 0))
        spacing.append(float(volume.spacing[i]))
    return _Frame(tuple(axes), tuple(flips), tuple(spacing))  # type: ignore[arg-type]


def _to_canonical(array: np.ndarray, frame: _Frame) -> np.ndarray:
    out = np.transpose(array, frame.axes)
    for ax, flip in enumerate(frame.flips):
        if flip:
            out = np.flip(out, axis=ax)
    return out


def _from_canonical(array: np.ndarray, frame: _Frame) -> np.ndarray:
    out = array
    for ax, flip in enumerate(frame.flips):
        if flip:
            out = np.flip(out, axis=ax)
    return np.ascontiguousarray(np.transpose(out, np.argsort(frame.axes)))


# ----------------------------------------------------------------------------- helpers
def _edt_2d(mask: np.ndarray, sy: float, sx: float) -> np.ndarray:
    """Per-axial-slice Euclidean distance (mm) of True voxels to the nearest False voxel of their slice.

    A very large z sampling keeps the transform within each slice; a slice without any False voxel
    gets distances of at least 1e6 mm (infinite for every radius used here).
    """
    from scipy import ndimage

    return ndimage.distance_transform_edt(mask, sampling=(1e6, sy, sx))


def _close_2d(mask: np.ndarray, radius_mm: float, sy: float, sx: float) -> np.ndarray:
    """Closing of every axial slice with a disc of ``radius_mm`` (a rolling ball of that radius).

    The slices are first extended by repeating their edge pixels, so that a lung cut by the border
    of a cropped volume is closed as if it went on, instead of being bridged to tissue along the
    border (where no background pixel would stop the erosion).
    """
    py, px = int(np.ceil(radius_mm / sy)) + 1, int(np.ceil(radius_mm / sx)) + 1
    padded = np.pad(mask, ((0, 0), (py, py), (px, px)), mode="edge")
    dilated = _edt_2d(~padded, sy, sx) <= radius_mm
    closed = _edt_2d(dilated, sy, sx) > radius_mm
    return closed[:, py:-py, px:-px]


def _fill_holes_2d(mask: np.ndarray) -> np.ndarray:
    """Fill holes in every axial slice (a 3D array holding in-plane connectivity only)."""
    from scipy import ndimage

    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1)
    padded = np.pad(mask, ((1, 1), (0, 0), (0, 0)))
    return ndimage.binary_fill_holes(padded, structure=structure)[1:-1]


def _fill_pleural_bumps(
    mask: np.ndarray,
    tissue: np.ndarray,
    sy: float,
    sx: float,
    max_area_mm2: float,
    max_depth_mm: float,
    max_width_mm: float,
) -> np.ndarray:
    """Add small, shallow concavities of each axial slice of one lung (juxtapleural nodules).

    A rolling ball cannot fill a nodule that sits on the pleura completely: near the nodule's base
    the ball still fits between lung and nodule. Here the concavities of the slice (its convex hull
    minus the lung) are added when they are small (``max_area_mm2``), shallow (no point deeper than
    ``max_depth_mm`` inside the hull), short (bounding box diagonal at most ``max_width_mm``: a
    nodule, not a long sliver along the mediastinum) and pure tissue. Large, deep or long
    concavities (the heart impression, the hilum, the paravertebral gutter) and those holding air
    are left alone.
    """
    from scipy import ndimage

    out = mask.copy()
    px_area = sy * sx
    for k in range(mask.shape[0]):
        sl = mask[k]
        rows = np.flatnonzero(sl.any(axis=1))
        if len(rows) < 3:
            continue
        first = sl[rows].argmax(axis=1)
        last = sl.shape[1] - 1 - sl[rows, ::-1].argmax(axis=1)
        pts = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])
        hull = _hull_fill(pts, sl.shape)
        concave = hull & ~sl
        if not concave.any():
            continue
        lab, n = ndimage.label(concave)
        sizes = np.bincount(lab.ravel(), minlength=n + 1)
        not_tissue = np.bincount(lab[~tissue[k]], minlength=n + 1)
        objs = ndimage.find_objects(lab)
        diag = np.array([np.hypot((o[0].stop - o[0].start) * sy, (o[1].stop - o[1].start) * sx) for o in objs])
        ok = np.zeros(n + 1, dtype=bool)
        ok[1:] = (sizes[1:] * px_area <= max_area_mm2) & (diag <= max_width_mm) & (not_tissue[1:] == 0)
        if not ok.any():
            continue
        # depth below the hull outline, only where a candidate lies
        rows_c, cols_c = np.nonzero(ok[lab])
        y0, y1 = max(rows_c.min() - 1, 0), rows_c.max() + 2
        x0, x1 = max(cols_c.min() - 1, 0), cols_c.max() + 2
        sub_hull = np.pad(hull, 1)[y0 : y1 + 2, x0 : x1 + 2]  # padded: the frame is outside the hull
        depth = ndimage.distance_transform_edt(sub_hull, sampling=(sy, sx))[1:-1, 1:-1]
        sub_lab = lab[y0:y1, x0:x1]
        deepest = np.zeros(n + 1)
        sel = ok[sub_lab]
        np.maximum.at(deepest, sub_lab[sel], depth[: sub_lab.shape[0], : sub_lab.shape[1]][sel])
        ok &= deepest <= max_depth_mm
        out[k] |= ok[lab]
    return out


def _bbox(mask: np.ndarray, margin: tuple[int, int, int] = (0, 0, 0)) -> tuple[slice, slice, slice] | None:
    idx = [np.flatnonzero(mask.any(axis=tuple(j for j in range(3) if j != ax))) for ax in range(3)]
    if any(len(i) == 0 for i in idx):
        return None
    return tuple(
        slice(max(int(i[0]) - m, 0), min(int(i[-1]) + m + 1, n)) for i, m, n in zip(idx, margin, mask.shape)
    )  # type: ignore[return-value]


def _hull_fill(points_yx: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Fill the convex hull of integer pixel points (y, x) in a 2D array of ``shape``."""
    from scipy.spatial import ConvexHull, QhullError

    out = np.zeros(shape, dtype=bool)
    if len(points_yx) == 0:
        return out
    try:
        hull = ConvexHull(points_yx.astype(float))
        poly = points_yx[hull.vertices].astype(float)
    except (QhullError, ValueError):  # collinear or too few points: the points are their own hull
        out[points_yx[:, 0], points_yx[:, 1]] = True
        return out
    y0, y1 = int(poly[:, 0].min()), int(poly[:, 0].max())
    rows = np.arange(y0, y1 + 1, dtype=float)
    a = poly
    b = np.roll(poly, -1, axis=0)
    lo = np.minimum(a[:, 0], b[:, 0])[:, None]
    hi = np.maximum(a[:, 0], b[:, 0])[:, None]
    dy = (b[:, 0] - a[:, 0])[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (rows[None, :] - a[:, 0:1]) / dy
        x = a[:, 1:2] + t * (b[:, 1:2] - a[:, 1:2])
    valid = (rows[None, :] >= lo) & (rows[None, :] <= hi) & (dy != 0)
    # horizontal edges and vertices: their own end points
    x_valid_min = np.where(valid, x, np.inf).min(axis=0)
    x_valid_max = np.where(valid, x, -np.inf).max(axis=0)
    for vy, vx in poly:
        r = int(vy) - y0
        x_valid_min[r] = min(x_valid_min[r], vx)
        x_valid_max[r] = max(x_valid_max[r], vx)
    xmin = np.clip(np.ceil(x_valid_min - 1e-6), 0, shape[1] - 1).astype(int)
    xmax = np.clip(np.floor(x_valid_max + 1e-6), 0, shape[1] - 1).astype(int)
    cols = np.arange(shape[1])
    out[y0 : y1 + 1] = (cols[None, :] >= xmin[:, None]) & (cols[None, :] <= xmax[:, None])
    return out


def _body_hull(tissue: np.ndarray, spacing: tuple[float, float, float], min_area_mm2: float = 100.0) -> np.ndarray:
    """Per axial slice, the convex hull of the body tissue (2D components smaller than
    ``min_area_mm2``, e.g. cables or noise, are left out)."""
    from scipy import ndimage

    _, sy, sx = spacing
    min_px = max(1, int(min_area_mm2 / (sy * sx)))
    hull = np.zeros_like(tissue)
    for k in range(tissue.shape[0]):
        sl = tissue[k]
        if not sl.any():
            continue
        lab, n = ndimage.label(sl)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            keep = sizes >= min_px
            keep[0] = False
            sl = keep[lab]
        rows = np.flatnonzero(sl.any(axis=1))
        if len(rows) == 0:
            continue
        first = sl[rows].argmax(axis=1)
        last = sl.shape[1] - 1 - sl[rows, ::-1].argmax(axis=1)
        pts = np.concatenate([np.stack([rows, first], 1), np.stack([rows, last], 1)])
        hull[k] = _hull_fill(pts, sl.shape)
    return hull


def _z_overlap(a: tuple[int, int], b: tuple[int, int]) -> float:
    """Overlap of z range ``b`` with ``a``, as a fraction of ``b``'s length."""
    inter = min(a[1], b[1]) - max(a[0], b[0]) + 1
    return max(inter, 0) / (b[1] - b[0] + 1)


def _select_lungs(
    labels: np.ndarray, candidates: list[int], hu: np.ndarray, voxel_ml: float, cfg: LungSegmentationConfig
) -> list[int]:
    """The largest lung-like candidate component, plus the second when it is big and level with it.

    Lung-like: the mean HU of its air voxels is above ``gas_hu`` (parenchyma is not pure air; gas
    in the stomach or bowel is). The second component must hold ``second_lung_fraction`` of the
    first's voxels and lie at the same height (bowel gas lies below the lungs).
    """
    from scipy import ndimage

    if not candidates:
        return []
    sizes = np.bincount(labels.ravel())
    cands = sorted(candidates, key=lambda c: -sizes[c])
    cands = [c for c in cands if sizes[c] * voxel_ml >= cfg.min_lung_ml]
    if not cands:
        return []
    inside = labels > 0
    sums = np.bincount(labels[inside], weights=hu[inside].astype(np.float64), minlength=len(sizes))
    mean_hu = sums / np.maximum(sizes, 1)
    lung_like = [c for c in cands if mean_hu[c] >= cfg.gas_hu]
    if not lung_like:
        return [cands[0]]
    chosen = [lung_like[0]]
    if len(lung_like) > 1 and sizes[lung_like[1]] >= cfg.second_lung_fraction * sizes[lung_like[0]]:
        objs = ndimage.find_objects(labels, max_label=max(lung_like[:2]))
        za = (objs[lung_like[0] - 1][0].start, objs[lung_like[0] - 1][0].stop - 1)
        zb = (objs[lung_like[1] - 1][0].start, objs[lung_like[1] - 1][0].stop - 1)
        if _z_overlap(za, zb) >= 0.5:
            chosen.append(lung_like[1])
    return chosen


def _coarse(mask: np.ndarray, values: np.ndarray, f: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Block-average a mask (>= half full) and values (mean over the mask) by factors ``f``."""
    pads = [(0, (-n) % k) for n, k in zip(mask.shape, f)]
    m = np.pad(mask, pads).astype(np.float32)
    v = np.pad(np.where(mask, values, 0).astype(np.float32), pads)
    shape = []
    for n, k in zip(m.shape, f):
        shape += [n // k, k]
    m = m.reshape(shape).sum(axis=(1, 3, 5))
    v = v.reshape(shape).sum(axis=(1, 3, 5))
    return m >= 0.5 * f[0] * f[1] * f[2], v / np.maximum(m, 1)


def _remove_gas(lung_air: np.ndarray, hu: np.ndarray, spacing: tuple[float, float, float], cfg: LungSegmentationConfig) -> np.ndarray:
    """Cut stomach or bowel gas that touches a lung through a thin, partial-volumed diaphragm.

    On a coarse grid (about 3 mm), the air is eroded by one to three coarse voxels until the bridge
    breaks; each remaining core is gas when the mean HU of its voxels is below ``gas_hu``. Every air voxel
    then goes to its nearest core, and the voxels of gas cores are dropped. Nothing changes when no
    gas core appears (the usual case), and thin lung edges stay, since they are nearest to a lung.
    """
    from scipy import ndimage

    box = _bbox(lung_air)
    if box is None:
        return lung_air
    m = lung_air[box]
    f = tuple(max(1, int(3.0 // s)) for s in spacing)
    cm, chu = _coarse(m, hu[box], f)  # type: ignore[arg-type]
    cs = tuple(s * k for s, k in zip(spacing, f))
    dist = ndimage.distance_transform_edt(cm, sampling=cs)
    coarse_ml = float(np.prod(cs)) / 1000.0
    for layers in (1, 2, 3):  # a wider neck needs a deeper erosion to break
        cores, n = ndimage.label(dist > (layers + 0.01) * max(cs))
        if n < 2:
            continue
        sizes = np.bincount(cores.ravel(), minlength=n + 1)
        mean_hu = np.bincount(cores.ravel(), weights=chu.ravel(), minlength=n + 1) / np.maximum(sizes, 1)
        big = sizes * coarse_ml >= 1.0
        big[0] = False
        gas = big & (mean_hu < cfg.gas_hu)
        if gas.any() and (big & ~gas).any():
            break
    else:
        return lung_air
    seeds = np.where(big[cores], cores, 0)
    _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=cs, return_indices=True)
    nearest = seeds[tuple(idx)]
    keep_coarse = ~gas[nearest]
    keep = keep_coarse
    for ax, k in enumerate(f):
        keep = np.repeat(keep, k, axis=ax)
    keep = keep[: m.shape[0], : m.shape[1], : m.shape[2]]
    out = lung_air.copy()
    out[box] = m & keep
    log.info("removed %.0f mL of gas below the lungs", float((m & ~keep).sum()) * np.prod(spacing) / 1000.0)
    return out


# ----------------------------------------------------------------------------- airways
def _find_trachea_seed(
    tight: np.ndarray, inside: np.ndarray, spacing: tuple[float, float, float], cfg: LungSegmentationConfig
) -> tuple[int, np.ndarray] | None:
    """(slice, 2D mask) of the trachea in the top slices, or None.

    A candidate is a 2D component of the tight-threshold air inside the body whose area is that of a
    trachea, that is compact (fills at least half of its bounding box), near the middle of the air
    inside the body, and that continues for 10 mm downwards without growing more than twofold (a
    lung apex widens quickly).
    """
    from scipy import ndimage

    sz, sy, sx = spacing
    px_area = sy * sx
    amin, amax = cfg.trachea_area_mm2
    top = int(np.flatnonzero(inside.any(axis=(1, 2)))[-1]) if inside.any() else -1
    if top < 0:
        return None
    depth = max(1, int(round(cfg.trachea_search_mm / sz)))
    persist = max(1, int(round(10.0 / sz)))
    xs = np.flatnonzero(inside.any(axis=(0, 1)))
    x_mid, x_half = 0.5 * (xs[0] + xs[-1]), 0.5 * (xs[-1] - xs[0] + 1)
    best: tuple[float, int, np.ndarray] | None = None
    for k in range(top, max(top - depth, -1), -1):
        lab, n = ndimage.label(tight[k])
        if n == 0:
            continue
        objs = ndimage.find_objects(lab)
        sizes = np.bincount(lab.ravel())
        for c in range(1, n + 1):
            area = sizes[c] * px_area
            if not amin <= area <= amax:
                continue
            ys, xsl = objs[c - 1]
            h, w = ys.stop - ys.start, xsl.stop - xsl.start
            if sizes[c] < 0.5 * h * w or max(h * sy, w * sx) > 3.0 * min(h * sy, w * sx):
                continue
            cx = 0.5 * (xsl.start + xsl.stop - 1)
            off = abs(cx - x_mid) / x_half
            if off > 0.35:
                continue
            region = lab == c
            ok = True
            prev = region
            for j in range(1, persist + 1):
                if k - j < 0:
                    break
                lab2, _ = ndimage.label(tight[k - j])
                ids = np.unique(lab2[prev & (lab2 > 0)])
                if len(ids) == 0:
                    ok = False
                    break
                nxt = np.isin(lab2, ids)
                if nxt.sum() > 2.0 * prev.sum() + 4 or nxt.sum() * px_area > amax * 1.5:
                    ok = False
                    break
                prev = nxt
            if not ok:
                continue
            score = off  # the most central candidate of the topmost slice that has one
            if best is None or score < best[0]:
                best = (score, k, region)
        if best is not None:
            return best[1], best[2]
    return None


def _track_airways(
    tight: np.ndarray, seed_k: int, seed: np.ndarray, spacing: tuple[float, float, float], cfg: LungSegmentationConfig
) -> np.ndarray:
    """Follow the trachea from the seed slice up to the top and down into the two main bronchi.

    Works slice by slice at the tight threshold. A branch continues into the components of the next
    slice that touch it; a component much wider than its parent is lung, not airway (a leak), and
    is not taken. The trachea becomes two main bronchi where it splits into two sizeable parts (the
    carina); a main bronchus ends where it splits again (into lobar bronchi), where it leaks, or
    ``bronchus_depth_mm`` below the carina.
    """
    from scipy import ndimage

    sz, sy, sx = spacing
    px_area = sy * sx
    amax = cfg.trachea_area_mm2[1]
    min_branch_px = max(1, int(round(8.0 / px_area)))
    near = ndimage.generate_binary_structure(2, 2)
    airway = np.zeros_like(tight)
    airway[seed_k] = seed
    depth_px = max(1, int(round(cfg.bronchus_depth_mm / sz)))

    def children(parent: np.ndarray, lab: np.ndarray, sizes: np.ndarray) -> list[np.ndarray]:
        grown = ndimage.binary_dilation(parent, structure=near, iterations=2)
        out = []
        parent_px = int(parent.sum()) or 1
        for c in np.unique(lab[grown & (lab > 0)]):
            if sizes[c] > 2.5 * parent_px + 6 or sizes[c] * px_area > 1.5 * amax:
                continue  # widens into lung: a leak
            if sizes[c] < max(min_branch_px, 0.2 * parent_px):
                continue  # a speck or a small side branch: not followed
            out.append(lab == c)
        return out

    # upwards from the seed to the top of the volume: the trachea only
    prev = seed
    for k in range(seed_k + 1, tight.shape[0]):
        lab, _ = ndimage.label(tight[k])
        kids = children(prev, lab, np.bincount(lab.ravel()))
        if not kids:
            break
        prev = np.logical_or.reduce(kids)
        airway[k] = prev
    # downwards: trachea -> carina -> two main bronchi
    branches: list[tuple[str, np.ndarray]] = [("trachea", seed)]
    carina: int | None = None
    for k in range(seed_k - 1, -1, -1):
        if not branches or (carina is not None and carina - k > depth_px):
            break
        lab, _ = ndimage.label(tight[k])
        sizes = np.bincount(lab.ravel())
        nxt: list[tuple[str, np.ndarray]] = []
        for kind, mask in branches:
            kids = children(mask, lab, sizes)
            if not kids:
                continue
            if len(kids) == 1:
                nxt.append((kind, kids[0]))
            elif kind == "trachea":
                if carina is None:
                    carina = k
                nxt.extend(("bronchus", m) for m in kids)
            # a main bronchus splitting into lobar bronchi ends here
        for _, m in nxt:
            airway[k] |= m
        branches = nxt
    return airway


# ----------------------------------------------------------------------------- split and label
def _split_two(mask: np.ndarray, spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray] | None:
    """Split one lung component into two by eroding until two cores of comparable size appear side
    by side (left and right); None when that never happens (a single lung in view)."""
    from scipy import ndimage

    box = _bbox(mask)
    if box is None:
        return None
    m = mask[box]
    dist = ndimage.distance_transform_edt(m, sampling=spacing)
    for r in (1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 10.0, 13.0, 16.0, 20.0):
        core = dist > r
        lab, n = ndimage.label(core)
        if n < 2:
            if n == 0:
                break
            continue
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        a, b = np.argsort(-sizes)[:2]
        if sizes[b] < 0.1 * sizes[a]:
            continue
        # two lungs lie side by side; two parts of one lung (lobes) overlap in x: not a split
        xa = np.flatnonzero((lab == a).any(axis=(0, 1)))
        xb = np.flatnonzero((lab == b).any(axis=(0, 1)))
        overlap = min(xa[-1], xb[-1]) - max(xa[0], xb[0]) + 1
        if overlap > 0.3 * min(len(xa), len(xb)):
            continue
        seeds = np.zeros(m.shape, dtype=np.uint8)
        seeds[lab == a] = 1
        seeds[lab == b] = 2
        _, idx = ndimage.distance_transform_edt(seeds == 0, sampling=spacing, return_indices=True)
        nearest = seeds[tuple(idx)]
        first = np.zeros_like(mask)
        second = np.zeros_like(mask)
        first[box] = m & (nearest == 1)
        second[box] = m & (nearest == 2)
        return first, second
    return None


def _x_centroid(mask: np.ndarray) -> float:
    """Mean index along the last (x) axis of the True voxels."""
    counts = mask.sum(axis=(0, 1), dtype=np.int64)
    return float((counts * np.arange(len(counts))).sum() / max(int(counts.sum()), 1))


def _midline_x(ct: Volume, airway: np.ndarray, body_hull: np.ndarray) -> float:
    """Canonical x index of the patient's midline, to tell which lung a lone lung is.

    The trachea when it was found; else the middle of the body when the body is whole in x; else
    world x = 0 (the scanner's isocentre, near the midline in practice) for a crop of one side.
    """
    if airway.any():
        return _x_centroid(airway)
    if body_hull.any():
        xs = np.flatnonzero(body_hull.any(axis=(0, 1)))
        if xs[0] > 0 and xs[-1] < body_hull.shape[2] - 1:
            return _x_centroid(body_hull)
    nx, ny, nz = ct.size_xyz
    corners = np.array([[i, j, k] for i in (0, nx - 1) for j in (0, ny - 1) for k in (0, nz - 1)], float)
    world_x = ct.index_to_world(corners)[:, 0]
    step = (world_x.max() - world_x.min()) / max(body_hull.shape[2] - 1, 1)
    return float(-world_x.min() / step) if step > 0 else body_hull.shape[2] / 2


# ----------------------------------------------------------------------------- public API
def segment_lungs(
    ct: Volume,
    *,
    weights: str | os.PathLike | None = None,
    config: LungSegmentationConfig | None = None,
) -> Volume:
    """Segment the lungs of a CT (HU): a uint8 Volume on the same grid, 1 = right lung, 2 = left lung.

    The trachea and main bronchi are excluded; vessels and nodules, juxtapleural ones included, are
    inside. With ``weights`` (a local lungmask model file) the lungmask U-Net is used instead.
    Raises :class:`LungSegmentationError` when no lung is found.
    """
    if weights is not None:
        return _segment_with_lungmask(ct, weights)
    cfg = config or LungSegmentationConfig()
    from scipy import ndimage

    t0 = time.perf_counter()
    ct.check_finite("the CT")
    frame = _frame(ct)
    hu = _to_canonical(ct.array, frame)
    spacing = frame.spacing
    sz, sy, sx = spacing
    voxel_ml = sz * sy * sx / 1000.0

    air = hu < cfg.air_threshold_hu
    body_hull = _body_hull(~air, spacing)
    labels, n = ndimage.label(air)
    if n == 0:
        raise LungSegmentationError("the CT holds no air below "
                                    f"{cfg.air_threshold_hu:g} HU: no lungs (is it in Hounsfield units?)")
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    inside_counts = np.bincount(labels[body_hull], minlength=n + 1)
    frac_inside = inside_counts / np.maximum(counts, 1)
    inside_ids = [c for c in range(1, n + 1) if frac_inside[c] >= cfg.inside_body_fraction]
    inside_air = np.isin(labels, inside_ids) if inside_ids else np.zeros_like(air)

    chosen = _select_lungs(labels, inside_ids, hu, voxel_ml, cfg)
    if not chosen:
        raise LungSegmentationError(
            f"no lung-sized air (>= {cfg.min_lung_ml:g} mL below {cfg.air_threshold_hu:g} HU) inside the body"
        )
    lung_air = np.isin(labels, chosen)

    # airways: trachea and main bronchi
    tight = (hu < cfg.airway_threshold_hu) & inside_air
    seed = _find_trachea_seed(tight, inside_air, spacing, cfg)
    airway = np.zeros_like(air)
    if seed is None:
        log.info("no trachea found in the top slices; airways not removed")
    else:
        airway = _track_airways(tight, seed[0], seed[1], spacing, cfg)
        # the lumen at the main threshold is a little wider than at the tight one (partial volume)
        # (at least one pixel, diagonal neighbours included, whatever the pixel size)
        grow = max(cfg.airway_margin_mm, 1.5 * max(sy, sx))
        box = _bbox(airway, (0, int(np.ceil(grow / sy)) + 1, int(np.ceil(grow / sx)) + 1))
        if box is not None:
            airway[box] = (_edt_2d(~airway[box], sy, sx) <= grow) & air[box]
    lung_air &= ~airway
    lung_air = _remove_gas(lung_air, hu, spacing, cfg)

    labels2, n2 = ndimage.label(lung_air)
    ids = _select_lungs(labels2, list(range(1, n2 + 1)), hu, voxel_ml, cfg)
    if not ids:
        raise LungSegmentationError("no lung left once the airways were removed")
    parts = [labels2 == i for i in ids]
    if len(parts) == 1:
        split = _split_two(parts[0], spacing)
        if split is not None:
            parts = list(split)
    if len(parts) == 2:
        parts.sort(key=_x_centroid)  # canonical x grows towards the patient's left
        named = {RIGHT_LUNG: parts[0], LEFT_LUNG: parts[1]}
    else:
        side = RIGHT_LUNG if _x_centroid(parts[0]) < _midline_x(ct, airway, body_hull) else LEFT_LUNG
        named = {side: parts[0]}

    out = np.zeros(hu.shape, dtype=np.uint8)
    r = cfg.closing_radius_mm
    margin = (1, int(np.ceil(r / sy)) + 2, int(np.ceil(r / sx)) + 2)
    for value, part in named.items():
        box = _bbox(part, margin)
        if box is None:
            continue
        m = part[box]
        m = _close_2d(m, r, sy, sx) if r > 0 else m
        if cfg.bump_max_area_mm2 > 0:
            m = _fill_pleural_bumps(
                m, ~air[box], sy, sx, cfg.bump_max_area_mm2, cfg.bump_max_depth_mm, cfg.bump_max_width_mm
            )
        m = _fill_holes_2d(m)
        m &= ~airway[box]
        region = out[box]
        region[m & ((region == 0) | part[box])] = value
    result = _from_canonical(out, frame)
    log.info(
        "lungs segmented in %.1f s: right %.0f mL, left %.0f mL",
        time.perf_counter() - t0,
        (out == RIGHT_LUNG).sum() * voxel_ml,
        (out == LEFT_LUNG).sum() * voxel_ml,
    )
    return ct.with_array(result)


def _segment_with_lungmask(ct: Volume, weights: str | os.PathLike) -> Volume:
    """Run a local lungmask model file (R231-style: 1 right, 2 left). Never downloads anything."""
    path = Path(weights)
    if not path.is_file():
        raise LungSegmentationError(f"{path}: lungmask weights file not found")
    try:
        from lungmask import LMInferer  # type: ignore[import-not-found]
    except ImportError:
        raise LungmaskUnavailableError(
            f"{path}: a lungmask weights file was given, but the lungmask package is not installed; "
            "install it (pip install lungmask) or leave out --weights to use the built-in segmentation"
        ) from None
    try:
        inferer = LMInferer(modelpath=str(path))
        labels = np.asarray(inferer.apply(ct.to_sitk()))
    except Exception as exc:  # a wrong or corrupt file surfaces as many exception types
        raise LungSegmentationError(f"{path}: lungmask could not use this weights file ({exc})") from None
    if labels.shape != ct.shape:
        raise LungSegmentationError(f"{path}: lungmask returned shape {labels.shape} for a CT of {ct.shape}")
    return ct.with_array(labels.astype(np.uint8))


def include_in_lungs(lungs: Volume, regions: np.ndarray) -> Volume:
    """Lung labels with ``regions`` (e.g. consensus nodule masks) added to the nearest lung.

    LAND's lung condition contains the nodules; a nodule that the segmentation left partly outside
    (a large juxtapleural one) is completed here, each voxel taking the label of the nearest lung
    voxel. ``regions`` is a boolean array on the lungs' grid.
    """
    from scipy import ndimage

    regions = np.asarray(regions, dtype=bool)
    if regions.shape != lungs.shape:
        raise LungSegmentationError(f"regions of shape {regions.shape} do not fit lungs of shape {lungs.shape}")
    labels = np.asarray(lungs.array).astype(np.uint8, copy=True)
    todo = regions & (labels == 0)
    if not todo.any() or not labels.any():
        return lungs.with_array(labels)
    _, idx = ndimage.distance_transform_edt(labels == 0, sampling=lungs.spacing[::-1], return_indices=True)
    labels[todo] = labels[tuple(i[todo] for i in idx)]
    return lungs.with_array(labels)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice overlap of two boolean masks (1.0 when both are empty)."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


# ----------------------------------------------------------------------------- CLI
def _cmd_segment_lungs(args: argparse.Namespace) -> int:
    from land_core.io import read_volume, write_volume

    ct = read_volume(args.input)
    try:
        mask = segment_lungs(ct, weights=args.weights)
    except LungmaskUnavailableError:
        raise  # already names the weights file
    except LungSegmentationError as exc:
        raise LungSegmentationError(f"{args.input}: {exc}") from None
    write_volume(mask, args.output)
    ml = float(np.prod(mask.spacing)) / 1000.0
    right = int((mask.array == RIGHT_LUNG).sum()) * ml
    left = int((mask.array == LEFT_LUNG).sum()) * ml
    print(f"wrote {args.output}: right lung {right:.0f} mL (label 1), left lung {left:.0f} mL (label 2)")
    return 0


def register_cli(sub: argparse._SubParsersAction) -> None:
    """Add ``land segment-lungs IN OUT [--weights FILE]``."""
    p = sub.add_parser(
        "segment-lungs",
        help="segment the lungs of a CT (1 = right, 2 = left)",
        description="Segment the lungs of a CT file or DICOM folder and write the mask (1 = right lung, "
        "2 = left lung; trachea and main bronchi excluded). Without --weights a threshold-and-"
        "morphology method is used; with --weights, the lungmask U-Net from that local file.",
    )
    p.add_argument("input", type=Path, help="CT image file or DICOM folder (HU)")
    p.add_argument("output", type=Path, help="mask file to write (.nii.gz, .nrrd, .mha)")
    p.add_argument("--weights", type=Path, default=None, help="local lungmask model file (needs the lungmask package)")
    p.set_defaults(func=_cmd_segment_lungs)
