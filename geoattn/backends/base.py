"""The backend seam: each backend runs one prepared :class:`~geoattn.call.AttentionCall`, or says why it cannot."""
from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ..call import AttentionCall


class Unavailable(str):
    """A reason from :meth:`Backend.unsupported` that is about this machine, not about the call (the native
    kernel failed to build, ...): ``auto`` falls back to the next backend, :func:`geoattn.explain_backend`
    says why, and the first such call warns."""


class Backend:
    """Subclasses set ``name`` and implement :meth:`run`, and :meth:`unsupported` if they cannot run every call."""

    name: ClassVar[str]

    def unsupported(self, call: AttentionCall) -> str | None:
        """None if this backend can run ``call``, else the reason (shown to the user, with the fix; an
        :class:`Unavailable` if it is this machine that lacks what the backend needs)."""
        return None

    def run(self, call: AttentionCall) -> tuple[Tensor, Tensor | None]:
        """Output (B, H, L, Ev') before ``geometry.post_values``, and the weights (B, H, L, S) or None.

        Backends lift queries and keys themselves (``call.geometry.lift(call.q, call.k, call.scale)``)
        and aggregate ``call.values``."""
        raise NotImplementedError


def rows_apart(t: Tensor) -> bool:
    """Whether BLAS can read the rows of ``t`` (…, rows, cols) in place: a contiguous last dim and a row stride of
    at least the row length (what BLAS requires of a leading dimension: MKL's sgemm rejects ``lda < cols`` and
    leaves its output untouched, and PyTorch's CPU flash attention reads overlapping query rows wrongly). Other
    strides (batch, head; 0 included) are free."""
    cols = t.shape[-1]
    return (cols <= 1 or t.stride(-1) == 1) and t.stride(-2) >= max(1, cols)


def readable_rows(t: Tensor) -> Tensor:
    """``t`` if :func:`rows_apart`, else a contiguous copy: a tensor expanded along its rows (stride 0), ``unfold``
    (overlapping rows), a gradient with stride 0. ``clone``, not ``contiguous``: a tensor with one row counts as
    contiguous whatever its row stride."""
    return t if rows_apart(t) else t.clone(memory_format=torch.contiguous_format)


def differentiable_backward(forward, inputs: tuple, dout: Tensor, needs: tuple[bool, ...],
                            parameters: tuple = ()) -> tuple:
    """The gradients of ``forward(*inputs)`` against ``dout`` for the ``inputs``, then the ``parameters``, that
    ``needs`` marks (None for the others), recorded by autograd: what a fused backend's backward returns when the
    backward itself is being differentiated (``create_graph=True``: gradient penalties, double backward).
    ``forward`` is the fused output as plain torch operations, so the gradients are those of the dense backend,
    at its O(L·S) memory (as for SDPA's math backend, the one SDPA backend with a double backward);
    ``parameters``: leaves that ``forward`` reads by itself (a geometry's own parameters)."""
    n = len(inputs)
    with torch.enable_grad():
        # each input through a view of its own: the gradient of each input alone, where inputs are one tensor
        # (self-attention's q = k = v) or one is computed from another (terms from a per-head constant)
        inputs = tuple(t.view_as(t) if need else t for t, need in zip(inputs, needs))
        wrt = [t for t, need in zip((*inputs, *parameters), needs) if need]
        out = forward(*inputs)
        grads = iter(torch.autograd.grad(out, wrt, dout, create_graph=True, allow_unused=True))
    return tuple(next(grads) if need else None for need in needs[:n + len(parameters)])


def fused_unsupported(name: str, call: AttentionCall) -> str | None:
    """What a fused backend (no L×S matrix) cannot do: return weights, apply attention dropout, or run under
    a torch.func transform."""
    if call.under_transform:
        what = "torch.func.vmap is" if call.under_vmap else "torch.func transforms (grad, vjp, jacrev, ...) are"
        return f"{what} not supported by the {name} backend; use backend='dense' (or 'auto')"
    if call.return_weights:
        return f"the {name} backend does not return attention weights; use backend='dense' (or 'auto')"
    if call.dropout_p > 0:
        return f"the {name} backend has no attention dropout; use backend='dense' (or set dropout_p=0)"
    return None


def gram_terms(lifted) -> tuple[tuple[Tensor, ...], tuple[Tensor, ...]]:
    """The per-token terms of :meth:`Geometry.score_from_gram`: the lift's, plus ``‖q̃‖²`` and ``‖k̃‖²`` for a
    chord lift (each (B, H, L) and (B, H, S))."""
    if not lifted.chord:
        return lifted.q_terms, lifted.k_terms
    return (*lifted.q_terms, (lifted.q * lifted.q).sum(-1)), (*lifted.k_terms, (lifted.k * lifted.k).sum(-1))


def broadcast_heads(head: tuple[Tensor, ...], dims: int) -> tuple[Tensor, ...]:
    """Per-head ``(H,)`` constants reshaped to ``(H, 1, …)`` for broadcasting against (B, H, …) of ``dims`` dims."""
    return tuple(h.view(-1, *([1] * (dims - 2))) for h in head)
