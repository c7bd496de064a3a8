"""The reference backend: the full (B, H, L, S) score matrix with plain tensor ops.

Readable, float64-capable, the oracle of the tests and the only path that returns attention
weights. Memory O(L·S).
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..geometry import Geometry, Lifted
from .base import Backend, broadcast_heads
from .masks import Mask, masked_softmax


def dense_scores(geometry: Geometry, lifted: Lifted) -> Tensor:
    """``score[b, h, i, j] = f(scale·⟨q̃ᵢ, k̃ⱼ⟩, a_i, b_j, θ_h)`` as a (B, H, L, S) tensor."""
    dot = (lifted.q @ lifted.k.transpose(-1, -2)) * lifted.scale           # (B, H, L, S)
    q_terms = tuple(t.unsqueeze(-1) for t in lifted.q_terms)                # (B, H, L, 1)
    k_terms = tuple(t.unsqueeze(-2) for t in lifted.k_terms)                # (B, H, 1, S)
    return geometry.score_from_dot(dot, q_terms, k_terms, broadcast_heads(lifted.head, 4))


class DenseBackend(Backend):
    name = "dense"

    def run(self, geometry, q, k, v, mask: Mask, dropout_p, scale, need_weights):
        score = dense_scores(geometry, geometry.lift(q, k, scale))
        bias = mask.bias()
        if bias is not None:
            score = score + bias.to(score.dtype)
        weights = masked_softmax(score, mask.allowed(score.device))        # (B, H, L, S)
        dropped = F.dropout(weights, dropout_p) if dropout_p > 0 else weights
        out = dropped @ v.to(weights.dtype)                                 # (B, H, L, Ev)
        return out, (weights if need_weights else None)
