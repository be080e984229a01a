"""Slice-view geometry in plain numpy: which world plane each view shows, and how it is sampled.

Each view shows a plane spanned by two world (LPS) directions ``u`` (screen right) and ``v``
(screen up), at a position along the normal ``n``. The radiological convention fixes them:

* axial: looking from the feet, patient's right on the screen's left (+x, L, to the right),
  anterior up (-y up);
* coronal: looking from the front, right on the left, superior up (u = +x, v = +z);
* sagittal: looking from the patient's left, anterior on the left, superior up (u = +y, v = +z).

The plane is sampled on a 2D grid (:class:`SliceGrid`) whose points coincide with voxel centres
whenever the volume's axes are aligned with the world axes (any flips or permutations, the usual
case), so a view shows the stored voxels, not an interpolation of them. Oblique volumes are
resampled on a grid with the finest spacing that lies in the plane.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from land_core.volume import Volume


@dataclass(frozen=True)
class SliceOrientation:
    """A view's world plane: ``u`` right, ``v`` up, ``n`` the normal (slice direction)."""

    name: str
    u: tuple[float, float, float]
    v: tuple[float, float, float]
    n: tuple[float, float, float]
    #: The patient direction at the left, right, top and bottom edges of the view.
    edge_labels: tuple[str, str, str, str]

    @property
    def title(self) -> str:
        return self.name.capitalize()

    def to_world(self, a: float, b: float, depth: float) -> np.ndarray:
        """World point of plane coordinates ``(a, b)`` (mm along u and v) at ``depth`` along n."""
        return a * np.asarray(self.u) + b * np.asarray(self.v) + depth * np.asarray(self.n)

    def to_plane(self, point_mm) -> tuple[float, float, float]:
        """``(a, b, depth)``: a world point's coordinates along u, v and n."""
        p = np.asarray(point_mm, dtype=float)
        return float(p @ self.u), float(p @ self.v), float(p @ self.n)


ORIENTATIONS: dict[str, SliceOrientation] = {
    "axial": SliceOrientation("axial", (1, 0, 0), (0, -1, 0), (0, 0, 1), ("R", "L", "A", "P")),
    "coronal": SliceOrientation("coronal", (1, 0, 0), (0, 0, 1), (0, 1, 0), ("R", "L", "S", "I")),
    "sagittal": SliceOrientation("sagittal", (0, 1, 0), (0, 0, 1), (1, 0, 0), ("A", "P", "S", "I")),
}


@dataclass(frozen=True)
class SliceGrid:
    """How a view samples its plane: origin (mm along u, v), spacing and number of pixels."""

    origin: tuple[float, float]
    spacing: tuple[float, float]
    size: tuple[int, int]
    #: The volume's index axis (0 = x, 1 = y, 2 = z) closest to the view's normal.
    normal_axis: int
    #: +1 when stepping that index up moves along +n, else -1.
    normal_sign: int
    #: True when the index axis is parallel to the normal (slices are exact voxel planes).
    aligned: bool

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """``(a0, a1, b0, b1)``: the plane area the grid covers, voxel edges included (mm)."""
        (a, b), (sa, sb), (na, nb) = self.origin, self.spacing, self.size
        return a - sa / 2, a + (na - 0.5) * sa, b - sb / 2, b + (nb - 0.5) * sb


def _best_axis(volume: Volume, axis) -> tuple[int, float]:
    """Index axis most parallel to world direction ``axis`` and the cosine between them."""
    cos = volume.direction.T @ np.asarray(axis, dtype=float)
    k = int(np.argmax(np.abs(cos)))
    return k, float(cos[k])


def slice_grid(volume: Volume, orientation: SliceOrientation) -> SliceGrid:
    """The 2D sampling grid of ``orientation``'s plane that covers ``volume``."""
    n = np.asarray(volume.size_xyz)
    corners = np.array([[i, j, k] for i in (0, n[0] - 1) for j in (0, n[1] - 1) for k in (0, n[2] - 1)], float)
    world = volume.index_to_world(corners)
    origin, spacing, size = [], [], []
    for axis in (orientation.u, orientation.v):
        coords = world @ np.asarray(axis, dtype=float)
        k, cos = _best_axis(volume, axis)
        step = volume.spacing[k] if abs(cos) > 0.999 else min(volume.spacing)
        count = int(round((coords.max() - coords.min()) / step)) + 1
        origin.append(float(coords.min()))
        spacing.append(float(step))
        size.append(max(count, 1))
    k, cos = _best_axis(volume, orientation.n)
    return SliceGrid((origin[0], origin[1]), (spacing[0], spacing[1]), (size[0], size[1]), k,
                     1 if cos >= 0 else -1, abs(cos) > 0.999)


def slice_index(volume: Volume, orientation: SliceOrientation, point_mm) -> int:
    """The voxel index (along the volume axis closest to the normal) of the slice through a point."""
    k, _ = _best_axis(volume, orientation.n)
    idx = volume.world_to_index(point_mm)[k]
    return int(np.clip(np.rint(idx), 0, volume.size_xyz[k] - 1))


def slice_count(volume: Volume, orientation: SliceOrientation) -> int:
    """How many slices the view can step through."""
    return int(volume.size_xyz[_best_axis(volume, orientation.n)[0]])


def slice_depth(volume: Volume, orientation: SliceOrientation, point_mm) -> float:
    """Where the view's plane through ``point_mm`` lies along n (mm): on the nearest voxel plane when
    the volume is aligned with the view, so the slice shows voxels exactly."""
    grid_k, cos = _best_axis(volume, orientation.n)
    if abs(cos) <= 0.999:
        return orientation.to_plane(point_mm)[2]
    idx = volume.world_to_index(point_mm)
    idx[grid_k] = slice_index(volume, orientation, point_mm)
    return orientation.to_plane(volume.index_to_world(idx))[2]


def step_slice(volume: Volume, orientation: SliceOrientation, point_mm, steps: int) -> np.ndarray:
    """``point_mm`` moved ``steps`` slices along +n (clamped to the volume), on a voxel plane."""
    k, cos = _best_axis(volume, orientation.n)
    idx = volume.world_to_index(point_mm)
    sign = 1 if cos >= 0 else -1
    idx[k] = np.clip(np.rint(idx[k]) + sign * int(steps), 0, volume.size_xyz[k] - 1)
    return volume.index_to_world(idx)
