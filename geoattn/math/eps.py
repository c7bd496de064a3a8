"""Every numerical tolerance of geoattn, in one place, per dtype.

Hyperbolic maths breaks near the ball's boundary and in low precision. geoattn computes all
geometric scores in float32 or wider (``compute_dtype``) and clamps only where the maths needs it:

* ``SQRT_MIN``: floor under a squared distance before its square root, so the gradient of
  ``sqrt`` stays finite when a query coincides with a key (distance then reads ``sqrt(SQRT_MIN)``).
* ``SERIES``: below this ``|v|`` the entire functions ``cos_sqrt``, ``sinc_sqrt`` and
  ``arcsinc_sqrt`` of :mod:`geoattn.math.functions` switch to their Taylor series, which makes every κ-formula smooth
  through κ = 0 (error of the series < 1e-17 relative).
* ``ARC_MAX``: arguments of ``arcsin``/``arccos`` are clamped to ``±(1 - ARC_MAX)`` so their
  derivatives stay finite at antipodal or coincident points on the sphere.
* ``DENOM_MIN``: floor under denominators of normalisations (midpoints, centroids).
* ``NORM_MIN``: floor under ``‖x‖`` when a vector is made a unit vector, chosen per *input* dtype so
  the gradient ``1/‖x‖`` of a (near-)zero vector stays representable: 1e-15 (float64), 1e-10 (float32),
  1e-2 (bf16/fp16: a gradient of at most ~100× the upstream one, far below fp16's 65504).
* ``MAX_HYPERBOLIC_ANGLE``: tangent vectors are clipped to ``sqrt(|κ|)·‖u‖ ≤ 15`` before the
  exponential map on negatively curved geometries (ball norm ``1 - 1.9e-13`` of the radius), so
  ``cosh²`` stays far from overflow in float32.

Known limit of the fused (Gram) form ``s² = n_x w_y + n_y w_x - 2⟨x̃, ỹ⟩``: for nearly coincident
points at hyperbolic radius θ = √|κ|‖u‖ it loses ``√ε·cosh²θ`` in absolute terms (the same trade-off
``torch.cdist`` makes for Euclidean distances). Points at distinct directions keep full relative
precision. Float64 reaches θ ≈ 8 with d(x, x) < 1e-4; in float32 keep θ ≲ 3 where near neighbours
must be resolved to 1e-3 (tested in ``tests/test_properties.py``).
"""
from __future__ import annotations

import torch

MAX_HYPERBOLIC_ANGLE = 15.0

_SQRT_MIN = {torch.float64: 1e-30, torch.float32: 1e-14}
_ARC_MAX = {torch.float64: 1e-12, torch.float32: 1e-6}
_DENOM_MIN = {torch.float64: 1e-30, torch.float32: 1e-15}
_CHORD_NEAR = {torch.float64: 1e-4, torch.float32: 1 / 16}
_NORM_MIN = {torch.float64: 1e-15, torch.float32: 1e-10, torch.bfloat16: 1e-2, torch.float16: 1e-2}
SERIES = 1e-4


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype geometric scores are computed in: float64 stays, everything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sqrt_min(dtype: torch.dtype) -> float:
    return _SQRT_MIN[compute_dtype(dtype)]


def arc_max(dtype: torch.dtype) -> float:
    return _ARC_MAX[compute_dtype(dtype)]


def denom_min(dtype: torch.dtype) -> float:
    return _DENOM_MIN[compute_dtype(dtype)]


def norm_min(input_dtype: torch.dtype) -> float:
    return _NORM_MIN.get(input_dtype, 1e-10)


def chord_near(dtype: torch.dtype) -> float:
    """Below ``chord_near · (‖x‖² + ‖y‖²)`` a squared chord is recomputed from the difference
    (:func:`geoattn.math.vectors.squared_chords`): elsewhere the Gram form's relative error is at most
    ``~4ε/chord_near`` (1e-12 in float64, 2e-6 in float32)."""
    return _CHORD_NEAR[compute_dtype(dtype)]
