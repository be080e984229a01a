"""The image VAE of LAND: a lightweight MAISI autoencoder, 4x downsampling per axis, 4 latent channels.

The LAND paper compresses a 256^3 CT (intensities mapped to [0, 1]) into a 4x64^3 latent with "a
lightweight variant of the MAISI architecture": 3 resolution levels, one residual block per level,
the same channels in encoder and decoder, no attention. We build it from MONAI's
``AutoencoderKlMaisi`` (not from scratch) so that

* the parameter names match MONAI/MAISI state dicts (``import_torch_state_dict`` can read them), and
* MAISI's memory savers come for free: every convolution can split its input into ``num_splits``
  chunks along one axis with a small halo (exact, since MAISI's group norm keeps global
  statistics), which bounds the convolution workspace.

Decoding a full 4x64^3 latent (256^3 output) is the memory peak of generation (the top decoder
level alone holds several 32x256^3 float tensors, 2 GiB each). ``LandVAE`` offers three ways, all
through :meth:`LandVAE.decode_latent`:

* whole (default): one pass, fastest, peak memory grows with the volume;
* ``num_splits=n``: MAISI's split convolutions; the same result as whole decoding (to float
  rounding). It bounds the convolution workspace (large for 3D cuDNN kernels on a GPU), not the
  activations: on the CPU it saves little (see ``benchmarks/bench_vae_decode.py``);
* ``tile_size=...``: MONAI's sliding-window inference on the latent with the decoder as the
  network. Peak memory is bounded by the tile, not the volume. The default ``halo`` blending is an
  overlap-tile scheme expressed as a MONAI ROI weight map: each window's outer band as wide as the
  decoder's receptive field (7 latent voxels for the presets) gets a negligible weight, so the zero
  padding at window borders never reaches the result, and the cores blend with a trapezoid.
  Without group norm this equals whole decoding to float rounding (tested); with it, each window
  normalises with its own statistics, the one remaining approximation (MAISI reports the same seams
  for small windows), so use large tiles (>= 32 latent voxels; at least 3x the halo is enforced).
  ``blend="gaussian"`` is MONAI's standard Gaussian blending, for comparison.

Presets (:func:`vae_preset`): ``land`` (the paper: channels 32/64/128, 32 groups), ``demo`` (small
enough to train and run on a 2-core CPU) and ``tiny`` (a few thousand parameters, for tests).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any, Iterator, Literal

import torch
from monai.apps.generation.maisi.networks.autoencoderkl_maisi import AutoencoderKlMaisi, MaisiConvolution
from monai.inferers import sliding_window_inference

from land_core.config import config_from_dict, config_to_dict

VAEPresetName = Literal["land", "demo", "tiny"]


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of the image VAE; saved in a checkpoint's ``config.json`` to rebuild it.

    ``channels`` has one entry per resolution level; there are ``len(channels) - 1`` downsamplings
    of 2, so 3 levels give the paper's 4x per axis. ``norm_num_groups`` must divide every entry.
    """

    in_channels: int = 1
    out_channels: int = 1
    latent_channels: int = 4
    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: tuple[int, ...] = (1, 1, 1)
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 32
    norm_eps: float = 1e-6
    with_encoder_nonlocal_attn: bool = False
    with_decoder_nonlocal_attn: bool = False
    use_convtranspose: bool = False

    def __post_init__(self) -> None:
        n = len(self.channels)
        if n < 1:
            raise ValueError("VAEConfig.channels needs at least one level")
        if len(self.num_res_blocks) != n or len(self.attention_levels) != n:
            raise ValueError(
                f"VAEConfig: channels ({n} levels), num_res_blocks ({len(self.num_res_blocks)}) and "
                f"attention_levels ({len(self.attention_levels)}) must have the same length"
            )
        bad = [c for c in self.channels if c <= 0 or c % self.norm_num_groups]
        if bad:
            raise ValueError(f"VAEConfig: norm_num_groups={self.norm_num_groups} must divide every channel count, not {bad}")
        if min(self.in_channels, self.out_channels, self.latent_channels) < 1:
            raise ValueError("VAEConfig: in/out/latent channels must be positive")

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size along each axis (4 for 3 levels)."""
        return 2 ** (len(self.channels) - 1)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the ``vae`` entry of ``config.json``)."""
        return config_to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VAEConfig":
        """Inverse of :meth:`to_dict`; unknown keys or wrong types raise ``ValueError``."""
        return config_from_dict(cls, data, "vae")


_VAE_PRESETS: dict[str, VAEConfig] = {
    # The paper's network (LAND's AutoencoderKlReducedMaisi): 3 levels, 1 res block, no attention.
    "land": VAEConfig(channels=(32, 64, 128), norm_num_groups=32),
    # Trains and decodes on a 2-core CPU: see benchmarks/bench_vae_decode.py for timings.
    "demo": VAEConfig(channels=(16, 32, 32), norm_num_groups=8),
    # A few thousand parameters, for tests.
    "tiny": VAEConfig(channels=(4, 4, 4), norm_num_groups=2),
}


def vae_preset(name: VAEPresetName, **overrides: Any) -> VAEConfig:
    """The named preset (``land``, ``demo``, ``tiny``), with fields optionally overridden."""
    try:
        base = _VAE_PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown VAE preset {name!r}; choose one of {', '.join(_VAE_PRESETS)}") from None
    return replace(base, **overrides)


class LandVAE(AutoencoderKlMaisi):
    """MONAI's ``AutoencoderKlMaisi`` built from a :class:`VAEConfig`, with LAND's decode options.

    Shapes: ``encode(x)`` takes ``(B, in_channels, D, H, W)`` with D, H, W divisible by
    ``downsample_factor`` and returns ``(mu, sigma)`` of shape ``(B, latent_channels, D/f, H/f, W/f)``;
    ``decode_latent(z)`` inverts that. Intensities are whatever the checkpoint's intensity mapping
    says (LAND: [0, 1]). The latent scale factor of the diffusion stage is *not* applied here.
    """

    def __init__(self, config: VAEConfig, save_mem: bool = False) -> None:
        super().__init__(
            spatial_dims=3,
            in_channels=config.in_channels,
            out_channels=config.out_channels,
            num_res_blocks=config.num_res_blocks,
            num_channels=config.channels,
            attention_levels=config.attention_levels,
            latent_channels=config.latent_channels,
            norm_num_groups=config.norm_num_groups,
            norm_eps=config.norm_eps,
            with_encoder_nonlocal_attn=config.with_encoder_nonlocal_attn,
            with_decoder_nonlocal_attn=config.with_decoder_nonlocal_attn,
            use_convtranspose=config.use_convtranspose,
            num_splits=1,
            dim_split=0,
            save_mem=save_mem,
        )
        self.config = config

    @property
    def downsample_factor(self) -> int:
        """Image size / latent size along each axis."""
        return self.config.downsample_factor

    # ------------------------------------------------------------------ encode
    def encode_latent(
        self, x: torch.Tensor, sample: bool = False, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Image ``(B, C, D, H, W)`` -> latent: the posterior mean, or a sample when ``sample``.

        Prefer the mean for caching training latents: cached *samples* put a floor under the
        diffusion loss (noted by MAISI). ``generator`` makes the sample reproducible.
        """
        self._check_image(x)
        mu, sigma = self.encode(x)
        if not sample:
            return mu
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + sigma * eps

    # ------------------------------------------------------------------ decode
    def decoder_halo(self) -> int | None:
        """Receptive-field radius of the decoder in latent voxels (None with attention: global).

        Convolutions at image scale ``2**i`` reach ``1 / 2**i`` latent voxels; trilinear upsampling
        reaches one voxel of its input. Group norm is global and not counted.
        """
        cfg = self.config
        if cfg.with_decoder_nonlocal_attn or any(cfg.attention_levels):
            return None
        levels = len(cfg.channels)
        radius = 1.0  # conv_in on the latent
        for i, blocks in enumerate(reversed(cfg.num_res_blocks)):
            radius += 2 * blocks / 2**i
            if i < levels - 1:
                radius += 1 / 2**i + 1 / 2 ** (i + 1)  # interpolation, then the upsample conv
        radius += 1 / 2 ** (levels - 1)  # conv_out
        return math.ceil(radius)

    def decode_latent(
        self,
        z: torch.Tensor,
        *,
        num_splits: int = 1,
        tile_size: int | tuple[int, int, int] | None = None,
        overlap: float | None = None,
        blend: Literal["halo", "gaussian", "constant"] = "halo",
        halo: int | None = None,
        sw_device: torch.device | str | None = None,
        output_device: torch.device | str | None = None,
    ) -> torch.Tensor:
        """Latent ``(B, latent_channels, d, h, w)`` -> image ``(B, out_channels, f*d, f*h, f*w)``.

        ``num_splits > 1`` splits every convolution's input in that many chunks along the first
        spatial axis (MAISI; exact). ``tile_size`` (in *latent* voxels) switches to MONAI's
        sliding-window inference with the decoder as the network; ``sw_device``/``output_device``
        let the tiles run on the GPU while the stitched volume stays in CPU memory. Blending:

        * ``halo`` (default): overlap-tile. Each window's outer ``halo`` latent voxels (default: the
          decoder's receptive field, :meth:`decoder_halo`) get a negligible weight and its core a
          trapezoid ramp, and the overlap is raised so that cores cover the volume; without the
          border effect of zero padding, only group-norm statistics differ from whole decoding.
          Needs ``tile_size >= 3 * halo`` on every tiled axis (21 latent voxels for the presets).
        * ``gaussian`` / ``constant``: MONAI's importance maps with ``overlap`` (default 0.5); the
          window borders' zero padding then leaks into the result.
        """
        self._check_latent(z)
        if tile_size is None:
            with self.splits(num_splits, z.shape[2]):
                out = self.decode(z)
            return out if output_device is None else out.to(output_device)
        roi_req = (tile_size,) * 3 if isinstance(tile_size, int) else tuple(tile_size)
        if len(roi_req) != 3 or min(roi_req) < 1:
            raise ValueError(f"tile_size must be a positive int or three of them, got {tile_size!r}")
        size = tuple(int(s) for s in z.shape[2:])
        roi = tuple(min(r, s) for r, s in zip(roi_req, size))
        weight_map = None
        if blend == "halo":
            halo = self.decoder_halo() if halo is None else int(halo)
            if halo is None:
                raise ValueError("this decoder has attention (a global receptive field): use blend='gaussian'")
            ov = []
            for r, s in zip(roi, size):
                if r == s:
                    ov.append(0.0)
                    continue
                if r < 3 * halo:  # a core thinner than the halo multiplies the windows for nothing
                    raise ValueError(f"tile_size {r} must be at least three times the halo ({halo} latent voxels)")
                ov.append(max(overlap or 0.0, 2 * halo / r))
            overlaps: float | tuple[float, ...] = tuple(ov)
            weight_map = _halo_weight_map(roi, size, halo).to(device=sw_device or z.device)
        elif blend in ("gaussian", "constant"):
            overlaps = 0.5 if overlap is None else overlap
            if not 0.0 <= overlaps < 1.0:
                raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        else:
            raise ValueError(f"blend must be 'halo', 'gaussian' or 'constant', got {blend!r}")
        with self.splits(num_splits, min(roi)):
            out = sliding_window_inference(
                z, roi, 1, self.decode, overlap=overlaps, mode="constant" if blend == "halo" else blend,
                sigma_scale=0.125, padding_mode="replicate", sw_device=sw_device, device=output_device,
                progress=False, roi_weight_map=weight_map,
            )
        return out  # type: ignore[return-value]

    @contextlib.contextmanager
    def splits(self, num_splits: int, size: int | None = None) -> Iterator[int]:
        """Temporarily set MAISI's split convolutions to ``num_splits`` chunks (clamped to ``size // 4``).

        Each chunk must be larger than the 3-voxel halo, so the count is clamped to fit the
        smallest tensor the decoder sees (the latent, of extent ``size`` on the split axis).
        """
        n = max(1, int(num_splits))
        if size is not None:
            n = max(1, min(n, size // 4))
        convs = [m for m in self.modules() if isinstance(m, MaisiConvolution)]
        old = [m.num_splits for m in convs]
        for m in convs:
            m.num_splits = n
        try:
            yield n
        finally:
            for m, o in zip(convs, old):
                m.num_splits = o

    # ------------------------------------------------------------------ checks
    def _check_image(self, x: torch.Tensor) -> None:
        f = self.downsample_factor
        if x.ndim != 5 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"VAE input must be (B, {self.config.in_channels}, D, H, W), got {tuple(x.shape)}"
            )
        if any(s % f for s in x.shape[2:]):
            raise ValueError(f"VAE input spatial size {tuple(x.shape[2:])} must be divisible by {f}")

    def _check_latent(self, z: torch.Tensor) -> None:
        if z.ndim != 5 or z.shape[1] != self.config.latent_channels:
            raise ValueError(
                f"latent must be (B, {self.config.latent_channels}, d, h, w), got {tuple(z.shape)}"
            )


def build_vae(config: VAEConfig, save_mem: bool = False) -> LandVAE:
    """Build the VAE described by ``config`` (weights freshly initialised).

    ``save_mem`` makes MAISI's blocks empty the CUDA cache after each layer: lower peak GPU memory
    for large volumes, slower; it does nothing on CPU.
    """
    return LandVAE(config, save_mem=save_mem)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


_HALO_EPS = 1e-6  # weight of a window's halo: only decides where no core reaches (the volume border)


def _halo_weight_map(roi: tuple[int, ...], size: tuple[int, ...], halo: int) -> torch.Tensor:
    """Per-window weights for halo blending: ~0 on the halo, a trapezoid over the core."""
    profiles = []
    for r, s in zip(roi, size):
        if r == s:  # a single window along this axis: no seam to hide
            profiles.append(torch.ones(r))
            continue
        d = torch.arange(r, dtype=torch.float32)
        ramp = torch.minimum((d - halo + 1) / (halo + 1), (r - halo - d) / (halo + 1)).clamp(max=1.0)
        core = (d >= halo) & (d < r - halo)
        profiles.append(torch.where(core, ramp, torch.full_like(d, _HALO_EPS)))
    return profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
