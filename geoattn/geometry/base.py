"""The one abstraction: a :class:`Geometry` turns queries and keys into attention scores.

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
size (tested for E = 2 … 128 in ``tests/test_defaults.py``).

Aggregation is ``post(attend(pre(v)))``: :meth:`pre_values` maps values before the weighted sum,
:meth:`post_values` finishes after it (midpoints, centroids, normalised means).

Curvature convention, everywhere: signed sectional curvature κ (κ < 0 hyperbolic, κ > 0
spherical, κ = 0 flat). Temperatures τ > 0 divide the score.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, ClassVar, Sequence

import torch
from torch import Tensor, nn

from ..math import eps
from ..math.vectors import clip_radius as clip_norm, robust_norm, unit
from . import registry
from .head import HeadConstants, curvature_from_parameter, parameter_from_curvature

if TYPE_CHECKING:
    from .metric import MetricConstants

register = registry.register  # geometry modules written against geometry.base keep importing it from here
Number = float | int


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


@dataclass
class NativeSpec:
    """What the native CPU kernel needs from a geometry (:mod:`geoattn.backends.native`): the kernel ``kind``
    (``"stereographic"``, ``"sphere"``; ``"lorentz"``, ``"cosine"``, ``"l2"``, whose affine terms the kernel
    computes from the token norms; ``"affine"``, which runs :meth:`Geometry.affine_form`), the per-head κ and
    score multiplier μ as :class:`~geoattn.geometry.head.HeadConstants` (None for ``"affine"``: its terms carry
    them; the kernel's autograd function differentiates the parameters behind them), the tangent ``clip``
    (√|κ|·‖u‖ ≤ clip, κ < 0) and, for ``"metric"`` (whose terms the kernel computes from q, k and G), the
    per-head metric G as :class:`~geoattn.geometry.metric.MetricConstants` (likewise without a graph)."""

    kind: str
    head: HeadConstants | None
    clip: float
    metric: MetricConstants | None = None  # the metric kind's G (H, E, E) and its chain rule


class ClipWarning(UserWarning):
    """A hyperbolic geometry shortened some tangent vectors (feature clipping); shown once per geometry."""


def per_head(name: str, value: Number | Sequence[Number] | Tensor, num_heads: int) -> Tensor:
    """A float64 tensor of shape ``(num_heads,)`` (or ``(1,)``, shared by all heads) from a user value."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    t = _real_tensor(name, value).detach().clone().reshape(-1)
    if t.numel() not in (1, num_heads):
        raise ValueError(
            f"{name} has {t.numel()} values but the geometry has num_heads={num_heads}; "
            f"pass one value (shared by all heads) or exactly {num_heads}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t if t.numel() == num_heads else t.expand(num_heads).clone()


def _real_tensor(name: str, value) -> Tensor:
    """``value`` (a real number, a sequence of them, a real array or tensor) as float64; TypeError for anything
    else (strings, bools, complex numbers), naming the argument."""
    def bad(item) -> TypeError:
        try:
            fix = f"pass the number itself, e.g. {name}={float(item)!r}" if isinstance(item, (str, bytes)) else ""
        except ValueError:
            fix = ""
        fix = fix or f"pass a float, or one float per head as a list (e.g. {name}=[1.0, 0.5])"
        what = f"a {item.dtype} tensor" if isinstance(item, Tensor) else f"{type(item).__name__} {item!r}"
        return TypeError(f"{name} must be a real number, a sequence of numbers (one per head) or a real tensor, "
                         f"got {what}; {fix}")

    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (bool, str, bytes, complex)):
            raise bad(item)
    try:  # Python numbers straight to float64 (no float32 rounding); arrays and tensors keep their dtype here
        t = torch.as_tensor(value) if hasattr(value, "dtype") else torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise bad(value) from None
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise bad(value)
    return t.to(torch.float64)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_temperature(temperature: Tensor) -> None:
    if (temperature <= 0).any():
        raise ValueError(
            f"temperature must be > 0 (it divides the score), got {temperature.tolist()}; "
            "use a small positive value such as 0.1 for sharper attention"
        )


class Geometry(nn.Module):
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
        # which geometry (and options) a checkpoint was made with; checked by load_state_dict
        self.register_buffer("geometry_tag", torch.zeros(registry.TAG_BYTES, dtype=torch.uint8))

    # -- checkpoints -------------------------------------------------------------------------
    def tag(self) -> str:
        """The geometry's identity in checkpoints: its name and the values of its :attr:`options`."""
        return registry.geometry_tag(self)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.geometry_tag.copy_(registry.encode_tag(self.tag()))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "geometry_tag")
        if saved is None:  # checkpoints without a tag (e.g. carried over from nn.MultiheadAttention)
            state_dict[prefix + "geometry_tag"] = registry.encode_tag(self.tag())
        elif not registry.tag_matches(made_with := registry.decode_tag(saved), self):
            raise ValueError(
                f"checkpoint at {prefix or 'the root'!r} was made with geometry {made_with!r} but this "
                f"module uses {self.tag()!r}; build the model with the checkpoint's geometry (and options), "
                "or load only the other weights"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

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


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def log_param(name: str, value, num_heads: int, check: Callable[[Tensor], None] | None = None) -> Tensor:
    """``log`` of a positive per-head value (the raw parameter of temperatures and |κ|)."""
    t = per_head(name, value, num_heads)
    if check is not None:
        check(t)
    return t.log()


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


class CurvedGeometry(TemperedGeometry):
    """A tempered geometry with a per-head signed curvature κ, and values aggregated linearly or on the manifold.

    ``curvature_sign`` fixes the sign (-1 hyperbolic, +1 spherical; stored as ``log|κ|``, parameter
    ``raw_curvature``) or leaves it free (0; stored as ``asinh κ``, parameter ``asinh_curvature``: a learnable
    κ crosses zero smoothly, where ``∂κ/∂r = cosh r ≈ 1``, and far from zero moves on a relative scale as
    ``log|κ|`` does, ``∂κ/∂r ≈ |κ|``; stored as κ itself, an optimiser's step size capped its change per
    step, so κ took thousands of steps to reach the −20 that a WordNet embedding asked for). :attr:`curvature_parameter`
    is the parameter behind κ in either case. ``curvature`` defaults to +1 for a spherical sign, else -1.
    ``aggregations`` names the ways values may be combined: ``"linear"`` (the weighted sum) and those the
    geometry implements with :meth:`manifold_values` (before the weighted sum) and :meth:`manifold_output`
    (after it).

    Geometries that can be negatively curved clip their tangent vectors (feature clipping, Guo et al.,
    "Clipped Hyperbolic Classifiers Are Super-Hyperbolic Classifiers", CVPR 2022): with ``u = x/√E`` (the
    scale rule), ``‖u‖ ← min(‖u‖, clip_radius/√|κ|)`` where κ < 0, i.e. points stay within hyperbolic
    radius ``radius_per_clip·clip_radius/√|κ|`` of the origin (``radius_per_clip`` = 2 for the stereographic
    geometries, whose ``exp_o`` maps ‖u‖ to distance 2‖u‖, 1 for Lorentz; :meth:`clip_for_radius` inverts it). The
    class sets ``default_clip``; ``clip_radius=`` overrides it. When the clip acts, :attr:`clipped` counts
    the vectors it shortened and a :class:`ClipWarning` is shown once per geometry (counted on CPU in
    eager mode; not under ``torch.compile`` or ``torch.func`` transforms).
    """

    curvature_sign: ClassVar[int] = 0
    aggregations: ClassVar[tuple[str, ...]] = ("linear",)
    default_clip: ClassVar[float | None] = None  # set by geometries that can be negatively curved
    radius_per_clip: ClassVar[float] = 2.0  # hyperbolic radius (at |κ| = 1) per unit of clip_radius
    options = ("aggregation",)

    def __init__(self, curvature=None, temperature=1.0, num_heads: int = 1, learnable: bool = False,
                 aggregation: str = "linear", head_dim: int | None = None, clip_radius: float | None = None) -> None:
        super().__init__(temperature=temperature, num_heads=num_heads, learnable=learnable, head_dim=head_dim)
        if curvature is None:
            curvature = 1.0 if self.curvature_sign > 0 else -1.0
        kappa = per_head("curvature", curvature, num_heads)
        sign = self.curvature_sign
        if sign and not (kappa * sign > 0).all():
            want = "negative (κ < 0, hyperbolic)" if sign < 0 else "positive (κ > 0, spherical)"
            other = "'sphere' or 'stereographic'" if sign < 0 else "'poincare', 'lorentz' or 'stereographic'"
            raise ValueError(
                f"{self.name} needs a {want} curvature, got {kappa.tolist()}; geoattn uses signed "
                f"sectional curvature everywhere, so pass e.g. curvature={sign * 1.0}, or use {other}"
            )
        setattr(self, self._curvature_name(), self._parameter(parameter_from_curvature(kappa, sign), given=curvature))
        self.aggregation = check_choice("aggregation", aggregation, self.aggregations)
        self.clip_radius = self._check_clip(clip_radius)
        self.clipped = 0            # vectors the clip shortened (CPU, eager)
        self._clip_warned = False

    def _check_clip(self, clip_radius) -> float | None:
        if self.default_clip is None:
            if clip_radius is not None:
                raise ValueError(f"geometry {self.name!r} is never negatively curved, so it has no tangent clip; "
                                 "drop clip_radius")
            return None
        value = self.default_clip if clip_radius is None else clip_radius
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"clip_radius must be a positive number (the bound on √|κ|·‖u‖), got {value!r}")
        if not 0 < value < math.inf:
            raise ValueError(f"clip_radius must be positive and finite (the bound on √|κ|·‖u‖), got {value!r}; the "
                             f"default is {self.default_clip}")
        return float(value)

    @classmethod
    def clip_for_radius(cls, radius: float) -> float:
        """The ``clip_radius`` that keeps points within hyperbolic distance ``radius/√|κ|`` of the origin."""
        return radius / cls.radius_per_clip

    @classmethod
    def _curvature_name(cls) -> str:
        return "raw_curvature" if cls.curvature_sign else "asinh_curvature"

    @property
    def curvature_parameter(self) -> nn.Parameter:
        """The parameter behind κ, (num_heads,): ``raw_curvature = log|κ|`` (fixed sign) or
        ``asinh_curvature = asinh κ`` (free sign)."""
        return self._parameters[self._curvature_name()]

    @property
    def curvature(self) -> Tensor:
        """Signed κ per head, shape ``(num_heads,)``."""
        return curvature_from_parameter(self.curvature_parameter, self.curvature_sign)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoints of a free-sign κ written before the ``asinh`` parametrisation stored κ itself as
        ``raw_curvature``: read as ``asinh_curvature = asinh(κ)``, the same κ."""
        old, new = prefix + "raw_curvature", prefix + self._curvature_name()
        if not self.curvature_sign and old in state_dict and new not in state_dict:
            state_dict[new] = parameter_from_curvature(state_dict.pop(old), 0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def kappa(self, ref: Tensor) -> Tensor:
        """κ per head as ``(H,)`` in ``ref``'s compute dtype."""
        return self._head(self.curvature, ref)

    def native_constants(self, ref: Tensor, scale: float | None, coef: float, power: float = 0.0,
                         curvature: bool = True) -> HeadConstants:
        """κ and μ for the native kernel (:mod:`.head`): κ (0 and no gradient unless ``curvature``) and
        ``μ = coef·scale/τ·|κ|^power``."""
        raw = self.curvature_parameter if curvature or power else None
        return HeadConstants(raw, self.log_temperature, ref.shape[1], self.curvature_sign,
                             coef * (1.0 if scale is None else scale), power)

    # -- tangent vectors ---------------------------------------------------------------------
    def tangent_norm(self, x: Tensor, kappa: Tensor) -> tuple[Tensor, Tensor]:
        """``(‖x‖, a = min(‖x‖/√E, clip/√|κ|))`` of ``x`` (B, H, N, E), both (B, H, N, 1), under the scale rule
        and the clip (counted when it acts); ``kappa`` is (H,)."""
        norm = robust_norm(x)                                                    # (B, H, N, 1)
        a = norm / math.sqrt(x.shape[-1])
        if self.clip_radius is not None:
            a, shortened = clip_norm(a, kappa.view(-1, 1, 1), self.clip_radius)
            self.record_clip(shortened)
        return norm, a

    def radial(self, x: Tensor, kappa: Tensor, input_dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
        """Direction and tangent norm of ``x`` (B, H, N, E) under the scale rule and the clip:
        ``(x̂ (B, H, N, E), a (B, H, N, 1))`` (:meth:`tangent_norm`). ``input_dtype``: the dtype x came in (it
        sets the floor under ‖x‖, see :func:`geoattn.math.vectors.unit`)."""
        norm, a = self.tangent_norm(x, kappa)
        return unit(x, norm, input_dtype), a

    def tangent(self, x: Tensor, kappa: Tensor, input_dtype: torch.dtype | None = None) -> Tensor:
        """The clipped tangent vector ``u = x̂·a`` of ``x`` (see :meth:`radial`), (B, H, N, E)."""
        direction, a = self.radial(x, kappa, input_dtype)
        return direction * a

    def record_clip(self, shortened: Tensor | int) -> None:
        """Count the vectors a clip shortened (a bool tensor, or a count from the native kernel) and warn once."""
        if isinstance(shortened, Tensor):
            if (shortened.device.type != "cpu" or torch.compiler.is_compiling()
                    or torch._C._functorch.is_functorch_wrapped_tensor(shortened)):
                return
            shortened = int(shortened.sum())
        if not shortened:
            return
        self.clipped += shortened
        if not self._clip_warned:
            self._clip_warned = True
            warnings.warn(
                f"geoattn: the {self.name!r} geometry clipped {shortened} tangent vector(s) to √|κ|·‖u‖ = "
                f"{self.clip_radius} (u = x/√E; feature clipping, which changes their scores). Pass a larger "
                "clip_radius= to the geometry, or scale the inputs down; geometry.clipped counts every clipped "
                "vector (this warning is shown once per geometry)", ClipWarning, stacklevel=4)

    # -- aggregation -------------------------------------------------------------------------
    def pre_values(self, v: Tensor) -> Tensor:
        return v if self.aggregation == "linear" else self.manifold_values(v)

    def post_values(self, out: Tensor) -> Tensor:
        return out if self.aggregation == "linear" else self.manifold_output(out)

    def manifold_values(self, v: Tensor) -> Tensor:
        """Values (B, H, S, Ev) → what the weighted sum of a manifold aggregation runs over."""
        raise NotImplementedError

    def manifold_output(self, out: Tensor) -> Tensor:
        """The weighted sum of :meth:`manifold_values` → the aggregate (B, H, L, Ev)."""
        raise NotImplementedError
