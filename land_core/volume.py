"""The one image type of LAND Studio: a 3D array with its physical geometry.

Conventions (the same as SimpleITK / ITK, so conversion is loss-free):

* ``array`` is indexed ``[z, y, x]`` (numpy C order; the x index varies fastest in memory, as in
  ITK and VTK image data).
* ``spacing``, ``origin`` and every voxel *index* triple handled by the methods below are in
  ``(x, y, z)`` order. ``origin`` is the world position (mm) of the centre of voxel (0, 0, 0).
* ``direction`` is a 3x3 matrix whose *columns* are the world directions of the x, y and z index
  axes (ITK's direction cosines). World coordinates are LPS millimetres, as in DICOM and ITK.
* CT values are Hounsfield units.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import numpy as np

from land_core.errors import VolumeError

Triple = tuple[float, float, float]


def _triple(value: Iterable[float], name: str) -> Triple:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise VolumeError(f"{name} must be three numbers, got {value!r}") from exc
    if len(out) != 3:
        raise VolumeError(f"{name} must be three numbers (x, y, z), got {len(out)}: {value!r}")
    if not all(np.isfinite(out)):
        raise VolumeError(f"{name} must be finite, got {out}")
    return out  # type: ignore[return-value]


@dataclass(eq=False)
class Volume:
    """A 3D image: ``array[z, y, x]`` plus spacing, origin and direction in (x, y, z) order."""

    array: np.ndarray
    spacing: Triple = (1.0, 1.0, 1.0)
    origin: Triple = (0.0, 0.0, 0.0)
    direction: np.ndarray = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        array = np.asarray(self.array)
        if array.ndim != 3:
            raise VolumeError(f"a volume must be 3D, got an array of shape {array.shape}")
        if min(array.shape) < 1:
            raise VolumeError(f"a volume must not be empty, got shape {array.shape}")
        if array.dtype.kind not in "biuf":
            raise VolumeError(f"a volume must hold numbers, got dtype {array.dtype}")
        self.array = array
        self.spacing = _triple(self.spacing, "spacing")
        if min(self.spacing) <= 0:
            raise VolumeError(f"spacing must be positive, got {self.spacing}")
        self.origin = _triple(self.origin, "origin")
        direction = np.asarray(self.direction, dtype=float)
        if direction.size != 9:
            raise VolumeError(f"direction must be a 3x3 matrix, got {direction.size} values")
        direction = direction.reshape(3, 3)
        if not np.allclose(direction.T @ direction, np.eye(3), atol=1e-4):
            raise VolumeError(f"direction must be orthonormal, got {direction.tolist()}")
        self.direction = direction

    # ----------------------------------------------------------------- geometry
    @property
    def shape(self) -> tuple[int, int, int]:
        """Array shape, ``(nz, ny, nx)``."""
        return tuple(self.array.shape)  # type: ignore[return-value]

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        """Number of voxels along x, y, z (ITK's ``GetSize``)."""
        nz, ny, nx = self.array.shape
        return (nx, ny, nz)

    @property
    def extent_mm(self) -> Triple:
        """Physical size of the volume along its x, y, z index axes, in mm."""
        return tuple(n * s for n, s in zip(self.size_xyz, self.spacing))  # type: ignore[return-value]

    def _index_matrix(self) -> np.ndarray:
        return self.direction @ np.diag(self.spacing)

    def index_to_world(self, index_xyz: np.ndarray | Iterable[float]) -> np.ndarray:
        """World position (mm) of continuous voxel indices ``(..., 3)`` given in (x, y, z) order."""
        idx = np.asarray(index_xyz, dtype=float)
        return idx @ self._index_matrix().T + np.asarray(self.origin)

    def world_to_index(self, point_mm: np.ndarray | Iterable[float]) -> np.ndarray:
        """Continuous voxel indices (x, y, z) of world points ``(..., 3)`` in mm."""
        pts = np.asarray(point_mm, dtype=float) - np.asarray(self.origin)
        return pts @ np.linalg.inv(self._index_matrix()).T

    def contains_world(self, point_mm: np.ndarray | Iterable[float], margin_vox: float = 0.5) -> bool:
        """True when a world point lies inside the volume's voxel extent (voxel edges included)."""
        idx = self.world_to_index(point_mm)
        upper = np.asarray(self.size_xyz, dtype=float) - 1 + margin_vox
        return bool(np.all(idx >= -margin_vox) and np.all(idx <= upper))

    def world_grid(self, box_zyx: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """World coordinates of voxel centres, shape ``(nz, ny, nx, 3)`` (x, y, z last).

        ``box_zyx`` restricts it to a sub-block of the array (slices in array order), so callers
        such as nodule rasterisation touch only a bounding box.
        """
        box = box_zyx or tuple(slice(0, n) for n in self.shape)
        ranges = [np.arange(*s.indices(n)[:2]) for s, n in zip(box, self.shape)]
        kz, jy, ix = np.meshgrid(*ranges, indexing="ij")
        idx = np.stack([ix, jy, kz], axis=-1).astype(float)
        return self.index_to_world(idx)

    def same_grid(self, other: "Volume", tol: float = 1e-3) -> bool:
        """True when ``other`` has the same shape, spacing, origin and direction (within ``tol``)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=tol)
            and np.allclose(self.origin, other.origin, atol=tol)
            and np.allclose(self.direction, other.direction, atol=tol)
        )

    def with_array(self, array: np.ndarray) -> "Volume":
        """A new volume on the same grid holding ``array`` (which must have the same shape)."""
        array = np.asarray(array)
        if array.shape != self.array.shape:
            raise VolumeError(f"array shape {array.shape} does not match the grid {self.array.shape}")
        return Volume(array, self.spacing, self.origin, self.direction.copy())

    def copy(self) -> "Volume":
        return Volume(self.array.copy(), self.spacing, self.origin, self.direction.copy())

    def geometry(self) -> dict:
        """Geometry as plain JSON-able values."""
        return {
            "size_xyz": list(self.size_xyz),
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": self.direction.reshape(-1).tolist(),
        }

    def check_finite(self, what: str = "volume") -> None:
        """Raise :class:`VolumeError` when the array holds NaN or infinite values."""
        if self.array.dtype.kind == "f" and not np.all(np.isfinite(self.array)):
            bad = int(np.size(self.array) - np.count_nonzero(np.isfinite(self.array)))
            raise VolumeError(f"{what} holds {bad} NaN or infinite value(s)")

    def __repr__(self) -> str:
        return (
            f"Volume(shape_zyx={self.shape}, dtype={self.array.dtype}, spacing={self.spacing}, "
            f"origin={tuple(round(o, 3) for o in self.origin)})"
        )

    # ----------------------------------------------------------------- SimpleITK
    @classmethod
    def from_sitk(cls, image) -> "Volume":
        """Build a volume from a 3D ``SimpleITK.Image`` (geometry kept exactly)."""
        import SimpleITK as sitk

        if image.GetDimension() != 3:
            raise VolumeError(f"expected a 3D image, got {image.GetDimension()}D")
        if image.GetNumberOfComponentsPerPixel() != 1:
            raise VolumeError(
                f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel"
            )
        return cls(
            sitk.GetArrayFromImage(image),
            image.GetSpacing(),
            image.GetOrigin(),
            np.asarray(image.GetDirection()).reshape(3, 3),
        )

    def to_sitk(self):
        """This volume as a ``SimpleITK.Image`` (geometry kept exactly)."""
        import SimpleITK as sitk

        array = self.array
        if array.dtype == np.bool_:
            array = array.astype(np.uint8)
        image = sitk.GetImageFromArray(np.ascontiguousarray(array))
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction.reshape(-1).tolist())
        return image
