"""Training configs: presets, JSON round trip, partial files, typed `--set` overrides, clear errors."""

from __future__ import annotations

import json

import pytest

from land_core.errors import ConfigError
from land_core.models import unet_preset, vae_preset
from land_core.train.config import (
    PRESETS,
    TrainConfig,
    apply_overrides,
    load_config,
    train_preset,
    with_steps,
)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_round_trip_through_json(name, tmp_path):
    config = train_preset(name)
    path = config.save(tmp_path / "config.json")
    assert load_config(path) == config
    assert TrainConfig.from_dict(json.loads(path.read_text())) == config


def test_land_preset_has_the_papers_settings():
    land = train_preset("land")
    assert (land.vae.perceptual_weight, land.vae.adversarial_weight, land.vae.kl_weight) == (0.3, 0.1, 1e-7)
    assert land.vae.lr == 1e-4 and land.ldm.lr == 1e-5 and land.vae.batch_size == land.ldm.batch_size == 1
    assert land.vae.model == vae_preset("land") and land.ldm.model == unet_preset("land")
    assert land.ldm.diffusion.prediction_type == "v_prediction" and land.ldm.diffusion.min_snr_gamma == 5.0
    assert land.ldm.histogram_weight == 0.0 and land.vae.adversarial_start > 0
    assert train_preset("demo").vae.patch_size in (32, 48)


def test_overrides_are_typed_by_the_dataclass_fields():
    config = apply_overrides(train_preset("tiny"), [
        "vae.lr=2e-4", "seed=7", "run.bf16=false", "vae.model.channels=8,8,8", "vae.model.norm_num_groups=4",
        "vae.perceptual_weights=/data/resnet_10_23dataset.pth", "ldm.diffusion.min_snr_gamma=none",
        "ldm.model.attention_levels=[false, false, true]", "ldm.sample_sampler=ddim", "intensity.hu_max=500",
    ])
    assert config.vae.lr == 2e-4 and config.seed == 7 and config.run.bf16 is False
    assert config.vae.model.channels == (8, 8, 8)
    assert config.vae.perceptual_weights == "/data/resnet_10_23dataset.pth"
    assert config.ldm.diffusion.min_snr_gamma is None
    assert config.ldm.model.attention_levels == (False, False, True)
    assert config.ldm.sample_sampler == "ddim" and config.intensity.hu_max == 500.0
    assert with_steps(config, "all", 9).vae.steps == 9 and with_steps(config, "ldm", 9).vae.steps == config.vae.steps


@pytest.mark.parametrize("item, message", [
    ("vae.lrr=1", "unknown setting 'lrr' in vae; known: steps"),
    ("nope.x=1", "unknown setting 'nope'"),
    ("vae.lr=fast", "expected a number"),
    ("run.bf16=maybe", "expected true or false"),
    ("vae.steps=0", "steps must be >= 1"),
    ("vae.patch_size=30", "multiple of the VAE's downsampling"),
    ("ldm.sample_sampler=euler", "must be one of"),
    ("vae.model=3", "is a group of settings"),
    ("vae.lr.x=3", "is a value, not a group"),
    ("seed", "expects key=value"),
    ("ldm.model.latent_channels=8", "differs from vae.model.latent_channels"),
])
def test_bad_overrides_are_named(item, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("'", "'")):
        apply_overrides(train_preset("tiny"), [item])


def test_partial_json_file_starts_from_its_preset(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"preset": "demo", "vae": {"steps": 123, "model": {"latent_channels": 4}}}))
    config = load_config(path)
    assert config.vae.steps == 123 and config.vae.patch_size == train_preset("demo").vae.patch_size
    assert config.vae.model == vae_preset("demo")
    path.write_text(json.dumps({"vae": {"stepz": 1}}))
    with pytest.raises(ConfigError, match="mine.json.*unknown key.*stepz"):
        load_config(path)
    path.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(path)
    with pytest.raises(ConfigError, match="neither a preset"):
        load_config(tmp_path / "missing.json")
