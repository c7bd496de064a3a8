"""Squared Euclidean distance attention: the flat *distance* score, exactly on SDPA."""
from __future__ import annotations

import math

from torch import Tensor

from ..backends.native.spec import NativeSpec
from ..math import eps
from .base import AffineForm, Lifted, TemperedGeometry
from .registry import register


@register
class L2(TemperedGeometry):
    """``score = -‖q - k‖² / (2√E τ_h)`` (E the head dimension, τ a per-head temperature).

    The flat baseline of distance-based attention, kept apart from :class:`Euclidean` (the dot product):
    a dot product can rank keys by their norm, a distance cannot. It is the scale rule of
    :mod:`geoattn.geometry.base` applied to ``-½‖u - w‖²`` (``u = q/√E``). Expanding the square,

    ``-‖q - k‖²/(2√E τ) = ⟨q, k⟩/(√E τ) - ‖k‖²/(2√E τ) - ‖q‖²/(2√E τ)``,

    so the ``q·k`` interaction is exactly SDPA's ``⟨q, k⟩/√E`` at τ = 1, and the score is affine
    (:meth:`affine_form`): ``q̃ = q/(√E τ)``, ``k̃ = k``, per-key term ``-‖k‖²/(2√E τ)``, per-query term
    ``-‖q‖²/(2√E τ)`` (constant along a row, so it cancels in the softmax). It runs on SDPA as the
    augmented dot product ``[q̃, 1]·[k̃, b_k]``; the dense reference (:meth:`lift`) forms ``‖q - k‖²``
    per pair with no cancellation. ``scale`` multiplies the score, as for the other non-Euclidean
    geometries. At κ = 0 :class:`Stereographic` is the *unsquared* distance ``-‖q - k‖/τ``; this is
    the squared one.

    Sources: Nickel & Kiela, "Poincaré Embeddings for Learning Hierarchical Representations", NeurIPS
    2017 (their Euclidean baseline is the squared distance, poincare-embeddings
    ``hype/manifolds/euclidean.py``); Kim, Papamakarios, Mnih, "The Lipschitz Constant of
    Self-Attention", ICML 2021 (L2 self-attention).
    """

    name = "l2"
    affine = True
    chord = True
    native_kind = "l2"  # the native CPU kernel forms affine_form's terms itself, at head dim E (SDPA: E + 1)

    def _coefficient(self, q: Tensor, scale: float | None) -> Tensor:
        """``scale/(√E τ_h)``, shape (H,)."""
        return self.inverse_temperature(q, scale) / math.sqrt(q.shape[-1])

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        cd = eps.compute_dtype(q.dtype)
        return Lifted(q.to(cd), k.to(cd), head=(-0.5 * self._coefficient(q, scale),), chord=True)

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        return head[0] * chord2

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        cd = eps.compute_dtype(q.dtype)
        q, k = q.to(cd), k.to(cd)
        coef = self._coefficient(q, scale).view(-1, 1)                     # (H, 1)
        return AffineForm(q, k, q_factor=coef, q_bias=-0.5 * coef * (q * q).sum(-1),
                          k_bias=-0.5 * coef * (k * k).sum(-1))

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        """The ``l2`` kind: μ(⟨q, k⟩ − ½‖k‖²) with μ = scale/(√E τ), the key term from the kernel's norms."""
        return NativeSpec(self.native_kind, self.native_constants(q, scale, 1 / math.sqrt(q.shape[-1])), 0.0)
