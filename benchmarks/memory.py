"""Memory of a run: the CUDA allocator's peak on GPU; on every device, the activation memory that
autograd saves for the backward pass of one training step.

PyTorch keeps no allocator statistics for CPU tensors, and a process's RSS mixes in the allocator's
caches, so on CPU the comparable figure is the bytes of the distinct tensor storages saved for
backward (counted with :func:`torch.autograd.graph.saved_tensors_hooks` during one step's forward).
That is where geometries differ: a dense score path saves (B, H, L, S) matrices, SDPA saves O(L)
statistics. Parameters and optimiser state are the same for every geometry up to its own parameters.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def saved_activation_mb(step: Callable[[], Tensor]) -> tuple[Tensor, float]:
    """Run ``step`` (a forward pass returning the loss) and count the MB it saves for backward."""
    seen: dict[tuple[str, int], int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        seen[(str(t.device), storage.data_ptr())] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = step()
    return loss, sum(seen.values()) / 2**20


class CudaPeak:
    """Context manager: ``.peak_mb`` = the CUDA allocator's peak above the start (``None`` on CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mb = device, None

    def __enter__(self) -> "CudaPeak":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._base) / 2**20
