"""The learned metric's G = F Fᵀ + εI or U Uᵀ + diag(softplus(d) + ε), symmetric positive definite by construction
(:class:`~geoattn.geometry.metric.Metric`)."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=64)
def _scaled_identity(size: int, epsilon: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """``εI`` (size × size), made once per size, ε, dtype and device (read only: the ``baddbmm`` input of
    :func:`metric_tensor`), so forming G per call is one ``baddbmm`` and no ``eye``."""
    return epsilon * torch.eye(size, device=device, dtype=dtype)


def metric_tensor(factor: Tensor, raw_diagonal: Tensor | None, epsilon: float) -> Tensor:
    """``G`` per head, shape ``(heads, E, E)``, in one ``baddbmm``: ``F Fᵀ + εI`` (full rank, ``raw_diagonal``
    None) or ``U Uᵀ + diag(softplus(d) + ε)`` (``factor`` U (heads, E, r), ``raw_diagonal`` d (heads, E))."""
    diagonal = (_scaled_identity(factor.shape[-2], epsilon, factor.dtype, factor.device)
                if raw_diagonal is None else torch.diag_embed(F.softplus(raw_diagonal) + epsilon))
    return torch.baddbmm(diagonal.expand(factor.shape[0], -1, -1), factor, factor.transpose(-1, -2))
