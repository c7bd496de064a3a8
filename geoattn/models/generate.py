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


def check_prompt(idx: Tensor) -> None:
    if idx.shape[1] == 0:
        raise ValueError(f"the prompt has no tokens (shape {tuple(idx.shape)}); generation continues a sequence, so "
                         "give every row at least one token (e.g. a BOS id)")


def check_left_padded(keep: Tensor) -> None:
    """``keep`` (B, T), True at real tokens: every row has one, and padding only on the left."""
    empty = (~keep.any(dim=-1)).nonzero()
    if len(empty):
        raise ValueError(f"attention_mask row {int(empty[0, 0])} is all padding (no 1); every prompt needs at "
                         "least one real token")
    late = (keep[:, :-1] & ~keep[:, 1:]).any(dim=-1).nonzero()
    if len(late):
        raise ValueError(f"attention_mask row {int(late[0, 0])} has padding after a real token; generation appends "
                         "tokens on the right, so pad prompts on the left (0s first, then 1s; Hugging Face: "
                         "tokenizer.padding_side='left')")


def generate_tokens(seq: Tensor, step: Callable[[Tensor, KVCache | None, Tensor | None], Tensor],
                    cache: KVCache | None, max_len: int, max_new_tokens: int, temperature: float, top_k: int | None,
                    do_sample: bool, keep: Tensor | None = None) -> Tensor:
    """Append ``max_new_tokens`` tokens to ``seq`` (B, T) → (B, T + max_new_tokens).

    ``step(tokens, cache, keep)`` runs the model on ``tokens`` continuing the cached sequence and returns the
    logits (B, T', V); ``keep`` (B, positions) is True at the real tokens of every position the step sees
    (cached ones included, as Hugging Face's ``attention_mask``), or None when nothing is padding. The
    first step encodes the last ``max_len`` tokens; each further token is one cached step, until the cache
    holds ``max_len`` positions: then the self-attention cache restarts on the last ``max_len`` tokens,
    re-encoded from position 0 (the sliding window). With ``cache=None`` every step re-encodes the last
    ``max_len`` tokens (the same tokens, without a cache). ``keep`` (B, T) marks left padding of ``seq``.
    """
    if max_new_tokens == 0:
        return seq

    def window(t: Tensor | None, n: int = max_len) -> Tensor | None:
        return None if t is None else t[:, -n:]

    logits = step(window(seq), cache, window(keep))
    for i in range(max_new_tokens):
        nxt = next_token(logits[:, -1], temperature, top_k, do_sample)    # (B, 1)
        seq = torch.cat([seq, nxt], dim=1)
        if keep is not None:
            keep = torch.cat([keep, keep.new_ones(keep.shape[0], 1)], dim=1)
        if i == max_new_tokens - 1:
            break
        if cache is None:
            logits = step(window(seq), None, window(keep))
        elif cache.length < max_len:
            logits = step(nxt, cache, window(keep, cache.length + 1))
        else:  # window full: restart the self-attention cache on the last max_len tokens
            cache.restart_self_attention()
            logits = step(window(seq), cache, window(keep))
    return seq
