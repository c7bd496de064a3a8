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
from ..math.vectors import squared_chords
from .base import Backend, broadcast_heads


def dense_scores(geometry: Geometry, lifted: Lifted) -> Tensor:
    """``score[b, h, i, j] = f(x_ij, a_i, b_j, θ_h)`` as a (B, H, L, S) tensor, with ``x = scale·⟨q̃ᵢ, k̃ⱼ⟩``,
    or for a chord lift ``x = ‖q̃ᵢ − k̃ⱼ‖²`` with nearby pairs formed from their differences
    (:func:`~geoattn.math.vectors.squared_chords`), so nearby points far from the origin keep their distance."""
    q_terms = tuple(t.unsqueeze(-1) for t in lifted.q_terms)                # (B, H, L, 1)
    k_terms = tuple(t.unsqueeze(-2) for t in lifted.k_terms)                # (B, H, 1, S)
    head = broadcast_heads(lifted.head, 4)
    if lifted.chord:
        return geometry.score_from_chord(squared_chords(lifted.q, lifted.k), q_terms, k_terms, head)  # (B, H, L, S)
    dot = (lifted.q @ lifted.k.transpose(-1, -2)) * lifted.scale           # (B, H, L, S)
    if lifted.outer is not None:                                            # + aᵢ·bⱼ
        dot = dot + lifted.outer[0].unsqueeze(-1) * lifted.outer[1].unsqueeze(-2)
    return geometry.score_from_dot(dot, q_terms, k_terms, head)


def reference_lift(geometry: Geometry, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
    """``geometry.lift(q, k, scale)`` in the dtype the dense reference scores in: a chord lift in float64 whatever
    the input dtype (see :func:`masked_scores`), every other lift in the input's."""
    if geometry.chord and q.dtype != torch.float64:
        q, k = q.double(), k.double()
    return geometry.lift(q, k, scale)


def masked_scores(call) -> Tensor:
    """The call's scores plus the float mask, -inf where a key does not take part: (B, H, L, S).

    A chord lift is formed and scored in float64 whatever the input dtype, and the scores stay float64:
    the caller casts after the softmax (or log-sum-exp), so the reference stays exact where a float32
    direction would already carry ``ε·sinh(radius)`` of error, and where scores are so large (``q·1e10``
    under the metric) that a float32 score would round away their differences."""
    mask = call.mask
    score = dense_scores(call.geometry, reference_lift(call.geometry, call.q, call.k, call.scale))
    if mask.bias is not None:
        score = score + mask.bias.to(score.dtype)
    if mask.allowed is not None:
        score = score.masked_fill(~mask.allowed, float("-inf"))
    return score


class DenseBackend(Backend):
    name = "dense"

    def run(self, call):
        weights = masked_softmax(masked_scores(call))                      # (B, H, L, S)
        weights = weights.to(torch.promote_types(call.q.dtype, torch.float32))
        dropped = F.dropout(weights, call.dropout_p) if call.dropout_p > 0 else weights
        out = dropped @ call.values.to(weights.dtype)                       # (B, H, L, Ev)
        return out, (weights if call.return_weights else None)
