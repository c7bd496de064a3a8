"""``native``: the fused CPU kernel of every non-Euclidean geometry, forward and backward, O(L) memory.

FlashAttention's structure (``kernel.cpp``): per head and block of query rows, the keys in chunks with
an online softmax; per chunk a Gram tile from MKL's sgemm, the geometry's score in one vectorised pass
per element, and the tile multiplied back. Two families of kinds:

* ``stereographic`` (κ-stereographic of either sign, Poincaré) and ``sphere`` (geodesic score): the
  kernel computes the per-token terms itself (norms, clipped radii, sinh factors, in double), and
  nearly parallel pairs get their direction gap recomputed in double precision, so the distance never
  cancels (unlike the Gram form of ``tiled``/``flex``): exact at every radius;
* the affine kinds (``lorentz``, ``cosine``, ``l2``, ``metric``, and ``affine`` for any other geometry with
  an :meth:`affine_form`): ``aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ`` runs on the raw vectors at their head dim, the
  per-token factors (radial factors, 1/‖x‖) and terms applied to the Gram tile (SDPA needs the lifted
  vectors and a column more for each of β and the outer term αγ, e.g. Lorentz's time coordinates). The
  kernel forms the terms itself from the token norms (Lorentz, cosine, l2) or from q, k and G (the learned
  metric: k̃ = G k, β = −½kᵀGk); ``affine`` takes them from the geometry's ``affine_form`` in torch. Only
  what SDPA keeps is saved, plus O(L) terms (and k̃ for the metric). Same bound as the SDPA route (the
  affine form of :mod:`geoattn.math.eps`).

Per-head κ and μ, and the learned metric's G, come from the geometry's parameters without an autograd
graph (:class:`~geoattn.backends.native.spec.HeadConstants`, :class:`~geoattn.backends.native.spec.MetricConstants`);
outputs and gradients are laid out as SDPA lays out its own, (B, L, H, E) in memory, so a transformer
layer reshapes them without a copy.

Built on first use with the system's C++ compiler (cached on disk: :mod:`.build`; where it cannot be
built, ``auto`` uses the portable backends and warns once, naming the reason and the fix); it
runs float32 (bf16/fp16 inputs are cast up, as every geometric score is), and float64 calls go to the
``sdpa``, ``dense`` and ``tiled`` backends.
"""
from __future__ import annotations

import dataclasses
import functools

import torch

from ..base import Backend, Unavailable, fused_unsupported
from .build import SWITCHED_OFF, load
from .kernel import AffineAttention, NativeAttention, Plan, affine_terms, kernel_input

__all__ = ["NativeBackend", "load"]


def _plain_cpu_call(call) -> bool:
    """CPU, float32 compute (any input dtype but float64), eager autograd: what the C++ functions run."""
    return (call.device.type == "cpu" and call.dtype != torch.float64 and not torch.compiler.is_compiling()
            and not torch._C._functorch.is_functorch_wrapped_tensor(call.q))


def _dense_output(call, q, k, values):
    """The dense backend's (B, H, L, Ev) output of ``call`` with these q, k and (mapped) values: what the kernel's
    backward differentiates when autograd records it (``create_graph=True``)."""
    from ..dense import DenseBackend  # here: geoattn.geometry imports this package's spec while loading

    again = dataclasses.replace(call, q=q, k=k, v=values, verdicts={})
    again.__dict__["values"] = values  # already mapped by the geometry's pre_values
    return DenseBackend().run(again)[0]


class NativeBackend(Backend):
    name = "native"

    def unsupported(self, call):
        kind = call.geometry.native_kind
        if kind is None:
            return (f"geometry {call.geometry.name!r} has no native kernel (the stereographic, poincare, lorentz, "
                    "sphere, metric and l2 scores have one); use backend='auto'")
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
        if isinstance(native, str):
            return native if native == SWITCHED_OFF else Unavailable(native)  # switched off on purpose: no warning
        if kind not in native.abi.kinds:
            return (f"geometry {call.geometry.name!r} names native_kind={kind!r}, which the native kernel does not "
                    f"have (it has {', '.join(native.abi.kinds)}); set native_kind = 'affine' or None")
        return None

    def run(self, call):
        native = load()
        geometry = call.geometry
        spec = geometry.native_spec(call.q, call.scale)
        q, k, v = (kernel_input(t) for t in (call.q, call.k, call.values))
        mask = call.mask
        bias = None if mask.bias is None else mask.bias.float()
        plan = Plan(native, spec.kind, mask.is_causal, spec.clip, allowed=mask.boolean, bias=bias, head=spec.head,
                    metric=spec.metric, reference=functools.partial(_dense_output, call))
        if spec.kind == "affine":
            qa, ka, t = affine_terms(geometry.affine_form(q, k, call.scale))
            return AffineAttention.apply(qa, ka, v, plan, t.q_factor, t.k_factor, t.k_bias, t.alpha, t.gamma), None
        metric = spec.metric
        factor, diagonal = (None, None) if metric is None else (metric.factor, metric.raw_diagonal)
        out = NativeAttention.apply(q, k, v, spec.head.raw, spec.head.log_t, factor, diagonal, plan)
        if plan.clipped and hasattr(geometry, "record_clip"):
            geometry.record_clip(plan.clipped)
        return out, None
