"""Autoregressive generation with a KV cache, shared by :class:`DecoderLM` and :class:`EncoderDecoder`."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from .cache import KVCache


def check_generate_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits), got {temperature!r}; use "
                         "do_sample=False for greedy decoding")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")


def check_window(need: int, max_len: int, sliding_window: bool) -> None:
    """``need`` positions fit in ``max_len``, unless ``sliding_window`` lets the model see the last ``max_len``."""
    if need > max_len and not sliding_window:
        raise ValueError(f"generation needs {need} positions but max_len is {max_len}; generate fewer tokens, raise "
                         "TransformerConfig.max_len, or pass sliding_window=True (the model then sees the last "
                         "max_len tokens)")


def next_token(logits: Tensor, temperature: float, top_k: int | None, do_sample: bool) -> Tensor:
    """(B, V) logits → (B, 1) ids: argmax, or a sample from ``softmax(logits/T)`` restricted to the top k."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)


def generate_tokens(seq: Tensor, step: Callable[[Tensor, KVCache], Tensor], cache: KVCache, max_len: int,
                    max_new_tokens: int, temperature: float, top_k: int | None, do_sample: bool) -> Tensor:
    """Append ``max_new_tokens`` tokens to ``seq`` (B, T) → (B, T + max_new_tokens).

    ``step(tokens, cache)`` runs the model on ``tokens`` continuing the cached sequence and returns the
    logits (B, T', V). The first step encodes the last ``max_len`` tokens; each further token is one
    cached step, until the cache holds ``max_len`` positions: then the self-attention cache restarts on
    the last ``max_len`` tokens, re-encoded from position 0 (the sliding window).
    """
    if max_new_tokens == 0:
        return seq
    logits = step(seq[:, -max_len:], cache)
    for i in range(max_new_tokens):
        nxt = next_token(logits[:, -1], temperature, top_k, do_sample)    # (B, 1)
        seq = torch.cat([seq, nxt], dim=1)
        if i == max_new_tokens - 1:
            break
        if cache.length < max_len:
            logits = step(nxt, cache)
        else:  # window full: restart the self-attention cache on the last max_len tokens
            cache.restart_self_attention()
            logits = step(seq[:, -max_len:], cache)
    return seq
