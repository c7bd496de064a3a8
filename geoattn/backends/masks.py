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
