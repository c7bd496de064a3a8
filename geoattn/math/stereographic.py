"""κ-stereographic model (Poincaré ball for κ < 0, projected sphere for κ > 0, R^n at κ = 0).

Conventions (the library's one convention): signed sectional curvature κ; the metric is
``λ_x² ⟨·,·⟩`` with ``λ_x = 2 / (1 + κ‖x‖²)``; ``expmap0(u) = tan_κ(‖u‖) u/‖u‖`` (geoopt's).

Geodesic distance, for points x, y of the model (Bachmann et al. 2020; Ungar 2008)::

    s² = ‖x - y‖² / ((1 + κ‖x‖²)(1 + κ‖y‖²))          (half the conformal chord)
    d(x, y) = 2 s · arcsinc_sqrt(κ s²)                 = (2/√-κ) arsinh(√-κ s)   for κ < 0
                                                       = (2/√κ)  arcsin(√κ s)    for κ > 0
                                                       = 2‖x - y‖                at κ = 0

For κ = -c this is the familiar ``(1/√c) arcosh(1 + 2c‖x-y‖² / ((1-c‖x‖²)(1-c‖y‖²)))``.

Attention works on *tangent* vectors u (queries and keys mapped with ``expmap0``). Writing
``v = κ‖u‖²``, every quantity the distance needs is an entire function of v
(:mod:`geoattn.math.functions`: ``cos_sqrt(v) = cos √v``, ``sinc_sqrt(v) = sin √v / √v``)::

    w = 1/(1 + κ‖x‖²) = cos_sqrt(v)²,    n = ‖x‖² w = ‖u‖² sinc_sqrt(v)²,
    x̃ = w x = cos_sqrt(v) sinc_sqrt(v) u,    s² = n_x w_y + n_y w_x - 2⟨x̃, ỹ⟩

so the distance is a pointwise function of the Gram entry ``⟨x̃, ỹ⟩`` and four per-token terms
(what a fused kernel needs), it never forms ``1 - c‖x‖²`` by subtraction (exact near the
boundary), and it is smooth through κ = 0.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps
from .functions import arcsinc_sqrt, cos_sqrt, sinc_sqrt, safe_sqrt


def clip_tangent(u: Tensor, kappa: Tensor, clip: float = eps.MAX_HYPERBOLIC_ANGLE) -> Tensor:
    """Clip ``√|κ|‖u‖ ≤ clip`` where κ < 0 (κ broadcastable to ``u[..., :1]``). The geometries clip
    explicitly (their ``clip_radius``, counted) and call the functions below with ``clip=None``."""
    norm = u.norm(dim=-1, keepdim=True)
    limit = clip / (-kappa).clamp(min=1e-30).sqrt()
    # min(1, limit/‖u‖) as limit/max(‖u‖, limit): its derivative stays bounded (1/limit), where the
    # clamped quotient's would overflow for tiny ‖u‖ and give 0·inf = NaN gradients
    factor = limit / torch.maximum(norm, limit)
    return torch.where(kappa < 0, u * factor, u)


def lift(u: Tensor, kappa: Tensor, clip: float | None = eps.MAX_HYPERBOLIC_ANGLE) -> tuple[Tensor, Tensor, Tensor]:
    """Tangent vectors ``u`` (..., D) → ``(x̃, n, w)``: (..., D), (...), (...). See the module doc.
    ``clip``: :func:`clip_tangent` first (None: u is used as given)."""
    if clip is not None:
        u = clip_tangent(u, kappa, clip)
    sq = (u * u).sum(-1, keepdim=True)
    v = kappa * sq
    c, s = cos_sqrt(v), sinc_sqrt(v)
    return c * s * u, (sq * s * s).squeeze(-1), (c * c).squeeze(-1)


def half_chord_sq(dot: Tensor, n_x: Tensor, w_x: Tensor, n_y: Tensor, w_y: Tensor) -> Tensor:
    """``s² = n_x w_y + n_y w_x - 2⟨x̃, ỹ⟩`` (pointwise; may round slightly below 0)."""
    return n_x * w_y + n_y * w_x - 2 * dot


def distance_from_half_chord_sq(s2: Tensor, kappa: Tensor) -> Tensor:
    """``d = 2 s arcsinc_sqrt(κ s²)`` with ``s = √max(s², SQRT_MIN)``; κ s² clamped below 1 for κ > 0."""
    s = safe_sqrt(s2, eps.sqrt_min(s2.dtype))
    arg = (kappa * s * s).clamp(max=1 - eps.arc_max(s2.dtype))
    return 2 * s * arcsinc_sqrt(arg)


def radial_factor(a: Tensor, kappa: Tensor) -> Tensor:
    """``σ(a) = a·sinc_sqrt(4κa²)``: ``sinh(2√c a)/(2√c)`` for κ = -c < 0, ``sin(2√κ a)/(2√κ)`` for κ > 0,
    ``a`` at κ = 0 (the circumference factor at hyperbolic radius 2a, divided by 2)."""
    return a * sinc_sqrt(4 * kappa * a * a)


def half_chord_sq_from_chord(chord2: Tensor, a: Tensor, sig_a: Tensor, b: Tensor, sig_b: Tensor,
                             kappa: Tensor) -> Tensor:
    """``s²`` from tangent norms ``a, b``, their :func:`radial_factor` s and the direction chord
    ``chord2 = ‖û − v̂‖² = 2(1 − cos θ)``, with no cancellation::

        s² = (a − b)² sinc_sqrt(κ(a − b)²)² + σ_a σ_b · chord2

    (the law of cosines at hyperbolic radii 2a, 2b: ``sinh²(√c d/2) = sinh²(√c(a − b)) + ½ sinh(2√c a)
    sinh(2√c b)(1 − cos θ)``, divided by c; likewise with sin for κ > 0). Both terms are ≥ 0, so with an
    exact chord (formed per pair from the directions) the distance is exact at every radius.
    """
    delta = a - b
    return delta * delta * sinc_sqrt(kappa * delta * delta) ** 2 + sig_a * sig_b * chord2


def distance(x: Tensor, y: Tensor, kappa: Tensor | float) -> Tensor:
    """Geodesic distance between *points* ``x`` and ``y`` of the κ-stereographic model (last dim).

    Broadcasts over leading dims. Formula in the module docstring (the Gram form, for tests).
    """
    kappa = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    diff = ((x - y) ** 2).sum(-1)
    den = (1 + kappa * (x * x).sum(-1)) * (1 + kappa * (y * y).sum(-1))
    return distance_from_half_chord_sq(diff / den, kappa)


def midpoint_values(u: Tensor, kappa: Tensor, clip: float | None = eps.MAX_HYPERBOLIC_ANGLE) -> Tensor:
    """Values → ``[λ x, λ - 1]`` so that attention computes the gyromidpoint's two sums.

    Ungar's gyromidpoint ``m = ½ ⊗ (Σ pᵢ λᵢ xᵢ / Σ pᵢ (λᵢ - 1))`` with ``λ = 2/(1 + κ‖x‖²)``.
    In tangent terms ``λx = 2x̃`` and ``λ - 1 = w - κ n``.
    """
    xt, n, w = lift(u, kappa, clip)
    return torch.cat([2 * xt, (w - kappa.squeeze(-1) * n).unsqueeze(-1)], dim=-1)


def midpoint_output(out: Tensor, kappa: Tensor) -> Tensor:
    """Finish the gyromidpoint and map it back to the tangent space at the origin.

    ``logmap0(½ ⊗ y) = ½ logmap0(y)`` with ``y = num/den``; rows whose weights are all zero
    (fully masked) stay zero. ``logmap0`` is geoopt's.
    """
    from geoopt.manifolds.stereographic import math as gmath

    num, den = out[..., :-1], out[..., -1:]
    dead = den.abs() < eps.denom_min(out.dtype)
    y = num / torch.where(dead, torch.ones_like(den), den)
    # keep the midpoint strictly inside the ball (κ < 0) before its logarithm
    inside = (1 - eps.arc_max(out.dtype)) / (-kappa).clamp(min=1e-30).sqrt()
    shrink = inside / torch.maximum(y.norm(dim=-1, keepdim=True), inside)  # min(1, inside/‖y‖), bounded derivative
    y = torch.where(kappa < 0, y * shrink, y)
    tangent = 0.5 * gmath.logmap0(y, k=kappa)
    return torch.where(dead, torch.zeros_like(tangent), tangent)
