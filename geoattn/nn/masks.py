"""PyTorch-layer mask conventions (``True`` = *ignore*) → geoattn's (``True`` = take part, float added)."""
from __future__ import annotations

import torch
from torch import Tensor


def _check(name: str, mask: Tensor, shapes: list[tuple[int, ...]], fix: str) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (bool or float), got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = ignore) or floating (added to the scores), got {mask.dtype}")
    if tuple(mask.shape) not in shapes:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but must be one of {shapes}; {fix}")


def _as_bias(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """``True`` = ignore → -inf; float masks are added as they are."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(mask, float("-inf"))
    return mask.to(dtype)


def merge_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None, B: int, H: int, L: int, S: int,
                extra: int, is_causal: bool, dtype: torch.dtype, device) -> Tensor | None:
    """One mask for :func:`geoattn.attention`, broadcastable to (B, H, L, S + extra).

    ``attn_mask`` (L, S) or (B·H, L, S) and ``key_padding_mask`` (B, S) in ``nn.MultiheadAttention``'s
    convention; ``extra`` key columns (``bias_k``, ``add_zero_attn``) are never masked. All-bool masks
    stay bool (True = take part), otherwise they are summed as float biases, as PyTorch does.
    """
    if is_causal and attn_mask is None:
        attn_mask = torch.ones(L, S, dtype=torch.bool, device=device).triu(1)
    parts: list[Tensor] = []
    if attn_mask is not None:
        _check("attn_mask", attn_mask, [(L, S), (B * H, L, S)],
               f"use (L, S) = ({L}, {S}) for one mask or (B·num_heads, L, S) = ({B * H}, {L}, {S}) per batch and head")
        parts.append(attn_mask.view(B, H, L, S) if attn_mask.dim() == 3 else attn_mask.view(1, 1, L, S))
    if key_padding_mask is not None:
        _check("key_padding_mask", key_padding_mask, [(B, S)],
               f"use (batch, key length) = ({B}, {S}) with True (or -inf) at the padded keys")
        parts.append(key_padding_mask.view(B, 1, 1, S))
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        ignore = parts[0] if len(parts) == 1 else parts[0] | parts[1]
        allowed = ~ignore
        if extra:
            allowed = torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], extra)], dim=-1)
        return allowed
    bias = _as_bias(parts[0], dtype) if len(parts) == 1 else _as_bias(parts[0], dtype) + _as_bias(parts[1], dtype)
    if extra:
        bias = torch.cat([bias, bias.new_zeros(*bias.shape[:-1], extra)], dim=-1)
    return bias
