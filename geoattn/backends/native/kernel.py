"""The native kernel's autograd function: one call forward, one call backward, everything else in C++.

``NativeAttention.apply(q, k, v, raw, log_t, factor, diagonal, plan)``: q (B, H, L, E), k (B, H, S, E), v
(B, H, S, Ev) in float32 with a contiguous last dim (other strides are passed through, so transposed views
cost no copy); ``raw`` and ``log_t`` the geometry's parameters behind the per-head κ and μ (``plan.head``),
``factor`` and ``diagonal`` the learned metric's parameters behind its G (``plan.metric``; None for the other
kinds). The kernel computes the per-token terms itself (norms, clipped tangent radii, radial factors, in
double precision), so autograd sees one node whose backward returns dq, dk, dv and the parameters'
gradients; nothing but the output, one log-sum-exp per row and O(L) terms is saved.
``AffineAttention`` runs the generic ``affine`` kind, whose terms come from the geometry's ``affine_form``.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor

from ...masks import causal_allowed, masked_softmax
from ..base import differentiable_backward, readable_rows, rows_apart
from .abi import Constants, Problem as _Problem, View as _View
from .build import Native
from .spec import HeadConstants, MetricConstants

ETA = 1.0 / 32  # gaps below this (nearly parallel pairs) are recomputed from the vectors in double precision
TILE_ELEMENTS = 1 << 17  # bq·chunk of a work item's score tile (512 KiB in float32: it stays in L2)
CHUNK = 512  # keys per tile (FlashAttention's key blocks; PyTorch's CPU flash kernel uses 256 × 512 tiles)

_F32 = ctypes.c_float


def _view(t: Tensor) -> _View:
    """Where a tensor of rows becomes a pointer: q, k, v, dO and the outputs. Refuses a layout BLAS cannot read
    (:func:`kernel_input` makes every tensor readable first)."""
    if t.dtype != torch.float32 or not rows_apart(t):
        raise RuntimeError(f"geoattn native kernel: a {tuple(t.shape)} tensor with strides {t.stride()} and dtype "
                           f"{t.dtype} reached the kernel without kernel_input(); this is a bug in geoattn")
    return _View(t.data_ptr(), *t.stride()[:3])


def _floats(values: list[float]) -> ctypes.Array:
    """Per-head constants for the kernel: float32 (rounded to nearest, as ``Tensor.float()``)."""
    return (_F32 * len(values))(*values)


@dataclass
class Plan:
    """The non-tensor arguments of one call."""

    native: Native
    kind: str
    causal: bool
    clip: float
    allowed: Tensor | None = None   # bool (B|1, H|1, L|1, S|1), True = take part
    bias: Tensor | None = None      # float, same broadcasting
    clipped: int = 0                # out: vectors the clip shortened (forward)
    head: HeadConstants | None = None  # κ and μ (the kinds with per-token terms in the kernel)
    metric: MetricConstants | None = None  # the metric kind's G and its chain rule
    problem: _Problem | None = None  # the forward's arguments, completed by the backward (one struct per call)
    keep: tuple = ()                # tensors only the struct points to (kept alive until the backward)
    reference: Callable[[Tensor, Tensor, Tensor], Tensor] | None = None  # (q, k, v) → the dense backend's output

    def masks(self) -> tuple[Tensor, ...]:
        """The mask's parts, which the backward reads again: saved for it (``save_for_backward``), so that autograd's
        version check raises if the caller changes them in place in between, as for any saved tensor."""
        return tuple(m for m in (self.allowed, self.bias) if m is not None)


def _problem(plan: Plan, q: Tensor, k: Tensor, v: Tensor, kappa: ctypes.Array, mu: ctypes.Array,
             terms: tuple[int, int, int, int]) -> _Problem:
    B, H, L, D = q.shape
    S = k.shape[2]
    chunk = max(1, min(S, CHUNK))
    qterms, kterms, qnorm, knorm = terms
    p = _Problem(B=B, H=H, L=L, S=S, D=D, Ev=v.shape[-1], bq=max(16, min(256, TILE_ELEMENTS // chunk)),
                 kind=plan.native.abi.kinds[plan.kind], causal=int(plan.causal), nthreads=torch.get_num_threads(),
                 chunk=chunk,
                 q=_view(q), k=_view(k), v=_view(v), kappa=ctypes.addressof(kappa), mu=ctypes.addressof(mu),
                 inv_sqrt_e=1 / math.sqrt(D), clip=plan.clip, eta=ETA, sgemm=plan.native.sgemm,
                 outer=int(plan.kind == "lorentz"),  # its time coordinates; the "affine" kind's callers set it
                 qterms=qterms, kterms=kterms, qnorm=qnorm, knorm=knorm)
    for part, prefix, dtype in ((plan.allowed, "am", torch.bool), (plan.bias, "bm", torch.float32)):
        if part is not None:  # read element by element through its strides (common.h): any layout, 0 included
            if part.dtype != dtype:
                raise RuntimeError(f"geoattn native kernel: a {part.dtype} mask part where {dtype} is read; this is "
                                   "a bug in geoattn")
            full = part.expand(B, H, L, S)  # a view: broadcast dims get stride 0
            setattr(p, "allowed" if prefix == "am" else "bias", full.data_ptr())
            for name, stride in zip("bhij", full.stride()):
                setattr(p, f"{prefix}_{name}", stride)
    return p


def _heads_last(like: Tensor, rows: int, cols: int) -> Tensor:
    """An uninitialised (B, H, rows, cols) float32 buffer laid out as (B, rows, H, cols), SDPA's layout for its
    outputs and gradients: what a transformer layer makes of them (``out.transpose(1, 2).reshape(B, T, H·E)``,
    the gradients of q, k, v split from one projection) is then a view, not a copy."""
    B, H = like.shape[:2]
    width = max(cols, 1)  # a row stride of at least 1 also without columns (BLAS's leading dimension)
    return torch.empty_strided((B, H, rows, cols), (rows * H * width, width, H * width, 1), dtype=like.dtype,
                               device=like.device)


def _buffers(q: Tensor, k: Tensor, affine: "AffineTerms | None",
             abi: Constants) -> tuple[Tensor, int, tuple[int, int, int, int]]:
    """The forward's small outputs in one zeroed float32 allocation, kept by the caller until the backward:
    the norms (B·H, L), (B·H, S) in double (first, so they are aligned), the lse (B·H, L) and the per-token term
    buffers (B·H, kTerms, L), (B·H, kTerms, S padded). Returns the allocation, the lse's address and the terms'
    addresses (q terms, k terms, q norms, k norms): the kernel reaches them only through the struct, so no view
    of them is made. The kernel fills them (forward) for its own kinds; the affine kind's terms are written
    here (affine.h)."""
    B, H, L, _ = q.shape
    S = k.shape[2]
    N, Sp = B * H, -(-S // abi.lanes) * abi.lanes
    # key-term rows padded with zeros to whole vectors: the kernel's row loops read up to one past S (Row)
    start = 2 * N * (L + S)  # floats taken by the norms
    buf = q.new_zeros(start + N * (L + abi.terms * (L + Sp)))
    q_at = start + N * L  # floats before the q terms (norms, lse), then before the k terms
    k_at = q_at + N * abi.terms * L
    if affine is not None:
        qt = buf.as_strided((B, H, abi.terms, L), (H * abi.terms * L, abi.terms * L, L, 1), q_at)
        kt = buf.as_strided((B, H, abi.terms, S), (H * abi.terms * Sp, abi.terms * Sp, Sp, 1), k_at)
        qt[:, :, 1].copy_(affine.q_factor)
        kt[:, :, 0].copy_(affine.k_bias)
        kt[:, :, 2].copy_(affine.k_factor)
        if affine.outer:
            qt[:, :, 0].copy_(affine.alpha)
            kt[:, :, 1].copy_(affine.gamma)
    base, size = buf.data_ptr(), buf.element_size()
    return buf, base + size * start, (base + size * q_at, base + size * k_at, base, base + 2 * size * N * L)


def _forward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, kappa: list[float], mu: list[float],
             affine: AffineTerms | None = None, metric: Tensor | None = None) -> Tensor:
    """One forward call: the output (B, H, L, Ev). The filled struct stays on ``plan`` for the backward, which
    adds its own fields, and with it (``plan.keep``) what only the struct points to: the lse and per-token
    terms (:func:`_buffers`), the per-head constants, the metric kind's G and k̃. ``kappa``, ``mu``: one float
    per head; ``metric``: the metric kind's G (H, E, E) float32, contiguous."""
    B, H, L, _ = q.shape
    out = _heads_last(q, L, v.shape[-1])
    clipped = ctypes.c_int64(0)
    buf, lse, terms = _buffers(q, k, affine, plan.native.abi)
    kappa, mu = _floats(kappa), _floats(mu)
    p = _problem(plan, q, k, v, kappa, mu, terms)
    p.out, p.lse, p.clipped = _view(out), lse, ctypes.addressof(clipped)
    keep = (buf, kappa, mu)
    if affine is not None:
        p.outer = int(affine.outer)
    if metric is not None:  # k̃ = G k, written here and read by the backward (as is G)
        metric = metric.float().contiguous()  # read as (H, E, E) rows of E
        ktilde = q.new_empty(H, B, k.shape[2], k.shape[3])  # head-major (metric.h)
        p.metric, p.ktilde = metric.data_ptr(), ktilde.data_ptr()
        keep = (*keep, metric, ktilde)
    plan.native.lib.geoattn_forward(ctypes.byref(p))
    plan.clipped = clipped.value
    plan.problem, plan.keep = p, keep
    return out


def _backward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, dout: Tensor, want_dkappa: bool = True,
              outer: bool | None = None):
    """One backward call, on the forward's struct (q, k, v are the forward's tensors, kept by autograd with its
    output; the struct points to them and to ``plan.keep``): (dq, dk, dv, dκ (zeros unless ``want_dkappa``)
    and dμ (one float per head each, accumulated in double), the gradients of the affine kind's terms as an
    :class:`AffineTerms`, of G (H, E, E) for the metric kind, None for the other kinds). ``outer``: the affine
    kind's score has the outer term (None: not the affine kind)."""
    dout = kernel_input(dout)  # e.g. stride 0 along L: the gradient of out.sum(dim=-2)
    B, H, L, _ = q.shape
    S = k.shape[2]
    dq = _heads_last(q, L, q.shape[-1])
    dk, dv = _heads_last(k, S, k.shape[-1]), _heads_last(v, S, v.shape[-1])
    dhead = (ctypes.c_double * (2 * H))()  # dκ, dμ (zeros)
    p = plan.problem
    p.nthreads = torch.get_num_threads()
    p.dout, p.dq, p.dk, p.dv = _view(dout), _view(dq), _view(dk), _view(dv)
    p.dkappa = ctypes.addressof(dhead)
    p.dmu = p.dkappa + H * ctypes.sizeof(ctypes.c_double)
    p.want_dkappa = int(want_dkappa)
    grads = None
    if outer is not None:
        sizes = (L, S, S, *((L, S) if outer else ()))  # a, b, β (, α, γ)
        flat = q.new_empty(B * H * sum(sizes))
        parts = [part.view(B, H, n) for part, n in zip(flat.split([B * H * n for n in sizes]), sizes)]
        grads = AffineTerms(*parts, *((None, None) if not outer else ()))
        p.dqfactor, p.dkfactor, p.dkbias = (t.data_ptr() for t in (grads.q_factor, grads.k_factor, grads.k_bias))
        p.outer = int(outer)
        if outer:
            p.dqouter, p.dkouter = grads.alpha.data_ptr(), grads.gamma.data_ptr()
    dmetric = None
    if plan.metric is not None:
        dmetric = q.new_empty(B, H, k.shape[-1], k.shape[-1])
        p.dmetric = dmetric.data_ptr()
    plan.native.lib.geoattn_backward(ctypes.byref(p))
    dkappa, dmu = dhead[:H], dhead[H:]
    if dmetric is not None:  # per batch element → per head
        grads = dmetric.sum(0)
    return dq, dk, dv, dkappa, dmu, grads


class NativeAttention(torch.autograd.Function):
    """``softmax(score(q, k) + mask) · v`` for the kinds with per-token terms computed in the kernel
    (stereographic, sphere, lorentz, cosine, l2, metric); see the module docstring. ``raw`` and ``log_t`` are
    the geometry's parameters behind κ and μ (``plan.head``, :class:`~geoattn.backends.native.spec.HeadConstants`),
    ``factor`` and ``diagonal`` the learned metric's behind G (``plan.metric``,
    :class:`~geoattn.backends.native.spec.MetricConstants`): their gradients come from the kernel's dκ, dμ, dG
    through the chain rules written there, with no autograd graph for the per-head constants."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, raw: Tensor | None, log_t: Tensor, factor: Tensor | None,
                diagonal: Tensor | None, plan: Plan) -> Tensor:
        kappa, mu = plan.head.values()
        metric = None if plan.metric is None else plan.metric.values()
        out = _forward(plan, q, k, v, kappa, mu, metric=metric)
        ctx.save_for_backward(q, k, v, out, *plan.masks())
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v = ctx.saved_tensors[:3]  # the output and the mask: the backward reads them through the struct
        need = ctx.needs_input_grad
        plan = ctx.plan
        if torch.is_grad_enabled():  # create_graph=True: the dense backend's gradients, which autograd records
            head, metric = plan.head, plan.metric
            parameters = (head.raw, head.log_t, *((None, None) if metric is None else
                                                  (metric.factor, metric.raw_diagonal)))
            return (*differentiable_backward(plan.reference, (q, k, v), dout, need[:7], parameters), None)
        dq, dk, dv, dkappa, dmu, dmetric = _backward(ctx.plan, q, k, v, dout, need[3])
        d_raw, d_logt = ctx.plan.head.grads(dkappa, dmu)
        d_factor, d_diagonal = (None, None) if dmetric is None else ctx.plan.metric.grads(dmetric)
        return (dq, dk, dv, d_raw if need[3] else None, d_logt if need[4] else None,
                d_factor if need[5] else None, d_diagonal if need[6] else None, None)


@dataclass
class AffineTerms:
    """The per-token terms of the affine score ``aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ`` (affine.h), float32:
    ``q_factor`` a (B, H, L), ``k_factor`` b and ``k_bias`` β (B, H, S), ``alpha`` (B, H, L) and ``gamma``
    (B, H, S) of the outer term, or None without it."""

    q_factor: Tensor
    k_factor: Tensor
    k_bias: Tensor
    alpha: Tensor | None = None
    gamma: Tensor | None = None

    @property
    def outer(self) -> bool:
        return self.alpha is not None


class AffineAttention(torch.autograd.Function):
    """``softmax(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ + mask) · v`` (a geometry's :class:`~geoattn.geometry.AffineForm`,
    through :func:`affine_terms`): the kernel runs at the head dim of q and k and returns the gradients of
    the per-token terms, which autograd carries on to whatever made them (norms, curvature, temperature).
    What it keeps for the backward is what SDPA keeps (q, k, v, the output, one lse per row) and the terms
    (O(L))."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: Plan, q_factor: Tensor, k_factor: Tensor,
                k_bias: Tensor, alpha: Tensor | None, gamma: Tensor | None) -> Tensor:
        affine = AffineTerms(q_factor, k_factor, k_bias, alpha, gamma)
        unused, one = [0.0] * q.shape[1], [1.0] * q.shape[1]  # κ (unread), μ = 1: terms in score units
        out = _forward(plan, q, k, v, unused, one, affine)
        ctx.save_for_backward(q, k, v, q_factor, k_factor, k_bias, alpha, gamma, out, *plan.masks())
        ctx.plan, ctx.outer = plan, affine.outer
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, *terms = ctx.saved_tensors[:8]
        if torch.is_grad_enabled():  # create_graph=True: the same gradients as torch operations autograd records
            need = ctx.needs_input_grad
            grads = differentiable_backward(lambda q, k, v, *t: _affine_output(ctx.plan, q, k, v, *t),
                                            (q, k, v, *terms), dout, need[:3] + need[4:])
            return (*grads[:3], None, *grads[3:])
        dq, dk, dv, _, _, g = _backward(ctx.plan, q, k, v, dout, False, ctx.outer)
        return dq, dk, dv, None, g.q_factor, g.k_factor, g.k_bias, g.alpha, g.gamma


def _affine_output(plan: Plan, q: Tensor, k: Tensor, v: Tensor, a: Tensor, b: Tensor, beta: Tensor,
                   alpha: Tensor | None, gamma: Tensor | None) -> Tensor:
    """``softmax(aᵢ bⱼ ⟨qᵢ, kⱼ⟩ + βⱼ + αᵢγⱼ + mask) · v`` (affine.h with μ = 1) as torch operations, L×S: what
    :class:`AffineAttention` differentiates under ``create_graph=True``."""
    s = a.unsqueeze(-1) * b.unsqueeze(-2) * (q @ k.transpose(-1, -2)) + beta.unsqueeze(-2)
    if alpha is not None:
        s = s + alpha.unsqueeze(-1) * gamma.unsqueeze(-2)
    if plan.bias is not None:
        s = s + plan.bias
    allowed = plan.allowed
    if plan.causal:
        causal = causal_allowed(q.shape[-2], k.shape[-2], q.device)
        allowed = causal if allowed is None else allowed & causal
    return masked_softmax(s, allowed) @ v


def kernel_input(t: Tensor) -> Tensor:
    """``t`` as the kernel reads it: float32 with a contiguous last dim and rows apart (:func:`rows_apart`; other
    strides pass through, so transposed views cost no copy), else a copy."""
    return readable_rows(t.float())


def affine_terms(form) -> tuple[Tensor, Tensor, AffineTerms]:
    """``(q, k, terms)`` of a geometry's :class:`~geoattn.geometry.AffineForm` for the kernel: float32, the
    vectors' last dim contiguous, absent factors as ones and an absent β as zeros (per-query terms dropped:
    they cancel in the softmax)."""
    q, k = kernel_input(form.q), kernel_input(form.k)
    B, H, L, _ = q.shape
    S = k.shape[2]

    def per_token(t, n, fill):
        return q.new_full((B, H, n), fill) if t is None else t.float().expand(B, H, n)

    alpha = gamma = None
    if form.outer is not None:
        alpha, gamma = per_token(form.outer[0], L, 0.0), per_token(form.outer[1], S, 0.0)
    terms = AffineTerms(per_token(form.q_factor, L, 1.0), per_token(form.k_factor, S, 1.0),
                        per_token(form.k_bias, S, 0.0), alpha, gamma)
    return q, k, terms
