"""One geometry per swapped attention module, checked against the module's heads."""
from __future__ import annotations

import copy
from typing import Any

from ..geometry import Geometry
from ..nn import build_geometry


def geometry_for_module(geometry: str | Geometry, params: dict[str, Any], heads: int, head_dim: int) -> Geometry:
    """A fresh geometry for an attention module with ``heads`` query heads of ``head_dim`` features.

    A name is built with ``num_heads=heads`` (``num_heads=1`` in ``params`` shares the parameters across
    heads) and, for geometries that need it, ``head_dim``; an instance is deep-copied (parameters per
    layer). Raises ``ValueError`` when the geometry does not fit the module.
    """
    if isinstance(geometry, Geometry):
        geometry = copy.deepcopy(geometry)
    params = dict(params)
    num_heads = params.pop("num_heads", heads)
    given_dim = params.pop("head_dim", head_dim)
    geom = build_geometry(geometry, num_heads, given_dim, **params)
    geom.check_heads(heads)
    if getattr(geom, "head_dim", head_dim) != head_dim:
        raise ValueError(
            f"geometry {geom.name!r} was built for head_dim={geom.head_dim} but the model's heads have "
            f"{head_dim} features (embed_dim // num_heads); build it with head_dim={head_dim} or leave head_dim out"
        )
    return geom
