"""The generation pipeline: a checkpoint + lungs and nodules (or a condition) -> a CT Volume in HU.

What :func:`generate` does, in order (each stage reported as a :class:`GenerationProgress`):

1. ``prepare``: load the checkpoint onto the device, check the inputs against the model's condition
   mode, plan the model's window on the world with :func:`land_core.generation_grid.plan_model_grid`
   (centred on the anatomy; the spacing is enlarged rather than cutting anatomy off, and the plan's
   note is logged), and build the condition on that window. Nodules given as :class:`NoduleSpec`
   (mm, world coordinates) are rasterised directly on the model's grid, not resampled.
2. ``sample``: run the chosen sampler (:mod:`land_core.diffusion`) on the latent, one event per step.
   With ``preview_every = k`` every k-th event carries a preview: the VAE decode of the current
   clean-latent estimate, average-pooled ``preview_downsample`` times first, so it costs about
   ``1 / preview_downsample**3`` of a full decode (a blurry but faithful picture of where the
   sample is going; a linear latent-to-intensity projection would be cheaper still but needs a
   calibration the checkpoint does not carry). Previews lie on the model's window at
   ``preview_downsample`` times its spacing, placed in the world by their own geometry (they are not
   resampled onto the condition's grid, to keep them cheap).
3. ``decode``: decode the final latent with the VAE: whole when it fits in memory, halo-tiled
   (:meth:`land_core.models.LandVAE.decode_latent`) when it does not (``decode_tile_size="auto"``).
4. ``done``: map intensities to HU and resample onto the condition's grid (air, -1024 HU, outside
   the model's window); the last event's ``result`` is the CT.

Cancellation, two ways, both leaving nothing half-done: stop iterating (``close()`` the generator;
no further network evaluation happens), or pass ``cancel=callable``: it is checked before every
network evaluation and before decoding, and when it returns True :class:`GenerationCancelled` is
*raised* (a subclass of :class:`land_core.diffusion.SamplingCancelled` carrying ``step``, ``total``
and ``stage``), so a worker thread can be stopped from outside and can tell a cancel from a result.

Determinism: all randomness comes from one ``torch.Generator`` on the sampling device seeded with
``settings.seed``, so the same checkpoint, inputs, seed and device give the same volume (previews do
not consume randomness: they do not change the result).

Devices (``settings.device``): ``auto`` picks CUDA (with bfloat16 autocast for the networks; under
``torchrun`` the GPU ``LOCAL_RANK``), else Apple MPS, else the CPU with every available core
(``torch.set_num_threads``). ``cpu``, ``cuda``, ``cuda:1``, ``mps`` name one explicitly.

Inpainting (new nodules in an existing CT) lives in :mod:`land_core.inpaint`; the ``land generate``
command in :mod:`land_core.generate_cli` (a separate module so that ``land`` does not import torch
for its other commands).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Generator, Iterator, Literal, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from land_core.checkpoint import LandCheckpoint, LatentDiffusionConfig, load_checkpoint
from land_core.diffusion import SAMPLERS, NoiseSchedule, SamplingCancelled, sample
from land_core.errors import CheckpointError, ConfigError, LandError, MaskError
from land_core.generation_grid import ModelGridPlan, condition_to_model_grid, model_output_to_grid, plan_model_grid
from land_core.masks.condition import decode_condition, encode_condition
from land_core.masks.nodules import NoduleSpec, rasterize_nodules
from land_core.models import LandVAE
from land_core.preprocess import resample_like
from land_core.volume import Volume

log = logging.getLogger(__name__)

Stage = Literal["prepare", "sample", "decode", "done"]
Precision = Literal["auto", "float32", "bfloat16"]
CancelFn = Callable[[], bool]

#: Default number of steps of the fast samplers (DDPM defaults to the training T, 1000 for LAND).
DEFAULT_STEPS = 25
#: The bundled demo model (trained on phantoms; see its README.md), used when no checkpoint is named.
DEMO_MODEL_DIR = Path(__file__).resolve().parents[1] / "resources" / "models" / "demo"
#: Peak memory of a whole VAE decode, in float32 activations of the top decoder level
#: (channels[0] x voxels): measured ~7 for the demo preset at 128^3 (benchmarks/bench_vae_decode.py).
_DECODE_ACTIVATIONS = 8.0


# ---------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationSettings:
    """How to sample: sampler, steps, seed, guidance, device and decode/preview options.

    ``steps`` None means :data:`DEFAULT_STEPS` (25) for ``dpm_solver++`` and ``ddim`` and the
    training T (1000) for ``ddpm``. ``guidance_scale`` 1 is the plain conditional model (one
    network pass per step); other values use classifier-free guidance (two passes, batched).
    ``eta`` is DDIM's noise (0 = deterministic ODE). ``precision`` ``auto`` is bfloat16 autocast on
    CUDA and float32 elsewhere. ``decode_tile_size``: ``"auto"`` (whole when it fits in memory,
    else halo tiles), None (always whole), or a tile edge in latent voxels; ``decode_splits`` is
    MAISI's exact split convolution. ``preview_every`` k > 0 attaches a preview to every k-th
    sampling event (0: none), decoded from a latent pooled ``preview_downsample`` times.
    """

    sampler: str = "dpm_solver++"
    steps: int | None = None
    seed: int = 0
    guidance_scale: float = 1.0
    device: str = "auto"
    precision: Precision = "auto"
    eta: float = 0.0
    decode_tile_size: int | str | None = "auto"
    decode_splits: int = 1
    preview_every: int = 0
    preview_downsample: int = 2

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"unknown sampler {self.sampler!r}; choose one of {', '.join(SAMPLERS)}")
        if self.steps is not None and (isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1):
            raise ConfigError(f"steps must be a positive integer, got {self.steps!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ConfigError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not math.isfinite(self.guidance_scale):
            raise ConfigError(f"guidance scale must be a finite number, got {self.guidance_scale!r}")
        if self.precision not in ("auto", "float32", "bfloat16"):
            raise ConfigError(f"precision must be auto, float32 or bfloat16, got {self.precision!r}")
        if not 0.0 <= self.eta <= 1.0:
            raise ConfigError(f"eta must be in [0, 1], got {self.eta!r}")
        tile = self.decode_tile_size
        if not (tile is None or tile == "auto" or (isinstance(tile, int) and not isinstance(tile, bool) and tile > 0)):
            raise ConfigError(f"decode_tile_size must be 'auto', None or a positive number of latent voxels, got {tile!r}")
        if self.decode_splits < 1:
            raise ConfigError(f"decode_splits must be >= 1, got {self.decode_splits!r}")
        if self.preview_every < 0:
            raise ConfigError(f"preview_every must be >= 0 (0 = no previews), got {self.preview_every!r}")
        if self.preview_downsample < 1:
            raise ConfigError(f"preview_downsample must be >= 1, got {self.preview_downsample!r}")

    def num_steps(self, num_train_timesteps: int) -> int:
        """The number of sampler steps these settings ask for, for a process with T timesteps."""
        if self.steps is not None:
            if self.steps > num_train_timesteps:
                raise ConfigError(f"steps ({self.steps}) cannot exceed the model's {num_train_timesteps} timesteps")
            return self.steps
        return num_train_timesteps if self.sampler == "ddpm" else min(DEFAULT_STEPS, num_train_timesteps)


@dataclass
class GenerationProgress:
    """One event of :func:`generate` / :func:`land_core.inpaint.inpaint`.

    ``step`` of ``total`` sampler steps (0 while preparing, ``total`` while decoding and when
    done); ``elapsed_s`` since the call started; ``stage`` one of ``prepare``, ``sample``,
    ``decode``, ``done``. ``preview`` (a Volume in HU on the model's window, see the module
    docstring) on every ``preview_every``-th sampling event; ``result`` (the CT in HU) on the last
    event only. ``message``: what happened in a line (the window plan while preparing).
    ``region``: for inpainting, the array-order box of ``result`` outside which nothing changed.
    """

    step: int
    total: int
    elapsed_s: float
    stage: Stage
    preview: Volume | None = None
    result: Volume | None = None
    message: str = ""
    region: tuple[slice, slice, slice] | None = None


class GenerationCancelled(SamplingCancelled):
    """Raised by :func:`generate` when its ``cancel`` callable returned True.

    ``step`` sampler steps of ``total`` were done; ``stage`` is where it stopped (``sample`` or
    ``decode``).
    """

    def __init__(self, step: int, total: int, stage: Stage = "sample"):
        super().__init__(step, total)
        self.stage = stage
        self.args = (f"generation cancelled after {step} of {total} steps ({stage})",)


# ---------------------------------------------------------------------------------- device


@dataclass(frozen=True)
class DeviceChoice:
    """The device generation runs on and the autocast dtype of the networks (None: float32)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    description: str


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask where the OS has one, else os.cpu_count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def torchrun_rank() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment variables ((0, 1, 0) without).

    Independent generations need no process group: each rank reads these and does its share.
    """
    def read(name: str, default: int) -> int:
        value = os.environ.get(name, "")
        try:
            return int(value) if value.strip() else default
        except ValueError:
            raise LandError(f"environment variable {name}={value!r} is not an integer") from None

    world = max(1, read("WORLD_SIZE", 1))
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", rank)
    if not 0 <= rank < world:
        raise LandError(f"RANK={rank} is outside 0..{world - 1} (WORLD_SIZE={world})")
    return rank, world, local


def resolve_device(name: str = "auto", precision: Precision = "auto") -> DeviceChoice:
    """Turn ``auto``/``cpu``/``cuda[:i]``/``mps`` into a device and an autocast dtype.

    ``auto``: CUDA when available (``cuda:LOCAL_RANK`` under torchrun), else MPS, else the CPU, with
    ``torch.set_num_threads`` set to every available core. bfloat16 autocast is used on CUDA when
    ``precision`` is ``auto`` (and the GPU supports it) or ``bfloat16``; float32 elsewhere.
    """
    name = (name or "auto").strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            index = torchrun_rank()[2] % torch.cuda.device_count()
            device = torch.device("cuda", index)
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = torch.device("mps")
        else:
            device = torch.device("cpu")
            torch.set_num_threads(available_cpus())
    else:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device 'cuda' was asked for, but this PyTorch sees no CUDA GPU; use --device cpu or auto")
        if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} GPU(s)")
        if device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ConfigError("device 'mps' was asked for, but Apple MPS is not available here")
        if device.type not in ("cpu", "cuda", "mps"):
            raise ConfigError(f"device {name!r} is not supported; use auto, cpu, cuda, cuda:N or mps")
    dtype = None
    if device.type == "cuda" and precision != "float32":
        if precision == "bfloat16" or torch.cuda.is_bf16_supported():
            dtype = torch.bfloat16
    elif precision == "bfloat16" and device.type == "cpu":
        dtype = torch.bfloat16
    if device.type == "cuda":
        desc = f"{device} ({torch.cuda.get_device_name(device)})"
    elif device.type == "cpu":
        desc = f"cpu ({torch.get_num_threads()} threads)"
    else:
        desc = str(device)
    if dtype is not None:
        desc += ", bfloat16 autocast"
    return DeviceChoice(device, dtype, desc)


def _autocast(choice: DeviceChoice) -> contextlib.AbstractContextManager:
    if choice.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=choice.device.type, dtype=choice.autocast_dtype)


# ---------------------------------------------------------------------------------- checkpoint


def default_checkpoint() -> Path:
    """The bundled demo model's folder, or a LandError saying none is there and what to do."""
    if (DEMO_MODEL_DIR / "config.json").is_file():
        return DEMO_MODEL_DIR
    raise LandError(
        f"no checkpoint named and no bundled demo model found (looked in {DEMO_MODEL_DIR}); "
        "name a checkpoint with --checkpoint, or train one with `land train` (a fresh clone of LAND Studio "
        "has the demo model there)"
    )


def _load(checkpoint: LandCheckpoint | str | os.PathLike, device: torch.device) -> LandCheckpoint:
    """Load a checkpoint folder onto ``device``, or move an already loaded one there (in place)."""
    if isinstance(checkpoint, LandCheckpoint):
        ckpt = checkpoint
        for net in (ckpt.vae, ckpt.denoiser):
            if net is not None:
                net.to(device).eval()
    else:
        ckpt = load_checkpoint(checkpoint, device=device)
    if ckpt.denoiser is None:
        raise CheckpointError(ckpt.path, "holds no U-Net (a VAE-only checkpoint from the first training stage): "
                                         "it cannot generate")
    return ckpt


# ---------------------------------------------------------------------------------- condition


@dataclass
class PreparedCondition:
    """The model's window and the condition on it, ready for sampling.

    ``grid``: where the result goes (the condition's grid; None: the model's window itself).
    ``model_condition``: the encoded condition on the window (None for an unconditional model).
    ``notes``: lines worth telling the person (logged by the pipeline).
    """

    plan: ModelGridPlan
    grid: Volume | None
    model_condition: Volume | None
    notes: list[str]


def _window_at(centre_mm: np.ndarray, direction: np.ndarray, config: LatentDiffusionConfig, note: str) -> ModelGridPlan:
    size, spacing = config.image_size, config.image_spacing
    origin = np.asarray(centre_mm, float) - direction @ np.full(3, (size - 1) / 2.0 * spacing)
    return ModelGridPlan(size, spacing, tuple(float(o) for o in origin), np.asarray(direction, float).copy(),
                         False, (0.0, 0.0, 0.0), note)


def _nodule_labels(nodules: Sequence[NoduleSpec] | Volume | None, like: Volume) -> Volume | None:
    if nodules is None:
        return None
    if isinstance(nodules, Volume):
        if nodules.same_grid(like):
            return nodules
        return resample_like(nodules, like, kind="mask")
    return rasterize_nodules(list(nodules), like)


def prepare_condition(
    config: LatentDiffusionConfig,
    *,
    condition: Volume | None = None,
    lungs: Volume | None = None,
    nodules: Sequence[NoduleSpec] | Volume | None = None,
    output_grid: Volume | None = None,
    margin_mm: float = 8.0,
) -> PreparedCondition:
    """Check the inputs against the model's condition mode, plan its window and build the condition.

    ``condition`` is a LAND encoding (0 background, 0.5 lungs, texture/5 nodules) on some grid;
    ``lungs`` a label mask (> 0 is lung) and ``nodules`` a list of :class:`NoduleSpec` (mm) or a
    texture label map; the two forms exclude each other. The result's grid is the condition's (or
    the lungs', or ``output_grid``). Raises :class:`MaskError` naming what is missing or extra.
    """
    mode = config.conditioning_mode
    notes: list[str] = []
    if mode is None:
        raise ConfigError("this checkpoint has no U-Net (VAE only): it cannot generate")
    given = [n for n, v in (("a condition volume", condition), ("a lung mask", lungs), ("nodules", nodules)) if v is not None]
    if mode == "unconditional":
        if given:
            raise MaskError(f"this model is unconditional (condition mode 'unconditional'): it takes no lungs or "
                            f"nodules, but {' and '.join(given)} {'was' if len(given) == 1 else 'were'} given; leave "
                            "them out (use output_grid to choose where the result goes)")
        if output_grid is None:
            plan = _window_at(np.zeros(3), np.eye(3), config,
                              f"unconditional model: its {config.image_size}-voxel window at {config.image_spacing:g} mm, "
                              "centred on the world origin")
        else:
            centre = output_grid.index_to_world((np.asarray(output_grid.size_xyz, float) - 1) / 2.0)
            plan = _window_at(centre, output_grid.direction, config,
                              f"unconditional model: its {config.image_size}-voxel window at {config.image_spacing:g} mm, "
                              "centred on the output grid")
        return PreparedCondition(plan, output_grid, None, notes)

    needs_lungs = mode in ("nodule_lung", "nodule_lung_texture")

    def missing_lungs() -> MaskError:
        what = "lungs and nodules with their textures" if mode == "nodule_lung_texture" else "lungs and nodules"
        return MaskError(f"this model's condition mode is '{mode}' (it was trained on {what}); it needs a lung mask, "
                         "and none was given (or the condition holds no lungs): give one, e.g. from "
                         "`land segment-lungs`")

    if condition is not None and (lungs is not None or nodules is not None):
        raise MaskError("give either a condition volume or a lung mask and nodules, not both")
    if condition is None and lungs is None and needs_lungs:
        raise missing_lungs()
    if condition is not None:
        condition.check_finite("the condition volume")
        lung_field, nodule_labels = decode_condition(condition)
        grid = condition
        lung_only = (lung_field.array > 0) & (nodule_labels.array == 0)
        lung_labels = lung_field if lung_only.any() else None
    else:
        grid = lungs if lungs is not None else nodules if isinstance(nodules, Volume) else output_grid
        if grid is None:
            raise MaskError("nodules given as a list need a grid to be placed on: give the lung mask (or output_grid)")
        if lungs is not None and output_grid is not None and not lungs.same_grid(output_grid):
            raise MaskError("output_grid differs from the lung mask's grid; the result goes on the lung mask's grid")
        lung_labels = lungs
        nodule_labels = _nodule_labels(nodules, grid)
    has_nodules = nodule_labels is not None and bool(np.any(nodule_labels.array > 0))
    textures = set(np.unique(nodule_labels.array[nodule_labels.array > 0]).tolist()) if has_nodules else set()

    if needs_lungs and (lung_labels is None or not np.any(lung_labels.array > 0)):
        raise missing_lungs()
    if mode == "nodule" and lung_labels is not None:
        notes.append("the model's condition mode is 'nodule': it sees the nodules only; the lung mask only places "
                     "its window")
    if mode == "nodule" and not has_nodules:
        raise MaskError("this model's condition mode is 'nodule': it needs at least one nodule, and none was given")
    if mode == "nodule_lung" and textures - {5}:
        notes.append("textures ignored: the model's condition mode is 'nodule_lung', which paints every nodule "
                     "alike (texture scores apply to 'nodule_lung_texture' models)")
    if not has_nodules:
        notes.append("no nodules given: generating lungs without nodules")

    anatomy = encode_condition(lung_labels, nodule_labels, "nodule_lung_texture")
    plan = plan_model_grid(anatomy, model_size=config.image_size, model_spacing=config.image_spacing,
                           margin_mm=margin_mm)
    window = plan.empty_volume(dtype=np.uint8)
    lungs_m = condition_to_model_grid(lung_labels, plan) if lung_labels is not None else None
    if nodules is not None and not isinstance(nodules, Volume) and condition is None:
        nodules_m = rasterize_nodules(list(nodules), window)  # exact in mm, not resampled
    else:
        nodules_m = condition_to_model_grid(nodule_labels, plan) if nodule_labels is not None else None
    model_condition = encode_condition(lungs_m, nodules_m if nodules_m is not None else window, mode)
    if not isinstance(model_condition, Volume):  # both inputs are Volumes, so this cannot happen
        model_condition = window.with_array(model_condition)
    return PreparedCondition(plan, grid, model_condition, notes)


# ---------------------------------------------------------------------------------- decoding


def _available_memory(device: torch.device) -> int | None:
    """Bytes free for a decode on ``device`` (CUDA: free GPU memory; CPU: MemAvailable), or None."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        try:
            with open("/proc/meminfo", encoding="ascii") as fh:
                for line in fh:
                    if line.startswith("MemAvailable:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        try:
            return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
        except (ValueError, OSError, AttributeError):
            return None
    return None


def decode_plan(vae: LandVAE, latent_size: Sequence[int], settings: GenerationSettings, device: torch.device,
                bytes_per_value: int = 4) -> int | None:
    """The tile edge (latent voxels) to decode with, or None for a whole decode.

    ``auto``: whole when the estimated peak (about 8 float activations of the top decoder level per
    output voxel) fits in half the free memory, else the largest halo tile that does (never below
    the halo minimum, 3x the decoder's receptive field). A decoder with attention is always whole.
    """
    tile = settings.decode_tile_size
    if tile is None:
        return None
    halo = vae.decoder_halo()
    if tile != "auto":
        if halo is None:
            raise ConfigError("this VAE's decoder has attention (a global receptive field): it cannot decode in halo "
                              "tiles; use decode_tile_size None or 'auto'")
        if int(tile) < min(3 * halo, min(int(s) for s in latent_size)):
            raise ConfigError(f"a decode tile must be at least {3 * halo} latent voxels (three times the decoder's "
                              f"reach of {halo}), got {tile}")
        return int(tile)
    if halo is None:
        return None
    f = vae.downsample_factor
    c0 = vae.config.channels[0]

    def peak(edge: Sequence[int]) -> float:
        return _DECODE_ACTIVATIONS * c0 * float(np.prod([e * f for e in edge])) * bytes_per_value

    free = _available_memory(device)
    size = [int(s) for s in latent_size]
    if free is None or peak(size) <= 0.5 * free:
        return None
    edge = max(size)
    minimum = 3 * halo
    while edge > minimum and peak([min(edge, s) for s in size]) > 0.5 * free:
        edge = max(minimum, edge * 3 // 4)
    return edge if edge < max(size) else None


def _bytes(choice: DeviceChoice) -> int:
    return 4 if choice.autocast_dtype is None else 2


def decode_to_hu(ckpt: LandCheckpoint, latent: torch.Tensor, settings: GenerationSettings, choice: DeviceChoice,
                 tile: int | None) -> np.ndarray:
    """Decode a (scaled) latent ``(1, C, d, h, w)`` to a float32 HU array ``(D, H, W)`` on the CPU."""
    vae = ckpt.vae
    z = latent / ckpt.config.latent_scale_factor
    kwargs: dict[str, Any] = {"num_splits": settings.decode_splits}
    if tile is not None:
        kwargs.update(tile_size=tile, sw_device=choice.device, output_device=torch.device("cpu"))
    with torch.no_grad(), _autocast(choice):
        image = vae.decode_latent(z.to(next(vae.parameters()).dtype), **kwargs)
    arr = image[0, 0].float().cpu().numpy()
    return ckpt.config.intensity.model_to_hu(arr)


def _preview_volume(ckpt: LandCheckpoint, x0: torch.Tensor, window: Volume, settings: GenerationSettings,
                    choice: DeviceChoice) -> Volume:
    """Cheap preview: the latent pooled ``preview_downsample`` times, decoded, on a coarser window grid."""
    ds = settings.preview_downsample
    latent = x0
    if ds > 1 and all(s % ds == 0 and s // ds >= 2 for s in x0.shape[2:]):
        latent = F.avg_pool3d(x0.float(), ds)
    else:
        ds = 1
    tile = decode_plan(ckpt.vae, latent.shape[2:], replace(settings, decode_tile_size="auto"), choice.device,
                       _bytes(choice))
    hu = decode_to_hu(ckpt, latent, settings, choice, tile)
    # pooled voxel j sits at window index ds * j + (ds - 1) / 2 on every axis
    origin = window.index_to_world(np.full(3, (ds - 1) / 2.0))
    return Volume(hu, tuple(s * ds for s in window.spacing), origin, window.direction.copy())


# ---------------------------------------------------------------------------------- sampling


def _model_fn(ckpt: LandCheckpoint, condition: torch.Tensor | None, latent_shape: tuple[int, int, int],
              settings: GenerationSettings, choice: DeviceChoice, extra_embedding: Any) -> Callable:
    denoiser = ckpt.denoiser
    assert denoiser is not None
    extra = None
    if extra_embedding is not None:
        extra = torch.as_tensor(np.asarray(extra_embedding, dtype=np.float32)).reshape(1, -1).to(choice.device)
    with torch.no_grad(), _autocast(choice):
        fn = denoiser.make_model_fn(condition, latent_shape, extra_embedding=extra, guidance_scale=settings.guidance_scale)

    def model_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # no_grad / autocast only around the network call: a generator must not leave them switched
        # on for its caller between two steps
        with torch.no_grad(), _autocast(choice):
            return fn(x, t).float()

    return model_fn


def _sampling_events(
    ckpt: LandCheckpoint,
    model_fn: Callable,
    settings: GenerationSettings,
    choice: DeviceChoice,
    shape: tuple[int, ...],
    generator: torch.Generator,
    start: float,
    cancel: CancelFn | None,
    preview: Callable[[torch.Tensor], Volume] | None,
    *,
    x_T: torch.Tensor | None = None,
    post_step: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
) -> Generator[GenerationProgress, None, torch.Tensor]:
    """Yield one ``sample`` event per step; return the final latent. Cancels raise GenerationCancelled."""
    schedule = NoiseSchedule(ckpt.config.diffusion)
    total = settings.num_steps(schedule.num_train_timesteps)
    steps = sample(settings.sampler, model_fn, schedule, None if x_T is not None else shape, num_steps=total,
                   eta=settings.eta, x_T=x_T, generator=generator, device=choice.device, cancel=cancel,
                   post_step=post_step)  # type: ignore[arg-type]
    last = None
    try:
        for step in steps:
            last = step
            pv = None
            if preview is not None and settings.preview_every and step.step % settings.preview_every == 0 \
                    and step.step < step.total:
                pv = preview(step.x0_estimate)
            yield GenerationProgress(step.step, step.total, time.perf_counter() - start, "sample", preview=pv)
    except SamplingCancelled as exc:
        raise GenerationCancelled(exc.step, exc.total, "sample") from None
    finally:
        steps.close()
    if last is None:  # pragma: no cover - num_steps >= 1
        raise RuntimeError("the sampler yielded no step")
    return last.x0_estimate


def _check_cancel(cancel: CancelFn | None, total: int) -> None:
    if cancel is not None and cancel():
        raise GenerationCancelled(total, total, "decode")


def generate(
    checkpoint: LandCheckpoint | str | os.PathLike,
    *,
    condition: Volume | None = None,
    lungs: Volume | None = None,
    nodules: Sequence[NoduleSpec] | Volume | None = None,
    settings: GenerationSettings | None = None,
    cancel: CancelFn | None = None,
    output_grid: Volume | None = None,
    extra_embedding: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> Iterator[GenerationProgress]:
    """Generate a CT (HU) for a condition, yielding :class:`GenerationProgress` events.

    ``checkpoint``: a checkpoint folder or a loaded :class:`LandCheckpoint` (its networks are moved
    to the device, in place). The condition is either ``condition`` (a LAND encoding volume) or
    ``lungs`` (label mask) plus ``nodules`` (:class:`NoduleSpec` list in mm, or a texture label
    map); an unconditional model takes none of them (``output_grid`` then says where the result
    goes; by default it is the model's window centred on the world origin). ``extra_embedding``
    is passed to a U-Net that has one. The last event (stage ``done``) carries ``result``.
    Errors in the inputs raise LandError subclasses on the first ``next()``; ``cancel`` returning
    True raises :class:`GenerationCancelled` (see the module docstring).
    """
    settings = settings or GenerationSettings()
    start = time.perf_counter()
    choice = resolve_device(settings.device, settings.precision)
    ckpt = _load(checkpoint, choice.device)
    config = ckpt.config
    total = settings.num_steps(config.diffusion.num_train_timesteps)
    prepared = prepare_condition(config, condition=condition, lungs=lungs, nodules=nodules, output_grid=output_grid)
    plan = prepared.plan
    (log.warning if plan.fitted else log.info)("%s", plan.note)
    for note in prepared.notes:
        log.info("%s", note)
    log.info("generating on %s: %s, %d steps, seed %d, guidance %g", choice.description, settings.sampler, total,
             settings.seed, settings.guidance_scale)
    yield GenerationProgress(0, total, time.perf_counter() - start, "prepare", message=plan.note)

    window = plan.empty_volume(dtype=np.uint8)
    L = config.latent_size
    shape = (1, config.vae.latent_channels, L, L, L)
    cond_t = None
    if prepared.model_condition is not None:
        cond_t = torch.from_numpy(np.ascontiguousarray(prepared.model_condition.array, dtype=np.float32))
        cond_t = cond_t[None, None].to(choice.device)
    model_fn = _model_fn(ckpt, cond_t, (L, L, L), settings, choice, extra_embedding)
    generator = torch.Generator(device=choice.device).manual_seed(settings.seed)

    def preview(x0: torch.Tensor) -> Volume:
        return _preview_volume(ckpt, x0, window, settings, choice)

    latent = yield from _sampling_events(ckpt, model_fn, settings, choice, shape, generator, start, cancel, preview)

    _check_cancel(cancel, total)
    tile = decode_plan(ckpt.vae, latent.shape[2:], settings, choice.device, _bytes(choice))
    yield GenerationProgress(total, total, time.perf_counter() - start, "decode",
                             message="decoding " + ("whole" if tile is None else f"in {tile}^3-latent halo tiles"))
    hu = decode_to_hu(ckpt, latent, settings, choice, tile)
    out = window.with_array(hu)
    if prepared.grid is not None:
        out = model_output_to_grid(out, prepared.grid)
    yield GenerationProgress(total, total, time.perf_counter() - start, "done", result=out, message=plan.note)


def run_to_end(events: Iterator[GenerationProgress]) -> Volume:
    """Exhaust a generation's events and return the result of the last one."""
    last = None
    for last in events:
        pass
    if last is None or last.result is None:  # pragma: no cover - generate always ends with a result
        raise RuntimeError("generation ended without a result")
    return last.result


def generate_volume(checkpoint: LandCheckpoint | str | os.PathLike, **kwargs: Any) -> Volume:
    """:func:`generate` run to the end: the generated CT (HU, float32) on the condition's grid."""
    return run_to_end(generate(checkpoint, **kwargs))


# ---------------------------------------------------------------------------------- several runs


def seeds_for_rank(seed: int, n: int, rank: int = 0, world_size: int = 1) -> list[tuple[int, int]]:
    """The ``(index, seed)`` pairs one process generates out of ``n`` variations seeded ``seed..seed+n-1``.

    Rank ``r`` of ``world_size`` takes indices ``r, r + world_size, ...`` (round robin), so the
    ranks together write every variation exactly once and each variation's seed does not depend on
    how many processes ran.
    """
    if n < 1:
        raise ConfigError(f"the number of variations must be >= 1, got {n}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is outside 0..{world_size - 1}")
    return [(i, seed + i) for i in range(rank, n, world_size)]


def variation_path(out: str | os.PathLike, index: int, n: int) -> Path:
    """``OUT`` for a single variation, else ``OUT_000.nii.gz``, ``OUT_001.nii.gz``... (DICOM: ``OUT_000``)."""
    from land_core.io.images import FORMATS

    path = Path(out)
    if n == 1:
        return path
    name = path.name
    for ending in sorted(FORMATS, key=len, reverse=True):
        if name.lower().endswith(ending):
            return path.with_name(f"{name[: -len(ending)]}_{index:03d}{name[-len(ending):]}")
    return path.with_name(f"{name}_{index:03d}")


def write_ct(volume: Volume, out: str | os.PathLike, *, overwrite_dicom: bool = False) -> Path:
    """Write a CT as int16 HU: an image file atomically, or a DICOM series (marked synthetic) for a folder."""
    from land_core.errors import ImageFileError
    from land_core.io import write_dicom_series, write_volume
    from land_core.io.images import image_format

    hu = volume.with_array(np.clip(np.rint(volume.array), -32768, 32767).astype(np.int16))
    path = Path(out)
    try:
        image_format(path)
    except ImageFileError:
        if path.suffix and not path.is_dir():
            raise
        return write_dicom_series(hu, path, overwrite=overwrite_dicom)
    return write_volume(hu, path)
