"""Backends and how ``backend="auto"`` picks one.

* ``dense``: the reference (O(L·S) memory), returns weights, float64-capable.
* ``sdpa``: exact reduction to ``F.scaled_dot_product_attention`` for affine geometries.
* ``flex``: any geometry's pointwise score as a FlexAttention ``score_mod`` (fused, O(L) memory;
  no backward on CPU in torch 2.13).
* ``tiled``: query/key-block tiling with a recomputing backward (O(L) memory, any device, float64).

``auto`` (:data:`AUTO_ORDER` = sdpa, flex, tiled, dense) takes the first backend that supports the call
and does not decline it: affine geometries → ``sdpa``; otherwise small score matrices (at most
:data:`DENSE_MAX_SCORES` numbers, where compiling a fused kernel costs more than it saves) → ``dense``;
on GPU → ``flex``; on CPU ``flex`` for inference in float32 and ``tiled`` when gradients are needed
or in float64; ``return_weights`` or dropout → ``dense``.

``auto`` tries, in order, the backends in :data:`AUTO_ORDER` and takes the first that supports the
call. Override per call (``backend=...``), or globally with :func:`set_default_backend` /
:func:`default_backend` (a context manager).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..geometry import Geometry
from .base import DENSE_MAX_SCORES, Backend
from .dense import DenseBackend, dense_scores
from .masks import Mask, masked_softmax
from .flex import FlexBackend
from .sdpa import SDPABackend
from .tiled import TiledBackend, set_tiled_compile

_BACKENDS: dict[str, Backend] = {}
AUTO_ORDER: list[str] = ["sdpa", "dense"]
_DEFAULT = "auto"


def register_backend(backend: Backend, auto_rank: int | None = None) -> Backend:
    """Make ``backend`` available by name; with ``auto_rank`` also insert it into ``auto``'s order."""
    _BACKENDS[backend.name] = backend
    if auto_rank is not None and backend.name not in AUTO_ORDER:
        AUTO_ORDER.insert(auto_rank, backend.name)
    return backend


register_backend(SDPABackend())
register_backend(DenseBackend())
register_backend(FlexBackend(), auto_rank=1)
register_backend(TiledBackend(), auto_rank=2)


def available_backends() -> list[str]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend (``"dense"``, ``"sdpa"``, ...)."""
    return ["auto", *sorted(_BACKENDS)]


def set_default_backend(name: str) -> None:
    """Globally replace what ``backend="auto"`` means: a backend name, or ``"auto"`` to restore the automatic choice."""
    global _DEFAULT
    _check_name(name)
    _DEFAULT = name


@contextlib.contextmanager
def default_backend(name: str) -> Iterator[None]:
    """``with geoattn.default_backend("dense"): ...`` runs every ``backend="auto"`` call on that backend."""
    global _DEFAULT
    _check_name(name)
    previous, _DEFAULT = _DEFAULT, name
    try:
        yield
    finally:
        _DEFAULT = previous


def _check_name(name: str) -> None:
    if name not in available_backends():
        raise ValueError(f"unknown backend {name!r}; available backends: {', '.join(available_backends())}")


def select_backend(name: str, geometry: Geometry, q, need_weights: bool, dropout_p: float,
                   needs_grad: bool = False, num_scores: int | None = None) -> Backend:
    """The backend for a call: the one named, or the first in ``AUTO_ORDER`` that supports it.

    ``needs_grad``: the call will be differentiated; ``num_scores``: B·H·L·S (defaults to B·H·L²).
    """
    _check_name(name)
    if name == "auto":
        name = _DEFAULT
    if num_scores is None:
        num_scores = q.shape[0] * q.shape[1] * q.shape[-2] ** 2
    if name != "auto":
        backend = _BACKENDS[name]
        reason = backend.unsupported(geometry, q, need_weights, dropout_p)
        if reason is None and needs_grad:
            reason = backend.unsupported_grad(q)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this call: {reason}")
        return backend
    reasons = []
    for candidate in AUTO_ORDER:
        backend = _BACKENDS[candidate]
        reason = backend.unsupported(geometry, q, need_weights, dropout_p)
        if reason is None and needs_grad:
            reason = backend.unsupported_grad(q)
        if reason is None:
            reason = backend.declines(geometry, q, num_scores, needs_grad)
        if reason is None:
            return backend
        reasons.append(f"{candidate}: {reason}")
    raise ValueError("no backend can run this call: " + "; ".join(reasons))


__all__ = [
    "AUTO_ORDER", "DENSE_MAX_SCORES", "Backend", "Mask", "available_backends", "default_backend", "dense_scores",
    "masked_softmax", "register_backend", "select_backend", "set_default_backend", "set_tiled_compile",
]
