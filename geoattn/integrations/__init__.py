"""Swapping the attention geometry of existing models: plain PyTorch and Hugging Face transformers.

When transformers is installed, importing geoattn registers the ``geoattn_<geometry>`` attention
implementations with it (:func:`geoattn.integrations.hf.register`), so that a plain
``from_pretrained`` of a checkpoint saved after :func:`swap` rebuilds its geometry.
"""
from . import hf as _hf
from .swap import swap

if _hf.transformers is not None:
    _hf.register()

__all__ = ["swap"]
