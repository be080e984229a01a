"""Lung segmentation: Dice against known lungs, airways excluded, left/right, spacing, orientation.

A small synthetic chest is built here from analytic shapes in millimetres (body with fat layer,
table, spine, heart, two lungs with vessels, an inner and a juxtapleural nodule, trachea and main
bronchi with walls, stomach gas, outside air), so it can be sampled at any spacing and orientation.
"""

from __future__ import annotations

import numpy as np
import pytest

from land_core.data.lungs import (
    LEFT_LUNG,
    RIGHT_LUNG,
    LungmaskUnavailableError,
    LungSegmentationError,
    dice,
    segment_lungs,
)
from land_core.volume import Volume


def _tube(p: np.ndarray, a, b, r: float) -> np.ndarray:
    """Points within ``r`` of the segment a-b (p is (..., 3) mm); only the segment's box is computed."""
    a = np.asarray(a, float)
    b = np.asarray(b, float)
    out = np.zeros(p.shape[:-1], dtype=bool)
    lo, hi = np.minimum(a, b) - r, np.maximum(a, b) + r
    near = np.all((p >= lo) & (p <= hi), axis=-1)
    q = p[near]
    ab = b - a
    t = np.clip(((q - a) @ ab) / (ab @ ab), 0.0, 1.0)
    out[near] = np.linalg.norm(q - (a + t[:, None] * ab), axis=-1) <= r
    return out


def _ellipsoid(p, c, axes) -> np.ndarray:
    return (((p - np.asarray(c, float)) / np.asarray(axes, float)) ** 2).sum(-1) <= 1.0


def synthetic_chest(
    shape=(128, 128, 128), spacing=(2.4, 2.4, 2.4), direction=None, seed=0
) -> tuple[Volume, np.ndarray, dict]:
    """A chest CT (HU) and its true lungs (1 right, 2 left) on the same grid; centre of the FOV at 0."""
    rng = np.random.default_rng(seed)
    direction = np.eye(3) if direction is None else np.asarray(direction, float)
    nz, ny, nx = shape
    size_xyz = np.array([nx, ny, nz], float)
    # put the origin so that the volume's centre is at world (0, 0, 0) whatever the direction
    origin = -(direction @ np.diag(spacing)) @ ((size_xyz - 1) / 2)
    grid = Volume(np.zeros(shape, np.int16), spacing, origin, direction)
    p = grid.world_grid()  # (nz, ny, nx, 3), x y z in LPS mm
    x, y = p[..., 0], p[..., 1]

    ct = np.full(shape, -1000.0)
    body = (x / 140) ** 2 + (y / 100) ** 2 <= 1
    inner = (x / 128) ** 2 + (y / 88) ** 2 <= 1
    ct[body] = -100.0  # fat under the skin
    ct[inner] = 35.0
    ct[(np.abs(x) < 160) & (y > 108) & (y < 118)] = 300.0  # the table, below the patient
    ct[(x**2 + (y - 70) ** 2 <= 18**2)] = 400.0  # spine

    right = _ellipsoid(p, (-66, 0, 20), (50, 62, 100))
    left = _ellipsoid(p, (66, 0, 20), (48, 62, 100))
    heart = _ellipsoid(p, (12, -25, -35), (50, 42, 45))
    trachea_wall = _tube(p, (0, -10, 400), (0, -10, 70), 11)
    trachea = _tube(p, (0, -10, 400), (0, -10, 70), 8.5)
    bronchi_wall = _tube(p, (0, -10, 70), (-24, -10, 45), 8.5) | _tube(p, (0, -10, 70), (24, -10, 45), 8.5)
    bronchi = _tube(p, (0, -10, 70), (-24, -10, 45), 6) | _tube(p, (0, -10, 70), (24, -10, 45), 6)
    airways = trachea | bronchi
    walls = (trachea_wall | bronchi_wall) & ~airways

    truth = np.zeros(shape, np.uint8)
    truth[right & ~heart & ~walls & ~airways] = RIGHT_LUNG
    truth[left & ~heart & ~walls & ~airways] = LEFT_LUNG
    lungs = truth > 0
    ct[lungs] = -850.0
    # vessels (random tubes inside the lungs) and nodules: all inside the true lungs
    for _ in range(14):
        side = rng.choice([-1, 1])
        a = np.array([side * 30, rng.uniform(-30, 30), rng.uniform(-20, 60)])
        b = np.array([side * rng.uniform(60, 100), rng.uniform(-50, 50), rng.uniform(-60, 100)])
        ct[_tube(p, a, b, rng.uniform(2.0, 4.0)) & lungs] = 40.0
    ct[_ellipsoid(p, (-70, 10, 40), (8, 8, 8)) & lungs] = 45.0  # solid nodule in the right lung
    # juxtapleural nodule: a ball of 16 mm diameter centred on the lateral pleura of the left lung
    # (x = 114 at y = 0, z = 20): half of it bulges into the lung, half into the chest wall
    jp = _ellipsoid(p, (114, 0, 20), (8, 8, 8))
    ct[jp & lungs] = 45.0
    ct[airways] = -1000.0
    ct[walls & body] = 35.0
    ct[_ellipsoid(p, (45, -10, -125), (25, 20, 18))] = -1000.0  # stomach gas below the diaphragm
    ct += rng.normal(0.0, 15.0, size=shape)
    from scipy import ndimage

    ct = ndimage.gaussian_filter(ct, sigma=0.5)
    table = (np.abs(x) < 160) & (y > 108) & (y < 118)
    info = {"juxtapleural": jp & lungs, "airways": airways, "outside": ~body | table}
    return grid.with_array(ct.astype(np.float32)), truth, info


def _lung_dice(mask: np.ndarray, truth: np.ndarray) -> tuple[float, float, float]:
    return (
        dice(mask > 0, truth > 0),
        dice(mask == RIGHT_LUNG, truth == RIGHT_LUNG),
        dice(mask == LEFT_LUNG, truth == LEFT_LUNG),
    )


@pytest.fixture(scope="module")
def chest():
    return synthetic_chest()


@pytest.fixture(scope="module")
def chest_mask(chest):
    ct, _, _ = chest
    return segment_lungs(ct)


def test_dice_against_true_lungs(chest, chest_mask):
    ct, truth, _ = chest
    assert chest_mask.same_grid(ct) and chest_mask.array.dtype == np.uint8
    assert set(np.unique(chest_mask.array).tolist()) == {0, 1, 2}
    both, right, left = _lung_dice(chest_mask.array, truth)
    assert both >= 0.95 and right >= 0.95 and left >= 0.95, (both, right, left)


def test_nodules_inside_airways_and_outside_air_outside(chest, chest_mask):
    ct, truth, info = chest
    m = chest_mask.array
    # juxtapleural nodule: (nearly) all of it is in the left lung
    jp = info["juxtapleural"]
    assert (m[jp] == LEFT_LUNG).mean() >= 0.9
    # trachea and main bronchi are not lung
    assert (m[info["airways"]] > 0).mean() <= 0.05
    # outside air, the table and stomach gas are not lung
    assert not m[info["outside"]].any()
    gas = ct.world_grid()[..., 2] < -105  # the stomach gas lies below the lungs
    assert not m[gas].any()


def test_right_is_low_x_in_lps(chest_mask):
    m = chest_mask.array
    world = chest_mask.index_to_world
    xr = world([np.argwhere(m == RIGHT_LUNG)[:, 2].mean(), 0, 0])[0]
    xl = world([np.argwhere(m == LEFT_LUNG)[:, 2].mean(), 0, 0])[0]
    assert xr < 0 < xl


@pytest.mark.parametrize(
    "shape, spacing, direction",
    [
        ((44, 112, 112), (2.7, 2.7, 7.0), None),  # thick slices, anisotropic
        # flipped x and y and z-index running downwards: labels must follow anatomy, not the array
        ((80, 88, 88), (3.5, 3.5, 3.8), np.diag([-1.0, -1.0, -1.0])),
        # permuted axes (as a sagittal or coronal acquisition): array x runs along world z
        ((84, 80, 88), (3.6, 3.8, 3.6), np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])),
    ],
)
def test_any_spacing_and_orientation(shape, spacing, direction):
    ct, truth, _ = synthetic_chest(shape, spacing, direction, seed=1)
    mask = segment_lungs(ct)
    both, right, left = _lung_dice(mask.array, truth)
    assert both >= 0.95 and right >= 0.95 and left >= 0.95, (both, right, left)


def test_touching_lungs_are_split(chest):
    # join the lungs with a band of lung across the anterior mediastinum: one air component even
    # once the airways are gone
    ct, truth, info = chest
    p = ct.world_grid()
    band = (np.abs(p[..., 0]) < 45) & (np.abs(p[..., 1] + 45) < 5) & (np.abs(p[..., 2] - 40) < 25)
    arr = ct.array.copy()
    arr[band] = -850.0
    from scipy import ndimage

    no_airways = ~ndimage.binary_dilation(info["airways"], iterations=2)
    air, _ = ndimage.label((arr < -320) & no_airways)
    mode = [np.bincount(air[(truth == lung) & no_airways]).argmax() for lung in (RIGHT_LUNG, LEFT_LUNG)]
    assert mode[0] == mode[1] != 0  # one component indeed
    mask = segment_lungs(ct.with_array(arr)).array
    both, right, left = _lung_dice(mask, truth)
    assert right >= 0.9 and left >= 0.9, (both, right, left)
    assert (mask == RIGHT_LUNG).any() and (mask == LEFT_LUNG).any()


def test_cropped_lungs_touching_the_border_are_kept(chest):
    ct, truth, _ = chest
    # a crop through both lungs' lateral parts (as the real crops in shared/data/ct)
    nz, ny, nx = ct.shape
    crop = (slice(nz * 5 // 24, nz * 5 // 6), slice(ny * 5 // 24, ny * 19 // 24), slice(nx * 7 // 48, nx * 41 // 48))
    sub = Volume(ct.array[crop], ct.spacing, ct.index_to_world([crop[2].start, crop[1].start, crop[0].start]), ct.direction)
    mask = segment_lungs(sub).array
    both, right, left = _lung_dice(mask, truth[crop])
    assert both >= 0.93 and right >= 0.9 and left >= 0.9, (both, right, left)


def test_no_lungs_is_an_error():
    water = Volume(np.random.default_rng(0).normal(0, 10, (20, 30, 30)).astype(np.float32), (2, 2, 2))
    with pytest.raises(LungSegmentationError, match="no air"):
        segment_lungs(water)


def test_lungmask_weights_need_the_package(tmp_path, chest):
    ct, _, _ = chest
    weights = tmp_path / "unet_r231.pth"
    with pytest.raises(LungSegmentationError, match="not found"):
        segment_lungs(ct, weights=weights)
    weights.write_bytes(b"not really weights")
    try:
        import lungmask  # noqa: F401
    except ImportError:
        with pytest.raises(LungmaskUnavailableError, match="lungmask package is not installed") as info:
            segment_lungs(ct, weights=weights)
        assert str(weights) in str(info.value)
    else:  # pragma: no cover - lungmask is not a dependency
        with pytest.raises(LungSegmentationError):
            segment_lungs(ct, weights=weights)


def test_cli_segment_lungs(tmp_path, chest, capsys):
    from land_core.cli import main
    from land_core.io import read_volume, write_volume

    ct, truth, _ = chest
    src = write_volume(ct, tmp_path / "ct.nii.gz")
    rc = main(["segment-lungs", str(src), str(tmp_path / "lungs.nii.gz")])
    assert rc == 0
    mask = read_volume(tmp_path / "lungs.nii.gz")
    assert mask.same_grid(ct)
    assert dice(mask.array > 0, truth > 0) >= 0.95
    assert "right lung" in capsys.readouterr().out
    rc = main(["segment-lungs", str(src), str(tmp_path / "x.nii.gz"), "--weights", str(tmp_path / "none.pth")])
    assert rc == 2 and "none.pth" in capsys.readouterr().err
    water = write_volume(ct.with_array(np.zeros(ct.shape, np.float32)), tmp_path / "water.nii.gz")
    rc = main(["segment-lungs", str(water), str(tmp_path / "y.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "water.nii.gz" in err and "no air" in err and "Traceback" not in err
    assert not (tmp_path / "y.nii.gz").exists()


# ----------------------------------------------------------------------------- the project's phantoms
@pytest.mark.parametrize("seed, size, spacing", [(0, 128, 2.0), (3, 128, 2.0), (5, 96, 2.5)])
def test_phantom_lungs(seed, size, spacing):
    # the phantom's lungs (nodules included) are the truth; its trachea, bronchi and hilar vessels
    # lie outside them
    from land_core.data.phantom import PhantomConfig, make_phantom

    case = make_phantom(seed, PhantomConfig(size=size, spacing=spacing))
    mask = segment_lungs(case.ct)
    truth = case.lungs.array
    both, right, left = _lung_dice(mask.array, truth)
    assert both >= 0.95 and right >= 0.95 and left >= 0.95, (both, right, left)
    nodules = case.nodules.array > 0
    if nodules.any():
        assert (mask.array[nodules] > 0).mean() >= 0.98


def test_include_in_lungs_adds_regions_to_the_nearest_lung():
    from land_core.data.lungs import include_in_lungs

    labels = np.zeros((6, 10, 20), np.uint8)
    labels[:, 2:8, 2:8] = RIGHT_LUNG
    labels[:, 2:8, 12:18] = LEFT_LUNG
    lungs = Volume(labels, (1.0, 1.0, 2.0))
    nodule = np.zeros_like(labels, dtype=bool)
    nodule[2:4, 4:6, 6:10] = True  # half in the right lung, half in the gap (nearer the right lung)
    nodule[2:4, 4:6, 11:12] = True  # next to the left lung
    out = include_in_lungs(lungs, nodule).array
    assert (out[2:4, 4:6, 6:10] == RIGHT_LUNG).all() and (out[2:4, 4:6, 11] == LEFT_LUNG).all()
    assert ((out != labels) == (nodule & (labels == 0))).all()  # nothing else changes


def test_real_ct_crop_gives_plausible_lungs():
    # a real contrast chest CT crop (1.5 mm) whose lungs touch the crop border; checked by eye too
    from pathlib import Path

    from land_core.io import read_volume

    path = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "ct" / "pulmonary_report_ct_cropped.nii.gz"
    if not path.exists():
        pytest.skip(f"{path} not present")
    ct = read_volume(path)
    m = segment_lungs(ct).array
    ml = float(np.prod(ct.spacing)) / 1000.0
    right, left = (m == RIGHT_LUNG).sum() * ml, (m == LEFT_LUNG).sum() * ml
    assert 600 < right < 1200 and 700 < left < 1400, (right, left)  # 881 and 1032 mL when written
    xs = [np.argwhere(m == lung)[:, 2].mean() for lung in (RIGHT_LUNG, LEFT_LUNG)]
    assert xs[0] < xs[1]  # identity direction: the right lung has the lower x index
    # the trachea in the top slices (a dark round region near the middle) is not lung
    top = ct.array[107, 40:90, 30:60] < -900
    assert top.sum() > 80 and (m[107, 40:90, 30:60][top] > 0).mean() < 0.1
    # stomach gas in the lowest slices is not lung; lung voxels there stay
    low = ct.array[:6] < -950
    assert (m[:6][low] > 0).mean() < 0.05


def test_a_single_lung_in_view_is_not_split(chest):
    # crop to the patient's left half: one lung, labelled left, not cut in two
    ct, truth, _ = chest
    nx = ct.shape[2]
    crop = (slice(None), slice(None), slice(nx // 2 + 4, nx))
    sub = Volume(ct.array[crop], ct.spacing, ct.index_to_world([crop[2].start, 0, 0]), ct.direction)
    m = segment_lungs(sub).array
    assert not (m == RIGHT_LUNG).any()
    assert dice(m == LEFT_LUNG, truth[crop] == LEFT_LUNG) >= 0.95


def test_gas_touching_a_lung_base_is_cut_off(chest):
    # stomach gas 2 mm below the left lung base: the blurred diaphragm no longer separates them
    ct, truth, _ = chest
    p = ct.world_grid()
    gas = _ellipsoid(p, (62, 0, -101), (30, 30, 20))
    arr = ct.array.copy()
    arr[gas] = -1000.0
    from scipy import ndimage

    arr = ndimage.gaussian_filter(arr, 0.7)
    air, _ = ndimage.label(arr < -320)
    assert np.bincount(air[gas]).argmax() == np.bincount(air[truth == LEFT_LUNG]).argmax()  # connected
    mask = segment_lungs(ct.with_array(arr)).array
    assert (mask[gas] > 0).mean() < 0.02
    both, right, left = _lung_dice(mask, truth)
    assert left >= 0.95 and right >= 0.95, (both, right, left)
