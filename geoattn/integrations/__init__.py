"""Swapping the attention geometry of existing models: plain PyTorch and Hugging Face transformers."""
from .swap import swap

__all__ = ["swap"]
