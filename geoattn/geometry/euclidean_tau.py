"""The dot product with a learnable per-head temperature: the control for the curved geometries' temperature."""
from __future__ import annotations

import math

from torch import Tensor

from ..math import eps
from .base import AffineForm, TemperedGeometry
from .registry import register


@register
class EuclideanTau(TemperedGeometry):
    """``score = ⟨q, k⟩ / (√E τ_h) · scale`` with a positive per-head temperature τ (stored as ``log τ``, 1 at
    initialisation, so it starts as exactly SDPA's ``⟨q, k⟩/√E``).

    Every curved geometry carries a learnable τ and SDPA's fixed ``1/√E`` does not; this is the dot product
    given the same degree of freedom, so a benchmark can tell a gain of curvature from a gain of a learned
    scale (the sphere's cosine is the matching QK-norm control). ``scale`` multiplies the score, as for the
    other tempered geometries (``None`` = 1). The score is affine with no per-token terms (``q̃ = q·μ_h``,
    μ = scale/(√E τ)), so SDPA runs it at head dim E, as it runs the baseline: ``auto`` picks SDPA, with no
    ``native_kind`` (the native kernel's ``affine`` kind pays off where SDPA needs an extra column for a
    per-key term, which this score has none of).

    Sources: Vaswani et al., "Attention Is All You Need", 2017 (the ``1/√E`` scale); a learnable temperature
    on the logits as in CLIP (Radford et al., 2021, ``logit_scale``) and in the curved geometries here.
    """

    name = "euclidean-tau"
    affine = True

    def lift(self, q: Tensor, k: Tensor, scale: float | None):
        return self.affine_form(q, k, scale).lifted()

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        cd = eps.compute_dtype(q.dtype)
        q, k = q.to(cd), k.to(cd)
        mu = self.inverse_temperature(q, scale) / math.sqrt(q.shape[-1])      # (H,)
        return AffineForm(q, k, q_factor=mu.view(-1, 1))
