"""The procedural chest CT phantom: geometry, orientation, HU of each tissue, nodules, determinism,
errors, the dataset writer and the PNG montage.

Small grids (64^3 at 4 mm, a few 128^3 at 2 mm) keep the whole file to a few seconds.
"""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from land_core.data.montage import encode_png_gray, save_montage
from land_core.data.phantom import (
    PhantomConfig,
    PhantomConfigError,
    make_phantom,
    write_phantom_dataset,
)
from land_core.errors import LandError
from land_core.masks.condition import texture_to_subtype
from land_core.masks.nodules import nodule_radius_field, rasterize_nodules
from land_core.volume import Volume

SMALL = PhantomConfig(size=64, spacing=4.0)


@pytest.fixture(scope="module")
def small():
    return make_phantom(3, SMALL)


@pytest.fixture(scope="module")
def standard():
    return make_phantom(0, PhantomConfig(size=128, spacing=2.0, nodule_count=(4, 4)))


def _world(vol: Volume, axis_xyz: int) -> np.ndarray:
    """World coordinate (mm) of every index along one axis (identity direction)."""
    n = vol.size_xyz[axis_xyz]
    return vol.origin[axis_xyz] + vol.spacing[axis_xyz] * np.arange(n)


def _lung_values(case) -> np.ndarray:
    return case.ct.array[(case.lungs.array > 0) & (case.nodules.array == 0)]


# ----------------------------------------------------------------------------- grid and types
@pytest.mark.parametrize("size, spacing", [(64, 4.0), (128, 2.0)])
def test_grid_is_a_centred_cube_shared_by_all_images(size, spacing, small, standard):
    case = small if size == 64 else standard
    for vol in (case.ct, case.lungs, case.nodules):
        assert vol.shape == (size, size, size)
        assert vol.spacing == (spacing, spacing, spacing)
        np.testing.assert_allclose(vol.direction, np.eye(3))
        # the centre of the cube is world (0, 0, 0)
        np.testing.assert_allclose(vol.index_to_world([(size - 1) / 2] * 3), [0, 0, 0], atol=1e-9)
        assert case.ct.same_grid(vol)
    assert case.ct.array.dtype == np.int16
    assert case.lungs.array.dtype == np.uint8 and case.nodules.array.dtype == np.uint8
    assert set(np.unique(case.lungs.array)) == {0, 1, 2}
    assert set(np.unique(case.nodules.array)) <= {0, 1, 2, 3, 4, 5}


def test_orientation_is_lps_and_displays_like_radiology(standard):
    ct, lungs = standard.ct, standard.lungs
    x, y = _world(ct, 0), _world(ct, 1)
    # right lung (label 1) on the patient's right = -x = low x index
    _, _, xi_r = np.nonzero(lungs.array == 1)
    _, _, xi_l = np.nonzero(lungs.array == 2)
    assert x[xi_r].mean() < -30 and x[xi_l].mean() > 30
    # in the mid axial slice: the body's front (anterior, -y) is at low row index, its back lies
    # on the table at high row index, the spine (bone on the midline) at high y
    mid = ct.array[ct.shape[0] // 2]
    body_rows = np.nonzero((mid > -300).any(axis=1))[0]
    assert y[body_rows[0]] < -60 and y[body_rows[-1]] > 90
    centre_cols = np.abs(x) < 6
    bone_rows = np.nonzero((mid[:, centre_cols] > 300).any(axis=1))[0]
    assert y[bone_rows].max() > 20  # vertebrae behind
    assert y[bone_rows].min() < -40  # sternum in front


def test_spine_is_posterior_to_the_heart_and_bone_is_present(standard):
    ct = standard.ct
    hx, hy, hz = standard.info["anatomy"]["heart_center_mm"]
    x, y, z = _world(ct, 0), _world(ct, 1), _world(ct, 2)
    k = int(np.argmin(np.abs(z - hz)))
    slab = ct.array[k - 3: k + 4]
    bone = slab > 300
    assert bone.sum() > 100
    kk, jj, ii = np.nonzero(bone & (np.abs(x) < 12)[None, None, :] & (y > hy)[None, :, None])
    assert len(jj) > 20, "vertebral bodies should lie behind the heart"
    # the heart itself is soft tissue (about 40 HU), not air, fat or bone
    j, i = int(np.argmin(np.abs(y - hy))), int(np.argmin(np.abs(x - hx)))
    heart = ct.array[k - 2: k + 3, j - 2: j + 3, i - 2: i + 3]
    assert 0 < np.median(heart) < 90
    # cortical bone reaches several hundred HU
    assert np.percentile(ct.array[ct.array > 300], 99) > 450


# ----------------------------------------------------------------------------- intensities
@pytest.mark.parametrize("which", ["small", "standard"])
def test_lung_parenchyma_median_near_minus_850(which, small, standard):
    case = small if which == "small" else standard
    values = _lung_values(case)
    assert values.size > 10_000 if which == "standard" else values.size > 2_000
    assert abs(np.median(values) + 850) <= 40


def test_outside_air_is_minus_1000_with_correlated_noise(standard):
    ct = standard.ct
    y = _world(ct, 1)
    air = ct.array[:, y < -110, :].astype(float)  # in front of the body
    assert abs(air.mean() + 1000) < 5
    assert 12 < air.std() < 28
    a = air - air.mean()
    corr = (a[:, :, 1:] * a[:, :, :-1]).mean() / a.var()
    assert corr > 0.2, "noise should be spatially correlated (filtered), not white"


def test_fat_and_muscle_layers_have_their_hu(standard):
    # a lateral ray through the mid slice crosses skin, subcutaneous fat, then muscle
    ct = standard.ct
    k = ct.shape[0] // 2
    row = ct.array[k, ct.shape[1] // 2].astype(float)  # along x through the middle
    x = _world(ct, 0)
    inside = np.nonzero(row > -500)[0]
    edge = inside[0]  # patient's right skin
    wall = row[edge: edge + int(25 / ct.spacing[0])]
    assert wall.min() < -60, "a subcutaneous fat layer (about -100 HU) under the skin"
    assert wall.max() > 20, "muscle (about 40 HU) beneath the fat"
    assert x[edge] < -90


def test_vessels_make_a_small_but_nonzero_dense_fraction_of_the_lungs(standard):
    frac = float((_lung_values(standard) > -500).mean())
    assert 0.005 < frac < 0.15
    plain = make_phantom(0, PhantomConfig(size=128, spacing=2.0, nodule_count=(0, 0), vessels=False))
    assert float((_lung_values(plain) > -500).mean()) < frac / 3


# ----------------------------------------------------------------------------- nodules
def test_nodules_lie_in_the_lungs_and_match_their_specs(standard):
    specs = standard.nodule_specs
    assert len(specs) == 4
    nod = standard.nodules.array
    assert np.array_equal(nod, rasterize_nodules(specs, standard.ct).array)
    assert np.all(standard.lungs.array[nod > 0] > 0), "lung masks include the nodule voxels"
    for spec, entry in zip(specs, standard.info["nodules"]):
        assert 4.0 <= spec.diameter_mm <= 30.0
        assert entry["texture"] == spec.texture
        assert entry["subtype"] == texture_to_subtype(spec.texture)
        np.testing.assert_allclose(entry["center_mm"], spec.center_mm, atol=0.01)
        assert entry["diameter_mm"] == pytest.approx(spec.diameter_mm, abs=0.01)
        box, rho = nodule_radius_field(spec, standard.ct)
        inside = rho <= 1.0
        assert inside.any()
        # the whole nodule in one lung, with no lung-free voxel
        sides = np.unique(standard.lungs.array[box][inside])
        assert len(sides) == 1 and sides[0] in (1, 2)
        assert np.all(nod[box][inside] == spec.texture)  # nodules are placed apart, never overlapping


def _nodule_stats(case, spec):
    box, rho = nodule_radius_field(spec, case.ct)
    ct = case.ct.array[box].astype(float)
    return ct[rho <= 1.0], ct[rho < 0.3], ct[(rho > 0.75) & (rho <= 1.0)]


def test_solid_nodules_are_dense():
    case = make_phantom(11, PhantomConfig(size=128, spacing=2.0, nodule_count=(3, 3),
                                          nodule_diameter_mm=(8.0, 20.0), textures=(4, 5)))
    assert len(case.nodule_specs) == 3
    for spec in case.nodule_specs:
        allv, _, _ = _nodule_stats(case, spec)
        assert allv.mean() > -100, spec


def test_ground_glass_is_hazy_and_keeps_vessels_visible():
    case = make_phantom(12, PhantomConfig(size=128, spacing=2.0, nodule_count=(3, 3),
                                          nodule_diameter_mm=(12.0, 24.0), textures=(1, 2)))
    assert len(case.nodule_specs) == 3
    for spec in case.nodule_specs:
        allv, _, _ = _nodule_stats(case, spec)
        assert -750 < allv.mean() < -250, spec
        assert allv.max() > allv.mean() + 150 or allv.size < 30  # vessels stay brighter than the haze
    # the same anatomy without nodules: the haze raises the parenchyma by a few hundred HU
    plain = make_phantom(12, PhantomConfig(size=128, spacing=2.0, nodule_count=(0, 0)))
    for spec in case.nodule_specs:
        box, rho = nodule_radius_field(spec, case.ct)
        core = rho <= 0.8
        assert np.median(case.ct.array[box][core]) > np.median(plain.ct.array[box][core]) + 150


def test_part_solid_nodules_have_a_solid_core_and_a_hazy_halo():
    case = make_phantom(13, PhantomConfig(size=128, spacing=2.0, nodule_count=(2, 2),
                                          nodule_diameter_mm=(18.0, 28.0), textures=(3,)))
    assert len(case.nodule_specs) == 2
    for spec in case.nodule_specs:
        _, core, halo = _nodule_stats(case, spec)
        assert core.mean() > -150, spec
        assert halo.mean() < -300, spec
        assert core.mean() - halo.mean() > 250


def test_textures_cover_all_five_scores():
    seen = set()
    for seed in range(5):
        case = make_phantom(seed, PhantomConfig(size=64, spacing=4.0, nodule_count=(4, 4), vessels=False))
        seen |= {s.texture for s in case.nodule_specs}
        assert set(np.unique(case.nodules.array)) - {0} == {s.texture for s in case.nodule_specs}
    assert seen == {1, 2, 3, 4, 5}


# ----------------------------------------------------------------------------- determinism
def test_same_seed_same_case_different_seed_different_anatomy(small):
    again = make_phantom(3, SMALL)
    for a, b in ((small.ct, again.ct), (small.lungs, again.lungs), (small.nodules, again.nodules)):
        assert np.array_equal(a.array, b.array)
    assert json.dumps(small.info, sort_keys=True) == json.dumps(again.info, sort_keys=True)
    other = make_phantom(4, SMALL)
    assert other.info["anatomy"]["half_width"] != small.info["anatomy"]["half_width"]
    assert other.info["anatomy"]["heart_center_mm"] != small.info["anatomy"]["heart_center_mm"]
    assert not np.array_equal(other.lungs.array, small.lungs.array)
    assert (other.ct.array != small.ct.array).mean() > 0.3


def test_anatomy_is_defined_in_mm_not_voxels():
    coarse = make_phantom(5, PhantomConfig(size=32, spacing=8.0, nodule_count=(0, 0)))
    fine = make_phantom(5, PhantomConfig(size=64, spacing=4.0, nodule_count=(0, 0)))
    assert coarse.info["anatomy"] == fine.info["anatomy"]
    vol_coarse = (coarse.lungs.array > 0).sum() * 8.0**3
    vol_fine = (fine.lungs.array > 0).sum() * 4.0**3
    assert vol_coarse == pytest.approx(vol_fine, rel=0.1)
    # a small field of view crops the same chest
    crop = make_phantom(5, PhantomConfig(size=32, spacing=4.0, nodule_count=(0, 0)))
    assert crop.ct.shape == (32, 32, 32)
    assert np.array_equal(crop.lungs.array, fine.lungs.array[16:48, 16:48, 16:48])


def test_tiny_volumes_work():
    case = make_phantom(1, PhantomConfig(size=16, spacing=1.0))
    assert case.ct.shape == (16, 16, 16)
    assert np.array_equal(case.nodules.array, rasterize_nodules(case.nodule_specs, case.ct).array)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs", [
    {"size": 8}, {"size": 15}, {"size": 12.5}, {"spacing": 0.0}, {"spacing": -1.0}, {"spacing": float("nan")},
    {"nodule_count": (3, 1)}, {"nodule_count": (-1, 2)}, {"nodule_diameter_mm": (20.0, 10.0)},
    {"textures": (0, 6)}, {"textures": ()}, {"noise_hu": -1.0},
])
def test_bad_config_raises_a_land_error(kwargs):
    with pytest.raises(PhantomConfigError) as err:
        PhantomConfig(**kwargs)
    assert isinstance(err.value, LandError)
    assert "phantom config" in str(err.value)


def test_bad_seed_and_case_count_raise(tmp_path):
    with pytest.raises(LandError, match="seed"):
        make_phantom(-1, SMALL)
    with pytest.raises(LandError, match="at least 1"):
        write_phantom_dataset(tmp_path, n=0, seed=0, config=SMALL, progress=False)


# ----------------------------------------------------------------------------- dataset
def test_write_dataset_writes_cases_and_a_valid_manifest(tmp_path):
    from land_core.data.manifest import load_manifest, read_case

    config = PhantomConfig(size=32, spacing=8.0, nodule_count=(1, 2), nodule_diameter_mm=(12.0, 24.0))
    dirs = write_phantom_dataset(tmp_path / "ds", n=2, seed=7, config=config, progress=False)
    assert [d.name for d in dirs] == ["phantom_s0007", "phantom_s0008"]
    manifest = load_manifest(tmp_path / "ds", check_files=True)
    assert [c.id for c in manifest.cases] == ["phantom_s0007", "phantom_s0008"]
    info = manifest.cases[0].read_info()
    assert info["case_id"] == "phantom_s0007" and info["seed"] == 7
    assert info["generator"] == "land phantom"
    assert info["size"] == 32 and info["spacing"] == 8.0
    assert "anatomy" in info and info["anatomy"]["half_width"] > 0
    expected = make_phantom(7, config)
    assert len(info["nodules"]) == len(expected.nodule_specs)
    for entry in info["nodules"]:
        assert {"center_mm", "diameter_mm", "texture", "subtype"} <= set(entry)
        assert entry["subtype"] == texture_to_subtype(entry["texture"])
    images = read_case(manifest.cases[0])
    assert np.array_equal(images["ct"].array, expected.ct.array)
    assert np.array_equal(images["lungs"].array, expected.lungs.array)
    assert np.array_equal(images["nodules"].array, expected.nodules.array)


# ----------------------------------------------------------------------------- montage
def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_png_encoder_round_trips():
    img = (np.arange(12 * 7).reshape(7, 12) * 3 % 256).astype(np.uint8)
    data = encode_png_gray(img)
    assert _png_size(data) == (12, 7)
    # IDAT holds one filter byte (0) per row followed by the pixels
    idat_len = struct.unpack(">I", data[33:37])[0]
    raw = zlib.decompress(data[41: 41 + idat_len])
    rows = np.frombuffer(raw, np.uint8).reshape(7, 13)
    assert np.all(rows[:, 0] == 0) and np.array_equal(rows[:, 1:], img)


@pytest.mark.parametrize("use_matplotlib", [False, True])
def test_save_montage_writes_a_png(tmp_path, small, use_matplotlib):
    if use_matplotlib:
        pytest.importorskip("matplotlib")
    path = save_montage(small.ct, tmp_path / "m.png", use_matplotlib=use_matplotlib)
    width, height = _png_size(path.read_bytes())
    assert width > 3 * 64 and height > 2 * 64
