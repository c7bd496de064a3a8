"""Causal language model with KV-cache generation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .cache import KVCache
from .config import TransformerConfig
from .encoder import make_rotary
from .layers import Block, Embedder, check_tokens, init_weights, self_mask


def check_generate_args(max_new_tokens: int, temperature: float, top_k: int | None) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0 (it divides the logits), got {temperature!r}; use "
                         "do_sample=False for greedy decoding")
    if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")


def next_token(logits: Tensor, temperature: float, top_k: int | None, do_sample: bool) -> Tensor:
    """(B, V) logits → (B, 1) ids: argmax, or a sample from ``softmax(logits/T)`` restricted to the top k."""
    if not do_sample:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits.float(), dim=-1), num_samples=1)


def window_error(need: int, max_len: int) -> ValueError:
    return ValueError(f"generation needs {need} positions but max_len is {max_len}; generate fewer tokens, raise "
                      "TransformerConfig.max_len, or pass sliding_window=True (the model then sees the last "
                      "max_len tokens)")


class DecoderLM(nn.Module):
    """GPT-style causal LM: embeddings → causal blocks → LayerNorm → LM head (tied to the embedding).

    ``p(x_t | x_<t) = softmax(LN(h_t) Eᵀ)`` (Radford et al., "Language Models are Unsupervised Multitask
    Learners" (GPT-2), 2019; layout as in Karpathy's nanoGPT).
    """

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedder(cfg)
        rotary = make_rotary(cfg)
        self.blocks = nn.ModuleList(Block(cfg, cfg.make_geometry(name), rotary=rotary)
                                    for name in cfg.layer_geometries("decoder_only"))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=cfg.bias) if cfg.pre_norm else nn.Identity()
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.embed.tok.weight
        init_weights(self, cfg.n_layers)

    def new_cache(self, batch_size: int) -> KVCache:
        """An empty KV cache for incremental decoding of ``batch_size`` sequences with this model."""
        return KVCache.for_model(self, batch_size, len(self.blocks))

    def forward(self, idx: Tensor, targets: Tensor | None = None,
                cache: KVCache | None = None) -> tuple[Tensor, Tensor | None]:
        """``idx`` (B, T) → ``(logits (B, T, V), mean cross-entropy against targets (B, T) or None)``;
        targets equal to -100 are ignored (padding).

        With ``cache``, ``idx`` continues the cached sequence (positions ``cache.length ..``) and the
        cache is extended; the logits equal those of a full forward over the whole sequence.
        """
        check_tokens("idx", idx)
        B, T = idx.shape
        start = 0
        if cache is not None:
            KVCache.check(cache, self, B)
            start = cache.length
        x = self.embed(idx, start)                                          # (B, T, d)
        mask, causal = self_mask(T, start, True, None, idx.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, causal, start, cache.self_kv[i] if cache is not None else None)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.ln_f(x))                                 # (B, T, V)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 do_sample: bool = False, sliding_window: bool = False) -> Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T) → (B, T + max_new_tokens), with a KV cache.

        Greedy unless ``do_sample`` (then temperature / top-k sampling). Past ``max_len`` positions it
        raises, unless ``sliding_window=True``: each further token is then predicted from the last
        ``max_len`` tokens, re-encoded from position 0 (exact for learned, sinusoidal and rotary
        positions; costs a full forward of ``max_len`` tokens per token once the window is full).
        """
        check_tokens("idx", idx)
        check_generate_args(max_new_tokens, temperature, top_k)
        L = self.cfg.max_len
        if idx.shape[1] + max_new_tokens > L and not sliding_window:
            raise window_error(idx.shape[1] + max_new_tokens, L)
        if max_new_tokens == 0:
            return idx
        cache = self.new_cache(idx.shape[0])
        logits, _ = self(idx[:, -L:], cache=cache)
        for step in range(max_new_tokens):
            nxt = next_token(logits[:, -1], temperature, top_k, do_sample)  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)
            if step == max_new_tokens - 1:
                break
            if cache.length < L:
                logits, _ = self(nxt, cache=cache)
            else:  # window full: restart the cache on the last max_len tokens
                cache = self.new_cache(idx.shape[0])
                logits, _ = self(idx[:, -L:], cache=cache)
        return idx
