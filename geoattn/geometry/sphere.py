"""Spherical attention: queries and keys as directions, on the sphere of curvature κ > 0."""
from __future__ import annotations

from torch import Tensor

from ..math import eps, sphere
from .base import CurvedGeometry, Lifted, check_choice
from .registry import register


@register
class Sphere(CurvedGeometry):
    """Queries and keys on the sphere (``x̂ = q/‖q‖``). Two scores:

    * ``score="cosine"`` (default): ``⟨x̂, ŷ⟩ / τ`` with a per-head learnable scale ``1/τ`` (cosine
      attention: Henry et al., "Query-Key Normalization for Transformers", 2020; Loshchilov et al.,
      "nGPT", 2024). On the sphere the ambient dot product *is* consistent with the manifold, so this is
      affine and runs on SDPA. The cosine does not depend on the radius, so κ is unused here.
    * ``score="geodesic"``: ``-arccos(⟨x̂, ŷ⟩) / (√κ τ)``, the great-circle distance.

    Aggregation ``"linear"`` or ``"mean"`` (normalised spherical mean of unit values,
    ``Σ pᵢ v̂ᵢ / ‖Σ pᵢ v̂ᵢ‖``; a zero row stays zero).
    """

    name = "sphere"
    curvature_sign = 1
    aggregations = ("linear", "mean")
    options = ("score", "aggregation")

    def __init__(self, score: str = "cosine", curvature=1.0, temperature=1.0, num_heads: int = 1,
                 learnable: bool = False, aggregation: str = "linear", head_dim: int | None = None) -> None:
        super().__init__(curvature, temperature, num_heads, learnable, aggregation, head_dim)
        self.score = check_choice("sphere score", score, ("cosine", "geodesic"))
        self.affine = self.score == "cosine"

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        x, y = sphere.normalize(q.to(cd), q.dtype), sphere.normalize(k.to(cd), k.dtype)
        inv_t = self.inverse_temperature(q, scale)
        if self.affine:
            return Lifted(inv_t.view(-1, 1, 1) * x, y)
        return Lifted(x, y, head=(inv_t / self.kappa(q).sqrt(),))

    def score_from_dot(self, dot, q_terms, k_terms, head):
        if self.affine:
            return super().score_from_dot(dot, q_terms, k_terms, head)
        return -head[0] * sphere.angle_from_cosine(dot)

    def manifold_values(self, v: Tensor) -> Tensor:
        return sphere.normalize(v.to(eps.compute_dtype(v.dtype)), v.dtype)

    def manifold_output(self, out: Tensor) -> Tensor:
        return sphere.normalize(out)
