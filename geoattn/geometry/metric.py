"""A learned metric per head: Mahalanobis-distance attention with an SPD matrix by construction."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backends.native.spec import MetricConstants, NativeSpec
from ..math import eps
from ..math.metric import metric_tensor
from .base import AffineForm, Lifted, TemperedGeometry
from .registry import register


@register
class Metric(TemperedGeometry):
    """``score = -(q - k)ᵀ G_h (q - k) / (2√E τ_h)`` with ``G_h`` symmetric positive definite by construction:

    * full rank (``rank=None``): ``G = L Lᵀ + εI`` with ``L`` initialised to the identity;
    * ``rank=r``: ``G = U Uᵀ + diag(softplus(d)) + εI`` (low rank plus diagonal; ``U`` starts near 0
      (N(0, 0.01²)) and the diagonal at 1), ``O(E·r)`` parameters per head.

    The scale rule of :mod:`geoattn.geometry.base`: ``-½‖·‖²`` of ``u = q/√E``, times √E, so with G = I
    the q·k interaction is SDPA's ``⟨q, k⟩/√E``. Expanding the quadratic form makes it affine
    (:meth:`affine_form`): ``q̃ = q/(√E τ)``, ``k̃ = G k``, per-key term ``-kᵀGk/(2√E τ)``, per-query term
    ``-qᵀGq/(2√E τ)``, so it runs on SDPA; the dense reference (:meth:`lift`) forms
    ``‖F q - F k‖²`` per pair (``G = FᵀF``) with no cancellation. The metric is always trainable (it is
    what this geometry learns); ``learnable`` governs the temperature. Source: the learned-metric
    attention of Kulis, "Metric Learning: A Survey" (2013) applied per head; cf. "Mahalanobis
    attention" in Tay et al., "Synthesizer"/"Efficient Transformers" surveys.
    """

    name = "metric"
    affine = True
    chord = True
    native_kind = "metric"  # the native CPU kernel forms affine_form's k̃ = G k and β itself, at head dim E
    options = ("rank", "epsilon")

    def __init__(self, head_dim: int, rank: int | None = None, temperature=1.0, num_heads: int = 1,
                 learnable: bool = False, epsilon: float = 1e-4) -> None:
        super().__init__(temperature, num_heads, learnable)
        if not isinstance(head_dim, int) or head_dim < 1:
            raise ValueError(f"metric needs head_dim as a positive int (the size E of each head), got {head_dim!r}")
        if rank is not None and (not isinstance(rank, int) or not 1 <= rank <= head_dim):
            raise ValueError(f"metric rank must be None (full) or an int in [1, head_dim={head_dim}], got {rank!r}")
        if not epsilon > 0:
            raise ValueError(f"metric epsilon must be > 0 to keep G positive definite, got {epsilon!r}")
        self.head_dim, self.rank, self.epsilon = head_dim, rank, float(epsilon)
        if rank is None:
            self.factor = nn.Parameter(torch.eye(head_dim, dtype=torch.float64).expand(num_heads, -1, -1).clone())
            self.register_parameter("raw_diagonal", None)
        else:
            # U ~ N(0, 0.01²), not 0: UUᵀ has no gradient at U = 0
            self.factor = nn.Parameter(0.01 * torch.randn(num_heads, head_dim, rank, dtype=torch.float64))
            ones = torch.full((num_heads, head_dim), math.log(math.e - 1), dtype=torch.float64)  # softplus⁻¹(1)
            self.raw_diagonal = nn.Parameter(ones)

    def metric_tensor(self) -> Tensor:
        """``G`` per head, shape ``(num_heads, E, E)`` (:func:`metric_tensor`)."""
        return metric_tensor(self.factor, self.raw_diagonal, self.epsilon)

    def _check_size(self, q: Tensor) -> None:
        if q.shape[-1] != self.head_dim:
            raise ValueError(
                f"metric geometry was built for head_dim={self.head_dim} but queries have {q.shape[-1]} "
                f"features; make it with head_dim={q.shape[-1]}"
            )

    def square_root(self) -> Tensor:
        """``F`` per head with ``G = F Fᵀ`` (so ``xᵀGx = ‖x F‖²``): ``[L, √ε I]`` or ``[U, diag(√(softplus(d) + ε))]``,
        shape ``(num_heads, E, E + E)`` or ``(num_heads, E, r + E)``."""
        if self.rank is None:
            eye = torch.eye(self.head_dim, device=self.factor.device, dtype=self.factor.dtype)
            diagonal = (self.epsilon ** 0.5) * eye.expand_as(self.factor)
        else:
            diagonal = torch.diag_embed((F.softplus(self.raw_diagonal) + self.epsilon).sqrt())
        return torch.cat([self.factor, diagonal], dim=-1)

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        self._check_size(q)
        cd = eps.compute_dtype(q.dtype)
        root = self.square_root().to(cd).expand(q.shape[1], -1, -1).unsqueeze(0)  # (1, H, E, E')
        mu = -self.inverse_temperature(q, scale) / (2 * math.sqrt(self.head_dim))  # score = μ ‖F q - F k‖²
        return Lifted(q.to(cd) @ root, k.to(cd) @ root, head=(mu,), chord=True)

    def score_from_chord(self, chord2, q_terms, k_terms, head):
        return head[0] * chord2

    def affine_form(self, q: Tensor, k: Tensor, scale: float | None) -> AffineForm:
        self._check_size(q)
        cd = eps.compute_dtype(q.dtype)
        q, k = q.to(cd), k.to(cd)
        g = self.metric_tensor().to(cd).expand(q.shape[1], -1, -1).unsqueeze(0)  # (1, H, E, E)
        inv_t = (self.inverse_temperature(q, scale) / math.sqrt(self.head_dim)).view(-1, 1)
        gk = k @ g
        return AffineForm(q, gk, q_factor=inv_t, q_bias=lambda: -inv_t / 2 * (q * (q @ g)).sum(-1),
                          k_bias=-inv_t / 2 * (k * gk).sum(-1))

    def native_spec(self, q: Tensor, scale: float | None) -> NativeSpec:
        """The ``metric`` kind: G per head (:class:`MetricConstants`) and μ = scale/(√E τ); the kernel forms
        :meth:`affine_form`'s k̃ = G k and β = -kᵀGk/2 (the per-query term cancels)."""
        self._check_size(q)
        head = self.native_constants(q, scale, 1 / math.sqrt(self.head_dim))
        metric = MetricConstants(self.factor, self.raw_diagonal, self.epsilon, q.shape[1])
        return NativeSpec(self.native_kind, head, 0.0, metric=metric)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, head_dim={self.head_dim}"
