"""Model checkpoints: a folder of safetensors weights, ``config.json`` and ``metadata.json``.

Layout (DESIGN.md rule 3)::

    my-model/
      config.json            format + version, vae / unet / diffusion configs, conditioning mode,
                             intensity mapping, latent scale factor: enough to rebuild the networks
      metadata.json          what it was trained on, steps, reference statistics, land_core version
      vae.safetensors        image VAE weights
      unet.safetensors       denoiser weights (absent in a VAE-only checkpoint: "unet": null)
      unet_ema.safetensors   optional exponential moving average of the denoiser

Loading validates everything before touching a network (missing files, broken JSON, unknown keys,
wrong types, tensors missing, unexpected or of the wrong shape for the config) and raises a
:class:`CheckpointError` naming the file and the problem. Nothing is ever unpickled: weights are
read with safetensors, and :func:`import_torch_state_dict` reads a ``.pt`` file only with
``torch.load(weights_only=True)``. Saving writes the whole folder under a temporary name next to
the target and renames it into place, so a crash never leaves half a checkpoint where a good one
was.

This module sits at the top of ``land_core`` (not in ``models``) because a checkpoint bundles the
networks with the diffusion process and the intensity mapping; ``train`` and ``generate`` use it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import shutil
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import land_core
from land_core.diffusion.schedule import DiffusionConfig
from land_core.errors import CheckpointError
from land_core.io.atomic import current_umask
from land_core.masks.condition import ConditionMode
from land_core.config import config_from_dict
from land_core.models.unet import LandUNet, UNetConfig, build_unet
from land_core.models.vae import LandVAE, VAEConfig, build_vae
from land_core.preprocess import IntensityMapping

FORMAT_NAME = "land-studio-checkpoint"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
METADATA_FILE = "metadata.json"
VAE_FILE = "vae.safetensors"
UNET_FILE = "unet.safetensors"
UNET_EMA_FILE = "unet_ema.safetensors"


# ---------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class LatentDiffusionConfig:
    """Everything ``config.json`` holds: the networks, the process, and how to read their outputs.

    ``unet`` is None for a VAE-only checkpoint (the first training stage). The conditioning mode
    is the U-Net's ``condition_mode`` (written at the top level too, for people and other tools).
    ``latent_scale_factor`` multiplies VAE latents before diffusion (and divides samples before
    decoding), to give them roughly unit variance.

    ``image_size`` and ``image_spacing`` are the model's grid: the cube (voxels per axis, isotropic
    mm) it was trained on and generates on (LAND: 256 voxels at 1 mm).
    :func:`land_core.generation_grid.plan_model_grid` fits a person's condition onto it. Configs
    written before these fields existed load with the defaults (the paper's grid).
    """

    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig | None = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    intensity: IntensityMapping = field(default_factory=IntensityMapping)
    latent_scale_factor: float = 1.0
    image_size: int = 256
    image_spacing: float = 1.0

    def __post_init__(self) -> None:
        if not (np.isfinite(self.latent_scale_factor) and self.latent_scale_factor > 0):
            raise ValueError(f"latent_scale_factor must be positive, got {self.latent_scale_factor}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise ValueError(f"image_size must be a positive number of voxels, got {self.image_size!r}")
        if not (np.isfinite(self.image_spacing) and self.image_spacing > 0):
            raise ValueError(f"image_spacing must be a positive number of mm, got {self.image_spacing!r}")
        f = self.vae.downsample_factor
        if self.image_size % f:
            raise ValueError(f"image_size ({self.image_size}) must be a multiple of the VAE's downsampling ({f})")
        if self.unet is not None and (self.image_size // f) % self.unet.size_multiple:
            raise ValueError(
                f"image_size ({self.image_size}) gives a {self.image_size // f}-voxel latent, which the U-Net "
                f"({len(self.unet.channel_multipliers)} levels) needs to be a multiple of {self.unet.size_multiple}"
            )
        if self.unet is not None:
            if self.unet.latent_channels != self.vae.latent_channels:
                raise ValueError(
                    f"unet.latent_channels ({self.unet.latent_channels}) differs from vae.latent_channels "
                    f"({self.vae.latent_channels})"
                )
            if self.unet.mask_downsample != self.vae.downsample_factor:
                raise ValueError(
                    f"unet.mask_downsample ({self.unet.mask_downsample}) differs from the VAE's downsampling "
                    f"({self.vae.downsample_factor})"
                )

    @property
    def conditioning_mode(self) -> ConditionMode | None:
        """The U-Net's condition mode (None for a VAE-only checkpoint)."""
        return None if self.unet is None else self.unet.condition_mode

    @property
    def latent_size(self) -> int:
        """Voxels per axis of the model's latent grid (``image_size / vae.downsample_factor``)."""
        return self.image_size // self.vae.downsample_factor

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "conditioning_mode": self.conditioning_mode,
            "latent_scale_factor": self.latent_scale_factor,
            "image_size": self.image_size,
            "image_spacing": self.image_spacing,
            "intensity": self.intensity.to_dict(),
            "vae": self.vae.to_dict(),
            "unet": None if self.unet is None else self.unet.to_dict(),
            "diffusion": self.diffusion.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LatentDiffusionConfig":
        """Inverse of :meth:`to_dict`; raises ``ValueError`` naming the bad key."""
        if not isinstance(data, dict):
            raise ValueError(f"the config must be a JSON object, got {type(data).__name__}")
        known = {"format", "format_version", "conditioning_mode", "latent_scale_factor", "intensity", "vae", "unet",
                 "diffusion", "image_size", "image_spacing"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"'format' must be {FORMAT_NAME!r}, got {data.get('format')!r}")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(f"format_version {version!r} is not supported (this version reads 1..{FORMAT_VERSION})")
        for key in ("vae", "diffusion"):
            if key not in data:
                raise ValueError(f"missing key {key!r}")
        scale = data.get("latent_scale_factor", 1.0)
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise ValueError(f"latent_scale_factor must be a number, got {scale!r}")
        size = data.get("image_size", 256)  # absent in configs written before the model grid was stored
        if isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f"image_size must be an integer, got {size!r}")
        spacing = data.get("image_spacing", 1.0)
        if isinstance(spacing, bool) or not isinstance(spacing, (int, float)):
            raise ValueError(f"image_spacing must be a number, got {spacing!r}")
        unet = None if data.get("unet") is None else UNetConfig.from_dict(data["unet"])
        config = cls(
            vae=VAEConfig.from_dict(data["vae"]),
            unet=unet,
            diffusion=DiffusionConfig.from_dict(data["diffusion"]),
            intensity=IntensityMapping.from_dict(data.get("intensity", {})),
            latent_scale_factor=float(scale),
            image_size=size,
            image_spacing=float(spacing),
        )
        mode = data.get("conditioning_mode")
        if mode != config.conditioning_mode:
            raise ValueError(f"conditioning_mode {mode!r} differs from unet.condition_mode {config.conditioning_mode!r}")
        return config


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class CheckpointMetadata:
    """What ``metadata.json`` holds: provenance and reference statistics (free-form JSON objects).

    ``training_data``: a summary of the data (e.g. ``{"dataset": "LIDC-IDRI", "cases": 1010}``);
    ``reference_statistics``: e.g. reference HU histograms per nodule subtype for the app and the
    metrics; ``extra``: anything else. ``land_version`` is the ``land_core.__version__`` that wrote it.
    """

    land_version: str = land_core.__version__
    created: str = field(default_factory=_now)
    description: str = ""
    vae_steps: int = 0
    unet_steps: int = 0
    training_data: dict = field(default_factory=dict)
    reference_statistics: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CheckpointMetadata":
        return config_from_dict(cls, data, "metadata")

    @property
    def recommended_guidance(self) -> float:
        """The guidance scale this model's card recommends (``extra.recommended.guidance_scale``), else 1."""
        recommended = self.extra.get("recommended")
        value = recommended.get("guidance_scale") if isinstance(recommended, dict) else None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            return 1.0
        return float(value)

    def recommend_guidance(self, scale: float) -> None:
        """Record the guidance scale generation should use with this model when none is asked for."""
        if not scale > 0:
            raise ValueError(f"a recommended guidance scale must be positive, got {scale}")
        self.extra = {**self.extra, "recommended": {**self.extra.get("recommended", {}), "guidance_scale": float(scale)}}


# ---------------------------------------------------------------------------------- save


@dataclass
class LandCheckpoint:
    """A loaded checkpoint: its configs, metadata and networks (in eval mode)."""

    path: Path
    config: LatentDiffusionConfig
    metadata: CheckpointMetadata
    vae: LandVAE
    unet: LandUNet | None
    unet_ema: LandUNet | None

    @property
    def denoiser(self) -> LandUNet | None:
        """The network to sample with: the EMA weights when present, else the raw ones."""
        return self.unet_ema if self.unet_ema is not None else self.unet


def _state_dict(obj: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    sd = obj.state_dict() if isinstance(obj, nn.Module) else dict(obj)
    # clone: safetensors refuses tensors sharing storage, and the copy is detached from training
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def save_checkpoint(
    folder: str | os.PathLike,
    config: LatentDiffusionConfig,
    vae: nn.Module | Mapping[str, torch.Tensor],
    unet: nn.Module | Mapping[str, torch.Tensor] | None = None,
    unet_ema: nn.Module | Mapping[str, torch.Tensor] | None = None,
    metadata: CheckpointMetadata | None = None,
    overwrite: bool = False,
    dtype: torch.dtype | None = None,
    extra_files: Mapping[str, bytes] | None = None,
) -> Path:
    """Write a checkpoint folder atomically and return its path.

    ``vae``/``unet``/``unet_ema`` are modules or state dicts; they are checked against ``config``
    before anything is written (a mismatch raises :class:`CheckpointError`). ``unet`` is required
    when ``config.unet`` is set and refused when it is None. An existing folder is replaced only
    with ``overwrite=True``. ``dtype`` (e.g. ``torch.float16``) stores floating-point weights in
    that type (loading casts them back into the networks' float32); ``extra_files`` (name ->
    bytes, e.g. a model card ``README.md``) are written into the folder in the same atomic step.
    """
    target = Path(folder)
    if target.exists() and not overwrite:
        raise CheckpointError(target, "already exists (pass overwrite=True to replace it)")
    if (config.unet is None) != (unet is None):
        raise CheckpointError(target, "config.unet and the unet weights must be given together"
                              if config.unet is not None else "unet weights given for a VAE-only config")
    if unet_ema is not None and unet is None:
        raise CheckpointError(target, "unet_ema given without unet")
    metadata = metadata or CheckpointMetadata()
    weights = {VAE_FILE: _state_dict(vae)}
    if unet is not None:
        weights[UNET_FILE] = _state_dict(unet)
    if unet_ema is not None:
        weights[UNET_EMA_FILE] = _state_dict(unet_ema)
    for name, sd in weights.items():  # validate against fresh networks built from the config
        _check_state_dict(target / name, sd, _expected_shapes(config, name))
    if dtype is not None:
        weights = {name: {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in sd.items()}
                   for name, sd in weights.items()}
    reserved = set(weights) | {CONFIG_FILE, METADATA_FILE}
    for name in extra_files or {}:
        if name in reserved or Path(name).name != name or name.startswith("."):
            raise CheckpointError(target / name, "cannot be an extra file of a checkpoint (reserved or not a plain "
                                                 "file name)")

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private; a checkpoint is a plain folder
        for name, sd in weights.items():
            save_file(sd, str(tmp / name), metadata={"format": "pt", "land_component": name.split(".")[0],
                                                      "land_version": land_core.__version__})
        (tmp / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / METADATA_FILE).write_text(json.dumps(metadata.to_dict(), indent=2) + "\n", encoding="utf-8")
        for name, data in (extra_files or {}).items():
            (tmp / name).write_bytes(data)
        _fsync_tree(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


# ---------------------------------------------------------------------------------- load


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise CheckpointError(path, "is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise CheckpointError(path, f"is not UTF-8 text ({exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(path, f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None


def read_checkpoint_info(folder: str | os.PathLike) -> tuple[LatentDiffusionConfig, CheckpointMetadata]:
    """Read and validate ``config.json`` and ``metadata.json`` without loading any weights."""
    root = Path(folder)
    if not root.is_dir():
        raise CheckpointError(root, "is not a checkpoint folder" + ("" if root.exists() else " (it does not exist)"))
    try:
        config = LatentDiffusionConfig.from_dict(_read_json(root / CONFIG_FILE))
    except ValueError as exc:
        raise CheckpointError(root / CONFIG_FILE, str(exc)) from None
    try:
        metadata = CheckpointMetadata.from_dict(_read_json(root / METADATA_FILE))
    except ValueError as exc:
        raise CheckpointError(root / METADATA_FILE, str(exc)) from None
    return config, metadata


def _expected_shapes(config: LatentDiffusionConfig, file_name: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = build_vae(config.vae) if file_name == VAE_FILE else build_unet(config.unet)  # type: ignore[arg-type]
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _check_state_dict(path: Path, sd: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raise CheckpointError listing missing, unexpected and mis-shaped tensors."""
    problems = []
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    wrong = sorted(k for k in set(sd) & set(expected) if tuple(sd[k].shape) != tuple(expected[k]))
    if missing:
        problems.append(f"{len(missing)} tensor(s) missing, e.g. {', '.join(missing[:3])}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s), e.g. {', '.join(unexpected[:3])}")
    if wrong:
        problems.append(
            f"{len(wrong)} tensor(s) with the wrong shape for the config, e.g. "
            + ", ".join(f"{k} {tuple(sd[k].shape)} (expected {tuple(expected[k])})" for k in wrong[:3])
        )
    bad_values = [k for k in sd if sd[k].is_floating_point() and not torch.isfinite(sd[k]).all()] if not problems else []
    if bad_values:
        problems.append(f"non-finite values in {', '.join(bad_values[:3])}")
    if problems:
        raise CheckpointError(path, "; ".join(problems))


def _load_weights(path: Path, model: nn.Module, device: torch.device | str) -> None:
    if not path.is_file():
        raise CheckpointError(path, "is missing")
    try:
        sd = load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(path, f"is not a readable safetensors file ({exc})") from None
    _check_state_dict(path, sd, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(sd, strict=True)


def load_checkpoint(
    folder: str | os.PathLike,
    device: torch.device | str = "cpu",
    load_ema: bool = True,
    use_flash_attention: bool = True,
) -> LandCheckpoint:
    """Load and validate a checkpoint folder; networks are returned on ``device`` in eval mode.

    Every problem raises :class:`CheckpointError` naming the file. ``load_ema=False`` skips the
    EMA weights even when present.
    """
    root = Path(folder)
    config, metadata = read_checkpoint_info(root)
    vae = build_vae(config.vae)
    _load_weights(root / VAE_FILE, vae, "cpu")
    unet = unet_ema = None
    if config.unet is not None:
        unet = build_unet(config.unet, use_flash_attention=use_flash_attention)
        _load_weights(root / UNET_FILE, unet, "cpu")
        if load_ema and (root / UNET_EMA_FILE).exists():
            unet_ema = build_unet(config.unet, use_flash_attention=use_flash_attention)
            _load_weights(root / UNET_EMA_FILE, unet_ema, "cpu")
    elif (root / UNET_FILE).exists():
        raise CheckpointError(root / UNET_FILE, "present, but config.json has no unet (\"unet\": null)")
    nets = [n for n in (vae, unet, unet_ema) if n is not None]
    for net in nets:
        net.to(device).eval()
    return LandCheckpoint(root, config, metadata, vae, unet, unet_ema)


# ---------------------------------------------------------------------------------- import


def import_torch_state_dict(
    pt_path: str | os.PathLike,
    model: nn.Module,
    key: str | None = None,
    strip_prefixes: tuple[str, ...] = ("module.", "_orig_mod."),
) -> nn.Module:
    """Load a PyTorch ``.pt``/``.pth`` state dict into ``model`` (in place) and return it.

    The file is read with ``torch.load(weights_only=True)``, which refuses arbitrary pickled
    objects. ``key`` picks a nested entry (e.g. ``"state_dict"`` or ``"model"``); without it the
    common wrappers ``state_dict``, ``model``, ``model_state_dict`` and ``ema`` are tried when the
    top level is not itself a state dict. Prefixes added by DDP (``module.``) or ``torch.compile``
    (``_orig_mod.``) are removed. Then save the model with :func:`save_checkpoint`.
    """
    path = Path(pt_path)
    if not path.is_file():
        raise CheckpointError(path, "is missing")
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(path, f"cannot be read as a weights-only PyTorch file ({exc})") from None
    if key is not None:
        if not isinstance(obj, dict) or key not in obj:
            raise CheckpointError(path, f"has no entry {key!r}")
        obj = obj[key]
    elif isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        for candidate in ("state_dict", "model", "model_state_dict", "ema"):
            if isinstance(obj.get(candidate), dict):
                obj = obj[candidate]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(path, "does not hold a state dict (a mapping of names to tensors); pass key=...")
    sd = {}
    for name, tensor in obj.items():
        for prefix in strip_prefixes:
            if name.startswith(prefix):
                name = name[len(prefix):]
        sd[name] = tensor
    _check_state_dict(path, sd, {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(sd, strict=True)  # copies (and casts) into the model's own tensors
    return model
