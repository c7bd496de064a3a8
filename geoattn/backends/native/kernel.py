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

KINDS = {"stereographic": 0, "sphere": 1}
TERMS = 5  # per-token terms of kernel.cpp (kTerms)
ETA = 1.0 / 32  # gaps below this (nearly parallel pairs) are recomputed from the vectors in double precision
TILE_ELEMENTS = 1 << 17  # bq·S of a work item's score tile (512 KiB in float32: it stays in L2)

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class _View(ctypes.Structure):
    _fields_ = [("data", _P), ("sb", _I64), ("sh", _I64), ("sr", _I64)]


class _Problem(ctypes.Structure):  # the layout of ``struct Problem`` in kernel.cpp
    _fields_ = [
        ("B", _I64), ("H", _I64), ("L", _I64), ("S", _I64), ("D", _I64), ("Ev", _I64), ("bq", _I64),
        ("kind", _I32), ("causal", _I32), ("nthreads", _I32), ("pad_", _I32),
        ("q", _View), ("k", _View), ("v", _View), ("out", _View), ("lse", _P), ("kappa", _P), ("mu", _P),
        ("inv_sqrt_e", _F32), ("clip", _F32), ("eta", _F32), ("pad2_", _F32),
        ("allowed", _P), ("am_b", _I64), ("am_h", _I64), ("am_i", _I64), ("am_j", _I64),
        ("bias", _P), ("bm_b", _I64), ("bm_h", _I64), ("bm_i", _I64), ("bm_j", _I64),
        ("clipped", _P), ("qterms", _P), ("kterms", _P), ("qnorm", _P), ("knorm", _P),
        ("dout", _View), ("dq", _View), ("dk", _View), ("dv", _View), ("dkappa", _P), ("dmu", _P), ("sgemm", _P),
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
    p.bq = max(16, min(256, TILE_ELEMENTS // max(S, 1)))
    p.kind, p.causal, p.nthreads = KINDS[plan.kind], int(plan.causal), torch.get_num_threads()
    p.q, p.k, p.v = _view(q), _view(k), _view(v)
    p.kappa, p.mu = kappa.data_ptr(), mu.data_ptr()
    p.inv_sqrt_e, p.clip, p.eta, p.sgemm = 1 / math.sqrt(D), plan.clip, ETA, plan.native.sgemm
    p.qterms, p.kterms, p.qnorm, p.knorm = (t.data_ptr() for t in terms)
    for part, prefix in ((plan.allowed, "am"), (plan.bias, "bm")):
        if part is not None:
            full = part.expand(B, H, L, S)  # a view: broadcast dims get stride 0
            setattr(p, "allowed" if prefix == "am" else "bias", full.data_ptr())
            for name, stride in zip("bhij", full.stride()):
                setattr(p, f"{prefix}_{name}", stride)
    return p


class NativeAttention(torch.autograd.Function):
    """``softmax(score(q, k) + mask) · v`` for the native kinds; see the module docstring."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, kappa: Tensor, mu: Tensor, plan: Plan) -> Tensor:
        B, H, L, _ = q.shape
        S = k.shape[2]
        out = q.new_empty(B, H, L, v.shape[-1])
        lse = q.new_empty(B * H, L)
        clipped = torch.zeros(1, dtype=torch.int64)
        # per-token terms (5 per token) and norms: computed by the forward, reused by the backward
        terms = (q.new_empty(B * H, TERMS, L), q.new_empty(B * H, TERMS, S),
                 q.new_empty(B * H, L, dtype=torch.float64), q.new_empty(B * H, S, dtype=torch.float64))
        p = _problem(plan, q, k, v, kappa, mu, terms)
        p.out, p.lse, p.clipped = _view(out), lse.data_ptr(), clipped.data_ptr()
        plan.native.lib.geoattn_forward(ctypes.byref(p))
        plan.clipped = int(clipped)
        ctx.save_for_backward(q, k, v, kappa, mu, out, lse, *terms)
        ctx.plan = plan
        return out

    @staticmethod
    def backward(ctx, dout: Tensor):
        q, k, v, kappa, mu, out, lse, *terms = ctx.saved_tensors
        plan: Plan = ctx.plan
        dout = dout if dout.stride(-1) == 1 else dout.contiguous()
        dq, dk, dv = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        dkappa = torch.zeros(kappa.shape, dtype=torch.float64)
        dmu = torch.zeros(mu.shape, dtype=torch.float64)
        p = _problem(plan, q, k, v, kappa, mu, terms)
        p.out, p.lse, p.dout = _view(out), lse.data_ptr(), _view(dout)
        p.dq, p.dk, p.dv, p.dkappa, p.dmu = _view(dq), _view(dk), _view(dv), dkappa.data_ptr(), dmu.data_ptr()
        plan.native.lib.geoattn_backward(ctypes.byref(p))
        return dq, dk, dv, dkappa.to(kappa.dtype), dmu.to(mu.dtype), None
