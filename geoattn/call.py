"""The one front door: every attention-shaped call is validated and prepared once, as an :class:`AttentionCall`.

:func:`geoattn.attention`, :func:`geoattn.energy`, :func:`geoattn.explain_backend`, ``auto``'s policy
(:mod:`geoattn.backends.policy`) and every backend take the same prepared call: 4-D per-head q/k/v,
the geometry (built by the registry), the mask's parts, dropout, scale, whether gradients are needed
and the score count. Queries and keys stay as given (each backend lifts them with its geometry).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .geometry import Geometry, make_geometry
from .masks import Mask, exclude_self as fold_exclude_self, mask_to_4d
from .validation import check_attention_inputs, check_empty, check_geometry, check_scale, under_transform, under_vmap


def to_4d(x: Tensor) -> Tensor:
    """(..., L, E) → (B, H, L, E): a missing head dim becomes 1, extra batch dims are flattened (also when
    a dim is 0: the batch size is written out, a reshape to -1 of an empty tensor is ambiguous)."""
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[None]
    return x.reshape(math.prod(x.shape[:-3]), *x.shape[-3:])


@dataclass
class AttentionCall:
    """One prepared call: ``softmax(score_geometry(q, k) + mask) · values``."""

    q: Tensor                   # (B, H, L, E)
    k: Tensor                   # (B, H, S, E), key heads repeated to H for grouped-query attention
    v: Tensor                   # (B, H, S, Ev), as given (see :attr:`values`)
    geometry: Geometry
    mask: Mask                  # 4-D, broadcastable to (B, H, L, S)
    dropout_p: float = 0.0
    scale: float | None = None
    return_weights: bool = False
    needs_grad: bool = False    # autograd will differentiate the call (inputs or geometry parameters)
    num_scores: int = 0         # B·H·L·S
    lead: tuple = ()            # the query's leading dims, restored by :meth:`finish`
    verdicts: dict = field(default_factory=dict, repr=False)  # backend → its unsupported() answer (policy)
    # what the properties below computed once (a plain dict, not functools.cached_property, whose lock breaks
    # torch.compile's graph)
    cache: dict = field(default_factory=dict, repr=False)

    @property
    def L(self) -> int:
        return self.q.shape[-2]

    @property
    def S(self) -> int:
        return self.k.shape[-2]

    @property
    def E(self) -> int:
        return self.q.shape[-1]

    @property
    def empty(self) -> bool:
        """No score to compute: a dim of the score matrix is 0 (B, H, L or S), or queries and keys have no
        features (E = 0). :func:`geoattn.attention` answers such a call itself, before any backend runs."""
        return self.num_scores == 0 or self.E == 0

    @property
    def under_vmap(self) -> bool:
        """Whether the call runs under :func:`torch.func.vmap` (any of q, k, v or the mask is batched by it, at
        any level of nested transforms). Backends without a batching rule refuse such calls in their
        ``unsupported`` and ``auto`` sends them to ``dense``."""
        if "under_vmap" not in self.cache:
            self.cache["under_vmap"] = under_vmap(self.q, self.k, self.v, self.mask.tensor)
        return self.cache["under_vmap"]

    @property
    def under_transform(self) -> bool:
        """Whether the call runs under any :mod:`torch.func` transform (``vmap``, ``grad``, ``vjp``, ``jacrev``,
        ...); the fused backends' ``torch.autograd.Function`` and compiled kernels support none of them."""
        if "under_transform" not in self.cache:
            self.cache["under_transform"] = under_transform(self.q, self.k, self.v, self.mask.tensor)
        return self.cache["under_transform"]

    @property
    def device(self) -> torch.device:
        return self.q.device

    @property
    def dtype(self) -> torch.dtype:
        return self.q.dtype

    @property
    def values(self) -> Tensor:
        """The values the weighted sum runs over: ``geometry.pre_values(v)``, (B, H, S, Ev'), computed once.
        Values without features (Ev = 0) stay as they are: the output has no feature to aggregate."""
        if "values" not in self.cache:
            self.cache["values"] = self.v if self.v.shape[-1] == 0 else self.geometry.pre_values(self.v)
        return self.cache["values"]

    def post_values(self, out: Tensor) -> Tensor:
        """The weighted sum of :attr:`values` → the output: ``geometry.post_values(out)`` (nothing for Ev = 0)."""
        return out if self.v.shape[-1] == 0 else self.geometry.post_values(out)

    def map_values(self) -> Tensor:
        """Compute :attr:`values` now: :func:`geoattn.attention` maps the values before the backend lifts
        queries and keys, so autograd sums the gradients of shared parameters (κ) in the order it always has."""
        return self.values

    def family(self, compute_dtype: torch.dtype) -> tuple:
        """The compile-cache key of the fused kernels (one compiled copy per family, see compile_cache)."""
        mask = self.mask
        return (type(self.geometry), self.geometry.affine, mask.is_causal, mask.boolean is None, mask.bias is None,
                compute_dtype, self.device.type)

    def finish(self, out: Tensor, weights: Tensor | None) -> Tensor | tuple[Tensor, Tensor]:
        """(B, H, L, Ev) output (and weights) → the caller's leading dims, in the values' dtype."""
        out = out.to(self.v.dtype).reshape(*self.lead, self.L, out.shape[-1])
        if self.return_weights:
            return out, weights.reshape(*self.lead, self.L, self.S)
        return out


def prepare_call(query: Tensor, key: Tensor, value: Tensor, geometry: str | Geometry = "euclidean",
                 attn_mask: Tensor | None = None, dropout_p: float = 0.0, is_causal: bool = False,
                 scale: float | None = None, enable_gqa: bool = False, return_weights: bool = False,
                 exclude_self: bool = False) -> AttentionCall:
    """Validate the arguments of :func:`geoattn.attention` and prepare its call (conventions there)."""
    check_attention_inputs(query, key, value, attn_mask, is_causal, dropout_p, enable_gqa)
    check_geometry(geometry)
    check_empty(query, geometry)
    geom = make_geometry(geometry, head_dim=query.shape[-1])
    scale = check_scale(scale, geom)
    L, S = query.shape[-2], key.shape[-2]
    lead = tuple(query.shape[:-2])
    if exclude_self:
        attn_mask, is_causal = fold_exclude_self(attn_mask, is_causal, L, S, query.device)
    q, k, v = to_4d(query), to_4d(key), to_4d(value)
    geom.check_heads(q.shape[1])
    if k.shape[1] != q.shape[1]:  # grouped-query attention: share each key/value head across its group
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = Mask(mask_to_4d(attn_mask, torch.Size(lead), L, S), bool(is_causal), L, S, q.device)
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad or any(p.requires_grad for p in geom.parameters())
    )
    return AttentionCall(q, k, v, geom, mask, float(dropout_p), scale, bool(return_weights), needs_grad,
                         q.shape[0] * q.shape[1] * L * S, lead)
