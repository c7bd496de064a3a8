"""The shared backbone of every benchmark: only the attention geometry differs between runs."""
from __future__ import annotations

from torch import nn

from ..geometry import Geometry
from .cache import KVCache, LayerKV
from .config import TransformerConfig
from .decoder import DecoderLM
from .encoder import Encoder, EncoderClassifier
from .layers import Attention, Block, Rotary
from .seq2seq import EncoderDecoder


def count_parameters(model: nn.Module) -> dict[str, int]:
    """Parameter counts (tied weights once): ``total``, ``trainable``, ``geometry`` (the geometries' own
    curvatures, temperatures, metrics; counted whether learnable or fixed) and ``backbone`` (the rest,
    identical across geometries for one config)."""
    params = {id(p): p for p in model.parameters()}
    geo = {id(p) for m in model.modules() if isinstance(m, Geometry) for p in m.parameters()}
    total = sum(p.numel() for p in params.values())
    geometry = sum(params[i].numel() for i in geo)
    return {"total": total, "trainable": sum(p.numel() for p in params.values() if p.requires_grad),
            "geometry": geometry, "backbone": total - geometry}


__all__ = [
    "Attention", "Block", "DecoderLM", "Encoder", "EncoderClassifier", "EncoderDecoder", "KVCache", "LayerKV",
    "Rotary", "TransformerConfig", "count_parameters",
]
