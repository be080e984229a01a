"""`land checkpoint info|export`: a release checkpoint is the EMA U-Net, optionally float16, with its card."""

from __future__ import annotations

import json
import stat

import pytest
import torch

from land_core.checkpoint import CheckpointMetadata, load_checkpoint, save_checkpoint
from land_core.cli import main
from land_core.io.atomic import current_umask
from land_core.models import build_unet

from test_generate import SIZE, SPACING, random_vae, randomized, tiny_config


@pytest.fixture()
def trained(tmp_path):
    cfg = tiny_config()
    folder = save_checkpoint(tmp_path / "step_000010", cfg, random_vae(cfg), unet=randomized(build_unet(cfg.unet), 2),
                             unet_ema=randomized(build_unet(cfg.unet), 3),
                             metadata=CheckpointMetadata(description="tiny test model", vae_steps=5, unet_steps=10))
    return folder


def test_export_keeps_the_ema_in_float16_with_the_card(trained, tmp_path, capsys):
    card = tmp_path / "card.md"
    card.write_text("# Tiny model\n\nFor tests only.\n")
    out = tmp_path / "release"
    assert main(["checkpoint", "export", str(trained), str(out), "--dtype", "float16", "--card", str(card)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "metadata.json", "unet.safetensors",
                                                      "vae.safetensors"]
    assert (out / "README.md").read_text() == card.read_text()
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~current_umask()
    source, release = load_checkpoint(trained), load_checkpoint(out)
    assert release.unet_ema is None and release.denoiser is release.unet
    for a, b in zip(source.unet_ema.parameters(), release.unet.parameters()):
        assert b.dtype == torch.float32
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-4)  # float16 storage
    assert not all(torch.equal(a, b) for a, b in zip(source.unet.parameters(), release.unet.parameters()))
    export = release.metadata.extra["export"]
    assert export["unet_weights"] == "ema" and export["stored_dtype"] == "float16"
    assert release.metadata.unet_steps == 10 and release.config == source.config
    half = (out / "unet.safetensors").stat().st_size
    assert half < 0.6 * (trained / "unet.safetensors").stat().st_size


def test_info_describes_the_grid_and_steps(trained, capsys):
    assert main(["checkpoint", "info", str(trained), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["grid"].startswith(f"{SIZE}^3 voxels at {SPACING:g} mm")
    assert info["unet_steps"] == 10 and info["ema"] is True and info["unet_parameters"] > 0
    assert info["conditioning_mode"] == "nodule_lung_texture"


def test_export_refuses_what_it_cannot_do(trained, tmp_path, capsys):
    cfg = tiny_config()
    from dataclasses import replace

    vae_only = save_checkpoint(tmp_path / "vae", replace(cfg, unet=None), random_vae(cfg))
    assert main(["checkpoint", "export", str(vae_only), str(tmp_path / "x")]) == 2
    assert "holds no U-Net" in capsys.readouterr().err
    assert main(["checkpoint", "export", str(trained), str(trained)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["checkpoint", "export", str(trained), str(tmp_path / "y"), "--card", str(tmp_path / "no.md")]) == 2
    assert "no.md: cannot read the model card" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()
    assert main(["checkpoint", "info", str(tmp_path)]) == 2
    assert "neither a checkpoint folder" in capsys.readouterr().err


def test_a_recommended_guidance_is_what_land_generate_uses_by_default(trained, tmp_path):
    from land_core.generate_cli import recommended_guidance

    out = tmp_path / "release"
    assert main(["checkpoint", "export", str(trained), str(out), "--recommend-guidance", "4"]) == 0
    assert load_checkpoint(out).metadata.extra["recommended"] == {"guidance_scale": 4.0}
    assert recommended_guidance(out) == 4.0 and recommended_guidance(trained) == 1.0
    assert main(["checkpoint", "export", str(trained), str(tmp_path / "bad"), "--recommend-guidance", "0"]) == 2
