"""The sphere of curvature κ > 0 (radius 1/√κ), with points given as directions in R^n.

A sphere inside R^n is where the ambient dot product is already consistent with the manifold:
for unit vectors the cosine ``⟨x̂, ŷ⟩`` is the Euclidean dot product, and the geodesic distance is
``arccos(⟨x̂, ŷ⟩)/√κ``.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import eps
from .vectors import unit


def normalize(x: Tensor, input_dtype: torch.dtype | None = None) -> Tensor:
    """``x / max(‖x‖, NORM_MIN)``: a zero vector stays zero; the floor follows the dtype the values came in
    (:func:`geoattn.math.vectors.unit`, which neither overflows nor underflows)."""
    return unit(x, input_dtype=input_dtype)


def angle_from_cosine(cos: Tensor) -> Tensor:
    """``arccos`` with its argument clamped to ``±(1 - ARC_MAX)`` (finite gradient at ±1)."""
    bound = 1 - eps.arc_max(cos.dtype)
    return torch.acos(cos.clamp(-bound, bound))



def angle_from_chord(chord2: Tensor) -> Tensor:
    """The angle between two directions from their chord ``‖x̂ − ŷ‖²``: ``θ = 2 arcsin(‖x̂ − ŷ‖/2)``, exact for
    nearby directions (where ``arccos`` of the cosine loses ``√ε``); the argument is clamped to
    ``1 - ARC_MAX/2`` (finite gradient at antipodal points, θ off by ≤ √(2 ARC_MAX) there) and floored at
    ``SQRT_MIN`` (at coincident ones)."""
    # ¼chord² ≤ 1 - ARC_MAX/2: the same bound on the derivative as arccos clamped at ±(1 - ARC_MAX)
    quarter = (chord2 / 4).clamp(min=eps.sqrt_min(chord2.dtype), max=1 - eps.arc_max(chord2.dtype) / 2)
    return 2 * torch.asin(quarter.sqrt())
