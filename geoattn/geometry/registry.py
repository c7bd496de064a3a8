"""The one geometry factory: names → classes, ``make_geometry``, the per-module factory, the options that rebuild one.

Every way of getting a geometry goes through here: ``geoattn.attention(geometry="poincare")``,
:class:`geoattn.MultiheadAttention`, the backbone's :class:`~geoattn.models.TransformerConfig`,
:func:`geoattn.swap`, the Hugging Face attention functions and their config round trip, the demo and
the benchmarks. Every geometry constructor takes ``num_heads`` and ``head_dim`` (a geometry that does
not need the head size ignores it), so the factory never special-cases a geometry.

A geometry's identity in checkpoints, ``geometry_tag``, is its name and the values of the options it
declares (:mod:`geoattn.geometry.tags`); :func:`rebuild_options` gives the options that rebuild it by name.
"""
from __future__ import annotations

import copy as copying
import inspect
from typing import Any

from .base import Geometry

_REGISTRY: dict[str, type[Geometry]] = {}


def register(cls: type[Geometry]) -> type[Geometry]:
    """Class decorator: make a geometry available under ``cls.name`` to :func:`make_geometry`. Its constructor
    must take ``num_heads`` and ``head_dim`` (by name, or through ``**options``): the factory passes both."""
    params = inspect.signature(cls.__init__).parameters
    accepts = lambda key: key in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())  # noqa: E731
    missing = [key for key in ("num_heads", "head_dim") if not accepts(key)]
    if missing:
        raise TypeError(f"geometry {cls.name!r}: its __init__ takes no {' or '.join(missing)}; geoattn passes "
                        "num_heads and head_dim to every geometry it builds by name, so add them (e.g. "
                        "`num_heads: int = 1, head_dim: int | None = None`, unused if the geometry does not need them)")
    _REGISTRY[cls.name] = cls
    return cls


def available_geometries() -> list[str]:
    """Names accepted by :func:`make_geometry` and by ``geoattn.attention(geometry=...)``."""
    return sorted(_REGISTRY)


def geometry_class(name: str) -> type[Geometry]:
    """The class registered as ``name`` (ValueError listing the available names otherwise)."""
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(
            f"unknown geometry {name!r}; available geometries: {', '.join(available_geometries())} "
            "(or pass a geoattn.Geometry instance)"
        )
    return _REGISTRY[name]


def make_geometry(geometry: str | Geometry, num_heads: int | None = None, head_dim: int | None = None,
                  **params) -> Geometry:
    """A geometry by name with its parameters, e.g. ``make_geometry("poincare", curvature=-0.5)``.

    ``num_heads`` and ``head_dim`` (None: the class default) are passed to every geometry; only those
    whose parameters depend on them use them (``make_geometry("metric", head_dim=64, rank=8)``). An
    instance is returned as it is: it takes no ``params`` (ValueError) and, given ``num_heads``, must
    have parameters for that many heads or for one.
    """
    if isinstance(geometry, Geometry):
        if params:
            raise ValueError(f"geometry parameters {sorted(params)} were given with a Geometry instance; "
                             "set them on the instance instead")
        if num_heads is not None:
            geometry.check_heads(num_heads)
        return geometry
    cls = geometry_class(geometry)
    sizes = {"num_heads": num_heads, "head_dim": head_dim}
    return cls(**{key: value for key, value in sizes.items() if value is not None}, **params)


def geometry_for_module(geometry: str | Geometry, num_heads: int, head_dim: int, params: dict[str, Any] | None = None,
                        copy: bool = False) -> Geometry:
    """The geometry of one attention module with ``num_heads`` query heads of ``head_dim`` features.

    A name is built with the module's ``num_heads`` and ``head_dim``, which ``params`` may override
    (``num_heads=1`` shares the parameters across heads); an instance is used as it is, or deep-copied
    with ``copy=True`` (one trainable geometry per module, as :func:`geoattn.swap` does). Raises
    ``ValueError`` when the geometry does not fit the module's heads.
    """
    params = dict(params or {})
    sizes = {"num_heads": params.pop("num_heads", num_heads), "head_dim": params.pop("head_dim", head_dim)}
    if copy and not isinstance(geometry, str):
        geometry = copying.deepcopy(geometry)
    geom = make_geometry(geometry, **sizes, **params)
    geom.check_heads(num_heads)
    if getattr(geom, "head_dim", head_dim) != head_dim:
        raise ValueError(
            f"geometry {geom.name!r} was built for head_dim={geom.head_dim} but the model's heads have "
            f"{head_dim} features (embed_dim // num_heads); build it with head_dim={head_dim} or leave head_dim out"
        )
    return geom


def rebuild_options(geometry: Geometry) -> dict[str, Any]:
    """The constructor options that rebuild ``geometry`` by name (its tensors travel in the state dict):
    its declared options, ``learnable``, and ``num_heads=1`` when one set of parameters serves every head
    (otherwise the head count is the module's)."""
    options = {key: getattr(geometry, key) for key in geometry.options}
    options["learnable"] = geometry.learnable
    if geometry.num_heads == 1:
        options["num_heads"] = 1
    return options
