"""The native kernel's autograd function: one call forward, one call backward, everything else in C++.

``NativeAttention.apply(q, k, v, kappa, mu, plan)``: q (B, H, L, E), k (B, H, S, E), v (B, H, S, Ev) in
float32 with a contiguous last dim (other strides are passed through, so transposed views cost no
copy), ``kappa`` and ``mu`` (H,) per-head constants. The kernel computes the per-token terms itself
(norms, clipped tangent radii, radial factors, in double precision), so autograd sees one node whose
backward returns dq, dk, dv, dκ and dμ; nothing but the output and one log-sum-exp per row is saved.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .build import Native

KINDS = {"stereographic": 0, "sphere": 1, "affine": 2}
TERMS = 5  # per-token terms of kernel.cpp (kTerms)
ETA = 1.0 / 32  # gaps below this (nearly parallel pairs) are recomputed from the vectors in double precision
TILE_ELEMENTS = 1 << 17  # bq·chunk of a work item's score tile (512 KiB in float32: it stays in L2)
CHUNK = 512  # keys per tile (FlashAttention's key blocks; PyTorch's CPU flash kernel uses 256 × 512 tiles)

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class _View(ctypes.Structure):
    _fields_ = [("data", _P), ("sb", _I64), ("sh", _I64), ("sr", _I64)]


class _Problem(ctypes.Structure):  # the layout of ``struct Problem`` in kernel.cpp
    _fields_ = [
        ("B", _I64), ("H", _I64), ("L", _I64), ("S", _I64), ("D", _I64), ("Ev", _I64), ("bq", _I64),
        ("kind", _I32), ("causal", _I32), ("nthreads", _I32), ("chunk", _I32),
        ("q", _View), ("k", _View), ("v", _View), ("out", _View), ("lse", _P), ("kappa", _P), ("mu", _P),
        ("inv_sqrt_e", _F32), ("clip", _F32), ("eta", _F32), ("want_dkappa", _I32),
        ("allowed", _P), ("am_b", _I64), ("am_h", _I64), ("am_i", _I64), ("am_j", _I64),
        ("bias", _P), ("bm_b", _I64), ("bm_h", _I64), ("bm_i", _I64), ("bm_j", _I64),
        ("clipped", _P), ("qterms", _P), ("kterms", _P), ("qnorm", _P), ("knorm", _P),
        ("dout", _View), ("dq", _View), ("dk", _View), ("dv", _View), ("dkappa", _P), ("dmu", _P), ("dkbias", _P),
        ("dqouter", _P), ("dkouter", _P), ("outer", _I32), ("pad3_", _I32), ("sgemm", _P),
    ]


def _view(t: Tensor) -> _View:
    return _View(t.data_ptr(), t.stride(0), t.stride(1), t.stride(2))


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


def _problem(plan: Plan, q: Tensor, k: Tensor, v: Tensor, kappa: Tensor, mu: Tensor, terms) -> _Problem:
    B, H, L, D = q.shape
    S = k.shape[2]
    p = _Problem()
    p.B, p.H, p.L, p.S, p.D, p.Ev = B, H, L, S, D, v.shape[-1]
    chunk = max(1, min(S, CHUNK))
    p.bq, p.chunk = max(16, min(256, TILE_ELEMENTS // chunk)), chunk
    p.kind, p.causal, p.nthreads = KINDS[plan.kind], int(plan.causal), torch.get_num_threads()
    p.q, p.k, p.v = _view(q), _view(k), _view(v)
    p.kappa, p.mu = kappa.data_ptr(), mu.data_ptr()
    p.inv_sqrt_e, p.clip = 1 / math.sqrt(D), plan.clip
    p.eta, p.sgemm = ETA, plan.native.sgemm
    p.qterms, p.kterms, p.qnorm, p.knorm = (t.data_ptr() for t in terms)
    for part, prefix in ((plan.allowed, "am"), (plan.bias, "bm")):
        if part is not None:
            full = part.expand(B, H, L, S)  # a view: broadcast dims get stride 0
            setattr(p, "allowed" if prefix == "am" else "bias", full.data_ptr())
            for name, stride in zip("bhij", full.stride()):
                setattr(p, f"{prefix}_{name}", stride)
    return p


def _terms(q: Tensor, k: Tensor, affine) -> tuple[Tensor, ...]:
    """The per-token term buffers: (B·H, 5, L), (B·H, 5, S) float and the norms (B·H, L), (B·H, S) in double.
    The kernel fills them (forward) for its own kinds; for the affine kind ``affine = (β, α, γ)`` are written
    here (β key term 0, γ key term 1, α query term 0; α, γ None without the outer term)."""
    B, H, L, _ = q.shape
    S = k.shape[2]
    terms = (q.new_empty(B * H, TERMS, L), q.new_empty(B * H, TERMS, S),
             q.new_zeros(B * H, L, dtype=torch.float64), q.new_zeros(B * H, S, dtype=torch.float64))
    if affine is not None:
        beta, alpha, gamma = affine
        terms[1][:, 0].copy_(beta.reshape(B * H, S))
        if alpha is not None:
            terms[0][:, 0].copy_(alpha.reshape(B * H, L))
            terms[1][:, 1].copy_(gamma.reshape(B * H, S))
    return terms


def _forward(plan: Plan, q: Tensor, k: Tensor, v: Tensor, kappa: Tensor, mu: Tensor, affine=None):
    """One forward call: (out (B, H, L, Ev), lse (B·H, L), per-token terms kept for the backward)."""
    B, H, L, _ = q.shape
    out = q.new_empty(B, H, L, v.shape[-1])
    lse = q.new_empty(B * H, L)
    clipped = torch.zeros(1, dtype=torch.int64)
    terms = _terms(q, k, affine)
    p = _problem(plan, q, k, v, kappa, mu, terms)
    p.out, p.lse, p.clipped = _view(out), lse.data_ptr(), clipped.data_ptr()
    p.outer = int(affine is not None and affine[1] is not None)
    plan.native.lib.geoattn_forward(ctypes.byref(p))
    plan.clipped = int(clipped)
    return out, lse, terms


def _backward(plan: Plan, q, k, v, kappa, mu, out, lse, terms, dout: Tensor, want_dkappa: bool = True,
              affine=None):
    """One backward call: (dq, dk, dv, dκ (zeros unless ``want_dkappa``), dμ, (dβ, dα, dγ) for the affine kind)."""
    dout = dout if dout.stride(-1) == 1 else dout.contiguous()
    dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
    dkappa = torch.zeros(kappa.shape, dtype=torch.float64)
    dmu = torch.zeros(mu.shape, dtype=torch.float64)
    p = _problem(plan, q, k, v, kappa, mu, terms)
    p.out, p.lse, p.dout = _view(out), lse.data_ptr(), _view(dout)
    p.dq, p.dk, p.dv, p.dkappa, p.dmu = _view(dq), _view(dk), _view(dv), dkappa.data_ptr(), dmu.data_ptr()
    p.want_dkappa = int(want_dkappa)
    d_affine = None
    if affine is not None:
        B, H, L, _ = q.shape
        S = k.shape[2]
        outer = affine[1] is not None
        d_affine = (q.new_empty(B, H, S), q.new_empty(B, H, L) if outer else None,
                    q.new_empty(B, H, S) if outer else None)
        p.dkbias, p.outer = d_affine[0].data_ptr(), int(outer)
        if outer:
            p.dqouter, p.dkouter = d_affine[1].data_ptr(), d_affine[2].data_ptr()
    plan.native.lib.geoattn_backward(ctypes.byref(p))
    return dq, dk, dv, dkappa.to(kappa.dtype), dmu.to(mu.dtype), d_affine


class NativeAttention(torch.autograd.Function):
    """``softmax(score(q, k) + mask) · v`` for the kinds with per-token terms computed in the kernel
    (stereographic, sphere); see the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, kappa: Tensor, mu: Tensor, plan: Plan) -> Tensor:
        out, lse, terms = _forward(plan, q, k, v, kappa, mu)
        ctx.save_for_backward(q, k, v, kappa, mu, out, lse, *terms)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, kappa, mu, out, lse, *terms = ctx.saved_tensors
        want_dkappa = ctx.needs_input_grad[3]
        dq, dk, dv, dkappa, dmu, _ = _backward(ctx.plan, q, k, v, kappa, mu, out, lse, terms, dout, want_dkappa)
        return dq, dk, dv, dkappa if want_dkappa else None, dmu, None


class AffineAttention(torch.autograd.Function):
    """``softmax(μ(⟨q̃, k̃⟩ + β + α γᵀ) + mask) · v`` with ``(q̃, k̃, (β, α, γ), μ) = lift(q, k)`` (the
    geometry's affine form, :func:`affine_terms`): the kernel runs at the head dim of q̃ (SDPA would need a
    column more for β and one for the outer term). The lift is recomputed in the backward instead of kept,
    so only q, k, v, the output and one lse per row are saved (what SDPA saves); ``params`` are the tensors
    the lift differentiates into."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, plan: Plan, lift, *params: Tensor) -> Tensor:
        with torch.no_grad():
            qt, kt, affine, mu = lift(q, k)
        out, lse, _ = _forward(plan, qt, kt, v, torch.zeros_like(mu), mu, affine)
        ctx.save_for_backward(q, k, v, out, lse, *params)
        ctx.plan, ctx.lift = plan, lift
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, out, lse, *params = ctx.saved_tensors
        with torch.enable_grad():
            q_, k_ = q.detach().requires_grad_(), k.detach().requires_grad_()
            qt, kt, affine, mu = ctx.lift(q_, k_)
        detached = tuple(None if t is None else t.detach() for t in affine)
        terms = _terms(qt, kt, detached)
        dqt, dkt, dv, _, _, d_affine = _backward(ctx.plan, qt.detach(), kt.detach(), v, torch.zeros_like(mu), mu,
                                                 out, lse, terms, dout, False, detached)
        pairs = [(t, g) for t, g in ((qt, dqt), (kt, dkt), *zip(affine, d_affine))
                 if t is not None and t.requires_grad]
        outputs, grad_outputs = zip(*pairs)
        grads = torch.autograd.grad(outputs, (q_, k_, *params), grad_outputs, allow_unused=True)
        return (grads[0], grads[1], dv, None, None, *grads[2:])


def affine_terms(lifted) -> tuple[Tensor, Tensor, tuple, Tensor]:
    """``(q̃, k̃, (β, α, γ), μ)`` of an affine :class:`~geoattn.geometry.Lifted`, whose score is
    ``scale·⟨q̃, k̃⟩ + αᵢγⱼ + Σ k_terms`` up to per-query constants (which cancel in the softmax): float32,
    last dim contiguous, ``μ = scale`` per head and β, α, γ divided through by it (α, γ None without
    ``lifted.outer``)."""
    qt, kt = (t.float() if t.stride(-1) == 1 else t.float().contiguous() for t in (lifted.q, lifted.k))
    B, H, S, _ = kt.shape
    L = qt.shape[2]
    s = float(lifted.scale)
    beta = (sum(lifted.k_terms) if lifted.k_terms else kt.new_zeros(B, H, S)).float().expand(B, H, S) / s
    alpha = gamma = None
    if lifted.outer is not None:
        alpha = lifted.outer[0].float().expand(B, H, L) / s
        gamma = lifted.outer[1].float().expand(B, H, S)
    return qt, kt, (beta, alpha, gamma), kt.new_full((H,), s)
