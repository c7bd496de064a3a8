"""The one place where benchmark tasks compute attention *scores* (not outputs) through a geometry.

Tasks whose output is an attention distribution (the WordNet pointer, the reconstruction task) call
:func:`scores`, i.e. :func:`geoattn.scores` with the default scale of :func:`geoattn.attention`
(``1/√E`` for ``euclidean``, 1 for every other geometry, whose temperature sets the sharpness), and
:func:`pair_scores` for index pairs of one embedding table (the reconstruction task's sampled negatives).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

import geoattn


def make(name: str, head_dim: int, num_heads: int = 1, **params: Any) -> geoattn.Geometry:
    """``geoattn.make_geometry`` for one attention head group of ``head_dim`` features (used by ``metric``)."""
    return geoattn.make_geometry(name, num_heads=num_heads, head_dim=head_dim, **params)


def scores(geometry: geoattn.Geometry, q: Tensor, k: Tensor) -> Tensor:
    """Scores of queries ``q`` (B, H, L, E) against keys ``k`` (B, H, S, E) → (B, H, L, S)."""
    return geoattn.scores(q, k, geometry)


def pair_scores(geometry: geoattn.Geometry, table: Tensor, query_index: Tensor, key_index: Tensor) -> Tensor:
    """Scores of rows ``query_index`` (B,) of ``table`` (N, E) against rows ``key_index`` (B, K) → (B, K)
    (:func:`geoattn.pair_scores`: each row lifted once)."""
    return geoattn.pair_scores(table, query_index, key_index, geometry)
