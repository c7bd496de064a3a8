"""``flex``: the geometry's pointwise score as a FlexAttention ``score_mod``, fused and O(L) memory.

``flex_attention(q̃, k̃, v, score_mod)`` computes ``softmax(score_mod(q̃·k̃ᵀ)) · v`` in blocks inside
one compiled kernel (C++ on CPU, Triton on GPU) and never materialises the L×S matrix (He et al.,
"FlexAttention: A Programming Model for Generating Optimized Attention Kernels", MLSys 2025). The
``score_mod`` here is the geometry's own :meth:`~geoattn.Geometry.score_from_gram` on scalars, with
the per-token terms captured as (B, H, L|S) tensors indexed ``t[b, h, idx]`` and the per-head
constants as (H,) tensors indexed ``t[h]`` (a captured Python float would break the recompiles of
dynamic shapes). Masks: causal and boolean masks become a ``mask_mod``/``BlockMask`` (fully masked
blocks are skipped); a float mask is added in the ``score_mod``.

Only the ``flex_attention`` call is compiled (buffers are computed eagerly; computing them inside the
graph fails on CPU in torch 2.13), once per shape family with ``dynamic=True``. On CPU, torch 2.13
has no FlexAttention backward (:meth:`FlexBackend.unsupported` says so); ``auto`` runs CPU calls on
``tiled`` (see :mod:`geoattn.backends.policy`).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention

from ..masks import Mask, causal_mod
from .base import Backend, fused_unsupported, gram_terms
from .compile_cache import compiled


def _flex_call(q: Tensor, k: Tensor, v: Tensor, score_mod, block_mask) -> Tensor:
    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0)


def _full(t: Tensor, B: int, H: int, L: int, S: int) -> Tensor:
    """A broadcastable (·, ·, L|1, S|1) mask as a stride-0 (B, H, L, S) view (no copy)."""
    return t.expand(B, H, L, S)


BLOCK = 128  # FlexAttention's default block size; lengths are padded to a multiple of it


def _padded(n: int) -> int:
    return -(-n // BLOCK) * BLOCK


def _pad(t: Tensor, n: int, dim: int) -> Tensor:
    """Zero-pad ``t`` along ``dim`` to length ``n``."""
    if t.shape[dim] == n:
        return t
    shape = list(t.shape)
    shape[dim] = n - shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


def make_block_mask(mask: Mask, B: int, H: int, L: int, S: int, device, S_valid: int):
    """The boolean part of ``mask`` (causal, a bool tensor, keys past ``S_valid``) as a ``BlockMask``."""
    mods = []
    if S_valid < S:
        valid = torch.arange(S, device=device) < S_valid                   # (S,)

        def real_key(b, h, q_idx, kv_idx):
            return valid[kv_idx]
        mods.append(real_key)
    if mask.is_causal:
        mods.append(causal_mod)
    allowed = mask.boolean
    if allowed is not None:
        full = _pad(_pad(_full(allowed.to(device), B, H, mask.L, mask.S), L, -2), S, -1)

        def boolean(b, h, q_idx, kv_idx):
            return full[b, h, q_idx, kv_idx]
        mods.append(boolean)
    if not mods:
        return None
    per_b = B if allowed is not None and allowed.shape[0] != 1 else None
    per_h = H if allowed is not None and allowed.shape[1] != 1 else None
    return create_block_mask(and_masks(*mods), per_b, per_h, L, S, device=device)


def flex_geometric_attention(call) -> Tensor:
    """``softmax(score) · values`` of an :class:`~geoattn.call.AttentionCall` on FlexAttention: (B, H, L, Ev)."""
    geometry, q, k, mask = call.geometry, call.q, call.k, call.mask
    lifted = geometry.lift(q, k, call.scale)
    cd = lifted.q.dtype
    B, H, L0, S0 = q.shape[0], q.shape[1], q.shape[-2], k.shape[-2]
    L, S = _padded(L0), _padded(S0)  # compiled CPU flex with dynamic shapes is wrong for ragged lengths
    qa = _pad(lifted.q * lifted.scale, L, -2).contiguous()                 # (B, H, L, Dl): flex scale = 1
    ka = _pad(lifted.k, S, -2).contiguous()                                # (B, H, S, Dl)
    q_terms, k_terms = gram_terms(lifted)
    q_terms = tuple(_pad(t.expand(B, H, L0).to(cd), L, -1) for t in q_terms)          # each (B, H, L)
    k_terms = tuple(_pad(t.expand(B, H, S0).to(cd), S, -1) for t in k_terms)          # each (B, H, S)
    head = tuple(h.to(cd).expand(H).contiguous() for h in lifted.head)     # each (H,)
    bias = mask.bias
    bias = None if bias is None else _pad(_pad(_full(bias.to(cd), B, H, L0, S0), L, -2), S, -1)
    score_fn = geometry.score_from_gram

    def score_mod(score, b, h, q_idx, kv_idx):
        s = score_fn(score, tuple(t[b, h, q_idx] for t in q_terms), tuple(t[b, h, kv_idx] for t in k_terms),
                     tuple(t[h] for t in head))
        return s if bias is None else s + bias[b, h, q_idx, kv_idx]

    block_mask = make_block_mask(mask, B, H, L, S, qa.device, S_valid=S0)
    run = compiled(_flex_call, (*call.family(cd), block_mask is None))
    vp = _pad(call.values.to(cd), S, -2).contiguous()
    if not torch.is_grad_enabled():  # flex rejects any input with requires_grad on CPU, even under no_grad
        qa, ka, vp = qa.detach(), ka.detach(), vp.detach()
    out = run(qa, ka, vp, score_mod, block_mask)
    return out[..., :L0, :]


class FlexBackend(Backend):
    name = "flex"

    def unsupported(self, call):
        fused = fused_unsupported(self.name, call)
        if fused is None and call.dtype == torch.float64:
            return ("the flex backend does not run float64 (FlexAttention computes in float32, float16 or bfloat16); "
                    "use backend='tiled' or 'dense' (both run float64), or cast the inputs with .float()")
        if fused is None and call.needs_grad and call.device.type == "cpu":
            return ("FlexAttention has no backward on CPU in this torch version; use backend='tiled' (what "
                    "'auto' picks for CPU training) or run under torch.no_grad()")
        return fused

    def run(self, call):
        return flex_geometric_attention(call), None
