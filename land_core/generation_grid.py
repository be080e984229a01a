"""Where a model generates: fitting a person's condition onto the model's fixed field of view.

A model is trained on cubes of ``size`` voxels at ``spacing`` mm (LAND: 256 voxels at 1 mm, a
256 mm field of view). A condition drawn on a real CT has its own grid, and real lungs can span
more than 256 mm. :func:`plan_model_grid` chooses the model's window deliberately:

* it is centred on the lungs and nodules (the anatomy that conditions the model);
* when they fit (with a margin) the model's spacing is kept;
* when they do not fit, the spacing is enlarged just enough that they do ("fitted by resampling"),
  and the plan says so in ``note`` (the pipeline logs it and the app shows it) — the anatomy is
  never cut off silently.

The output of the model is resampled back onto the condition's grid by the pipeline; voxels of the
condition's grid outside the window are air (-1024 HU) and are listed in the plan.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from land_core.errors import MaskError
from land_core.preprocess import mask_bbox, resample_like
from land_core.volume import Volume


@dataclass
class ModelGridPlan:
    """The model's window on the world: a cube of ``size`` voxels at ``spacing`` mm."""

    size: int
    spacing: float
    origin: tuple[float, float, float]
    direction: np.ndarray
    fitted: bool
    anatomy_extent_mm: tuple[float, float, float]
    note: str

    def empty_volume(self, fill: float = 0.0, dtype=np.float32) -> Volume:
        """A volume on the model's grid, filled with ``fill``."""
        arr = np.full((self.size,) * 3, fill, dtype=dtype)
        return Volume(arr, (self.spacing,) * 3, self.origin, self.direction)


def plan_model_grid(
    condition: Volume,
    *,
    model_size: int,
    model_spacing: float,
    margin_mm: float = 8.0,
) -> ModelGridPlan:
    """Plan the model window for a condition volume (non-zero voxels are the anatomy).

    Raises MaskError for a condition with no lungs or nodules at all (the unconditional mode does
    not need a condition; call the pipeline without one).
    """
    box = mask_bbox(condition.array > 0)
    if box is None:
        raise MaskError("the condition holds no lungs and no nodules; draw some, or generate unconditionally")
    lo, hi = box
    # the anatomy's extent along the condition's own axes, in mm, plus the margin on both sides
    extent = (hi - lo) * np.asarray(condition.spacing)
    needed = float(extent.max() + 2 * margin_mm)
    fov = model_size * model_spacing
    if needed <= fov:
        spacing = float(model_spacing)
        fitted = False
        note = (f"the lungs and nodules ({extent[0]:.0f} x {extent[1]:.0f} x {extent[2]:.0f} mm) fit the "
                f"model's {fov:.0f} mm field of view at {spacing:g} mm")
    else:
        spacing = math.ceil(needed / model_size * 100) / 100.0
        fitted = True
        note = (f"the lungs and nodules span {extent.max():.0f} mm, more than the model's {fov:.0f} mm field of "
                f"view; generating at {spacing:g} mm instead of {model_spacing:g} mm so that nothing is cut off "
                f"(the result is resampled back to the input grid, slightly softer)")
    centre_index = (lo + hi - 1) / 2.0
    centre = condition.index_to_world(centre_index)
    half = (model_size - 1) / 2.0 * spacing
    origin = centre - condition.direction @ np.full(3, half)
    return ModelGridPlan(model_size, spacing, tuple(float(o) for o in origin), condition.direction.copy(),
                         fitted, tuple(float(e) for e in extent), note)


def condition_to_model_grid(condition: Volume, plan: ModelGridPlan) -> Volume:
    """The condition resampled (nearest neighbour, labels stay exact) onto the plan's window."""
    return resample_like(condition, plan.empty_volume(), kind="mask")


def model_output_to_grid(output: Volume, like: Volume) -> Volume:
    """A generated CT (on the model's window) resampled onto ``like``'s grid; air outside the window."""
    return resample_like(output, like, kind="ct", fill=-1024.0)

