"""Several processes (GPUs or CPU processes) through ``torchrun`` and ``torch.distributed``.

``torchrun --nproc_per_node N -m land_core.cli train ...`` (one node) or with ``--nnodes`` and a
rendezvous (several nodes) sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``; :func:`setup`
reads them, initialises the process group (NCCL on GPUs, gloo on CPUs) and picks the device.
Without them the run is a single process and nothing here touches ``torch.distributed``.

Sharding is deterministic (no ``DistributedSampler``): every training step ``s`` has a global
batch of samples with indices ``s * B + i``; rank ``r`` takes ``i`` in ``[r * b, (r + 1) * b)``
with ``b = B / world_size``. Everything random about a sample (case, patch, noise, timestep,
condition dropout) is drawn from that index, so N processes train the same model as one process
with the same global batch (DDP averages the gradients). Rank 0 alone logs, samples and writes
checkpoints; every rank reads them back on resume (several nodes need the run folder on a
shared file system).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from land_core.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its local rank and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        """True on rank 0, the process that logs and writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, global_batch: int) -> range:
        """Indices ``i`` (within a step's global batch) this rank trains on."""
        if global_batch % self.world_size:
            raise ConfigError(f"the batch size ({global_batch}) must be divisible by the number of processes "
                              f"({self.world_size})")
        b = global_batch // self.world_size
        return range(self.rank * b, (self.rank + 1) * b)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``/``cpu``/``cuda``/``cuda:N`` -> a device; under torchrun ``cuda`` means ``cuda:LOCAL_RANK``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} asked for, but this torch build sees no CUDA device")
        return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)
    if name != "cpu":
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    return torch.device("cpu")


def setup(device: str = "auto") -> DistInfo:
    """Initialise the process group when launched by torchrun (once per process); return DistInfo."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(device=resolve_device(device))
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def teardown() -> None:
    """Destroy the process group if this process made one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The mean of ``values`` over all ranks (a no-op for one process); NaN anywhere stays NaN."""
    if not info.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def all_reduce_max(values: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """The element-wise max over ranks (used for stop flags)."""
    if not info.distributed:
        return values
    out = values.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_float(value: float, info: DistInfo) -> float:
    """Rank 0's ``value`` on every rank."""
    if not info.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.broadcast(t, src=0)
    return float(t.item())


def barrier(info: DistInfo) -> None:
    """Wait for every rank (no-op for one process)."""
    if info.distributed:
        if info.device.type == "cuda":
            dist.barrier(device_ids=[info.device.index])
        else:
            dist.barrier()
