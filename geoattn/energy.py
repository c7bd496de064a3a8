"""Attention as dynamics: the log-sum-exp energy whose gradient is attention, and per-layer traces.

For any geometry, ``E_i(q_i) = log Σ_k exp(score(q_i, k_k))`` and, because ∇ log Σ exp = softmax,

    ∇_{q_i} E_i = Σ_k softmax_k(score(q_i, ·)) ∇_{q_i} score(q_i, k_k)

(the attention-weighted sum of score gradients). In the Euclidean case with unscaled scores
``score(Qt_i, Kt_k) = (Qt_i)·(Kt_k)`` and the self term excluded, ``E_i(t) = log Σ_{k≠i} exp(t_iᵀQᵀK t_k)``
depends on ``t_i`` only through the query, so ``∇_{t_i} E_i = QᵀK Σ_{k≠i} p_ik t_k`` and

    t_i + Σ_{k≠i} softmax_k(Qt_i·Kt_k) V t_k = t_i + M ∇_{t_i} E_i,     M = V (QᵀK)⁻¹

(Q, K, V invertible d×d; the gradient is of the i-th energy with respect to t_i alone, not of
``Σ_j E_j``, whose key-side terms would add ``Σ_j p_ji KᵀQ t_j``). Sources: Ramsauer et al., "Hopfield
Networks is All You Need", ICLR 2021; Hoover et al., "Energy Transformer", NeurIPS 2023; Geshkovski
et al., "A mathematical perspective on Transformers" (tokens as interacting particles), 2023.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from .backends import default_backend
from .backends.dense import dense_scores, masked_scores, reference_lift
from .call import prepare_call
from .functional import attention, empty_scores
from .geometry import Geometry


def scores(query: Tensor, key: Tensor, geometry: str | Geometry = "euclidean", attn_mask: Tensor | None = None,
           exclude_self: bool = False, scale: float | None = None, is_causal: bool = False) -> Tensor:
    """The attention scores ``score(q_i, k_j) + mask_ij`` → (..., L, S), ``-inf`` where a key does not take part.

    Same conventions as :func:`geoattn.attention`; ``softmax`` of these scores is what it returns as
    weights. Computed on the dense reference path (:func:`geoattn.backends.dense.masked_scores`), in
    float32 or wider (float64 for float64 inputs), so it serves as a score oracle and as the head of
    pointer and ranking models (the WordNet tasks of :mod:`benchmarks`).
    """
    call = prepare_call(query, key, key, geometry, attn_mask, is_causal=is_causal, scale=scale,
                        exclude_self=exclude_self)
    score = empty_scores(call) if call.empty else masked_scores(call)      # (B, H, L, S)
    score = score.to(torch.promote_types(call.q.dtype, torch.float32))
    return score.reshape(*call.lead, call.L, call.S)


def pair_scores(points: Tensor, query_index: Tensor, key_index: Tensor, geometry: str | Geometry = "euclidean",
                scale: float | None = None) -> Tensor:
    """Scores of index pairs of one table of points: ``score(points[query_index[b]], points[key_index[b, j]])``
    → (B, K), for ``points`` (N, E), ``query_index`` (B,) and ``key_index`` (B, K) (int64).

    The numbers of ``scores(points[query_index][:, None, None], points[key_index][:, None])[:, 0, 0]`` (the same
    formulas per row; equal to rounding, as vectorised and scalar transcendental functions may differ in the last
    bit), but each point is lifted once (:func:`~geoattn.backends.dense.reference_lift` on the whole table, then
    the lifted rows and per-token terms are gathered) instead of once per occurrence.
    That is the shape of embedding training with sampled negatives (Nickel & Kiela 2017): 256 queries × 51 keys
    are 13,312 lifted rows per batch against the mammal closure's 1,180 points, and the lift (norms, directions,
    radial factors, in float64 for distance geometries) is most of the cost of scoring them. A clip counts
    each clipped point once. Same geometry and ``scale`` conventions as :func:`scores` (one head)."""
    if not isinstance(points, Tensor) or points.dim() != 2:
        raise ValueError(f"pair_scores needs points as an (N, E) tensor, got "
                         f"{tuple(points.shape) if isinstance(points, Tensor) else type(points).__name__}")
    for name, index, dims in (("query_index", query_index, 1), ("key_index", key_index, 2)):
        if not isinstance(index, Tensor) or index.dtype != torch.long or index.dim() != dims:
            raise TypeError(f"pair_scores needs {name} as a {dims}-D int64 tensor of row numbers of points, got "
                            f"{index.dtype if isinstance(index, Tensor) else type(index).__name__} "
                            f"{tuple(index.shape) if isinstance(index, Tensor) else ''}; use .long()")
        if index.numel() and not (0 <= int(index.min()) and int(index.max()) < len(points)):
            raise ValueError(f"pair_scores: {name} holds row numbers outside [0, {len(points)}) (points has "
                             f"{len(points)} rows)")
    if len(key_index) != len(query_index):
        raise ValueError(f"pair_scores needs one row of keys per query: query_index has {len(query_index)} entries, "
                         f"key_index {len(key_index)} rows")
    table = points[None, None]                                                 # (1, 1, N, E)
    call = prepare_call(table, table, table, geometry, scale=scale)
    lifted = reference_lift(call.geometry, call.q, call.k, call.scale)     # every point once
    B, K = key_index.shape

    def rows(x: Tensor, index: Tensor, n: int) -> Tensor:                   # (1, 1, N, ...) → (B, 1, n, ...)
        # index_select: its backward (index_add) is faster on CPU than advanced indexing's
        return x[0, 0].index_select(0, index.flatten()).view(B, 1, n, *x.shape[3:])

    pairs = replace(lifted, q=rows(lifted.q, query_index, 1), k=rows(lifted.k, key_index, K),
                    q_terms=tuple(rows(t, query_index, 1) for t in lifted.q_terms),
                    k_terms=tuple(rows(t, key_index, K) for t in lifted.k_terms),
                    outer=None if lifted.outer is None else (rows(lifted.outer[0], query_index, 1),
                                                             rows(lifted.outer[1], key_index, K)))
    score = dense_scores(call.geometry, pairs)                                # (B, 1, 1, K)
    return score.to(torch.promote_types(points.dtype, torch.float32)).view(B, K)


def energy(query: Tensor, key: Tensor, geometry: str | Geometry = "euclidean", attn_mask: Tensor | None = None,
           exclude_self: bool = False, scale: float | None = None, is_causal: bool = False) -> Tensor:
    """Per-query potential ``E_i = log Σ_k exp(score(q_i, k_k) + mask_ik)`` → (..., L).

    Same conventions as :func:`geoattn.attention` (``query`` (..., L, E), ``key`` (..., S, E), bool mask
    True = take part or float added, ``is_causal``, ``scale``, ``exclude_self``), computed on the dense
    score path (:func:`geoattn.backends.dense.masked_scores`) in float32 or wider. A query with no
    allowed key gets ``-inf`` (and a zero gradient), also when there is no key (S = 0); empty inputs give
    an empty result, and E = 0 (euclidean only) gives ``log`` of the number of allowed keys. ``softmax``
    of the same scores is what ``attention`` returns as weights, so ``∇_q E`` is the attention-weighted score gradient.
    """
    call = prepare_call(query, key, key, geometry, attn_mask, is_causal=is_causal, scale=scale,
                        exclude_self=exclude_self)
    score = empty_scores(call) if call.empty else masked_scores(call)      # (B, H, L, S)
    alive = torch.isfinite(score).any(dim=-1, keepdim=True)                  # (B, H, L, 1)
    lse = torch.logsumexp(torch.where(alive, score, torch.zeros_like(score)), dim=-1)
    out = torch.where(alive.squeeze(-1), lse, torch.full_like(lse, float("-inf")))  # (B, H, L)
    out = out.to(torch.promote_types(call.q.dtype, torch.float32))
    return out.reshape(*call.lead, call.L)


@dataclass
class Trace:
    """Per-layer views of one forward pass (layer ℓ = block ℓ of the traced stack).

    ``hidden[0]`` is the block stack's input (embeddings), ``hidden[ℓ+1]`` block ℓ's output, each
    (B, T, d_model), before the final LayerNorm; ``energies[ℓ]`` (B, H, T) and ``weights[ℓ]`` (B, H, T, T)
    are block ℓ's self-attention energy and weights; ``geometries[ℓ]`` its geometry's name.
    """

    hidden: list[Tensor] = field(default_factory=list)
    energies: list[Tensor] = field(default_factory=list)
    weights: list[Tensor] = field(default_factory=list)
    geometries: list[str] = field(default_factory=list)

    def mean_energy(self) -> Tensor:
        """Mean energy of each layer over batch, heads and queries (queries with no key left out), (n_layers,)."""
        return torch.stack([e[torch.isfinite(e)].mean() for e in self.energies])


def _stack(model: nn.Module, tokens: Tensor, padding_mask: Tensor | None):
    """The traced blocks and a call that runs them: the encoder of encoder models, the decoder of an LM."""
    from .models import DecoderLM, Encoder, EncoderClassifier, EncoderDecoder

    if isinstance(model, DecoderLM):
        if padding_mask is not None:
            raise ValueError("DecoderLM takes no padding_mask; trace it with padding_mask=None")
        return model.blocks, lambda: model(tokens)
    if isinstance(model, (EncoderClassifier, EncoderDecoder)):
        model = model.encoder
    if isinstance(model, Encoder):
        return model.blocks, lambda: model(tokens, padding_mask)
    raise TypeError(f"trace needs a geoattn.models backbone (DecoderLM, Encoder, EncoderClassifier, "
                    f"EncoderDecoder), got {type(model).__name__}")


@torch.no_grad()
def trace(model: nn.Module, tokens: Tensor, padding_mask: Tensor | None = None) -> Trace:
    """Run ``model`` on ``tokens`` (B, T) in eval mode (mode restored) and record every layer's hidden
    states, self-attention energies and weights, for plotting token trajectories and energy across
    depth. Traces the decoder of a :class:`DecoderLM` and the encoder of the other models.

    Forward hooks record each block's input and output, and the per-head queries, keys and mask that
    its self-attention hands to :func:`geoattn.attention` (the block's ``attn.attend``); weights and
    energies are computed from those. The traced forward runs ``backend="auto"`` calls on the dense
    backend, so the recorded weights are the ones the layers used.
    """
    blocks, run = _stack(model, tokens, padding_mask)
    out, calls = Trace(), []
    was_training = model.training
    with contextlib.ExitStack() as stack:
        stack.callback(model.train, was_training)
        model.eval()
        stack.enter_context(default_backend("dense"))
        stack.enter_context(blocks[0].register_forward_pre_hook(lambda m, args: out.hidden.append(args[0])))
        for block in blocks:
            stack.enter_context(block.register_forward_hook(lambda m, args, res: out.hidden.append(res)))
            stack.enter_context(block.attn.attend.register_forward_hook(lambda m, args, res: calls.append(args)))
        run()
    for block, (q, k, v, geometry, mask, is_causal, *_) in zip(blocks, calls):
        _, weights = attention(q, k, v, geometry=geometry, attn_mask=mask, is_causal=is_causal, backend="dense",
                               return_weights=True)
        out.weights.append(weights)
        out.energies.append(energy(q, k, geometry, attn_mask=mask, is_causal=is_causal))
        out.geometries.append(block.attn.geometry.name)
    return out
