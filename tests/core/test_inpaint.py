"""Inpainting new nodules into a CT: only the region near them changes, exactly.

Tiny random networks (see test_generate.py); the CT is random HU on an anisotropic, rotated grid, so
any voxel the paste touched would show.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_generate import ROTATION, tiny_checkpoint  # noqa: E402

from land_core.checkpoint import save_checkpoint  # noqa: E402
from land_core.cli import main  # noqa: E402
from land_core.errors import MaskError  # noqa: E402
from land_core.generate import GenerationSettings  # noqa: E402
from land_core.inpaint import inpaint, inpaint_crop_grid, inpaint_volume  # noqa: E402
from land_core.io import read_volume, write_volume  # noqa: E402
from land_core.masks import NoduleSpec  # noqa: E402
from land_core.masks.nodules import save_nodules  # noqa: E402
from land_core.volume import Volume  # noqa: E402

MARGIN = 6.0


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and two threads on a busy 2-core CPU wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt():
    return tiny_checkpoint()


@pytest.fixture(scope="module")
def ct() -> Volume:
    rng = np.random.default_rng(3)
    arr = rng.integers(-1000, 600, size=(24, 50, 46)).astype(np.int16)
    return Volume(arr, (1.5, 1.2, 2.5), (4.0, -30.0, 12.0), ROTATION)


@pytest.fixture(scope="module")
def lungs(ct) -> Volume:
    arr = np.zeros(ct.shape, np.uint8)
    arr[3:21, 6:44, 5:41] = 1
    return ct.with_array(arr)


@pytest.fixture(scope="module")
def nodule(ct) -> NoduleSpec:
    return NoduleSpec(tuple(ct.index_to_world((22.3, 25.6, 11.4))), 8.0, 3)


def sphere_distance(volume: Volume, spec: NoduleSpec) -> np.ndarray:
    """Distance (mm) of every voxel centre from the nodule's bounding sphere: an upper bound on nearness."""
    return np.linalg.norm(volume.world_grid() - np.asarray(spec.center_mm), axis=-1) - spec.reach_mm


def settings(**kw) -> GenerationSettings:
    return GenerationSettings(**{"steps": 4, "device": "cpu", **kw})


def test_voxels_beyond_the_margin_are_bit_identical(ckpt, ct, lungs, nodule):
    events = list(inpaint(ckpt, ct, [nodule], lungs=lungs, settings=settings(preview_every=2), margin_mm=MARGIN))
    assert [e.stage for e in events] == ["prepare"] + ["sample"] * 4 + ["decode", "done"]
    assert [e.step for e in events if e.preview is not None] == [2]
    out = events[-1].result
    assert out.same_grid(ct) and out.array.dtype == np.int16
    d = sphere_distance(ct, nodule)
    far = d > MARGIN
    assert far.sum() > 0.9 * far.size
    assert np.array_equal(out.array[far], ct.array[far])  # exactly, not approximately
    inside = d <= -1.0  # well inside the nodule's sphere
    changed = out.array != ct.array
    assert changed[inside].mean() > 0.9
    assert changed[(d > 0) & (d < MARGIN / 2)].mean() > 0.5  # the band next to the nodule changes too
    # the reported region holds every change
    box = events[-1].region
    outside = np.ones(ct.shape, bool)
    outside[box] = False
    assert not changed[outside].any() and changed[box].any()


def test_same_seed_same_result_other_seed_differs(ckpt, ct, lungs, nodule):
    a = inpaint_volume(ckpt, ct, [nodule], lungs=lungs, settings=settings(), margin_mm=MARGIN)
    b = inpaint_volume(ckpt, ct, [nodule], lungs=lungs, settings=settings(), margin_mm=MARGIN)
    c = inpaint_volume(ckpt, ct, [nodule], lungs=lungs, settings=settings(seed=5), margin_mm=MARGIN)
    assert np.array_equal(a.array, b.array)
    near = sphere_distance(ct, nodule) <= 0
    assert not np.array_equal(a.array[near], c.array[near])
    far = sphere_distance(ct, nodule) > MARGIN
    assert np.array_equal(a.array[far], c.array[far])


def test_crop_is_a_multiple_of_the_latent_grid_in_the_cts_orientation(ct, nodule):
    crop = inpaint_crop_grid(ct, [nodule], spacing=2.0, multiple=16, pad_mm=MARGIN + 16)
    assert all(s % 16 == 0 for s in crop.shape) and crop.spacing == (2.0, 2.0, 2.0)
    assert np.allclose(crop.direction, ct.direction)
    centre = crop.index_to_world((np.asarray(crop.size_xyz) - 1) / 2.0)
    assert np.allclose(centre, nodule.center_mm, atol=1e-6)
    with pytest.raises(MaskError, match="smaller groups"):
        inpaint_crop_grid(ct, [nodule], spacing=2.0, multiple=16, pad_mm=60, max_size=32)


def test_lungs_are_segmented_when_not_given(ckpt, caplog):
    from land_core.data.phantom import PhantomConfig, make_phantom

    case = make_phantom(3, PhantomConfig(size=64, spacing=5.0, nodule_count=(0, 0)))
    lung_voxels = np.argwhere(case.lungs.array == 1)
    spot = lung_voxels[len(lung_voxels) // 2][::-1].astype(float)  # (x, y, z) index inside the right lung
    spec = NoduleSpec(tuple(case.ct.index_to_world(spot)), 12.0, 5)
    caplog.set_level(logging.INFO)
    out = inpaint_volume(ckpt, case.ct, [spec], settings=settings(steps=2), margin_mm=MARGIN)
    assert any("segmenting the lungs" in r.message for r in caplog.records)
    far = sphere_distance(case.ct, spec) > MARGIN
    assert np.array_equal(out.array[far], case.ct.array[far]) and not np.array_equal(out.array, case.ct.array)


def test_inputs_are_checked(ckpt, ct, lungs, nodule):
    with pytest.raises(MaskError, match="no new nodules"):
        inpaint_volume(ckpt, ct, [], lungs=lungs, settings=settings())
    outside = NoduleSpec((500.0, 500.0, 500.0), 8.0, 3)
    with pytest.raises(MaskError, match="#1 .* outside the CT"):
        inpaint_volume(ckpt, ct, [outside], lungs=lungs, settings=settings())
    with pytest.raises(MaskError, match="unconditional"):
        inpaint_volume(tiny_checkpoint("unconditional"), ct, [nodule], settings=settings())
    with pytest.raises(MaskError, match="margin"):
        inpaint_volume(ckpt, ct, [nodule], lungs=lungs, settings=settings(), margin_mm=0)
    far_apart = [NoduleSpec(tuple(ct.index_to_world((3, 3, 3))), 8.0, 3),
                 NoduleSpec(tuple(ct.index_to_world((42, 46, 20))), 8.0, 3)]
    with pytest.raises(MaskError, match="smaller groups"):
        inpaint_volume(ckpt, ct, far_apart, lungs=lungs, settings=settings())


def test_cli_inpaint_round_trip(tmp_path, ckpt, ct, lungs, nodule):
    model = save_checkpoint(tmp_path / "model", ckpt.config, ckpt.vae, ckpt.unet)
    write_volume(ct, tmp_path / "ct.nii.gz")
    write_volume(lungs, tmp_path / "lungs.nii.gz")
    save_nodules(tmp_path / "new.json", [nodule])
    out = tmp_path / "out" / "inpainted.nrrd"
    argv = ["generate", "inpaint", "--checkpoint", str(model), "--ct", str(tmp_path / "ct.nii.gz"), "--nodules",
            str(tmp_path / "new.json"), "--lungs", str(tmp_path / "lungs.nii.gz"), "--out", str(out),
            "--margin-mm", str(MARGIN), "--steps", "3", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    result = read_volume(out)
    assert result.array.dtype == np.int16 and result.same_grid(ct, tol=1e-4)
    far = sphere_distance(ct, nodule) > MARGIN
    assert np.array_equal(result.array[far], ct.array[far])
    assert not np.array_equal(result.array, ct.array)
    assert main(["generate", "inpaint", "--checkpoint", str(model), "--out", str(out)]) == 2
