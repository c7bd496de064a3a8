"""Public names that moved in the "one place for each decision" refactor (issue #13).

They stay importable from their old modules (through each module's ``__getattr__``) and warn with a
``DeprecationWarning`` that names the new home.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable


def resolve_geometry(geometry, head_dim: int):
    """A name becomes a geometry with default parameters; an instance is used as is."""
    from .validation import check_geometry
    from .geometry import make_geometry

    check_geometry(geometry)
    return make_geometry(geometry, head_dim=head_dim)


def build_geometry(geometry, num_heads: int, head_dim: int, **params):
    """A geometry with one parameter per head (``params`` may override ``head_dim``)."""
    from .geometry import make_geometry

    return make_geometry(geometry, num_heads, **{"head_dim": head_dim, **params})


def select_backend(name: str, geometry, q, need_weights: bool, dropout_p: float, needs_grad: bool = False,
                   num_scores: int | None = None):
    """The backend for a self-attention-shaped call on ``q`` (B, H, L, E)."""
    from .backends import policy
    from .call import AttentionCall
    from .masks import Mask

    L = q.shape[-2]
    scores = num_scores if num_scores is not None else q.shape[0] * q.shape[1] * L * L
    call = AttentionCall(q, q, q, geometry, Mask(None, False, L, L, q.device), float(dropout_p), None,
                         bool(need_weights), bool(needs_grad), scores, q.shape[:-2])
    return policy.backend_for(call, name)


def _math_function(new: str) -> Callable[[], Any]:
    def get():
        from .math import functions

        return getattr(functions, new)
    return get


_MOVED: dict[tuple[str, str], tuple[Callable[[], Any], str]] = {
    ("geoattn.geometry", "resolve_geometry"): (lambda: resolve_geometry, "geoattn.make_geometry(geometry, head_dim=E)"),
    ("geoattn.nn", "build_geometry"): (
        lambda: build_geometry, "geoattn.geometry.geometry_for_module(geometry, num_heads, head_dim, params)"),
    ("geoattn.backends", "select_backend"): (
        lambda: select_backend, "geoattn.explain_backend(q, k, v, ...) or geoattn.backends.policy.choose(call)"),
    ("geoattn.backends", "AUTO_ORDER"): (
        lambda: ["sdpa", "flex", "tiled", "dense"],
        "geoattn.backends.policy.RULES (auto's decision table; this list is a copy and changes nothing)"),
    ("geoattn.math.functions", "C"): (_math_function("cos_sqrt"), "geoattn.math.functions.cos_sqrt"),
    ("geoattn.math.functions", "S"): (_math_function("sinc_sqrt"), "geoattn.math.functions.sinc_sqrt"),
    ("geoattn.math.functions", "H"): (_math_function("arcsinc_sqrt"), "geoattn.math.functions.arcsinc_sqrt"),
}


def moved(module: str, name: str) -> Any:
    """The value of ``module.name`` for a name that moved, with a DeprecationWarning; else AttributeError."""
    try:
        target, new = _MOVED[(module, name)]
    except KeyError:
        raise AttributeError(f"module {module!r} has no attribute {name!r}") from None
    warnings.warn(f"{module}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=3)
    return target()
