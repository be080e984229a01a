import numpy as np
import pytest

from land_core.errors import MaskError
from land_core.masks import NoduleSpec, nodule_radius_field, rasterize_nodules
from land_core.masks.nodules import load_nodules, save_nodules
from land_core.volume import Volume


@pytest.fixture
def grid():
    return Volume(np.zeros((60, 60, 60), np.int16), (1.0, 1.0, 1.0), (-29.5, -29.5, -29.5))


def test_sphere_volume_and_label(grid):
    labels = rasterize_nodules([NoduleSpec((0, 0, 0), 20.0, 4)], grid).array
    assert set(np.unique(labels)) == {0, 4}
    expected = 4 / 3 * np.pi * 10**3
    assert abs((labels == 4).sum() - expected) / expected < 0.03
    # centred where asked: the centre voxels are inside, 11 mm away is outside
    idx = grid.world_to_index([0.5, 0.5, 0.5]).astype(int)
    assert labels[idx[2], idx[1], idx[0]] == 4
    far = grid.world_to_index([11.5, 0.5, 0.5]).astype(int)
    assert labels[far[2], far[1], far[0]] == 0


def test_ellipsoid_axes_and_orientation(grid):
    spec = NoduleSpec.ellipsoid((0, 0, 0), (24.0, 8.0, 8.0), 2)
    labels = rasterize_nodules([spec], grid).array > 0
    zs, ys, xs = np.nonzero(labels)
    assert 22 <= xs.max() - xs.min() + 1 <= 25 and 6 <= ys.max() - ys.min() + 1 <= 9
    turned = NoduleSpec.ellipsoid((0, 0, 0), (24.0, 8.0, 8.0), 2, orientation_deg=(90, 0, 0))
    zs, ys, xs = np.nonzero(rasterize_nodules([turned], grid).array)
    assert 22 <= ys.max() - ys.min() + 1 <= 25 and 6 <= xs.max() - xs.min() + 1 <= 9


def test_lobulation_and_spiculation_change_shape_deterministically(grid):
    plain = rasterize_nodules([NoduleSpec((0, 0, 0), 16, 5)], grid).array
    spiky = NoduleSpec((0, 0, 0), 16, 5, lobulation=0.6, spiculation=0.8, seed=7)
    a = rasterize_nodules([spiky], grid).array
    b = rasterize_nodules([spiky], grid).array
    assert np.array_equal(a, b)
    assert (a != plain).sum() > 50
    # spikes reach further than the plain sphere's radius
    zs, ys, xs = np.nonzero(a)
    centre = grid.world_to_index([0, 0, 0])
    reach = np.sqrt((xs - centre[0]) ** 2 + (ys - centre[1]) ** 2 + (zs - centre[2]) ** 2).max()
    assert reach > 10


def test_radius_field_is_zero_at_centre_and_one_on_surface(grid):
    box, rho = nodule_radius_field(NoduleSpec((0.5, 0.5, 0.5), 10, 3), grid)
    assert rho.min() < 0.05
    assert rho.shape == tuple(s.stop - s.start for s in box)
    inside = rho <= 1
    assert 0.9 < inside.sum() / (4 / 3 * np.pi * 125) < 1.1


def test_later_nodule_wins_overlap(grid):
    labels = rasterize_nodules([NoduleSpec((0, 0, 0), 10, 1), NoduleSpec((3, 0, 0), 10, 5)], grid).array
    assert {1, 5} <= set(np.unique(labels))
    idx = grid.world_to_index([2.5, 0.5, 0.5]).astype(int)
    assert labels[idx[2], idx[1], idx[0]] == 5


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(center_mm=(0, 0, 0), diameter_mm=0, texture=3), "positive"),
        (dict(center_mm=(0, 0, 0), diameter_mm=-4, texture=3), "positive"),
        (dict(center_mm=(0, 0), diameter_mm=4, texture=3), "three"),
        (dict(center_mm=(0, 0, np.nan), diameter_mm=4, texture=3), "finite"),
        (dict(center_mm=(0, 0, 0), diameter_mm=4, texture=6), "texture"),
        (dict(center_mm=(0, 0, 0), diameter_mm=4, texture=3, spiculation=1.5), "spiculation"),
        (dict(center_mm=(0, 0, 0), diameter_mm=4, texture=3, axes_mm=(4, 2, 9)), "longest"),
    ],
)
def test_bad_specs(kwargs, message):
    with pytest.raises(MaskError, match=message):
        NoduleSpec(**kwargs)


def test_outside_and_too_small(grid):
    with pytest.raises(MaskError, match="outside the volume"):
        rasterize_nodules([NoduleSpec((100, 0, 0), 5, 1)], grid)
    coarse = Volume(np.zeros((10, 10, 10)), (8, 8, 8), (-36, -36, -36))
    with pytest.raises(MaskError, match="covers no voxel"):
        rasterize_nodules([NoduleSpec((0, 0, 0), 1.0, 1)], coarse)


def test_nodule_list_round_trip_and_errors(tmp_path):
    specs = [NoduleSpec((1, 2, 3), 8, 1), NoduleSpec.ellipsoid((4, 5, 6), (12, 6, 6), 5, orientation_deg=(10, 20, 30), spiculation=0.3, seed=2)]
    path = save_nodules(tmp_path / "nodules.json", specs)
    assert load_nodules(path) == specs
    (tmp_path / "bad.json").write_text('{"nodules": [{"center_mm": [0,0,0], "diameter_mm": 5, "texture": 9}]}')
    with pytest.raises(MaskError, match=r"bad.json: nodule #1: .*texture"):
        load_nodules(tmp_path / "bad.json")
    (tmp_path / "broken.json").write_text("{")
    with pytest.raises(MaskError, match="broken.json: not a valid JSON"):
        load_nodules(tmp_path / "broken.json")


def test_deepest_point_is_inside_a_crescent():
    import pytest

    from land_core.errors import MaskError
    from land_core.masks.nodules import deepest_point_mm

    zz, yy, xx = np.mgrid[0:20, 0:40, 0:40]
    outer = (yy - 20) ** 2 + (xx - 20) ** 2 < 18 ** 2
    inner = (yy - 20) ** 2 + (xx - 28) ** 2 < 14 ** 2
    crescent = (outer & ~inner & (zz > 2) & (zz < 17)).astype(np.uint8)
    vol = Volume(crescent * 2, spacing=(1.0, 1.0, 2.0), origin=(-20.0, -20.0, 0.0))
    point = deepest_point_mm(vol, label=2)
    i, j, k = np.rint(vol.world_to_index(point)).astype(int)
    assert crescent[k, j, i] == 1  # the centroid of the crescent is not: it lies in the hole
    assert 0.0 <= point[0] + 20 <= 13  # in the thick left part of the crescent, in mm
    with pytest.raises(MaskError, match="no voxel == 1"):
        deepest_point_mm(vol, label=1)
