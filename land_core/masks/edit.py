"""Brush and erase edits on label masks: dab shapes, an HU gate, undo atoms and mask clean-ups.

Qt-free, so the app, the benchmarks and the tests share one implementation. Every edit works on a
bounding box, never on the whole volume (a 512 x 512 x 400 mask is 100 MB; a 15 mm brush dab
touches about 60 000 of its voxels):

* :func:`brush_dab` says which voxels a dab covers: a sphere, or a disc lying in a view's plane,
  with its radius in mm on any voxel spacing and direction matrix. It returns the dab's box
  (slices in array order ``[z, y, x]``) and a boolean array of that box's shape.
* :func:`hu_gate` limits a dab to voxels whose CT value lies in a range (e.g. air-like voxels).
* :func:`paint_dab` writes one dab into a label array in place and returns the old values of its box.
* :class:`StrokeRecorder` collects those old values while a stroke (press, drag, release) goes on
  and turns them into one :class:`UndoAtom` (box, old values, new values) for the union box of the
  stroke, cropped to the voxels that really changed. One stroke is one undo step.
* :func:`fill_holes` and :func:`keep_largest_components` clean a whole mask up, again returning
  only the box that changed and its new values.

The geometry uses one fact about ITK/LPS volumes: the direction matrix is orthonormal, so the
squared world distance between voxel centres is ``sum((spacing_i * delta_index_i)^2)`` whatever the
direction, and distances along a world direction ``n`` are linear in the index offsets. Both are
sums of one-axis terms, which broadcast cheaply over a box (no ``(n, 3)`` coordinate arrays).

Why not a library: scikit-image's ``draw.ellipsoid`` and napari's / Slicer's paint code know
nothing of spacing and direction together, or are tied to their viewers; what is needed here is a
few lines of numpy. The clean-ups use :mod:`scipy.ndimage`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Literal, Sequence

import numpy as np

from land_core.errors import MaskError
from land_core.volume import Volume

Box = tuple[slice, slice, slice]
BrushShape = Literal["sphere", "disc"]
BRUSH_SHAPES: tuple[BrushShape, ...] = ("sphere", "disc")


# ---------------------------------------------------------------------- boxes
def box_shape(box: Box) -> tuple[int, int, int]:
    """The shape of the array a box cuts out (its slices must have explicit, non-negative ends)."""
    return tuple(s.stop - s.start for s in box)  # type: ignore[return-value]


def union_box(a: Box | None, b: Box | None) -> Box | None:
    """The smallest box that holds both boxes (either may be None)."""
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def local_box(inner: Box, outer: Box) -> Box:
    """``inner`` in the coordinates of an array cut out by ``outer`` (which must contain it)."""
    return tuple(slice(i.start - o.start, i.stop - o.start) for i, o in zip(inner, outer))  # type: ignore[return-value]


def bounding_box(mask: np.ndarray) -> Box | None:
    """The smallest box holding every True voxel of ``mask``, or None when there is none."""
    if not mask.any():
        return None
    out = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        out.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(out)  # type: ignore[return-value]


# ---------------------------------------------------------------------- dabs
@dataclass(frozen=True)
class Dab:
    """The voxels one brush dab covers: ``inside`` (bool, the box's shape) within ``box``."""

    box: Box
    inside: np.ndarray

    @property
    def n_voxels(self) -> int:
        return int(np.count_nonzero(self.inside))


def _unit(vector: Sequence[float] | None) -> np.ndarray:
    if vector is None:
        raise MaskError("a disc brush needs the normal of the plane it lies in")
    n = np.asarray(vector, dtype=float).reshape(3)
    length = float(np.linalg.norm(n))
    if not np.isfinite(length) or length == 0:
        raise MaskError(f"a disc brush's plane normal must be a non-zero vector, got {n.tolist()}")
    return n / length


def brush_dab(
    grid: Volume,
    center_mm: Sequence[float],
    radius_mm: float,
    shape: BrushShape = "sphere",
    normal: Sequence[float] | None = None,
) -> Dab | None:
    """The voxels of ``grid`` a brush dab covers, or None when the dab misses the grid.

    ``shape`` 'sphere': voxel centres within ``radius_mm`` of ``center_mm`` (world mm). 'disc': the
    same within the plane through the centre with world normal ``normal``, one voxel thick (voxel
    centres at a signed distance ``-t/2 <= d < t/2`` from the plane, ``t`` the voxel's extent along
    the normal, so an axis-aligned disc is exactly one voxel plane). A dab always covers at least the
    voxel nearest its centre, so a brush smaller than a voxel still paints.
    """
    radius = float(radius_mm)
    if not math.isfinite(radius) or radius <= 0:
        raise MaskError(f"the brush radius must be a positive number of mm, got {radius_mm!r}")
    if shape not in BRUSH_SHAPES:
        raise MaskError(f"the brush shape must be one of {', '.join(BRUSH_SHAPES)}, got {shape!r}")
    centre = np.asarray(center_mm, dtype=float).reshape(3)
    if not np.all(np.isfinite(centre)):
        raise MaskError(f"the brush centre must be finite, got {centre.tolist()}")
    spacing = np.asarray(grid.spacing, dtype=float)
    c_idx = grid.world_to_index(centre)  # continuous (x, y, z)
    size = np.asarray(grid.size_xyz)
    if shape == "disc":
        n = _unit(normal)
        cos = grid.direction.T @ n  # cosine between each index axis and the normal
        half = 0.5 * float(np.sum(np.abs(cos) * spacing))
        # a disc's extent along index axis i: r * sin(angle to the normal), plus the slab thickness
        reach = radius * np.sqrt(np.clip(1.0 - cos**2, 0.0, 1.0)) + half * np.abs(cos)
    else:
        cos, half = None, 0.0
        reach = np.full(3, radius)
    reach_idx = reach / spacing
    lo = np.maximum(np.ceil(c_idx - reach_idx - 1e-9).astype(int), 0)
    hi = np.minimum(np.floor(c_idx + reach_idx + 1e-9).astype(int) + 1, size)
    nearest = np.rint(c_idx).astype(int)
    if np.any(hi <= lo):
        if np.all((nearest >= 0) & (nearest < size)):  # tiny brush: just the nearest voxel
            lo, hi = nearest, nearest + 1
        else:
            return None
    # offsets (mm along each index axis) of the box's voxel centres from the dab's centre
    dx, dy, dz = ((np.arange(lo[i], hi[i]) - c_idx[i]) * spacing[i] for i in range(3))
    d2 = dz[:, None, None] ** 2 + dy[None, :, None] ** 2 + dx[None, None, :] ** 2
    r2 = radius * radius * (1.0 + 1e-9)
    if shape == "disc":
        assert cos is not None
        along = cos[2] * dz[:, None, None] + cos[1] * dy[None, :, None] + cos[0] * dx[None, None, :]
        inside = (d2 - along**2 <= r2) & (along >= -half) & (along < half)
    else:
        inside = d2 <= r2
    box = (slice(int(lo[2]), int(hi[2])), slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    if not inside.any():
        if not np.all((nearest >= lo) & (nearest < hi)):
            return None
        inside[tuple(int(nearest[i] - lo[i]) for i in (2, 1, 0))] = True
    return Dab(box, inside)


def hu_gate(ct_values: np.ndarray, hu_range: tuple[float, float] | None) -> np.ndarray | None:
    """Where ``ct_values`` lie in ``hu_range`` (both ends included); None when there is no range."""
    if hu_range is None:
        return None
    lo, hi = (float(v) for v in hu_range)
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
        raise MaskError(f"an HU range needs two finite numbers, low <= high; got {hu_range!r}")
    return (ct_values >= lo) & (ct_values <= hi)


def paint_dab(
    labels: np.ndarray,
    dab: Dab,
    value: int,
    ct: np.ndarray | None = None,
    hu_range: tuple[float, float] | None = None,
) -> np.ndarray | None:
    """Write ``value`` into ``labels`` (in place) where the dab covers it (and, with ``hu_range``,
    where ``ct`` lies in that range). Returns the box's old values, or None when nothing changed
    (so a stroke over already painted voxels costs no memory)."""
    region = labels[dab.box]  # a view: basic slicing
    selected = dab.inside & (region != value)
    if hu_range is not None:
        if ct is None:
            raise MaskError("an HU range needs the CT values")
        gate = hu_gate(ct[dab.box], hu_range)
        selected &= gate
    if not selected.any():
        return None
    old = region.copy()
    region[selected] = value
    return old


def dab_path(start_mm: Sequence[float] | None, end_mm: Sequence[float], step_mm: float) -> np.ndarray:
    """Dab centres from just after ``start_mm`` to ``end_mm``, at most ``step_mm`` apart, so a fast
    mouse move still paints a continuous line (just ``end_mm`` when there is no start)."""
    end = np.asarray(end_mm, dtype=float).reshape(1, 3)
    if start_mm is None:
        return end
    start = np.asarray(start_mm, dtype=float).reshape(1, 3)
    distance = float(np.linalg.norm(end - start))
    n = max(1, int(math.ceil(distance / max(step_mm, 1e-6))))
    t = np.arange(1, n + 1, dtype=float)[:, None] / n
    return start + t * (end - start)


# ---------------------------------------------------------------------- undo
@dataclass(frozen=True, eq=False)
class UndoAtom:
    """One undoable change of a label array: the box and its values before and after.

    Undo writes ``old`` into ``array[box]``, redo writes ``new``. Only the box is stored, cropped
    to the voxels that changed (:meth:`capture`), so memory follows the size of the edit.
    """

    box: Box
    old: np.ndarray
    new: np.ndarray

    def __post_init__(self) -> None:
        if self.old.shape != self.new.shape or self.old.shape != box_shape(self.box):
            raise MaskError(f"undo values of shapes {self.old.shape} / {self.new.shape} do not fit the box "
                            f"{box_shape(self.box)}")

    @classmethod
    def capture(cls, box: Box, old: np.ndarray, new: np.ndarray) -> "UndoAtom | None":
        """An atom for ``box`` holding the values ``old`` then ``new``, cropped to the voxels that
        differ; None when nothing differs."""
        changed = old != new
        inner = bounding_box(changed)
        if inner is None:
            return None
        absolute = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
        return cls(absolute, np.ascontiguousarray(old[inner]), np.ascontiguousarray(new[inner]))  # type: ignore[arg-type]

    @property
    def nbytes(self) -> int:
        """Memory the atom holds (both arrays)."""
        return int(self.old.nbytes + self.new.nbytes)

    @property
    def n_changed(self) -> int:
        return int(np.count_nonzero(self.old != self.new))

    def undo(self, array: np.ndarray) -> None:
        """Put the old values back into ``array`` (the whole label array)."""
        array[self.box] = self.old

    def redo(self, array: np.ndarray) -> None:
        """Write the new values into ``array`` again."""
        array[self.box] = self.new


class StrokeRecorder:
    """The old values of every dab of one stroke, turned into one :class:`UndoAtom` at the end.

    Each dab hands over ``(box, old values of its box)`` before it writes. :meth:`finish` rebuilds
    the values the whole union box had before the stroke by laying the dabs' old values back in
    reverse order over the box's current values. Recording costs one copy of each dab's box, not
    of the growing union box, so a long stroke stays as cheap per dab as a short one.
    """

    def __init__(self) -> None:
        self._pieces: list[tuple[Box, np.ndarray]] = []
        self._box: Box | None = None

    @property
    def box(self) -> Box | None:
        """The union of the boxes recorded so far, or None."""
        return self._box

    @property
    def nbytes(self) -> int:
        return sum(old.nbytes for _, old in self._pieces)

    def __len__(self) -> int:
        return len(self._pieces)

    def add(self, box: Box, old: np.ndarray) -> None:
        """Record that ``box`` held ``old`` just before a dab wrote into it."""
        if old.shape != box_shape(box):
            raise MaskError(f"old values of shape {old.shape} do not fit the box {box_shape(box)}")
        self._pieces.append((box, old))
        self._box = union_box(self._box, box)

    def finish(self, array: np.ndarray) -> UndoAtom | None:
        """The stroke as one atom (``array`` holds the values after the stroke); None if nothing changed."""
        if self._box is None:
            return None
        box = self._box
        new = array[box].copy()
        old = new.copy()
        for piece_box, piece_old in reversed(self._pieces):
            old[local_box(piece_box, box)] = piece_old
        self._pieces.clear()
        self._box = None
        return UndoAtom.capture(box, old, new)


# ---------------------------------------------------------------------- whole-mask clean-ups
def _structure(connectivity: int) -> np.ndarray:
    from scipy import ndimage

    if connectivity not in (1, 2, 3):
        raise MaskError(f"connectivity must be 1 (faces), 2 (edges) or 3 (corners), got {connectivity!r}")
    return ndimage.generate_binary_structure(3, connectivity)


def fill_holes(labels: np.ndarray, values: Iterable[int] | None = None) -> tuple[Box, np.ndarray] | None:
    """Fill the enclosed holes of each label (``scipy.ndimage.binary_fill_holes`` per label, in 3D).

    Only background voxels are filled, so one lung never takes voxels of the other. ``values``
    picks the labels (default: every label present). Returns ``(box, new values of the box)`` for
    the box that changes, or None when there is no hole. The work is done inside each label's
    bounding box (a hole cannot reach outside it).
    """
    from scipy import ndimage

    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise MaskError(f"a label mask must be 3D, got shape {arr.shape}")
    todo = sorted(int(v) for v in (np.unique(arr[arr > 0]) if values is None else values) if int(v) > 0)
    fills: list[tuple[Box, np.ndarray, int]] = []
    for value in todo:
        box = bounding_box(arr == value)
        if box is None:
            continue
        region = arr[box]
        filled = ndimage.binary_fill_holes(region == value)
        add = filled & (region == 0)
        if add.any():
            fills.append((box, add, value))
    if not fills:
        return None
    total: Box | None = None
    for box, _, _ in fills:
        total = union_box(total, box)
    assert total is not None
    new = arr[total].copy()
    for box, add, value in fills:
        new[local_box(box, total)][add] = value
    return _changed_part(arr, total, new)


def keep_largest_components(labels: np.ndarray, n: int = 2, connectivity: int = 3) -> tuple[Box, np.ndarray] | None:
    """Keep the ``n`` largest connected pieces of the mask (every label > 0 counts as mask; each
    voxel keeps its label) and clear every other piece, e.g. stray paint away from the two lungs.

    ``connectivity`` 3 joins voxels that touch at a corner. Returns ``(box, new values)`` for the box
    that changes, or None when nothing is removed.
    """
    from scipy import ndimage

    arr = np.asarray(labels)
    if arr.ndim != 3:
        raise MaskError(f"a label mask must be 3D, got shape {arr.shape}")
    if int(n) < 1:
        raise MaskError(f"keep at least one component, got n={n!r}")
    box = bounding_box(arr > 0)
    if box is None:
        return None
    region = arr[box]
    pieces, count = ndimage.label(region > 0, structure=_structure(connectivity))
    if count <= n:
        return None
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    keep = np.argsort(sizes, kind="stable")[::-1][: int(n)]
    kept = np.zeros(count + 1, dtype=bool)
    kept[keep] = True
    new = np.where(kept[pieces], region, 0).astype(arr.dtype, copy=False)
    return _changed_part(arr, box, new)


def _changed_part(arr: np.ndarray, box: Box, new: np.ndarray) -> tuple[Box, np.ndarray] | None:
    """``(box, new)`` cropped to the voxels where ``new`` differs from ``arr[box]``."""
    inner = bounding_box(arr[box] != new)
    if inner is None:
        return None
    absolute = tuple(slice(b.start + i.start, b.start + i.stop) for b, i in zip(box, inner))
    return absolute, np.ascontiguousarray(new[inner])  # type: ignore[return-value]


__all__ = [
    "BRUSH_SHAPES", "Box", "BrushShape", "Dab", "StrokeRecorder", "UndoAtom", "bounding_box", "box_shape",
    "brush_dab", "dab_path", "fill_holes", "hu_gate", "keep_largest_components", "local_box", "paint_dab",
    "union_box",
]
