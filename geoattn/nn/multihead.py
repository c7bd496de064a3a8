"""``geoattn.MultiheadAttention``: a drop-in for :class:`torch.nn.MultiheadAttention` with a geometry.

Same constructor arguments, parameter names (``in_proj_weight`` or ``q/k/v_proj_weight``,
``in_proj_bias``, ``out_proj``, ``bias_k``/``bias_v``), ``forward`` signature, return value and mask
conventions as PyTorch's layer, so ``load_state_dict`` carries weights over from it. The only change:
the score of each head is ``score_geometry(q, k)`` (:mod:`geoattn.geometry`) instead of the scaled
dot product; with ``geometry="euclidean"`` it computes exactly what ``nn.MultiheadAttention`` does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..functional import attention
from ..geometry import Geometry, geometry_for_module
from ..masks import merge_masks


def _keep_off_fused_fast_path(module: nn.Module, args) -> None:
    """A no-op forward pre-hook. ``nn.TransformerEncoderLayer`` skips its fused C++ fast path (which reads
    ``in_proj_weight`` directly and would compute Euclidean attention) when a submodule has hooks."""
    return None


class MultiheadAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``softmax(score_geometry(q_h, k_h) + mask) · v_h`` in each head.

    ``geometry`` is a name (built with ``num_heads`` so curvature and temperature are per head, then
    ``**geometry_params``, e.g. ``curvature=-1.0, learnable=True``) or a :class:`geoattn.Geometry`.
    ``backend`` is passed to :func:`geoattn.attention` (``"auto"``: SDPA for affine geometries; the dense
    backend whenever ``need_weights=True``, as PyTorch's layer also leaves its fast path then).

    Differences from PyTorch, all documented: ``is_causal=True`` without ``attn_mask`` applies the
    causal mask (PyTorch raises); a query whose keys are all masked gives a zero output (PyTorch:
    NaN); returned weights are taken before dropout. Loading an ``nn.MultiheadAttention`` state_dict
    leaves the geometry's own parameters (absent from it) at their current values.

    The geometries' parameters (log-temperatures, signed or log curvatures, metric factors) are
    unconstrained Euclidean parameters, so no parameter of this layer is a ``geoopt.ManifoldParameter``;
    :func:`geoattn.riemannian_optimizer` (RiemannianAdam) trains a model that mixes this layer with
    manifold parameters (e.g. Poincaré-ball embeddings) correctly.
    """

    def __init__(self, embed_dim: int, num_heads: int, geometry: str | Geometry = "euclidean",
                 dropout: float = 0.0, bias: bool = True, add_bias_kv: bool = False,
                 add_zero_attn: bool = False, kdim: int | None = None, vdim: int | None = None,
                 batch_first: bool = False, device=None, dtype=None, backend: str = "auto",
                 **geometry_params) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or not isinstance(num_heads, int) or embed_dim < 1 or num_heads < 1:
            raise ValueError(f"embed_dim and num_heads must be positive ints, got {embed_dim!r}, {num_heads!r}")
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim={embed_dim} is not divisible by num_heads={num_heads}; each head gets "
                             f"embed_dim // num_heads features, so pick e.g. num_heads in "
                             f"{[h for h in range(1, embed_dim + 1) if embed_dim % h == 0][:8]}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        fk = {"device": device, "dtype": dtype}
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.dropout, self.batch_first, self.add_zero_attn, self.backend = dropout, batch_first, add_zero_attn, backend
        if self._qkv_same_embed_dim:
            self.in_proj_weight = nn.Parameter(torch.empty(3 * embed_dim, embed_dim, **fk))
            self.register_parameter("q_proj_weight", None)
            self.register_parameter("k_proj_weight", None)
            self.register_parameter("v_proj_weight", None)
        else:
            self.q_proj_weight = nn.Parameter(torch.empty(embed_dim, embed_dim, **fk))
            self.k_proj_weight = nn.Parameter(torch.empty(embed_dim, self.kdim, **fk))
            self.v_proj_weight = nn.Parameter(torch.empty(embed_dim, self.vdim, **fk))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = nn.Parameter(torch.empty(3 * embed_dim, **fk))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = nn.modules.linear.NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias, **fk)
        if add_bias_kv:
            self.bias_k = nn.Parameter(torch.empty(1, 1, embed_dim, **fk))
            self.bias_v = nn.Parameter(torch.empty(1, 1, embed_dim, **fk))
        else:
            self.bias_k = self.bias_v = None
        self.geometry = geometry_for_module(geometry, num_heads, self.head_dim, geometry_params).to(device=device)
        self._reset_parameters()
        self.register_forward_pre_hook(_keep_off_fused_fast_path)

    def _reset_parameters(self) -> None:
        """PyTorch's initialisation (xavier-uniform projections, zero biases, normal bias_k/v)."""
        if self._qkv_same_embed_dim:
            nn.init.xavier_uniform_(self.in_proj_weight)
        else:
            for w in (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight):
                nn.init.xavier_uniform_(w)
        if self.in_proj_bias is not None:
            nn.init.constant_(self.in_proj_bias, 0.0)
            nn.init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            nn.init.xavier_normal_(self.bias_k)
            nn.init.xavier_normal_(self.bias_v)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # An nn.MultiheadAttention state_dict has no geometry entries: keep the current ones.
        geo_prefix = prefix + "geometry."
        if not any(k.startswith(geo_prefix) for k in state_dict):
            for name, t in self.geometry.state_dict().items():
                state_dict[geo_prefix + name] = t
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _project(self, query: Tensor, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        E = self.embed_dim
        b = self.in_proj_bias
        bq, bk, bv = (None, None, None) if b is None else (b[:E], b[E:2 * E], b[2 * E:])
        if self._qkv_same_embed_dim:
            w = self.in_proj_weight
            wq, wk, wv = w[:E], w[E:2 * E], w[2 * E:]
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _check_inputs(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        for name, t, want in (("query", query, self.embed_dim), ("key", key, self.kdim), ("value", value, self.vdim)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if t.is_nested:
                raise ValueError(f"{name} is a nested tensor (nn.TransformerEncoder makes them from a padding "
                                 "mask in eval mode); build the encoder with enable_nested_tensor=False so the "
                                 "padding mask reaches this layer")
            if t.dim() not in (2, 3):
                raise ValueError(f"{name} must be 3-D ({'(B, L, E)' if self.batch_first else '(L, B, E)'}) "
                                 f"or 2-D unbatched (L, E), got shape {tuple(t.shape)}")
            if t.shape[-1] != want:
                hint = {"query": "embed_dim", "key": "kdim", "value": "vdim"}[name]
                raise ValueError(f"{name} has {t.shape[-1]} features but the layer expects {hint}={want}; "
                                 f"project the input or build the layer with {hint}={t.shape[-1]}")
        if not query.dim() == key.dim() == value.dim():
            raise ValueError(f"query, key and value must all be batched or all unbatched, got shapes "
                             f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
        if key.shape[:-1] != value.shape[:-1]:
            raise ValueError(f"key and value must have the same length and batch size, got shapes "
                             f"{tuple(key.shape)} and {tuple(value.shape)}")
        bdim = 0 if self.batch_first else 1
        if query.dim() == 3 and query.shape[bdim] != key.shape[bdim]:
            raise ValueError(f"query and key have different batch sizes ({query.shape[bdim]} vs {key.shape[bdim]}); "
                             f"batch_first={self.batch_first} puts the batch in dim {bdim}")

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[Tensor, Tensor | None]:
        """Inputs (L, B, E) / (S, B, kdim) / (S, B, vdim) (batch first with ``batch_first=True``, or
        unbatched 2-D). ``key_padding_mask`` (B, S): True (or -inf) = ignore that key. ``attn_mask``
        (L, S) or (B·H, L, S): True = *not allowed*, or float added to the scores. Returns
        ``(output (L, B, E), weights (B, L, S) averaged over heads, or (B, H, L, S), or None)``."""
        self._check_inputs(query, key, value)
        unbatched = query.dim() == 2
        if unbatched:
            query, key, value = query.unsqueeze(0), key.unsqueeze(0), value.unsqueeze(0)
            if key_padding_mask is not None and key_padding_mask.dim() == 1:
                key_padding_mask = key_padding_mask.unsqueeze(0)
        elif not self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        B, L, _ = query.shape                                                  # batch first from here on
        H, D = self.num_heads, self.head_dim
        q, k, v = self._project(query, key, value)                             # (B, L|S, E)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.expand(B, 1, -1)], dim=1)
            v = torch.cat([v, self.bias_v.expand(B, 1, -1)], dim=1)
        q, k, v = (t.view(B, t.shape[1], H, D).transpose(1, 2) for t in (q, k, v))  # (B, H, L|S, D)
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(B, H, 1, D)], dim=2)
            v = torch.cat([v, v.new_zeros(B, H, 1, D)], dim=2)
        S = k.shape[2]
        extra = S - key.shape[1]                                               # bias_k / zero-attn columns
        if is_causal and attn_mask is None and key_padding_mask is None:
            mask, causal = None, True
        else:
            mask, causal = merge_masks(attn_mask, key_padding_mask, B, H, L, S - extra, extra, is_causal,
                                       q.dtype, q.device), False
        dropout_p = self.dropout if self.training else 0.0
        res = attention(q, k, v, geometry=self.geometry, attn_mask=mask, dropout_p=dropout_p,
                        is_causal=causal, backend=self.backend, return_weights=need_weights)
        out, weights = res if need_weights else (res, None)
        out = self.out_proj(out.transpose(1, 2).reshape(B, L, self.embed_dim))  # (B, L, E)
        if weights is not None and average_attn_weights:
            weights = weights.mean(dim=1)                                      # (B, L, S)
        if unbatched:
            return out.squeeze(0), (weights.squeeze(0) if weights is not None else None)
        if not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights
