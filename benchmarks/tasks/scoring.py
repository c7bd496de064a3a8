"""The one place where benchmark tasks compute attention *scores* (not outputs) through a geometry.

Tasks whose output is an attention distribution (the WordNet pointer, the reconstruction task) call
:func:`scores`; it goes through the geometry's own ``lift`` and the dense reference backend, with the
default scale of :func:`geoattn.attention` (``1/√E`` for ``euclidean``, 1 for every other geometry, whose
temperature sets the sharpness). When geoattn gains a public ``scores()``, only this file changes.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

import geoattn


def make(name: str, head_dim: int, **params: Any) -> geoattn.Geometry:
    """``geoattn.make_geometry(name, **params)``, adding ``head_dim`` for geometries that need it (``metric``)."""
    from geoattn.geometry.base import geometry_class

    if geometry_class(name).needs_head_dim:
        params.setdefault("head_dim", head_dim)
    return geoattn.make_geometry(name, **params)


def scores(geometry: geoattn.Geometry, q: Tensor, k: Tensor) -> Tensor:
    """Scores of queries ``q`` (B, H, L, E) against keys ``k`` (B, H, S, E) → (B, H, L, S)."""
    from geoattn.backends.dense import dense_scores

    return dense_scores(geometry, geometry.lift(q, k, None))
