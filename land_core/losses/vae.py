"""The VAE's perceptual and adversarial terms, with no download at run time.

* :class:`MedicalNetPerceptualLoss`: an LPIPS-style distance on the features of a frozen
  MedicalNet 3D ResNet (Chen et al., "Med3D", 2019), the backbone MONAI's own perceptual loss uses
  for 3D. MONAI's ``PerceptualLoss`` downloads its weights from a hub, which cannot work offline
  (FACTS.md), so the network is MONAI's ``ResNet`` built to fit a *local* weights file the user
  names (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or ``.safetensors``); depth
  and widths are read off the file, so ``resnet_10_23dataset.pth`` and ``resnet_50_23dataset.pth``
  both work. Per layer (after ``layer1``..``layer4``) the features are unit-normalised over the
  channels, and the squared differences are summed over channels and averaged over space, as in
  LPIPS without learned weights.
* :func:`feature_matching_loss`: the weight-free fallback, L1 between the discriminator's
  intermediate features of real and reconstructed patches (pix2pixHD's feature matching).
* The adversarial term itself is MONAI's ``PatchAdversarialLoss`` (least squares) with MONAI's
  ``PatchDiscriminator``; both are used as they are.

They live in ``land_core.losses`` (not ``train``) so that the metrics can reuse the MedicalNet
backbone loader for FID without importing the trainers.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch
from monai.networks.nets.resnet import ResNet, ResNetBlock, ResNetBottleneck, get_medicalnet_pretrained_resnet_args
from safetensors.torch import load_file
from torch import nn

from land_core.errors import ConfigError

_DEPTHS = {
    ((1, 1, 1, 1), False): 10, ((2, 2, 2, 2), False): 18, ((3, 4, 6, 3), False): 34, ((3, 4, 6, 3), True): 50,
    ((3, 4, 23, 3), True): 101, ((3, 8, 36, 3), True): 152, ((3, 24, 36, 3), True): 200,
}
_LAYERS = {d: (layers, bottleneck) for (layers, bottleneck), d in _DEPTHS.items()}
_HEADS = ("fc.", "conv_seg.")  # classification / segmentation heads in published files: not used


def read_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a weights-only torch file, wrapper keys and ``module.`` removed."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"perceptual weights {p}: no such file")
    try:
        if p.suffix == ".safetensors":
            obj = load_file(str(p))
        else:
            obj = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ConfigError(f"perceptual weights {p}: cannot be read as safetensors or a weights-only torch file "
                          f"({exc})") from None
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in ("state_dict", "model", "model_state_dict", "net"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ConfigError(f"perceptual weights {p}: does not hold a state dict (names -> tensors)")
    out = {}
    for name, tensor in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if name.startswith(prefix):
                name = name[len(prefix):]
        out[name] = tensor
    return out


def _infer_resnet(sd: dict[str, torch.Tensor], network: str, where: str) -> tuple[int, list[int], int]:
    """(depth, block widths, conv1 kernel size) of the MedicalNet ResNet stored in ``sd``."""
    blocks = []
    for k in range(1, 5):
        idx = {int(m.group(1)) for key in sd if (m := re.match(rf"layer{k}\.(\d+)\.", key))}
        if not idx:
            raise ConfigError(f"perceptual weights {where}: no layer{k} tensors; not a MedicalNet/MONAI 3D ResNet")
        blocks.append(max(idx) + 1)
    bottleneck = "layer1.0.conv3.weight" in sd
    found = _DEPTHS.get((tuple(blocks), bottleneck))
    if network != "auto":
        depth = int(network.removeprefix("resnet"))
        if found is not None and found != depth:
            raise ConfigError(f"perceptual weights {where}: the file holds a resnet{found}, not the {network} asked for")
    elif found is None:
        raise ConfigError(f"perceptual weights {where}: blocks per layer {blocks} match no ResNet depth")
    else:
        depth = found
    if "conv1.weight" not in sd or sd["conv1.weight"].ndim != 5 or sd["conv1.weight"].shape[1] != 1:
        raise ConfigError(f"perceptual weights {where}: needs a 3D network with one input channel (conv1.weight)")
    expansion = 4 if bottleneck else 1
    widths = [int(sd[f"layer{k}.0.conv{3 if bottleneck else 2}.weight"].shape[0]) // expansion for k in range(1, 5)]
    return depth, widths, int(sd["conv1.weight"].shape[2])


class MedicalNetPerceptualLoss(nn.Module):
    """LPIPS-style distance between two volumes on frozen MedicalNet ResNet features (see module doc)."""

    def __init__(self, weights: str | os.PathLike, network: str = "auto") -> None:
        super().__init__()
        sd = read_weights_file(weights)
        depth, widths, k1 = _infer_resnet(sd, network, str(weights))
        layers, bottleneck = _LAYERS[depth]
        bias_downsample, shortcut = get_medicalnet_pretrained_resnet_args(depth)
        if any(key.endswith("downsample.0.bias") for key in sd):
            bias_downsample = True
        if not any(".downsample." in key for key in sd):
            shortcut = "A"
        self.net = ResNet(ResNetBottleneck if bottleneck else ResNetBlock, list(layers), widths, spatial_dims=3,
                          n_input_channels=1, conv1_t_size=k1, conv1_t_stride=2, shortcut_type=shortcut,
                          feed_forward=False, bias_downsample=bias_downsample)
        wanted = self.net.state_dict()
        body = {k: v for k, v in sd.items() if not k.startswith(_HEADS)}
        missing = sorted(set(wanted) - set(body))
        unexpected = sorted(set(body) - set(wanted))
        wrong = sorted(k for k in set(body) & set(wanted) if body[k].shape != wanted[k].shape)
        if missing or unexpected or wrong:
            raise ConfigError(f"perceptual weights {weights}: do not fit a MedicalNet resnet{depth} "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}, wrong shape {wrong[:3]})")
        self.net.load_state_dict(body, strict=True)
        self.net.eval().requires_grad_(False)
        self.description = f"MedicalNet resnet{depth} from {weights}"

    def train(self, mode: bool = True) -> "MedicalNetPerceptualLoss":
        super().train(mode)
        self.net.eval()  # frozen batch-norm statistics, always
        return self

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        n = self.net
        # MedicalNet's preprocessing: each volume to zero mean, unit standard deviation
        dims = tuple(range(1, x.ndim))
        x = (x - x.mean(dim=dims, keepdim=True)) / (x.std(dim=dims, keepdim=True) + 1e-6)
        h = n.act(n.bn1(n.conv1(x)))
        if not n.no_max_pool:
            h = n.maxpool(h)
        feats = []
        for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
            h = layer(h)
            feats.append(h)
        return feats

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over the batch and the four layers of the per-layer LPIPS distance."""
        total = reconstruction.new_zeros(())
        fa, fb = self.features(reconstruction.float()), self.features(target.float())
        for a, b in zip(fa, fb):
            a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
            b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
            total = total + (a - b).pow(2).sum(dim=1).flatten(1).mean(dim=1).mean()
        return total / len(fa)


def feature_matching_loss(real: list[torch.Tensor], fake: list[torch.Tensor]) -> torch.Tensor:
    """Mean over layers of L1 between discriminator features of fake and (detached) real inputs.

    ``real``/``fake`` are the discriminator's outputs per layer *without* the final logits.
    """
    if not real:
        raise ValueError("feature matching needs at least one intermediate discriminator layer")
    return sum((f.float() - r.detach().float()).abs().mean() for r, f in zip(real, fake)) / len(real)


def kl_loss(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) summed over the latent, averaged over the batch (as MONAI/MAISI)."""
    mu, sigma = mu.float(), sigma.float()
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - torch.log(sigma.pow(2) + 1e-12) - 1.0)
    return kl.flatten(1).sum(dim=1).mean()
