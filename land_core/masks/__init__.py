"""Condition masks: the LAND encoding, nodule specifications and their rasterisation, edit ops.

Qt-free so that the app, the command line and the tests share one implementation.
"""

from land_core.masks.condition import (
    CONDITION_MODES,
    LUNG_VALUE,
    SUBTYPES,
    TEXTURE_NAMES,
    condition_channels,
    decode_condition,
    encode_condition,
    texture_name,
    texture_to_subtype,
)
from land_core.masks.nodules import NoduleSpec, nodule_radius_field, rasterize_nodules

__all__ = [
    "CONDITION_MODES",
    "LUNG_VALUE",
    "SUBTYPES",
    "TEXTURE_NAMES",
    "NoduleSpec",
    "condition_channels",
    "decode_condition",
    "encode_condition",
    "nodule_radius_field",
    "rasterize_nodules",
    "texture_name",
    "texture_to_subtype",
]
