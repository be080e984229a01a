"""The bundled demo model: it loads, is a release checkpoint, and makes a chest CT with the nodules asked for.

Generation runs on a phantom the model never saw (seed 10000; it was trained on seeds 0..63),
with nodules placed by hand at the deepest point of each lung, as a person would place them.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from land_core.checkpoint import load_checkpoint
from land_core.cli import main
from land_core.data.phantom import PhantomConfig, make_phantom
from land_core.generate import DEMO_MODEL_DIR, GenerationSettings, default_checkpoint, generate_volume
from land_core.generate_cli import recommended_guidance
from land_core.io import read_volume, write_volume
from land_core.masks import NoduleSpec, rasterize_nodules
from land_core.masks.nodules import deepest_point_mm, save_nodules

HELD_OUT = 10_000


@pytest.fixture(scope="module")
def demo():
    return load_checkpoint(DEMO_MODEL_DIR)


@pytest.fixture(scope="module")
def held_out(demo):
    cfg = demo.config
    return make_phantom(HELD_OUT, PhantomConfig(size=cfg.image_size, spacing=cfg.image_spacing))


def test_the_demo_model_is_a_small_release_checkpoint(demo):
    assert default_checkpoint() == DEMO_MODEL_DIR
    files = sorted(p.name for p in DEMO_MODEL_DIR.iterdir())
    assert files == ["README.md", "config.json", "metadata.json", "unet.safetensors", "vae.safetensors"]
    assert sum(p.stat().st_size for p in DEMO_MODEL_DIR.iterdir()) < 60 * 2**20
    cfg, meta = demo.config, demo.metadata
    assert cfg.conditioning_mode == "nodule_lung_texture"
    assert (cfg.image_size, cfg.image_spacing) == (128, 2.0)  # the phantoms' grid: a 256 mm cube
    assert meta.vae_steps > 0 and meta.unet_steps > 0 and meta.extra["export"]["unet_weights"] == "ema"
    assert "phantom" in meta.training_data["source"]
    assert f"phantom_s{HELD_OUT:04d}" not in meta.training_data["case_ids"]
    card = (DEMO_MODEL_DIR / "README.md").read_text()
    assert "not for clinical use" in card.lower() and "land train" in card


def test_the_demo_model_draws_the_lungs_and_the_textures_asked_for(demo, held_out):
    lungs = held_out.lungs
    right, left = deepest_point_mm(lungs, 1), deepest_point_mm(lungs, 2)
    ggo = NoduleSpec(center_mm=right, diameter_mm=16.0, texture=1)
    solid = NoduleSpec(center_mm=left, diameter_mm=16.0, texture=5)
    guidance = recommended_guidance(DEMO_MODEL_DIR)
    assert guidance == 4.0  # measured in the model card: nodule textures need guidance with this model
    ct = generate_volume(demo, lungs=lungs, nodules=[ggo, solid],
                         settings=GenerationSettings(steps=10, seed=0, device="cpu", guidance_scale=guidance))
    assert ct.same_grid(lungs)
    hu = ct.array.astype(np.float32)
    real = held_out.ct.array.astype(np.float32)
    nodules = rasterize_nodules([ggo, solid], lungs).array
    lung = (lungs.array > 0) & (nodules == 0)
    body = (lungs.array == 0) & (real > -500)  # soft tissue and bone of the real phantom
    air = (lungs.array == 0) & (real < -950)  # the air around the patient
    ggo_hu, solid_hu = hu[nodules == 1].mean(), hu[nodules == 5].mean()
    measured = (f"lung {hu[lung].mean():.0f}, body median {np.median(hu[body]):.0f}, air {hu[air].mean():.0f}, "
                f"ground glass {ggo_hu:.0f}, solid {solid_hu:.0f} HU")
    assert -950 < hu[lung].mean() < -650, measured
    assert -200 < np.median(hu[body]) < 200, measured
    assert hu[air].mean() < -800, measured
    assert solid_hu > -300, measured
    assert -850 < ggo_hu < -350, measured
    assert solid_hu - ggo_hu > 250, measured


def test_land_generate_uses_the_demo_model_when_none_is_named(held_out, tmp_path, capsys):
    write_volume(held_out.lungs, tmp_path / "lungs.nii.gz")
    centre = deepest_point_mm(held_out.lungs, 1)
    save_nodules(tmp_path / "nodules.json", [NoduleSpec(center_mm=centre, diameter_mm=12.0, texture=3)])
    out = tmp_path / "ct.nii.gz"
    assert main(["generate", "--lungs", str(tmp_path / "lungs.nii.gz"), "--nodules", str(tmp_path / "nodules.json"),
                 "--out", str(out), "--steps", "2", "--quiet"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    ct = read_volume(out)
    assert ct.same_grid(held_out.lungs) and ct.array.min() >= -1024
    assert main(["checkpoint", "info", str(DEMO_MODEL_DIR), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["grid"].startswith("128^3 voxels at 2 mm") and info["ema"] is False
