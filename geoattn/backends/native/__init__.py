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
from .kernel import KINDS, NativeAttention, Plan
from .lift import lorentz_lift

__all__ = ["NativeBackend", "fused_affine_lift", "load"]


def _plain_cpu_call(call) -> bool:
    """CPU, float32 compute (any input dtype but float64), eager autograd: what the C++ functions run."""
    return (call.device.type == "cpu" and call.dtype != torch.float64 and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(call.q))


def fused_affine_lift(call):
    """The SDPA backend's lifted q̃, k̃ from the fused C++ lift, where the geometry has one (Lorentz) and the
    call allows it; None otherwise (then the geometry's torch :meth:`affine_lift` runs)."""
    geometry = call.geometry
    if geometry.native_kind != "lorentz" or not _plain_cpu_call(call) or isinstance(load(), str):
        return None
    from ...geometry import Lifted

    native, spec = load(), geometry.native_spec(call.q, call.scale)
    counter: list[int] = []
    q, k = lorentz_lift(native, call.q.float(), call.k.float(), spec.kappa, spec.mu, spec.clip, counter)
    if sum(counter):
        geometry.record_clip(sum(counter))
    return Lifted(q, k)


class NativeBackend(Backend):
    name = "native"

    def unsupported(self, call):
        if call.geometry.native_kind not in KINDS:
            return (f"geometry {call.geometry.name!r} has no native kernel (it has one for the stereographic, "
                    "poincare and geodesic-sphere scores); use backend='auto'")
        if call.device.type != "cpu":
            return "the native backend is a CPU kernel; on an accelerator use backend='auto' (flex)"
        if call.dtype == torch.float64:
            return ("the native kernel computes in float32; float64 calls run on backend='dense' or 'tiled' "
                    "(what 'auto' picks)")
        if not _plain_cpu_call(call):
            return ("torch.func transforms (vmap, grad) and torch.compile do not reach the native kernel; use "
                    "backend='dense'")
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
