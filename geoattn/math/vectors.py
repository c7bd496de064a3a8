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


class _WideNorm(torch.autograd.Function):
    """``‖x‖`` (keepdim) with the squares summed in float64 and the gradient ``g·x/‖x‖`` formed in x's dtype
    (autograd of the float64 reduction would run its backward over x in float64, a second full-width pass)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor) -> Tensor:
        return torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=torch.float64).to(x.dtype)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], output)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        x, norm = ctx.saved_tensors
        return x * torch.where(norm > 0, grad / norm, torch.zeros_like(norm))


def robust_norm(x: Tensor) -> Tensor:
    """``‖x‖`` over the last dim, keepdim, for every finite x (no overflow or underflow in the squares).

    Below float64 the squares are summed in float64 (one pass: a float32 square overflows from 1.8e19, a
    float64 one only from 1.3e154), and the norm returned in x's dtype; float64 inputs are scaled by
    their largest entry first."""
    if x.dtype != torch.float64:
        return _WideNorm.apply(x)
    m = x.detach().abs().amax(dim=-1, keepdim=True)
    m = torch.where(m > 0, m, torch.ones_like(m))
    return m * torch.linalg.vector_norm(x / m, dim=-1, keepdim=True)


def unit(x: Tensor, norm: Tensor | None = None, input_dtype: torch.dtype | None = None) -> Tensor:
    """``x / max(‖x‖, NORM_MIN)``: the direction of x; a zero vector stays zero, with gradient zero (the
    direction has no derivative there; ``x / NORM_MIN`` would give one of 1/NORM_MIN, 1e15 in float64, as
    the native kernel's 1/‖x‖ = 0 convention avoids too). The floor follows the dtype the values came in
    (see :mod:`geoattn.math.eps`)."""
    norm = robust_norm(x) if norm is None else norm
    return torch.where(norm > 0, x / norm.clamp(min=eps.norm_min(input_dtype or x.dtype)), torch.zeros_like(x))


def clip_radius(norm: Tensor, kappa: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Feature clipping in tangent space (Guo et al., "Clipped Hyperbolic Classifiers Are Super-Hyperbolic
    Classifiers", CVPR 2022): where κ < 0, ``‖u‖ ← min(‖u‖, clip/√|κ|)``; elsewhere unchanged.

    ``norm`` (..., 1) and ``kappa`` broadcastable to it. Returns the clipped norm and the mask of the
    vectors the clip shortened. Clipping the norm (not the vector) keeps the direction exact.
    """
    limit = clip / (-kappa).clamp(min=1e-30).sqrt()
    shortened = (kappa < 0) & (norm > limit)
    return torch.where(kappa < 0, torch.minimum(norm, limit), norm), shortened


def squared_chords(x: Tensor, y: Tensor) -> Tensor:
    """``‖xᵢ - yⱼ‖²`` for (B, H, L, D) and (B, H, S, D) → (B, H, L, S), exactly and at matmul speed.

    The Gram form ``‖x‖² + ‖y‖² - 2⟨x, y⟩`` loses ``ε(‖x‖² + ‖y‖²)`` to cancellation, which only matters
    where the chord is small against the norms; those pairs (chord² < ``eps.chord_near`` · (‖x‖² + ‖y‖²):
    nearly coincident, rare in practice) are recomputed from their difference. Differentiable. Under
    ``torch.compile`` or ``torch.func`` transforms, where the data-dependent recomputation cannot run, it
    uses ``torch.cdist`` without its Gram shortcut (exact, slower).
    """
    if torch.compiler.is_compiling() or torch._C._functorch.is_functorch_wrapped_tensor(x):
        c = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
        return c * c
    nx = (x * x).sum(-1, keepdim=True)                                       # (B, H, L, 1)
    ny = (y * y).sum(-1).unsqueeze(-2)                                       # (B, H, 1, S)
    chords = (nx + ny - 2 * (x @ y.transpose(-1, -2))).clamp(min=0)
    near = chords < eps.chord_near(x.dtype) * (nx + ny)
    if near.any():
        b, h, i, j = near.nonzero(as_tuple=True)
        exact = ((x[b, h, i] - y[b, h, j]) ** 2).sum(-1)
        chords = chords.index_put((b, h, i, j), exact)
    return chords
