"""Options that must change speed or memory, never the result: gradient checkpointing and the latent cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from land_core.checkpoint import load_checkpoint
from land_core.train.config import apply_overrides, train_preset
from land_core.train.run import check_data, train


def _weights(folder) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("vae", "unet"):
        path = folder / f"{name}.safetensors"
        if path.exists():
            out.update({f"{name}.{k}": v for k, v in load_file(str(path)).items()})
    return out


def test_gradient_checkpointing_and_the_latent_cache_do_not_change_training(phantom_data, tmp_path):
    base = ["vae.steps=2", "ldm.steps=2", "vae.sample_every=0", "ldm.sample_every=0", "vae.val_samples=0",
            "ldm.val_samples=0", "vae.adversarial_start=1"]
    runs = {
        "plain": base,
        "checkpointed": [*base, "run.gradient_checkpointing=true"],
        "uncached": [*base, "ldm.cache_latents=false"],
    }
    weights, losses = {}, {}
    for name, overrides in runs.items():
        events: list[dict] = []
        config = apply_overrides(train_preset("tiny"), overrides)
        (_, ldm) = train("all", config, phantom_data, tmp_path / name, emit=events.append)
        assert ldm.checkpoint is not None and ldm.step == 2
        weights[name] = _weights(ldm.checkpoint)
        losses[name] = [e["losses"] for e in events if e["event"] == "step"]
    plain = weights["plain"]
    assert len(plain) > 20
    # recomputing activations in the backward pass gives the same gradients
    for key, value in plain.items():
        assert torch.allclose(value, weights["checkpointed"][key], rtol=1e-5, atol=1e-6), key
    # the cache holds the VAE posterior of each whole case: encoding at every step sees the same
    # latents (weights after Adam's first steps are too sign-sensitive to compare here; the losses are not)
    for a, b in zip(losses["plain"], losses["uncached"]):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    assert not (tmp_path / "uncached" / "ldm" / "latent_cache").exists()
    cache = tmp_path / "plain" / "ldm" / "latent_cache"
    vae = load_checkpoint(tmp_path / "plain" / "vae" / "checkpoints" / "step_000002").vae
    data = check_data(train_preset("tiny"), phantom_data, "vae")
    for i, case in enumerate(data.cases):
        cached = load_file(str(cache / f"{case.id}.safetensors"))
        with torch.no_grad():
            mu, sigma = vae.encode(torch.from_numpy(np.ascontiguousarray(data.image(i)))[None, None])
        assert torch.allclose(cached["mu"], mu[0], atol=1e-5) and torch.allclose(cached["sigma"], sigma[0], atol=1e-5)
        assert cached["condition"].shape == (2, *mu.shape[2:])  # max and nodule-only max pooling
