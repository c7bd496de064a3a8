"""geoattn: Riemannian-geometry attention for PyTorch.

One call, ``geoattn.attention(q, k, v, geometry=...)``, scores queries against keys with the metric
of a chosen manifold (Poincaré ball, Lorentz hyperboloid, sphere, learned metric, κ-stereographic)
instead of the flat dot product, on the fastest backend that computes it exactly.
"""
from .backends import available_backends, default_backend, set_default_backend, set_tiled_compile
from .energy import Trace, energy, pair_scores, scores, trace
from .functional import attention, explain_backend
from .geometry import (
    AffineForm,
    ClipWarning,
    CurvedGeometry,
    Euclidean,
    Geometry,
    L2,
    Lifted,
    Lorentz,
    Metric,
    Poincare,
    Sphere,
    Stereographic,
    TemperedGeometry,
    available_geometries,
    make_geometry,
    register,
)
from .nn import MultiheadAttention, riemannian_optimizer
from .integrations import swap
from .validation import set_validation
from . import models  # noqa: F401  (the backbone: geoattn.models.DecoderLM, ...)

__version__ = "0.1.0"

__all__ = [
    "AffineForm", "ClipWarning", "CurvedGeometry", "Euclidean", "Geometry", "L2", "Lifted", "Lorentz", "Metric",
    "MultiheadAttention",
    "Poincare", "Sphere", "Stereographic", "TemperedGeometry", "Trace", "attention", "available_backends",
    "available_geometries", "default_backend", "energy", "explain_backend", "make_geometry", "pair_scores",
    "register", "riemannian_optimizer", "scores", "set_default_backend", "set_tiled_compile", "set_validation",
    "swap", "trace",
]
