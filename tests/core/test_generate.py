"""The generation pipeline: geometry, seeds, progress events, cancellation, previews, modes, CLI.

Tiny random networks on the CPU: a 3-level U-Net on an 8^3 latent, a tiny VAE decoding it to 32^3
(the model's window: 32 voxels at 2 mm). The values are not a CT (the weights are random); the
tests check where they go, when they are equal and when they differ.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from land_core.checkpoint import CheckpointMetadata, LandCheckpoint, LatentDiffusionConfig, load_checkpoint, save_checkpoint
from land_core.cli import main
from land_core.diffusion import SAMPLERS
from land_core.errors import CheckpointError, ConfigError, LandError, MaskError
from land_core.generate import (
    DEFAULT_STEPS,
    GenerationCancelled,
    GenerationSettings,
    decode_plan,
    generate,
    generate_volume,
    seeds_for_rank,
    torchrun_rank,
    variation_path,
)
from land_core.generate_cli import SAMPLER_CHOICES
from land_core.io import read_volume, write_volume
from land_core.masks import NoduleSpec, encode_condition, rasterize_nodules
from land_core.masks.nodules import save_nodules
from land_core.models import build_unet, build_vae, unet_preset, vae_preset
from land_core.volume import Volume

SIZE, SPACING = 32, 2.0  # the model's window: 64 mm


def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fresh MONAI diffusion nets output exactly zero (zero-initialised last layers): give them weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def tiny_config(mode: str = "nodule_lung_texture") -> LatentDiffusionConfig:
    unet = unet_preset("tiny", channel_multipliers=(1, 2, 2), attention_levels=(False, True, False), condition_mode=mode)
    return LatentDiffusionConfig(vae=vae_preset("tiny"), unet=unet, image_size=SIZE, image_spacing=SPACING)


def random_vae(cfg: LatentDiffusionConfig):
    """Random weights, output centred on 0.5 (0 HU) so that values are not clipped at -1000 HU."""
    vae = randomized(build_vae(cfg.vae), 1)
    with torch.no_grad():
        vae.decoder.blocks[-1].conv.conv.bias.fill_(0.5)
    return vae


def tiny_checkpoint(mode: str = "nodule_lung_texture") -> LandCheckpoint:
    cfg = tiny_config(mode)
    return LandCheckpoint(Path("memory"), cfg, CheckpointMetadata(), random_vae(cfg), randomized(build_unet(cfg.unet), 2),
                          None)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny networks gain nothing from threads, and two threads on a busy 2-core CPU wait on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def ckpt() -> LandCheckpoint:
    return tiny_checkpoint()


ROTATION = np.array([[np.cos(0.4), -np.sin(0.4), 0], [np.sin(0.4), np.cos(0.4), 0], [0, 0, 1]]) @ np.array(
    [[1, 0, 0], [0, 0, 1], [0, -1, 0]])


@pytest.fixture(scope="module")
def lungs() -> Volume:
    """Two lung boxes on an anisotropic (1.5, 1.2, 2.5 mm), rotated grid."""
    arr = np.zeros((20, 44, 40), np.uint8)
    arr[3:17, 8:36, 5:18] = 1
    arr[3:17, 8:36, 22:35] = 2
    return Volume(arr, (1.5, 1.2, 2.5), (10.0, -20.0, 5.0), ROTATION)


@pytest.fixture(scope="module")
def nodules(lungs) -> list[NoduleSpec]:
    return [NoduleSpec(tuple(lungs.index_to_world((11, 20, 10))), 7.0, 2),
            NoduleSpec(tuple(lungs.index_to_world((28, 25, 8))), 9.0, 5)]


def settings(**kw) -> GenerationSettings:
    return GenerationSettings(**{"steps": 4, "device": "cpu", **kw})


def test_result_lies_on_the_conditions_anisotropic_rotated_grid(ckpt, lungs, nodules, caplog):
    caplog.set_level(logging.INFO, logger="land_core.generate")
    out = generate_volume(ckpt, lungs=lungs, nodules=nodules, settings=settings())
    assert out.same_grid(lungs, tol=1e-9) and out.array.dtype == np.float32
    assert np.allclose(out.direction, ROTATION)
    a = out.array
    assert np.isfinite(a).all() and a.min() >= -1024.0 and a.max() <= 1000.0
    assert a[lungs.array > 0].std() > 1.0  # generated values, not a constant fill
    assert any("fit the model's 64 mm field of view at 2 mm" in r.message for r in caplog.records)
    # the same generation from the encoded condition volume gives the same CT
    cond = encode_condition(lungs, rasterize_nodules(nodules, lungs))
    same = generate_volume(ckpt, condition=cond, settings=settings())
    assert same.same_grid(lungs) and np.abs(same.array - a).mean() < 20.0


def test_same_seed_is_bit_identical_and_seeds_differ(ckpt, lungs, nodules):
    for sampler in SAMPLERS:
        s = settings(sampler=sampler, steps=3)
        a = generate_volume(ckpt, lungs=lungs, nodules=nodules, settings=s)
        b = generate_volume(ckpt, lungs=lungs, nodules=nodules, settings=s)
        c = generate_volume(ckpt, lungs=lungs, nodules=nodules, settings=GenerationSettings(
            sampler=sampler, steps=3, seed=1, device="cpu"))
        assert np.array_equal(a.array, b.array), sampler
        assert np.abs(a.array - c.array).mean() > 0.1, sampler


def test_progress_events_and_previews(ckpt, lungs, nodules):
    events = list(generate(ckpt, lungs=lungs, nodules=nodules, settings=settings(steps=6, preview_every=2)))
    stages = [e.stage for e in events]
    assert stages == ["prepare"] + ["sample"] * 6 + ["decode", "done"]
    assert [e.step for e in events] == [0, 1, 2, 3, 4, 5, 6, 6, 6]
    assert {e.total for e in events} == {6}
    times = [e.elapsed_s for e in events]
    assert times == sorted(times) and times[0] >= 0
    assert "field of view" in events[0].message
    assert [e.result is not None for e in events] == [False] * 8 + [True]
    previews = {e.step: e.preview for e in events if e.preview is not None}
    assert sorted(previews) == [2, 4]  # every 2nd step, not the last (the result follows)
    window_origin = None
    for pv in previews.values():  # pooled 2x: 16^3 voxels at 4 mm over the same 64 mm window
        assert pv.shape == (16, 16, 16) and pv.spacing == (4.0, 4.0, 4.0)
        assert np.isfinite(pv.array).all() and -1000.0 <= pv.array.min() <= pv.array.max() <= 1000.0
        window_origin = pv.origin if window_origin is None else window_origin
        assert np.allclose(pv.origin, window_origin)
    assert not np.array_equal(previews[2].array, previews[4].array)
    # previews use no randomness: the result is the one without previews
    plain = generate_volume(ckpt, lungs=lungs, nodules=nodules, settings=settings(steps=6))
    assert np.array_equal(plain.array, events[-1].result.array)


def test_cancel_callable_raises_after_k_steps(ckpt, lungs, nodules):
    seen: list[int] = []
    with pytest.raises(GenerationCancelled) as info:
        for ev in generate(ckpt, lungs=lungs, nodules=nodules, settings=settings(steps=10),
                           cancel=lambda: len(seen) >= 3):
            if ev.stage == "sample":
                seen.append(ev.step)
    assert seen == [1, 2, 3] and info.value.step == 3 and info.value.total == 10 and info.value.stage == "sample"
    assert "cancelled after 3 of 10" in str(info.value)


def test_stopping_iteration_evaluates_nothing_more(ckpt, lungs, nodules):
    calls = []
    handle = ckpt.denoiser.conv_in.register_forward_hook(lambda *a: calls.append(1))
    try:
        events = generate(ckpt, lungs=lungs, nodules=nodules, settings=settings(steps=10))
        for ev in events:
            if ev.stage == "sample" and ev.step == 2:
                break
        events.close()
        assert len(calls) == 2
    finally:
        handle.remove()


def test_mode_mismatches_are_explained(ckpt, lungs, nodules, caplog):
    with pytest.raises(MaskError, match="condition mode is 'nodule_lung_texture'.*needs a lung mask"):
        generate_volume(ckpt, nodules=nodules, output_grid=lungs, settings=settings())
    with pytest.raises(MaskError, match="needs a lung mask"):
        generate_volume(ckpt, settings=settings())
    cond = encode_condition(lungs, rasterize_nodules(nodules, lungs))
    with pytest.raises(MaskError, match="not both"):
        generate_volume(ckpt, condition=cond, lungs=lungs, settings=settings())
    nodule_only = encode_condition(None, rasterize_nodules(nodules, lungs), "nodule_lung_texture")
    with pytest.raises(MaskError, match="holds no lungs"):
        generate_volume(ckpt, condition=nodule_only, settings=settings())
    with pytest.raises(MaskError, match="unconditional.*leave"):
        generate_volume(tiny_checkpoint("unconditional"), lungs=lungs, settings=settings())
    with pytest.raises(MaskError, match="'nodule': it needs at least one nodule"):
        generate_volume(tiny_checkpoint("nodule"), lungs=lungs, settings=settings())
    with pytest.raises(ConfigError, match="unknown sampler"):
        GenerationSettings(sampler="euler")
    vae_only = LandCheckpoint(Path("vae-only"), LatentDiffusionConfig(vae=vae_preset("tiny"), unet=None),
                              CheckpointMetadata(), ckpt.vae, None, None)
    with pytest.raises(CheckpointError, match="VAE-only"):
        generate_volume(vae_only, lungs=lungs, settings=settings())

    caplog.set_level(logging.INFO, logger="land_core.generate")
    out = generate_volume(tiny_checkpoint("nodule_lung"), lungs=lungs, nodules=nodules, settings=settings(steps=2))
    assert out.same_grid(lungs)
    assert any("textures ignored" in r.message for r in caplog.records)
    caplog.clear()
    generate_volume(tiny_checkpoint("nodule"), lungs=lungs, nodules=nodules, settings=settings(steps=2))
    assert any("only places its window" in r.message for r in caplog.records)


def test_unconditional_model_generates_on_its_window_or_a_given_grid(lungs):
    model = tiny_checkpoint("unconditional")
    out = generate_volume(model, settings=settings(steps=3))
    assert out.shape == (SIZE,) * 3 and out.spacing == (SPACING,) * 3
    assert np.allclose(out.index_to_world((np.full(3, SIZE - 1)) / 2.0), 0.0)  # centred on the world origin
    placed = generate_volume(model, output_grid=lungs, settings=settings(steps=3))
    assert placed.same_grid(lungs)


def test_oversized_condition_is_fitted_not_cut(ckpt, caplog):
    arr = np.zeros((40, 40, 40), np.uint8)
    arr[2:38, 4:36, 3:37] = 1  # 108 x 96 x 102 mm of lung, the window is 64 mm
    big = Volume(arr, (3.0, 3.0, 3.0), (-60.0, -60.0, -60.0))
    caplog.set_level(logging.INFO, logger="land_core.generate")
    events = list(generate(ckpt, lungs=big, settings=settings(steps=2)))
    assert "more than the model's 64 mm field of view" in events[0].message
    assert any(r.levelno == logging.WARNING and "so that nothing is cut off" in r.message for r in caplog.records)
    out = events[-1].result
    assert out.same_grid(big)
    # every lung voxel received generated values (around 0 HU for these networks); with the 64 mm
    # window cut out of the middle, most of them would be air fill (-1024)
    assert (out.array[arr > 0] > -900.0).all()


def test_settings_defaults_and_decode_plan(ckpt, monkeypatch):
    assert GenerationSettings().num_steps(1000) == DEFAULT_STEPS == 25
    assert GenerationSettings(sampler="ddpm").num_steps(1000) == 1000
    assert GenerationSettings(sampler="ddim", steps=50).num_steps(1000) == 50
    with pytest.raises(ConfigError, match="cannot exceed"):
        GenerationSettings(steps=2000).num_steps(1000)
    with pytest.raises(ConfigError, match="preview_every"):
        GenerationSettings(preview_every=-1)
    assert sorted(SAMPLER_CHOICES) == sorted(SAMPLERS)
    vae = build_vae(vae_preset("demo"))
    s = GenerationSettings(device="cpu")
    import land_core.generate as gen

    monkeypatch.setattr(gen, "_available_memory", lambda device: 64 * 2**30)
    assert decode_plan(vae, (32, 32, 32), s, torch.device("cpu")) is None  # 128^3: whole
    monkeypatch.setattr(gen, "_available_memory", lambda device: 2 * 2**30)
    tile = decode_plan(vae, (64, 64, 64), s, torch.device("cpu"))  # 256^3 does not fit in 1 GiB: tiles
    assert tile is not None and 3 * vae.decoder_halo() <= tile < 64
    assert decode_plan(vae, (64, 64, 64), GenerationSettings(decode_tile_size=None), torch.device("cpu")) is None
    assert decode_plan(vae, (64, 64, 64), GenerationSettings(decode_tile_size=24), torch.device("cpu")) == 24
    with pytest.raises(ConfigError, match="at least 21 latent voxels"):
        decode_plan(vae, (64, 64, 64), GenerationSettings(decode_tile_size=8), torch.device("cpu"))


def test_checkpoint_config_holds_the_model_grid():
    cfg = tiny_config()
    data = cfg.to_dict()
    assert data["image_size"] == SIZE and data["image_spacing"] == SPACING and cfg.latent_size == 8
    assert LatentDiffusionConfig.from_dict(data) == cfg
    old = {k: v for k, v in data.items() if k not in ("image_size", "image_spacing")}
    assert LatentDiffusionConfig.from_dict(old).image_size == 256  # configs from before load with the paper's grid
    with pytest.raises(ValueError, match="multiple of 4"):
        LatentDiffusionConfig(vae=vae_preset("tiny"), unet=tiny_config().unet, image_size=40)


# ---------------------------------------------------------------------------------- several runs


def test_seed_split_over_ranks(monkeypatch):
    assert seeds_for_rank(10, 5) == [(0, 10), (1, 11), (2, 12), (3, 13), (4, 14)]
    shares = [seeds_for_rank(10, 5, r, 3) for r in range(3)]
    assert shares == [[(0, 10), (3, 13)], [(1, 11), (4, 14)], [(2, 12)]]
    assert sorted(sum(shares, [])) == seeds_for_rank(10, 5)
    assert seeds_for_rank(0, 2, 3, 4) == []
    with pytest.raises(ConfigError):
        seeds_for_rank(0, 2, 4, 4)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    assert torchrun_rank() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "6")
    with pytest.raises(LandError, match="RANK=6"):
        torchrun_rank()
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert torchrun_rank() == (3, 4, 1)


def test_variation_names():
    assert variation_path("out/ct.nii.gz", 3, 1) == Path("out/ct.nii.gz")
    assert variation_path("out/ct.nii.gz", 3, 5) == Path("out/ct_003.nii.gz")
    assert variation_path("out/ct.NRRD", 0, 2) == Path("out/ct_000.NRRD")
    assert variation_path("out/series", 12, 20) == Path("out/series_012")


# ---------------------------------------------------------------------------------- command line


@pytest.fixture(scope="module")
def files(tmp_path_factory, ckpt, lungs, nodules):
    root = tmp_path_factory.mktemp("cli")
    path = save_checkpoint(root / "model", ckpt.config, ckpt.vae, ckpt.unet)
    write_volume(lungs, root / "lungs.nii.gz")
    save_nodules(root / "nodules.json", nodules)
    return {"root": root, "ckpt": path, "lungs": root / "lungs.nii.gz", "nodules": root / "nodules.json"}


def test_cli_round_trip_with_variations(files, lungs, capsys):
    out = files["root"] / "gen" / "ct.nii.gz"
    argv = ["generate", "--checkpoint", str(files["ckpt"]), "--lungs", str(files["lungs"]), "--nodules",
            str(files["nodules"]), "--out", str(out), "--steps", "3", "--seed", "7", "--n", "2", "--device", "cpu",
            "--quiet"]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    written = sorted(p.name for p in out.parent.iterdir())
    assert written == ["ct_000.nii.gz", "ct_001.nii.gz"]  # no temporary files left
    first = read_volume(out.parent / "ct_000.nii.gz")
    second = read_volume(out.parent / "ct_001.nii.gz")
    assert first.array.dtype == np.int16 and first.same_grid(lungs, tol=1e-4)
    # the file is the API's result for the same seed, rounded to int16 HU
    expected = generate_volume(load_checkpoint(files["ckpt"]), lungs=read_volume(files["lungs"]),
                               nodules=json_nodules(files["nodules"]),
                               settings=GenerationSettings(steps=3, seed=7, device="cpu"))
    assert np.array_equal(first.array, np.rint(expected.array).astype(np.int16))
    assert not np.array_equal(first.array, second.array)


def json_nodules(path: Path) -> list[NoduleSpec]:
    return [NoduleSpec.from_dict(d) for d in json.loads(path.read_text())["nodules"]]


def test_cli_rank_writes_its_share_and_dicom_output(files, lungs, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    out = files["root"] / "ranked" / "series"
    argv = ["generate", "--checkpoint", str(files["ckpt"]), "--lungs", str(files["lungs"]), "--nodules",
            str(files["nodules"]), "--out", str(out), "--steps", "2", "--n", "3", "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["series_001"]  # rank 1 of 2: index 1 only
    series = read_volume(out.parent / "series_001")
    assert series.shape == lungs.shape and series.array.dtype == np.int16
    import SimpleITK as sitk

    first = sorted((out.parent / "series_001").iterdir())[0]
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(first))
    reader.ReadImageInformation()
    assert "SYNTHETIC" in reader.GetMetaData("0008|103e").upper()


def test_cli_errors_are_one_line(files, capsys, monkeypatch, tmp_path):
    import land_core.generate as generate_module

    missing = tmp_path / "resources" / "models" / "demo"  # an installation without the bundled model
    monkeypatch.setattr(generate_module, "DEMO_MODEL_DIR", missing)
    out = files["root"] / "none.nii.gz"
    assert main(["generate", "--lungs", str(files["lungs"]), "--out", str(out), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint named and no bundled demo model found" in err and "resources/models/demo" in err
    assert "--checkpoint" in err and "land train" in err
    assert main(["generate", "--checkpoint", str(files["ckpt"]), "--nodules", str(files["nodules"]), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 2
    assert "needs a lung mask" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(files["ckpt"]), "--lungs", str(files["lungs"])]) == 2
    assert "--out is required" in capsys.readouterr().err
    assert not out.exists()


def test_device_choice(monkeypatch):
    from land_core.generate import available_cpus, resolve_device

    cpu = resolve_device("cpu")
    assert cpu.device == torch.device("cpu") and cpu.autocast_dtype is None
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            resolve_device("cuda")
        threads = []
        monkeypatch.setattr(torch, "set_num_threads", threads.append)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        auto = resolve_device("auto")
        assert auto.device == torch.device("cpu") and threads == [available_cpus()]
