import numpy as np
import pytest

from land_core.errors import VolumeError
from land_core.preprocess import DEFAULT_INTENSITY, IntensityMapping, crop_or_pad, mask_bbox, resample, resample_like
from land_core.volume import Volume


def test_resample_keeps_extent_and_values():
    z, y, x = np.mgrid[0:20, 0:30, 0:40].astype(np.float32)
    ramp = Volume((x * 1.5 * 10).astype(np.float32), (1.5, 1.5, 3.0), (10, 20, 30))  # 10 HU per mm along x
    out = resample(ramp, 1.0)
    assert out.size_xyz == (60, 45, 60)
    assert np.allclose(out.index_to_world([-0.5] * 3), ramp.index_to_world([-0.5] * 3))
    # a linear ramp is reproduced by cubic interpolation away from the borders
    xs = out.world_grid()[..., 0][10:-10, 10:-10, 10:-10]
    vals = out.array[10:-10, 10:-10, 10:-10]
    assert np.allclose(vals, (xs - 10) * 10, atol=0.5)
    # cubic overshoot is clipped to the input's range
    assert out.array.min() >= ramp.array.min() - 1e-3 and out.array.max() <= ramp.array.max() + 1e-3


def test_mask_resampling_is_nearest():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[2:8, 2:8, 2:8] = 3
    out = resample(Volume(mask, (2, 2, 2)), 1.0, "mask")
    assert out.array.dtype == np.uint8 and set(np.unique(out.array)) == {0, 3}
    assert out.array.sum() == mask.sum() * 8


def test_resample_like_round_trip():
    rng = np.random.default_rng(1)
    vol = Volume(rng.integers(0, 5, (8, 8, 8)).astype(np.uint8), (2, 2, 2), (1, 2, 3))
    fine = resample(vol, 1.0, "mask")
    back = resample_like(fine, vol, "mask")
    assert back.same_grid(vol) and np.array_equal(back.array, vol.array)


def test_crop_or_pad_around_bbox_pads_with_air():
    arr = np.full((10, 12, 14), 100, np.int16)
    vol = Volume(arr, (1, 1, 1), (0, 0, 0))
    lungs = np.zeros_like(arr)
    lungs[2:5, 3:6, 10:14] = 1
    lo, hi = mask_bbox(lungs)
    assert lo.tolist() == [10, 3, 2] and hi.tolist() == [14, 6, 5]
    out = crop_or_pad(vol, 8, bbox=(lo, hi))
    assert out.shape == (8, 8, 8)
    # the window is centred on the box (x centre 11.5), so it runs past x = 13 and is padded
    assert (out.array == -1024).any() and (out.array == 100).any()
    centre = out.index_to_world((np.array(out.size_xyz) - 1) / 2)
    assert np.allclose(centre, [11.5, 4.0, 3.0], atol=0.5)
    # world positions agree with the source
    k = out.world_to_index(vol.index_to_world([12, 4, 3])).round().astype(int)
    assert out.array[k[2], k[1], k[0]] == 100
    masks = crop_or_pad(vol.with_array(lungs), 20, kind="mask")
    assert masks.shape == (20, 20, 20) and masks.array.sum() == lungs.sum() and masks.array.min() == 0


def test_intensity_mapping_inverse_is_exact():
    hu = np.linspace(-1000, 1000, 2001, dtype=np.float32)
    x = DEFAULT_INTENSITY.hu_to_model(hu)
    assert x.min() == 0.0 and x.max() == 1.0
    assert np.allclose(DEFAULT_INTENSITY.model_to_hu(x), hu, atol=1e-3)
    assert DEFAULT_INTENSITY.hu_to_model(np.array([-3000, 3000])).tolist() == [0.0, 1.0]
    assert IntensityMapping.from_dict(DEFAULT_INTENSITY.to_dict()) == DEFAULT_INTENSITY
    import torch

    t = torch.tensor([-1200.0, 0.0, 500.0])
    assert torch.allclose(DEFAULT_INTENSITY.model_to_hu(DEFAULT_INTENSITY.hu_to_model(t)), torch.tensor([-1000.0, 0.0, 500.0]))
    with pytest.raises(VolumeError):
        IntensityMapping(100, -100)
