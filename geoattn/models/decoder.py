"""Causal language model with KV-cache generation."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..masks import attention_mask_to_keep, self_mask
from .cache import KVCache
from .config import TransformerConfig
from .encoder import make_rotary
from .generate import check_generate_args, check_left_padded, check_prompt, check_window, generate_tokens
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

    def forward(self, idx: Tensor, targets: Tensor | None = None, cache: KVCache | None = None,
                attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """``idx`` (B, T) → ``(logits (B, T, V), mean cross-entropy against targets (B, T) or None)``;
        targets equal to -100 are ignored (padding).

        With ``cache``, ``idx`` continues the cached sequence (positions ``cache.length ..``) and the
        cache is extended; the logits equal those of a full forward over the whole sequence.

        ``attention_mask`` (B, positions), as in Hugging Face: 1 (True) at real tokens, 0 at padding, over
        every position the call sees (with a cache: the cached ones, then ``idx``'s). Padding keys are
        masked out of attention and each token's position is the number of real tokens before it (the
        position ids ``cumsum(mask) - 1`` of Hugging Face), so a left-padded row computes what the row
        alone computes.
        """
        check_tokens("idx", idx, self.cfg.vocab_size)
        B, T = idx.shape
        start = 0
        if cache is not None:
            KVCache.check(cache, self, B)
            start = cache.length
        keys = positions = None
        if attention_mask is not None:
            keep = attention_mask_to_keep(attention_mask, B, start + T).to(idx.device)
            positions = (keep.long().cumsum(dim=-1) - 1).clamp(min=0)[:, start:]   # (B, T)
            keys = keep[:, None, None, :]                                          # (B, 1, 1, start+T)
        x = self.embed(idx, start, positions)                                     # (B, T, d)
        mask, causal = self_mask(T, start, True, keys, idx.device)
        for i, block in enumerate(self.blocks):
            x = block(x, mask, causal, start, cache.self_kv[i] if cache is not None else None, positions=positions)
        if cache is not None:
            cache.length += T
        logits = self.lm_head(self.ln_f(x))                                 # (B, T, V)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"targets must have the shape of idx {tuple(idx.shape)}, got {tuple(targets.shape)}")
            if targets.numel() == 0:
                raise ValueError(f"targets are empty (shape {tuple(targets.shape)}): the mean cross-entropy of no "
                                 "tokens is undefined; skip the batch, or call the model without targets")
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
        return logits, loss

    @torch.no_grad()
    def generate(self, idx: Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
                 do_sample: bool = False, sliding_window: bool = False, attention_mask: Tensor | None = None,
                 use_cache: bool = True) -> Tensor:
        """Append ``max_new_tokens`` tokens to ``idx`` (B, T) → (B, T + max_new_tokens), with a KV cache
        (``use_cache=False``: every step re-encodes the sequence; the same tokens, slower).

        Greedy unless ``do_sample`` (then temperature / top-k sampling). Past ``max_len`` positions it
        raises, unless ``sliding_window=True``: each further token is then predicted from the last
        ``max_len`` tokens, re-encoded from position 0 (exact for learned, sinusoidal and rotary
        positions; costs a full forward of ``max_len`` tokens per token once the window is full).

        Prompts of different lengths go in one batch left-padded, with ``attention_mask`` (B, T) as in
        Hugging Face: 1 (True) at real tokens, 0 at the padding before them. Each row then generates the
        tokens it would generate alone (positions follow its real tokens, padding is never attended to);
        the padding columns of ``idx`` are returned as given. Token ids must lie in [0, vocab_size).
        An empty batch (B = 0) gives an empty result; a prompt with no tokens (T = 0) is an error.
        """
        check_tokens("idx", idx, self.cfg.vocab_size, always=True)
        check_generate_args(max_new_tokens, temperature, top_k)
        B, T = idx.shape
        check_prompt(idx)
        keep = None
        if attention_mask is not None:
            keep = attention_mask_to_keep(attention_mask, B, T).to(idx.device)
            check_left_padded(keep)
        if B == 0:
            return idx.new_empty(0, T + max_new_tokens)
        pad = 0 if keep is None else int((~keep).all(dim=0).sum())      # columns that are padding in every row
        if keep is not None and bool(keep[:, pad:].all()):
            keep = None                                                   # nothing left to mask
        check_window(T - pad + max_new_tokens, self.cfg.max_len, sliding_window)
        out = generate_tokens(idx[:, pad:], lambda tokens, cache, mask: self(tokens, cache=cache,
                                                                               attention_mask=mask)[0],
                              self.new_cache(B) if use_cache else None, self.cfg.max_len, max_new_tokens,
                              temperature, top_k, do_sample, None if keep is None else keep[:, pad:])
        return torch.cat([idx[:, :pad], out], dim=1)
