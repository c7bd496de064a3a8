"""Backends and how ``backend="auto"`` picks one.

* ``dense``: the reference (O(L·S) memory), returns weights, float64-capable.
* ``sdpa``: exact reduction to ``F.scaled_dot_product_attention`` for affine geometries.

``auto`` tries, in order, the backends in :data:`AUTO_ORDER` and takes the first that supports the
call. Override per call (``backend=...``), or globally with :func:`set_default_backend` /
:func:`default_backend` (a context manager).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..geometry import Geometry
from .base import Backend
from .dense import DenseBackend, dense_scores
from .masks import Mask, masked_softmax
from .sdpa import SDPABackend

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


def select_backend(name: str, geometry: Geometry, q, need_weights: bool, dropout_p: float) -> Backend:
    """The backend for a call: the one named, or the first in ``AUTO_ORDER`` that supports it."""
    _check_name(name)
    if name == "auto":
        name = _DEFAULT
    if name != "auto":
        backend = _BACKENDS[name]
        reason = backend.unsupported(geometry, q, need_weights, dropout_p)
        if reason is not None:
            raise ValueError(f"backend {name!r} cannot run this call: {reason}")
        return backend
    reasons = []
    for candidate in AUTO_ORDER:
        reason = _BACKENDS[candidate].unsupported(geometry, q, need_weights, dropout_p)
        if reason is None:
            return _BACKENDS[candidate]
        reasons.append(f"{candidate}: {reason}")
    raise ValueError("no backend can run this call: " + "; ".join(reasons))


__all__ = [
    "AUTO_ORDER", "Backend", "Mask", "available_backends", "default_backend", "dense_scores",
    "masked_softmax", "register_backend", "select_backend", "set_default_backend",
]
