"""The parameter behind a geometry's signed curvature κ, and the map between the two.

A fixed-sign κ (hyperbolic or spherical geometries) is stored as ``r = log|κ|``, so κ moves on a relative scale
(``∂κ/∂r = κ``). A free-sign κ (κ-stereographic) is stored as ``r = asinh κ``: it crosses zero smoothly, where
``∂κ/∂r = cosh r ≈ 1``, and far from zero moves on a relative scale as ``log|κ|`` does (``∂κ/∂r ≈ |κ|``), so an
optimiser reaches a large |κ| (hierarchies ask for κ ≈ −20) in as few steps as with ``log|κ|``, where with κ
itself stored its step size would cap the change per step.
"""
from __future__ import annotations

import torch
from torch import Tensor


def curvature_from_parameter(raw: Tensor, sign: int) -> Tensor:
    """κ from the parameter behind it: ``sign·e^r`` (fixed sign, ``r = log|κ|``) or ``sinh r`` (free sign,
    ``r = asinh κ``); the one home of the map (:class:`~geoattn.geometry.curved.CurvedGeometry` and
    :class:`~geoattn.backends.native.spec.HeadConstants`, whose ∂κ/∂r is κ or ``cosh r``)."""
    return sign * raw.exp() if sign else torch.sinh(raw)


def parameter_from_curvature(kappa: Tensor, sign: int) -> Tensor:
    """The inverse of :func:`curvature_from_parameter`: ``log(sign·κ)`` or ``asinh κ``."""
    return (kappa * sign).log() if sign else torch.asinh(kappa)
