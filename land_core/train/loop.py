"""The training loop both stages share: steps, NaN guard, checkpoints, resume, events, samples.

A stage (:class:`land_core.train.vae_trainer.VAETrainer`,
:class:`land_core.train.ldm_trainer.LatentDiffusionTrainer`) supplies its networks, one
``train_step`` and what goes into a checkpoint; :meth:`StageTrainer.run` does the rest, top to
bottom:

1. find the checkpoint to resume from (``--resume``), build the networks (seeded, so every rank and
   every run starts from the same weights), load the checkpoint's weights, optimiser, scheduler,
   EMA and RNG states, and check that the data order is the one the checkpoint was trained with;
2. wrap the networks in DDP when there are several processes;
3. for each step, take this rank's share of the global batch (:class:`StepBatchSampler`), run
   ``train_step``; the losses are averaged over ranks and a non-finite loss or gradient norm
   stops the run *before* the optimiser step, with a message naming the last good checkpoint;
4. every ``checkpoint_every`` steps and at the end, rank 0 evaluates the fixed validation samples
   and writes the checkpoint atomically (:mod:`land_core.train.rundir`), updates ``best/`` and
   ``last`` and prunes old steps; every ``sample_every`` steps it writes a sample.

A ``should_stop`` callable (set by SIGTERM/SIGINT in the command line) ends the run cleanly after
the current step, with a checkpoint to resume from.
"""

from __future__ import annotations

import abc
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from land_core.checkpoint import CheckpointMetadata, LatentDiffusionConfig, save_checkpoint
from land_core.errors import CheckpointError, ConfigError, LandError
from land_core.train.config import StageConfig, TrainConfig
from land_core.train.data import CaseOrder, StepBatchSampler, TrainingSet, derived_seed
from land_core.train.distributed import DistInfo, all_reduce_max, all_reduce_mean
from land_core.train.progress import EventFn, StepTimer, TensorBoardLogger
from land_core.train.rundir import RunDirectory
from land_core.train.state import (
    flatten_optimizer,
    read_training_state,
    rng_state,
    scheduler_state,
    set_rng_state,
    unflatten_optimizer,
    write_training_state,
)

log = logging.getLogger("land.train")

STREAM_INIT = 100  # seeds network initialisation


class TrainingDiverged(LandError):
    """A loss or gradient became NaN or infinite; nothing was saved for that step."""


@dataclass
class TrainResult:
    """Where a stage ended: its run folder, the step reached, its last and best checkpoints."""

    stage: str
    run_dir: Path
    step: int
    total: int
    checkpoint: Path | None
    best: Path | None
    stopped: bool = False


@dataclass
class CheckpointPayload:
    """What a stage puts in the model checkpoint (the part :func:`load_checkpoint` reads)."""

    config: LatentDiffusionConfig
    vae: nn.Module
    unet: nn.Module | None = None
    unet_ema: nn.Module | None = None
    metadata: CheckpointMetadata | None = None


def lr_lambda(cfg: StageConfig) -> Callable[[int], float]:
    """Linear warm-up from 0 over ``warmup_steps``, then constant or cosine to 0 at ``steps``."""
    warm, total, kind = cfg.warmup_steps, cfg.steps, cfg.lr_schedule

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if kind == "cosine":
            progress = min(1.0, (step - warm) / max(1, total - warm))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


class StageTrainer(abc.ABC):
    """Base of the two stages; see the module docstring for the order of things."""

    stage: str = ""

    def __init__(
        self,
        config: TrainConfig,
        data: TrainingSet,
        run_dir: RunDirectory,
        dist: DistInfo,
        emit: EventFn | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> None:
        self.config = config
        self.cfg: StageConfig = getattr(config, self.stage)
        self.data = data
        self.run_dir = run_dir
        self.dist = dist
        self.device = dist.device
        self.emit_fn = emit
        self.should_stop = should_stop or (lambda: False)
        self.use_bf16 = self.device.type == "cuda" and config.run.bf16
        self.shard = dist.shard(self.cfg.batch_size)
        self.order = CaseOrder(len(data), config.seed)
        self.step = 0
        self.best_metric = math.inf
        self.best_step: int | None = None
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}
        self.tb: TensorBoardLogger | None = None
        self._stop_all = False
        self._interval_losses: list[float] = []
        self.last_checkpoint: Path | None = None

    # ------------------------------------------------------------------ each stage implements these
    @abc.abstractmethod
    def build(self, resume_from: Path | None) -> None:
        """Build networks (seeded), optimisers and schedulers; load weights from ``resume_from``."""

    @abc.abstractmethod
    def wrap_distributed(self) -> None:
        """Wrap the trained networks in DDP (called after loading, only with several processes)."""

    @abc.abstractmethod
    def dataset(self) -> Dataset:
        """The stage's training samples (patches for the VAE, volumes or latents for the LDM)."""

    @abc.abstractmethod
    def train_step(self, batch: dict[str, Any], step: int) -> dict[str, float]:
        """One optimisation step on this rank's batch; returns losses averaged over ranks."""

    def validation_loss(self) -> float | None:
        """The loss on fixed validation samples (rank 0, no gradients), or None."""
        return None

    @abc.abstractmethod
    def checkpoint_payload(self) -> CheckpointPayload:
        """What a checkpoint folder of this stage holds (networks, config, metadata)."""

    def extra_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """Tensors and JSON the stage needs besides optimisers/schedulers (discriminator, EMA count)."""
        return {}, {}

    def load_extra_state(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        pass

    def write_sample(self, step: int) -> dict[str, Any] | None:
        """Write a sample volume + montage (rank 0); return the event fields, or None."""
        return None

    # ------------------------------------------------------------------ helpers for stages
    def emit(self, event: dict[str, Any]) -> None:
        if self.dist.is_main and self.emit_fn is not None:
            self.emit_fn({"event": event.pop("event"), "stage": self.stage, **event})

    def seed_init(self, what: int = 0) -> None:
        """Seed the global RNGs (torch, numpy, python) before building the networks, so that every rank
        and every run starts from the same weights and states; a resume then restores the saved ones."""
        seed = derived_seed(self.config.seed, STREAM_INIT, what)
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)

    def autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_bf16)

    def make_optimizer(self, name: str, params, lr: float) -> torch.optim.Optimizer:
        cfg = self.cfg
        opt = torch.optim.AdamW(params, lr=lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        self.optimizers[name] = opt
        self.schedulers[name] = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
        return opt

    def inject_nan(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """``run.debug_nan_step``: make the loss NaN at that step (tests the guard)."""
        if self.config.run.debug_nan_step and step == self.config.run.debug_nan_step:
            return loss * float("nan")
        return loss

    def reduce_losses(self, losses: dict[str, torch.Tensor], step: int) -> dict[str, float]:
        """Average the losses over ranks (one all-reduce, with the stop flag) and stop on NaN/inf."""
        names = list(losses)
        flag = 1.0 if self.should_stop() else 0.0
        vec = torch.stack([losses[n].detach().float().reshape(()) for n in names]
                          + [torch.tensor(flag, device=self.device)])
        values = all_reduce_mean(vec, self.dist).tolist()
        self._stop_all = self._stop_all or values[-1] > 0
        out = dict(zip(names, values[:-1]))
        bad = {n: v for n, v in out.items() if not math.isfinite(v)}
        if bad:
            self.diverged(step, ", ".join(f"{n} = {v}" for n, v in bad.items()))
        return out

    def check_grad_norm(self, params, step: int, name: str) -> float:
        """Clip to ``grad_clip`` (when set) and stop if the gradient norm is NaN/inf."""
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm=clip))
        if not math.isfinite(norm):
            self.diverged(step, f"the gradient norm of the {name} is {norm}")
        return norm

    def diverged(self, step: int, what: str) -> None:
        last = self.last_checkpoint
        where = f"the last good checkpoint is {last}" if last else "no checkpoint was written before it"
        raise TrainingDiverged(
            f"{self.stage} training diverged at step {step}: {what}. Stopped before the optimiser step; nothing "
            f"was saved for this step and {where}. Lower the learning rate (--set {self.stage}.lr=...) or clip "
            f"gradients (--set {self.stage}.grad_clip=1.0), then continue with --resume."
        )

    def per_sample_generators(self, indices: torch.Tensor, stream: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(derived_seed(self.config.seed, stream, int(g))) for g in indices]

    # ------------------------------------------------------------------ the loop
    def run(self, resume: bool = False) -> TrainResult:
        cfg, run_dir = self.cfg, self.run_dir
        found = run_dir.last_checkpoint() if resume else None
        resume_from = found[0] if found else None
        if resume and resume_from is None and self.dist.is_main:
            log.info("%s: no checkpoint in %s yet; starting from the beginning", self.stage, run_dir.root)
        self.build(resume_from)
        if resume_from is not None:
            self._load_training_state(resume_from)
            log.info("%s: resumed from %s at step %d of %d", self.stage, resume_from, self.step, cfg.steps)
        if self.dist.distributed:
            self.wrap_distributed()
        if self.dist.is_main:
            try:
                self.tb = TensorBoardLogger(run_dir.tensorboard)
            except ImportError as exc:  # a dependency, but training must not need it
                log.warning("no TensorBoard logs (%s); install the tensorboard package to get them", exc)
        try:
            return self._loop(resumed=resume_from is not None)
        finally:
            if self.tb is not None:
                self.tb.close()

    def _loop(self, resumed: bool) -> TrainResult:
        cfg = self.cfg
        total = cfg.steps
        self.emit({"event": "start", "step": self.step, "total": total, "run_dir": str(self.run_dir.root),
                   "resumed": resumed, "world_size": self.dist.world_size, "device": str(self.device)})
        if self.step >= total:
            return self._finish(stopped=False)
        loader = DataLoader(
            self.dataset(),
            batch_sampler=StepBatchSampler(self.step, total, cfg.batch_size, self.shard),
            num_workers=self.config.run.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator(),  # keeps the global RNG untouched (exact resume)
            persistent_workers=False,
        )
        timer = StepTimer()
        timer.tick()
        for batch in loader:
            step = self.step + 1
            losses = self.train_step(batch, step)
            self.step = step
            timer.tick()
            self._interval_losses.append(losses.get("loss", float("nan")))
            lr = self.schedulers[next(iter(self.schedulers))].get_last_lr()[0] if self.schedulers else None
            eta = timer.eta_s(total - step)
            self.emit({"event": "step", "step": step, "total": total, "losses": losses, "lr": lr,
                       "steps_per_s": timer.steps_per_s, "eta_s": eta})
            if self.tb is not None and (step % cfg.log_every == 0 or step == total):
                self.tb.scalars(step, losses, f"{self.stage}/train")
                self.tb.scalars(step, {"lr": lr or 0.0, "steps_per_s": timer.steps_per_s}, f"{self.stage}/run")
            stop = self._stop_all
            if step % cfg.checkpoint_every == 0 or step == total or stop:
                self.save_checkpoint()
            if self.dist.is_main and (step == total or (cfg.sample_every and step % cfg.sample_every == 0)):
                self._sample(step)
            if stop:
                log.info("%s: stopped at step %d of %d on request; continue with --resume", self.stage, step, total)
                return self._finish(stopped=True)
        return self._finish(stopped=False)

    def _finish(self, stopped: bool) -> TrainResult:
        last = self.run_dir.last_checkpoint()
        checkpoint = last[0] if last else None
        best = self.run_dir.best if self.run_dir.best.exists() else None
        self.emit({"event": "stopped" if stopped else "stage_done", "step": self.step, "total": self.cfg.steps,
                   "checkpoint": str(checkpoint) if checkpoint else None, "best": str(best) if best else None})
        return TrainResult(self.stage, self.run_dir.root, self.step, self.cfg.steps, checkpoint, best, stopped)

    def _sample(self, step: int) -> None:
        try:
            fields = self.write_sample(step)
        except LandError as exc:  # a sample is a preview: log and go on training
            log.warning("%s: could not write the sample at step %d: %s", self.stage, step, exc)
            return
        if fields:
            self.emit({"event": "sample", "step": step, **fields})

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path | None:
        """Rank 0 writes ``checkpoints/step_XXXXXX`` (model + training state), ``best/``, ``last``.

        Every rank then learns whether that worked (one all-reduce, which is also the barrier), so
        a failure on rank 0 stops all of them instead of leaving the others waiting.
        """
        final, error = None, None
        if self.dist.is_main:
            try:
                final = self._write_checkpoint()
            except Exception as exc:  # re-raised below, after the other ranks were told
                error = exc
        failed = all_reduce_max(torch.tensor([1.0 if error else 0.0], device=self.device), self.dist)
        if error is not None:
            raise error
        if float(failed[0]) > 0:
            raise TrainingDiverged(f"{self.stage}: rank 0 could not write the checkpoint of step {self.step}; "
                                   f"see its log")
        return final

    def _write_checkpoint(self) -> Path:
        step, run_dir = self.step, self.run_dir
        val = self.validation_loss()
        interval = [v for v in self._interval_losses if math.isfinite(v)]
        metric = val if val is not None else (float(np.mean(interval)) if interval else math.inf)
        self._interval_losses = []
        is_best = metric < self.best_metric
        if is_best:
            self.best_metric, self.best_step = metric, step
        payload = self.checkpoint_payload()
        staging = run_dir.staging(step)
        try:
            save_checkpoint(staging, payload.config, vae=payload.vae, unet=payload.unet,
                            unet_ema=payload.unet_ema, metadata=payload.metadata)
        except CheckpointError as exc:  # e.g. non-finite weights: never publish a broken checkpoint
            self.diverged(step, f"the weights cannot be saved ({exc.problem})")
        tensors, meta = self._training_state()
        write_training_state(staging, tensors, meta)
        final = run_dir.commit(staging, step)
        if is_best:
            run_dir.update_best(final)
        self.last_checkpoint = final
        run_dir.write_last({
            "stage": self.stage, "step": step, "total_steps": self.cfg.steps,
            "checkpoint": str(final.relative_to(run_dir.root)), "done": step >= self.cfg.steps,
            "best": {"step": self.best_step, "metric": self.best_metric if math.isfinite(self.best_metric) else None,
                     "metric_name": self._metric_name(), "checkpoint": "best"},
        })
        removed = run_dir.prune(self.cfg.keep_last)
        if removed:
            log.debug("removed old checkpoints: %s", ", ".join(d.name for d in removed))
        if self.tb is not None and val is not None:
            self.tb.scalars(step, {self._metric_name(): val}, f"{self.stage}/val")
        log.info("%s: step %d: checkpoint %s (%s %.6g%s)", self.stage, step, final, self._metric_name(), metric,
                 ", best" if is_best else "")
        self.emit({"event": "checkpoint", "step": step, "path": str(final), "val_loss": val, "best": is_best})
        return final

    def _metric_name(self) -> str:
        return "val_loss" if self.cfg.val_samples > 0 else "train_loss"

    def _training_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        tensors: dict[str, torch.Tensor] = {}
        optim_meta = {}
        for name, opt in self.optimizers.items():
            t, m = flatten_optimizer(name, opt.state_dict())
            tensors.update(t)
            optim_meta[name] = m
        rng_t, rng_m = rng_state()
        tensors.update(rng_t)
        extra_t, extra_m = self.extra_state()
        tensors.update(extra_t)
        meta = {
            "stage": self.stage,
            "step": self.step,
            "total_steps": self.cfg.steps,
            "seed": self.config.seed,
            "global_batch": self.cfg.batch_size,
            "world_size": self.dist.world_size,
            "optimizers": optim_meta,
            "schedulers": {name: scheduler_state(s) for name, s in self.schedulers.items()},
            "rng": rng_m,
            "data_order": self.order.describe(self.step * self.cfg.batch_size),
            "best": {"step": self.best_step, "metric": self.best_metric if math.isfinite(self.best_metric) else None},
            "extra": extra_m,
            "time": time.time(),
        }
        return tensors, meta

    def _load_training_state(self, folder: Path) -> None:
        tensors, meta = read_training_state(folder)
        if meta.get("stage") != self.stage:
            raise CheckpointError(folder, f"holds a {meta.get('stage')!r} training state, not {self.stage!r}")
        if meta.get("global_batch") != self.cfg.batch_size or meta.get("seed") != self.config.seed:
            raise ConfigError(f"{folder}: trained with seed {meta.get('seed')} and batch {meta.get('global_batch')}; "
                              f"the config now says seed {self.config.seed} and batch {self.cfg.batch_size}: exact "
                              f"resume needs the same")
        step = int(meta["step"])
        expected = self.order.describe(step * self.cfg.batch_size)
        if meta.get("data_order", {}).get("permutation") != expected["permutation"]:
            raise ConfigError(f"{folder}: the dataset changed since this checkpoint (the case order differs; "
                              f"{meta.get('data_order', {}).get('n_cases')} cases then, {len(self.data)} now)")
        for name, opt in self.optimizers.items():
            if name not in meta["optimizers"]:
                raise CheckpointError(folder, f"has no state for the optimiser {name!r}")
            opt.load_state_dict(unflatten_optimizer(name, tensors, meta["optimizers"][name]))
        for name, sched in self.schedulers.items():
            sched.load_state_dict(meta["schedulers"][name])
        self.load_extra_state(tensors, meta.get("extra", {}))
        set_rng_state(tensors, meta["rng"])
        self.step = step
        best = meta.get("best") or {}
        self.best_step = best.get("step")
        self.best_metric = float(best["metric"]) if best.get("metric") is not None else math.inf
        self.last_checkpoint = folder
        if self.dist.is_main and self.best_step is not None:
            self._repair_best()

    def _repair_best(self) -> None:
        """A kill between writing a checkpoint and copying it to ``best/`` leaves ``best/`` behind: fix it."""
        best_state = self.run_dir.best / "training_state.json"
        target = self.run_dir.checkpoints / f"step_{self.best_step:06d}"
        try:
            import json

            current = json.loads(best_state.read_text(encoding="utf-8")).get("step") if best_state.exists() else None
        except (OSError, ValueError):
            current = None
        if current != self.best_step and target.is_dir():
            self.run_dir.update_best(target)
