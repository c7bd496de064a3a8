"""Backbone pieces: embeddings with positions, multi-head geometric attention with a KV cache, blocks."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..functional import attention
from ..geometry import Geometry
from ..validation import validation_enabled
from .cache import LayerKV
from .config import TransformerConfig


def sinusoidal_table(max_len: int, d: int) -> Tensor:
    """``PE[p, 2i] = sin(p / 10000^(2i/d))``, ``PE[p, 2i+1] = cos(·)`` (Vaswani et al. 2017), (max_len, d)."""
    pos = torch.arange(max_len, dtype=torch.float64).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    table = torch.zeros(max_len, d, dtype=torch.float64)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq)[:, : d // 2]
    return table.to(torch.get_default_dtype())


class Rotary(nn.Module):
    """Rotary position embedding (Su et al., "RoFormer", 2021), GPT-NeoX half-split layout.

    ``rope(x)_p = x ⊙ cos(pθ) + rotate_half(x) ⊙ sin(pθ)``, θ_i = 10000^(-2i/D); applied to queries and
    keys of self-attention before the geometry lifts them. Rotations keep norms and make ``⟨q, k⟩``
    depend on the offset only, so every score that is a function of ``⟨q, k⟩``, ``‖q‖``, ``‖k‖``
    (Euclidean, Poincaré, Lorentz, sphere, stereographic) stays relative; the learned metric's
    ``(q-k)ᵀG(q-k)`` does not (G need not commute with the rotations).
    """

    def __init__(self, head_dim: int, max_len: int) -> None:
        super().__init__()
        inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        angles = torch.arange(max_len, dtype=torch.float64).unsqueeze(1) * inv          # (max_len, D/2)
        angles = torch.cat([angles, angles], dim=-1)                                   # (max_len, D)
        dt = torch.get_default_dtype()
        self.register_buffer("cos", angles.cos().to(dt), persistent=False)
        self.register_buffer("sin", angles.sin().to(dt), persistent=False)

    def forward(self, x: Tensor, start: int = 0, positions: Tensor | None = None) -> Tensor:
        """``x`` (B, H, T, D) at positions ``start .. start+T-1``, or at per-token ``positions`` (B, T)
        (each row's own positions, e.g. after left padding)."""
        if positions is None:
            T = x.shape[-2]
            cos, sin = self.cos[start:start + T], self.sin[start:start + T]                  # (T, D)
        else:
            cos, sin = self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)    # (B, 1, T, D)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat([-x2, x1], dim=-1) * sin


class Embedder(nn.Module):
    """Token embedding plus learned or sinusoidal positions (rotary positions live in the attention)."""

    def __init__(self, cfg: TransformerConfig, token: nn.Embedding | None = None) -> None:
        super().__init__()
        self.max_len = cfg.max_len
        self.tok = token if token is not None else nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positional == "learned" else None
        table = sinusoidal_table(cfg.max_len, cfg.d_model) if cfg.positional == "sinusoidal" else None
        self.register_buffer("table", table, persistent=False)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, idx: Tensor, start: int = 0, positions: Tensor | None = None) -> Tensor:
        """``idx`` (B, T) at positions ``start ..``, or at per-token ``positions`` (B, T) → (B, T, d_model)."""
        T = idx.shape[1]
        end = start + T
        if positions is not None:  # reading the largest position back is a graph break: eager only
            end = 0 if torch.compiler.is_compiling() or not positions.numel() else int(positions.max()) + 1
        if end > self.max_len:
            raise ValueError(f"sequence reaches position {end} but the model's max_len is {self.max_len}; "
                             "shorten the input, raise TransformerConfig.max_len, or pass sliding_window=True "
                             "to generate()")
        x = self.tok(idx)
        at = slice(start, start + T) if positions is None else positions
        if self.pos is not None:
            x = x + self.pos.weight[at]
        elif self.table is not None:
            x = x + self.table[at].to(x.dtype)
        return self.drop(x)


class Attend(nn.Module):
    """:func:`geoattn.attention` as a module without parameters, so that forward hooks see each call's
    per-head queries, keys, values, geometry and mask (what :func:`geoattn.trace` records)."""

    def forward(self, q: Tensor, k: Tensor, v: Tensor, geometry: Geometry, mask: Tensor | None, is_causal: bool,
                dropout_p: float, backend: str) -> Tensor:
        return attention(q, k, v, geometry=geometry, attn_mask=mask, is_causal=is_causal, dropout_p=dropout_p,
                         backend=backend)


class Attention(nn.Module):
    """Multi-head attention under a geometry (self- or cross-), with an optional KV cache:
    ``head_h = softmax(score_geometry(x W_q^h, x W_k^h) + mask) · x W_v^h``, heads concatenated, then
    ``W_o`` (Vaswani et al., "Attention Is All You Need", 2017, with the score of :func:`geoattn.attention`).
    """

    def __init__(self, cfg: TransformerConfig, geometry: Geometry, cross: bool = False,
                 rotary: Rotary | None = None) -> None:
        super().__init__()
        d, self.num_heads, self.head_dim = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.cross = cross
        if cross:
            self.q_proj = nn.Linear(d, d, bias=cfg.bias)
            self.kv_proj = nn.Linear(d, 2 * d, bias=cfg.bias)
        else:
            self.qkv_proj = nn.Linear(d, 3 * d, bias=cfg.bias)
        self.out_proj = nn.Linear(d, d, bias=cfg.bias)
        self.geometry = geometry
        self.rotary = rotary
        self.dropout, self.backend = cfg.dropout, cfg.backend
        self.attend = Attend()

    def _heads(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False, start: int = 0,
                kv: LayerKV | None = None, memory: Tensor | None = None, positions: Tensor | None = None) -> Tensor:
        """``x`` (B, T, d) at positions ``start ..`` (or at per-token ``positions`` (B, T), for rotary
        positions); ``memory`` (B, S, d) for cross-attention (ignored once ``kv`` holds its keys). ``mask``
        is geoattn's (True = take part) over all keys seen."""
        if self.cross:
            q = self._heads(self.q_proj(x))
            if kv is not None and kv.k is not None:
                k, v = kv.k, kv.v
            else:
                k, v = (self._heads(t) for t in self.kv_proj(memory).chunk(2, dim=-1))
                if kv is not None:
                    kv.append(k, v)
        else:
            q, k, v = (self._heads(t) for t in self.qkv_proj(x).chunk(3, dim=-1))
            if self.rotary is not None:
                q, k = self.rotary(q, start, positions), self.rotary(k, start, positions)
            if kv is not None:
                k, v = kv.append(k, v)
        dropout_p = self.dropout if self.training else 0.0
        out = self.attend(q, k, v, self.geometry, mask, is_causal, dropout_p, self.backend)   # (B, H, T, D)
        B, H, T, D = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(B, T, H * D))


class FeedForward(nn.Module):
    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(cfg.d_model, cfg.ff_dim, bias=cfg.bias), nn.GELU(),
                                 nn.Linear(cfg.ff_dim, cfg.d_model, bias=cfg.bias), nn.Dropout(cfg.dropout))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Block(nn.Module):
    """Self-attention (+ cross-attention when ``cross_geometry`` is given) + feed-forward, with residuals
    and LayerNorm before (``pre_norm``) or after each sublayer.

    Pre-norm: ``x ← x + Attn(LN(x))``, ``x ← x + FF(LN(x))`` (Xiong et al., "On Layer Normalization in
    the Transformer Architecture", ICML 2020); post-norm: ``x ← LN(x + Attn(x))`` (Vaswani et al., 2017).
    """

    def __init__(self, cfg: TransformerConfig, geometry: Geometry, cross_geometry: Geometry | None = None,
                 rotary: Rotary | None = None) -> None:
        super().__init__()
        self.pre_norm = cfg.pre_norm
        self.ln1, self.attn = nn.LayerNorm(cfg.d_model, bias=cfg.bias), Attention(cfg, geometry, rotary=rotary)
        if cross_geometry is not None:
            self.ln_cross = nn.LayerNorm(cfg.d_model, bias=cfg.bias)
            self.cross = Attention(cfg, cross_geometry, cross=True)
        else:
            self.ln_cross = self.cross = None
        self.ln2, self.ff = nn.LayerNorm(cfg.d_model, bias=cfg.bias), FeedForward(cfg)
        self.drop = nn.Dropout(cfg.dropout)

    def _sub(self, x: Tensor, ln: nn.LayerNorm, fn) -> Tensor:
        return x + self.drop(fn(ln(x))) if self.pre_norm else ln(x + self.drop(fn(x)))

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False, start: int = 0,
                kv: LayerKV | None = None, memory: Tensor | None = None, memory_mask: Tensor | None = None,
                cross_kv: LayerKV | None = None, positions: Tensor | None = None) -> Tensor:
        x = self._sub(x, self.ln1, lambda h: self.attn(h, mask, is_causal, start, kv, positions=positions))
        if self.cross is not None:
            x = self._sub(x, self.ln_cross, lambda h: self.cross(h, memory_mask, kv=cross_kv, memory=memory))
        return self._sub(x, self.ln2, self.ff)


def init_weights(model: nn.Module, n_layers: int) -> None:
    """GPT-2 initialisation (Radford et al. 2019, as in nanoGPT): Linear and Embedding weights N(0, 0.02),
    biases 0, and the projections that write into the residual stream N(0, 0.02/√(2·n_layers)). The
    geometries' own parameters are left at their constructors' values."""
    for name, m in model.named_modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            std = 0.02 / math.sqrt(2 * n_layers) if name.endswith(("out_proj", "net.2")) else 0.02
            nn.init.normal_(m.weight, mean=0.0, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


def final_norm(cfg: TransformerConfig) -> nn.Module:
    """The LayerNorm after the last block (pre-norm stacks), or the identity (post-norm: each block ends normed)."""
    return nn.LayerNorm(cfg.d_model, bias=cfg.bias) if cfg.pre_norm else nn.Identity()


def lm_head(cfg: TransformerConfig, token: nn.Embedding) -> nn.Linear:
    """Hidden states → logits over the vocabulary, tied to the token embedding with ``cfg.tie_weights``."""
    head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
    if cfg.tie_weights:
        head.weight = token.weight
    return head


def check_tokens(name: str, idx: Tensor, vocab_size: int | None = None, always: bool = False) -> None:
    """``idx`` is a (B, T) integer tensor; with ``vocab_size`` its ids are also checked to lie in
    [0, vocab_size): always when ``always`` (generation: once, before any forward), else where the input
    checks of :mod:`geoattn.validation` read values (CPU tensors, validation on, not compiling)."""
    if not isinstance(idx, Tensor) or idx.dtype not in (torch.long, torch.int32, torch.int64):
        raise TypeError(f"{name} must be an integer (long) tensor of token ids, got "
                        f"{getattr(idx, 'dtype', type(idx).__name__)}")
    if idx.dim() != 2:
        raise ValueError(f"{name} must have shape (B, T), got {tuple(idx.shape)}; add a batch dim with [None]")
    if vocab_size is not None and idx.numel() and (always or (idx.device.type == "cpu" and validation_enabled())):
        low, high = int(idx.min()), int(idx.max())
        if low < 0 or high >= vocab_size:
            bad = low if low < 0 else high
            raise ValueError(f"{name} holds the token id {bad}, outside the vocabulary [0, {vocab_size}) "
                             f"(TransformerConfig.vocab_size={vocab_size}); map such tokens to an id in range "
                             "(e.g. an unknown-token id), or build the model with a larger vocab_size")
