"""The one abstraction: a :class:`Geometry` turns queries and keys into attention scores; the score's forms.

Every score in geoattn has the form ``score = f(x_qk, a_q, b_k, θ_h)``: a pointwise function of one
pairwise number ``x_qk`` of *lifted* queries and keys, a few per-query terms ``a_q``, a few per-key
terms ``b_k`` and a few per-head constants ``θ_h`` (curvature, temperature). The pairwise number is

* the Gram entry ``⟨q̃, k̃⟩`` (:meth:`Geometry.score_from_dot`), or
* the squared chord ``‖q̃ − k̃‖²`` (:meth:`Geometry.score_from_chord`, ``Lifted.chord = True``): for
  distances, where the Gram form ``‖q̃‖² + ‖k̃‖² − 2⟨q̃, k̃⟩`` would cancel for nearby points. The dense
  reference forms it per pair (exact); fused backends either form it from the Gram entry (bound in
  :mod:`geoattn.math.eps`) or recompute nearby pairs exactly (the native kernel).

A geometry provides :meth:`Geometry.lift` – ``(q, k) → Lifted`` (the vectors and the terms) – and the
pointwise ``f``, written with broadcasting torch ops so the very same function serves the dense
reference (on ``(B, H, L, S)`` tensors) and a fused kernel's ``score_mod`` (on scalars).

Where the score is *affine* in a dot product – ``score = ⟨q̃, k̃⟩ + a_q + b_k`` – the geometry sets
``affine = True`` and :meth:`Geometry.affine_lift` gives that form: attention then reduces exactly to
:func:`torch.nn.functional.scaled_dot_product_attention` on augmented vectors ``[q̃, 1]·[k̃, b_k]``
(``a_q`` cancels in the softmax).

**Scale rule** (the analogue of SDPA's ``1/√E``): with E the head size, a geometry scores RMS-normalised
vectors ``u = q/√E`` (so a unit-variance activation has ``‖u‖ ≈ 1``) and multiplies its similarity by
``√E``: ``score = √E · sim(q/√E, k/√E) / τ``. For the dot product that *is* ``⟨q, k⟩/√E``; every other
similarity is written in units in which the model is Euclidean at the origin (``−½‖x − y‖²`` for
squared distances, ``−d/2`` for the stereographic distance, whose metric is 4× Euclidean there,
``cos θ`` on the sphere), so each geometry's initial attention is as sharp as SDPA's at every head
size (the contract of every registered geometry, E = 2 … 128: ``tests/test_contract.py``).

Aggregation is ``post(attend(pre(v)))``: :meth:`pre_values` maps values before the weighted sum,
:meth:`post_values` finishes after it (midpoints, centroids, normalised means).

Curvature convention, everywhere: signed sectional curvature κ (κ < 0 hyperbolic, κ > 0
spherical, κ = 0 flat). Temperatures τ > 0 divide the score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

from ..backends.native.spec import HeadConstants, NativeSpec
from ..math import eps
from .arguments import check_temperature, log_param
from .tags import Tagged


@dataclass
class Lifted:
    """Lifted queries/keys and the terms the pointwise score needs. Shapes for (B, H, L|S, D) input."""

    q: Tensor                              # (B, H, L, Dl)
    k: Tensor                              # (B, H, S, Dl)
    q_terms: tuple[Tensor, ...] = ()       # each (B, H, L)
    k_terms: tuple[Tensor, ...] = ()       # each (B, H, S)
    head: tuple[Tensor, ...] = ()          # each (H,): per-head constants of the score formula
    scale: float = 1.0                     # multiplies ⟨q̃, k̃⟩ before ``score_from_dot`` (1 for chord lifts)
    chord: bool = False                    # the score takes ‖q̃ − k̃‖² (``score_from_chord``), not ⟨q̃, k̃⟩
    outer: tuple[Tensor, Tensor] | None = None  # (a (B, H, L), b (B, H, S)): dot form adds aᵢ·bⱼ (a rank-1 term)


@dataclass
class AffineForm:
    """An affine score with its per-token factors kept apart from the vectors, in score units:
    ``score = aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + q_biasᵢ + k_biasⱼ + αᵢγⱼ`` (a = ``q_factor``, b = ``k_factor``, (α, γ) =
    ``outer``; None = 1 for a factor, 0 for a term). The factors carry what a lift multiplies the vectors by
    (radial factors, 1/‖x‖, temperatures), so a kernel can take ``q``, ``k`` as they are (the native kernel
    does: nothing of size L × E is made for the score) while :meth:`lifted` gives the same score as a dot
    product of lifted vectors for SDPA and the dense reference. Per-token tensors are (B, H, L|S), or any
    shape that broadcasts to it (e.g. (H, 1) for a per-head temperature)."""

    q: Tensor                                  # (B, H, L, Dl)
    k: Tensor                                  # (B, H, S, Dl)
    q_factor: Tensor | None = None
    k_factor: Tensor | None = None
    # cancels in the softmax; kept so energies and scores are exact. A function of no arguments computing
    # it is accepted where it costs a pass over q (the kernel never asks for it)
    q_bias: Tensor | Callable[[], Tensor] | None = None
    k_bias: Tensor | None = None
    outer: tuple[Tensor, Tensor] | None = None  # (α (B, H, L), γ (B, H, S))

    def lifted(self) -> Lifted:
        """The same score as a :class:`Lifted` dot form: ``q̃ = a·q``, ``k̃ = b·k``."""
        q = self.q if self.q_factor is None else self.q * self.q_factor.unsqueeze(-1)
        k = self.k if self.k_factor is None else self.k * self.k_factor.unsqueeze(-1)
        bias = lambda t, x: () if t is None else (t.expand(x.shape[:-1]),)  # noqa: E731
        q_bias = self.q_bias() if callable(self.q_bias) else self.q_bias
        return Lifted(q, k, q_terms=bias(q_bias, q), k_terms=bias(self.k_bias, k), outer=self.outer)


class Geometry(Tagged):
    """Base class: ``score(q, k) = f(scale·⟨q̃, k̃⟩, a_q, b_k, θ_h)`` with ``(q̃, k̃, a, b, θ) = lift(q, k)``.

    Subclasses set ``name``, implement :meth:`lift` and, unless affine (``f = dot + a_q + b_k``, which
    runs on SDPA as the augmented dot product ``[q̃, 1]·[k̃, b_k]``: the x-transformers trick, see
    the module doc), :meth:`score_from_dot`. Aggregation is ``post_values(attend(pre_values(v)))``.
    """

    name: ClassVar[str] = "geometry"
    affine: bool = False  # a class default; a geometry whose form depends on its options sets it per instance
    chord: bool = False   # whether :meth:`lift` gives the chord form (per instance where options decide it)
    native_kind: str | None = None  # the native CPU kernel that computes this score (see :meth:`native_spec`)
    # the non-tensor constructor options that define the geometry: its checkpoint tag, the Hugging Face config
    options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, num_heads: int = 1, learnable: bool = False, head_dim: int | None = None) -> None:
        """``head_dim`` (the size E of each head) is accepted by every geometry; only those whose
        parameters depend on it (``metric``) use it."""
        super().__init__()
        self.num_heads = num_heads
        self.learnable = learnable

    # -- parameters --------------------------------------------------------------------------
    def _parameter(self, raw: Tensor, given=None) -> nn.Parameter:
        """A (possibly frozen) per-head parameter, stored in float64 so it keeps the value the user gave
        (``curvature=-0.1`` stored as ``log 0.1`` in float32 would read back as -0.09999999404); every call
        casts it to the compute dtype. A ``given`` float tensor keeps its own dtype. ``module.float()``
        casts it like any parameter."""
        dtype = given.dtype if isinstance(given, Tensor) and given.is_floating_point() else torch.float64
        return nn.Parameter(raw.to(dtype), requires_grad=self.learnable)

    def _head(self, p: Tensor, ref: Tensor) -> Tensor:
        """A per-head tensor as ``(H,)`` in the compute dtype of ``ref`` (H taken from ``ref``)."""
        return p.to(device=ref.device, dtype=eps.compute_dtype(ref.dtype)).expand(ref.shape[1])

    def check_heads(self, num_heads: int) -> None:
        """Raise a ValueError unless this geometry's per-head parameters fit ``num_heads`` heads (or are shared)."""
        if self.num_heads not in (1, num_heads):
            raise ValueError(
                f"geometry {self.name!r} has parameters for {self.num_heads} heads but the input has "
                f"{num_heads} heads (dim -3 of query); make it with num_heads={num_heads} or num_heads=1"
            )

    # -- the score ---------------------------------------------------------------------------
    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        """Map ``q`` (B, H, L, E) and ``k`` (B, H, S, E) to the score's inputs. ``scale`` multiplies the score."""
        raise NotImplementedError

    def score_from_dot(
        self, dot: Tensor, q_terms: tuple[Tensor, ...], k_terms: tuple[Tensor, ...], head: tuple[Tensor, ...]
    ) -> Tensor:
        """Pointwise score from the Gram entry; the default is the affine ``dot + Σ a_q + Σ b_k``."""
        for t in (*q_terms, *k_terms):
            dot = dot + t
        return dot

    def score_from_chord(
        self, chord2: Tensor, q_terms: tuple[Tensor, ...], k_terms: tuple[Tensor, ...], head: tuple[Tensor, ...]
    ) -> Tensor:
        """Pointwise score from the squared chord ``‖q̃ − k̃‖²`` (geometries whose :meth:`lift` sets ``chord``)."""
        raise NotImplementedError(f"geometry {self.name!r} lifts to a chord but defines no score_from_chord")

    def score_from_gram(
        self, dot: Tensor, q_terms: tuple[Tensor, ...], k_terms: tuple[Tensor, ...], head: tuple[Tensor, ...]
    ) -> Tensor:
        """The pointwise score as the fused backends (tiled, flex) evaluate it, from the Gram entry: for a
        dot-form lift :meth:`score_from_dot`; for a chord lift :meth:`score_from_chord` of the Gram form
        ``‖q̃‖² + ‖k̃‖² − 2⟨q̃, k̃⟩`` (the squared norms are the last per-token terms, see
        :func:`geoattn.backends.base.gram_terms`), which cancels for nearby points (bound in
        :mod:`geoattn.math.eps`)."""
        if not self.chord:
            return self.score_from_dot(dot, q_terms, k_terms, head)
        chord2 = (q_terms[-1] + k_terms[-1] - 2 * dot).clamp(min=0)
        return self.score_from_chord(chord2, q_terms[:-1], k_terms[:-1], head)

    def affine_lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        """The affine form of the score (dot form, ``score = ⟨q̃, k̃⟩·scale + a_q + b_k``) that SDPA runs;
        only for ``affine`` geometries. The default is :meth:`affine_form`'s :meth:`AffineForm.lifted` for
        a geometry that implements it, else :meth:`lift` itself."""
        if type(self).affine_form is not Geometry.affine_form:
            return self.affine_form(q, k, scale).lifted()
        return self.lift(q, k, scale)

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        """The affine score with its per-token factors apart (:class:`AffineForm`): one home for an affine
        geometry's maths (:meth:`affine_lift` derives from it), and what the native kernel runs for a
        geometry with ``native_kind = "affine"``, which must implement it."""
        raise NotImplementedError(f"geometry {self.name!r} has native_kind={self.native_kind!r} but no "
                                  "affine_form(q, k, scale); implement it, or set native_kind = None")

    def native_spec(self, q: Tensor, scale: float | None):
        """The parameters of the native CPU kernel for this geometry (:mod:`geoattn.backends.native`), or
        None when it has none (then ``auto`` uses the other backends). An affine geometry with
        ``native_kind = "affine"`` runs its :meth:`affine_form` there, which needs nothing more."""
        if self.native_kind == "affine":
            return NativeSpec("affine", None, 0.0)
        return None

    # -- aggregation -------------------------------------------------------------------------
    def pre_values(self, v: Tensor) -> Tensor:
        """Values (B, H, S, Ev) before the weighted sum (identity for linear aggregation)."""
        return v

    def post_values(self, out: Tensor) -> Tensor:
        """Output of the weighted sum → (B, H, L, Ev) (identity for linear aggregation)."""
        return out

    def extra_repr(self) -> str:
        options = "".join(f", {key}={getattr(self, key)!r}" for key in self.options)
        return f"num_heads={self.num_heads}, learnable={self.learnable}{options}"


def inverse_sqrt(x: int) -> float:
    return 1.0 / math.sqrt(x)


class TemperedGeometry(Geometry):
    """A geometry whose score is divided by a positive per-head temperature τ (stored as ``log τ``)."""

    def __init__(self, temperature=1.0, num_heads: int = 1, learnable: bool = False,
                 head_dim: int | None = None) -> None:
        super().__init__(num_heads=num_heads, learnable=learnable, head_dim=head_dim)
        self.log_temperature = self._parameter(
            log_param("temperature", temperature, num_heads, check_temperature), given=temperature
        )

    @property
    def temperature(self) -> Tensor:
        """τ per head, shape ``(num_heads,)``."""
        return self.log_temperature.exp()

    def inverse_temperature(self, ref: Tensor, scale: float | None) -> Tensor:
        """``scale / τ`` per head as ``(H,)`` in ``ref``'s compute dtype (``scale`` defaults to 1)."""
        inv = self._head((-self.log_temperature).exp(), ref)
        return inv if scale is None else inv * scale

    def native_constants(self, ref: Tensor, scale: float | None, coef: float) -> HeadConstants:
        """κ and μ for the native kernel (:mod:`.head`): κ = 0 (unused) and ``μ = coef·scale/τ``."""
        return HeadConstants(None, self.log_temperature, ref.shape[1], coef=coef * (1.0 if scale is None else scale))
