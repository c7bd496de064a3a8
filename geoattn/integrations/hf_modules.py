"""Finding the attention modules of a Hugging Face model, their head counts, and stored geometry tensors."""
from __future__ import annotations

import functools
import inspect
import json
import os

from torch import Tensor, nn

INTERFACE_CALL = "ALL_ATTENTION_FUNCTIONS"
_HEADS = ("num_heads", "num_attention_heads")
_HEAD_DIM = ("head_dim", "attention_head_size")


@functools.lru_cache(maxsize=None)
def _calls_interface(cls: type) -> bool:
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
    return [m for m in model.modules() if _calls_interface(type(m))]


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


def _checkpoint_files(path: str) -> list[str]:
    """The safetensors file(s) of a local directory or a hub id (through transformers' cache)."""
    from transformers.utils import cached_file

    single, index = "model.safetensors", "model.safetensors.index.json"
    if os.path.isdir(path):
        def locate(name: str) -> str | None:
            return os.path.join(path, name) if os.path.isfile(os.path.join(path, name)) else None
    else:
        def locate(name: str) -> str | None:
            return cached_file(path, name, _raise_exceptions_for_missing_entries=False)
    if (found := locate(index)) is not None:
        with open(found) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        return [locate(s) for s in shards]
    if (found := locate(single)) is not None:
        return [found]
    raise ValueError(f"no {single} or {index} in {path}; save the model with save_pretrained (safetensors)")


def geometry_tensors(path: str, expected: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Read the tensors named in ``expected`` from the checkpoint, allowing for a base-model prefix."""
    from safetensors import safe_open

    stored: dict[str, Tensor] = {}
    for file in _checkpoint_files(path):
        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                if ".geoattn_geometry." in name:
                    stored[name] = f.get_tensor(name)
    found, missing = {}, []
    for key in expected:
        candidates = (key, f"{prefix}.{key}", key.removeprefix(f"{prefix}."))
        hit = next((c for c in candidates if c in stored), None)
        if hit is None:
            missing.append(key)
        else:
            found[key] = stored[hit]
    if missing:
        raise ValueError(
            f"the checkpoint {path} lacks {len(missing)} geometry tensor(s), e.g. {missing[0]!r}; it was saved "
            "with a different geometry or model class"
        )
    return found
