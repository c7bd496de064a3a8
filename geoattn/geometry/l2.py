"""Squared Euclidean distance attention: the flat *distance* score, exactly on SDPA."""
from __future__ import annotations

import math

from torch import Tensor

from ..math import eps
from .base import Lifted, TemperedGeometry, register


@register
class L2(TemperedGeometry):
    """``score = -‖q - k‖² / (2√E τ_h)`` (E the head dimension, τ a per-head temperature).

    The flat baseline of distance-based attention, kept apart from :class:`Euclidean` (the dot product):
    a dot product can rank keys by their norm, a distance cannot. Expanding the square,

    ``-‖q - k‖²/(2√E τ) = ⟨q, k⟩/(√E τ) - ‖k‖²/(2√E τ) - ‖q‖²/(2√E τ)``,

    so the ``q·k`` interaction is exactly SDPA's ``⟨q, k⟩/√E`` at τ = 1, and the score is affine:
    ``q̃ = q/(√E τ)``, ``k̃ = k``, per-key term ``-‖k‖²/(2√E τ)``, per-query term ``-‖q‖²/(2√E τ)``
    (constant along a row, so it cancels in the softmax; kept so energies are exact). It runs on SDPA
    as the augmented dot product ``[q̃, 1]·[k̃, b_k]``. ``scale`` multiplies the score, as for the other
    non-Euclidean geometries. At κ = 0 :class:`Stereographic` is the *unsquared* distance
    ``-2‖q - k‖/τ``; this is the squared one.

    Sources: Nickel & Kiela, "Poincaré Embeddings for Learning Hierarchical Representations", NeurIPS
    2017 (their Euclidean baseline is the squared distance, poincare-embeddings
    ``hype/manifolds/euclidean.py``); Kim, Papamakarios, Mnih, "The Lipschitz Constant of
    Self-Attention", ICML 2021 (L2 self-attention); x-transformers' L2-distance attention.
    """

    name = "l2"
    affine = True

    def __init__(self, temperature=1.0, num_heads: int = 1, learnable: bool = False) -> None:
        super().__init__(temperature, num_heads, learnable)

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        q, k = q.to(cd), k.to(cd)
        coef = (self.inverse_temperature(q, scale) / math.sqrt(q.shape[-1])).view(-1, 1)  # (H, 1): scale/(√E τ)
        return Lifted(
            coef.unsqueeze(-1) * q, k,
            q_terms=(-0.5 * coef * (q * q).sum(-1),), k_terms=(-0.5 * coef * (k * k).sum(-1),),
        )
