import numpy as np
import pytest

from land_core.errors import VolumeError
from land_core.volume import Volume


def test_index_world_round_trip(ct_volume):
    idx = np.array([[0, 0, 0], [3.5, 7, 11], [23, 19, 11]], float)
    world = ct_volume.index_to_world(idx)
    assert np.allclose(ct_volume.world_to_index(world), idx)
    # voxel (0,0,0) sits at the origin; one step in x moves by spacing_x along direction[:, 0]
    assert np.allclose(world[0], ct_volume.origin)
    step = ct_volume.index_to_world([1, 0, 0]) - ct_volume.index_to_world([0, 0, 0])
    assert np.allclose(step, 0.7 * ct_volume.direction[:, 0])


def test_world_grid_matches_index_to_world(ct_volume):
    box = (slice(2, 4), slice(5, 8), slice(1, 3))
    grid = ct_volume.world_grid(box)
    assert grid.shape == (2, 3, 2, 3)
    assert np.allclose(grid[1, 2, 0], ct_volume.index_to_world([1, 7, 3]))


def test_sitk_round_trip_keeps_geometry(ct_volume):
    back = Volume.from_sitk(ct_volume.to_sitk())
    assert back.same_grid(ct_volume, tol=1e-9)
    assert np.array_equal(back.array, ct_volume.array)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"array": np.zeros((4, 4))}, "must be 3D"),
        ({"array": np.zeros((4, 4, 4)), "spacing": (1, 0, 1)}, "positive"),
        ({"array": np.zeros((4, 4, 4)), "spacing": (1, 1)}, "three numbers"),
        ({"array": np.zeros((4, 4, 4)), "direction": np.ones((3, 3))}, "orthonormal"),
        ({"array": np.zeros((4, 4, 4), dtype=object)}, "numbers"),
    ],
)
def test_bad_volumes_are_rejected(kwargs, message):
    with pytest.raises(VolumeError, match=message):
        Volume(**kwargs)


def test_check_finite_counts_nans():
    arr = np.zeros((3, 3, 3), np.float32)
    arr[0, 0, :2] = np.nan
    with pytest.raises(VolumeError, match="2 NaN"):
        Volume(arr).check_finite()


def test_with_array_requires_same_shape(ct_volume):
    with pytest.raises(VolumeError, match="does not match"):
        ct_volume.with_array(np.zeros((2, 2, 2)))
    other = ct_volume.with_array(np.ones(ct_volume.shape))
    assert other.same_grid(ct_volume)
