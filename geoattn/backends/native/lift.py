"""The fused Lorentz lift of the SDPA reduction (``lift.cpp``): ``x (B, H, N, E) → w·[s·x₀, x_s] (B, H, N, E + 1)``.

The same maths as :meth:`geoattn.Lorentz.affine_lift` (its torch form, which stays the reference and the
path for float64, accelerators and ``torch.func``), in one pass forward and one backward: for the small
shapes of a training step the twenty-odd torch ops of the lift cost more than the attention itself.
"""
from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from .build import Native

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class _Lift(ctypes.Structure):  # the layout of ``struct Lift`` in lift.cpp
    _fields_ = [("B", _I64), ("H", _I64), ("N", _I64), ("E", _I64), ("sb", _I64), ("sh", _I64), ("sn", _I64),
                ("x", _P), ("out", _P), ("kappa", _P), ("coef", _P), ("sign", _F32), ("clip", _F32),
                ("nthreads", _I32), ("pad_", _I32), ("clipped", _P), ("norms", _P),
                ("dout", _P), ("dx", _P), ("dkappa", _P), ("dcoef", _P)]


def _lift(native: Native, x: Tensor, kappa: Tensor, coef: Tensor, sign: float, clip: float) -> _Lift:
    B, H, N, E = x.shape
    p = _Lift(B, H, N, E, *x.stride()[:3])
    p.x, p.kappa, p.coef, p.sign, p.clip = x.data_ptr(), kappa.data_ptr(), coef.data_ptr(), sign, clip
    p.nthreads = torch.get_num_threads()
    return p


class LorentzLift(torch.autograd.Function):
    """``apply(q, k, kappa, coef, clip, native, counter) → (q̃, k̃)``: q, k float32 (last dim contiguous), kappa
    and coef (H,) float32; q̃ = coef·[-x₀, x_s], k̃ = [y₀, y_s]. ``counter`` (a list) receives the number of
    clipped vectors. One C++ call per direction for both sides (the Python overhead of a call is what
    a small training step notices)."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, kappa: Tensor, coef: Tensor, clip: float, native: Native,
                counter: list) -> tuple[Tensor, Tensor]:
        ones = torch.ones_like(coef)
        outs, saved = [], []
        for x, w, sign in ((q, coef, -1.0), (k, ones, 1.0)):
            B, H, N, E = x.shape
            out = x.new_empty(B, H, N, E + 1)
            norms = torch.empty(B * H * N, dtype=torch.float64)
            clipped = torch.zeros(1, dtype=torch.int64)
            p = _lift(native, x, kappa, w, sign, clip)
            p.out, p.clipped, p.norms = out.data_ptr(), clipped.data_ptr(), norms.data_ptr()
            native.lib.geoattn_lorentz_lift(ctypes.byref(p))
            counter.append(int(clipped))
            outs.append(out)
            saved.append(norms)
        ctx.save_for_backward(q, k, kappa, coef, ones, *saved)
        ctx.clip, ctx.native = clip, native
        return tuple(outs)

    @staticmethod
    def backward(ctx, dq_lift: Tensor, dk_lift: Tensor):
        q, k, kappa, coef, ones, q_norms, k_norms = ctx.saved_tensors
        dkappa = torch.zeros(kappa.shape, dtype=torch.float64)
        dcoef = torch.zeros(coef.shape, dtype=torch.float64)
        unused = torch.zeros(coef.shape, dtype=torch.float64)
        grads = []
        for x, w, sign, norms, dout, dw in ((q, coef, -1.0, q_norms, dq_lift, dcoef),
                                            (k, ones, 1.0, k_norms, dk_lift, unused)):
            dout = dout.contiguous()
            dx = torch.empty(x.shape, dtype=x.dtype)
            p = _lift(ctx.native, x, kappa, w, sign, ctx.clip)
            p.norms, p.dout, p.dx, p.dkappa, p.dcoef = (norms.data_ptr(), dout.data_ptr(), dx.data_ptr(),
                                                        dkappa.data_ptr(), dw.data_ptr())
            ctx.native.lib.geoattn_lorentz_lift_backward(ctypes.byref(p))
            grads.append(dx)
        return grads[0], grads[1], dkappa.to(kappa.dtype), dcoef.to(coef.dtype), None, None, None


def lorentz_lift(native: Native, q: Tensor, k: Tensor, kappa: Tensor, coef: Tensor, clip: float,
                 counter: list) -> tuple[Tensor, Tensor]:
    """The fused lift of queries and keys (see :class:`LorentzLift`)."""
    q, k = (x if x.stride(-1) == 1 else x.contiguous() for x in (q, k))
    return LorentzLift.apply(q, k, kappa.float().contiguous(), coef.float().contiguous(), clip, native, counter)
