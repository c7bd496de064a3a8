"""The key/value cache of incremental decoding: per layer, the keys and values seen so far."""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class LayerKV:
    """One attention layer's cached keys and values, (B, H, S, D) each, or None before the first step."""

    k: Tensor | None = None
    v: Tensor | None = None

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append one step's keys and values (B, H, T, E) along the sequence; returns everything cached so far."""
        self.k = k if self.k is None else torch.cat([self.k, k], dim=2)
        self.v = v if self.v is None else torch.cat([self.v, v], dim=2)
        return self.k, self.v


@dataclass
class KVCache:
    """Keys/values of every layer (self-attention, and cross-attention for :class:`EncoderDecoder`).

    Made by ``model.new_cache(batch_size)``; ``length`` counts the positions already decoded (the
    position of the next token). A cache belongs to one model and one batch size: using it with
    another raises a ValueError.
    """

    owner: weakref.ReferenceType
    batch_size: int
    self_kv: list[LayerKV]
    cross_kv: list[LayerKV] = field(default_factory=list)
    length: int = 0

    @classmethod
    def for_model(cls, model: nn.Module, batch_size: int, n_self: int, n_cross: int = 0) -> "KVCache":
        """An empty cache for ``model`` with ``n_self`` self-attention and ``n_cross`` cross-attention layers."""
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        return cls(weakref.ref(model), batch_size, [LayerKV() for _ in range(n_self)],
                   [LayerKV() for _ in range(n_cross)])

    def check(self, model: nn.Module, batch_size: int) -> None:
        """Raise a clear error unless this cache was made by ``model`` for ``batch_size`` sequences."""
        if not isinstance(self, KVCache):
            raise TypeError(f"cache must be a KVCache from model.new_cache(), got {type(self).__name__}")
        if self.owner() is not model:
            raise ValueError("this KVCache was made by another model; caches hold that model's keys and "
                             "values, so make one with this_model.new_cache(batch_size)")
        if batch_size != self.batch_size:
            raise ValueError(f"the KVCache was made for batch size {self.batch_size} but the input has batch "
                             f"size {batch_size}; make a new one with model.new_cache({batch_size})")

    def restart_self_attention(self) -> None:
        """Forget the self-attention keys/values and the position (cross-attention keys stay valid)."""
        for kv in self.self_kv:
            kv.k = kv.v = None
        self.length = 0
