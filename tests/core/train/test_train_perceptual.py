"""The perceptual term: a MedicalNet-style ResNet from a local weights file (no download), and the
weight-free fallback; the LDM stage run alone on a trained VAE with the histogram hook."""

from __future__ import annotations

import json

import pytest
import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock
from safetensors.torch import save_file

from land_core.errors import ConfigError
from land_core.train.config import apply_overrides, train_preset
from land_core.train.ldm_trainer import RegularizerInputs
from land_core.losses.vae import MedicalNetPerceptualLoss, feature_matching_loss
from land_core.train.run import train


@pytest.fixture(scope="module")
def resnet_files(tmp_path_factory):
    """A small MedicalNet-layout resnet10 (as `resnet_10_23dataset.pth` stores it) in two formats."""
    torch.manual_seed(0)
    net = ResNet(ResNetBlock, [1, 1, 1, 1], [4, 8, 8, 8], spatial_dims=3, n_input_channels=1, conv1_t_size=7,
                 conv1_t_stride=2, shortcut_type="B", feed_forward=False, bias_downsample=False)
    sd = {f"module.{k}": v for k, v in net.state_dict().items()}
    sd["module.conv_seg.0.weight"] = torch.zeros(2, 8, 1, 1, 1)  # the segmentation head published files carry
    root = tmp_path_factory.mktemp("weights")
    torch.save({"state_dict": sd}, root / "resnet_10.pth")
    save_file({k: v.contiguous() for k, v in sd.items()}, str(root / "resnet_10.safetensors"))
    return root


@pytest.mark.parametrize("name", ["resnet_10.pth", "resnet_10.safetensors"])
def test_medicalnet_perceptual_loss_from_a_local_file(resnet_files, name):
    loss = MedicalNetPerceptualLoss(resnet_files / name)
    assert "resnet10" in loss.description
    assert not any(p.requires_grad for p in loss.parameters())
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 1, 16, 16, 16, generator=g)
    y = (x + 0.3 * torch.rand(2, 1, 16, 16, 16, generator=g)).requires_grad_(True)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-6)
    d = loss(y, x)
    assert d.item() > 1e-3
    d.backward()
    assert y.grad is not None and y.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="not the resnet50"):
        MedicalNetPerceptualLoss(resnet_files / name, "resnet50")


def test_unusable_weight_files_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        MedicalNetPerceptualLoss(tmp_path / "missing.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="cannot be read"):
        MedicalNetPerceptualLoss(tmp_path / "junk.pth")
    save_file({"weight": torch.zeros(3)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ConfigError, match="not a MedicalNet"):
        MedicalNetPerceptualLoss(tmp_path / "other.safetensors")


def test_feature_matching_is_zero_for_equal_features():
    feats = [torch.rand(2, 3, 4, 4, 4), torch.rand(2, 5, 2, 2, 2)]
    assert feature_matching_loss(feats, feats).item() == 0.0
    assert feature_matching_loss(feats, [f + 1 for f in feats]).item() == pytest.approx(1.0)


def test_vae_with_perceptual_weights_then_ldm_with_the_histogram_hook(resnet_files, phantom_data, tmp_path):
    events: list[dict] = []
    config = apply_overrides(train_preset("tiny"), [f"vae.perceptual_weights={resnet_files / 'resnet_10.pth'}",
                                                     "vae.steps=2", "ldm.steps=2", "ldm.histogram_weight=0.5",
                                                     "ldm.sample_every=0", "ldm.cache_latents=false"])
    (vae_result,) = train("vae", config, phantom_data, tmp_path / "vae", emit=events.append)
    assert "perceptual term: MedicalNet resnet10" in (tmp_path / "vae" / "train.log").read_text()
    assert all("perceptual" in e["losses"] for e in events if e["event"] == "step")

    seen: list[RegularizerInputs] = []

    def regulariser(inputs: RegularizerInputs) -> torch.Tensor:
        seen.append(inputs)
        image = inputs.decode(inputs.x0_pred)  # differentiable through the frozen decoder
        nodule = (inputs.nodules > 0).float()
        return ((image - 0.5) * nodule).pow(2).mean()

    (ldm_result,) = train("ldm", config, phantom_data, tmp_path / "ldm", vae_checkpoint=tmp_path / "vae",
                          emit=events.append, histogram_regularizer=regulariser)
    assert ldm_result.step == 2 and ldm_result.checkpoint is not None
    assert len(seen) == 2
    first = seen[0]
    b, c, *latent = first.x0_pred.shape
    assert first.x0_pred.requires_grad and not first.x0.requires_grad
    assert first.nodules.shape == (b, 1, *(4 * s for s in latent)) and first.nodules.dtype == torch.uint8
    assert first.t.shape == first.weights.shape == (b,)
    assert set(first.reference["nodule_hu_histograms"]) <= {"ground_glass", "part_solid", "solid"}
    steps = [e for e in events if e["event"] == "step" and e["stage"] == "ldm"]
    assert all("histogram" in e["losses"] for e in steps)
    config_json = json.loads((tmp_path / "ldm" / "config.json").read_text())
    assert config_json["ldm"]["histogram_weight"] == 0.5
    with pytest.raises(ConfigError, match="needs a regulariser"):
        train("ldm", config, phantom_data, tmp_path / "ldm2", vae_checkpoint=tmp_path / "vae")
