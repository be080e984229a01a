"""The editing tools' settings: which tool is active, the brush, and the nodule a click places.

They live in the model (not in a panel or a view) because several views and panels share them:
the tool panel sets the brush radius, every slice view draws its cursor circle with it and paints
with it, and the keyboard shortcuts change it. Settings are frozen dataclasses; the document
replaces them (``Document.set_brush(radius_mm=8)``) and emits a ``tool`` event.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from land_core.errors import MaskError
from land_core.masks.edit import BRUSH_SHAPES, BrushShape

#: The tools, in the order the tool bar shows them.
TOOLS = ("navigate", "paint", "erase", "nodule")
TOOL_TITLES = {"navigate": "Navigate", "paint": "Paint lungs", "erase": "Erase", "nodule": "Place nodule"}
#: Lung labels a brush can paint (the LAND condition treats every label > 0 as lung).
LUNG_LABELS = {1: "Right lung (1)", 2: "Left lung (2)"}
#: Named HU ranges for the brush's gate.
HU_PRESETS: dict[str, tuple[float, float]] = {"air-like": (-1000.0, -400.0)}
HU_PRESET_TITLES = {"air-like": "Air-like (\u22121000..\u2212400 HU)"}
#: Brush radii (mm) that the +/- keys and Shift+wheel step through.
BRUSH_RADII_MM = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.0, 15.0, 20.0, 25.0, 30.0, 40.0, 50.0)
MIN_BRUSH_MM, MAX_BRUSH_MM = BRUSH_RADII_MM[0], BRUSH_RADII_MM[-1]


@dataclass(frozen=True)
class BrushSettings:
    """The paint / erase brush: radius in mm, 3D sphere or 2D disc (in the view's plane), the lung
    label it paints, and an optional HU gate (paint only where the CT lies in ``hu_range``)."""

    radius_mm: float = 5.0
    shape: BrushShape = "sphere"
    label: int = 1
    gate_enabled: bool = False
    hu_range: tuple[float, float] = HU_PRESETS["air-like"]

    def __post_init__(self) -> None:
        radius = float(self.radius_mm)
        if not math.isfinite(radius) or not MIN_BRUSH_MM <= radius <= MAX_BRUSH_MM:
            raise MaskError(f"the brush radius must lie in {MIN_BRUSH_MM:g}..{MAX_BRUSH_MM:g} mm, got {self.radius_mm!r}")
        object.__setattr__(self, "radius_mm", radius)
        if self.shape not in BRUSH_SHAPES:
            raise MaskError(f"the brush shape must be one of {', '.join(BRUSH_SHAPES)}, got {self.shape!r}")
        if self.label not in LUNG_LABELS:
            raise MaskError(f"the brush paints label 1 (right lung) or 2 (left lung), got {self.label!r}")
        try:
            lo, hi = (float(v) for v in self.hu_range)
        except (TypeError, ValueError):
            raise MaskError(f"the HU range must be two numbers, got {self.hu_range!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi)) or lo > hi:
            raise MaskError(f"the HU range needs low <= high, got {lo:g}..{hi:g}")
        object.__setattr__(self, "hu_range", (lo, hi))
        object.__setattr__(self, "gate_enabled", bool(self.gate_enabled))

    @property
    def gate(self) -> tuple[float, float] | None:
        """The HU range painting is limited to, or None when the gate is off."""
        return self.hu_range if self.gate_enabled else None


def step_radius(radius_mm: float, steps: int) -> float:
    """The radius ``steps`` places up (or down) :data:`BRUSH_RADII_MM` from ``radius_mm``."""
    radii = BRUSH_RADII_MM
    if steps > 0:
        bigger = [r for r in radii if r > radius_mm + 1e-9]
        return bigger[min(steps, len(bigger)) - 1] if bigger else radii[-1]
    if steps < 0:
        smaller = [r for r in radii if r < radius_mm - 1e-9]
        return smaller[max(len(smaller) + steps, 0)] if smaller else radii[0]
    return radius_mm


__all__ = [
    "BRUSH_RADII_MM", "BrushSettings", "HU_PRESETS", "HU_PRESET_TITLES", "LUNG_LABELS", "MAX_BRUSH_MM",
    "MIN_BRUSH_MM", "TOOLS", "TOOL_TITLES", "step_radius",
]
