"""The one place where benchmark tasks compute attention *scores* (not outputs) through a geometry.

Tasks whose output is an attention distribution (the WordNet pointer, the reconstruction task) call
:func:`scores`, i.e. :func:`geoattn.scores` with the default scale of :func:`geoattn.attention`
(``1/√E`` for ``euclidean``, 1 for every other geometry, whose temperature sets the sharpness), and
:func:`pair_scores` for index pairs of one embedding table (the reconstruction task's sampled negatives).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch
from torch import Tensor

import geoattn
from geoattn.backends.dense import dense_scores, reference_lift
from geoattn.call import prepare_call


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


def table_scorer(geometry: geoattn.Geometry, table: Tensor):
    """A function ``rows (b,) → (b, N)``: the scores of rows ``rows`` of ``table`` (N, E) against every row, the
    numbers of ``scores(table[rows], table)``, with the table lifted once for every call (as
    :func:`geoattn.pair_scores` does per batch: :func:`~geoattn.backends.dense.reference_lift`, then the dense
    reference score of the query rows' slice of it). An evaluation scoring every node against every node in
    blocks of rows lifts the table once instead of once per block."""
    points = table[None, None]                                             # (1, 1, N, E)
    call = prepare_call(points, points, points, geometry)
    lifted = reference_lift(call.geometry, call.q, call.k, call.scale)
    dtype = torch.promote_types(table.dtype, torch.float32)

    def rows(index: Tensor) -> Tensor:
        def pick(x: Tensor) -> Tensor:
            return x.index_select(2, index)
        sliced = replace(lifted, q=pick(lifted.q), q_terms=tuple(pick(t) for t in lifted.q_terms),
                         outer=None if lifted.outer is None else (pick(lifted.outer[0]), lifted.outer[1]))
        return dense_scores(call.geometry, sliced)[0, 0].to(dtype)

    return rows
