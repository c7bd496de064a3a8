"""Backends, and which one runs a call (:mod:`geoattn.backends.policy`).

* ``dense``: the reference (O(L·S) memory), returns weights, float64-capable.
* ``sdpa``: exact reduction to ``F.scaled_dot_product_attention`` for affine geometries.
* ``native``: the fused C++ CPU kernel, forward and backward (O(L) memory, float32; :mod:`.native`).
* ``flex``: any geometry's pointwise score as a FlexAttention ``score_mod`` (fused, O(L) memory;
  no backward on CPU in torch 2.13).
* ``tiled``: query/key-block tiling with a recomputing backward (O(L) memory, any device, float64).

``auto`` takes the first row of one decision table, :data:`geoattn.backends.policy.RULES`, whose condition
holds for the call and whose backend accepts it (the last row, ``dense``, runs every call); each row gives
its reason. :func:`geoattn.explain_backend` says what it chose and why.
Override per call (``backend=...``), or globally with :func:`set_default_backend` / :func:`default_backend`
(a context manager).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

from ..masks import Mask, masked_softmax
from .base import Backend
from .dense import DenseBackend, dense_scores
from .flex import FlexBackend
from .native import NativeBackend
from .policy import DENSE_MAX_SCORES, RULES, Choice, Rule, available_backends, choose, register_backend, set_default
from .sdpa import SDPABackend
from .tiled import TiledBackend, set_tiled_compile

for _backend in (SDPABackend(), DenseBackend(), FlexBackend(), TiledBackend(), NativeBackend()):
    register_backend(_backend)


def set_default_backend(name: str) -> None:
    """Globally replace what ``backend="auto"`` means: a backend name, or ``"auto"`` to restore the automatic choice."""
    set_default(name)


@contextlib.contextmanager
def default_backend(name: str) -> Iterator[None]:
    """``with geoattn.default_backend("dense"): ...`` runs every ``backend="auto"`` call on that backend."""
    previous = set_default(name)
    try:
        yield
    finally:
        set_default(previous)


__all__ = [
    "DENSE_MAX_SCORES", "RULES", "Backend", "Choice", "Mask", "Rule", "available_backends", "choose",
    "default_backend", "dense_scores", "masked_softmax", "register_backend", "set_default_backend",
    "set_tiled_compile",
]
