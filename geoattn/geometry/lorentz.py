"""Hyperboloid (Lorentz model) attention: the squared Lorentzian distance, exactly on SDPA."""
from __future__ import annotations

import torch
from torch import Tensor

from ..math import eps, lorentz
from .base import CurvedGeometry, Lifted, check_choice
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
    options = ("aggregation",)

    def __init__(self, curvature=-1.0, temperature=1.0, num_heads: int = 1, learnable: bool = False,
                 aggregation: str = "linear", head_dim: int | None = None) -> None:
        super().__init__(curvature, temperature, num_heads, learnable)
        self.aggregation = check_choice("aggregation", aggregation, ("linear", "centroid"))

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        kappa = self.kappa(q)
        kb = kappa.view(-1, 1, 1)
        x, y = lorentz.expmap0(q.to(cd), kb), lorentz.expmap0(k.to(cd), kb)
        coef = (2 * self.inverse_temperature(q, scale)).view(-1, 1, 1)
        q_vec = coef * torch.cat([-x[..., :1], x[..., 1:]], dim=-1)
        q_bias = (coef / -kb).squeeze(-1).expand(x.shape[:-1])  # 2/(cτ): constant, kept so energies are exact
        return Lifted(q_vec, y, q_terms=(q_bias,))

    def pre_values(self, v: Tensor) -> Tensor:
        if self.aggregation == "linear":
            return v
        return lorentz.expmap0(v.to(eps.compute_dtype(v.dtype)), self.kappa(v).view(-1, 1, 1))

    def post_values(self, out: Tensor) -> Tensor:
        if self.aggregation == "linear":
            return out
        kb = self.kappa(out).view(-1, 1, 1)
        return lorentz.logmap0(lorentz.centroid(out, kb), kb)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, aggregation={self.aggregation!r}"
