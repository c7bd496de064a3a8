"""Masks in the conventions of ``F.scaled_dot_product_attention`` (and FlexAttention's ``mask_mod``)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Mask:
    """A user's mask, normalised to 4 dims broadcastable to (B, H, L, S).

    ``tensor`` is bool (True = take part) or float (added to the scores); ``is_causal`` is SDPA's
    top-left-aligned causal mask (query i sees keys j ≤ i).
    """

    tensor: Tensor | None
    is_causal: bool
    L: int
    S: int

    def allowed(self, device) -> Tensor | None:
        """Boolean part (bool mask and causal), broadcastable to (B, H, L, S), or None."""
        allowed = self.tensor if self.tensor is not None and self.tensor.dtype == torch.bool else None
        if self.is_causal:
            causal = torch.ones(self.L, self.S, dtype=torch.bool, device=device).tril()
            allowed = causal if allowed is None else allowed & causal
        return allowed

    def bias(self) -> Tensor | None:
        """Additive float part, or None."""
        return self.tensor if self.tensor is not None and self.tensor.is_floating_point() else None


def masked_softmax(score: Tensor, allowed: Tensor | None) -> Tensor:
    """Softmax over the last dim with the row max subtracted; rows with no allowed key give zeros."""
    if allowed is not None:
        score = score.masked_fill(~allowed, float("-inf"))
    row_max = score.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(score - row_max)
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def exclude_self_mask(attn_mask: Tensor | None, is_causal: bool, L: int, S: int,
                      device) -> tuple[Tensor, bool]:
    """Fold "query i never attends to key i" into the user's mask, so every backend honours it.

    Returns ``(mask, is_causal=False)``: a bool mask (True = take part) when the user's is bool or
    absent (the causal mask folded in), else the float mask with -inf on the diagonal. Needs L == S.
    """
    if L != S:
        raise ValueError(f"exclude_self drops key i for query i, so it needs as many queries as keys; got L={L} "
                         f"queries and S={S} keys (use it for self-attention, or pass an explicit attn_mask)")
    allowed = ~torch.eye(L, S, dtype=torch.bool, device=device)
    if is_causal:
        allowed = allowed & torch.ones(L, S, dtype=torch.bool, device=device).tril()
    if attn_mask is None:
        return allowed, False
    if attn_mask.dtype == torch.bool:
        return attn_mask & allowed, False
    return attn_mask.masked_fill(~allowed, float("-inf")), False
