"""The condition encoding of the LAND paper, and nodule texture names and subtypes.

A condition volume is float32 in [0, 1] on the CT's grid:

* background 0,
* lungs 0.5,
* nodule voxels ``texture / 5`` (texture 1..5 -> 0.2, 0.4, 0.6, 0.8, 1.0), painted over the lungs.

Modes (the paper's ablation, chosen by a checkpoint's config): ``nodule_lung_texture`` is the
encoding above; ``nodule_lung`` paints every nodule 1.0 over lungs 0.5; ``nodule`` has nodules 1.0
and no lungs; ``unconditional`` is all zeros.

Decoding inverts the ``nodule_lung_texture`` encoding exactly: the lung field it returns includes
the nodule voxels (the encoding paints nodules *over* the lungs), so ``encode(decode(c)) == c``, and
``decode(encode(lungs, nodules)) == (lungs | nodules > 0, nodules)``.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from land_core.errors import MaskError
from land_core.volume import Volume

LUNG_VALUE = 0.5
TEXTURES = (1, 2, 3, 4, 5)

#: LIDC-IDRI texture scores and their names.
TEXTURE_NAMES = {
    1: "non-solid (ground glass)",
    2: "non-solid / mixed",
    3: "part-solid (mixed)",
    4: "solid / mixed",
    5: "solid",
}

Subtype = Literal["ground_glass", "part_solid", "solid"]
SUBTYPES: tuple[Subtype, ...] = ("ground_glass", "part_solid", "solid")

ConditionMode = Literal["unconditional", "nodule", "nodule_lung", "nodule_lung_texture"]
CONDITION_MODES: tuple[ConditionMode, ...] = ("unconditional", "nodule", "nodule_lung", "nodule_lung_texture")


def check_texture(texture: int) -> int:
    """Return ``texture`` as an int, or raise MaskError when it is not one of 1..5."""
    try:
        t = int(texture)
    except (TypeError, ValueError):
        raise MaskError(f"nodule texture must be an integer 1-5, got {texture!r}") from None
    if t != texture or t not in TEXTURES:
        raise MaskError(f"nodule texture must be an integer 1-5 (1 ground glass ... 5 solid), got {texture!r}")
    return t


def texture_to_subtype(texture: int) -> Subtype:
    """LIDC texture score -> nodule subtype: 1-2 ground glass, 3 part-solid, 4-5 solid."""
    t = check_texture(texture)
    return "ground_glass" if t <= 2 else "part_solid" if t == 3 else "solid"


def texture_name(texture: int) -> str:
    """A person's name for a texture score, e.g. ``3 -> 'part-solid (mixed)'``."""
    return TEXTURE_NAMES[check_texture(texture)]


def _as_array(x: Volume | np.ndarray, name: str) -> np.ndarray:
    arr = x.array if isinstance(x, Volume) else np.asarray(x)
    if arr.ndim != 3:
        raise MaskError(f"{name} must be 3D, got shape {arr.shape}")
    return arr


def encode_condition(
    lungs: Volume | np.ndarray | None,
    nodules: Volume | np.ndarray | None,
    mode: ConditionMode = "nodule_lung_texture",
) -> Volume | np.ndarray:
    """Build the condition volume from a lung mask (any label > 0 is lung) and a nodule texture map.

    ``nodules`` holds 0 for background and the texture 1..5 for nodule voxels. Returns a float32
    array, or a Volume on the same grid when either input is a Volume. Raises MaskError for shapes
    that differ, grids that differ, or nodule labels outside 0..5.
    """
    if mode not in CONDITION_MODES:
        raise MaskError(f"unknown condition mode {mode!r}; choose one of {', '.join(CONDITION_MODES)}")
    ref = next((v for v in (lungs, nodules) if isinstance(v, Volume)), None)
    if lungs is None and nodules is None:
        raise MaskError("encode_condition needs a lung mask, a nodule map, or both")
    lung_arr = _as_array(lungs, "lung mask") if lungs is not None else None
    nod_arr = _as_array(nodules, "nodule map") if nodules is not None else None
    shape = (lung_arr if lung_arr is not None else nod_arr).shape
    for arr, name in ((lung_arr, "lung mask"), (nod_arr, "nodule map")):
        if arr is not None and arr.shape != shape:
            raise MaskError(f"{name} shape {arr.shape} differs from {shape}")
    if isinstance(lungs, Volume) and isinstance(nodules, Volume) and not lungs.same_grid(nodules):
        raise MaskError("lung mask and nodule map are on different grids (spacing, origin or direction)")

    cond = np.zeros(shape, dtype=np.float32)
    if mode != "unconditional":
        if lung_arr is not None and mode != "nodule":
            cond[lung_arr > 0] = LUNG_VALUE
        if nod_arr is not None:
            labels = nod_arr.astype(np.int64, copy=False)
            if labels.min() < 0 or labels.max() > 5:
                raise MaskError(
                    f"nodule map must hold 0 (background) or textures 1-5, found values {int(labels.min())}..{int(labels.max())}"
                )
            if mode == "nodule_lung_texture":
                inside = labels > 0
                cond[inside] = labels[inside].astype(np.float32) / 5.0
            else:
                cond[labels > 0] = 1.0
    return ref.with_array(cond) if ref is not None else cond


def decode_condition(condition: Volume | np.ndarray, atol: float = 0.02) -> tuple:
    """Invert the ``nodule_lung_texture`` encoding: condition -> (lung field, nodule texture map).

    Values must lie within ``atol`` of {0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0}; others raise MaskError
    (a condition volume resampled with linear interpolation, for example, is not decodable).
    Returns uint8 arrays, or Volumes when ``condition`` is a Volume. The lung field includes nodules.
    """
    arr = _as_array(condition, "condition").astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise MaskError("condition holds NaN or infinite values")
    is_lung = np.abs(arr - LUNG_VALUE) <= atol
    fifths = np.rint(arr * 5.0)
    on_grid = (np.abs(arr - fifths / 5.0) <= atol) & (fifths >= 0) & (fifths <= 5)
    bad_mask = ~(is_lung | on_grid)
    if np.any(bad_mask):
        bad = np.unique(arr[bad_mask])[:5]
        raise MaskError(
            f"condition values must be 0, 0.5 (lungs) or texture/5 (nodules); found {bad.tolist()}"
        )
    nodules = np.where(is_lung, 0, fifths).astype(np.uint8)
    lungs = (is_lung | (nodules > 0)).astype(np.uint8)
    if isinstance(condition, Volume):
        return condition.with_array(lungs), condition.with_array(nodules)
    return lungs, nodules


def condition_channels(mode: ConditionMode) -> int:
    """Number of condition channels a model needs for ``mode`` (0 for unconditional)."""
    if mode not in CONDITION_MODES:
        raise MaskError(f"unknown condition mode {mode!r}; choose one of {', '.join(CONDITION_MODES)}")
    return 0 if mode == "unconditional" else 1
