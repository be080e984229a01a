"""The denoising U-Net of LAND: 5 levels, 2 residual blocks per level, additive skips, mask conditioning.

What the paper asks for, and how it is built here from MONAI's diffusion blocks
(``monai.networks.nets.diffusion_model_unet``: ``DiffusionUNetResnetBlock``, ``SpatialTransformer``,
``DiffusionUnetDownsample``, ``WrappedUpsample``, ``get_timestep_embedding``; ``SpatialAttentionBlock``):

* **Additive skip connections.** MONAI's ``DiffusionModelUNet`` concatenates skips (its up blocks
  are built for ``in + skip`` channels), and a thin subclass cannot change that without rebuilding
  every up block, so this module assembles the same MONAI blocks in a different order. As in
  LAND's code (PatchDDM's U-Net), every down-path activation is pushed on a stack and each up-path
  block first adds the popped skip, ``h = (h + skip) / sqrt(2)`` (LAND divides by 2; sqrt(2) keeps
  the variance of two independent inputs), and outputs the channel count of the *next* skip, so no
  concatenation (and no doubled channel count) is ever needed: that is the memory saving of
  additive skips.
* **Attention at low resolution.** ``attention_levels`` marks the levels with attention after
  each residual block (``land``: only the third level, 16^3 for a 64^3 latent); the middle block
  (lowest level) always has one. In a conditional model these are MONAI ``SpatialTransformer``
  blocks (self-attention, cross-attention to the condition tokens, feed-forward); in an
  unconditional one, plain self-attention blocks.
* **The condition.** The LAND encoding (background 0, lungs 0.5, nodules texture/5) is max-pooled 4x
  to the latent grid and concatenated to the noisy latent. Max-pooling (LAND's default when no
  mask VAE is given) instead of a learned mask encoder: it is parameter-free, exact for any
  resolution, cannot forget a small nodule (a nodule voxel anywhere in a 4^3 cell survives), and
  needs no second network to train, ship and keep in sync with the encoding. One weakness of
  the plain max: ground-glass textures (0.2, 0.4) are *below* the lung value 0.5, so a cell holding
  lung and a ground-glass nodule pools to "lung" and the texture is lost. The default
  ``condition_pooling="max_split"`` therefore adds a second channel, the max of the *nodule part*
  alone (lung voxels set to 0), which keeps the texture of every nodule cell; ``"max"`` is the
  paper's single channel.
* **Cross-attention context.** The pooled condition is pooled again (adaptive max and mean) to a
  ``condition_token_grid^3`` grid (8^3 = 512 tokens), each token's features plus a Fourier encoding
  of its position embedded by a small MLP to ``cross_attention_dim``: attention to 512 tokens is
  cheap at any latent size, and the position encoding tells the network *where* a nodule is (plain
  tokens would be a bag of values).
* **Classifier-free guidance.** The null condition is an all-zero concatenated mask plus a learned
  null token as the context, and no extra embedding. ``drop_condition`` (a boolean per sample)
  applies it in training; :meth:`LandUNet.make_model_fn` batches the conditional and null passes
  at sampling time.
* **Embeddings.** A sinusoidal timestep embedding (MLP to ``4 * base_channels``), plus an optional
  ``extra_embedding`` vector of fixed size ``extra_embedding_dim`` (for histogram / subtype
  conditioning), embedded by an MLP whose last layer starts at zero and added to it; absent means
  no contribution.

Shapes (``f = mask_downsample = 4``, ``L = len(channel_multipliers)``)::

    x                (B, latent_channels, d, h, w)     d, h, w divisible by 2**(L-1)
    timesteps        (B,) long (or an int)             indices 0..T-1
    condition        (B or 1, C, f*d, f*h, f*w)        full-resolution encoding, C = 1 (0 if unconditional)
                  or (B or 1, C, d, h, w)              the encoding already on the latent grid
                  or (B or 1, K, d, h, w)              the output of pool_condition (K = 2C for max_split)
    extra_embedding  (B or 1, extra_embedding_dim) or None
    output           (B, latent_channels, d, h, w)     the model output (a velocity for LAND)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Literal

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution, SpatialAttentionBlock
from monai.networks.nets.diffusion_model_unet import (
    DiffusionUNetResnetBlock,
    DiffusionUnetDownsample,
    SpatialTransformer,
    WrappedUpsample,
    get_timestep_embedding,
    zero_module,
)
from torch import nn
from torch.utils.checkpoint import checkpoint

from land_core.masks.condition import CONDITION_MODES, LUNG_VALUE, ConditionMode, condition_channels
from land_core.config import config_from_dict, config_to_dict

UNetPresetName = Literal["land", "demo", "tiny"]
ConditionPooling = Literal["max", "max_split"]
_LUNG_TOLERANCE = 0.05  # a voxel within this of LUNG_VALUE is lung, not nodule (textures are 0.2 apart)


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of the denoising U-Net; saved in a checkpoint's ``config.json`` to rebuild it.

    ``condition_mode`` (one of :data:`land_core.masks.condition.CONDITION_MODES`) decides the
    number of condition channels (0 for ``unconditional``: no mask input, no cross-attention).
    Every ``base_channels * multiplier`` must be divisible by ``norm_num_groups``.
    """

    latent_channels: int = 4
    condition_mode: ConditionMode = "nodule_lung_texture"
    condition_pooling: ConditionPooling = "max_split"
    mask_downsample: int = 4
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 3, 4, 4, 4)
    num_res_blocks: int = 2
    attention_levels: tuple[bool, ...] = (False, False, True, False, False)
    mid_attention: bool = True
    num_head_channels: int = 64
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    cross_attention_dim: int = 64
    condition_token_grid: int = 8
    extra_embedding_dim: int = 0
    transformer_num_layers: int = 1

    def __post_init__(self) -> None:
        if self.condition_mode not in CONDITION_MODES:
            raise ValueError(f"condition_mode must be one of {', '.join(CONDITION_MODES)}, got {self.condition_mode!r}")
        if self.condition_pooling not in ("max", "max_split"):
            raise ValueError(f"condition_pooling must be 'max' or 'max_split', got {self.condition_pooling!r}")
        if len(self.attention_levels) != len(self.channel_multipliers):
            raise ValueError(
                f"attention_levels ({len(self.attention_levels)}) and channel_multipliers "
                f"({len(self.channel_multipliers)}) must have one entry per level"
            )
        bad = [c for c in self.channels if c <= 0 or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"norm_num_groups={self.norm_num_groups} must divide every level's channels, not {bad}")
        for name in ("latent_channels", "mask_downsample", "num_res_blocks", "num_head_channels",
                     "cross_attention_dim", "condition_token_grid", "transformer_num_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.extra_embedding_dim < 0:
            raise ValueError(f"extra_embedding_dim must be >= 0, got {self.extra_embedding_dim}")

    # ------------------------------------------------------------------ derived
    @property
    def channels(self) -> tuple[int, ...]:
        """Channels per level, ``base_channels * multiplier``."""
        return tuple(self.base_channels * m for m in self.channel_multipliers)

    @property
    def condition_channels(self) -> int:
        """Channels of the condition encoding for ``condition_mode`` (0 when unconditional)."""
        return condition_channels(self.condition_mode)

    @property
    def conditional(self) -> bool:
        """True unless the mode is ``unconditional``."""
        return self.condition_channels > 0

    @property
    def pooled_condition_channels(self) -> int:
        """Channels concatenated to the latent: C for ``max``, 2C for ``max_split``."""
        return self.condition_channels * (2 if self.condition_pooling == "max_split" else 1)

    @property
    def size_multiple(self) -> int:
        """The latent's spatial size must be a multiple of this (``2 ** (levels - 1)``)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``unet`` entry of ``config.json``)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UNetConfig":
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ``ValueError``."""
        return config_from_dict(cls, data, "unet")


_UNET_PRESETS: dict[str, UNetConfig] = {
    # LAND: 128 base channels, multipliers 1,3,4,4,4, 2 res blocks, attention only at 16^3 (64^3 latent).
    "land": UNetConfig(),
    # Runs on a 2-core CPU: a 4x32^3 latent, attention at 8^3 and in the 2^3 middle.
    "demo": UNetConfig(base_channels=32, channel_multipliers=(1, 2, 2, 4, 4), num_head_channels=32,
                       norm_num_groups=16, cross_attention_dim=32),
    # For tests: 4x16^3 latents, a few tens of thousands of parameters.
    "tiny": UNetConfig(base_channels=8, channel_multipliers=(1, 1, 2, 2, 2), num_res_blocks=2,
                       attention_levels=(False, False, True, False, False), num_head_channels=8,
                       norm_num_groups=4, cross_attention_dim=8, condition_token_grid=4),
}


def unet_preset(name: UNetPresetName, **overrides: Any) -> UNetConfig:
    """The named preset (``land``, ``demo``, ``tiny``), with fields optionally overridden."""
    try:
        base = _UNET_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown U-Net preset {name!r}; choose one of {', '.join(_UNET_PRESETS)}") from None
    return replace(base, **overrides)


# ---------------------------------------------------------------------------------- condition


def pool_condition(condition: torch.Tensor, factor: int, pooling: ConditionPooling = "max_split") -> torch.Tensor:
    """LAND condition encoding ``(B, C, D, H, W)`` -> latent-grid features ``(B, K, D/f, H/f, W/f)``.

    ``max``: max-pooling by ``factor`` (K = C). ``max_split``: also the max-pooled nodule part, with
    lung voxels (value 0.5) zeroed, so ground-glass textures survive next to lung (K = 2C).
    Pure and cheap: trainers can cache it next to the latents.
    """
    if condition.ndim != 5:
        raise ValueError(f"condition must be (B, C, D, H, W), got {tuple(condition.shape)}")
    if any(s % factor for s in condition.shape[2:]):
        raise ValueError(f"condition spatial size {tuple(condition.shape[2:])} is not divisible by {factor}")
    condition = condition.float()
    pooled = F.max_pool3d(condition, factor) if factor > 1 else condition
    if pooling == "max":
        return pooled
    nodule = torch.where((condition - LUNG_VALUE).abs() <= _LUNG_TOLERANCE, torch.zeros_like(condition), condition)
    nodule = F.max_pool3d(nodule, factor) if factor > 1 else nodule
    return torch.cat([pooled, nodule], dim=1)


def _fourier_positions(grid: int, num_freqs: int) -> torch.Tensor:
    """``(grid^3, 6 * num_freqs)`` sin/cos features of the token centres in [-1, 1]^3."""
    axis = (torch.arange(grid, dtype=torch.float32) + 0.5) / grid * 2.0 - 1.0
    zz, yy, xx = torch.meshgrid(axis, axis, axis, indexing="ij")
    coords = torch.stack([zz, yy, xx], dim=-1).reshape(-1, 3)  # token order = flattened (z, y, x)
    freqs = (2.0 ** torch.arange(num_freqs, dtype=torch.float32)) * math.pi
    angles = coords[:, :, None] * freqs[None, None, :]  # (T, 3, F)
    return torch.cat([angles.sin(), angles.cos()], dim=-1).reshape(coords.shape[0], -1)


class ConditionTokenizer(nn.Module):
    """Latent-grid condition features -> ``grid^3`` context tokens for cross-attention.

    Each token sees the adaptive max and mean of every feature channel over its cell, plus a
    Fourier encoding of its position, embedded by a two-layer MLP to ``dim``.
    """

    def __init__(self, in_channels: int, grid: int, dim: int, num_freqs: int = 4) -> None:
        super().__init__()
        self.grid = grid
        self.register_buffer("positions", _fourier_positions(grid, num_freqs), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * in_channels + 6 * num_freqs, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        g = self.grid
        feats = torch.cat([F.adaptive_max_pool3d(pooled, g), F.adaptive_avg_pool3d(pooled, g)], dim=1)
        feats = feats.flatten(2).transpose(1, 2)  # (B, g^3, 2K)
        pos = self.positions.to(feats.dtype).expand(feats.shape[0], -1, -1)
        return self.mlp(torch.cat([feats, pos], dim=-1))


# ---------------------------------------------------------------------------------- blocks


class _ResAttn(nn.Module):
    """A MONAI residual block with timestep embedding, optionally followed by attention."""

    def __init__(self, cfg: UNetConfig, in_ch: int, out_ch: int, temb_ch: int, attention: bool, flash: bool) -> None:
        super().__init__()
        self.resnet = DiffusionUNetResnetBlock(
            spatial_dims=3, in_channels=in_ch, out_channels=out_ch, temb_channels=temb_ch,
            norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
        )
        heads = max(1, out_ch // cfg.num_head_channels)
        head_dim = cfg.num_head_channels if out_ch >= cfg.num_head_channels else out_ch
        self.cross = attention and cfg.conditional
        self.attn: nn.Module | None = None
        if attention and cfg.conditional:
            self.attn = SpatialTransformer(
                spatial_dims=3, in_channels=out_ch, num_attention_heads=heads, num_head_channels=head_dim,
                num_layers=cfg.transformer_num_layers, norm_num_groups=cfg.norm_num_groups, norm_eps=cfg.norm_eps,
                cross_attention_dim=cfg.cross_attention_dim, use_flash_attention=flash,
            )
        elif attention:
            self.attn = SpatialAttentionBlock(
                spatial_dims=3, num_channels=out_ch, num_head_channels=head_dim, norm_num_groups=cfg.norm_num_groups,
                norm_eps=cfg.norm_eps, use_flash_attention=flash,
            )

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        h = self.resnet(h, temb)
        if self.attn is not None:
            h = self.attn(h, context=context) if self.cross else self.attn(h)
        return h


class _Down(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        self.op = DiffusionUnetDownsample(spatial_dims=3, num_channels=ch, use_conv=True, out_channels=ch, padding=1)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.op(h)


class _Up(nn.Module):
    def __init__(self, ch: int) -> None:
        super().__init__()
        post = Convolution(spatial_dims=3, in_channels=ch, out_channels=ch, strides=1, kernel_size=3, padding=1,
                           conv_only=True)
        self.op = WrappedUpsample(spatial_dims=3, mode="nontrainable", in_channels=ch, out_channels=ch,
                                  interp_mode="nearest", scale_factor=2.0, post_conv=post, align_corners=None)

    def forward(self, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        return self.op(h)


# ---------------------------------------------------------------------------------- network


class LandUNet(nn.Module):
    """LAND's denoiser, built from a :class:`UNetConfig`; see the module docstring for shapes."""

    def __init__(self, config: UNetConfig, use_flash_attention: bool = True) -> None:
        super().__init__()
        self.config = cfg = config
        self.gradient_checkpointing = False
        ch = cfg.channels
        temb_ch = 4 * cfg.base_channels
        self.time_embed = nn.Sequential(nn.Linear(cfg.base_channels, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch))
        self.extra_embed: nn.Module | None = None
        if cfg.extra_embedding_dim:
            self.extra_embed = nn.Sequential(
                nn.Linear(cfg.extra_embedding_dim, temb_ch), nn.SiLU(), zero_module(nn.Linear(temb_ch, temb_ch))
            )
        self.tokenizer: ConditionTokenizer | None = None
        self.null_context: nn.Parameter | None = None
        if cfg.conditional:
            self.tokenizer = ConditionTokenizer(cfg.pooled_condition_channels, cfg.condition_token_grid,
                                                cfg.cross_attention_dim)
            self.null_context = nn.Parameter(0.02 * torch.randn(1, 1, cfg.cross_attention_dim))

        self.conv_in = Convolution(spatial_dims=3, in_channels=cfg.latent_channels + cfg.pooled_condition_channels,
                                   out_channels=ch[0], strides=1, kernel_size=3, padding=1, conv_only=True)
        skip_ch = [ch[0]]
        self.down = nn.ModuleList()
        prev = ch[0]
        for level, c in enumerate(ch):
            for _ in range(cfg.num_res_blocks):
                self.down.append(_ResAttn(cfg, prev, c, temb_ch, cfg.attention_levels[level], use_flash_attention))
                prev = c
                skip_ch.append(c)
            if level < len(ch) - 1:
                self.down.append(_Down(c))
                skip_ch.append(c)
        self.mid = nn.ModuleList([
            _ResAttn(cfg, prev, prev, temb_ch, cfg.mid_attention, use_flash_attention),
            _ResAttn(cfg, prev, prev, temb_ch, False, use_flash_attention),
        ])
        # Up path: each block consumes one skip and outputs the channels of the next one.
        self.up = nn.ModuleList()
        for level in reversed(range(len(ch))):
            for _ in range(cfg.num_res_blocks):
                skip_ch.pop()
                nxt = skip_ch[-1]
                self.up.append(_ResAttn(cfg, prev, nxt, temb_ch, cfg.attention_levels[level], use_flash_attention))
                prev = nxt
            if level > 0:
                skip_ch.pop()
                self.up.append(_Up(prev))
        assert skip_ch == [ch[0]] and prev == ch[0]  # the conv_in skip is added before the output head
        self.out = nn.Sequential(
            nn.GroupNorm(cfg.norm_num_groups, ch[0], eps=cfg.norm_eps),
            nn.SiLU(),
            zero_module(Convolution(spatial_dims=3, in_channels=ch[0], out_channels=cfg.latent_channels, strides=1,
                                    kernel_size=3, padding=1, conv_only=True)),
        )

    # ------------------------------------------------------------------ condition
    def prepare_condition(self, condition: torch.Tensor, latent_shape: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition (full resolution, latent grid, or pooled) -> (pooled features, context tokens).

        Do it once per generation and pass the result to :meth:`forward_prepared`; that is what
        :meth:`make_model_fn` does.
        """
        cfg = self.config
        if not cfg.conditional:
            raise ValueError("this U-Net is unconditional: give no condition")
        if condition.ndim != 5:
            raise ValueError(f"condition must be (B, C, D, H, W), got {tuple(condition.shape)}")
        spatial = tuple(condition.shape[2:])
        full = tuple(s * cfg.mask_downsample for s in latent_shape)
        if spatial == full and condition.shape[1] == cfg.condition_channels:
            pooled = pool_condition(condition, cfg.mask_downsample, cfg.condition_pooling)
        elif spatial == tuple(latent_shape) and condition.shape[1] == cfg.pooled_condition_channels:
            pooled = condition.float()
        elif spatial == tuple(latent_shape) and condition.shape[1] == cfg.condition_channels:
            pooled = pool_condition(condition, 1, cfg.condition_pooling)
        else:
            raise ValueError(
                f"condition of shape {tuple(condition.shape)} fits neither the full resolution "
                f"(B, {cfg.condition_channels}, {full}) nor the latent grid (B, {cfg.condition_channels} or "
                f"{cfg.pooled_condition_channels}, {tuple(latent_shape)})"
            )
        pooled = pooled.to(self.conv_in.conv.weight.dtype)
        return pooled, self.tokenizer(pooled)  # type: ignore[misc]

    def _null(self, batch: int, like: torch.Tensor, latent_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        pooled = like.new_zeros((batch, cfg.pooled_condition_channels, *latent_shape))
        tokens = cfg.condition_token_grid**3
        return pooled, self.null_context.to(like.dtype).expand(batch, tokens, -1)  # type: ignore[union-attr]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int,
        condition: torch.Tensor | None = None,
        extra_embedding: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the model output (a velocity for LAND) for noisy latents ``x`` at ``timesteps``.

        ``condition`` None means the null condition (classifier-free guidance's unconditional
        branch) in a conditional model, and is required to be None in an unconditional one.
        ``drop_condition`` (bool ``(B,)``) replaces the condition *and* the extra embedding of the
        marked samples by the null condition: condition dropout for CFG training.
        """
        self._check_latent(x)
        latent_shape = tuple(x.shape[2:])
        pooled = context = None
        if self.config.conditional:
            if condition is None:
                pooled, context = self._null(x.shape[0], x, latent_shape)
            else:
                pooled, context = self.prepare_condition(condition, latent_shape)  # type: ignore[arg-type]
        elif condition is not None:
            raise ValueError("this U-Net is unconditional (condition_mode='unconditional'): give no condition")
        return self.forward_prepared(x, timesteps, pooled, context, extra_embedding, drop_condition)

    def forward_prepared(
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor | int,
        pooled: torch.Tensor | None,
        context: torch.Tensor | None,
        extra_embedding: torch.Tensor | None = None,
        drop_condition: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """:meth:`forward` with the condition already through :meth:`prepare_condition`."""
        cfg = self.config
        batch = x.shape[0]
        keep = None
        if drop_condition is not None:
            drop_condition = drop_condition.to(device=x.device, dtype=torch.bool).reshape(batch)
            keep = (~drop_condition).to(x.dtype)
        if cfg.conditional:
            pooled = pooled.expand(batch, -1, -1, -1, -1)  # type: ignore[union-attr]
            context = context.expand(batch, -1, -1)  # type: ignore[union-attr]
            if drop_condition is not None:
                null_pooled, null_context = self._null(batch, x, tuple(x.shape[2:]))
                pooled = torch.where(drop_condition[:, None, None, None, None], null_pooled, pooled)
                context = torch.where(drop_condition[:, None, None], null_context, context)
            h = self.conv_in(torch.cat([x, pooled.to(x.dtype)], dim=1))
        else:
            h = self.conv_in(x)

        t = torch.as_tensor(timesteps, device=x.device)
        if t.ndim == 0:
            t = t.expand(batch)
        temb = self.time_embed(get_timestep_embedding(t.reshape(batch), cfg.base_channels).to(x.dtype))
        if extra_embedding is not None:
            if self.extra_embed is None:
                raise ValueError("this U-Net has no extra embedding (extra_embedding_dim = 0)")
            if extra_embedding.ndim == 2 and extra_embedding.shape[0] == 1:
                extra_embedding = extra_embedding.expand(batch, -1)
            if extra_embedding.shape != (batch, cfg.extra_embedding_dim):
                raise ValueError(f"extra_embedding must be ({batch}, {cfg.extra_embedding_dim}), got {tuple(extra_embedding.shape)}")
            e = self.extra_embed(extra_embedding.to(x.dtype))
            temb = temb + (e if keep is None else e * keep[:, None])

        skips = [h]
        for block in self.down:
            h = self._run(block, h, temb, context)
            skips.append(h)
        for block in self.mid:
            h = self._run(block, h, temb, context)
        scale = 1.0 / math.sqrt(2.0)
        for block in self.up:
            h = self._run(block, (h + skips.pop()) * scale, temb, context)
        h = (h + skips.pop()) * scale
        return self.out(h)

    def _run(self, block: nn.Module, h: torch.Tensor, temb: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, h, temb, context, use_reentrant=False)
        return block(h, temb, context)

    def _check_latent(self, x: torch.Tensor) -> None:
        cfg = self.config
        if x.ndim != 5 or x.shape[1] != cfg.latent_channels:
            raise ValueError(f"x must be (B, {cfg.latent_channels}, d, h, w), got {tuple(x.shape)}")
        m = cfg.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"latent spatial size {tuple(x.shape[2:])} must be a multiple of {m} ({len(cfg.channels)} levels)")

    # ------------------------------------------------------------------ sampling
    def make_model_fn(
        self,
        condition: torch.Tensor | None,
        latent_shape: tuple[int, int, int],
        extra_embedding: torch.Tensor | None = None,
        guidance_scale: float = 1.0,
    ) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """A ``model_fn(x_t, t) -> v`` for :mod:`land_core.diffusion.samplers`, condition prepared once.

        ``guidance_scale`` 1 is the plain conditional model; any other value runs the conditional
        and the null condition in one batch and mixes them, ``v_null + s * (v_cond - v_null)``
        (0 = unconditional). ``condition`` may have batch 1 and is broadcast to the batch of ``x``.
        Call it under ``torch.no_grad()`` (or ``inference_mode``).
        """
        cfg = self.config
        if not cfg.conditional:
            if condition is not None:
                raise ValueError("this U-Net is unconditional: give no condition")

            def uncond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.forward_prepared(x, t, None, None, extra_embedding)

            return uncond_fn
        if condition is None:
            pooled, context = self._null(1, self.conv_in.conv.weight, tuple(latent_shape))
            guidance_scale = 1.0
        else:
            pooled, context = self.prepare_condition(condition, tuple(latent_shape))

        if guidance_scale == 1.0:
            def cond_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
                return self.forward_prepared(x, t, pooled, context, extra_embedding)

            return cond_fn

        def guided_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            b = x.shape[0]
            drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x.device)
            extra = None if extra_embedding is None else torch.cat([extra_embedding.expand(b, -1)] * 2)
            out = self.forward_prepared(
                torch.cat([x, x]), torch.cat([t, t]), pooled.expand(b, -1, -1, -1, -1).repeat(2, 1, 1, 1, 1),
                context.expand(b, -1, -1).repeat(2, 1, 1), extra, drop,
            )
            cond, null = out[:b], out[b:]
            return null + guidance_scale * (cond - null)

        return guided_fn


def build_unet(config: UNetConfig, use_flash_attention: bool = True) -> LandUNet:
    """Build the U-Net described by ``config`` (weights freshly initialised).

    ``use_flash_attention`` uses ``torch.nn.functional.scaled_dot_product_attention`` (memory
    efficient on GPU, works on CPU); it changes no weights.
    """
    return LandUNet(config, use_flash_attention=use_flash_attention)
