"""The per-head constants of the native kernel, κ and the score multiplier μ, and their chain rule.

Every native call needs κ (H,) and μ (H,) in float32 from the geometry's float64 parameters (``log|κ|`` or κ,
and ``log τ``). Built from tensor ops under autograd, that is a chain of about eight small operations forward
and as many autograd nodes backward, ~0.14 ms per call on one core (measured at the quick benchmark shape,
where the whole SDPA call takes ~1.5 ms). A :class:`HeadConstants` instead gives the values without a graph
and the kernel's autograd function (:class:`geoattn.backends.native.kernel.NativeAttention`) takes the
parameters themselves and applies the derivatives written out here:

    κ = s·e^r (s = ±1, r = log|κ|) or κ = r (free sign, s = 0),      μ = c·e^{−log τ}·|κ|^p,
    ∂μ/∂log τ = −μ,   ∂μ/∂κ = p·μ/κ,   ∂κ/∂r = κ (s = ±1) or 1.

Checked against the plain tensor expression and its autograd gradients (tests/test_native.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class HeadConstants:
    """κ and μ of ``heads`` heads from the parameters ``raw`` (the curvature parameter, ``log|κ|`` when
    ``sign`` is ±1, κ itself when 0; None: no curvature, κ = 0) and ``log_t`` (the log-temperature), with
    ``μ = coef·e^{−log τ}·|κ|^power``."""

    raw: Tensor | None
    log_t: Tensor
    heads: int
    sign: int = 0
    coef: float = 1.0
    power: float = 0.0

    def _kappa(self, raw: Tensor | None) -> Tensor | None:
        return None if raw is None else (self.sign * raw.exp() if self.sign else raw)

    def _mu(self, kappa: Tensor | None, log_t: Tensor) -> Tensor:
        mu = self.coef * (-log_t).exp()
        return mu * kappa.abs() ** self.power if self.power else mu

    def values(self) -> tuple[Tensor, Tensor]:
        """``(κ, μ)``, (heads,) float32 each, contiguous, outside autograd (κ = 0 without curvature)."""
        with torch.no_grad():
            kappa = self._kappa(self.raw)
            mu = self._mu(kappa, self.log_t).float().expand(self.heads).contiguous()
            if kappa is None:
                return torch.zeros(self.heads, dtype=torch.float32, device=mu.device), mu
            return kappa.float().expand(self.heads).contiguous(), mu

    def grads(self, d_kappa: Tensor, d_mu: Tensor) -> tuple[Tensor | None, Tensor]:
        """The gradients of ``raw`` and ``log_t`` from those of κ and μ ((heads,), summed over the heads that
        share a parameter); None for an absent ``raw``."""
        with torch.no_grad():
            kappa = self._kappa(self.raw)
            mu = self._mu(kappa, self.log_t).expand(self.heads)
            d_mu = d_mu.to(mu.dtype)
            d_logt = (-d_mu * mu).sum_to_size(self.log_t.shape)
            if kappa is None:
                return None, d_logt
            kappa = kappa.expand(self.heads)
            dk = d_kappa.to(kappa.dtype)
            if self.power:
                dk = dk + d_mu * self.power * mu / kappa
            d_raw = dk * kappa if self.sign else dk
            return d_raw.sum_to_size(self.raw.shape), d_logt
