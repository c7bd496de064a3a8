"""Exact reduction to ``F.scaled_dot_product_attention`` for affine geometries.

If ``score = ⟨q̃, k̃⟩·scale + a_q + b_k`` then, because ``a_q`` is constant along a softmax row,
``softmax(score) = softmax([q̃, 1]·[k̃·scale, b_k])`` — plain scaled dot-product attention on
augmented vectors, so PyTorch's flash / memory-efficient kernels run it (the x-transformers trick).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from .base import Backend, differentiable_backward, readable_rows


class _TwiceDifferentiableSDPA(torch.autograd.Function):
    """``F.scaled_dot_product_attention`` whose backward can itself be differentiated.

    PyTorch's fused SDPA kernels (flash, memory-efficient) have no double backward; its math backend has one.
    The forward runs the fused kernel and keeps its autograd graph, so an ordinary backward is the fused
    kernel's own (nothing recomputed); a backward that autograd records (``create_graph=True``: gradient
    penalties, meta-learning) recomputes the call on the math backend and differentiates that
    (:func:`~geoattn.backends.base.differentiable_backward`, O(L·S) memory, like the dense backend)."""

    @staticmethod
    def forward(ctx, q, k, v, mask, is_causal, scale):
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) if t is not None else None for t in (q, k, v, mask)]
            out = F.scaled_dot_product_attention(*leaves[:3], attn_mask=leaves[3], is_causal=is_causal, scale=scale)
        ctx.inner = (out, leaves)
        ctx.is_causal, ctx.scale = is_causal, scale
        ctx.save_for_backward(q, k, v, mask)
        return out.detach()

    @staticmethod
    def backward(ctx, dout):
        out, leaves = ctx.inner  # kept: a recorded backward may reach this node again (through ∂/∂out)
        needs = (*ctx.needs_input_grad[:4],)
        if torch.is_grad_enabled():  # create_graph=True: differentiable gradients, from the math backend
            def math(q, k, v, mask):
                with sdpa_kernel(SDPBackend.MATH):
                    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=ctx.is_causal,
                                                          scale=ctx.scale)

            return (*differentiable_backward(math, ctx.saved_tensors, dout, needs), None, None)
        wrt = [t for t, need in zip(leaves, needs) if need]
        grads = iter(torch.autograd.grad(out, wrt, dout, retain_graph=True))
        return (*(next(grads) if need else None for need in needs), None, None)


def scaled_dot_product_attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """``F.scaled_dot_product_attention``, twice differentiable in eager autograd (:class:`_TwiceDifferentiableSDPA`)
    where gradients are recorded; as it is under ``torch.compile``, with dropout (a recomputation would draw
    another mask), without gradients, and under torch.func transforms (vmap, grad: an autograd.Function without
    ``setup_context`` cannot run under them, and SDPA has their rules)."""
    tensors = [t for t in (q, k, v, attn_mask) if t is not None]
    grads = torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
    if (not grads or dropout_p > 0 or torch.compiler.is_compiling()
            or any(torch._C._functorch.is_functorch_wrapped_tensor(t) for t in tensors)):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                              is_causal=is_causal, scale=scale)
    return _TwiceDifferentiableSDPA.apply(q, k, v, attn_mask, is_causal, scale)


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
        out = scaled_dot_product_attention(
            qa, ka, v, attn_mask=attn_mask, dropout_p=call.dropout_p, is_causal=call.mask.is_causal, scale=s
        )
        return out[..., :ev], None
