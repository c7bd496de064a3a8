"""Hyperboloid (Lorentz model) attention: the squared Lorentzian distance, exactly on SDPA."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from ..backends.native.spec import NativeSpec
from ..math import eps, lorentz
from ..math.functions import cos_sqrt
from .base import AffineForm, Lifted
from .curved import CurvedGeometry
from .registry import register


@register
class Lorentz(CurvedGeometry):
    """``score = -√E · d²_L(x, y) / (2τ) = (√E/τ)(⟨x, y⟩_L + 1/c)`` for ``x = exp_o(q/√E)``, ``y = exp_o(k/√E)``,
    κ = -c < 0 (the scale rule of :mod:`geoattn.geometry.base`: near the origin ``d²_L ≈ ‖u - v‖²``, so
    the score is SDPA's ``⟨q, k⟩/√E`` up to per-token terms).

    Affine in the Lorentz inner product, so :meth:`affine_form` gives it as the dot product of the spatial
    parts ``(√E/τ) x_s · y_s`` plus an outer term and a per-key term: with ``P(a) = (cosh(√c a) − 1)/c`` (a, b
    the tangent norms), ``⟨x, y⟩_L + 1/c = x_s · y_s − cosh(√c a)·P(b) − P(a)``, the time coordinates
    ``x₀ = cosh(√c a)/√c`` with their ``1/c`` taken out exactly. SDPA runs it as ``[x_s, −cosh(√c a)]·[y_s, P(b)]``
    (E + 1 columns; ``−P(a)`` is per query and cancels in the softmax), the native CPU kernel on the raw q, k at
    E with the per-token radial factors and the outer term in its epilogue. Every term is O(1) as κ → 0
    (σ → a, P → a²/2, cosh → 1), so in the compute dtype (ε its unit roundoff) the score's absolute error is a
    few ``ε·(√E/τ)·(a + b)²·cosh(√c a)·cosh(√c b)/2`` (the bound of ``σ_aσ_b + cosh_a P_b + P_a``): it depends on
    κ only through ``√c·a`` and ``√c·b`` and tends to the Euclidean ``ε(a + b)²`` as κ → 0, where forming
    ``x₀y₀ ≈ 1/c`` itself would lose ``ε/c``. Float32 keeps nearest-neighbour order up to ``√c·‖u‖ ≈ 4``,
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
        """``(√E/τ)(⟨x_s, y_s⟩ − cosh(√c a)·P(b) − P(a))`` with ``x_s = σ(a)·q/‖q‖`` and ``P(a) = (cosh(√c a) − 1)/c``
        (:func:`~geoattn.math.lorentz.time_excess`): ``⟨x, y⟩_L + 1/c`` with the time coordinates ``x₀ = cosh/√c``
        expanded as ``x₀y₀ = 1/c + P(a) + P(b) + c·P(a)P(b)``, so no term grows like 1/c. The raw vectors, each
        token's radial factor ``σ(a)/‖x‖`` (``σ(a) = sinh(√c a)/√c``), the outer term ``(−cosh(√c a), P(b))`` and
        the per-query ``−P(a)`` (which cancels in the softmax; kept so energies are exact)."""
        kappa = self.kappa(q)
        coef = (math.sqrt(q.shape[-1]) * self.inverse_temperature(q, scale)).view(-1, 1)     # (H, 1)
        cd = eps.compute_dtype(q.dtype)
        (fq, pq), (fk, pk) = self._token_terms(q, kappa), self._token_terms(k, kappa)
        cosh_q = 1 - kappa.view(-1, 1) * pq  # cosh(√c a) = 1 + c·P(a), exact to rounding (both terms ≥ 0)
        return AffineForm(q.to(cd), k.to(cd), q_factor=coef * fq, k_factor=fk, q_bias=-coef * pq,
                          outer=(-coef * cosh_q, pk))

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        """The ``lorentz`` kind: :meth:`affine_form`'s factors and outer term (without the per-query term) computed in
        the kernel from the token norms, in double (radial.h), μ = √E/τ."""
        return NativeSpec(self.native_kind, self.native_constants(q, scale, math.sqrt(q.shape[-1])), self.clip_radius)

    def _token_terms(self, x: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """``σ(a)/‖x‖`` and ``P(a) = (cosh(√c a) − 1)/c`` (B, H, N) of ``exp_o(x/√E)``, a = ‖x‖/√E (clipped), in the
        compute dtype. The norms come in the compute dtype; σ and P are evaluated in float64, as the native kernel
        does: per token, so cheap, and their κ-derivatives stay accurate where float32's closed forms of sinh(y)/y
        cancel just above the series' threshold (|κa²| ≈ 1e-4: ~1e-3 relative in ∂/∂κ)."""
        cd = eps.compute_dtype(x.dtype)
        norm, a = self.tangent_norm(x.to(cd), kappa)   # (B, H, N, 1) each
        a = a.double()
        kb = self.kappa(a).view(-1, 1, 1)  # float64, from the parameter
        factor = lorentz.radial_factor(a, kb) / norm.clamp(min=eps.norm_min(x.dtype))
        return factor.squeeze(-1).to(cd), lorentz.time_excess(a, kb).squeeze(-1).to(cd)

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
