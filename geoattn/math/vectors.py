"""Norms, directions and tangent clipping that neither overflow nor underflow.

``torch.linalg.vector_norm`` squares its input: in float32 a vector with entries of 1e20 has norm inf
and one with entries of 1e-30 has norm 0. Every geometry here needs ``‖x‖`` and ``x/‖x‖`` of raw
activations, so they are computed on ``x / m`` with ``m = max |x_i|`` (detached: the result does not
depend on ``m``, and its gradient is the usual ``x/‖x‖``), which is exact to rounding for every
finite input.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps


def robust_norm(x: Tensor) -> Tensor:
    """``‖x‖`` over the last dim, keepdim, for every finite x (no overflow or underflow in the squares)."""
    m = x.detach().abs().amax(dim=-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m * torch.linalg.vector_norm(x / m, dim=-1, keepdim=True)


def unit(x: Tensor, norm: Tensor | None = None, input_dtype: torch.dtype | None = None) -> Tensor:
    """``x / max(‖x‖, NORM_MIN)``: the direction of x; a zero vector stays zero. The floor follows the
    dtype the values came in (see :mod:`geoattn.math.eps`)."""
    norm = robust_norm(x) if norm is None else norm
    return x / norm.clamp(min=eps.norm_min(input_dtype or x.dtype))


def clip_radius(norm: Tensor, kappa: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Feature clipping in tangent space (Guo et al., "Clipped Hyperbolic Classifiers Are Super-Hyperbolic
    Classifiers", CVPR 2022): where κ < 0, ``‖u‖ ← min(‖u‖, clip/√|κ|)``; elsewhere unchanged.

    ``norm`` (..., 1) and ``kappa`` broadcastable to it. Returns the clipped norm and the mask of the
    vectors the clip shortened. Clipping the norm (not the vector) keeps the direction exact.
    """
    limit = clip / (-kappa).clamp(min=1e-30).sqrt()
    shortened = (kappa < 0) & (norm > limit)
    return torch.where(kappa < 0, torch.minimum(norm, limit), norm), shortened
