"""Stage 2: the latent diffusion U-Net on latents of the frozen VAE.

Per step and sample (all noise drawn from the sample's own seed)::

    z0  = (mu + sigma * eps_z) * scale            VAE posterior (cached mean and sigma), fresh eps_z
    t   ~ U{0..T-1},  noise ~ N(0, I),  drop ~ Bernoulli(diffusion.condition_dropout)
    z_t = a_t * z0 + s_t * noise
    v   = unet(z_t, t, condition, drop_condition=drop)          velocity (v-prediction)
    L   = minSNR_gamma(t) * |v - (a_t * noise - s_t * z0)|^2     NoiseSchedule.training_loss
        + histogram_weight * regulariser(...)                    (0 by default: the hook below)

``scale`` is ``1 / std`` of the latents over a few cases, computed once from the data and stored
in the checkpoint's config (``latent_scale_factor``). EMA weights of the U-Net are kept
(``torch.optim.swa_utils.AveragedModel`` with a warm-up decay) and saved as ``unet_ema``; samples
and the validation loss use them.

The histogram regulariser hook
------------------------------
A later issue plugs in the paper-style histogram term. It is any callable
``regulariser(inputs: RegularizerInputs) -> torch.Tensor`` (a scalar), given either to
:class:`LatentDiffusionTrainer` (``histogram_regularizer=``) or by import path in the config
(``ldm.histogram_regularizer="package.module:function"``; a class is instantiated without
arguments), and weighted by ``ldm.histogram_weight`` (0, the default, switches it off and
costs nothing). :class:`RegularizerInputs` carries the predicted clean latents (differentiable),
the true ones, the timesteps and Min-SNR weights, the nodule texture map at image resolution,
the condition, a differentiable ``decode`` (the frozen VAE decoder: latents -> model intensities),
the intensity mapping (model intensities -> HU) and the training data's reference histograms, so
the regulariser can compare histograms in latent space or on decoded patches as it sees fit.
"""

from __future__ import annotations

import hashlib
import importlib
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import Dataset

from land_core.checkpoint import CheckpointMetadata, LatentDiffusionConfig, load_checkpoint
from land_core.diffusion import NoiseSchedule, condition_dropout_mask, final_sample, sample
from land_core.errors import ConfigError
from land_core.io import write_volume
from land_core.models.unet import LandUNet, build_unet, pool_condition
from land_core.models.vae import count_parameters
from land_core.preprocess import IntensityMapping
from land_core.train.config import LDMTrainConfig
from land_core.train.data import (
    STREAM_NOISE,
    STREAM_SCALE,
    STREAM_VALIDATION,
    ImageCropDataset,
    LatentCache,
    LatentDataset,
    data_summary,
    derived_seed,
    model_grid,
    reference_statistics,
    torch_generator,
)
from land_core.train.distributed import barrier, broadcast_float
from land_core.train.loop import CheckpointPayload, StageTrainer

log = logging.getLogger("land.train")

STREAM_SAMPLE_OUT = 6


@dataclass
class RegularizerInputs:
    """What a histogram regulariser receives each step (see the module docstring).

    Latents are in VAE units (the latent scale factor divided out). Shapes: ``x0_pred`` and ``x0``
    ``(b, C, d, h, w)``; ``t`` and ``weights`` ``(b,)``; ``nodules`` ``(b, 1, f*d, f*h, f*w)`` uint8
    (0 background, 1..5 texture); ``condition`` ``(b, K, d, h, w)`` or None.
    """

    x0_pred: torch.Tensor
    x0: torch.Tensor
    t: torch.Tensor
    weights: torch.Tensor
    nodules: torch.Tensor
    condition: torch.Tensor | None
    decode: Callable[[torch.Tensor], torch.Tensor]
    intensity: IntensityMapping
    reference: dict[str, Any]


HistogramRegularizer = Callable[[RegularizerInputs], torch.Tensor]


def resolve_regularizer(spec: str) -> HistogramRegularizer:
    """``"package.module:name"`` -> the callable (a class is instantiated without arguments)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"ldm.histogram_regularizer must look like 'package.module:function', got {spec!r}")
    try:
        obj = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"ldm.histogram_regularizer {spec!r} cannot be imported ({exc})") from None
    if isinstance(obj, type):
        obj = obj()
    if not callable(obj):
        raise ConfigError(f"ldm.histogram_regularizer {spec!r} is not callable")
    return obj


def _ema_update(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA for ``AveragedModel``: decay ``min(decay, (1 + n) / (10 + n))`` after n updates."""

    def update(ema: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        for e, p in zip(ema, current):
            e.lerp_(p, 1.0 - d)

    return update


def state_fingerprint(module: nn.Module) -> str:
    """SHA-256 of a module's weights (names, shapes, bytes): tags the latent cache with its VAE."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class LatentDiffusionTrainer(StageTrainer):
    """Trains LAND's mask-conditioned denoiser; see the module docstring."""

    stage = "ldm"
    cfg: LDMTrainConfig

    def __init__(self, *args: Any, vae_checkpoint: str | Path | None = None,
                 histogram_regularizer: HistogramRegularizer | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vae_checkpoint = Path(vae_checkpoint) if vae_checkpoint else (
            Path(self.cfg.vae_checkpoint) if self.cfg.vae_checkpoint else None)
        self.regularizer = histogram_regularizer
        if self.regularizer is None and self.cfg.histogram_regularizer:
            self.regularizer = resolve_regularizer(self.cfg.histogram_regularizer)
        if self.cfg.histogram_weight > 0 and self.regularizer is None:
            raise ConfigError("ldm.histogram_weight > 0 needs a regulariser: set ldm.histogram_regularizer="
                              "'module:function' (or pass histogram_regularizer= to the trainer)")
        self.use_regularizer = self.regularizer is not None and self.cfg.histogram_weight > 0

    # ------------------------------------------------------------------ build
    def build(self, resume_from: Path | None) -> None:
        cfg, dev = self.cfg, self.device
        source = resume_from or self.vae_checkpoint
        if source is None:
            raise ConfigError("the LDM stage needs a trained VAE: give --vae CHECKPOINT (or run `land train all`)")
        ck = load_checkpoint(source, device="cpu", load_ema=True)
        self.vae_config = ck.config.vae
        self.vae_steps = ck.metadata.vae_steps
        if ck.config.intensity != self.config.intensity:
            raise ConfigError(f"{source}: the VAE was trained with intensity {ck.config.intensity.to_dict()}, the "
                              f"config says {self.config.intensity.to_dict()}; set intensity.* to match")
        try:
            LatentDiffusionConfig(vae=self.vae_config, unet=cfg.model, diffusion=cfg.diffusion,
                                  intensity=self.config.intensity)
        except ValueError as exc:
            raise ConfigError(f"ldm.model does not fit the VAE of {source}: {exc}") from None
        self.vae = ck.vae.to(dev).eval().requires_grad_(False)
        self.factor = self.vae_config.downsample_factor
        self.schedule = NoiseSchedule(cfg.diffusion)
        self.seed_init(2)
        self.unet: LandUNet = build_unet(cfg.model).to(dev)
        self.unet.gradient_checkpointing = self.config.run.gradient_checkpointing
        self.unet_forward: nn.Module = self.unet
        self.make_optimizer("unet", self.unet.parameters(), cfg.lr)
        if resume_from is not None:
            self.unet.load_state_dict(ck.unet.state_dict())  # type: ignore[union-attr]
        self.ema = AveragedModel(self.unet, multi_avg_fn=_ema_update(cfg.ema_decay))
        if resume_from is not None and ck.unet_ema is not None:
            self.ema.module.load_state_dict(ck.unet_ema.state_dict())
        self.cache: LatentCache | None = None
        if cfg.cache_latents:
            self._build_cache()
        if resume_from is not None:
            self.scale = ck.config.latent_scale_factor
        else:
            self.scale = self._latent_scale()
        self.reference = reference_statistics(self.data)  # every rank: the regulariser may use it
        if self.dist.is_main:
            log.info("ldm: U-Net %s parameters, VAE from %s, latent scale factor %.6g, global batch %d on %d "
                     "process(es), device %s%s", f"{count_parameters(self.unet):,}", source, self.scale,
                     cfg.batch_size, self.dist.world_size, dev, ", bf16 autocast" if self.use_bf16 else "")
            if self.use_regularizer:
                log.info("ldm: histogram regulariser %s with weight %g", self.regularizer, cfg.histogram_weight)

    def wrap_distributed(self) -> None:
        ids = [self.device.index] if self.device.type == "cuda" else None
        self.unet_forward = DDP(self.unet, device_ids=ids, find_unused_parameters=self.unet.extra_embed is not None)

    # ------------------------------------------------------------------ latents
    def _fingerprint(self) -> dict[str, Any]:
        return {"vae": state_fingerprint(self.vae), "intensity": self.config.intensity.to_dict(),
                "condition_mode": self.cfg.model.condition_mode, "pooling": self.cfg.model.condition_pooling,
                "factor": self.factor}

    @torch.no_grad()
    def _encode_case(self, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        x = torch.from_numpy(np.ascontiguousarray(self.data.image(i)))[None, None].to(self.device)
        mu, sigma = self.vae.encode(x)  # float32: the cache is made once, keep its precision
        cond = None
        if self.cfg.model.conditional:
            c = torch.from_numpy(self.data.condition(i, self.cfg.model.condition_mode))[None, None]
            cond = pool_condition(c, self.factor, self.cfg.model.condition_pooling)[0]
        return mu[0].float().cpu(), sigma[0].float().cpu(), cond

    def _build_cache(self) -> None:
        folder = Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.run_dir.latent_cache
        self.cache = LatentCache(folder, self._fingerprint())
        mine = [i for i in range(len(self.data)) if i % self.dist.world_size == self.dist.rank]
        todo = [i for i in mine if not self.cache.is_valid(self.data.cases[i].id)]
        if todo:
            log.info("ldm: encoding %d case(s) into the latent cache %s", len(todo), folder)
        for i in todo:
            mu, sigma, cond = self._encode_case(i)
            self.cache.write(self.data.cases[i].id, mu, sigma, cond)
        barrier(self.dist)

    def _posterior(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cache is not None:
            item = self.cache.read(self.data.cases[i].id)
            return item["mu"], item["sigma"]
        mu, sigma, _ = self._encode_case(i)
        return mu, sigma

    def _latent_scale(self) -> float:
        """``1 / std`` of ``z = mu + sigma * eps`` over the first ``scale_cases`` cases (rank 0, broadcast)."""
        if self.cfg.latent_scale_factor > 0:
            return self.cfg.latent_scale_factor
        scale = 0.0
        if self.dist.is_main:
            total, total_sq, count = 0.0, 0.0, 0
            for i in range(min(self.cfg.scale_cases, len(self.data))):
                mu, sigma = self._posterior(i)
                z = (mu + sigma * torch.randn(mu.shape, generator=torch_generator(self.config.seed, STREAM_SCALE, i))).double()
                total += float(z.sum())
                total_sq += float((z * z).sum())
                count += z.numel()
            std = math.sqrt(max(total_sq / count - (total / count) ** 2, 1e-12))
            scale = 1.0 / std
            log.info("ldm: latent std %.5g over %d case(s) -> latent scale factor %.6g",
                     std, min(self.cfg.scale_cases, len(self.data)), scale)
        return broadcast_float(scale, self.dist)

    def dataset(self, validation: bool = False) -> Dataset:
        cfg = self.cfg
        if self.cache is not None:
            return LatentDataset(self.data, self.cache, self.config.seed, cfg.latent_crop, self.factor,
                                 with_nodules=self.use_regularizer, validation=validation)
        return ImageCropDataset(self.data, self.config.seed, cfg.latent_crop, self.factor, cfg.model.condition_mode,
                                cfg.model.condition_pooling, cfg.model.conditional, with_nodules=self.use_regularizer,
                                validation=validation)

    def _batch_posterior(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "mu" in batch:
            return batch["mu"].to(self.device, non_blocking=True), batch["sigma"].to(self.device, non_blocking=True)
        with torch.no_grad():
            return self.vae.encode(batch["image"].to(self.device, non_blocking=True))

    # ------------------------------------------------------------------ step
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        cfg, dev = self.cfg, self.device
        mu, sigma = self._batch_posterior(batch)
        cond = batch["condition"].to(dev, non_blocking=True) if "condition" in batch else None
        latent = tuple(mu.shape[1:])
        ts, drops, eps_z, noise = [], [], [], []
        for g in self.per_sample_generators(batch["index"], STREAM_NOISE):
            ts.append(self.schedule.sample_timesteps(1, generator=g))
            drops.append(condition_dropout_mask(1, cfg.diffusion.condition_dropout, generator=g))
            eps_z.append(torch.randn(latent, generator=g))
            noise.append(torch.randn(latent, generator=g))
        t = torch.cat(ts).to(dev)
        drop = torch.cat(drops).to(dev) if cfg.model.conditional else None
        x0 = (mu.float() + sigma.float() * torch.stack(eps_z).to(dev)) * self.scale
        n = torch.stack(noise).to(dev)
        x_t = self.schedule.add_noise(x0, n, t)
        with self.autocast():
            out = self.unet_forward(x_t, t, cond, drop_condition=drop)
        out = out.float()
        mse = self.schedule.training_loss(out, x0, n, t)
        losses: dict[str, torch.Tensor] = {"mse": mse}
        total = mse
        if self.use_regularizer:
            x0_pred, _ = self.schedule.predict_x0_eps(out, x_t, t)
            inputs = RegularizerInputs(
                x0_pred=x0_pred / self.scale, x0=x0 / self.scale, t=t,
                weights=self.schedule.loss_weights(t).to(dev),
                nodules=batch["nodules"].to(dev), condition=cond, decode=self._decode_for_regularizer,
                intensity=self.config.intensity, reference=self.reference,
            )
            reg = self.regularizer(inputs).float()  # type: ignore[misc]
            losses["histogram"] = reg
            total = total + cfg.histogram_weight * reg
        total = self.inject_nan(total, step)
        losses["loss"] = total
        values = self.reduce_losses(losses, step)
        opt = self.optimizers["unet"]
        opt.zero_grad(set_to_none=True)
        total.backward()
        values["grad_norm"] = self.check_grad_norm(self.unet.parameters(), step, "U-Net")
        opt.step()
        self.schedulers["unet"].step()
        self.ema.update_parameters(self.unet)
        return values

    def _decode_for_regularizer(self, z: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.vae.decode(z).float()

    # ------------------------------------------------------------------ validation, checkpoint, sample
    @torch.no_grad()
    def validation_loss(self) -> float | None:
        """Min-SNR loss of the EMA U-Net on fixed samples: posterior means, timesteps spread over
        the schedule, fixed noise, the condition always on."""
        n = self.cfg.val_samples
        if n <= 0:
            return None
        ds = self.dataset(validation=True)
        net = self.ema.module
        T = self.schedule.num_train_timesteps
        losses = []
        for i in range(n):
            item = ds[i]
            batch = {k: (v[None] if isinstance(v, torch.Tensor) else v) for k, v in item.items()}
            mu, _ = self._batch_posterior(batch)
            x0 = mu.float() * self.scale
            t = torch.tensor([int((i + 0.5) * T / n)], device=self.device)
            noise = torch.randn(x0.shape[1:], generator=torch_generator(self.config.seed, STREAM_VALIDATION, i))[None]
            noise = noise.to(self.device)
            cond = batch["condition"].to(self.device) if "condition" in batch else None
            with self.autocast():
                out = net(self.schedule.add_noise(x0, noise, t), t, cond)
            losses.append(float(self.schedule.training_loss(out.float(), x0, noise, t)))
        return float(np.mean(losses))

    def checkpoint_payload(self) -> CheckpointPayload:
        cfg = self.cfg
        size, spacing = model_grid(self.data, self.factor * cfg.model.size_multiple)
        config = LatentDiffusionConfig(vae=self.vae_config, unet=cfg.model, diffusion=cfg.diffusion,
                                       intensity=self.config.intensity, latent_scale_factor=self.scale,
                                       image_size=size, image_spacing=spacing)
        meta = CheckpointMetadata(
            description=f"LAND Studio latent diffusion model ({self.config.preset} preset)",
            vae_steps=self.vae_steps, unet_steps=self.step, training_data=data_summary(self.data),
            reference_statistics=self.reference,
            extra={"stage": "ldm", "vae_checkpoint": str(self.vae_checkpoint) if self.vae_checkpoint else None,
                   "train_config": self.config.to_dict()["ldm"]},
        )
        return CheckpointPayload(config=config, vae=self.vae, unet=self.unet, unet_ema=self.ema.module, metadata=meta)

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        return {"ema.n_averaged": self.ema.n_averaged.detach().cpu()}, {"latent_scale_factor": self.scale}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        self.ema.n_averaged.copy_(tensors["ema.n_averaged"].to(self.ema.n_averaged.device))

    @torch.no_grad()
    def write_sample(self, step: int) -> dict[str, Any] | None:
        """Sample one volume with the EMA U-Net for a training case's masks; NIfTI + PNG montage."""
        from land_core.data.montage import apply_window, orthogonal_slices, save_montage

        cfg = self.cfg
        c = self.data.index_of(cfg.sample_case) if cfg.sample_case else 0
        ref = self.data.geometry(c)
        m = cfg.model.size_multiple
        latent = [(s // self.factor) // m * m for s in ref.shape]
        if min(latent) < m:
            return None
        cond = None
        if cfg.model.conditional:
            if self.cache is not None:
                full = self.cache.read(self.data.cases[c].id)["condition"]
            else:
                raw = torch.from_numpy(self.data.condition(c, cfg.model.condition_mode))[None, None]
                full = pool_condition(raw, self.factor, cfg.model.condition_pooling)[0]
            cond = full[:, : latent[0], : latent[1], : latent[2]][None].to(self.device)
        net = self.ema.module.eval()
        gen = torch.Generator(device=self.device).manual_seed(derived_seed(self.config.seed, STREAM_SAMPLE_OUT, 0))
        with self.autocast():
            model_fn = net.make_model_fn(cond, tuple(latent), guidance_scale=cfg.sample_guidance)
            z = final_sample(sample(cfg.sample_sampler, model_fn, self.schedule,
                                    (1, cfg.model.latent_channels, *latent), num_steps=cfg.sample_steps,
                                    generator=gen, device=self.device))
            image = self.vae.decode_latent(z.float() / self.scale)
        hu = self.config.intensity.model_to_hu(image[0, 0].float().cpu().numpy())
        shape = hu.shape
        vol = ref.with_array(np.full(ref.shape, int(self.config.intensity.hu_min), np.int16))
        vol.array[: shape[0], : shape[1], : shape[2]] = np.rint(hu).astype(np.int16)
        base = self.run_dir.samples / f"step_{step:06d}"
        nii = write_volume(vol, base.with_suffix(".nii.gz"))
        png = save_montage(vol, base.with_suffix(".png"),
                           title=f"sample, masks of {self.data.cases[c].id}, step {step} ({cfg.sample_steps} "
                                 f"{cfg.sample_sampler} steps)")
        if not (self.run_dir.samples / "reference.png").exists():
            save_montage(ref, self.run_dir.samples / "reference.png", title=f"{self.data.cases[c].id} (training data)")
        if self.tb is not None:
            self.tb.image("ldm/sample_axial", apply_window(orthogonal_slices(vol)["axial"][0], 1500, -600), step)
        return {"path": str(nii), "png": str(png)}
