"""Preprocessing shared by ingestion, training, generation and the app.

* :func:`resample` / :func:`resample_like`: to a target spacing or onto another volume's grid, cubic
  B-spline for CT (clipped to the input's value range, so no overshoot creates values that were
  not there) and nearest neighbour for masks (labels stay labels).
* :func:`crop_or_pad`: a fixed-size window around a bounding box or a point, padding CT with
  -1024 HU and masks with 0. Geometry follows, so the window can be pasted back by world position.
* :class:`IntensityMapping`: the mapping the models see. LAND Studio clips CT to [-1000, 1000] HU
  and scales linearly to [0, 1]; the inverse is exact on that range (values outside it are clipped
  on the way in, which the inverse cannot undo). The mapping is stored in every checkpoint's config.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Sequence

import numpy as np

from land_core.errors import VolumeError
from land_core.volume import Volume

Kind = Literal["ct", "mask"]
CT_PAD_HU = -1024.0


def _fill(kind: Kind, fill: float | None) -> float:
    if fill is not None:
        return float(fill)
    return CT_PAD_HU if kind == "ct" else 0.0


def _check_kind(kind: str) -> None:
    if kind not in ("ct", "mask"):
        raise VolumeError(f"kind must be 'ct' (cubic) or 'mask' (nearest), got {kind!r}")


def _resample_sitk(volume: Volume, size_xyz, spacing, origin, direction, kind: Kind, fill: float) -> Volume:
    import SimpleITK as sitk

    image = volume.to_sitk()
    if kind == "ct":
        image = sitk.Cast(image, sitk.sitkFloat32)
        interp = sitk.sitkBSpline
    else:
        interp = sitk.sitkNearestNeighbor
    out = sitk.Resample(
        image,
        [int(s) for s in size_xyz],
        sitk.Transform(),
        interp,
        [float(o) for o in origin],
        [float(s) for s in spacing],
        np.asarray(direction, dtype=float).reshape(-1).tolist(),
        float(fill),
        image.GetPixelID(),
    )
    arr = sitk.GetArrayFromImage(out)
    if kind == "ct":
        lo, hi = float(volume.array.min()), float(volume.array.max())
        arr = np.clip(arr, min(lo, fill), max(hi, fill))
        if volume.array.dtype.kind in "iu":
            arr = np.rint(arr).astype(volume.array.dtype)
    else:
        arr = arr.astype(volume.array.dtype, copy=False)
    return Volume(arr, spacing, origin, direction)


def resample(
    volume: Volume,
    spacing: float | Sequence[float],
    kind: Kind = "ct",
    *,
    fill: float | None = None,
) -> Volume:
    """Resample to ``spacing`` (mm; one number for isotropic), keeping the physical extent.

    The outer edges of the voxel grid stay where they were; the number of voxels is the extent
    divided by the new spacing, rounded. ``kind='ct'`` is cubic, ``'mask'`` nearest neighbour.
    """
    _check_kind(kind)
    sp = np.full(3, float(spacing)) if np.isscalar(spacing) else np.asarray(spacing, dtype=float)
    if sp.shape != (3,) or np.any(sp <= 0) or not np.all(np.isfinite(sp)):
        raise VolumeError(f"target spacing must be positive, got {spacing!r}")
    old_sp = np.asarray(volume.spacing)
    size = np.maximum(1, np.rint(np.asarray(volume.size_xyz) * old_sp / sp)).astype(int)
    corner = volume.index_to_world(np.full(3, -0.5))
    origin = corner + volume.direction @ (sp / 2.0)
    return _resample_sitk(volume, size, sp, origin, volume.direction, kind, _fill(kind, fill))


def resample_like(volume: Volume, like: Volume, kind: Kind = "ct", *, fill: float | None = None) -> Volume:
    """Resample ``volume`` onto ``like``'s grid (shape, spacing, origin, direction)."""
    _check_kind(kind)
    if volume.same_grid(like, tol=1e-6):
        return volume.copy()
    return _resample_sitk(volume, like.size_xyz, like.spacing, like.origin, like.direction, kind, _fill(kind, fill))


def mask_bbox(mask: Volume | np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Index bounding box ``(lo_xyz, hi_xyz)`` (hi exclusive) of the non-zero voxels, or None."""
    arr = mask.array if isinstance(mask, Volume) else np.asarray(mask)
    nz = np.nonzero(arr)
    if not nz[0].size:
        return None
    lo = np.array([a.min() for a in nz])[::-1]
    hi = np.array([a.max() + 1 for a in nz])[::-1]
    return lo, hi


def crop_or_pad(
    volume: Volume,
    size: int | Sequence[int],
    *,
    bbox: tuple[Sequence[float], Sequence[float]] | None = None,
    center_mm: Sequence[float] | None = None,
    kind: Kind = "ct",
    fill: float | None = None,
) -> Volume:
    """A window of ``size`` voxels (int for a cube, or (x, y, z)) from ``volume``.

    The window is centred on the centre of ``bbox`` (index box ``(lo_xyz, hi_xyz)``, hi exclusive,
    e.g. from :func:`mask_bbox` of the lungs), or on ``center_mm``, or on the volume's centre.
    Where it reaches beyond the volume it is padded (CT -1024 HU, masks 0, or ``fill``). The
    returned volume's origin places it correctly in the world.
    """
    _check_kind(kind)
    want = np.full(3, int(size)) if np.isscalar(size) else np.asarray(size, dtype=int)
    if want.shape != (3,) or np.any(want < 1):
        raise VolumeError(f"crop size must be positive voxel counts, got {size!r}")
    have = np.asarray(volume.size_xyz)
    if bbox is not None:
        center = (np.asarray(bbox[0], float) + np.asarray(bbox[1], float) - 1) / 2.0
    elif center_mm is not None:
        center = volume.world_to_index(center_mm)
    else:
        center = (have - 1) / 2.0
    start = np.floor(center - (want - 1) / 2.0 + 1e-6).astype(int)
    out = np.full(tuple(want[::-1]), _fill(kind, fill), dtype=volume.array.dtype)
    src_lo = np.clip(start, 0, have)
    src_hi = np.clip(start + want, 0, have)
    if np.all(src_hi > src_lo):
        dst_lo = src_lo - start
        dst_hi = dst_lo + (src_hi - src_lo)
        out[dst_lo[2]:dst_hi[2], dst_lo[1]:dst_hi[1], dst_lo[0]:dst_hi[0]] = volume.array[
            src_lo[2]:src_hi[2], src_lo[1]:src_hi[1], src_lo[0]:src_hi[0]
        ]
    origin = volume.index_to_world(start.astype(float))
    return Volume(out, volume.spacing, origin, volume.direction.copy())


@dataclass(frozen=True)
class IntensityMapping:
    """How CT values (HU) map to the models' input range and back; stored in every checkpoint.

    ``linear_window``: clip to ``[hu_min, hu_max]`` and map linearly onto ``[0, 1]`` (the LAND / WDM
    preprocessing, with a fixed upper bound instead of WDM's per-volume quantile, so that generated
    volumes map back to HU). ``model_to_hu`` is the exact inverse of ``hu_to_model`` on that window;
    model outputs outside [0, 1] are clipped first. Works on numpy arrays and torch tensors.
    """

    kind: str = "linear_window"
    hu_min: float = -1000.0
    hu_max: float = 1000.0
    description: str = "HU clipped to [hu_min, hu_max] and mapped linearly to [0, 1]"

    def __post_init__(self) -> None:
        if self.kind != "linear_window":
            raise VolumeError(f"intensity.kind must be 'linear_window', got {self.kind!r}")
        if not self.hu_max > self.hu_min:
            raise VolumeError(f"intensity: hu_max ({self.hu_max}) must exceed hu_min ({self.hu_min})")

    def hu_to_model(self, hu):
        """HU -> model intensities in [0, 1] (clipped)."""
        scale = self.hu_max - self.hu_min
        if hasattr(hu, "clamp"):
            return (hu.clamp(self.hu_min, self.hu_max) - self.hu_min) / scale
        return ((np.clip(np.asarray(hu, dtype=np.float32), self.hu_min, self.hu_max) - self.hu_min) / scale).astype(np.float32)

    def model_to_hu(self, x):
        """Model intensities -> HU (values outside [0, 1] are clipped first)."""
        scale = self.hu_max - self.hu_min
        if hasattr(x, "clamp"):
            return x.clamp(0.0, 1.0) * scale + self.hu_min
        return (np.clip(np.asarray(x, dtype=np.float32), 0.0, 1.0) * scale + self.hu_min).astype(np.float32)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "IntensityMapping":
        if not isinstance(d, dict):
            raise VolumeError(f"intensity must be a JSON object, got {type(d).__name__}")
        unknown = sorted(set(d) - {"kind", "hu_min", "hu_max", "description"})
        if unknown:
            raise VolumeError(f"intensity: unknown key(s) {', '.join(unknown)}")
        for key in ("hu_min", "hu_max"):
            if key in d and (isinstance(d[key], bool) or not isinstance(d[key], (int, float))):
                raise VolumeError(f"intensity.{key} must be a number, got {d[key]!r}")
        return cls(**{k: (float(v) if k.startswith("hu_") else v) for k, v in d.items()})


DEFAULT_INTENSITY = IntensityMapping()
