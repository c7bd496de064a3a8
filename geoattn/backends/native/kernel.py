"""The native kernel's ctypes layer: one C++ call forward, one backward, on a struct of pointers.

:func:`forward` and :func:`backward` take the call's tensors and a :class:`Plan` (the kind, the mask, the per-head
constants) and fill ``struct Problem`` (kernel.cpp) from them in :func:`_problem`, the one place where tensors
become pointers. q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) are float32 with a contiguous last dim (other
strides are passed through, so transposed views cost no copy). The kernel computes the per-token terms itself
(norms, clipped tangent radii, radial factors, in double precision); what the backward needs besides q, k, v and
the output is one allocation of O(L) numbers (the norms, one log-sum-exp per row and the per-token terms,
:func:`_buffers`) and, for the metric kind, k̃ = G k: the backward rebuilds the struct from those tensors, so
both calls are functions of tensors alone (the operator of :mod:`.op` wraps them for autograd and compile).
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..base import readable_rows, rows_apart
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
    """The non-tensor arguments of one call, and its mask."""

    native: Native
    kind: str
    causal: bool
    clip: float
    allowed: Tensor | None = None   # bool (B|1, H|1, L|1, S|1), True = take part
    bias: Tensor | None = None      # float, same broadcasting
    head: HeadConstants | None = None  # κ and μ (the kinds with per-token terms in the kernel)
    metric: MetricConstants | None = None  # the metric kind's G and its chain rule


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


def _layout(B: int, H: int, L: int, S: int, abi: Constants) -> tuple[int, int, int, int]:
    """Offsets (in floats) in :func:`_buffers`' allocation: the lse, the q terms, the k terms, and its size
    (``abi``: the library's per-token term count and vector width)."""
    N, Sp = B * H, -(-S // abi.lanes) * abi.lanes
    # key-term rows padded with zeros to whole vectors: the kernel's row loops read up to one past S (Row)
    start = 2 * N * (L + S)  # floats taken by the norms
    q_at = start + N * L  # floats before the q terms (norms, lse), then before the k terms
    k_at = q_at + N * abi.terms * L
    return start, q_at, k_at, k_at + N * abi.terms * Sp


def _buffers(q: Tensor, k: Tensor, affine: AffineTerms | None, abi: Constants) -> Tensor:
    """The forward's small outputs in one zeroed float32 allocation, kept until the backward: the norms (B·H, L),
    (B·H, S) in double (first, so they are aligned), the lse (B·H, L) and the per-token term buffers (B·H, kTerms, L),
    (B·H, kTerms, S padded). The kernel fills them (forward) for its own kinds; the affine kind's terms are written
    here (affine.h). The kernel reaches them only through the struct (:func:`_addresses`)."""
    B, H, L, _ = q.shape
    S = k.shape[2]
    _, q_at, k_at, size = _layout(B, H, L, S, abi)
    buf = q.new_zeros(size)
    if affine is not None:
        T, Sp = abi.terms, -(-S // abi.lanes) * abi.lanes
        qt = buf.as_strided((B, H, T, L), (H * T * L, T * L, L, 1), q_at)
        kt = buf.as_strided((B, H, T, S), (H * T * Sp, T * Sp, Sp, 1), k_at)
        qt[:, :, 1].copy_(affine.q_factor)
        kt[:, :, 0].copy_(affine.k_bias)
        kt[:, :, 2].copy_(affine.k_factor)
        if affine.outer:
            qt[:, :, 0].copy_(affine.alpha)
            kt[:, :, 1].copy_(affine.gamma)
    return buf


def _addresses(buf: Tensor, q: Tensor, k: Tensor, abi: Constants) -> tuple[int, tuple[int, int, int, int]]:
    """The lse's address in :func:`_buffers`' allocation and the terms' (q terms, k terms, q norms, k norms)."""
    B, H, L, _ = q.shape
    start, q_at, k_at, _ = _layout(B, H, L, k.shape[2], abi)
    base, size = buf.data_ptr(), buf.element_size()
    return base + size * start, (base + size * q_at, base + size * k_at, base, base + 2 * size * B * H * L)


def _constants(plan: Plan, heads: int) -> tuple[ctypes.Array, ctypes.Array]:
    """κ and μ per head as the kernel reads them (float32): the geometry's (:class:`HeadConstants`, in double, so the
    backward's are the forward's bit for bit), or for the affine kind κ unread and μ = 1 (terms in score units)."""
    if plan.head is None:
        return _floats([0.0] * heads), _floats([1.0] * heads)
    kappa, mu = plan.head.values()
    return _floats(kappa), _floats(mu)


def forward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, affine: AffineTerms | None = None
            ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One forward call: ``(out (B, H, L, Ev), buf, k̃, clipped)``: the output, laid out as SDPA lays out its own
    ((B, L, H, Ev) in memory, :func:`_heads_last`); the allocation of :func:`_buffers`; the metric kind's k̃ = G k
    (H, B, S, E), head-major (metric.h), or an empty tensor; the count of vectors the clip shortened (int64, 0-d).
    ``affine``: the affine kind's terms."""
    B, H, L, _ = q.shape
    out = _heads_last(q, L, v.shape[-1])
    clipped = torch.zeros((), dtype=torch.int64)
    buf = _buffers(q, k, affine, plan.native.abi)
    lse, terms = _addresses(buf, q, k, plan.native.abi)
    kappa, mu = _constants(plan, H)
    p = _problem(plan, q, k, v, kappa, mu, terms)
    p.out, p.lse, p.clipped = _view(out), lse, clipped.data_ptr()
    if affine is not None:
        p.outer = int(affine.outer)
    ktilde = q.new_empty(0)
    if plan.metric is not None:  # k̃ = G k, written here and read by the backward (as is G)
        metric = plan.metric.values()
        ktilde = q.new_empty(H, B, k.shape[2], k.shape[3])
        p.metric, p.ktilde = metric.data_ptr(), ktilde.data_ptr()
    plan.native.lib.geoattn_forward(ctypes.byref(p))
    return out, buf, ktilde, clipped


def backward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, out: Tensor, buf: Tensor, ktilde: Tensor, dout: Tensor,
             want_dkappa: bool = True, outer: bool | None = None):
    """One backward call on the forward's tensors (q, k, v, its output, ``buf`` and ``ktilde`` of :func:`forward`),
    its struct rebuilt from them: (dq, dk, dv, dκ (zeros unless ``want_dkappa``) and dμ (one float per head each,
    accumulated in double), the gradients of the affine kind's terms as an :class:`AffineTerms`, of G (H, E, E)
    for the metric kind, None for the other kinds). ``outer``: the affine kind's score has the outer term (None:
    not the affine kind)."""
    dout = kernel_input(dout)  # e.g. stride 0 along L: the gradient of out.sum(dim=-2)
    B, H, L, _ = q.shape
    S = k.shape[2]
    dq = _heads_last(q, L, q.shape[-1])
    dk, dv = _heads_last(k, S, k.shape[-1]), _heads_last(v, S, v.shape[-1])
    dhead = (ctypes.c_double * (2 * H))()  # dκ, dμ (zeros)
    lse, terms = _addresses(buf, q, k, plan.native.abi)
    kappa, mu = _constants(plan, H)
    clipped = ctypes.c_int64(0)  # the forward's count; the backward writes none
    p = _problem(plan, q, k, v, kappa, mu, terms)
    p.out, p.lse, p.clipped = _view(out), lse, ctypes.addressof(clipped)
    p.dout, p.dq, p.dk, p.dv = _view(dout), _view(dq), _view(dk), _view(dv)
    p.dkappa = ctypes.addressof(dhead)
    p.dmu = p.dkappa + H * ctypes.sizeof(ctypes.c_double)
    p.want_dkappa = int(want_dkappa)
    grads = None
    if outer is not None:
        sizes = (L, S, S, *((L, S) if outer else ()))  # a, b, β (, α, γ)
        parts = [q.new_empty(B, H, n) for n in sizes]  # apart: an operator's outputs may not share memory
        grads = AffineTerms(*parts, *((None, None) if not outer else ()))
        p.dqfactor, p.dkfactor, p.dkbias = (t.data_ptr() for t in (grads.q_factor, grads.k_factor, grads.k_bias))
        p.outer = int(outer)
        if outer:
            p.dqouter, p.dkouter = grads.alpha.data_ptr(), grads.gamma.data_ptr()
    dmetric = None
    if plan.metric is not None:
        metric = plan.metric.values()
        p.metric, p.ktilde = metric.data_ptr(), ktilde.data_ptr()
        dmetric = q.new_empty(B, H, k.shape[-1], k.shape[-1])
        p.dmetric = dmetric.data_ptr()
    plan.native.lib.geoattn_backward(ctypes.byref(p))
    dkappa, dmu = dhead[:H], dhead[H:]
    if dmetric is not None:  # per batch element → per head
        grads = dmetric.sum(0)
    return dq, dk, dv, dkappa, dmu, grads


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
