"""Colours shared by the VTK views and the Qt panels, so a nodule looks the same everywhere.

RGB triples in 0..1. Lungs are green (the usual segmentation colour); nodules run from yellow
(texture 1, ground glass) through orange (3, part-solid) to magenta (5, solid), so the texture is
readable at a glance and never confused with the lungs, the light-blue crosshair or the white of
the selected nodule. The brush circle is green when it paints and red when it erases.
"""

from __future__ import annotations

RGB = tuple[float, float, float]

LUNG: RGB = (0.2, 0.85, 0.35)
LUNG_3D: RGB = (0.45, 0.85, 0.55)
CROSSHAIR: RGB = (0.35, 0.75, 1.0)
#: The brush cursor circle: bright green to paint (the lungs' colour), red to erase.
BRUSH: RGB = (0.4, 1.0, 0.5)
ERASER: RGB = (1.0, 0.4, 0.4)
SELECTED: RGB = (1.0, 1.0, 1.0)
ANNOTATION: RGB = (1.0, 0.8, 0.45)
BACKGROUND_2D: RGB = (0.0, 0.0, 0.0)
BACKGROUND_3D_TOP: RGB = (0.16, 0.18, 0.24)
BACKGROUND_3D_BOTTOM: RGB = (0.02, 0.02, 0.04)

TEXTURE: dict[int, RGB] = {
    1: (1.0, 0.92, 0.2),
    2: (1.0, 0.7, 0.1),
    3: (1.0, 0.45, 0.1),
    4: (0.95, 0.2, 0.2),
    5: (0.9, 0.15, 0.75),
}


def texture_rgb(texture: int) -> RGB:
    """The colour of a nodule of LIDC texture score ``texture`` (1..5)."""
    return TEXTURE.get(int(texture), (0.8, 0.8, 0.8))


def to_255(rgb: RGB) -> tuple[int, int, int]:
    """An RGB triple as 0..255 integers (for Qt colours and for pixel checks in tests)."""
    return tuple(int(round(c * 255)) for c in rgb)  # type: ignore[return-value]
