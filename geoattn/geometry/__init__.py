"""Geometries: one small module each, registered by name in :mod:`geoattn.geometry.registry`."""
from .base import AffineForm, Geometry, Lifted, TemperedGeometry
from .clip import ClipWarning
from .curved import CurvedGeometry
from .euclidean import Euclidean
from .euclidean_tau import EuclideanTau
from .l2 import L2
from .lorentz import Lorentz
from .metric import Metric
from .registry import available_geometries, geometry_class, geometry_for_module, make_geometry, register
from .sphere import Sphere
from .stereographic import Poincare, Stereographic

__all__ = [
    "AffineForm", "ClipWarning", "CurvedGeometry", "Euclidean", "EuclideanTau", "Geometry", "L2", "Lifted", "Lorentz",
    "Metric", "Poincare", "Sphere",
    "Stereographic", "TemperedGeometry", "available_geometries", "geometry_class", "geometry_for_module",
    "make_geometry", "register",
]
