"""Checkpoint folders: round trip, atomic writes, and clear errors for every kind of broken file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import land_core
from land_core import checkpoint as ckpt
from land_core.checkpoint import (
    CheckpointError,
    CheckpointMetadata,
    IntensityMapping,
    LatentDiffusionConfig,
    import_torch_state_dict,
    load_checkpoint,
    read_checkpoint_info,
    save_checkpoint,
)
from land_core.errors import LandError
from land_core.models import build_unet, build_vae, unet_preset, vae_preset



def randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


CONFIG = LatentDiffusionConfig(vae=vae_preset("tiny"), unet=unet_preset("tiny"), latent_scale_factor=0.8)


@pytest.fixture(scope="module")
def nets():
    return randomized(build_vae(CONFIG.vae), 1), randomized(build_unet(CONFIG.unet), 2), randomized(build_unet(CONFIG.unet), 3)


@pytest.fixture
def saved(tmp_path, nets):
    vae, unet, ema = nets
    meta = CheckpointMetadata(description="test", unet_steps=12, training_data={"dataset": "phantoms", "cases": 3},
                              reference_statistics={"hu_hist": [1, 2, 3]})
    return save_checkpoint(tmp_path / "model", CONFIG, vae, unet, unet_ema=ema, metadata=meta)


def test_round_trip_weights_and_outputs_identical(saved, nets):
    vae, unet, ema = nets
    assert sorted(p.name for p in saved.iterdir()) == [
        "config.json", "metadata.json", "unet.safetensors", "unet_ema.safetensors", "vae.safetensors"]
    assert [p.name for p in saved.parent.iterdir()] == ["model"]  # no temporary folder left
    loaded = load_checkpoint(saved)
    assert loaded.config == CONFIG and loaded.config.conditioning_mode == "nodule_lung_texture"
    assert loaded.metadata.land_version == land_core.__version__ and loaded.metadata.unet_steps == 12
    assert loaded.metadata.training_data == {"dataset": "phantoms", "cases": 3}
    for original, restored in ((vae, loaded.vae), (unet, loaded.unet), (ema, loaded.unet_ema)):
        a, b = original.state_dict(), restored.state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.denoiser is loaded.unet_ema and not loaded.unet.training
    x = torch.randn(1, 4, 16, 16, 16, generator=torch.Generator().manual_seed(4))
    cond = torch.zeros(1, 1, 64, 64, 64)
    cond[..., 10:50, 10:50, 10:50] = 0.5
    with torch.no_grad():
        assert torch.equal(unet(x, 300, cond), loaded.unet(x, 300, cond))
        assert torch.equal(vae.decode_latent(x), loaded.vae.decode_latent(x))
    assert load_checkpoint(saved, load_ema=False).unet_ema is None
    info_cfg, info_meta = read_checkpoint_info(saved)
    assert info_cfg == CONFIG and info_meta.description == "test"


def test_vae_only_checkpoint(tmp_path, nets):
    cfg = LatentDiffusionConfig(vae=vae_preset("tiny"), unet=None)
    path = save_checkpoint(tmp_path / "vae-only", cfg, nets[0])
    loaded = load_checkpoint(path)
    assert loaded.unet is None and loaded.denoiser is None and loaded.config.conditioning_mode is None
    assert json.loads((path / "config.json").read_text())["unet"] is None
    with pytest.raises(CheckpointError, match="unet"):
        save_checkpoint(tmp_path / "x", cfg, nets[0], nets[1])


def test_overwrite_is_explicit_and_atomic(tmp_path, saved, nets, monkeypatch):
    vae, unet, _ = nets
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(saved, CONFIG, vae, unet)
    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    calls = []

    def failing_save(*args, **kwargs):  # the disk fills up while the second file is written
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return save_file(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", failing_save)
    with pytest.raises(OSError):
        save_checkpoint(saved, CONFIG, vae, unet, overwrite=True)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before  # the good checkpoint is untouched
    assert [p.name for p in saved.parent.iterdir()] == ["model"]
    monkeypatch.undo()

    path = save_checkpoint(saved, CONFIG, vae, unet, overwrite=True)  # now without EMA
    assert not (path / "unet_ema.safetensors").exists() and load_checkpoint(path).unet_ema is None
    assert [p.name for p in saved.parent.iterdir()] == ["model"]


def test_save_refuses_weights_that_do_not_fit_the_config(tmp_path, nets):
    other = build_unet(unet_preset("tiny", base_channels=4))
    with pytest.raises(CheckpointError, match="wrong shape"):
        save_checkpoint(tmp_path / "bad", CONFIG, nets[0], other)
    assert not (tmp_path / "bad").exists()


def _rewrite_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize(
    "damage, file_name, message",
    [
        (lambda p: (p / "config.json").unlink(), "config.json", "is missing"),
        (lambda p: (p / "vae.safetensors").unlink(), "vae.safetensors", "is missing"),
        (lambda p: (p / "config.json").write_text("{\"format\": "), "config.json", "not valid JSON"),
        (lambda p: _rewrite_json(p / "config.json", lambda d: d.update(colour="blue")), "config.json", "unknown key"),
        (lambda p: _rewrite_json(p / "config.json", lambda d: d["unet"].update(base_channel=8)), "config.json",
         "unknown key"),
        (lambda p: _rewrite_json(p / "config.json", lambda d: d["vae"].update(latent_channels="4")), "config.json",
         "must be an integer"),
        (lambda p: _rewrite_json(p / "config.json", lambda d: d.update(conditioning_mode="nodule")), "config.json",
         "differs"),
        (lambda p: _rewrite_json(p / "config.json", lambda d: d.update(format_version=99)), "config.json",
         "not supported"),
        (lambda p: _rewrite_json(p / "metadata.json", lambda d: d.update(secret=1)), "metadata.json", "unknown key"),
    ],
)
def test_broken_config_files_are_named(saved, damage, file_name, message):
    damage(saved)
    with pytest.raises(CheckpointError, match=message) as info:
        load_checkpoint(saved)
    assert Path(info.value.path).name == file_name
    assert isinstance(info.value, LandError) and file_name in str(info.value)


def test_truncated_safetensors(saved):
    data = (saved / "unet.safetensors").read_bytes()
    (saved / "unet.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable safetensors") as info:
        load_checkpoint(saved)
    assert info.value.path.endswith("unet.safetensors")


def test_pickle_renamed_to_safetensors_is_never_unpickled(saved, nets):
    torch.save(nets[0].state_dict(), saved / "vae.safetensors")  # a zip/pickle file under the safetensors name
    with pytest.raises(CheckpointError, match="not a readable safetensors") as info:
        load_checkpoint(saved)
    assert info.value.path.endswith("vae.safetensors")


def test_wrong_and_missing_tensors(saved):
    other = build_unet(unet_preset("tiny", base_channels=4)).state_dict()
    save_file({k: v.contiguous() for k, v in other.items()}, str(saved / "unet_ema.safetensors"))
    with pytest.raises(CheckpointError, match="wrong shape for the config") as info:
        load_checkpoint(saved)
    assert info.value.path.endswith("unet_ema.safetensors")

    weights = load_file(str(saved / "unet.safetensors"))
    weights.pop("conv_in.conv.weight")
    weights["extra.weight"] = torch.zeros(2)
    save_file(weights, str(saved / "unet.safetensors"))
    with pytest.raises(CheckpointError, match="1 tensor\\(s\\) missing, e.g. conv_in.conv.weight; 1 unexpected"):
        load_checkpoint(saved)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")


class _NotWeights:
    pass


def test_import_torch_state_dict(tmp_path, nets):
    unet = nets[1]
    wrapped = {"epoch": torch.tensor(3), "state_dict": {f"module.{k}": v for k, v in unet.state_dict().items()}}
    torch.save(wrapped, tmp_path / "unet.pt")
    fresh = import_torch_state_dict(tmp_path / "unet.pt", build_unet(CONFIG.unet))
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), unet.state_dict().values()))

    torch.save({"model": _NotWeights()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="weights-only"):
        import_torch_state_dict(tmp_path / "evil.pt", build_unet(CONFIG.unet))
    torch.save(nets[0].state_dict(), tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match="missing"):
        import_torch_state_dict(tmp_path / "vae.pt", build_unet(CONFIG.unet))


def test_intensity_mapping_and_config_checks():
    m = IntensityMapping(hu_min=-1000.0, hu_max=1000.0)
    hu = np.array([-2000.0, -1000.0, 0.0, 500.0, 3000.0])
    assert np.allclose(m.hu_to_model(hu), [0.0, 0.0, 0.5, 0.75, 1.0])
    assert np.allclose(m.model_to_hu(m.hu_to_model(hu)), np.clip(hu, -1000, 1000))
    assert torch.allclose(m.model_to_hu(torch.tensor([0.25])), torch.tensor([-500.0]))
    assert IntensityMapping.from_dict(m.to_dict()) == m
    assert LatentDiffusionConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError, match="latent_channels"):
        LatentDiffusionConfig(vae=vae_preset("tiny", latent_channels=8), unet=unet_preset("tiny"))
    with pytest.raises(ValueError, match="hu_max"):
        IntensityMapping(hu_min=0.0, hu_max=0.0)
