"""The encoder stack and the sequence classifier built on it."""
from __future__ import annotations

from torch import Tensor, nn

from ..masks import padding_to_allowed
from .config import TransformerConfig
from .layers import Block, Embedder, Rotary, check_tokens, final_norm, init_weights


def make_rotary(cfg: TransformerConfig) -> Rotary | None:
    return Rotary(cfg.head_dim, cfg.max_len) if cfg.positional == "rotary" else None


class Encoder(nn.Module):
    """Bidirectional encoder: embeddings → ``n_layers`` blocks (one geometry each) → final LayerNorm.

    The encoder of Vaswani et al., "Attention Is All You Need" (2017): ``h = LN(Block_n(…Block_1(embed(x))))``,
    padding keys masked out of every attention.
    """

    def __init__(self, cfg: TransformerConfig, stack: str = "encoder") -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = Embedder(cfg)
        rotary = make_rotary(cfg)
        self.blocks = nn.ModuleList(Block(cfg, cfg.make_geometry(name), rotary=rotary)
                                    for name in cfg.layer_geometries(stack))
        self.ln_f = final_norm(cfg)
        init_weights(self, cfg.n_layers)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``tokens`` (B, T) long, ``padding_mask`` (B, T) bool with True = padding → hidden (B, T, d_model)."""
        check_tokens("tokens", tokens, self.cfg.vocab_size)
        allowed = padding_to_allowed(padding_mask, *tokens.shape)           # (B, 1, 1, T)
        x = self.embed(tokens)                                              # (B, T, d)
        for block in self.blocks:
            x = block(x, allowed)
        return self.ln_f(x)


class EncoderClassifier(nn.Module):
    """Sequence classification: encoder, pooling (mean over non-padding tokens, or the first token's
    state for ``pooling="cls"``: put a CLS token at position 0), linear head → (B, num_classes)."""

    def __init__(self, cfg: TransformerConfig) -> None:
        super().__init__()
        if not isinstance(cfg.num_classes, int) or cfg.num_classes < 1:
            raise ValueError(f"EncoderClassifier needs TransformerConfig.num_classes as a positive int, "
                             f"got {cfg.num_classes!r}")
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.head = nn.Linear(cfg.d_model, cfg.num_classes, bias=cfg.bias)
        init_weights(self.head, cfg.n_layers)

    def forward(self, tokens: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``tokens`` (B, T), ``padding_mask`` (B, T) True = padding → logits (B, num_classes)."""
        if isinstance(tokens, Tensor) and tokens.dim() == 2 and tokens.shape[1] == 0:
            raise ValueError(f"tokens has no positions (shape {tuple(tokens.shape)}): a sequence of no tokens has "
                             "nothing to pool into a class; give every sequence at least one token")
        h = self.encoder(tokens, padding_mask)                              # (B, T, d)
        if self.cfg.pooling == "cls":
            pooled = h[:, 0]
        elif padding_mask is None:
            pooled = h.mean(dim=1)
        else:
            keep = (~padding_mask).unsqueeze(-1).to(h.dtype)                # (B, T, 1)
            pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1.0)
        return self.head(pooled)                                            # (B, C)
