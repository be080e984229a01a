import numpy as np
import pytest

from land_core.errors import MaskError
from land_core.generation_grid import condition_to_model_grid, model_output_to_grid, plan_model_grid
from land_core.volume import Volume


def _condition(extent_vox, spacing):
    arr = np.zeros((100, 100, 100), np.float32)
    lo = 50 - np.asarray(extent_vox) // 2
    hi = lo + np.asarray(extent_vox)
    arr[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]] = 0.5
    arr[50, 50, 50] = 1.0
    return Volume(arr, spacing, (-50.0 * spacing[0], -50.0 * spacing[1], -50.0 * spacing[2]))


def test_anatomy_that_fits_keeps_the_model_spacing():
    cond = _condition((40, 30, 50), (1.0, 1.0, 1.0))
    plan = plan_model_grid(cond, model_size=64, model_spacing=1.0, margin_mm=4)
    assert not plan.fitted and plan.spacing == 1.0
    model = condition_to_model_grid(cond, plan)
    assert model.shape == (64, 64, 64)
    # nothing of the anatomy is lost, labels stay exact
    assert (model.array == 0.5).sum() == (cond.array == 0.5).sum()
    assert (model.array == 1.0).sum() == 1


def test_anatomy_larger_than_the_field_of_view_is_fitted_not_cut():
    cond = _condition((90, 60, 80), (1.5, 1.5, 1.5))  # 135 mm of anatomy, 64 mm field of view
    plan = plan_model_grid(cond, model_size=64, model_spacing=1.0, margin_mm=4)
    assert plan.fitted and plan.spacing >= (135 + 8) / 64
    assert "more than the model's 64 mm field of view" in plan.note
    model = condition_to_model_grid(cond, plan)
    # every face of the window is background: the anatomy is inside, not cut
    a = model.array
    for face in (a[0], a[-1], a[:, 0], a[:, -1], a[:, :, 0], a[:, :, -1]):
        assert not face.any()
    assert (a > 0).sum() * plan.spacing**3 == pytest.approx((cond.array > 0).sum() * 1.5**3, rel=0.1)


def test_output_goes_back_to_the_condition_grid_with_air_outside():
    cond = _condition((20, 20, 20), (2.0, 2.0, 2.0))
    plan = plan_model_grid(cond, model_size=32, model_spacing=1.0, margin_mm=2)
    out = plan.empty_volume(fill=40.0)
    back = model_output_to_grid(out, cond)
    assert back.same_grid(cond)
    assert back.array[50, 50, 50] == pytest.approx(40.0)
    assert back.array[0, 0, 0] == -1024.0


def test_empty_condition_is_refused():
    with pytest.raises(MaskError, match="no lungs and no nodules"):
        plan_model_grid(Volume(np.zeros((8, 8, 8), np.float32)), model_size=8, model_spacing=1.0)
