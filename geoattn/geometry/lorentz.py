"""Hyperboloid (Lorentz model) attention: the squared Lorentzian distance, exactly on SDPA."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..math import eps, lorentz
from ..math.functions import cos_sqrt
from .base import AffineForm, CurvedGeometry, Lifted, NativeSpec
from .registry import register


@register
class Lorentz(CurvedGeometry):
    """``score = -√E · d²_L(x, y) / (2τ) = (√E/τ)(⟨x, y⟩_L + 1/c)`` for ``x = exp_o(q/√E)``, ``y = exp_o(k/√E)``,
    κ = -c < 0 (the scale rule of :mod:`geoattn.geometry.base`: near the origin ``d²_L ≈ ‖u - v‖²``, so
    the score is SDPA's ``⟨q, k⟩/√E`` up to per-token terms).

    Affine in the Lorentz inner product, so :meth:`affine_form` gives it as the dot product of the spatial
    parts ``(√E/τ) x_s · y_s`` plus the outer term ``-(√E/τ) x₀ y₀`` of the time coordinates: SDPA runs it
    as ``[x_s, -x₀]·[y_s, y₀]`` (E + 1 columns), the native CPU kernel on the raw q, k at E with the
    per-token radial factors and the outer term in its epilogue. That form loses ``ε·cosh(√c a)·cosh(√c b)`` to
    cancellation (a, b the tangent norms): float32 keeps nearest-neighbour order up to ``√c·‖u‖ ≈ 4``,
    which is why the tangent clip defaults to ``clip_radius = 4`` here (typical activations have
    ``‖u‖ ≈ 1``; counted and warned about when it acts). The dense reference (:meth:`lift`) computes
    ``d²_L = (a - b)² sinc_sqrt(κ(a - b)²/4)² + σ_a σ_b ‖q̂ - k̂‖²`` with no cancellation at any radius.

    Aggregation ``"linear"`` or ``"centroid"`` (Lorentz centroid of ``exp_o(v/√E)``, mapped back with
    ``√E·log_o``). Source: Law, Liao, Snell, Zemel, "Lorentzian Distance Learning for Hyperbolic
    Representations", ICML 2019; Chen et al., "Fully Hyperbolic Neural Networks", ACL 2022.
    """

    name = "lorentz"
    affine = True
    curvature_sign = -1
    aggregations = ("linear", "centroid")
    default_clip = 4.0
    radius_per_clip = 1.0  # exp_o maps ‖u‖ to distance ‖u‖
    chord = True
    native_kind = "lorentz"  # the native CPU kernel forms affine_form's terms itself, at head dim E (SDPA: E + 1)
    options = ("aggregation", "clip_radius")

    def _radial_terms(self, x: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """(direction (B, H, N, E), tangent norm a (B, H, N, 1)) of raw vectors x."""
        return self.radial(x.to(eps.compute_dtype(x.dtype)), kappa, x.dtype)

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        kappa = self.kappa(q)
        kb = kappa.view(-1, 1, 1)
        (qd, a), (kd, b) = self._radial_terms(q, kappa), self._radial_terms(k, kappa)
        sig_a, sig_b = lorentz.radial_factor(a, kb), lorentz.radial_factor(b, kb)
        mu = -math.sqrt(q.shape[-1]) / 2 * self.inverse_temperature(q, scale)   # score = μ d²_L
        terms = (a.squeeze(-1), sig_a.squeeze(-1)), (b.squeeze(-1), sig_b.squeeze(-1))
        return Lifted(qd, kd, terms[0], terms[1], head=(kappa, mu), chord=True)

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        kappa, mu = head
        return mu * lorentz.squared_distance_from_chord(chord2, q_terms[0], q_terms[1], k_terms[0], k_terms[1],
                                                        kappa)

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        """``(√E/τ)(⟨x_s, y_s⟩ − x₀y₀ + 1/c)`` with ``x_s = σ(a)·q/‖q‖``: the raw vectors, each token's radial
        factor ``σ(a)/‖x‖`` (``σ(a) = sinh(√c a)/√c``) and the time coordinates ``x₀ = cosh(√c a)/√c`` as the
        outer term."""
        kappa = self.kappa(q)
        coef = (math.sqrt(q.shape[-1]) * self.inverse_temperature(q, scale)).view(-1, 1)     # (H, 1)
        cd = eps.compute_dtype(q.dtype)
        (fq, x0), (fk, y0) = self._token_terms(q, kappa), self._token_terms(k, kappa)
        q_bias = (coef / -kappa.view(-1, 1)).expand(x0.shape)  # √E/(cτ): constant, kept so energies are exact
        return AffineForm(q.to(cd), k.to(cd), q_factor=coef * fq, k_factor=fk, q_bias=q_bias,
                          outer=(-coef * x0, y0))

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        """The ``lorentz`` kind: :meth:`affine_form`'s factors and time coordinates computed in the kernel from
        the token norms (radial.h), μ = √E/τ."""
        return NativeSpec(self.native_kind, self.native_constants(q, scale, math.sqrt(q.shape[-1])), self.clip_radius)

    def _token_terms(self, x: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """``σ(a)/‖x‖`` and ``x₀ = cosh(√c a)/√c`` (B, H, N) of ``exp_o(x/√E)``, a = ‖x‖/√E (clipped)."""
        norm, a = self.tangent_norm(x.to(eps.compute_dtype(x.dtype)), kappa)   # (B, H, N, 1) each
        kb = kappa.view(-1, 1, 1)
        factor = lorentz.radial_factor(a, kb) / norm.clamp(min=eps.norm_min(x.dtype))
        return factor.squeeze(-1), (cos_sqrt(kb * a * a) / (-kb).sqrt()).squeeze(-1)

    @staticmethod
    def _expmap(direction: Tensor, a: Tensor, kb: Tensor) -> Tensor:
        """``exp_o(a·x̂) = (cosh(√c a)/√c, sinh(√c a)/√c · x̂)``, (B, H, N, E + 1)."""
        x0 = cos_sqrt(kb * a * a) / (-kb).sqrt()
        return torch.cat([x0, lorentz.radial_factor(a, kb) * direction], dim=-1)

    def manifold_values(self, v: Tensor) -> Tensor:
        kappa = self.kappa(v)
        return self._expmap(*self._radial_terms(v, kappa), kappa.view(-1, 1, 1))

    def manifold_output(self, out: Tensor) -> Tensor:
        kb = self.kappa(out).view(-1, 1, 1)
        return math.sqrt(out.shape[-1] - 1) * lorentz.logmap0(lorentz.centroid(out, kb), kb)
