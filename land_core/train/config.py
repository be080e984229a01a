"""Training configs: nested dataclasses with ``tiny``/``demo``/``land`` presets, JSON files and ``--set``.

A run is described by one :class:`TrainConfig` (saved as ``config.json`` in the run folder, so a
run can always be resumed or repeated)::

    TrainConfig
      preset, seed, intensity     where it started from, the seed of every random draw, HU -> [0, 1]
      run                         how it runs: device, bf16, gradient checkpointing, threads, workers
      vae: VAETrainConfig         the image VAE (model = VAEConfig) and its losses, patches, schedule
      ldm: LDMTrainConfig         the denoiser (model = UNetConfig, diffusion = DiffusionConfig), EMA,
                                  latent cache, scale factor, samples, the histogram-regulariser hook

:func:`load_config` takes a preset name or a JSON file (a full ``config.json`` of an earlier run,
or a partial one: ``{"preset": "demo", "vae": {"steps": 500}}`` starts from ``demo`` and changes
one value). :func:`apply_overrides` applies command-line settings ``key=value`` with dotted keys
(``vae.perceptual_weights=/data/resnet_10_23dataset.pth``, ``vae.model.channels=16,32,32``); each
value is parsed for the type of its dataclass field and unknown keys are errors that list the
known ones. Conversion and type checks reuse the strict helpers of the model configs
(:mod:`land_core.config`), extended here to nested dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from land_core.diffusion.schedule import DiffusionConfig
from land_core.errors import ConfigError
from land_core.config import check_value
from land_core.models.unet import UNetConfig, unet_preset
from land_core.models.vae import VAEConfig, vae_preset
from land_core.preprocess import IntensityMapping

PresetName = Literal["tiny", "demo", "land"]
PRESETS: tuple[str, ...] = ("tiny", "demo", "land")
PerceptualNetwork = Literal["auto", "resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
                            "resnet200"]
SamplerName = Literal["ddpm", "ddim", "dpm_solver++"]
LRSchedule = Literal["constant", "cosine"]


@dataclass(frozen=True)
class RunConfig:
    """How a run executes (the same for both stages); none of it changes what is learned on CPU.

    ``device``: ``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N`` (under ``torchrun``
    each process takes ``cuda:LOCAL_RANK``). ``bf16`` enables bf16 autocast on a GPU (ignored on
    the CPU, where it is slow). ``num_threads`` 0 keeps torch's default. ``num_workers`` are
    DataLoader processes reading cases; ``data_cache_cases`` is how many decoded cases each
    keeps in memory. ``debug_nan_step`` (>= 1) makes the loss NaN at that step, to exercise the
    NaN guard.
    """

    device: str = "auto"
    bf16: bool = True
    gradient_checkpointing: bool = False
    num_threads: int = 0
    num_workers: int = 0
    data_cache_cases: int = 16
    debug_nan_step: int = 0

    def __post_init__(self) -> None:
        if self.num_threads < 0 or self.num_workers < 0 or self.data_cache_cases < 1:
            raise ValueError("run: num_threads and num_workers must be >= 0 and data_cache_cases >= 1")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"run.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass(frozen=True)
class StageConfig:
    """What both training stages share: length, batch, optimiser, checkpoints, samples, validation.

    ``batch_size`` is the *global* batch: with several processes each takes ``batch_size /
    world_size`` samples per step, so the same config trains the same model on any number of GPUs.
    ``warmup_steps`` ramps the learning rate linearly from 0; ``lr_schedule`` ``cosine`` then decays
    it to 0 at ``steps``. ``grad_clip`` 0 means no clipping (the gradient norm is still checked for
    NaN/inf). A checkpoint is written every ``checkpoint_every`` steps and at the end, keeping the
    last ``keep_last`` plus the best (lowest validation loss on ``val_samples`` fixed samples; 0
    uses the mean training loss since the previous checkpoint). ``sample_every`` 0 writes one
    sample at the end only; ``log_every`` is the TensorBoard interval.
    """

    steps: int = 1000
    batch_size: int = 1
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, ...] = (0.9, 0.999)
    warmup_steps: int = 0
    lr_schedule: LRSchedule = "constant"
    grad_clip: float = 0.0
    checkpoint_every: int = 500
    keep_last: int = 3
    sample_every: int = 0
    val_samples: int = 4
    log_every: int = 10

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "checkpoint_every", "keep_last", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "sample_every", "val_samples"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError("lr must be positive; weight_decay and grad_clip must be >= 0")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class VAETrainConfig(StageConfig):
    """The image VAE stage: L1 + perceptual + adversarial (MONAI ``PatchDiscriminator``) + KL.

    LAND's weights are the defaults (perceptual 0.3, adversarial 0.1, KL 1e-7; L1 1). The
    adversarial term (and the discriminator's training) starts after ``adversarial_start`` steps.
    Training uses random ``patch_size``^3 patches of the full volumes. The perceptual term needs a
    pretrained MedicalNet-style 3D ResNet: ``perceptual_weights`` names a local weights file
    (``.pth``/``.pt`` read with ``weights_only=True``, or ``.safetensors``); ``perceptual_network``
    ``auto`` infers the depth from the file. Without weights the perceptual term is discriminator
    feature matching (L1 between the discriminator's intermediate features of real and
    reconstructed patches), and the log says so.
    """

    model: VAEConfig = field(default_factory=lambda: vae_preset("land"))
    patch_size: int = 128
    l1_weight: float = 1.0
    perceptual_weight: float = 0.3
    adversarial_weight: float = 0.1
    kl_weight: float = 1e-7
    adversarial_start: int = 5000
    disc_lr: float = 1e-4
    disc_channels: int = 32
    disc_layers: int = 3
    perceptual_weights: str | None = None
    perceptual_network: PerceptualNetwork = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        f = self.model.downsample_factor
        if self.patch_size < f or self.patch_size % f:
            raise ValueError(f"vae.patch_size must be a positive multiple of the VAE's downsampling ({f}), "
                             f"got {self.patch_size}")
        for name in ("l1_weight", "perceptual_weight", "adversarial_weight", "kl_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.adversarial_start < 0 or not self.disc_lr > 0 or self.disc_channels < 1 or self.disc_layers < 1:
            raise ValueError("adversarial_start must be >= 0, disc_lr > 0, disc_channels and disc_layers >= 1")
        if self.patch_size < 2 ** (self.disc_layers + 1):
            raise ValueError(f"vae.patch_size {self.patch_size} is too small for a {self.disc_layers}-layer "
                             f"discriminator (needs >= {2 ** (self.disc_layers + 1)})")


@dataclass(frozen=True)
class LDMTrainConfig(StageConfig):
    """The latent diffusion stage: a U-Net on latents of the frozen VAE (v-prediction, Min-SNR-gamma).

    ``vae_checkpoint`` is the VAE to encode with (a checkpoint folder, or a run folder whose
    ``last`` checkpoint is used); ``land train all`` fills it in. Latents are the VAE posterior
    (mean and sigma); with ``cache_latents`` they are computed once and stored in
    ``latent_cache/`` of the run (``cache_dir`` elsewhere), and each step draws
    ``z = mu + sigma * eps`` afresh. ``latent_scale_factor`` 0 computes ``1 / std`` of the latents
    over ``scale_cases`` cases (stored in the checkpoint config). ``latent_crop`` 0 trains on whole
    volumes, otherwise on random crops of that many latent voxels per axis. Condition dropout (for
    classifier-free guidance) and Min-SNR-gamma are in ``diffusion``. ``ema_decay`` is the EMA of the
    U-Net weights (with the usual warm-up ``min(decay, (1 + n) / (10 + n))``).

    The histogram regulariser hook: ``histogram_regularizer`` names a callable ``"module:function"``
    (or pass one to the trainer), applied with weight ``histogram_weight`` (0 by default, which
    switches it off); see :mod:`land_core.train.ldm_trainer` for what it receives.
    Samples are drawn with ``sample_sampler`` in ``sample_steps`` steps with the EMA weights,
    using the condition of case ``sample_case`` (empty: the first case).
    """

    model: UNetConfig = field(default_factory=lambda: unet_preset("land"))
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    vae_checkpoint: str | None = None
    cache_latents: bool = True
    cache_dir: str | None = None
    latent_scale_factor: float = 0.0
    scale_cases: int = 16
    latent_crop: int = 0
    ema_decay: float = 0.9999
    histogram_weight: float = 0.0
    histogram_regularizer: str | None = None
    sample_sampler: SamplerName = "dpm_solver++"
    sample_steps: int = 25
    sample_guidance: float = 1.0
    sample_case: str = ""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_scale_factor < 0 or self.scale_cases < 1 or self.latent_crop < 0:
            raise ValueError("latent_scale_factor and latent_crop must be >= 0, scale_cases >= 1")
        if self.latent_crop and self.latent_crop % self.model.size_multiple:
            raise ValueError(f"ldm.latent_crop {self.latent_crop} must be a multiple of the U-Net's size multiple "
                             f"({self.model.size_multiple})")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.histogram_weight < 0 or self.sample_steps < 1:
            raise ValueError("histogram_weight must be >= 0 and sample_steps >= 1")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run: both stages, the intensity mapping, the seed and the run settings."""

    preset: str = "land"
    seed: int = 0
    intensity: IntensityMapping = field(default_factory=IntensityMapping)
    run: RunConfig = field(default_factory=RunConfig)
    vae: VAETrainConfig = field(default_factory=VAETrainConfig)
    ldm: LDMTrainConfig = field(default_factory=LDMTrainConfig)

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.ldm.model.latent_channels != self.vae.model.latent_channels:
            raise ValueError(f"ldm.model.latent_channels ({self.ldm.model.latent_channels}) differs from "
                             f"vae.model.latent_channels ({self.vae.model.latent_channels})")
        if self.ldm.model.mask_downsample != self.vae.model.downsample_factor:
            raise ValueError(f"ldm.model.mask_downsample ({self.ldm.model.mask_downsample}) differs from the VAE's "
                             f"downsampling ({self.vae.model.downsample_factor})")

    def to_dict(self) -> dict[str, Any]:
        """Nested JSON-ready dict (what ``config.json`` of a run holds)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, data: Any, where: str = "config") -> "TrainConfig":
        """Inverse of :meth:`to_dict`; raises :class:`ConfigError` naming the bad key."""
        try:
            return _from_dict(cls, data, where)
        except ConfigError:
            raise
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``config.json`` atomically."""
        from land_core.io import write_json_atomic

        write_json_atomic(path, self.to_dict())
        return Path(path)


# ---------------------------------------------------------------------------------- presets


def _presets() -> dict[str, TrainConfig]:
    # The paper: VAE 100 epochs of ~1000 LIDC cases on 128^3 patches (lr 1e-4), U-Net 500k steps
    # (lr 1e-5), batch 1, a 20 GB GPU (the VAE at 128^3 with its losses is what needs that memory).
    land = TrainConfig(
        preset="land",
        run=RunConfig(num_workers=4, data_cache_cases=16),
        vae=VAETrainConfig(steps=100_000, lr=1e-4, checkpoint_every=2000, sample_every=10_000, log_every=50),
        ldm=LDMTrainConfig(steps=500_000, lr=1e-5, ema_decay=0.9999, checkpoint_every=5000, sample_every=25_000,
                           log_every=50),
    )
    # The demo: about two hours on a 2-core CPU with 128^3 phantoms at 2 mm. Measured (2 threads,
    # benchmarks/results/train_cpu.json): VAE step on a 48^3 patch ~0.8 s (adversarial phase
    # included), LDM step on a whole 4x32^3 latent ~0.7 s. The run that made resources/models/demo
    # (64 phantoms) took 50 min for the 3000 VAE steps and 75 min for the 5000 LDM steps (~0.9 s a
    # step with checkpoints, validation and samples), 2 h 5 min in all; see that model's README.
    demo = TrainConfig(
        preset="demo",
        run=RunConfig(data_cache_cases=32),
        vae=VAETrainConfig(model=vae_preset("demo"), patch_size=48, steps=3000, warmup_steps=100,
                           adversarial_start=1000, disc_channels=16, disc_layers=3, checkpoint_every=250,
                           sample_every=1000, log_every=10),
        ldm=LDMTrainConfig(model=unet_preset("demo"), lr=1e-4, steps=5000, warmup_steps=200, ema_decay=0.999,
                           scale_cases=8, checkpoint_every=250, sample_every=1000, sample_steps=20, log_every=10),
    )
    # For tests: a few thousand parameters, 16^3 patches, a 3-level U-Net so that 32^3 volumes
    # (8^3 latents) fit; every step takes milliseconds.
    tiny = TrainConfig(
        preset="tiny",
        run=RunConfig(data_cache_cases=8),
        vae=VAETrainConfig(model=vae_preset("tiny"), patch_size=16, batch_size=2, steps=6, lr=1e-3, disc_lr=1e-3,
                           adversarial_start=2, disc_channels=4, disc_layers=2, checkpoint_every=2, val_samples=2,
                           log_every=1),
        ldm=LDMTrainConfig(model=unet_preset("tiny", channel_multipliers=(1, 2, 2),
                                             attention_levels=(False, True, False)),
                           batch_size=2, steps=6, lr=1e-3, ema_decay=0.9, scale_cases=2, checkpoint_every=2,
                           sample_every=6, sample_steps=2, val_samples=2, log_every=1),
    )
    return {"tiny": tiny, "demo": demo, "land": land}


def train_preset(name: str) -> TrainConfig:
    """The named preset: ``tiny`` (tests), ``demo`` (2-core CPU, ~2 h) or ``land`` (the paper, a GPU)."""
    presets = _presets()
    if name not in presets:
        raise ConfigError(f"unknown training preset {name!r}; choose one of {', '.join(PRESETS)}")
    return presets[name]


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(spec: str | os.PathLike) -> TrainConfig:
    """A preset name, or a JSON file: a full config, or a partial one on top of its ``preset``.

    A partial file without ``preset`` starts from ``land``. Errors name the file and the key.
    """
    text = os.fspath(spec)
    if text in PRESETS:
        return train_preset(text)
    path = Path(text)
    if not path.is_file():
        raise ConfigError(f"--config {text!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a training config must be a JSON object")
    base_name = data.get("preset", "land")
    base = train_preset(base_name) if base_name in PRESETS else TrainConfig(preset=str(base_name))
    try:
        return _from_dict(TrainConfig, _deep_merge(base.to_dict(), data), "config")
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# ---------------------------------------------------------------------------------- nested dicts


def _dataclass_of(hint: Any) -> type | None:
    """The dataclass in ``hint`` (also inside ``X | None``), or None for a plain value type."""
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(hint) if dataclasses.is_dataclass(a)]
        return found[0] if found else None
    return None


def _from_dict(cls: type, data: Any, where: str) -> Any:
    """Strict nested ``dict -> dataclass``: unknown keys and wrong types raise ValueError (named)."""
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a JSON object, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        sub = _dataclass_of(hints[name])
        if sub is not None and value is not None:
            kwargs[name] = _from_dict(sub, value, f"{where}.{name}")
        else:
            kwargs[name] = check_value(f"{where}.{name}", value, hints[name])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------- --set key=value

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _parse_value(raw: str, hint: Any, key: str) -> Any:
    """Turn the text of ``--set key=raw`` into a JSON value for a field of type ``hint``."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    text = raw.strip()
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null", ""):
            return None
        inner = [a for a in args if a is not type(None)]
        return _parse_value(raw, inner[0], key) if len(inner) == 1 else raw
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ConfigError(f"--set {key}: expected true or false, got {raw!r}")
    if hint is int:
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"--set {key}: expected an integer, got {raw!r}") from None
    if hint is float:
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"--set {key}: expected a number, got {raw!r}") from None
    if origin is tuple or hint is tuple:
        item = args[0] if args else str
        if text.startswith("["):
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"--set {key}: not a JSON list ({exc})") from None
            return values
        parts = [p for p in text.strip("()").split(",") if p.strip()]
        return [_parse_value(p, item, key) for p in parts]
    if origin is dict or hint is dict:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--set {key}: not a JSON object ({exc})") from None
    return raw  # str and Literal[str, ...]: checked when the config is rebuilt


def apply_overrides(config: TrainConfig, overrides: list[str] | tuple[str, ...]) -> TrainConfig:
    """Apply ``key=value`` settings (dotted keys, typed by the dataclass fields) to ``config``.

    Unknown keys raise :class:`ConfigError` listing the keys known at that level; values that do
    not fit the field's type or range raise it too.
    """
    data = config.to_dict()
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        cls: type = TrainConfig
        node = data
        parts = key.split(".")
        for i, part in enumerate(parts):
            hints = typing.get_type_hints(cls)
            names = [f.name for f in dataclasses.fields(cls) if f.init]
            prefix = ".".join(parts[:i]) or "the config"
            if part not in names:
                raise ConfigError(f"--set {key}: unknown setting {part!r} in {prefix}; known: {', '.join(names)}")
            hint = hints[part]
            sub = _dataclass_of(hint)
            if i < len(parts) - 1:
                if sub is None:
                    raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is a value, not a group of settings")
                if node.get(part) is None:
                    node[part] = json.loads(json.dumps(dataclasses.asdict(sub())))
                cls, node = sub, node[part]
            else:
                if sub is not None:
                    raise ConfigError(f"--set {key}: {key} is a group of settings; set one of "
                                      f"{', '.join(f.name for f in dataclasses.fields(sub))}")
                node[part] = _parse_value(raw, hint, key)
    try:
        return _from_dict(TrainConfig, data, "config")
    except ValueError as exc:
        raise ConfigError(f"--set: {exc}") from None


def with_steps(config: TrainConfig, stage: str, steps: int) -> TrainConfig:
    """``config`` with ``steps`` for ``stage`` (``vae``, ``ldm`` or ``all`` for both)."""
    if steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {steps}")
    vae = replace(config.vae, steps=steps) if stage in ("vae", "all") else config.vae
    ldm = replace(config.ldm, steps=steps) if stage in ("ldm", "all") else config.ldm
    return replace(config, vae=vae, ldm=ldm)
