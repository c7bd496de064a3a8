"""What a geometry hands the native kernel (:class:`NativeSpec`): the per-head constants κ and the score multiplier
μ (:class:`HeadConstants`), the learned metric's G (:class:`MetricConstants`), and their chain rules.

Every native call needs κ (H,) and μ (H,) in float32 from the geometry's float64 parameters (``log|κ|`` or
``asinh κ``, and ``log τ``). Built from tensor ops under autograd, that is a chain of about eight small operations
forward and as many autograd nodes backward, each paying torch's per-op dispatch on (H,)-sized tensors, a
cost comparable to the small kernels themselves. A :class:`HeadConstants` therefore takes one torch ``exp``
(``sinh``, ``cosh``) per parameter (the transcendental, so the bits are torch's) and does the rest of the
arithmetic on Python floats (IEEE double: the same products, quotients and square roots as torch's float64
kernels, bit for bit), and the kernel's operator (:func:`geoattn.backends.native.op.native_attention`) takes the
parameters themselves and applies the derivatives written out here:

    κ = s·e^r (s = ±1, r = log|κ|) or κ = sinh r (free sign, s = 0),      μ = c·e^{−log τ}·|κ|^p,
    ∂μ/∂log τ = −μ,   ∂μ/∂κ = p·μ/κ,   ∂κ/∂r = κ (s = ±1) or cosh r,

evaluated at the κ and μ of the forward. Checked against the plain tensor expression (κ and μ bit for bit) and
its autograd gradients, and the gradients bit for bit against the same chain rule as tensor ops
(tests/test_native.py).
"""
from __future__ import annotations

import ctypes
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ...geometry.curvature import curvature_from_parameter
from ...math.metric import metric_tensor

# |κ|^p as torch's pow(tensor, scalar) computes it for these exponents (exact: sqrt, products, quotients)
# (and as IEEE arithmetic does at |κ| = 0: inf where it divides by zero)
_POWERS = {0.5: math.sqrt, -0.5: lambda x: 1.0 / math.sqrt(x) if x else math.inf, 1.0: lambda x: x,
           -1.0: lambda x: 1.0 / x if x else math.inf, 2.0: lambda x: x * x,
           -2.0: lambda x: 1.0 / (x * x) if x else math.inf}


def _per_head(values: list[float], heads: int) -> list[float]:
    """A parameter's values (1 or ``heads`` of them) for every head."""
    return values * heads if len(values) == 1 else values


def _to_parameter(values: list[float], like: Tensor) -> Tensor:
    """Per-head gradients → the gradient of the parameter ``like`` (summed over the heads that share it, by torch's
    own reduction, so the bits are those of ``sum_to_size``)."""
    # from a ctypes buffer, which skips torch.tensor's per-element Python conversion; .to: no copy on CPU
    grad = torch.frombuffer((ctypes.c_double * len(values))(*values), dtype=torch.float64).to(like.device, like.dtype)
    return grad.reshape(like.shape) if grad.numel() == like.numel() else grad.sum_to_size(like.shape)


_MEMO: dict[tuple, tuple] = {}  # the parameters' values (and dtypes) and the options → (κ, μ) of _doubles
_MEMO_SIZE = 1024


@dataclass
class HeadConstants:
    """κ and μ of ``heads`` heads from the parameters ``raw`` (the curvature parameter, ``log|κ|`` when
    ``sign`` is ±1, ``asinh κ`` when 0; None: no curvature, κ = 0) and ``log_t`` (the log-temperature), with
    ``μ = coef·e^{−log τ}·|κ|^power``."""

    raw: Tensor | None
    log_t: Tensor
    heads: int
    sign: int = 0
    coef: float = 1.0
    power: float = 0.0
    _at: tuple | None = field(default=None, init=False, repr=False)  # (κ, μ) per head in double, of values()

    def _doubles(self) -> tuple[list[float] | None, list[float]]:
        """(κ or None, μ), one float per head in double precision; remembered by the parameters' values (a decoding
        step calls with the same parameters every time: reading them costs two ``tolist``, computing κ and μ
        five torch ops)."""
        raw, log_t = None if self.raw is None else self.raw.detach(), self.log_t.detach()
        key = (None if raw is None else (raw.dtype, *raw.tolist()), log_t.dtype, *log_t.tolist(), self.heads,
               self.sign, self.coef, self.power)
        found = _MEMO.get(key)
        if found is None:
            if len(_MEMO) >= _MEMO_SIZE:
                _MEMO.clear()
            found = _MEMO[key] = self._compute()
        return found

    def _compute(self) -> tuple[list[float] | None, list[float]]:
        kappa = None
        if self.raw is not None:
            kappa = _per_head(curvature_from_parameter(self.raw.detach(), self.sign).tolist(), self.heads)
        mu = _per_head([self.coef * e for e in (-self.log_t.detach()).exp().tolist()], self.heads)
        if self.power:
            power = _POWERS.get(float(self.power), lambda x: math.pow(x, self.power))
            mu = [m * power(abs(k)) for m, k in zip(mu, kappa)]
        return kappa, mu

    def values(self) -> tuple[list[float], list[float]]:
        """``(κ, μ)``, one float per head each (double precision; κ = 0 without curvature), outside autograd.
        The kernel takes them rounded to float32."""
        self._at = kappa, mu = self._doubles()
        return ([0.0] * self.heads if kappa is None else kappa), mu

    def grads(self, d_kappa: Sequence[float], d_mu: Sequence[float]) -> tuple[Tensor | None, Tensor]:
        """The gradients of ``raw`` and ``log_t`` (tensors like them) from those of κ and μ (one float per
        head; summed over the heads that share a parameter), at the κ and μ of :meth:`values`; None for an
        absent ``raw``."""
        kappa, mu = self._at if self._at is not None else self._doubles()
        d_logt = _to_parameter([-g * m for g, m in zip(d_mu, mu)], self.log_t)
        if kappa is None:
            return None, d_logt
        dk = list(d_kappa)
        if self.power:
            dk = [g + gm * self.power * m / k for g, gm, m, k in zip(dk, d_mu, mu, kappa)]
        slope = kappa if self.sign else _per_head(self.raw.detach().cosh().tolist(), self.heads)  # ∂κ/∂r
        d_raw = [g * k for g, k in zip(dk, slope)]
        return _to_parameter(d_raw, self.raw), d_logt


_G_MEMO: dict[tuple, tuple] = {}  # (id of factor, ε, heads) → (factor, raw_diagonal, G) of MetricConstants.values
_BITS = {8: torch.int64, 4: torch.int32, 2: torch.int16}


def _same_bits(kept: Tensor | None, t: Tensor | None) -> bool:
    """Whether ``t`` holds exactly the bits of ``kept`` (same dtype, shape, device and values, signed zeros and
    NaNs included), or both are None."""
    if kept is None or t is None:
        return kept is t
    if kept.dtype != t.dtype or kept.shape != t.shape or kept.device != t.device or t.element_size() not in _BITS:
        return False
    bits = _BITS[t.element_size()]
    return torch.equal(kept.view(bits), t.detach().view(bits))


@dataclass
class MetricConstants:
    """G of ``heads`` heads for the native kernel without an autograd graph, and its chain rule, in the manner
    of :class:`HeadConstants`: the kernel's operator
    (:func:`geoattn.backends.native.op.native_attention`) takes ``factor`` and ``raw_diagonal`` themselves,
    so a call is one autograd node (G's graph would add four: the baddbmm, its transpose, the cast, the expand).
    With dG the gradient of the G the kernel used (not symmetrised, ``metric.h``) and
    :func:`metric_tensor`'s form,

        G = F Fᵀ + εI                    ⇒  dF = (dG + dGᵀ) F,
        G = U Uᵀ + diag(softplus(d) + ε)  ⇒  dU = (dG + dGᵀ) U,   dd = diag(dG) ⊙ sigmoid(d),

    summed over the heads that share a parameter. Checked against :func:`metric_tensor`'s autograd gradients
    (tests/test_native.py)."""

    factor: Tensor
    raw_diagonal: Tensor | None
    epsilon: float
    heads: int

    def values(self) -> Tensor:
        """G, (heads, E, E) float32, contiguous, outside autograd (read only: remembered while the parameters keep
        their bits, as over the steps of decoding, where forming G costs more than comparing them)."""
        with torch.no_grad():
            key = (id(self.factor), self.epsilon, self.heads)
            found = _G_MEMO.get(key)
            if found is not None and _same_bits(found[0], self.factor) and _same_bits(found[1], self.raw_diagonal):
                return found[2]
            g = metric_tensor(self.factor, self.raw_diagonal, self.epsilon).float()
            g = g if g.shape[0] == self.heads else g.expand(self.heads, -1, -1).contiguous()
            if len(_G_MEMO) >= 64:
                _G_MEMO.clear()
            diagonal = None if self.raw_diagonal is None else self.raw_diagonal.clone()
            _G_MEMO[key] = (self.factor.clone(), diagonal, g)
            return g

    def grads(self, d_metric: Tensor) -> tuple[Tensor, Tensor | None]:
        """The gradients of ``factor`` and ``raw_diagonal`` (None when absent) from that of G ((heads, E, E),
        summed here over the heads that share a parameter, in the parameters' dtype)."""
        with torch.no_grad():
            f = self.factor
            dg = d_metric.to(f.dtype)
            if dg.shape[0] != f.shape[0]:  # heads that share a parameter
                dg = dg.sum_to_size(f.shape[0], *d_metric.shape[1:])
            d_factor = torch.bmm(dg + dg.transpose(-1, -2), f)  # what @ runs, without matmul's dispatch
            if self.raw_diagonal is None:
                return d_factor, None
            return d_factor, dg.diagonal(dim1=-2, dim2=-1) * torch.sigmoid(self.raw_diagonal)


@dataclass
class NativeSpec:
    """What the native CPU kernel needs from a geometry (:mod:`geoattn.backends.native`, from
    :meth:`~geoattn.geometry.base.Geometry.native_spec`): the kernel ``kind``
    (``"stereographic"``, ``"sphere"``; ``"lorentz"``, ``"cosine"``, ``"l2"``, whose affine terms the kernel
    computes from the token norms; ``"affine"``, which runs :meth:`Geometry.affine_form`), the per-head κ and
    score multiplier μ as :class:`HeadConstants` (None for ``"affine"``: its terms carry
    them; the kernel's operator differentiates the parameters behind them), the tangent ``clip``
    (√|κ|·‖u‖ ≤ clip, κ < 0) and, for ``"metric"`` (whose terms the kernel computes from q, k and G), the
    per-head metric G as :class:`MetricConstants` (likewise without a graph)."""

    kind: str
    head: HeadConstants | None
    clip: float
    metric: MetricConstants | None = None  # the metric kind's G (H, E, E) and its chain rule
