"""Lorentz (hyperboloid) model of curvature κ = -c < 0: ``{x ∈ R^{1,n} : ⟨x, x⟩_L = -1/c, x₀ > 0}``.

``⟨x, y⟩_L = -x₀y₀ + ⟨x_s, y_s⟩``. The squared Lorentzian distance (Law et al., "Lorentzian
Distance Learning for Hyperbolic Representations", ICML 2019)::

    d²_L(x, y) = ‖x - y‖²_L = -2/c - 2⟨x, y⟩_L

is affine in the Lorentz inner product, which is what lets attention run on SDPA. The geodesic
distance is ``arcosh(-c⟨x, y⟩_L)/√c``. Points come from tangent vectors at the origin
``o = (1/√c, 0)``: ``expmap_o(u) = (cosh(√c‖u‖)/√c, sinh(√c‖u‖) u/(√c‖u‖)) = (cos_sqrt(v)/√c, sinc_sqrt(v) u)``
with ``v = -c‖u‖²``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps
from .functions import arcsinc_sqrt, cos_sqrt, sinc_sqrt
from .stereographic import clip_tangent


def expmap0(u: Tensor, kappa: Tensor, *, clip: float | None) -> Tensor:
    """Tangent vectors at the origin (..., D) → hyperboloid points (..., D+1), time coordinate first.

    ``clip`` (required, so a clip is always a choice): ``√|κ|·‖u‖ ≤ clip`` first
    (:func:`~geoattn.math.stereographic.clip_tangent`; ``eps.MAX_HYPERBOLIC_ANGLE`` = 15 keeps ``cosh`` far from
    overflow in float32), or None where ``u`` is already clipped (a geometry's ``clip_radius``, counted) or is
    known to be small. The clip here is not counted: a geometry clips with
    :meth:`~geoattn.geometry.curved.CurvedGeometry.tangent`, which warns when it acts."""
    if clip is not None:
        u = clip_tangent(u, kappa, clip)
    v = kappa * (u * u).sum(-1, keepdim=True)
    return torch.cat([cos_sqrt(v) / (-kappa).sqrt(), sinc_sqrt(v) * u], dim=-1)


def radial_factor(a: Tensor, kappa: Tensor) -> Tensor:
    """``σ_L(a) = sinh(√c a)/√c = a·sinc_sqrt(κa²)`` (κ = -c): the spatial norm of ``expmap0`` at radius a."""
    return a * sinc_sqrt(kappa * a * a)


def time_excess(a: Tensor, kappa: Tensor) -> Tensor:
    """``P(a) = (cosh(√c a) − 1)/c = (a²/2)·sinc_sqrt(κa²/4)²`` (κ = -c; ``cosh y − 1 = 2 sinh²(y/2)``): how far
    the time coordinate ``x₀ = (1 + cP)/√c`` of ``expmap0`` at radius a lies above the origin's ``1/√c``, times
    √c. No cancellation, and smooth through κ = 0 (→ a²/2): ``x₀y₀ = 1/c + P(a) + P(b) + cP(a)P(b)`` lets an
    affine score drop the ``1/c`` that float32 cannot carry next to O(1) terms."""
    half = a / 2
    return 2 * half * half * sinc_sqrt(kappa * half * half) ** 2


def squared_distance_from_chord(chord2: Tensor, a: Tensor, sig_a: Tensor, b: Tensor, sig_b: Tensor,
                                kappa: Tensor) -> Tensor:
    """``d²_L = -2/c - 2⟨x, y⟩_L`` for ``x = expmap0(u)``, ``y = expmap0(v)`` from tangent norms ``a, b``,
    their :func:`radial_factor` s and the direction chord ``chord2 = ‖û − v̂‖²``, with no cancellation::

        d²_L = (a − b)² sinc_sqrt(κ(a − b)²/4)² + σ_a σ_b · chord2

    (``d²_L = (2/c)(cosh(√c d) − 1)`` and the law of cosines at radii a, b). The affine form that SDPA
    computes, ``-2(x_s·y_s − cosh(√c a)P(b) − P(a))`` (:func:`time_excess`), loses ``~ε(a + b)²cosh(√c a)cosh(√c b)``
    to cancellation instead (the literal ``-2/c - 2⟨x, y⟩_L`` would lose ``ε/c`` more).
    """
    delta = a - b
    return delta * delta * sinc_sqrt(kappa * delta * delta / 4) ** 2 + sig_a * sig_b * chord2


def logmap0(x: Tensor, kappa: Tensor) -> Tensor:
    """Inverse of :func:`expmap0`: ``u = x_s · arsinh(√c‖x_s‖)/(√c‖x_s‖) = x_s arcsinc_sqrt(-c‖x_s‖²)``."""
    xs = x[..., 1:]
    return xs * arcsinc_sqrt(kappa * (xs * xs).sum(-1, keepdim=True))


def inner(x: Tensor, y: Tensor) -> Tensor:
    """Lorentz inner product over the last dim (broadcasting)."""
    return -x[..., 0] * y[..., 0] + (x[..., 1:] * y[..., 1:]).sum(-1)


def distance(x: Tensor, y: Tensor, kappa: Tensor | float) -> Tensor:
    """Geodesic distance ``arcosh(-c⟨x, y⟩_L)/√c``."""
    kappa = torch.as_tensor(kappa, dtype=x.dtype, device=x.device)
    c = -kappa
    arg = (-c * inner(x, y)).clamp(min=1 + eps.sqrt_min(x.dtype))
    return torch.acosh(arg) / c.sqrt()


def centroid(weighted_sum: Tensor, kappa: Tensor) -> Tensor:
    """Lorentz centroid (Law et al. 2019): ``μ = a / (√c √|⟨a, a⟩_L|)`` for ``a = Σ pᵢ xᵢ``."""
    c = -kappa
    norm = (-inner(weighted_sum, weighted_sum)).abs().clamp(min=eps.denom_min(weighted_sum.dtype))
    return weighted_sum / (c.sqrt() * norm.sqrt().unsqueeze(-1))
