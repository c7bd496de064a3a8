"""Geometries: one small module each, registered by name."""
from .base import (
    CurvedGeometry,
    Geometry,
    Lifted,
    TemperedGeometry,
    available_geometries,
    make_geometry,
    register,
    resolve_geometry,
)
from .euclidean import Euclidean
from .l2 import L2
from .lorentz import Lorentz
from .metric import Metric
from .sphere import Sphere
from .stereographic import Poincare, Stereographic

__all__ = [
    "CurvedGeometry", "Euclidean", "Geometry", "L2", "Lifted", "Lorentz", "Metric", "Poincare", "Sphere",
    "Stereographic", "TemperedGeometry", "available_geometries", "make_geometry", "register",
    "resolve_geometry",
]
