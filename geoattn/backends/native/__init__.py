"""``native``: a fused CPU kernel for the curved geometries whose score is not affine (κ-stereographic,
Poincaré, sphere with the geodesic score), forward and backward, O(L) memory, exact at every radius.

FlashAttention's structure with whole key rows (``kernel.cpp``): per head and block of query rows, a
Gram tile from MKL's sgemm, the geometry's score and a stable softmax in one vectorised pass per
element, and the tile multiplied back; nearly parallel pairs get their direction gap recomputed in
double precision, so the distance never cancels (unlike the Gram form of ``tiled``/``flex``). Built on
first use with the system's C++ compiler (a few seconds, cached on disk: :mod:`.build`); it runs
float32 (bf16/fp16 inputs are cast up, as every geometric score is), and float64 calls go to the
``dense`` and ``tiled`` backends.
"""
from __future__ import annotations

import torch

from ..base import Backend, fused_unsupported
from .build import load
from .kernel import NativeAttention, Plan

__all__ = ["NativeBackend", "load"]


class NativeBackend(Backend):
    name = "native"

    def unsupported(self, call):
        if call.geometry.native_kind is None:
            return (f"geometry {call.geometry.name!r} has no native kernel (it has one for the stereographic, "
                    "poincare and geodesic-sphere scores); use backend='auto'")
        if call.device.type != "cpu":
            return "the native backend is a CPU kernel; on an accelerator use backend='auto' (flex)"
        if call.dtype == torch.float64:
            return ("the native kernel computes in float32; float64 calls run on backend='dense' or 'tiled' "
                    "(what 'auto' picks)")
        if torch._C._functorch.is_functorch_wrapped_tensor(call.q):
            return "torch.func transforms (vmap, grad) do not reach the native kernel; use backend='dense'"
        fused = fused_unsupported(self.name, call)
        if fused is not None:
            return fused
        bias = call.mask.bias
        if bias is not None and bias.requires_grad and torch.is_grad_enabled():
            return ("the native backend does not differentiate a float attn_mask that requires grad; fold the "
                    "learnable bias into the geometry, or use backend='dense'")
        native = load()
        return native if isinstance(native, str) else None

    def run(self, call):
        native = load()
        spec = call.geometry.native_spec(call.q, call.scale)
        q, k, v = (t.float() if t.stride(-1) == 1 else t.float().contiguous() for t in (call.q, call.k, call.values))
        mask = call.mask
        bias = None if mask.bias is None else mask.bias.float()
        plan = Plan(native, spec.kind, mask.is_causal, spec.clip, allowed=mask.boolean, bias=bias)
        out = NativeAttention.apply(q, k, v, spec.kappa.contiguous(), spec.mu.contiguous(), plan)
        if plan.clipped and hasattr(call.geometry, "record_clip"):
            call.geometry.record_clip(plan.clipped)
        return out, None
