"""The per-head constants of the native kernel (κ and the score multiplier μ) as one autograd node.

Every native call needs κ (H,) and μ (H,) in float32 from the geometry's float64 parameters (``log|κ|`` or κ,
and ``log τ``). Built from tensor ops, that is a chain of about eight small operations forward and as many
autograd nodes backward, ~0.14 ms per call on one core (measured at the quick benchmark shape, where the
whole SDPA call takes ~1.5 ms). :func:`head_constants` computes the same values in one
``torch.autograd.Function`` with the derivatives written out:

    κ = s·e^r (s = ±1, r = log|κ|) or κ = r (free sign),      μ = c·e^{−log τ}·|κ|^p,
    ∂μ/∂log τ = −μ,   ∂μ/∂κ = p·μ/κ,   ∂κ/∂r = κ (log-parametrised) or 1.

Checked against the plain tensor expression with ``torch.autograd.gradcheck`` (tests/test_native.py).
"""
from __future__ import annotations

import torch
from torch import Tensor


class _HeadConstants(torch.autograd.Function):
    @staticmethod
    def forward(ctx, raw: Tensor | None, log_t: Tensor, sign: int, coef: float, power: float, heads: int):
        kappa = None if raw is None else (sign * raw.exp() if sign else raw)
        mu = coef * (-log_t).exp()
        if power:
            mu = mu * kappa.abs() ** power
        ctx.save_for_backward(kappa, mu)
        ctx.sign, ctx.power, ctx.shapes = sign, power, (None if raw is None else raw.shape, log_t.shape)
        kappa32 = torch.zeros(heads, dtype=torch.float32, device=log_t.device) if kappa is None else \
            kappa.float().expand(heads).contiguous()
        return kappa32, mu.float().expand(heads).contiguous()

    @staticmethod
    def backward(ctx, d_kappa: Tensor, d_mu: Tensor):
        kappa, mu = ctx.saved_tensors
        raw_shape, t_shape = ctx.shapes
        d_mu = d_mu.to(mu.dtype)
        d_logt = (-d_mu * mu.expand_as(d_mu)).sum_to_size(t_shape)
        if kappa is None:
            return None, d_logt, None, None, None, None
        dk = d_kappa.to(kappa.dtype)
        if ctx.power:
            dk = dk + d_mu * ctx.power * (mu / kappa).expand_as(d_mu)
        d_raw = dk * kappa.expand_as(dk) if ctx.sign else dk
        return d_raw.sum_to_size(raw_shape), d_logt, None, None, None, None


def head_constants(raw: Tensor | None, log_t: Tensor, heads: int, sign: int = 0, coef: float = 1.0,
                   power: float = 0.0) -> tuple[Tensor, Tensor]:
    """``(κ, μ)`` (heads,) float32 from the per-head parameters (see the module docstring): ``raw`` the
    curvature parameter (``log|κ|`` when ``sign`` is ±1, κ itself when 0; None: no curvature, κ = 0),
    ``log_t`` the log-temperature, ``μ = coef·e^{−log τ}·|κ|^power``."""
    return _HeadConstants.apply(raw, log_t, sign, float(coef), float(power), heads)
