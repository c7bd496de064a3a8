"""Layers: the ``nn.MultiheadAttention`` drop-in and the Riemannian optimizer helper."""
from .multihead import MultiheadAttention
from .optim import riemannian_optimizer

__all__ = ["MultiheadAttention", "riemannian_optimizer"]
