"""Brush edit ops: dab shapes on anisotropic and rotated grids (checked against brute force in world
mm), the HU gate, strokes recorded as one undo atom, and the whole-mask clean-ups."""

import numpy as np
import pytest

from land_core.errors import MaskError
from land_core.masks.edit import (
    StrokeRecorder,
    UndoAtom,
    bounding_box,
    brush_dab,
    dab_path,
    fill_holes,
    hu_gate,
    keep_largest_components,
    paint_dab,
    union_box,
)
from land_core.volume import Volume


def full_mask(grid: Volume, dab) -> np.ndarray:
    out = np.zeros(grid.shape, bool)
    if dab is not None:
        out[dab.box] = dab.inside
    return out


@pytest.mark.parametrize("radius", [1.0, 3.3, 7.5])
def test_sphere_dab_matches_brute_force_on_a_rotated_anisotropic_grid(ct_volume, radius):
    world = ct_volume.world_grid()
    centre = ct_volume.index_to_world((11.3, 9.6, 5.2))
    dab = brush_dab(ct_volume, centre, radius)
    expected = np.linalg.norm(world - centre, axis=-1) <= radius
    assert np.array_equal(full_mask(ct_volume, dab), expected)
    assert dab.n_voxels == expected.sum() > 0
    # the box is nearly tight: at most one voxel plane on each side holds no covered voxel
    tight = bounding_box(dab.inside)
    assert all(t.start <= 1 and n - t.stop <= 1 for t, n in zip(tight, dab.inside.shape))


def test_sphere_volume_in_mm_is_right_on_anisotropic_voxels():
    grid = Volume(np.zeros((60, 80, 80), np.uint8), (0.7, 0.7, 1.25))
    dab = brush_dab(grid, grid.index_to_world((40, 40, 30)), 10.0)
    voxel_ml = 0.7 * 0.7 * 1.25
    assert dab.n_voxels * voxel_ml == pytest.approx(4 / 3 * np.pi * 10.0**3, rel=0.02)
    # 10 mm is 14.3 voxels in x and y, 8 in z
    assert [s.stop - s.start for s in dab.box] == [17, 29, 29]


def test_disc_dab_is_one_voxel_plane_in_the_view_plane():
    grid = Volume(np.zeros((30, 40, 40), np.uint8), (0.8, 0.8, 2.5), (-16.0, -16.0, -37.5))
    centre = grid.index_to_world((20, 21, 12))
    axial = brush_dab(grid, centre, 6.0, "disc", normal=(0, 0, 1))
    assert axial.box[0] == slice(12, 13)  # exactly the slice through the centre
    sphere = brush_dab(grid, centre, 6.0)
    assert axial.n_voxels == sphere.inside[12 - sphere.box[0].start].sum()  # the sphere's middle slice
    coronal = brush_dab(grid, centre, 6.0, "disc", normal=(0, 1, 0))
    assert coronal.box[1] == slice(21, 22) and coronal.box[0] == slice(10, 15)  # 6 mm = 2.4 slices of 2.5 mm


def test_disc_dab_matches_brute_force_on_an_oblique_grid(ct_volume):
    world = ct_volume.world_grid()
    centre = ct_volume.index_to_world((12, 10, 6))
    normal = np.array([0.0, 0.0, 1.0])
    dab = brush_dab(ct_volume, centre, 5.0, "disc", normal=normal)
    d = (world - centre) @ normal
    cos = ct_volume.direction.T @ normal
    half = 0.5 * np.sum(np.abs(cos) * np.asarray(ct_volume.spacing))
    in_plane = np.linalg.norm(world - centre, axis=-1) ** 2 - d**2
    expected = (in_plane <= 25.0 + 1e-6) & (d >= -half) & (d < half)
    assert np.array_equal(full_mask(ct_volume, dab), expected)


def test_dabs_are_clipped_to_the_grid_and_tiny_brushes_paint_one_voxel():
    grid = Volume(np.zeros((10, 10, 10), np.uint8), (1.0, 1.0, 1.0))
    corner = brush_dab(grid, (0.0, 0.0, 0.0), 3.0)
    assert corner.box == (slice(0, 4), slice(0, 4), slice(0, 4)) and corner.inside[0, 0, 0]
    assert brush_dab(grid, (50.0, 0.0, 0.0), 3.0) is None
    tiny = brush_dab(grid, (4.4, 5.3, 2.0), 0.1)
    assert tiny.n_voxels == 1 and full_mask(grid, tiny)[2, 5, 4]
    with pytest.raises(MaskError, match="radius"):
        brush_dab(grid, (0, 0, 0), 0.0)
    with pytest.raises(MaskError, match="normal"):
        brush_dab(grid, (0, 0, 0), 2.0, "disc")
    with pytest.raises(MaskError, match="shape"):
        brush_dab(grid, (0, 0, 0), 2.0, "cube")


def test_hu_gate_limits_painting_to_the_range():
    grid = Volume(np.zeros((8, 8, 8), np.uint8))
    ct = np.full(grid.shape, -850, np.int16)
    ct[:, :, 4:] = 40  # soft tissue on one side
    labels = np.zeros(grid.shape, np.uint8)
    dab = brush_dab(grid, (4.0, 4.0, 4.0), 3.0)
    old = paint_dab(labels, dab, 1, ct, (-1000, -400))
    assert old is not None and not old.any()
    painted = labels > 0
    assert painted[:, :, :4].sum() > 0 and not painted[:, :, 4:].any()
    assert np.array_equal(painted, full_mask(grid, dab) & (ct <= -400))
    assert np.array_equal(hu_gate(np.array([-1001, -1000, -400, -399]), (-1000, -400)), [False, True, True, False])
    assert hu_gate(ct, None) is None
    assert paint_dab(labels, dab, 1, ct, (-1000, -400)) is None  # nothing new: no copy kept
    with pytest.raises(MaskError, match="HU range"):
        hu_gate(ct, (0, -10))


def test_a_stroke_is_one_atom_that_undoes_and_redoes_exactly():
    grid = Volume(np.zeros((20, 40, 40), np.uint8), (1.0, 1.0, 2.0))
    rng = np.random.default_rng(3)
    labels = (rng.random(grid.shape) < 0.1).astype(np.uint8) * 2
    before = labels.copy()
    recorder = StrokeRecorder()
    centres = dab_path((8.0, 8.0, 10.0), (30.0, 20.0, 14.0), 2.0)
    assert len(centres) == 13 and np.allclose(centres[-1], (30.0, 20.0, 14.0))
    for c in centres:
        dab = brush_dab(grid, c, 4.0)
        old = paint_dab(labels, dab, 1)
        if old is not None:
            recorder.add(dab.box, old)
    after = labels.copy()
    atom = recorder.finish(labels)
    assert isinstance(atom, UndoAtom) and len(recorder) == 0
    changed_box = bounding_box(before != after)
    assert atom.box == changed_box  # cropped to what changed
    assert atom.nbytes == 2 * np.prod([s.stop - s.start for s in atom.box])
    atom.undo(labels)
    assert np.array_equal(labels, before)
    atom.redo(labels)
    assert np.array_equal(labels, after)
    assert StrokeRecorder().finish(labels) is None
    assert UndoAtom.capture((slice(0, 2),) * 3, np.ones((2, 2, 2)), np.ones((2, 2, 2))) is None


def test_union_box():
    a = (slice(0, 2), slice(5, 6), slice(1, 9))
    b = (slice(3, 4), slice(0, 1), slice(2, 3))
    assert union_box(a, b) == (slice(0, 4), slice(0, 6), slice(1, 9))
    assert union_box(None, b) == b


def _ball(shape, centre, radius):
    zz, yy, xx = np.indices(shape)
    return (zz - centre[0]) ** 2 + (yy - centre[1]) ** 2 + (xx - centre[2]) ** 2 <= radius**2


def test_fill_holes_fills_enclosed_holes_per_label_only():
    shape = (30, 30, 60)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (15, 15, 15), 10)] = 1
    labels[_ball(shape, (15, 15, 15), 4)] = 0  # a hole inside lung 1
    labels[_ball(shape, (15, 15, 45), 10)] = 2
    labels[_ball(shape, (15, 15, 45), 3)] = 0  # a hole inside lung 2
    labels[15, 15, 55:] = 0  # a tunnel from lung 2's surface: not a hole
    labels[12:18, 12:18, 30] = 0
    box, new = fill_holes(labels)
    result = labels.copy()
    result[box] = new
    assert np.all(result[_ball(shape, (15, 15, 15), 4)] == 1)
    assert np.all(result[_ball(shape, (15, 15, 45), 3)] == 2)
    assert np.all(result[15, 15, 56:] == 0)
    assert np.array_equal(result > 0, (labels > 0) | _ball(shape, (15, 15, 15), 4) | _ball(shape, (15, 15, 45), 3))
    assert fill_holes(result) is None


def test_keep_largest_components_drops_stray_paint_and_keeps_labels():
    shape = (20, 20, 50)
    labels = np.zeros(shape, np.uint8)
    labels[_ball(shape, (10, 10, 10), 7)] = 1
    labels[_ball(shape, (10, 10, 35), 6)] = 2
    labels[2:4, 2:4, 22:24] = 1  # a speck of stray paint
    labels[18, 18, 48] = 2
    box, new = keep_largest_components(labels, 2)
    result = labels.copy()
    result[box] = new
    assert result[2:4, 2:4, 22:24].max() == 0 and result[18, 18, 48] == 0
    assert np.array_equal(result == 1, _ball(shape, (10, 10, 10), 7))
    assert np.array_equal(result == 2, _ball(shape, (10, 10, 35), 6))
    assert keep_largest_components(result, 2) is None
    assert keep_largest_components(np.zeros(shape, np.uint8)) is None
