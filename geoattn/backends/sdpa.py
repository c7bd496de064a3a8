"""Exact reduction to ``F.scaled_dot_product_attention`` for affine geometries.

If ``score = ⟨q̃, k̃⟩·scale + a_q + b_k`` then, because ``a_q`` is constant along a softmax row,
``softmax(score) = softmax([q̃, 1]·[k̃·scale, b_k])`` — plain scaled dot-product attention on
augmented vectors, so PyTorch's flash / memory-efficient kernels run it (the x-transformers trick).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Backend, readable_rows


class SDPABackend(Backend):
    name = "sdpa"

    def unsupported(self, call):
        geometry = call.geometry
        if not geometry.affine:
            return (
                f"geometry {geometry.name!r} has a score that is not affine in a dot product, so it has no "
                "exact SDPA reduction; use backend='auto' or 'dense'"
            )
        if call.return_weights:
            return "the sdpa backend does not return attention weights; use backend='dense' (or 'auto')"
        return None

    def run(self, call):
        lifted = call.geometry.affine_lift(call.q, call.k, call.scale)
        qa, ka, s = lifted.q, lifted.k, lifted.scale
        if lifted.k_terms or lifted.outer is not None:
            # [q̃, a, 1, …] · [k̃·s, b, β, …]: the outer term and the per-key terms ride along as extra columns
            q_cols, k_cols = [qa], [ka * s]
            if lifted.outer is not None:
                a, b = lifted.outer
                q_cols.append(a.expand(qa.shape[:-1]).unsqueeze(-1).to(qa.dtype))
                k_cols.append(b.expand(ka.shape[:-1]).unsqueeze(-1).to(ka.dtype))
            if lifted.k_terms:
                q_cols.append(torch.ones(*qa.shape[:-1], len(lifted.k_terms), dtype=qa.dtype, device=qa.device))
                k_cols.append(torch.stack(lifted.k_terms, dim=-1).to(ka.dtype))
            qa, ka, s = torch.cat(q_cols, dim=-1), torch.cat(k_cols, dim=-1), 1.0
        attn_mask = call.mask.boolean if call.mask.bias is None else call.mask.bias.to(qa.dtype)
        v = call.values.to(qa.dtype)
        ev = v.shape[-1]
        # PyTorch's fused CPU kernels need equal q/k and v head dims (else SDPA falls back to the math
        # path, which materialises L×S); zero columns change neither q·k nor p·v.
        width = max(qa.shape[-1], ev)
        qa, ka, v = (F.pad(t, (0, width - t.shape[-1])) if t.shape[-1] < width else t for t in (qa, ka, v))
        qa, ka, v = (readable_rows(t) for t in (qa, ka, v))  # CPU flash attention misreads overlapping rows
        out = F.scaled_dot_product_attention(
            qa, ka, v, attn_mask=attn_mask, dropout_p=call.dropout_p, is_causal=call.mask.is_causal, scale=s
        )
        return out[..., :ev], None
