"""Slice geometry (plain numpy): radiological axes, grids on voxel centres, slice indices and steps."""

import numpy as np
import pytest

from gui_chest import make_chest
from land_core.volume import Volume
from land_gui.viewers import orientation as geo
from land_gui.viewers.orientation import ORIENTATIONS


def test_radiological_axes():
    ax, co, sa = ORIENTATIONS["axial"], ORIENTATIONS["coronal"], ORIENTATIONS["sagittal"]
    # axial: patient's left (+x in LPS) to the screen's right, anterior (-y) up
    assert ax.u == (1, 0, 0) and ax.v == (0, -1, 0) and ax.edge_labels == ("R", "L", "A", "P")
    # coronal: superior up; sagittal: anterior on the left (posterior, +y, to the right)
    assert co.u == (1, 0, 0) and co.v == (0, 0, 1)
    assert sa.u == (0, 1, 0) and sa.v == (0, 0, 1) and sa.edge_labels == ("A", "P", "S", "I")
    for o in ORIENTATIONS.values():  # u, v, n orthonormal
        m = np.array([o.u, o.v, o.n], float)
        assert np.allclose(m @ m.T, np.eye(3))
        a, b, d = o.to_plane(o.to_world(3.0, -4.0, 5.0))
        assert (a, b, d) == pytest.approx((3.0, -4.0, 5.0))


@pytest.mark.parametrize("flipped", [False, True])
def test_grid_samples_voxel_centres(flipped):
    ct, _ = make_chest(flipped)
    grid = geo.slice_grid(ct, ORIENTATIONS["axial"])
    assert grid.size == (64, 56) and grid.spacing == (3.0, 3.0) and grid.aligned
    assert grid.normal_axis == 2 and grid.normal_sign == 1
    # every voxel centre's (u, v) lies on a grid point, whichever way the array is stored
    centres = ct.world_grid((slice(0, 1), slice(None), slice(None))).reshape(-1, 3)
    a = centres[:, 0]
    b = -centres[:, 1]
    ia = (a - grid.origin[0]) / grid.spacing[0]
    ib = (b - grid.origin[1]) / grid.spacing[1]
    assert np.allclose(ia, np.rint(ia)) and np.allclose(ib, np.rint(ib))
    assert ia.min() == pytest.approx(0) and ia.max() == pytest.approx(63)
    sag = geo.slice_grid(ct, ORIENTATIONS["sagittal"])
    assert sag.normal_axis == 0 and sag.normal_sign == (-1 if flipped else 1)


def test_slice_index_depth_and_steps_follow_the_direction():
    ct = Volume(np.zeros((5, 6, 7), np.int16), (1.0, 2.0, 3.0), (10.0, 20.0, 30.0), np.diag([-1.0, -1.0, 1.0]))
    sag = ORIENTATIONS["sagittal"]
    p = ct.index_to_world((2.4, 1, 1))
    assert geo.slice_index(ct, sag, p) == 2
    assert geo.slice_depth(ct, sag, p) == pytest.approx(ct.index_to_world((2, 1, 1))[0])
    # one step along +n (+x, patient's left) is one index *down* here, since index x runs to -x
    moved = geo.step_slice(ct, sag, p, 1)
    assert moved[0] == pytest.approx(ct.index_to_world((1, 1, 1))[0])
    assert geo.slice_index(ct, sag, geo.step_slice(ct, sag, p, 50)) == 0  # clamped
    assert geo.slice_count(ct, ORIENTATIONS["axial"]) == 5


def test_oblique_volume_grid_uses_finest_spacing():
    c, s = np.cos(0.3), np.sin(0.3)
    rot = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    ct = Volume(np.zeros((4, 10, 10), np.int16), (1.0, 2.0, 3.0), (0, 0, 0), rot)
    grid = geo.slice_grid(ct, ORIENTATIONS["axial"])
    assert not geo.slice_grid(ct, ORIENTATIONS["sagittal"]).aligned
    assert grid.aligned and grid.spacing == (1.0, 1.0)
