"""One ``torch.compile``d copy of a function per *shape family*, so families never evict each other.

Dynamo caches compiled graphs on a function's code object and gives up after
``torch._dynamo.config.recompile_limit`` (8) variants, silently falling back to eager. geoattn
compiles its kernels with ``dynamic=True`` (one graph serves every length), but each geometry,
mask kind and dtype is a new variant; a long test session or a model mixing geometries would hit
the limit. So each family gets its own copy of the function with a fresh code object
(``code.replace()``), hence its own dynamo cache.
"""
from __future__ import annotations

import types
from typing import Callable, Hashable

import torch
from torch._dynamo import config as dynamo_config
from torch.fx.experimental import _config as fx_config

_CACHE: dict[tuple[Callable, Hashable], Callable] = {}


def compiled(fn: Callable, family: Hashable = None, duck_shapes: bool = True) -> Callable:
    """``torch.compile(fn, dynamic=True)`` on a private copy of ``fn`` for this ``family`` (cached)."""
    key = (fn, family, duck_shapes)
    if key not in _CACHE:
        copy = types.FunctionType(fn.__code__.replace(), fn.__globals__, fn.__name__, fn.__defaults__, fn.__closure__)
        _CACHE[key] = _configured(torch.compile(copy, dynamic=True), duck_shapes)
    return _CACHE[key]


def _configured(fn: Callable, duck_shapes: bool) -> Callable:
    """Run ``fn`` with Python floats specialised (the eps constants of :mod:`geoattn.math.eps` would
    otherwise become 0-d float64 graph inputs, which FlexAttention's CPU lowering rejects with
    "unbacked_bindings"), and optionally without "duck sizing" (equal sizes assumed equal forever,
    which makes a block whose length happens to equal another dim recompile on the next block)."""
    def call(*args):
        with dynamo_config.patch(specialize_float=True), fx_config.patch(use_duck_shape=duck_shapes):
            return fn(*args)
    return call


def clear_compile_cache() -> None:
    """Forget every compiled copy (the next call per family compiles again)."""
    _CACHE.clear()
