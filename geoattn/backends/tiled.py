"""``tiled``: memory-efficient geometric attention with a FlashAttention-style backward, any device.

Forward (Dao et al., "FlashAttention", NeurIPS 2022, Alg. 1, with whole-row blocks): queries are
processed in blocks of ``bq`` rows; for each block the scores against all keys,
``s = f(x, a, b, θ)`` of the pairwise tile ``x = scale·q̃ k̃ᵀ`` (:meth:`~geoattn.Geometry.score_from_dot`)
or, for a chord lift, ``x = ‖q̃ − k̃‖²`` formed per pair (:meth:`~geoattn.Geometry.score_from_chord`: no
cancellation, the same exactness as the dense reference),
get a numerically stable softmax (row max subtracted) and only the output and the row's
log-sum-exp ``lse`` are kept. Backward (Alg. 2, key-block outer loop) recomputes the scores of one
block of ``bk`` keys against all queries, ``p = exp(s - lse)``, and

    dV_j = pᵀ dO,   dP = dO V_jᵀ,   dS = p ⊙ (dP - rowsum(dO ⊙ O)),

then pulls ``dS`` back through ``f`` with :func:`torch.func.vjp`, which yields the gradients of the
pairwise tile (→ dq̃, dk̃ by matmuls, :func:`pairwise_backward`), of the per-token terms and of the
per-head constants, so
the geometry's parameters (curvature, temperature, metric) get gradients through the ordinary
autograd graph of :meth:`~geoattn.Geometry.lift` outside this function. Block sizes keep each
block's score tile under ``block_elements`` numbers, so memory is O((L + S)·D) plus one tile; no
L×S matrix ever exists. Both block functions are compiled with ``torch.compile`` (dynamic shapes)
unless :func:`set_tiled_compile` turns that off (eager runs the identical maths).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ..math.vectors import squared_chords
from .base import Backend, broadcast_heads, differentiable_backward, fused_unsupported
from .compile_cache import compiled

_COMPILE = True
BLOCK_ELEMENTS = 1 << 20  # score-tile budget (numbers): 4 MiB in float32 (the backward holds ~20 such tiles)


def set_tiled_compile(enabled: bool) -> None:
    """Compile the tiled backend's block functions with ``torch.compile`` (default) or run them eagerly."""
    global _COMPILE
    _COMPILE = bool(enabled)


ScoreFn = Callable[[Tensor, tuple, tuple, tuple], Tensor]


def pairwise(q: Tensor, k: Tensor, scale: float, chord: bool) -> Tensor:
    """The pairwise tile the score reads (B, H, bq, bk): ``scale·⟨q̃, k̃⟩``, or for a chord lift the squared
    chord ``‖q̃ - k̃‖²`` with nearby pairs formed from their differences (no cancellation)."""
    if chord:
        return squared_chords(q, k)
    return torch.matmul(q, k.transpose(-1, -2)) * scale


def pairwise_backward(d_x: Tensor, q: Tensor, k: Tensor, scale: float, chord: bool) -> tuple[Tensor, Tensor]:
    """dq, dk from the gradient of the pairwise tile: ``∂‖q - k‖²/∂q = 2(q - k)``, ``∂⟨q, k⟩/∂q = k``."""
    if chord:
        dq = 2 * (d_x.sum(-1, keepdim=True) * q - torch.matmul(d_x, k))
        dk = 2 * (d_x.sum(-2).unsqueeze(-1) * k - torch.matmul(d_x.transpose(-1, -2), q))
        return dq, dk
    return torch.matmul(d_x, k) * scale, torch.matmul(d_x.transpose(-1, -2), q) * scale


def _masked(s: Tensor, q_pos, k_pos, allowed, bias, causal: bool) -> Tensor:
    """Add the float mask and set disallowed (bool mask, causal) entries of a score tile to -inf."""
    if bias is not None:
        s = s + bias
    if allowed is not None:
        s = s.masked_fill(~allowed, float("-inf"))
    if causal:
        s = s.masked_fill(k_pos.unsqueeze(0) > q_pos.unsqueeze(1), float("-inf"))
    return s


def block_forward(score_fn, x, v, q_terms, k_terms, head, q_pos, k_pos, allowed, bias, causal):
    """Output (B, H, bq, Ev) and log-sum-exp (B, H, bq, 1) of one query block from its pairwise tile x
    (+inf where all keys are masked)."""
    s = _masked(score_fn(x, q_terms, k_terms, head), q_pos, k_pos, allowed, bias, causal)
    m = s.amax(dim=-1, keepdim=True)
    m = torch.where(m > float("-inf"), m, torch.zeros_like(m))
    p = torch.exp(s - m)
    total = p.sum(dim=-1, keepdim=True)
    out = torch.matmul(p, v) / torch.where(total > 0, total, torch.ones_like(total))
    lse = torch.where(total > 0, m + torch.log(total), torch.full_like(m, float("inf")))
    return out, lse


def block_backward(score_fn, x, v, q_terms, k_terms, head, q_pos, k_pos, allowed, bias, causal, lse, dout, delta):
    """Gradients from one key block against all (remaining) queries, given its pairwise tile x: the
    gradient of x (dq, dk follow from it by :func:`pairwise_backward`), dv and the terms' gradients."""
    def score(pair, qt, kt, h):
        return _masked(score_fn(pair, qt, kt, h), q_pos, k_pos, allowed, bias, causal)

    s, pullback = torch.func.vjp(score, x, q_terms, k_terms, head)
    p = torch.exp(s - lse)                                                  # 0 where masked
    dv = torch.matmul(p.transpose(-1, -2), dout)                            # (B, H, bk, Ev)
    dp = torch.matmul(dout, v.transpose(-1, -2))                            # (B, H, L', bk)
    ds = p * (dp - delta)
    d_x, d_qt, d_kt, d_head = pullback(ds)
    return d_x, dv, d_qt, d_kt, d_head


def _fn(f, family):
    return compiled(f, family, duck_shapes=False) if _COMPILE else f


def _rows(mask_part: Tensor | None, dim: int, start: int, stop: int) -> Tensor | None:
    """Slice a broadcastable (B|1, H|1, L|1, S|1) mask along ``dim`` unless that dim is broadcast."""
    if mask_part is None or mask_part.shape[dim] == 1:
        return mask_part
    return mask_part.narrow(dim, start, stop - start)


@dataclass
class _Plan:
    score_fn: ScoreFn
    scale: float
    n_q: int
    n_k: int
    causal: bool
    allowed: Tensor | None
    bias: Tensor | None
    block_q: int
    block_k: int
    family: tuple = ()
    chord: bool = False  # the pairwise tile is ‖q̃ − k̃‖² (score_fn = score_from_chord), not scale·⟨q̃, k̃⟩


def _block_size(other: int, batch_heads: int, budget: int) -> int:
    return max(16, min(1 << 12, budget // max(1, other * batch_heads)))


class TiledAttention(torch.autograd.Function):
    """``(q̃, k̃, v, *q_terms, *k_terms, *head) → out`` with O(L + S) saved state (out and lse)."""

    @staticmethod
    def forward(ctx, plan: _Plan, q: Tensor, k: Tensor, v: Tensor, *terms: Tensor) -> Tensor:
        q_terms, k_terms, head = _split(plan, terms)
        L, S = q.shape[-2], k.shape[-2]
        q_pos = torch.arange(L, device=q.device)
        k_pos = torch.arange(S, device=q.device)
        fwd = _fn(block_forward, plan.family)
        out = q.new_empty(*q.shape[:-1], v.shape[-1])
        lse = q.new_empty(*q.shape[:-1], 1)
        kt = tuple(t.unsqueeze(-2) for t in k_terms)                        # (B, H, 1, S)
        hb = broadcast_heads(head, 4)                                       # (H, 1, 1, 1)
        for i0 in range(0, L, plan.block_q):
            i1 = min(L, i0 + plan.block_q)
            s1 = min(S, i1) if plan.causal else S  # causal: keys after the block's last query never count
            x = pairwise(q[..., i0:i1, :], k[..., :s1, :], plan.scale, plan.chord)          # (B, H, bq, s1)
            out[..., i0:i1, :], lse[..., i0:i1, :] = fwd(
                plan.score_fn, x, v[..., :s1, :],
                tuple(t[..., i0:i1, None] for t in q_terms), tuple(t[..., :s1] for t in kt), hb,
                q_pos[i0:i1], k_pos[:s1], _slice(plan.allowed, i0, i1, 0, s1), _slice(plan.bias, i0, i1, 0, s1),
                plan.causal,
            )
        ctx.plan = plan
        # the mask's parts too: the backward reads them again, and autograd's version check then raises if the
        # caller changed them in place in between
        masks = tuple(m for m in (plan.allowed, plan.bias) if m is not None)
        ctx.save_for_backward(q, k, v, out, lse, *masks, *terms)
        ctx.n_masks = len(masks)
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        plan: _Plan = ctx.plan
        q, k, v, out, lse, *terms = ctx.saved_tensors
        terms = terms[ctx.n_masks:]
        if torch.is_grad_enabled():  # create_graph=True: a backward autograd can differentiate again
            return (None, *differentiable_backward(lambda *xs: _whole(plan, *xs), (q, k, v, *terms), dout,
                                                   ctx.needs_input_grad[1:]))
        q_terms, k_terms, head = _split(plan, terms)
        L, S = q.shape[-2], k.shape[-2]
        q_pos = torch.arange(L, device=q.device)
        k_pos = torch.arange(S, device=q.device)
        dout = dout.contiguous()
        delta = (dout * out).sum(-1, keepdim=True)                          # (B, H, L, 1)
        bwd = _fn(block_backward, plan.family)
        dq, dk, dv = torch.zeros_like(q), torch.empty_like(k), torch.empty_like(v)
        d_qterms = [torch.zeros_like(t) for t in q_terms]
        d_kterms = [torch.empty_like(t) for t in k_terms]
        d_head = [torch.zeros_like(h) for h in head]
        qt = tuple(t.unsqueeze(-1) for t in q_terms)                        # (B, H, L, 1)
        hb = broadcast_heads(head, 4)
        for j0 in range(0, S, plan.block_k):
            j1 = min(S, j0 + plan.block_k)
            r0 = min(j0, L) if plan.causal else 0  # causal: queries before the block see none of its keys
            if r0 >= L:
                dk[..., j0:j1, :] = 0
                dv[..., j0:j1, :] = 0
                for g in d_kterms:
                    g[..., j0:j1] = 0
                continue
            qb, kb = q[..., r0:, :], k[..., j0:j1, :]
            g_x, g_v, g_qt, g_kt, g_h = bwd(
                plan.score_fn, pairwise(qb, kb, plan.scale, plan.chord), v[..., j0:j1, :],
                tuple(t[..., r0:, :] for t in qt), tuple(t[..., None, j0:j1] for t in k_terms), hb,
                q_pos[r0:], k_pos[j0:j1], _slice(plan.allowed, r0, L, j0, j1), _slice(plan.bias, r0, L, j0, j1),
                plan.causal, lse[..., r0:, :], dout[..., r0:, :], delta[..., r0:, :],
            )
            g_q, g_k = pairwise_backward(g_x, qb, kb, plan.scale, plan.chord)
            dq[..., r0:, :] += g_q
            dk[..., j0:j1, :], dv[..., j0:j1, :] = g_k, g_v
            for acc, g in zip(d_qterms, g_qt):
                acc[..., r0:] += g.squeeze(-1)
            for acc, g in zip(d_kterms, g_kt):
                acc[..., j0:j1] = g.squeeze(-2)
            for acc, g in zip(d_head, g_h):
                acc += g.reshape(acc.shape)
        return (None, dq, dk, dv, *d_qterms, *d_kterms, *d_head)


def _whole(plan: _Plan, q: Tensor, k: Tensor, v: Tensor, *terms: Tensor) -> Tensor:
    """The output as one block of every query and key (what :meth:`TiledAttention.backward` differentiates under
    ``create_graph=True``): the forward's maths with an L×S score matrix."""
    q_terms, k_terms, head = _split(plan, terms)
    L, S = q.shape[-2], k.shape[-2]
    out, _ = block_forward(plan.score_fn, pairwise(q, k, plan.scale, plan.chord), v,
                           tuple(t.unsqueeze(-1) for t in q_terms), tuple(t.unsqueeze(-2) for t in k_terms),
                           broadcast_heads(head, 4), torch.arange(L, device=q.device), torch.arange(S, device=q.device),
                           plan.allowed, plan.bias, plan.causal)
    return out


def _split(plan: _Plan, terms) -> tuple[tuple, tuple, tuple]:
    terms = tuple(terms)
    return terms[:plan.n_q], terms[plan.n_q:plan.n_q + plan.n_k], terms[plan.n_q + plan.n_k:]


def _slice(mask_part: Tensor | None, i0: int, i1: int, j0: int, j1: int) -> Tensor | None:
    return _rows(_rows(mask_part, -2, i0, i1), -1, j0, j1)


def tiled_attention(call, block_elements: int = BLOCK_ELEMENTS) -> Tensor:
    """``softmax(score) · values`` of an :class:`~geoattn.call.AttentionCall` through :class:`TiledAttention`:
    (B, H, L, Ev)."""
    geometry, mask = call.geometry, call.mask
    lifted = geometry.lift(call.q, call.k, call.scale)
    qa, ka = lifted.q, lifted.k
    cd = qa.dtype
    bias = None if mask.bias is None else mask.bias.to(cd)
    B, H, L, S = qa.shape[0], qa.shape[1], qa.shape[-2], ka.shape[-2]
    q_terms, k_terms = lifted.q_terms, lifted.k_terms
    plan = _Plan(
        score_fn=geometry.score_from_chord if lifted.chord else geometry.score_from_dot, scale=float(lifted.scale),
        chord=lifted.chord, n_q=len(q_terms), n_k=len(k_terms), causal=mask.is_causal, allowed=mask.boolean,
        bias=bias, block_q=_block_size(S, B * H, block_elements), block_k=_block_size(L, B * H, block_elements),
        family=(*call.family(cd), lifted.chord),
    )
    terms = (*q_terms, *k_terms, *(h.to(cd) for h in lifted.head))
    return TiledAttention.apply(plan, qa.contiguous(), ka.contiguous(), call.values.to(cd).contiguous(), *terms)


class TiledBackend(Backend):
    name = "tiled"

    def unsupported(self, call):
        fused = fused_unsupported(self.name, call)
        bias = call.mask.bias
        if fused is None and bias is not None and bias.requires_grad and torch.is_grad_enabled():
            return ("the tiled backend does not differentiate a float attn_mask that requires grad; fold the "
                    "learnable bias into the geometry, or use backend='dense'")
        return fused

    def run(self, call):
        return tiled_attention(call), None
