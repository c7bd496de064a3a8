"""The sphere of curvature κ > 0 (radius 1/√κ), with points given as directions in R^n.

A sphere inside R^n is where the ambient dot product is already consistent with the manifold:
for unit vectors the cosine ``⟨x̂, ŷ⟩`` is the Euclidean dot product, and the geodesic distance is
``arccos(⟨x̂, ŷ⟩)/√κ``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps


def normalize(x: Tensor) -> Tensor:
    """``x / ‖x‖`` with the norm floored (a zero vector stays zero)."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps.denom_min(x.dtype) ** 0.5)


def angle_from_cosine(cos: Tensor) -> Tensor:
    """``arccos`` with its argument clamped to ``±(1 - ARC_MAX)`` (finite gradient at ±1)."""
    bound = 1 - eps.arc_max(cos.dtype)
    return torch.acos(cos.clamp(-bound, bound))


def distance(x: Tensor, y: Tensor, kappa: Tensor | float = 1.0) -> Tensor:
    """Geodesic distance between the directions of ``x`` and ``y``: ``arccos(⟨x̂, ŷ⟩)/√κ``."""
    kappa = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    return angle_from_cosine((normalize(x) * normalize(y)).sum(-1)) / kappa.sqrt()
