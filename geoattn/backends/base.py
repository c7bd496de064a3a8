"""The backend seam: each backend runs ``softmax(score) · V`` for a geometry, or says why it cannot."""
from __future__ import annotations

from typing import ClassVar

from torch import Tensor

from ..geometry import Geometry
from .masks import Mask


DENSE_MAX_SCORES = 1 << 22  # B·H·L·S up to which ``auto`` prefers the dense path over compiling a fused kernel


class Backend:
    """Subclasses set ``name`` and implement :meth:`unsupported` and :meth:`run`."""

    name: ClassVar[str]

    def unsupported(self, geometry: Geometry, q: Tensor, need_weights: bool, dropout_p: float) -> str | None:
        """None if this backend can run the call, else the reason (shown to the user)."""
        return None

    def fused_unsupported(self, need_weights: bool, dropout_p: float) -> str | None:
        """What a fused backend (no L×S matrix) cannot do: return weights, or apply attention dropout."""
        if need_weights:
            return f"the {self.name} backend does not return attention weights; use backend='dense' (or 'auto')"
        if dropout_p > 0:
            return f"the {self.name} backend has no attention dropout; use backend='dense' (or set dropout_p=0)"
        return None

    def unsupported_grad(self, q: Tensor) -> str | None:
        """None if this backend can differentiate the call (device of ``q``), else the reason."""
        return None

    def declines(self, geometry: Geometry, q: Tensor, num_scores: int, needs_grad: bool) -> str | None:
        """For ``auto`` only: why a backend that *can* run the call is not the best choice (None = take it)."""
        return None

    def run(self, geometry: Geometry, q: Tensor, k: Tensor, v: Tensor, mask: Mask, dropout_p: float,
            scale: float | None, need_weights: bool) -> tuple[Tensor, Tensor | None]:
        """``q`` (B, H, L, E), ``k`` (B, H, S, E), ``v`` (B, H, S, Ev) → output (B, H, L, Ev) and weights or None."""
        raise NotImplementedError


def broadcast_heads(head: tuple[Tensor, ...], dims: int) -> tuple[Tensor, ...]:
    """Per-head ``(H,)`` constants reshaped to ``(H, 1, …)`` for broadcasting against (B, H, …) of ``dims`` dims."""
    return tuple(h.view(-1, *([1] * (dims - 2))) for h in head)
