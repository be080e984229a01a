"""Put new nodules into an existing CT: regenerate only the region around them, keep the rest.

How (RePaint, Lugmayr et al. 2022, in the latent space, as LAND's inpainting uses it):

1. **Crop.** A cube-ish window around the new nodules at the model's spacing and in the CT's own
   orientation: each nodule's bounding sphere plus ``margin_mm`` (the region allowed to change)
   plus ``context_mm`` (known surroundings the model sees), each side rounded up to a multiple of
   the VAE factor times the U-Net's size multiple (so the latent fits the U-Net). The CT is
   resampled onto it (cubic), the lungs too (nearest), and the new nodules are rasterised on it
   from their mm specification; the condition is encoded in the checkpoint's mode.
2. **Encode** the crop with the VAE (posterior mean) -> ``z0``.
3. **Sample** with a latent mask ``M`` (1 within ``margin_mm`` plus one latent voxel of any new
   nodule's bounding sphere): after every sampler update the ``post_step`` hook sets
   ``x = M * x + (1 - M) * (a_t z0 + s_t eps)``, the known region noised to the next step's level
   (with one fixed noise draw ``eps`` from the seeded generator, which keeps ODE samplers on one
   trajectory), and ``z0`` itself after the last step.
4. **Decode only the crop** and **paste back** onto the CT's grid inside the box that holds every
   voxel within ``margin_mm`` of a new nodule, with weight ``w = clip((margin - d) / feather, 0, 1)``
   where ``d`` is the distance in mm from the nearest voxel of a new nodule (rasterised on the CT's
   grid, Euclidean distance transform with the CT's spacing). Voxels with ``w = 0`` -- in
   particular every voxel farther than ``margin_mm`` from every new nodule -- are never written, so
   they stay bit-identical to the input (the VAE's reconstruction error never leaks out).

The lung mask comes from ``lungs`` or, when none is given and the model needs lungs, from
:func:`land_core.data.lungs.segment_lungs` of the CT. Events, cancellation, seeds and devices work
as in :func:`land_core.generate.generate`; the ``done`` event's ``region`` is the changed box.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from land_core.checkpoint import LandCheckpoint
from land_core.diffusion import NoiseSchedule
from land_core.errors import MaskError
from land_core.generate import (
    CancelFn,
    GenerationProgress,
    GenerationSettings,
    _autocast,
    _check_cancel,
    _load,
    _model_fn,
    _preview_volume,
    _sampling_events,
    decode_plan,
    decode_to_hu,
    resolve_device,
    run_to_end,
)
from land_core.masks.condition import encode_condition
from land_core.masks.nodules import NoduleSpec, rasterize_nodules
from land_core.preprocess import resample_like
from land_core.volume import Volume

log = logging.getLogger(__name__)


def _sphere_distance(points_mm: np.ndarray, nodules: Sequence[NoduleSpec]) -> np.ndarray:
    """Distance (mm) from each point ``(..., 3)`` to the nearest nodule's bounding sphere (<= 0 inside)."""
    d = np.full(points_mm.shape[:-1], np.inf)
    for spec in nodules:
        d = np.minimum(d, np.linalg.norm(points_mm - np.asarray(spec.center_mm), axis=-1) - spec.reach_mm)
    return d


def inpaint_crop_grid(ct: Volume, nodules: Sequence[NoduleSpec], *, spacing: float, multiple: int, pad_mm: float,
                      max_size: int | None = None) -> Volume:
    """The crop window (an all-zero float32 Volume) around ``nodules`` at ``spacing`` in the CT's orientation.

    It holds every nodule's bounding sphere plus ``pad_mm``; each side is a multiple of
    ``multiple`` voxels. Raises MaskError when it would exceed ``max_size`` voxels on a side.
    """
    d = ct.direction
    centres = np.array([s.center_mm for s in nodules], float) @ d  # coordinates along the CT's axes
    reach = np.array([s.reach_mm for s in nodules], float)[:, None]
    lo = (centres - reach - pad_mm).min(axis=0)
    hi = (centres + reach + pad_mm).max(axis=0)
    size = np.maximum(multiple, np.ceil((hi - lo) / spacing / multiple).astype(int) * multiple)
    if max_size is not None and size.max() > max_size:
        raise MaskError(
            f"the new nodules, with the margin and context, span {float((hi - lo).max()):.0f} mm, more than the "
            f"model's {max_size * spacing:g} mm field of view: inpaint them in smaller groups"
        )
    centre_axes = (lo + hi) / 2.0
    origin = d @ (centre_axes - (size - 1) / 2.0 * spacing)
    return Volume(np.zeros(tuple(int(s) for s in size[::-1]), np.float32), (spacing,) * 3, origin, d.copy())


def _paste_box(ct: Volume, nodules: Sequence[NoduleSpec], margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Array-order box of the CT holding every voxel within ``margin_mm`` of a nodule's bounding sphere."""
    lo_all, hi_all = [], []
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], float)
    for spec in nodules:
        r = spec.reach_mm + margin_mm
        idx = ct.world_to_index(np.asarray(spec.center_mm) + r * corners @ ct.direction.T)
        lo_all.append(np.floor(idx.min(axis=0)).astype(int) - 1)
        hi_all.append(np.ceil(idx.max(axis=0)).astype(int) + 2)
    size = np.asarray(ct.size_xyz)
    lo = np.clip(np.min(lo_all, axis=0), 0, size)
    hi = np.clip(np.max(hi_all, axis=0), 0, size)
    if np.any(hi <= lo):
        return None
    return (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))


def _sub_volume(volume: Volume, box: tuple[slice, slice, slice], array: np.ndarray | None = None) -> Volume:
    lo_xyz = np.array([box[2].start, box[1].start, box[0].start], float)
    arr = volume.array[box] if array is None else array
    return Volume(arr, volume.spacing, volume.index_to_world(lo_xyz), volume.direction.copy())


def blend_weights(nodule_mask: Volume, margin_mm: float, feather_mm: float) -> np.ndarray:
    """Paste weights on ``nodule_mask``'s grid: 1 near the nodules, 0 beyond ``margin_mm``, linear over ``feather_mm``."""
    from scipy import ndimage

    mask = np.asarray(nodule_mask.array) > 0
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    dist = ndimage.distance_transform_edt(~mask, sampling=nodule_mask.spacing[::-1])
    return np.clip((margin_mm - dist) / feather_mm, 0.0, 1.0).astype(np.float32)


def inpaint(
    checkpoint: LandCheckpoint | str | os.PathLike,
    ct: Volume,
    nodules: Sequence[NoduleSpec],
    *,
    lungs: Volume | None = None,
    settings: GenerationSettings | None = None,
    margin_mm: float = 10.0,
    feather_mm: float | None = None,
    context_mm: float = 16.0,
    cancel: CancelFn | None = None,
    extra_embedding: Sequence[float] | np.ndarray | torch.Tensor | None = None,
) -> Iterator[GenerationProgress]:
    """Insert ``nodules`` (mm, world coordinates) into ``ct`` (HU), yielding :class:`GenerationProgress`.

    Only voxels within ``margin_mm`` of a new nodule may change; the outer ``feather_mm`` (default
    half the margin) of that band blends the generated and the original CT. ``context_mm`` of known
    CT around the band is given to the model. The result has the CT's grid and dtype; the ``done``
    event's ``region`` is the array box outside which the result equals the input bit for bit.
    """
    settings = settings or GenerationSettings()
    start = time.perf_counter()
    nodules = list(nodules)
    if not nodules:
        raise MaskError("no new nodules given: nothing to inpaint")
    if not (math.isfinite(margin_mm) and margin_mm > 0):
        raise MaskError(f"the margin must be a positive number of mm, got {margin_mm!r}")
    feather = margin_mm / 2.0 if feather_mm is None else float(feather_mm)
    if not 0 < feather <= margin_mm:
        raise MaskError(f"the feather width must be in (0, margin] = (0, {margin_mm:g}] mm, got {feather_mm!r}")
    if context_mm < 0:
        raise MaskError(f"context_mm must be >= 0, got {context_mm!r}")
    ct.check_finite("the CT")
    for i, spec in enumerate(nodules):
        if not ct.contains_world(spec.center_mm):
            raise MaskError(f"new nodule #{i + 1} at {tuple(round(c, 1) for c in spec.center_mm)} mm lies outside the CT")

    choice = resolve_device(settings.device, settings.precision)
    ckpt = _load(checkpoint, choice.device)
    config = ckpt.config
    mode = config.conditioning_mode
    total = settings.num_steps(config.diffusion.num_train_timesteps)
    if mode == "unconditional":
        raise MaskError("this model is unconditional (condition mode 'unconditional'): it cannot place nodules; "
                        "use a checkpoint trained with nodule conditions")
    if mode in ("nodule_lung", "nodule_lung_texture"):
        if lungs is None:
            from land_core.data.lungs import segment_lungs

            log.info("no lung mask given: segmenting the lungs of the CT")
            lungs = segment_lungs(ct)
        elif not lungs.same_grid(ct):
            log.info("the lung mask is on another grid than the CT: resampling it (nearest neighbour)")
            lungs = resample_like(lungs, ct, kind="mask")
    elif lungs is not None:
        log.info("the model's condition mode is 'nodule': the lung mask is not used")
        lungs = None
    if mode == "nodule_lung" and any(s.texture != 5 for s in nodules):
        log.info("textures ignored: the model's condition mode is 'nodule_lung', which paints every nodule alike")

    f = config.vae.downsample_factor
    unet = ckpt.denoiser
    assert unet is not None
    multiple = f * unet.config.size_multiple
    crop = inpaint_crop_grid(ct, nodules, spacing=config.image_spacing, multiple=multiple,
                             pad_mm=margin_mm + context_mm, max_size=config.image_size)
    ct_crop = resample_like(ct.with_array(ct.array.astype(np.float32, copy=False)), crop, kind="ct", fill=-1024.0)
    nod_crop = rasterize_nodules(nodules, crop.with_array(np.zeros(crop.shape, np.uint8)))
    lungs_crop = resample_like(lungs, crop.with_array(np.zeros(crop.shape, np.uint8)), kind="mask") if lungs is not None else None
    cond = encode_condition(lungs_crop, nod_crop, mode)
    message = (f"inpainting {len(nodules)} nodule(s) in a {crop.size_xyz[0]}x{crop.size_xyz[1]}x{crop.size_xyz[2]} "
               f"crop at {config.image_spacing:g} mm; the CT changes only within {margin_mm:g} mm of them")
    log.info("%s", message)
    yield GenerationProgress(0, total, time.perf_counter() - start, "prepare", message=message)

    # encode the known CT
    x = torch.from_numpy(config.intensity.hu_to_model(ct_crop.array))[None, None].to(choice.device)
    with torch.no_grad(), _autocast(choice):
        z0 = ckpt.vae.encode_latent(x).float() * config.latent_scale_factor
    latent_shape = tuple(int(s) for s in z0.shape[2:])
    # latent voxel (i, j, k) is centred on crop index f * i + (f - 1) / 2
    lat_grid = Volume(np.zeros(latent_shape, np.uint8), (config.image_spacing * f,) * 3,
                      crop.index_to_world(np.full(3, (f - 1) / 2.0)), crop.direction.copy())
    dist = _sphere_distance(lat_grid.world_grid(), nodules)
    region = dist <= margin_mm + config.image_spacing * f
    mask = torch.from_numpy(region.astype(np.float32))[None, None].to(choice.device)
    generator = torch.Generator(device=choice.device).manual_seed(settings.seed)
    eps = torch.randn(z0.shape, generator=generator, device=choice.device, dtype=z0.dtype)
    schedule = NoiseSchedule(config.diffusion)
    T = schedule.num_train_timesteps
    x_T = mask * eps + (1 - mask) * schedule.add_noise(z0, eps, T - 1)

    def post_step(x_t: torch.Tensor, t_next: int) -> torch.Tensor:
        known = z0 if t_next < 0 else schedule.add_noise(z0, eps, t_next)
        return mask * x_t + (1 - mask) * known

    cond_t = torch.from_numpy(np.ascontiguousarray(cond.array, dtype=np.float32))[None, None].to(choice.device)
    model_fn = _model_fn(ckpt, cond_t, latent_shape, settings, choice, extra_embedding)  # type: ignore[arg-type]

    def preview(x0: torch.Tensor) -> Volume:
        return _preview_volume(ckpt, mask * x0 + (1 - mask) * z0, crop, settings, choice)

    latent = yield from _sampling_events(ckpt, model_fn, settings, choice, tuple(z0.shape), generator, start, cancel,
                                         preview, x_T=x_T, post_step=post_step)

    _check_cancel(cancel, total)
    tile = decode_plan(ckpt.vae, latent.shape[2:], settings, choice.device, 2 if choice.autocast_dtype else 4)
    yield GenerationProgress(total, total, time.perf_counter() - start, "decode", message="decoding the crop")
    generated = crop.with_array(decode_to_hu(ckpt, latent, settings, choice, tile))

    # paste back: only voxels with a positive weight are written
    box = _paste_box(ct, nodules, margin_mm)
    out = ct.array.copy()
    if box is not None:
        sub = _sub_volume(ct, box)
        nodule_mask = rasterize_nodules(nodules, sub.with_array(np.zeros(sub.shape, np.uint8)))
        w = blend_weights(nodule_mask, margin_mm, feather)
        write = w > 0
        new = resample_like(generated, sub.with_array(np.zeros(sub.shape, np.float32)), kind="ct", fill=-1024.0).array
        original = sub.array.astype(np.float32)
        blended = w[write] * new[write] + (1.0 - w[write]) * original[write]
        if out.dtype.kind in "iu":
            info = np.iinfo(out.dtype)
            blended = np.clip(np.rint(blended), info.min, info.max)
        out_box = out[box]
        out_box[write] = blended.astype(out.dtype)
    result = ct.with_array(out)
    yield GenerationProgress(total, total, time.perf_counter() - start, "done", result=result, message=message,
                             region=box)


def inpaint_volume(checkpoint: LandCheckpoint | str | os.PathLike, ct: Volume, nodules: Sequence[NoduleSpec],
                   **kwargs: Any) -> Volume:
    """:func:`inpaint` run to the end: the CT with the new nodules (the CT's grid and dtype)."""
    return run_to_end(inpaint(checkpoint, ct, nodules, **kwargs))
