"""Every mask convention of geoattn, in one module.

geoattn follows :func:`torch.nn.functional.scaled_dot_product_attention` (and FlexAttention's
``mask_mod``): a **bool** mask is True where a key *takes part*, a **float** mask is *added* to the
scores, ``is_causal`` is top-left aligned (query i sees keys j ≤ i), and a query row with no allowed
key gives zeros (not NaN). Everything that builds or converts a mask lives here:

* :func:`causal_allowed`: the one causal triangle (``offset`` for cached decoding);
* :func:`exclude_self`: "query i never attends to key i", folded into the user's mask;
* :func:`merge_masks`: ``nn.MultiheadAttention``'s ``attn_mask`` + ``key_padding_mask`` (True = *ignore*);
* :func:`padding_to_allowed`, :func:`self_mask`: the backbone's padding and (cached) causal masks;
* :func:`attention_mask_to_keep`: Hugging Face's ``attention_mask`` (1 = real token) of :class:`DecoderLM`;
* :class:`Mask`: one call's mask, 4-D, with its boolean (:attr:`Mask.allowed`) and additive
  (:attr:`Mask.bias`) parts, used by every backend and by :func:`geoattn.energy`;
* :func:`masked_softmax`: the softmax whose fully masked rows are zeros.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor


def causal_allowed(L: int, S: int, device=None, offset: int = 0) -> Tensor:
    """(L, S) bool, True where query i may see key j: ``j ≤ i + offset`` (top-left aligned; ``offset``
    = keys already cached before the first query)."""
    return torch.ones(L, S, dtype=torch.bool, device=device).tril(diagonal=offset)


def causal_mod(b, h, q_idx, kv_idx):
    """:func:`causal_allowed` as a FlexAttention ``mask_mod`` (index form, for fused kernels)."""
    return q_idx >= kv_idx


@dataclass
class Mask:
    """One call's mask, normalised to 4 dims broadcastable to (B, H, L, S).

    ``tensor`` is the user's mask, bool (True = take part) or float (added to the scores), or None;
    ``is_causal`` is SDPA's top-left causal mask; ``device`` is where the causal triangle is built.
    """

    tensor: Tensor | None
    is_causal: bool
    L: int
    S: int
    device: torch.device | str | None = None
    boolean: Tensor | None = field(init=False)   # the bool tensor part (no causal triangle), or None
    bias: Tensor | None = field(init=False)      # the additive float part, or None
    # :attr:`allowed`, built once (a plain attribute, not functools.cached_property, whose lock breaks
    # torch.compile's graph); a one-element list until then
    _allowed: list = field(init=False, default_factory=list, repr=False)

    def __post_init__(self) -> None:
        t = self.tensor
        self.boolean = t if t is not None and t.dtype == torch.bool else None
        self.bias = t if t is not None and t.is_floating_point() else None

    @property
    def allowed(self) -> Tensor | None:
        """Boolean part including the causal triangle, broadcastable to (B, H, L, S), or None (built once)."""
        if not self.is_causal:
            return self.boolean
        if not self._allowed:
            device = self.device if self.device is not None else getattr(self.tensor, "device", None)
            causal = causal_allowed(self.L, self.S, device)
            self._allowed.append(causal if self.boolean is None else self.boolean & causal)
        return self._allowed[0]


def mask_to_4d(mask: Tensor | None, lead: torch.Size, L: int, S: int) -> Tensor | None:
    """A user's (…, L, S)-broadcastable mask for a query with leading dims ``lead`` → 4 dims."""
    if mask is None:
        return None
    if len(lead) <= 2:  # keep broadcast dims: (…, L, S) → (1|B, 1|H, L|1, S|1)
        return mask.reshape(*([1] * (4 - mask.dim())), *mask.shape)
    return mask.expand(*lead, L, S).reshape(math.prod(lead[:-1]), lead[-1], L, S)


def masked_softmax(score: Tensor, allowed: Tensor | None = None) -> Tensor:
    """Softmax over the last dim with the row max subtracted; rows with no allowed key give zeros (also
    when there is no key at all: S = 0)."""
    if allowed is not None:
        score = score.masked_fill(~allowed, float("-inf"))
    if score.shape[-1] == 0:  # amax over an empty dim is an error; there is nothing to normalise
        return score
    row_max = score.amax(dim=-1, keepdim=True).detach()
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    p = torch.exp(score - row_max)
    total = p.sum(dim=-1, keepdim=True)
    return p / torch.where(total > 0, total, torch.ones_like(total))


def exclude_self(attn_mask: Tensor | None, is_causal: bool, L: int, S: int, device) -> tuple[Tensor, bool]:
    """Fold "query i never attends to key i" into the user's mask, so every backend honours it.

    Returns ``(mask, is_causal=False)``: a bool mask (True = take part) when the user's is bool or
    absent (the causal mask folded in), else the float mask with -inf on the diagonal. Needs L == S.
    """
    if L != S:
        raise ValueError(f"exclude_self drops key i for query i, so it needs as many queries as keys; got L={L} "
                         f"queries and S={S} keys (use it for self-attention, or pass an explicit attn_mask)")
    allowed = ~torch.eye(L, S, dtype=torch.bool, device=device)
    if is_causal:
        allowed = allowed & causal_allowed(L, S, device)
    if attn_mask is None:
        return allowed, False
    if attn_mask.dtype == torch.bool:
        return attn_mask & allowed, False
    return attn_mask.masked_fill(~allowed, float("-inf")), False


# -- nn.MultiheadAttention's convention (True = ignore) --------------------------------------------
def _check_layer_mask(name: str, mask: Tensor, shapes: list[tuple[int, ...]], fix: str, device) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor (bool or float), got {type(mask).__name__}")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(f"{name} must be bool (True = ignore) or floating (added to the scores), got {mask.dtype}")
    if device is not None and mask.device != torch.device(device):
        raise ValueError(f"{name} is on {mask.device} but the inputs are on {device}; move it with "
                         f"{name}.to(query.device)")
    if tuple(mask.shape) not in shapes:
        raise ValueError(f"{name} has shape {tuple(mask.shape)} but must be one of {shapes}; {fix}")


def _as_bias(ignore: Tensor, dtype: torch.dtype) -> Tensor:
    """``True`` = ignore → -inf; float masks are added as they are."""
    if ignore.dtype == torch.bool:
        return torch.zeros(ignore.shape, dtype=dtype, device=ignore.device).masked_fill(ignore, float("-inf"))
    return ignore.to(dtype)


def merge_masks(attn_mask: Tensor | None, key_padding_mask: Tensor | None, B: int, H: int, L: int, S: int,
                extra: int, is_causal: bool, dtype: torch.dtype, device) -> Tensor | None:
    """One mask for :func:`geoattn.attention`, broadcastable to (B, H, L, S + extra).

    ``attn_mask`` (L, S) or (B·H, L, S) and ``key_padding_mask`` (B, S) in ``nn.MultiheadAttention``'s
    convention (True = ignore, float added); ``extra`` key columns (``bias_k``, ``add_zero_attn``) are
    never masked. All-bool masks stay bool (True = take part), otherwise they are summed as float
    biases, as PyTorch does.
    """
    if is_causal and attn_mask is None:
        attn_mask = ~causal_allowed(L, S, device)
    parts: list[Tensor] = []
    if attn_mask is not None:
        _check_layer_mask("attn_mask", attn_mask, [(L, S), (B * H, L, S)],
                          f"use (L, S) = ({L}, {S}) for one mask or (B·num_heads, L, S) = ({B * H}, {L}, {S}) "
                          "per batch and head", device)
        parts.append(attn_mask.view(B, H, L, S) if attn_mask.dim() == 3 else attn_mask.view(1, 1, L, S))
    if key_padding_mask is not None:
        _check_layer_mask("key_padding_mask", key_padding_mask, [(B, S)],
                          f"use (batch, key length) = ({B}, {S}) with True (or -inf) at the padded keys", device)
        parts.append(key_padding_mask.view(B, 1, 1, S))
    if not parts:
        return None
    if all(p.dtype == torch.bool for p in parts):
        ignore = parts[0] if len(parts) == 1 else parts[0] | parts[1]
        allowed = ~ignore
        if extra:
            allowed = torch.cat([allowed, allowed.new_ones(*allowed.shape[:-1], extra)], dim=-1)
        return allowed
    bias = _as_bias(parts[0], dtype) if len(parts) == 1 else _as_bias(parts[0], dtype) + _as_bias(parts[1], dtype)
    if extra:
        bias = torch.cat([bias, bias.new_zeros(*bias.shape[:-1], extra)], dim=-1)
    return bias


# -- the backbone's masks (geoattn.models) ----------------------------------------------------------
def padding_to_allowed(padding_mask: Tensor | None, B: int, S: int, name: str = "padding_mask") -> Tensor | None:
    """(B, S) with True = padding → geoattn's (B, 1, 1, S) with True = take part."""
    if padding_mask is None:
        return None
    if not isinstance(padding_mask, Tensor) or padding_mask.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor (True = padding), got "
                        f"{getattr(padding_mask, 'dtype', type(padding_mask).__name__)}")
    if tuple(padding_mask.shape) != (B, S):
        raise ValueError(f"{name} has shape {tuple(padding_mask.shape)} but the tokens are (B, T) = ({B}, {S}); "
                         "give one bool per token, True at padding")
    return ~padding_mask[:, None, None, :]


def attention_mask_to_keep(attention_mask: Tensor, B: int, S: int, name: str = "attention_mask") -> Tensor:
    """Hugging Face's ``attention_mask`` (B, S), 1 (or True) at real tokens and 0 at padding → bool (B, S),
    True at real tokens. Integer masks must hold 0 and 1 only (checked on CPU tensors)."""
    from .validation import validation_enabled

    if not isinstance(attention_mask, Tensor) or attention_mask.is_floating_point() or attention_mask.is_complex():
        raise TypeError(f"{name} must be a bool or integer tensor (1 = real token, 0 = padding, as in Hugging Face), "
                        f"got {getattr(attention_mask, 'dtype', type(attention_mask).__name__)}")
    if tuple(attention_mask.shape) != (B, S):
        raise ValueError(f"{name} has shape {tuple(attention_mask.shape)} but must be (B, positions) = ({B}, {S}): "
                         "one entry per token, 1 = real token, 0 = padding (with a KV cache: one per cached and new "
                         "token, as in Hugging Face)")
    if attention_mask.dtype == torch.bool:
        return attention_mask
    if attention_mask.numel() and attention_mask.device.type == "cpu" and validation_enabled():
        if int(attention_mask.min()) < 0 or int(attention_mask.max()) > 1:
            raise ValueError(f"{name} may hold 0 (padding) and 1 (real token) only, got values in "
                             f"[{int(attention_mask.min())}, {int(attention_mask.max())}]")
    return attention_mask != 0


def self_mask(T: int, past: int, causal: bool, allowed_keys: Tensor | None, device) -> tuple[Tensor | None, bool]:
    """Mask for T new queries after ``past`` cached keys: ``(mask (·, ·, T, past+T) | None, is_causal)``.

    SDPA's ``is_causal`` is top-left aligned, so it is used only without a cache; with one, query i
    (position past+i) sees keys j ≤ past+i, written out as a bool mask (nothing to mask when T = 1).
    """
    if not causal:
        return allowed_keys, False
    if allowed_keys is None and past == 0:
        return None, True
    if allowed_keys is None and T == 1:
        return None, False
    tri = causal_allowed(T, past + T, device, offset=past)
    return (tri if allowed_keys is None else allowed_keys & tri), False
