"""Stage 1: the image VAE, trained on random patches with L1 + perceptual + adversarial + KL.

The loss of LAND (weights in :class:`land_core.train.config.VAETrainConfig`)::

    L_VAE = w_l1 * |x - x_hat|_1 + w_p * L_perceptual(x, x_hat) + w_adv * L_adv(x_hat) + w_kl * KL(q(z|x) || N(0, I))

* the reconstruction decodes ``z = mu + sigma * eps`` with ``eps`` drawn per sample from the
  sample's own seed (so one or N processes draw the same noise);
* perceptual: :class:`MedicalNetPerceptualLoss` with a local weights file, else discriminator
  feature matching (the log says which);
* adversarial: MONAI ``PatchDiscriminator`` (instance norm, so each sample is normalised alone,
  which keeps DDP equal to one process) and ``PatchAdversarialLoss`` (least squares); the
  generator term and the discriminator's own training start after ``adversarial_start`` steps.
  The discriminator sees real and reconstructed patches in one batch (one forward per step).

The checkpoint is a VAE-only LAND checkpoint (``unet: null``); the discriminator is kept in the
training state, so a resumed run continues the adversarial game where it was.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import numpy as np
import torch
from monai.losses import PatchAdversarialLoss
from monai.networks.nets import PatchDiscriminator
from safetensors.torch import load_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.checkpoint import checkpoint
from torch.utils.data import Dataset

from land_core.checkpoint import VAE_FILE, CheckpointMetadata, LatentDiffusionConfig
from land_core.io import write_volume
from land_core.models.vae import LandVAE, build_vae, count_parameters
from land_core.train.config import VAETrainConfig
from land_core.train.data import PatchDataset, STREAM_NOISE, data_summary, reference_statistics
from land_core.train.loop import CheckpointPayload, StageTrainer
from land_core.losses.vae import MedicalNetPerceptualLoss, feature_matching_loss, kl_loss

log = logging.getLogger("land.train")


class VAEWithNoise(nn.Module):
    """``(x, eps) -> (x_hat, mu, sigma)``: the VAE's forward with the posterior noise given, for DDP."""

    def __init__(self, vae: LandVAE) -> None:
        super().__init__()
        self.vae = vae

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, sigma = self.vae.encode(x)
        return self.vae.decode(mu + sigma * eps.to(mu.dtype)), mu, sigma


def enable_vae_gradient_checkpointing(vae: LandVAE) -> None:
    """Recompute each encoder/decoder block in the backward pass instead of storing its activations.

    MONAI's MAISI autoencoder has no switch for it, so each block's ``forward`` is wrapped on the
    instance (parameter names, and so checkpoints, are unchanged).
    """
    for blocks in (vae.encoder.blocks, vae.decoder.blocks):
        for block in blocks:
            original = block.forward

            @functools.wraps(original)
            def forward(*args: Any, _f=original, **kwargs: Any) -> Any:
                if torch.is_grad_enabled():
                    return checkpoint(_f, *args, use_reentrant=False, **kwargs)
                return _f(*args, **kwargs)

            block.forward = forward


class VAETrainer(StageTrainer):
    """Trains the image VAE of LAND; see the module docstring."""

    stage = "vae"
    cfg: VAETrainConfig

    def build(self, resume_from) -> None:
        cfg, dev = self.cfg, self.device
        self.seed_init(1)
        self.vae = build_vae(cfg.model).to(dev)
        if self.config.run.gradient_checkpointing:
            enable_vae_gradient_checkpointing(self.vae)
        self.forward_net: nn.Module = VAEWithNoise(self.vae)
        self.perceptual: MedicalNetPerceptualLoss | None = None
        if cfg.perceptual_weight > 0 and cfg.perceptual_weights:
            self.perceptual = MedicalNetPerceptualLoss(cfg.perceptual_weights, cfg.perceptual_network).to(dev)
            perceptual_text = f"perceptual term: {self.perceptual.description}"
        elif cfg.perceptual_weight > 0:
            perceptual_text = ("perceptual term: no pretrained weights given (--set vae.perceptual_weights=FILE for a "
                               "MedicalNet ResNet), using discriminator feature matching instead")
        else:
            perceptual_text = "perceptual term: off (weight 0)"
        self.use_feature_matching = cfg.perceptual_weight > 0 and self.perceptual is None
        self.disc: nn.Module | None = None
        self.disc_forward: nn.Module | None = None
        if cfg.adversarial_weight > 0 or self.use_feature_matching:
            self.disc = PatchDiscriminator(spatial_dims=3, num_layers_d=cfg.disc_layers, channels=cfg.disc_channels,
                                           in_channels=1, out_channels=1, norm="INSTANCE").to(dev)
            self.disc_forward = self.disc
        self.adv_loss = PatchAdversarialLoss(criterion="least_squares")
        self.reference = reference_statistics(self.data) if self.dist.is_main else {}
        self.opt_g = self.make_optimizer("vae", self.vae.parameters(), cfg.lr)
        self.opt_d = self.make_optimizer("disc", self.disc.parameters(), cfg.disc_lr) if self.disc is not None else None
        if resume_from is not None:
            self.vae.load_state_dict(load_file(str(resume_from / VAE_FILE), device=str(dev)))
        if self.dist.is_main:
            log.info("vae: %s parameters, patches %d^3, global batch %d on %d process(es), device %s%s",
                     f"{count_parameters(self.vae):,}", cfg.patch_size, cfg.batch_size, self.dist.world_size, dev,
                     ", bf16 autocast" if self.use_bf16 else "")
            log.info("vae: %s", perceptual_text)
            log.info("vae: adversarial term (weight %g) from step %d; KL weight %g", cfg.adversarial_weight,
                     cfg.adversarial_start + 1, cfg.kl_weight)

    def wrap_distributed(self) -> None:
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.forward_net = DDP(self.forward_net, device_ids=ids)
        if self.disc is not None:
            self.disc_forward = DDP(self.disc, device_ids=ids)

    def dataset(self) -> Dataset:
        return PatchDataset(self.data, self.cfg.patch_size, self.config.seed)

    def _eps(self, indices: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        gens = self.per_sample_generators(indices, STREAM_NOISE)
        return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(self.device)

    def _latent_shape(self, patch: int) -> tuple[int, ...]:
        f = self.cfg.model.downsample_factor
        return (self.cfg.model.latent_channels, patch // f, patch // f, patch // f)

    def adversarial_active(self, step: int) -> bool:
        return self.disc is not None and self.cfg.adversarial_weight > 0 and step > self.cfg.adversarial_start

    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        cfg = self.cfg
        x = batch["image"].to(self.device, non_blocking=True)
        b = x.shape[0]
        eps = self._eps(batch["index"], self._latent_shape(x.shape[-1]))
        adversarial = self.adversarial_active(step)
        # ---- generator (the VAE)
        with self.autocast():
            recon, mu, sigma = self.forward_net(x, eps)
        recon = recon.float()
        l1 = (recon - x).abs().mean()
        kl = kl_loss(mu, sigma)
        losses: dict[str, torch.Tensor] = {"l1": l1, "kl": kl}
        total = cfg.l1_weight * l1 + cfg.kl_weight * kl
        if self.disc is not None and (adversarial or self.use_feature_matching):
            self.disc.requires_grad_(False)
            with self.autocast():
                feats = self.disc(torch.cat([x, recon]))  # the plain module: no DDP hooks for frozen weights
            if self.use_feature_matching:
                fm = feature_matching_loss([f[:b] for f in feats[:-1]], [f[b:] for f in feats[:-1]])
                losses["perceptual"] = fm
                total = total + cfg.perceptual_weight * fm
            if adversarial:
                adv = self.adv_loss(feats[-1][b:].float(), target_is_real=True, for_discriminator=False)
                losses["adv_g"] = adv
                total = total + cfg.adversarial_weight * adv
            self.disc.requires_grad_(True)
        if self.perceptual is not None:
            with self.autocast():
                p = self.perceptual(recon, x).float()
            losses["perceptual"] = p
            total = total + cfg.perceptual_weight * p
        total = self.inject_nan(total, step)
        losses["loss"] = total
        # ---- discriminator forward (before any step, so that NaN in it stops the run cleanly too)
        d_loss = None
        if adversarial:
            with self.autocast():
                logits = self.disc_forward(torch.cat([x, recon.detach()]))[-1].float()
            d_loss = 0.5 * (self.adv_loss(logits[b:], target_is_real=False, for_discriminator=True)
                            + self.adv_loss(logits[:b], target_is_real=True, for_discriminator=True))
            losses["disc"] = d_loss
        values = self.reduce_losses(losses, step)
        self.opt_g.zero_grad(set_to_none=True)
        total.backward()
        values["grad_norm"] = self.check_grad_norm(self.vae.parameters(), step, "VAE")
        self.opt_g.step()
        self.schedulers["vae"].step()
        if d_loss is not None:
            self.opt_d.zero_grad(set_to_none=True)  # type: ignore[union-attr]
            d_loss.backward()
            self.check_grad_norm(self.disc.parameters(), step, "discriminator")  # type: ignore[union-attr]
            self.opt_d.step()  # type: ignore[union-attr]
            self.schedulers["disc"].step()  # counts the discriminator's own steps (its warm-up starts with it)
        return values

    # ------------------------------------------------------------------ validation, checkpoints
    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """L1 of the posterior-mean reconstruction on ``val_samples`` fixed patches."""
        n = self.cfg.val_samples
        if n <= 0:
            return None
        ds = PatchDataset(self.data, self.cfg.patch_size, self.config.seed, validation=True)
        self.vae.eval()
        try:
            errors = []
            for i in range(n):
                x = ds[i]["image"][None].to(self.device)
                with self.autocast():
                    recon = self.vae.decode(self.vae.encode(x)[0])
                errors.append(float((recon.float() - x).abs().mean()))
        finally:
            self.vae.train()
        return float(np.mean(errors))

    def checkpoint_payload(self) -> CheckpointPayload:
        config = LatentDiffusionConfig(vae=self.cfg.model, unet=None, diffusion=self.config.ldm.diffusion,
                                       intensity=self.config.intensity, latent_scale_factor=1.0)
        meta = CheckpointMetadata(
            description=f"LAND Studio image VAE ({self.config.preset} preset), stage 1 of 2",
            vae_steps=self.step, training_data=data_summary(self.data),
            reference_statistics=self.reference,
            extra={"stage": "vae", "train_config": self.config.to_dict()["vae"]},
        )
        return CheckpointPayload(config=config, vae=self.vae, metadata=meta)

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if self.disc is None:
            return {}, {}
        return {f"disc.{k}": v for k, v in self.disc.state_dict().items()}, {"discriminator": True}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        if self.disc is not None:
            sd = {k[5:]: v for k, v in tensors.items() if k.startswith("disc.")}
            self.disc.load_state_dict(sd, strict=True)

    @torch.no_grad()
    def write_sample(self, step: int) -> dict[str, Any] | None:
        """Reconstruct the first (or ``ldm.sample_case``) case whole and save it with a montage."""
        from land_core.data.montage import save_montage

        name = self.config.ldm.sample_case
        c = self.data.index_of(name) if name else 0
        ref = self.data.geometry(c)
        f = self.cfg.model.downsample_factor
        shape = [s - s % f for s in ref.shape]
        x = torch.from_numpy(np.ascontiguousarray(self.data.image(c)[: shape[0], : shape[1], : shape[2]]))[None, None]
        self.vae.eval()
        try:
            with self.autocast():
                recon = self.vae.decode(self.vae.encode(x.to(self.device))[0])
        finally:
            self.vae.train()
        hu = self.config.intensity.model_to_hu(recon[0, 0].float().cpu().numpy())
        vol = ref.with_array(np.zeros(ref.shape, np.int16))
        vol.array[: shape[0], : shape[1], : shape[2]] = np.rint(hu).astype(np.int16)
        base = self.run_dir.samples / f"step_{step:06d}_reconstruction"
        nii = write_volume(vol, base.with_suffix(".nii.gz"))
        png = save_montage(vol, base.with_suffix(".png"), title=f"VAE reconstruction, {self.data.cases[c].id}, step {step}")
        if not (self.run_dir.samples / "reference.png").exists():
            save_montage(ref, self.run_dir.samples / "reference.png", title=f"{self.data.cases[c].id} (training data)")
        if self.tb is not None:
            from land_core.data.montage import apply_window, orthogonal_slices

            self.tb.image("vae/reconstruction_axial", apply_window(orthogonal_slices(vol)["axial"][0], 1500, -600), step)
        return {"path": str(nii), "png": str(png)}
