"""κ-stereographic attention (any sign of κ) and its hyperbolic special case, the Poincaré ball."""
from __future__ import annotations

import math

from torch import Tensor

import torch

from ..backends.native.spec import NativeSpec
from ..math import eps
from ..math import stereographic as stereo
from ..math.functions import asinh, safe_sqrt
from .base import Lifted
from .curved import CurvedGeometry
from .registry import register


@register
class Stereographic(CurvedGeometry):
    """``score = -√E · d_κ(exp₀(q/√E), exp₀(k/√E)) / (2τ)`` in the κ-stereographic model, κ per head of either sign.

    The scale rule of :mod:`geoattn.geometry.base`: tangent vectors ``u = q/√E`` (unit-variance
    activations land at ``‖u‖ ≈ 1``), the distance halved (the model's metric is 4× Euclidean at the
    origin) and multiplied by √E. Smooth through κ = 0, where the score is the Euclidean distance
    ``-‖q - k‖/τ``; at κ = -1 it equals :class:`Poincare`.

    The distance is computed without cancellation at every radius, from the tangent norms a, b, their
    radial factors σ and the chord of the directions (:func:`geoattn.math.stereographic.half_chord_sq_from_chord`):
    ``s² = (a - b)² sinc_sqrt(κ(a - b)²)² + σ_a σ_b ‖q̂ - k̂‖²``, ``d = 2 s arcsinc_sqrt(κ s²)``. Tangent
    vectors are clipped to ``√|κ|·‖u‖ ≤ clip_radius`` where κ < 0 (default 10: hyperbolic radius 20/√|κ|,
    where float64 inputs still locate points to 1e-10 relative and typical activations, ``‖u‖ ≈ 1``, are
    far inside; counted and warned about when it acts, see :class:`~geoattn.geometry.curved.CurvedGeometry`).

    Aggregation ``"linear"`` (weighted sum of values) or ``"midpoint"`` (gyromidpoint of ``exp₀(v/√E)``,
    mapped back with ``√E·log₀``). Source: Bachmann, Bécigneul, Ganea, "Constant Curvature Graph
    Convolutional Networks", ICML 2020.
    """

    name = "stereographic"
    curvature_sign = 0
    aggregations = ("linear", "midpoint")
    default_clip = 10.0
    chord = True
    native_kind = "stereographic"
    options = ("aggregation", "clip_radius")

    def _radial_terms(self, x: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(direction (B, H, N, E), a (B, H, N), σ(a) (B, H, N)) of raw vectors x."""
        direction, a = self.radial(x.to(eps.compute_dtype(x.dtype)), kappa, x.dtype)
        sig = stereo.radial_factor(a, kappa.view(-1, 1, 1))
        return direction, a.squeeze(-1), sig.squeeze(-1)

    def score_multiplier(self, ref: Tensor, scale: float | None) -> Tensor:
        """``μ = -√E·scale/(2τ)`` per head (H,): score = μ·d."""
        return -math.sqrt(ref.shape[-1]) / 2 * self.inverse_temperature(ref, scale)

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        kappa = self.kappa(q)
        qd, a, sig_a = self._radial_terms(q, kappa)
        kd, b, sig_b = self._radial_terms(k, kappa)
        return Lifted(qd, kd, (a, sig_a), (b, sig_b), head=(kappa, self.score_multiplier(q, scale)), chord=True)

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        kappa, mu = head
        s2 = stereo.half_chord_sq_from_chord(chord2, q_terms[0], q_terms[1], k_terms[0], k_terms[1], kappa)
        return mu * stereo.distance_from_half_chord_sq(s2, kappa)

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        head = self.native_constants(q, scale, -math.sqrt(q.shape[-1]) / 2)   # score_multiplier's μ
        return NativeSpec(self.native_kind, head, self.clip_radius)

    def manifold_values(self, v: Tensor) -> Tensor:
        kappa = self.kappa(v)
        u = self.tangent(v.to(eps.compute_dtype(v.dtype)), kappa, v.dtype)
        return stereo.midpoint_values(u, kappa.view(-1, 1, 1), clip=None)

    def manifold_output(self, out: Tensor) -> Tensor:
        return math.sqrt(out.shape[-1] - 1) * stereo.midpoint_output(out, self.kappa(out).view(-1, 1, 1))


@register
class Poincare(Stereographic):
    """The Poincaré ball of curvature κ = -c < 0: :class:`Stereographic` restricted to hyperbolic heads,

    ``d(x, y) = (1/√c) arcosh(1 + 2c‖x - y‖² / ((1 - c‖x‖²)(1 - c‖y‖²))) = (2/√c) arsinh(√c s)``

    (Nickel & Kiela, "Poincaré Embeddings", NeurIPS 2017; Gulcehre et al., "Hyperbolic Attention
    Networks", ICLR 2019), scored as ``-√E · d(exp₀(q/√E), exp₀(k/√E)) / (2τ)``. Aggregation
    ``"linear"`` or ``"midpoint"`` (Einstein/gyro-midpoint, Ungar).
    """

    name = "poincare"
    curvature_sign = -1

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        """The stereographic score with κ = -c < 0 written directly (fewer ops than the κ-generic form):
        ``s² = sinh²(√c (a - b))/c + σ_a σ_b chord²``, ``d = (2/√c) arsinh(√c s)``."""
        kappa, mu = head
        sqrt_c = (-kappa).sqrt()
        radial = torch.sinh(sqrt_c * (q_terms[0] - k_terms[0])) / sqrt_c
        s = safe_sqrt(radial * radial + q_terms[1] * k_terms[1] * chord2, eps.sqrt_min(chord2.dtype))
        return mu * 2 * asinh(sqrt_c * s) / sqrt_c
