"""Spherical attention: queries and keys as directions, on the sphere of curvature κ > 0."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.native.spec import NativeSpec
from ..math import eps, sphere
from ..math.vectors import robust_norm, unit
from .arguments import check_choice
from .base import AffineForm, Lifted
from .curved import CurvedGeometry
from .registry import register


@register
class Sphere(CurvedGeometry):
    """Queries and keys on the sphere (``x̂ = q/‖q‖``). Two scores, both √E-scaled like SDPA's dot product:

    * ``score="cosine"`` (default): ``√E·⟨x̂, ŷ⟩ / τ`` (cosine attention: Henry et al., "Query-Key
      Normalization for Transformers", 2020; nGPT's ``s_qk = √E``: Loshchilov et al., 2024). On the sphere
      the ambient dot product *is* consistent with the manifold, so this is affine and runs on SDPA.
      The cosine does not depend on the radius, so κ is unused here.
    * ``score="geodesic"``: ``-√E·θ / (√κ τ)`` with the great-circle angle θ formed without cancellation,
      ``θ = 2 arcsin(‖x̂ - ŷ‖/2)`` (``arccos`` of the cosine would lose ``√ε`` for nearby directions).

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
        self.chord = not self.affine
        self.native_kind = "cosine" if self.affine else "sphere"

    def score_multiplier(self, ref: Tensor, scale: float | None) -> Tensor:
        """√E·scale/τ (cosine) or -√E·scale/(√κ τ) (geodesic) per head, (H,)."""
        inv_t = math.sqrt(ref.shape[-1]) * self.inverse_temperature(ref, scale)
        return inv_t if self.affine else -inv_t / self.kappa(ref).sqrt()

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        mu = self.score_multiplier(q, scale)
        if self.affine:
            return self.affine_form(q, k, scale).lifted()
        x, y = unit(q.to(cd), input_dtype=q.dtype), unit(k.to(cd), input_dtype=k.dtype)
        return Lifted(x, y, head=(mu,), chord=True)

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        return head[0] * sphere.angle_from_chord(chord2)

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        """Cosine: the raw vectors with the factors ``μ/‖q‖`` and ``1/‖k‖`` (μ = √E/τ)."""
        if not self.affine:
            raise ValueError("the geodesic sphere score is not affine; only score='cosine' has an affine form")
        cd = eps.compute_dtype(q.dtype)
        floor = eps.norm_min(q.dtype)  # of the dtype the values came in (as for unit(), see geoattn.math.vectors)
        q, k = q.to(cd), k.to(cd)
        mu = self.score_multiplier(q, scale).view(-1, 1)

        def inverse_norm(x: Tensor) -> Tensor:  # 1/‖x‖, 0 for a zero vector (as unit() and the native kernel)
            n = robust_norm(x).squeeze(-1)
            return torch.where(n > 0, 1 / n.clamp(min=floor), torch.zeros_like(n))

        return AffineForm(q, k, q_factor=mu * inverse_norm(q), k_factor=inverse_norm(k))

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        # cosine: μ⟨q, k⟩/(‖q‖‖k‖), the factors from the kernel's norms (κ unused); geodesic: μθ
        root = math.sqrt(q.shape[-1])  # score_multiplier's μ: √E·scale/τ, or -√E·scale/(√κ τ)
        head = (self.native_constants(q, scale, root, curvature=False) if self.affine
                else self.native_constants(q, scale, -root, power=-0.5))
        return NativeSpec(self.native_kind, head, 0.0)

    def manifold_values(self, v: Tensor) -> Tensor:
        return unit(v.to(eps.compute_dtype(v.dtype)), input_dtype=v.dtype)

    def manifold_output(self, out: Tensor) -> Tensor:
        return unit(out)
