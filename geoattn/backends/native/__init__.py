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
graph (:class:`~.spec.HeadConstants`, :class:`~.spec.MetricConstants`);
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
from .kernel import affine_terms, kernel_input
from .op import forward_call, native_attention

__all__ = ["NativeBackend", "load"]


@torch.compiler.assume_constant_result
def _unavailable() -> str | None:
    """Why the native kernel cannot run here (None: it can); under ``torch.compile`` a constant of the graph (the
    build's lock and file checks run once, outside it)."""
    native = load()
    if not isinstance(native, str):
        return None
    return native if native == SWITCHED_OFF else Unavailable(native)  # switched off on purpose: no warning


@torch.compiler.assume_constant_result
def _kinds() -> tuple[str, ...]:
    """The kinds the loaded library has (its ABI table; none where it is not loaded), a constant under compile."""
    native = load()
    return () if isinstance(native, str) else tuple(native.abi.kinds)


def _dense_output(call, q, k, values):
    """The dense backend's (B, H, L, Ev) output of ``call`` with these q, k and (mapped) values: what the kernel's
    backward differentiates when autograd records it (``create_graph=True``)."""
    from ..dense import DenseBackend  # here: geoattn.geometry imports this package's spec while loading

    again = dataclasses.replace(call, q=q, k=k, v=values, verdicts={}, cache={"values": values})  # values: already
    # mapped by the geometry's pre_values
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
        fused = fused_unsupported(self.name, call)
        if fused is not None:
            return fused
        bias = call.mask.bias
        if bias is not None and bias.requires_grad and torch.is_grad_enabled():
            return ("the native backend does not differentiate a float attn_mask that requires grad; fold the "
                    "learnable bias into the geometry, or use backend='dense'")
        reason = _unavailable()
        if reason is not None:
            return reason
        if kind not in _kinds():
            return (f"geometry {call.geometry.name!r} names native_kind={kind!r}, which the native kernel does not "
                    f"have (it has {', '.join(_kinds())}); set native_kind = 'affine' or None")
        return None

    def arguments(self, call) -> tuple:
        """The arguments of :func:`~.op.native_attention` for ``call`` (the kernel's inputs in float32, the
        geometry's parameters, the affine kind's terms, the mask) and the geometry's :class:`NativeSpec`."""
        geometry = call.geometry
        spec = geometry.native_spec(call.q, call.scale)
        q, k, v = (kernel_input(t) for t in (call.q, call.k, call.values))
        mask = call.mask
        bias = None if mask.bias is None else mask.bias.float()
        head, metric = spec.head, spec.metric
        terms = [None] * 5
        if spec.kind == "affine":
            q, k, t = affine_terms(geometry.affine_form(q, k, call.scale))
            terms = [t.q_factor, t.k_factor, t.k_bias, t.alpha, t.gamma]
        raw, log_t, sign, coef, power = ((None,) * 2 + (0, 1.0, 0.0) if head is None else
                                         (head.raw, head.log_t, head.sign, float(head.coef), float(head.power)))
        factor, diagonal, epsilon = (None, None, 0.0) if metric is None else (metric.factor, metric.raw_diagonal,
                                                                                metric.epsilon)
        return (q, k, v, raw, log_t, factor, diagonal, *terms, mask.boolean, bias, spec.kind, mask.is_causal,
                float(spec.clip), sign, coef, power, epsilon), spec

    def run(self, call):
        args, spec = self.arguments(call)
        # the operator where autograd or a compiler must see the call; else its implementation, directly
        direct = not call.needs_grad and not torch.compiler.is_compiling()
        out, _, _, clipped = (forward_call if direct else native_attention)(*args)
        if not torch.compiler.is_compiling() and out.grad_fn is not None:
            # what the registered backward differentiates under create_graph=True (op.py); an eager call's node is
            # the autograd context that backward receives
            out.grad_fn.reference = functools.partial(_dense_output, call)
        geometry = call.geometry
        if spec.clip and hasattr(geometry, "record_clip") and not torch.compiler.is_compiling():  # eager only, as
            # the other backends count it
            geometry.record_clip(int(clipped))
        return out, None
