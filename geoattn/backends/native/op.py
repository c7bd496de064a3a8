"""The native kernel as a PyTorch operator: ``torch.ops.geoattn.native_attention`` and its backward.

Registered with :func:`torch.library.custom_op`, with a fake implementation (shapes, dtypes and strides of the
outputs without running the kernel) and :func:`torch.library.register_autograd`, so ``torch.compile`` and
``torch.export`` put the kernel itself into their graphs (an ``autograd.Function`` around ctypes calls would be
opaque to them), and ``torch.library.opcheck`` tests the registration. An operator takes tensors and numbers
only, so everything the ctypes layer (:mod:`.kernel`) needs is passed as such and its :class:`~.kernel.Plan`
is rebuilt in each call:

* the geometry's parameters behind the per-head κ and μ (``raw``, ``log_t``, with ``sign``, ``coef``,
  ``power``: :class:`~.spec.HeadConstants`) and behind the metric kind's G (``factor``,
  ``diagonal``, ``epsilon``: :class:`~.spec.MetricConstants`); their gradients come from the
  kernel's dκ, dμ, dG through the chain rules written there, with no autograd graph for the constants;
* the affine kind's per-token terms (``q_factor``, ``k_factor``, ``k_bias``, ``alpha``, ``gamma``), whose
  gradients autograd carries on to whatever made them;
* the mask (``allowed`` bool, ``bias`` float, ``causal``).

The forward returns the output, the allocation of O(L) numbers the backward reads (norms, lse, terms), the
metric kind's k̃ (else empty) and the count of clipped vectors; the backward operator takes them back with q, k,
v and the output and returns every gradient (an empty tensor where an input is absent).

Under ``create_graph=True`` (double backward, gradient penalties) the registered backward does not call the
backward operator, whose gradients autograd cannot differentiate: it recomputes the output as torch operations
and returns their gradients, which autograd records (:func:`~geoattn.backends.base.differentiable_backward`): the
dense backend's output for the kinds with per-token terms in the kernel (the eager call leaves it on the autograd
node as ``reference``, see :class:`~geoattn.backends.native.NativeBackend`), :func:`_affine_output` for the affine
kind.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ...masks import causal_allowed, masked_softmax
from ..base import differentiable_backward
from .build import load
from .kernel import AffineTerms, Plan, _heads_last, _layout, backward, forward
from .spec import HeadConstants, MetricConstants

_NONE = 9  # positions 3 .. 11 of the operator's arguments: the optional parameter and term tensors


def _plan(q: Tensor, kind: str, causal: bool, clip: float, allowed: Optional[Tensor], bias: Optional[Tensor],
          raw: Optional[Tensor], log_t: Optional[Tensor], sign: int, coef: float, power: float,
          factor: Optional[Tensor], diagonal: Optional[Tensor], epsilon: float) -> Plan:
    native = load()
    if isinstance(native, str):
        raise RuntimeError(f"geoattn::native_attention: {native}")
    heads = q.shape[1]
    head = None if log_t is None else HeadConstants(raw, log_t, heads, sign, coef, power)
    metric = None if factor is None else MetricConstants(factor, diagonal, epsilon, heads)
    return Plan(native, kind, causal, clip, allowed=allowed, bias=bias, head=head, metric=metric)


def forward_call(q: Tensor, k: Tensor, v: Tensor, raw: Optional[Tensor], log_t: Optional[Tensor],
                 factor: Optional[Tensor], diagonal: Optional[Tensor], q_factor: Optional[Tensor],
                 k_factor: Optional[Tensor], k_bias: Optional[Tensor], alpha: Optional[Tensor], gamma: Optional[Tensor],
                 allowed: Optional[Tensor], bias: Optional[Tensor], kind: str, causal: bool, clip: float, sign: int,
                 coef: float, power: float, epsilon: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``softmax(score(q, k) + mask) · v`` on the native kernel: ``(out, buf, k̃, clipped)`` (see the module doc)."""
    plan = _plan(q, kind, causal, clip, allowed, bias, raw, log_t, sign, coef, power, factor, diagonal, epsilon)
    affine = None if q_factor is None else AffineTerms(q_factor, k_factor, k_bias, alpha, gamma)
    return forward(plan, q, k, v, affine)


# the operator; :func:`forward_call` is its implementation, which an eager call without autograd may run directly
# (the same function: the dispatcher's and autograd's bookkeeping cost more than the kernel at one query row)
native_attention = torch.library.custom_op("geoattn::native_attention", mutates_args=(),
                                           device_types="cpu")(forward_call)


@native_attention.register_fake
def _(q, k, v, raw, log_t, factor, diagonal, q_factor, k_factor, k_bias, alpha, gamma, allowed, bias, kind, causal,
      clip, sign, coef, power, epsilon):
    B, H, L, E = q.shape
    S = k.shape[2]
    ktilde = q.new_empty(H, B, S, E) if kind == "metric" else q.new_empty(0)
    return (_heads_last(q, L, v.shape[-1]), q.new_empty(_layout(B, H, L, S, load().abi)[3]), ktilde,
            q.new_empty((), dtype=torch.int64))


@torch.library.custom_op("geoattn::native_attention_backward", mutates_args=(), device_types="cpu")
def native_attention_backward(dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, buf: Tensor,
                              ktilde: Tensor, raw: Optional[Tensor], log_t: Optional[Tensor],
                              factor: Optional[Tensor], diagonal: Optional[Tensor], allowed: Optional[Tensor],
                              bias: Optional[Tensor], affine: bool, outer: bool, want_dkappa: bool, kind: str,
                              causal: bool, clip: float, sign: int, coef: float, power: float, epsilon: float
                              ) -> list[Tensor]:
    """The gradients of :func:`native_attention`'s inputs q, k, v, raw, log_t, factor, diagonal, q_factor,
    k_factor, k_bias, alpha, gamma, in that order (an empty tensor for an absent one)."""
    plan = _plan(q, kind, causal, clip, allowed, bias, raw, log_t, sign, coef, power, factor, diagonal, epsilon)
    dq, dk, dv, dkappa, dmu, grads = backward(plan, q, k, v, out, buf, ktilde, dout, want_dkappa,
                                              outer if affine else None)
    d_raw = d_logt = d_factor = d_diagonal = None
    if plan.head is not None:
        d_raw, d_logt = plan.head.grads(dkappa, dmu)
    if plan.metric is not None:
        d_factor, d_diagonal = plan.metric.grads(grads)
    terms = [None] * 5
    if affine:
        terms = [grads.q_factor, grads.k_factor, grads.k_bias, grads.alpha, grads.gamma]
    # an empty tensor of its own for each absent gradient: an operator's outputs may not share memory
    return [dq, dk, dv, *(q.new_empty(0) if g is None else g for g in (d_raw, d_logt, d_factor, d_diagonal, *terms))]


@native_attention_backward.register_fake
def _(dout, q, k, v, out, buf, ktilde, raw, log_t, factor, diagonal, allowed, bias, affine, outer, want_dkappa, kind,
      causal, clip, sign, coef, power, epsilon):
    B, H, L, E = q.shape
    S = k.shape[2]
    like = [q.new_empty(0) if t is None else torch.empty_like(t, memory_format=torch.contiguous_format)
            for t in (raw, log_t, factor, diagonal)]
    per = [L, S, S, *((L, S) if outer else ())] if affine else []
    terms = [q.new_empty(B, H, n) for n in per] + [q.new_empty(0) for _ in range(5 - len(per))]
    return [_heads_last(q, L, E), _heads_last(k, S, E), _heads_last(v, S, v.shape[-1]), *like, *terms]


def _affine_output(q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, beta: Tensor, alpha: Optional[Tensor],
                   gamma: Optional[Tensor], allowed: Optional[Tensor], bias: Optional[Tensor], causal: bool) -> Tensor:
    """``softmax(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ + mask) · v`` (affine.h with μ = 1) as torch operations, L×S: what the
    affine kind's backward differentiates under ``create_graph=True``."""
    s = a.unsqueeze(-1) * b.unsqueeze(-2) * (q @ k.transpose(-1, -2)) + beta.unsqueeze(-2)
    if alpha is not None:
        s = s + alpha.unsqueeze(-1) * gamma.unsqueeze(-2)
    if bias is not None:
        s = s + bias
    if causal:
        mask = causal_allowed(q.shape[-2], k.shape[-2], q.device)
        allowed = mask if allowed is None else allowed & mask
    return masked_softmax(s, allowed) @ v


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, raw, log_t, factor, diagonal, q_factor, k_factor, k_bias, alpha, gamma, allowed, bias, *options = inputs
    out, buf, ktilde, _ = output
    # the mask parts saved too: autograd's version check raises if the caller changes them in place before the
    # backward, which reads them again
    ctx.save_for_backward(q, k, v, out, buf, ktilde, raw, log_t, factor, diagonal, allowed, bias, q_factor, k_factor,
                          k_bias, alpha, gamma)
    ctx.present = [t is not None for t in inputs[3:3 + _NONE]]
    ctx.affine, ctx.outer, ctx.options = q_factor is not None, alpha is not None, options
    ctx.mark_non_differentiable(buf, ktilde)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, *_):
    if dout is None:  # the output took no part in the loss
        return (None,) * 21
    q, k, v, out, buf, ktilde, raw, log_t, factor, diagonal, allowed, bias, *terms = ctx.saved_tensors
    need = ctx.needs_input_grad
    if torch.is_grad_enabled():  # create_graph=True
        if ctx.affine:
            grads = differentiable_backward(
                lambda q, k, v, *t: _affine_output(q, k, v, *t, allowed, bias, ctx.options[1]), (q, k, v, *terms),
                dout, need[:3] + need[7:12])
            return (*grads[:3], None, None, None, None, *grads[3:], None, None, *[None] * 7)
        reference = getattr(ctx, "reference", None)
        if reference is not None:
            grads = differentiable_backward(reference, (q, k, v), dout, need[:7], (raw, log_t, factor, diagonal))
            return (*grads, *[None] * 14)
        # no recomputation recorded (a compiled graph, which has no double backward): the operator's gradients
    grads = native_attention_backward(dout, q, k, v, out, buf, ktilde, raw, log_t, factor, diagonal, allowed, bias,
                                      ctx.affine, ctx.outer, need[3], *ctx.options)
    mine = [g if need[i] else None for i, g in enumerate(grads[:3])]
    rest = [g if present and need[3 + i] else None for i, (g, present) in enumerate(zip(grads[3:], ctx.present))]
    return (*mine, *rest, None, None, *[None] * 7)


native_attention.register_autograd(_backward, setup_context=_setup_context)
