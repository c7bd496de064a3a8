"""Finding the attention modules of a Hugging Face model and their head counts."""
from __future__ import annotations

import functools
import inspect

from torch import nn

INTERFACE_CALL = "ALL_ATTENTION_FUNCTIONS"
_HEADS = ("num_heads", "num_attention_heads")
_HEAD_DIM = ("head_dim", "attention_head_size")


@functools.lru_cache(maxsize=None)
def calls_interface(cls: type) -> bool:
    """Whether ``cls.forward`` dispatches through transformers' attention interface.

    The same source heuristic transformers uses for ``_can_set_attn_implementation``: read the code
    of the forward method and look for ``ALL_ATTENTION_FUNCTIONS``.
    """
    if cls.__module__.startswith("torch."):
        return False
    try:
        return INTERFACE_CALL in inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` whose forward calls the attention interface (BertSelfAttention, LlamaAttention, …)."""
    return [m for m in model.modules() if calls_interface(type(m))]


def _first_int(obj, names: tuple[str, ...]) -> int | None:
    for name in names:
        value = getattr(obj, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def head_counts(module: nn.Module) -> tuple[int, int]:
    """``(query heads, head size)`` of an attention module, from its attributes or its config."""
    config = getattr(module, "config", None)
    heads = _first_int(module, _HEADS) or _first_int(config, ("num_attention_heads",))
    head_dim = _first_int(module, _HEAD_DIM) or _first_int(config, ("head_dim",))
    hidden = _first_int(config, ("hidden_size",))
    if head_dim is None and heads and hidden:
        head_dim = hidden // heads
    if heads is None or head_dim is None:
        raise ValueError(
            f"geoattn.swap cannot tell the number of heads and the head size of {type(module).__name__}: it looked "
            f"for the attributes {', '.join(_HEADS + _HEAD_DIM)} and config.num_attention_heads/head_dim/"
            "hidden_size; set the module's num_heads and head_dim attributes before swapping"
        )
    return heads, head_dim
