"""The reference backend: the full (B, H, L, S) score matrix with plain tensor ops.

Readable, float64-capable, the oracle of the tests and the only path that returns attention
weights. Memory O(L·S). :func:`masked_scores` also serves :func:`geoattn.energy`.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..geometry import Geometry, Lifted
from ..masks import masked_softmax
from .base import Backend, broadcast_heads


def dense_scores(geometry: Geometry, lifted: Lifted) -> Tensor:
    """``score[b, h, i, j] = f(scale·⟨q̃ᵢ, k̃ⱼ⟩, a_i, b_j, θ_h)`` as a (B, H, L, S) tensor."""
    dot = (lifted.q @ lifted.k.transpose(-1, -2)) * lifted.scale           # (B, H, L, S)
    q_terms = tuple(t.unsqueeze(-1) for t in lifted.q_terms)                # (B, H, L, 1)
    k_terms = tuple(t.unsqueeze(-2) for t in lifted.k_terms)                # (B, H, 1, S)
    return geometry.score_from_dot(dot, q_terms, k_terms, broadcast_heads(lifted.head, 4))


def masked_scores(call) -> Tensor:
    """The call's scores plus the float mask, -inf where a key does not take part: (B, H, L, S)."""
    geometry, mask = call.geometry, call.mask
    score = dense_scores(geometry, geometry.lift(call.q, call.k, call.scale))
    if mask.bias is not None:
        score = score + mask.bias.to(score.dtype)
    if mask.allowed is not None:
        score = score.masked_fill(~mask.allowed, float("-inf"))
    return score


class DenseBackend(Backend):
    name = "dense"

    def run(self, call):
        weights = masked_softmax(masked_scores(call))                      # (B, H, L, S)
        dropped = F.dropout(weights, call.dropout_p) if call.dropout_p > 0 else weights
        out = dropped @ call.values.to(weights.dtype)                       # (B, H, L, Ev)
        return out, (weights if call.return_weights else None)
