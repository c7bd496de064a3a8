"""geoattn: Riemannian-geometry attention for PyTorch.

One call, ``geoattn.attention(q, k, v, geometry=...)``, scores queries against keys with the metric
of a chosen manifold (Poincaré ball, Lorentz hyperboloid, sphere, learned metric, κ-stereographic)
instead of the flat dot product, on the fastest backend that computes it exactly.
"""
from .backends import available_backends, default_backend, set_default_backend, set_tiled_compile
from .functional import attention
from .geometry import (
    CurvedGeometry,
    Euclidean,
    Geometry,
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
from .validation import set_validation

__version__ = "0.1.0"

__all__ = [
    "CurvedGeometry", "Euclidean", "Geometry", "Lifted", "Lorentz", "Metric", "Poincare", "Sphere",
    "Stereographic", "TemperedGeometry", "attention", "available_backends", "available_geometries",
    "default_backend", "make_geometry", "register", "set_default_backend", "set_tiled_compile",
    "set_validation",
]
