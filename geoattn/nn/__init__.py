"""Layers: the ``nn.MultiheadAttention`` drop-in and the Riemannian optimizer helper."""
from .multihead import MultiheadAttention, build_geometry
from .optim import riemannian_optimizer

__all__ = ["MultiheadAttention", "build_geometry", "riemannian_optimizer"]
