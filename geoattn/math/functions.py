"""Curvature-generic elementary functions, smooth through κ = 0.

With ``v = κ‖u‖²`` the trigonometric (κ > 0) and hyperbolic (κ < 0) functions of the
κ-stereographic model are entire functions of ``v``:

* ``cos_sqrt(v) = cos(√v)`` for v ≥ 0, ``cosh(√-v)`` for v < 0;
* ``sinc_sqrt(v) = sin(√v)/√v`` for v ≥ 0, ``sinh(√-v)/√-v`` for v < 0;
* ``arcsinc_sqrt(v) = arcsin(√v)/√v`` for v > 0, ``arsinh(√-v)/√-v`` for v < 0 (the inverse of the chord).

Each is evaluated with a Taylor series near 0 and with ``torch.where`` over *sanitised* branch
inputs elsewhere, so no branch ever produces a NaN that could leak into a gradient. This is written
by hand (rather than taken from geoopt, whose ``tan_k``/``artan_k`` blow up or saturate) because it
must run inside fused kernels and stay exact at the ball's boundary. Plain pointwise torch ops only:
FlexAttention's ``score_mod`` can call :func:`arcsinc_sqrt`.

Reference: Bachmann, Bécigneul, Ganea, "Constant Curvature Graph Convolutional Networks" (ICML 2020)
for the κ-stereographic model.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .eps import SERIES


def _branches(v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Inputs for the positive branch, the negative branch and the series, each always valid."""
    pos = v.clamp(min=SERIES)
    neg = (-v).clamp(min=SERIES)
    small = v.clamp(-SERIES, SERIES)
    return pos, neg, small


def _select(v: Tensor, pos: Tensor, neg: Tensor, series: Tensor) -> Tensor:
    return torch.where(v >= SERIES, pos, torch.where(v <= -SERIES, neg, series))


def cos_sqrt(v: Tensor) -> Tensor:
    """``cos(√v)`` continued to v < 0 as ``cosh(√-v)``; series ``1 - v/2 + v²/24 - v³/720``."""
    p, n, s = _branches(v)
    series = 1 - s / 2 + s * s / 24 - s * s * s / 720
    return _select(v, torch.cos(p.sqrt()), torch.cosh(n.sqrt()), series)


def sinc_sqrt(v: Tensor) -> Tensor:
    """``sin(√v)/√v`` continued to v < 0 as ``sinh(√-v)/√-v``; series ``1 - v/6 + v²/120 - v³/5040``."""
    p, n, s = _branches(v)
    series = 1 - s / 6 + s * s / 120 - s * s * s / 5040
    return _select(v, torch.sin(p.sqrt()) / p.sqrt(), torch.sinh(n.sqrt()) / n.sqrt(), series)


def arcsinc_sqrt(v: Tensor) -> Tensor:
    """``arcsin(√v)/√v`` for v > 0 (v ≤ 1), ``arsinh(√-v)/√-v`` for v < 0; series ``1 + v/6 + 3v²/40 + 5v³/112``.

    Callers clamp ``v ≤ 1 - ARC_MAX`` on the positive side (the chord of a sphere is bounded).
    """
    p, n, s = _branches(v)
    series = 1 + s / 6 + 3 * s * s / 40 + 5 * s * s * s / 112
    return _select(v, torch.asin(p.sqrt()) / p.sqrt(), asinh(n.sqrt()) / n.sqrt(), series)


def asinh(x: Tensor) -> Tensor:
    """``arsinh(x) = sign(x)·log1p(|x| + x²/(1 + √(1 + x²)))``: the same values as :func:`torch.asinh`
    (≤ 1.5e-7 relative in float32), but built from ops that Inductor's CPU backend vectorises
    (``torch.asinh`` is scalar there and dominated fused hyperbolic kernels). Above ``|x| = 1e15``,
    where ``x²`` would overflow float32, it uses ``log(2|x|)``, exact to rounding there."""
    t = torch.where(x < 0, -x, x)  # |x| with derivative ±1 (also at 0, unlike abs)
    small = t.clamp(max=1e15)
    y = torch.log1p(small + small * (small / (1 + torch.sqrt(1 + small * small))))
    y = torch.where(t > 1e15, torch.log(2 * t.clamp(min=1e15)), y)
    return torch.where(x < 0, -y, y)


def safe_sqrt(x: Tensor, floor: float) -> Tensor:
    """``√max(x, floor)``: finite value and gradient when ``x`` rounds to or below zero."""
    return x.clamp(min=floor).sqrt()
