"""The reference backend: the full (B, H, L, S) score matrix with plain tensor ops.

Readable, float64-capable, the oracle of the tests and the only path that returns attention
weights. Memory O(L·S). :func:`masked_scores` also serves :func:`geoattn.energy`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..geometry import Geometry, Lifted
from ..masks import masked_softmax
from .base import Backend, broadcast_heads


def dense_scores(geometry: Geometry, lifted: Lifted) -> Tensor:
    """``score[b, h, i, j] = f(x_ij, a_i, b_j, θ_h)`` as a (B, H, L, S) tensor, with ``x = scale·⟨q̃ᵢ, k̃ⱼ⟩``,
    or for a chord lift ``x = ‖q̃ᵢ − k̃ⱼ‖²`` formed per pair from the differences (``torch.cdist`` without
    its Gram shortcut), so nearby points far from the origin keep their distance exactly."""
    q_terms = tuple(t.unsqueeze(-1) for t in lifted.q_terms)                # (B, H, L, 1)
    k_terms = tuple(t.unsqueeze(-2) for t in lifted.k_terms)                # (B, H, 1, S)
    head = broadcast_heads(lifted.head, 4)
    if lifted.chord:
        chord = torch.cdist(lifted.q, lifted.k, compute_mode="donot_use_mm_for_euclid_dist")   # (B, H, L, S)
        return geometry.score_from_chord(chord * chord, q_terms, k_terms, head)
    dot = (lifted.q @ lifted.k.transpose(-1, -2)) * lifted.scale           # (B, H, L, S)
    return geometry.score_from_dot(dot, q_terms, k_terms, head)


def masked_scores(call) -> Tensor:
    """The call's scores plus the float mask, -inf where a key does not take part: (B, H, L, S).

    A chord lift is formed in float64 whatever the input dtype (and the scores cast back to float32), so
    the reference stays exact where a float32 direction would already carry ``ε·sinh(radius)`` of error."""
    geometry, mask = call.geometry, call.mask
    q, k = call.q, call.k
    exact = geometry.chord and q.dtype != torch.float64
    if exact:
        q, k = q.double(), k.double()
    score = dense_scores(geometry, geometry.lift(q, k, call.scale))
    if exact:
        score = score.float()
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
