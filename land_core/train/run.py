"""Run training stages: ``vae``, ``ldm`` or ``all`` (VAE, then the LDM on the VAE just trained).

:func:`train` is what ``land train`` and the app's "Retrain" (as a subprocess) run. In order:

1. join the process group when started by ``torchrun`` (:mod:`land_core.train.distributed`);
2. validate the dataset for *every* stage asked for, reporting each bad case by name before any
   network is built (a broken dataset fails in seconds, not after the VAE has trained);
3. write ``config.json``, then train each stage in its run folder: ``OUT`` itself for one stage,
   ``OUT/vae`` and ``OUT/ldm`` for ``all`` (the LDM uses the VAE's final checkpoint);
4. emit ``{"event": "done", ...}`` (or ``{"event": "error", "message": ...}`` and re-raise).

Denormal floats are flushed to zero while training (``torch.set_flush_denormal``): CT patches of
air are exactly 0 after the intensity mapping, and with small weights the backward pass then
fills with denormals, which made CPU steps 20-50x slower in our measurements.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Callable, Literal

import torch

from land_core.checkpoint import read_checkpoint_info
from land_core.errors import ConfigError
from land_core.models.vae import VAEConfig
from land_core.train.config import TrainConfig
from land_core.train.data import TrainingSet, open_training_set
from land_core.train.distributed import DistInfo, barrier, setup, teardown
from land_core.train.ldm_trainer import HistogramRegularizer, LatentDiffusionTrainer, resolve_regularizer
from land_core.train.loop import StageTrainer, TrainResult
from land_core.train.progress import EventFn, add_log_file, remove_log_file
from land_core.train.rundir import RunDirectory, resolve_checkpoint
from land_core.train.vae_trainer import VAETrainer

Stage = Literal["vae", "ldm", "all"]
STAGES: tuple[str, ...] = ("vae", "ldm", "all")

log = logging.getLogger("land.train")


def stage_dirs(stage: Stage, out: str | os.PathLike) -> dict[str, RunDirectory]:
    """The run folder of each stage: ``OUT`` for one stage, ``OUT/vae`` and ``OUT/ldm`` for ``all``."""
    out = Path(out)
    if stage == "all":
        return {"vae": RunDirectory(out / "vae"), "ldm": RunDirectory(out / "ldm")}
    return {stage: RunDirectory(out)}


def check_data(config: TrainConfig, data: str | os.PathLike, stage: Stage,
               vae_config: VAEConfig | None = None) -> TrainingSet:
    """Open and validate the dataset for the stage(s): sizes for the VAE patches and the LDM's latents."""
    min_size, divisible, same_shape, what = 1, 1, False, []
    if stage in ("vae", "all"):
        p = config.vae.patch_size
        min_size = max(min_size, p)
        what.append(f"VAE patches of {p}^3")
    if stage in ("ldm", "all"):
        f = (vae_config or config.vae.model).downsample_factor
        ldm = config.ldm
        if ldm.latent_crop:
            min_size = max(min_size, ldm.latent_crop * f)
            divisible = math.lcm(divisible, f)
            what.append(f"LDM crops of {ldm.latent_crop * f}^3")
        else:
            divisible = math.lcm(divisible, f * ldm.model.size_multiple)
            same_shape = ldm.batch_size > 1
            what.append("LDM on whole volumes")
    return open_training_set(data, config.intensity, min_size=min_size, divisible_by=divisible, same_shape=same_shape,
                             cache_cases=config.run.data_cache_cases, what=" and ".join(what))


def _run_stage(trainer: StageTrainer, run_dir: RunDirectory, config: TrainConfig, dist: DistInfo,
               resume: bool) -> TrainResult:
    handler = None
    if dist.is_main:
        run_dir.prepare(resume)
        config.save(run_dir.config_file)
        handler = add_log_file(run_dir.log_file)
    barrier(dist)
    try:
        return trainer.run(resume)
    finally:
        if handler is not None:
            remove_log_file(handler)


def train(
    stage: Stage,
    config: TrainConfig,
    data: str | os.PathLike,
    out: str | os.PathLike,
    *,
    resume: bool = False,
    vae_checkpoint: str | os.PathLike | None = None,
    emit: EventFn | None = None,
    should_stop: Callable[[], bool] | None = None,
    histogram_regularizer: HistogramRegularizer | None = None,
) -> list[TrainResult]:
    """Train ``stage`` on the dataset ``data`` into ``out``; returns one result per stage trained.

    ``vae_checkpoint`` (or ``config.ldm.vae_checkpoint``) is required for ``ldm`` alone: a
    checkpoint folder or a VAE run folder. ``emit`` receives the progress events
    (:mod:`land_core.train.progress`); ``should_stop`` is polled once per step and ends the run
    with a checkpoint. Raises :class:`land_core.errors.LandError` subclasses for bad data, configs
    and diverged training.
    """
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
    dist = setup(config.run.device)
    main_emit = emit if dist.is_main else None
    # Denormal floats (from air patches of exactly 0 and small weights) make CPU convolutions 20-50x
    # slower; flushing them to zero changes nothing a model can learn. Reset on the way out.
    flushed = torch.set_flush_denormal(True)
    if not dist.is_main:
        logging.getLogger("land").setLevel(logging.WARNING)
    try:
        if config.run.num_threads:
            torch.set_num_threads(config.run.num_threads)
        dirs = stage_dirs(stage, out)
        for run_dir in dirs.values():  # every rank checks, so that all of them stop together
            if not resume and run_dir.has_checkpoints():
                raise ConfigError(f"{run_dir.root} already holds a training run; pass --resume to continue it or "
                                  f"choose another --out")
        vae_source = vae_checkpoint or config.ldm.vae_checkpoint
        vae_config = None
        if stage == "ldm":
            if not vae_source:
                raise ConfigError("`land train ldm` needs the VAE to encode with: --vae CHECKPOINT_OR_RUN_DIR "
                                  "(or `land train all` to train both)")
            vae_source = resolve_checkpoint(vae_source)
            vae_config = read_checkpoint_info(vae_source)[0].vae
        regularizer = histogram_regularizer
        if stage in ("ldm", "all"):  # fail now, not after the VAE has trained
            if regularizer is None and config.ldm.histogram_regularizer:
                regularizer = resolve_regularizer(config.ldm.histogram_regularizer)
            if config.ldm.histogram_weight > 0 and regularizer is None:
                raise ConfigError("ldm.histogram_weight > 0 needs a regulariser: set ldm.histogram_regularizer="
                                  "'module:function' (or pass histogram_regularizer= to train)")
        dataset = check_data(config, data, stage, vae_config)
        if dist.is_main:
            Path(out).mkdir(parents=True, exist_ok=True)
            config.save(Path(out) / "config.json")
            log.info("training %s on %d case(s) from %s into %s", stage, len(dataset), dataset.root, out)
        results: list[TrainResult] = []
        if "vae" in dirs:
            trainer = VAETrainer(config, dataset, dirs["vae"], dist, main_emit, should_stop)
            result = _run_stage(trainer, dirs["vae"], config, dist, resume)
            results.append(result)
            if result.stopped:
                return results
            vae_source = result.checkpoint
        if "ldm" in dirs:
            trainer = LatentDiffusionTrainer(config, dataset, dirs["ldm"], dist, main_emit, should_stop,
                                             vae_checkpoint=vae_source, histogram_regularizer=regularizer)
            result = _run_stage(trainer, dirs["ldm"], config, dist, resume)
            results.append(result)
            if result.stopped:
                return results
        last = results[-1]
        if main_emit is not None:
            main_emit({"event": "done", "stage": stage, "step": last.step, "total": last.total,
                       "checkpoint": str(last.checkpoint) if last.checkpoint else None,
                       "best": str(last.best) if last.best else None, "run_dir": str(Path(out))})
        return results
    except BaseException as exc:
        if main_emit is not None:
            message = str(exc) or type(exc).__name__
            main_emit({"event": "error", "message": message if not isinstance(exc, KeyboardInterrupt) else "interrupted"})
        raise
    finally:
        if flushed:
            torch.set_flush_denormal(False)
        teardown()
