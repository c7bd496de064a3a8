"""Pure functions of the geometries: no parameters, no modules. Curvature is signed κ everywhere."""
from . import eps, functions, lorentz, sphere, stereographic

__all__ = ["eps", "functions", "lorentz", "sphere", "stereographic"]
