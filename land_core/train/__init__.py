"""land_core.train: the trainers of LAND (image VAE, then latent diffusion), resumable and distributed.

    from land_core.train import load_config, train
    results = train("all", load_config("demo"), "phantoms/", "runs/demo", emit=print)

Modules: ``config`` (dataclasses, presets, ``--set``), ``data`` (validation, deterministic
sampling, latent cache), ``loop`` (the shared loop: NaN guard, checkpoints, resume),
``vae_trainer`` / ``ldm_trainer`` (the two stages; the histogram-regulariser hook is documented in
``ldm_trainer``; their loss terms are in ``land_core.losses``), ``state`` / ``rundir``
(pickle-free training state, atomic checkpoint folders), ``distributed`` (torchrun/DDP),
``progress`` (events, JSON lines, TensorBoard), ``run`` (``train``), ``cli`` (``land train``).

Names are imported lazily so that ``land --help`` does not load torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config", "RunConfig": "config", "VAETrainConfig": "config", "LDMTrainConfig": "config",
    "load_config": "config", "train_preset": "config", "apply_overrides": "config", "with_steps": "config",
    "train": "run", "check_data": "run", "TrainResult": "loop", "TrainingDiverged": "loop",
    "VAETrainer": "vae_trainer", "LatentDiffusionTrainer": "ldm_trainer", "RegularizerInputs": "ldm_trainer",
    "HistogramRegularizer": "ldm_trainer", "RunDirectory": "rundir",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"land_core.train.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'land_core.train' has no attribute {name!r}")
