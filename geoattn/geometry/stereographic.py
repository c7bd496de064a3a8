"""κ-stereographic attention (any sign of κ) and its hyperbolic special case, the Poincaré ball."""
from __future__ import annotations

from torch import Tensor

from ..math import eps
from ..math import stereographic as stereo
from ..math.functions import asinh, safe_sqrt
from .base import CurvedGeometry, Lifted
from .registry import register


@register
class Stereographic(CurvedGeometry):
    """``score = -d_κ(exp₀(q), exp₀(k)) / τ`` in the κ-stereographic model, κ per head of either sign.

    Smooth through κ = 0, where it is Euclidean-distance attention ``-2‖q - k‖/τ``; at κ = -1 it
    equals :class:`Poincare`. Distance formula in :mod:`geoattn.math.stereographic`. Aggregation
    ``"linear"`` (weighted sum of values) or ``"midpoint"`` (gyromidpoint of ``exp₀(v)``, mapped back
    with ``log₀``). Source: Bachmann, Bécigneul, Ganea, "Constant Curvature Graph Convolutional
    Networks", ICML 2020.
    """

    name = "stereographic"
    curvature_sign = 0
    aggregations = ("linear", "midpoint")

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        kappa = self.kappa(q)
        kb = kappa.view(-1, 1, 1)
        xq, nq, wq = stereo.lift(q.to(cd), kb)
        xk, nk, wk = stereo.lift(k.to(cd), kb)
        return Lifted(xq, xk, (nq, wq), (nk, wk), head=(kappa, self.inverse_temperature(q, scale)))

    def score_from_dot(self, dot, q_terms, k_terms, head):
        kappa, inv_t = head
        s2 = stereo.half_chord_sq(dot, q_terms[0], q_terms[1], k_terms[0], k_terms[1])
        return -inv_t * stereo.distance_from_half_chord_sq(s2, kappa)

    def manifold_values(self, v: Tensor) -> Tensor:
        return stereo.midpoint_values(v.to(eps.compute_dtype(v.dtype)), self.kappa(v).view(-1, 1, 1))

    def manifold_output(self, out: Tensor) -> Tensor:
        return stereo.midpoint_output(out, self.kappa(out).view(-1, 1, 1))


@register
class Poincare(Stereographic):
    """Poincaré ball of curvature κ = -c < 0: ``score = -d(exp₀(q), exp₀(k)) / τ`` with

    ``d(x, y) = (1/√c) arcosh(1 + 2c‖x - y‖² / ((1 - c‖x‖²)(1 - c‖y‖²))) = (2/√c) arsinh(√c s)``

    (Nickel & Kiela, "Poincaré Embeddings", NeurIPS 2017; Gulcehre et al., "Hyperbolic Attention
    Networks", ICLR 2019). Aggregation ``"linear"`` or ``"midpoint"`` (Einstein/gyro-midpoint, Ungar).
    """

    name = "poincare"
    curvature_sign = -1

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        lifted = super().lift(q, k, scale)
        kappa, inv_t = lifted.head
        sqrt_c = (-kappa).sqrt()
        lifted.head = (sqrt_c, 2 * inv_t / sqrt_c)
        return lifted

    def score_from_dot(self, dot, q_terms, k_terms, head):
        sqrt_c, coef = head
        s2 = stereo.half_chord_sq(dot, q_terms[0], q_terms[1], k_terms[0], k_terms[1])
        return -coef * asinh(sqrt_c * safe_sqrt(s2, eps.sqrt_min(s2.dtype)))
