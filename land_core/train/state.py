"""Training state without pickle: optimiser, scheduler, RNG and extra tensors as safetensors + JSON.

A checkpoint step folder holds the model checkpoint (:func:`land_core.checkpoint.save_checkpoint`)
plus two files for exact resume:

* ``training_state.safetensors``: every tensor: optimiser moments and step counts
  (``optim.<name>.<param index>.<key>``), extra weights (the VAE's discriminator, the EMA counter),
  and the torch / CUDA / numpy RNG states;
* ``training_state.json``: everything else: optimiser param groups and non-tensor state, LR
  scheduler state dicts, python's and numpy's RNG bookkeeping, step, data order, best metric.

An optimiser's ``state_dict()`` is a tree of tensors and plain values, so it splits cleanly into
the two files and is rebuilt for ``load_state_dict``; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from land_core.errors import CheckpointError

STATE_TENSORS = "training_state.safetensors"
STATE_JSON = "training_state.json"
STATE_FORMAT = "land-training-state/1"


# ---------------------------------------------------------------------------------- optimisers


def flatten_optimizer(name: str, state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``optimizer.state_dict()`` into tensors (keyed ``optim.<name>.<pid>.<key>``) and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    plain_state: dict[str, dict[str, Any]] = {}
    for pid, entry in state_dict["state"].items():
        plain: dict[str, Any] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{name}.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
            else:
                plain[key] = value
        plain_state[str(pid)] = plain
    meta = {"param_groups": _jsonable(state_dict["param_groups"]), "plain_state": plain_state,
            "state_ids": [int(p) for p in state_dict["state"]]}
    return tensors, meta


def unflatten_optimizer(name: str, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    """Rebuild an optimiser ``state_dict`` from :func:`flatten_optimizer`'s output."""
    prefix = f"optim.{name}."
    state: dict[int, dict[str, Any]] = {int(pid): dict(plain) for pid, plain in meta["plain_state"].items()}
    for key, value in tensors.items():
        if key.startswith(prefix):
            pid, _, sub = key[len(prefix):].partition(".")
            state.setdefault(int(pid), {})[sub] = value
    groups = []
    for group in meta["param_groups"]:
        group = dict(group)
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
        groups.append(group)
    return {"state": state, "param_groups": groups}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.item()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} in the training state")


def scheduler_state(scheduler: torch.optim.lr_scheduler.LRScheduler) -> dict[str, Any]:
    """An LR scheduler's state dict as JSON (lambda schedulers store None for their functions)."""
    return _jsonable(scheduler.state_dict())


# ---------------------------------------------------------------------------------- RNG


def rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """torch (CPU and CUDA), numpy and python RNG states, split into tensors and JSON."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng.numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    py_version, py_state, py_gauss = random.getstate()
    meta = {"numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": py_version, "state": list(py_state), "gauss_next": py_gauss}}
    return tensors, meta


def set_rng_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_state` saved (CUDA states only where this machine has the devices)."""
    torch.set_rng_state(tensors["rng.torch"].to(torch.uint8))
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("rng.cuda.")), key=lambda k: int(k[9:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([c.to(torch.uint8) for c in cuda[: torch.cuda.device_count()]])
    n = meta["numpy"]
    np.random.set_state((n["kind"], tensors["rng.numpy.keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = meta["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# ---------------------------------------------------------------------------------- files


def write_training_state(folder: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> None:
    """Write ``training_state.safetensors`` and ``training_state.json`` into ``folder`` (a staging
    folder that is renamed into place afterwards, so plain writes are enough here)."""
    folder = Path(folder)
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(clean, str(folder / STATE_TENSORS), metadata={"format": STATE_FORMAT})
    doc = {"format": STATE_FORMAT, **meta}
    (folder / STATE_JSON).write_text(json.dumps(_jsonable(doc), indent=1) + "\n", encoding="utf-8")


def read_training_state(folder: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read the two training-state files of a checkpoint folder; CheckpointError names a bad one."""
    folder = Path(folder)
    tpath, jpath = folder / STATE_TENSORS, folder / STATE_JSON
    for path in (tpath, jpath):
        if not path.is_file():
            raise CheckpointError(path, "is missing (a checkpoint without training state cannot be resumed)")
    try:
        tensors = load_file(str(tpath))
    except Exception as exc:  # safetensors raises its own types for truncated files
        raise CheckpointError(tpath, f"is not a readable safetensors file ({exc})") from None
    try:
        meta = json.loads(jpath.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(jpath, f"is not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(jpath, f"is not a {STATE_FORMAT} file")
    return tensors, meta
