"""Sequence-to-sequence: encoder, causal decoder with cross-attention, cached incremental decoding."""
from __future__ import annotations

import operator

import torch
from torch import Tensor, nn

from ..masks import padding_to_allowed, self_mask
from .cache import KVCache
from .config import TransformerConfig
from .encoder import Encoder, make_rotary
from .generate import check_generate_args, check_window, generate_tokens
from .layers import Block, Embedder, check_tokens, final_norm, init_weights, lm_head


class EncoderDecoder(nn.Module):
    """Vaswani-style encoder-decoder; decoder self-attention is causal, cross-attention takes keys and
    values from the encoder output. Each decoder layer has its own self- and cross-attention geometry
    (same name). With ``tie_weights`` the encoder, decoder and output share one token embedding."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.embed = Embedder(cfg, token=self.encoder.embed.tok if cfg.tie_weights else None)
        rotary = make_rotary(cfg)
        self.blocks = nn.ModuleList(
            Block(cfg, cfg.make_geometry(name), cross_geometry=cfg.make_geometry(name), rotary=rotary)
            for name in cfg.layer_geometries("decoder"))
        self.ln_f = final_norm(cfg)
        self.lm_head = lm_head(cfg, self.embed.tok)
        init_weights(self, cfg.n_layers + cfg.decoder_layers)

    def new_cache(self, batch_size: int) -> KVCache:
        """Empty self- and cross-attention caches for ``batch_size`` sequences."""
        return KVCache.for_model(self, batch_size, len(self.blocks), len(self.blocks))

    def encode(self, src: Tensor, src_padding_mask: Tensor | None = None) -> Tensor:
        """``src`` (B, S) → memory (B, S, d_model)."""
        return self.encoder(src, src_padding_mask)

    def decode(self, tgt: Tensor, memory: Tensor, src_padding_mask: Tensor | None = None,
               tgt_padding_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """``tgt`` (B, T) against ``memory`` (B, S, d) → logits (B, T, V). With ``cache``, ``tgt`` continues
        the cached target and cross-attention reuses the memory's keys/values from the first call."""
        check_tokens("tgt", tgt, self.cfg.vocab_size)
        B, T = tgt.shape
        if memory.dim() != 3 or memory.shape[0] != B:
            raise ValueError(f"memory must be (B={B}, S, d_model), got {tuple(memory.shape)}")
        start = 0
        if cache is not None:
            KVCache.check(cache, self, B)
            if tgt_padding_mask is not None:
                raise ValueError("tgt_padding_mask cannot be combined with a cache; decode padded targets "
                                 "without a cache, or left-align them and drop the mask")
            start = cache.length
        memory_mask = padding_to_allowed(src_padding_mask, B, memory.shape[1], "src_padding_mask")
        keys = padding_to_allowed(tgt_padding_mask, B, T, "tgt_padding_mask")
        mask, causal = self_mask(T, start, True, keys, tgt.device)
        x = self.embed(tgt, start)                                          # (B, T, d)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, causal, start, cache.self_kv[i] if cache is not None else None,
                      memory=memory, memory_mask=memory_mask,
                      cross_kv=cache.cross_kv[i] if cache is not None else None)
        if cache is not None:
            cache.length += T
        return self.lm_head(self.ln_f(x))                                   # (B, T, V)

    def forward(self, src: Tensor, tgt: Tensor, src_padding_mask: Tensor | None = None,
                tgt_padding_mask: Tensor | None = None) -> Tensor:
        """``src`` (B, S), ``tgt`` (B, T) (teacher forcing; padding masks True = padding) → logits (B, T, V)."""
        memory = self.encode(src, src_padding_mask)
        return self.decode(tgt, memory, src_padding_mask, tgt_padding_mask)

    @torch.no_grad()
    def generate(self, src: Tensor, max_new_tokens: int, bos_id: int, src_padding_mask: Tensor | None = None,
                 temperature: float = 1.0, top_k: int | None = None, do_sample: bool = False,
                 sliding_window: bool = False, use_cache: bool = True) -> Tensor:
        """Decode from ``bos_id`` → (B, 1 + max_new_tokens) (BOS first), encoding ``src`` once and caching
        decoder self- and cross-attention keys/values (``use_cache=False``: every step re-decodes the
        target; the same tokens). ``sliding_window`` as in :meth:`DecoderLM.generate` (the cross-attention
        cache stays valid, only the self-attention cache restarts). An empty batch gives an empty result."""
        check_tokens("src", src, self.cfg.vocab_size, always=True)
        check_generate_args(max_new_tokens, temperature, top_k)
        try:
            bos = None if isinstance(bos_id, bool) else operator.index(bos_id)
        except TypeError:
            bos = None
        if bos is None or not 0 <= bos < self.cfg.vocab_size:
            raise ValueError(f"bos_id must be a token id (an int) in [0, {self.cfg.vocab_size}) "
                             f"(TransformerConfig.vocab_size), got {bos_id!r}")
        check_window(1 + max_new_tokens, self.cfg.max_len, sliding_window)
        B = src.shape[0]
        if B == 0:
            return src.new_empty(0, 1 + max_new_tokens)
        memory = self.encode(src, src_padding_mask)
        tgt = torch.full((B, 1), bos, dtype=torch.long, device=src.device)
        return generate_tokens(tgt, lambda tokens, cache, keep: self.decode(tokens, memory, src_padding_mask,
                                                                             cache=cache),
                               self.new_cache(B) if use_cache else None, self.cfg.max_len, max_new_tokens,
                               temperature, top_k, do_sample)
