"""The sphere of curvature κ > 0 (radius 1/√κ), with points given as directions in R^n.

A sphere inside R^n is where the ambient dot product is already consistent with the manifold:
for unit vectors the cosine ``⟨x̂, ŷ⟩`` is the Euclidean dot product, and the geodesic distance is
``arccos(⟨x̂, ŷ⟩)/√κ``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps


def normalize(x: Tensor, input_dtype: torch.dtype | None = None) -> Tensor:
    """``x / max(‖x‖, NORM_MIN)``: a zero vector stays zero; the floor follows the dtype the values came in."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps.norm_min(input_dtype or x.dtype))


def angle_from_cosine(cos: Tensor) -> Tensor:
    """``arccos`` with its argument clamped to ``±(1 - ARC_MAX)`` (finite gradient at ±1)."""
    bound = 1 - eps.arc_max(cos.dtype)
    return torch.acos(cos.clamp(-bound, bound))

