"""Causal language model with KV-cache generation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..masks import self_mask
from .cache import KVCache
from .config import TransformerConfig
from .encoder import make_rotary
from .generate import check_generate_args, check_window, generate_tokens
from .layers import Block, Embedder, check_tokens, final_norm, init_weights, lm_head


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
        self.ln_f = final_norm(cfg)
        self.lm_head = lm_head(cfg, self.embed.tok)
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
        check_window(idx.shape[1] + max_new_tokens, self.cfg.max_len, sliding_window)
        return generate_tokens(idx, lambda tokens, cache: self(tokens, cache=cache)[0], self.new_cache(idx.shape[0]),
                               self.cfg.max_len, max_new_tokens, temperature, top_k, do_sample)
