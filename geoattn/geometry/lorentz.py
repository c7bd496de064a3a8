"""Hyperboloid (Lorentz model) attention: the squared Lorentzian distance, exactly on SDPA."""
from __future__ import annotations

import torch
from torch import Tensor

from ..math import eps, lorentz
from .base import CurvedGeometry, Lifted
from .registry import register


@register
class Lorentz(CurvedGeometry):
    """``score = -d²_L(x, y)/τ = (2/τ)(⟨x, y⟩_L + 1/c)`` for ``x = exp_o(q)``, ``y = exp_o(k)``, κ = -c < 0.

    Affine in the Lorentz inner product, so it runs on SDPA with ``q̃ = (2/τ)(-x₀, x_s)``,
    ``k̃ = (y₀, y_s)``. Aggregation ``"linear"`` or ``"centroid"`` (Lorentz centroid of ``exp_o(v)``,
    mapped back with ``log_o``). Source: Law, Liao, Snell, Zemel, "Lorentzian Distance Learning for
    Hyperbolic Representations", ICML 2019; Chen et al., "Fully Hyperbolic Neural Networks", ACL 2022.
    """

    name = "lorentz"
    affine = True
    curvature_sign = -1
    aggregations = ("linear", "centroid")

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        kb = self.kappa(q).view(-1, 1, 1)                                  # κ, (H, 1, 1)
        x, y = lorentz.expmap0(q.to(cd), kb), lorentz.expmap0(k.to(cd), kb)
        coef = (2 * self.inverse_temperature(q, scale)).view(-1, 1, 1)
        q_vec = coef * torch.cat([-x[..., :1], x[..., 1:]], dim=-1)
        q_bias = (coef / -kb).squeeze(-1).expand(x.shape[:-1])  # 2/(cτ): constant, kept so energies are exact
        return Lifted(q_vec, y, q_terms=(q_bias,))

    def manifold_values(self, v: Tensor) -> Tensor:
        return lorentz.expmap0(v.to(eps.compute_dtype(v.dtype)), self.kappa(v).view(-1, 1, 1))

    def manifold_output(self, out: Tensor) -> Tensor:
        kb = self.kappa(out).view(-1, 1, 1)
        return lorentz.logmap0(lorentz.centroid(out, kb), kb)
