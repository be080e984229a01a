"""Nodule specifications in millimetres and their rasterisation onto a volume's grid.

A :class:`NoduleSpec` is what a person places: a centre in world coordinates (LPS mm), a diameter
in mm, a LIDC texture score 1..5, and optionally an ellipsoid shape with an orientation, and an
amount of lobulation and spiculation. Because it lives in mm it survives resampling; it becomes
voxels only when rasterised onto a particular grid, and then only inside its bounding box.

The shape is described by a normalised radial coordinate ``rho`` (0 at the centre, 1 on the
surface), which the phantom also uses to shape intensities (a solid core where ``rho`` is small).
Lobulation modulates the surface radius with a few smooth random bumps; spiculation adds thin
tapering spikes. Both are driven by ``seed`` so a nodule looks the same every time it is drawn.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from land_core.errors import MaskError
from land_core.masks.condition import check_texture, texture_to_subtype
from land_core.volume import Volume

#: Most the lobulation bumps change the surface radius (fraction of the radius at lobulation 1).
LOBULATION_DEPTH = 0.25
#: How far spikes reach beyond the surface at spiculation 1 (fraction of the radius).
SPIKE_LENGTH = 0.9
#: Angular half-width of a spike at its base, radians.
SPIKE_WIDTH = 0.22
N_SPIKES = 10
N_LOBES = 5


def rotation_matrix(orientation_deg: Sequence[float] | None) -> np.ndarray:
    """Rotation matrix from intrinsic Z-Y-X Euler angles in degrees (identity when None)."""
    if orientation_deg is None:
        return np.eye(3)
    az, ay, ax = (math.radians(a) for a in orientation_deg)
    cz, sz, cy, sy, cx, sx = math.cos(az), math.sin(az), math.cos(ay), math.sin(ay), math.cos(ax), math.sin(ax)
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    return rz @ ry @ rx


def _unit_vectors(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@dataclass
class NoduleSpec:
    """A nodule in world coordinates (mm).

    ``diameter_mm`` is the longest diameter (the LIDC convention). ``axes_mm``, when given, are the
    full lengths of the three ellipsoid axes (their maximum must equal ``diameter_mm``), rotated by
    ``orientation_deg`` (intrinsic Z-Y-X Euler angles). ``lobulation`` and ``spiculation`` are in
    [0, 1]. ``texture`` is the LIDC score, 1 (ground glass) .. 5 (solid).
    """

    center_mm: tuple[float, float, float]
    diameter_mm: float
    texture: int
    axes_mm: tuple[float, float, float] | None = None
    orientation_deg: tuple[float, float, float] | None = None
    lobulation: float = 0.0
    spiculation: float = 0.0
    seed: int = 0
    label: str = field(default="")

    def __post_init__(self) -> None:
        try:
            self.center_mm = tuple(float(c) for c in self.center_mm)  # type: ignore[assignment]
        except (TypeError, ValueError):
            raise MaskError(f"nodule centre must be three numbers in mm, got {self.center_mm!r}") from None
        if len(self.center_mm) != 3 or not all(math.isfinite(c) for c in self.center_mm):
            raise MaskError(f"nodule centre must be three finite numbers (x, y, z) in mm, got {self.center_mm!r}")
        try:
            self.diameter_mm = float(self.diameter_mm)
        except (TypeError, ValueError):
            raise MaskError(f"nodule diameter must be a number in mm, got {self.diameter_mm!r}") from None
        if not math.isfinite(self.diameter_mm) or self.diameter_mm <= 0:
            raise MaskError(f"nodule diameter must be a positive number of mm, got {self.diameter_mm!r}")
        self.texture = check_texture(self.texture)
        if self.axes_mm is not None:
            axes = tuple(float(a) for a in self.axes_mm)
            if len(axes) != 3 or min(axes) <= 0 or not all(math.isfinite(a) for a in axes):
                raise MaskError(f"nodule axes must be three positive lengths in mm, got {self.axes_mm!r}")
            if abs(max(axes) - self.diameter_mm) > 1e-3 * max(1.0, self.diameter_mm):
                raise MaskError(
                    f"the longest nodule axis ({max(axes):g} mm) must equal its diameter ({self.diameter_mm:g} mm)"
                )
            self.axes_mm = axes  # type: ignore[assignment]
        if self.orientation_deg is not None:
            angles = tuple(float(a) for a in self.orientation_deg)
            if len(angles) != 3:
                raise MaskError(f"nodule orientation must be three angles in degrees, got {self.orientation_deg!r}")
            self.orientation_deg = angles  # type: ignore[assignment]
        for name in ("lobulation", "spiculation"):
            value = float(getattr(self, name))
            if not 0.0 <= value <= 1.0:
                raise MaskError(f"nodule {name} must be between 0 and 1, got {value!r}")
            setattr(self, name, value)
        self.seed = int(self.seed)

    @classmethod
    def ellipsoid(cls, center_mm, axes_mm, texture: int, **kwargs) -> "NoduleSpec":
        """An ellipsoidal nodule; its diameter is its longest axis."""
        return cls(center_mm, max(float(a) for a in axes_mm), texture, axes_mm=tuple(axes_mm), **kwargs)

    @property
    def subtype(self) -> str:
        return texture_to_subtype(self.texture)

    @property
    def semi_axes_mm(self) -> np.ndarray:
        axes = self.axes_mm if self.axes_mm is not None else (self.diameter_mm,) * 3
        return np.asarray(axes, dtype=float) / 2.0

    @property
    def reach_mm(self) -> float:
        """Radius of a sphere around the centre that holds the whole nodule, spikes included."""
        grow = 1.0 + LOBULATION_DEPTH * self.lobulation + SPIKE_LENGTH * self.spiculation
        return float(self.semi_axes_mm.max() * grow)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["center_mm"] = list(self.center_mm)
        d["subtype"] = self.subtype
        for key in ("axes_mm", "orientation_deg"):
            if d[key] is None:
                del d[key]
            else:
                d[key] = list(d[key])
        if not d["label"]:
            del d["label"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "NoduleSpec":
        if not isinstance(d, dict):
            raise MaskError(f"a nodule must be a JSON object, got {type(d).__name__}")
        known = {"center_mm", "diameter_mm", "texture", "axes_mm", "orientation_deg", "lobulation",
                 "spiculation", "seed", "label", "subtype"}
        unknown = set(d) - known
        if unknown:
            raise MaskError(f"unknown nodule field(s) {sorted(unknown)}; known: {sorted(known)}")
        missing = {"center_mm", "diameter_mm", "texture"} - set(d)
        if missing:
            raise MaskError(f"nodule is missing {sorted(missing)}")
        args = {k: v for k, v in d.items() if k != "subtype"}
        return cls(**args)

    # ------------------------------------------------------------------ shape
    def radius_function(self, directions: np.ndarray) -> np.ndarray:
        """Surface radius (1 = the plain ellipsoid) along unit ``directions`` ``(..., 3)`` in the
        nodule's own normalised frame."""
        r = np.ones(directions.shape[:-1])
        if self.lobulation <= 0 and self.spiculation <= 0:
            return r
        rng = np.random.default_rng(self.seed)
        lobe_dirs = _unit_vectors(rng, N_LOBES)
        lobe_freq = rng.uniform(1.5, 3.0, N_LOBES)
        lobe_phase = rng.uniform(0, 2 * math.pi, N_LOBES)
        spike_dirs = _unit_vectors(rng, N_SPIKES)
        spike_len = rng.uniform(0.5, 1.0, N_SPIKES)
        if self.lobulation > 0:
            bumps = np.zeros_like(r)
            for w, f, ph in zip(lobe_dirs, lobe_freq, lobe_phase):
                bumps += np.cos(math.pi * f * (directions @ w) + ph)
            r = r + LOBULATION_DEPTH * self.lobulation * bumps / N_LOBES * 2.0
            r = np.clip(r, 1.0 - LOBULATION_DEPTH * self.lobulation, 1.0 + LOBULATION_DEPTH * self.lobulation)
        if self.spiculation > 0:
            for s, length in zip(spike_dirs, spike_len):
                angle = np.arccos(np.clip(directions @ s, -1.0, 1.0))
                taper = np.clip(1.0 - angle / SPIKE_WIDTH, 0.0, None) ** 3
                r = np.maximum(r, 1.0 + SPIKE_LENGTH * self.spiculation * length * taper)
        return r


def _bounding_box(spec: NoduleSpec, like: Volume) -> tuple[slice, slice, slice] | None:
    """Array-order box around the nodule clipped to the volume, or None when it misses it."""
    reach = spec.reach_mm
    c = np.asarray(spec.center_mm)
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    idx = like.world_to_index(c + reach * corners)
    lo = np.floor(idx.min(axis=0)).astype(int) - 1
    hi = np.ceil(idx.max(axis=0)).astype(int) + 2
    size = np.asarray(like.size_xyz)
    lo = np.clip(lo, 0, size)
    hi = np.clip(hi, 0, size)
    if np.any(hi <= lo):
        return None
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def nodule_radius_field(spec: NoduleSpec, like: Volume) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Normalised radial coordinate of ``spec`` on ``like``'s grid, within the nodule's bounding box.

    Returns ``(box_zyx, rho)``: ``rho`` has the box's shape, is 0 at the centre and 1 on the
    (lobulated / spiculated) surface, so ``rho <= 1`` is the nodule. Raises MaskError when the
    centre lies outside the volume.
    """
    if not like.contains_world(spec.center_mm):
        lo = like.index_to_world((-0.5, -0.5, -0.5))
        hi = like.index_to_world(np.asarray(like.size_xyz) - 0.5)
        raise MaskError(
            f"nodule centre {tuple(round(c, 1) for c in spec.center_mm)} mm lies outside the volume "
            f"(which spans {tuple(round(float(v), 1) for v in np.minimum(lo, hi))} to "
            f"{tuple(round(float(v), 1) for v in np.maximum(lo, hi))} mm)"
        )
    box = _bounding_box(spec, like)
    assert box is not None  # the centre is inside, so the box is not empty
    pts = like.world_grid(box) - np.asarray(spec.center_mm)
    local = pts @ rotation_matrix(spec.orientation_deg) / spec.semi_axes_mm
    dist = np.linalg.norm(local, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        directions = np.where(dist[..., None] > 0, local / dist[..., None], np.array([0.0, 0.0, 1.0]))
    rho = dist / spec.radius_function(directions)
    return box, rho


def rasterize_nodule(spec: NoduleSpec, like: Volume) -> tuple[tuple[slice, slice, slice], np.ndarray]:
    """Boolean mask of one nodule within its bounding box: ``(box_zyx, inside)``.

    Raises MaskError when the centre is outside the volume or the nodule covers no voxel (it is
    smaller than the grid can show).
    """
    box, rho = nodule_radius_field(spec, like)
    inside = rho <= 1.0
    if not inside.any():
        raise MaskError(
            f"a nodule of {spec.diameter_mm:g} mm at {tuple(round(c, 1) for c in spec.center_mm)} covers no voxel "
            f"of a grid with spacing {like.spacing} mm; make it larger"
        )
    return box, inside


def rasterize_nodules(specs: Iterable[NoduleSpec], like: Volume) -> Volume:
    """Texture label map (uint8: 0 background, 1..5 texture) of ``specs`` on ``like``'s grid.

    Where nodules overlap, the one later in the list wins. Each nodule touches only its bounding box.
    """
    labels = np.zeros(like.shape, dtype=np.uint8)
    for spec in specs:
        box, inside = rasterize_nodule(spec, like)
        labels[box][inside] = spec.texture
    return like.with_array(labels)


# ---------------------------------------------------------------------- nodule lists on disk
NODULE_LIST_FORMAT = "land-nodules/1"


def nodules_to_json(specs: Sequence[NoduleSpec]) -> dict:
    """A nodule list as the JSON document LAND Studio saves (``format``, ``units``, ``nodules``)."""
    return {"format": NODULE_LIST_FORMAT, "units": "mm, LPS world coordinates",
            "nodules": [s.to_dict() for s in specs]}


def save_nodules(path: str | os.PathLike, specs: Sequence[NoduleSpec]) -> Path:
    """Write a nodule list as JSON, atomically."""
    from land_core.io.atomic import write_json_atomic

    write_json_atomic(path, nodules_to_json(specs))
    return Path(path)


def load_nodules(path: str | os.PathLike) -> list[NoduleSpec]:
    """Read a nodule list (a ``land-nodules/1`` document, or a bare JSON list of nodules).

    Errors name the file and the nodule (by position) that is wrong.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MaskError(f"{p}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MaskError(f"{p}: not a valid JSON nodule list ({exc})") from None
    items = doc.get("nodules") if isinstance(doc, dict) else doc
    if not isinstance(items, list):
        raise MaskError(f"{p}: expected a list of nodules under 'nodules'")
    specs = []
    for i, item in enumerate(items):
        try:
            specs.append(NoduleSpec.from_dict(item))
        except MaskError as exc:
            raise MaskError(f"{p}: nodule #{i + 1}: {exc}") from None
        except TypeError as exc:
            raise MaskError(f"{p}: nodule #{i + 1}: {exc}") from None
    return specs


def deepest_point_mm(mask: Volume, label: int | None = None) -> tuple[float, float, float]:
    """The world point (mm) of ``mask`` (voxels > 0, or == ``label``) farthest from its boundary.

    Where a nodule of any size fits best inside a lung: a lung's centroid can lie outside it (a
    crescent), its deepest point cannot. Distances are in mm (SciPy's exact Euclidean distance
    transform with the voxel spacing).
    """
    from scipy.ndimage import distance_transform_edt

    inside = mask.array > 0 if label is None else mask.array == label
    if not inside.any():
        raise MaskError(f"the mask has no voxel {'> 0' if label is None else f'== {label}'}")
    dist = distance_transform_edt(np.pad(inside, 1), sampling=tuple(mask.spacing[::-1]))[1:-1, 1:-1, 1:-1]
    k, j, i = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return tuple(float(v) for v in mask.index_to_world([i, j, k]))  # type: ignore[return-value]
