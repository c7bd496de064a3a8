"""``geoattn.attention``: ``softmax(score_geometry(q, k)) · V`` with SDPA's tensor and mask conventions."""
from __future__ import annotations

import torch
from torch import Tensor

from .backends import Mask, select_backend
from .backends.masks import exclude_self_mask
from .geometry import Euclidean, Geometry, resolve_geometry
from .validation import check_attention_inputs


def _to_4d(x: Tensor) -> Tensor:
    """(..., L, E) → (B, H, L, E): a missing head dim becomes 1, extra batch dims are flattened."""
    if x.dim() == 2:
        return x[None, None]
    if x.dim() == 3:
        return x[None]
    return x.reshape(-1, *x.shape[-3:])


def _mask_to_4d(mask: Tensor | None, lead: torch.Size, L: int, S: int) -> Tensor | None:
    if mask is None:
        return None
    if len(lead) <= 2:  # keep broadcast dims: (…, L, S) → (1|B, 1|H, L|1, S|1)
        return mask.reshape(*([1] * (4 - mask.dim())), *mask.shape)
    return mask.expand(*lead, L, S).reshape(-1, lead[-1], L, S)


def _curved(geometry: Geometry) -> bool:
    return not isinstance(geometry, Euclidean)


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    geometry: str | Geometry = "euclidean",
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    backend: str = "auto",
    return_weights: bool = False,
    exclude_self: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention under a geometry: ``softmax(score(q, k) + mask) · V``.

    Same conventions as :func:`torch.nn.functional.scaled_dot_product_attention`: ``query`` (..., L, E),
    ``key`` (..., S, E), ``value`` (..., S, Ev), heads in dim -3; ``attn_mask`` bool (True = take part)
    or float (added to the scores), broadcastable to (..., L, S); ``is_causal`` top-left aligned;
    ``enable_gqa`` lets key/value have fewer heads than query. ``scale`` defaults to ``1/√E`` for the
    Euclidean geometry and multiplies the score of every other geometry (default 1, their temperature
    sets the sharpness). Rows whose keys are all masked give zeros. ``dropout_p`` is applied whenever
    it is > 0, as in SDPA.

    ``geometry`` is a name from :func:`geoattn.available_geometries` (default parameters) or a
    :class:`geoattn.Geometry`. ``backend`` is ``"auto"`` (the fastest backend that supports the call),
    ``"sdpa"``, ``"flex"``, ``"tiled"``, ``"dense"`` or another registered backend. Returns the output (..., L, Ev), or
    ``(output, weights)`` with ``return_weights=True`` (weights (..., L, S), dense backend).
    ``exclude_self=True`` drops key i for query i (needs L == S; folded into the mask, so every backend
    honours it; with ``is_causal`` the first query then has no key and gives zeros).
    """
    check_attention_inputs(query, key, value, attn_mask, is_causal, dropout_p, enable_gqa)
    geom = resolve_geometry(geometry, query.shape[-1])
    L, S = query.shape[-2], key.shape[-2]
    lead = query.shape[:-2]
    if exclude_self:
        attn_mask, is_causal = exclude_self_mask(attn_mask, is_causal, L, S, query.device)
    q, k, v = _to_4d(query), _to_4d(key), _to_4d(value)
    geom.check_heads(q.shape[1])
    if k.shape[1] != q.shape[1]:  # grouped-query attention: share each key/value head across its group
        group = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    mask = Mask(_mask_to_4d(attn_mask, lead, L, S), bool(is_causal), L, S)
    needs_grad = torch.is_grad_enabled() and (
        q.requires_grad or k.requires_grad or v.requires_grad or any(p.requires_grad for p in geom.parameters())
    )
    runner = select_backend(backend, geom, q, return_weights, dropout_p, needs_grad, q.shape[0] * q.shape[1] * L * S)
    # geometric scores are computed in float32 or wider, also under bf16/fp16 autocast
    with torch.autocast(q.device.type, enabled=torch.is_autocast_enabled(q.device.type) and not _curved(geom)):
        out, weights = runner.run(geom, q, k, geom.pre_values(v), mask, float(dropout_p), scale, return_weights)
        out = geom.post_values(out)
    out = out.to(value.dtype).reshape(*lead, L, -1)
    if return_weights:
        return out, weights.reshape(*lead, L, S)
    return out
