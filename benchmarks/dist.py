"""DistributedDataParallel plumbing: ``torchrun --nproc_per_node N -m benchmarks run ...``.

Each process trains on its own batches (seeded by seed and rank); DDP averages the gradients, so
every rank holds the same parameters, which :func:`agree` checks at the end of a run. gloo on CPU,
nccl on CUDA. Only rank 0 writes the results log and shows progress.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init(device: torch.device) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (a no-op without it)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def wrap(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.enabled:
        return model
    ids = [device.index if device.index is not None else info.local_rank] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def gather(value: float, info: DistInfo) -> list[float]:
    """``value`` from every rank (a list of one element without DDP)."""
    if not info.enabled:
        return [value]
    out = [None] * info.world_size
    dist.all_gather_object(out, value)
    return [float(v) for v in out]


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def param_checksum(model: nn.Module) -> float:
    """Σ |p| · (i+1) over parameters in float64: equal on every rank iff DDP kept them in sync."""
    total = 0.0
    for i, p in enumerate(unwrap(model).parameters()):
        total += float(p.detach().double().abs().sum()) * (i + 1)
    return total


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()
