"""``geoattn.swap``: change the attention geometry of an existing model in place.

* plain PyTorch: every :class:`torch.nn.MultiheadAttention` (also inside ``nn.TransformerEncoder``,
  ``nn.TransformerDecoder`` and ``nn.Transformer``) becomes a :class:`geoattn.MultiheadAttention` with the
  same constructor arguments and the weights carried over (``load_state_dict``);
* geoattn's own modules (``geoattn.MultiheadAttention``, the attention of :mod:`geoattn.models`) get a
  new geometry module (their ``config`` is not rewritten);
* Hugging Face transformers: every ``PreTrainedModel`` inside the model goes on
  ``attn_implementation="geoattn_<geometry>"`` with a geometry module per attention module
  (:func:`geoattn.integrations.hf.swap_hf`).

PyTorch's encoders have fused inference fast paths that read ``in_proj_weight`` and compute
dot-product attention themselves, bypassing ``self_attn.forward``: ``geoattn.MultiheadAttention`` keeps
``nn.TransformerEncoderLayer`` off ``torch._transformer_encoder_layer_fwd`` (a no-op forward pre-hook),
and ``swap`` sets ``use_nested_tensor = False`` on every ``nn.TransformerEncoder`` it changes.
"""
from __future__ import annotations

import sys

from torch import nn

from ..geometry import Geometry, geometry_class, geometry_for_module
from ..nn import MultiheadAttention


def _from_torch(old: nn.MultiheadAttention, geometry: str | Geometry, params: dict) -> MultiheadAttention:
    """A :class:`geoattn.MultiheadAttention` with ``old``'s configuration, weights and train/eval mode."""
    weight = old.in_proj_weight if old.in_proj_weight is not None else old.q_proj_weight
    geom = geometry_for_module(geometry, old.num_heads, old.head_dim, params, copy=True)
    new = MultiheadAttention(
        old.embed_dim, old.num_heads, geometry=geom, dropout=old.dropout, bias=old.in_proj_bias is not None,
        add_bias_kv=old.bias_k is not None, add_zero_attn=old.add_zero_attn, kdim=old.kdim, vdim=old.vdim,
        batch_first=old.batch_first, device=weight.device, dtype=weight.dtype,
    )
    new.load_state_dict(old.state_dict())  # the geometry keeps its own parameters (absent from old's state)
    new.geometry.to(weight.device)
    new.train(old.training)
    return new


def _swap_torch(model: nn.Module, geometry: str | Geometry, params: dict) -> int:
    """Replace every nn.MultiheadAttention of ``model``; give geoattn's own attention modules a new geometry.

    Returns how many attention modules changed."""
    slots = [(parent, name, child) for parent in model.modules()
             for name, child in parent._modules.items()  # (named_children skips repeats of a shared module)
             if isinstance(child, nn.MultiheadAttention)]
    new: dict[int, MultiheadAttention] = {}  # built before any change, so a failure leaves the model as it was
    for _, _, child in slots:
        if id(child) not in new:  # a module shared by several parents is replaced once
            new[id(child)] = _from_torch(child, geometry, params)
    from ..models.layers import Attention  # geoattn's backbone (imported here: geoattn.models loads after us)

    # geoattn's own attention modules (swapped before, or the backbone's) get a new geometry
    ours = {id(m): m for m in model.modules() if isinstance(m, (MultiheadAttention, Attention))}
    device = {key: next(m.parameters()).device for key, m in ours.items()}
    geoms = {key: geometry_for_module(geometry, m.num_heads, m.head_dim, params, copy=True) for key, m in ours.items()}
    for parent, name, child in slots:
        setattr(parent, name, new[id(child)])
    for key, m in ours.items():
        m.geometry = geoms[key].to(device[key])
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and isinstance(m.layers[0].self_attn, MultiheadAttention):
            m.use_nested_tensor = False  # its nested-tensor fast path also bypasses self_attn.forward
    return len(new) + len(ours)


def _pretrained_models(model: nn.Module) -> list[nn.Module]:
    """The outermost Hugging Face ``PreTrainedModel`` s in ``model`` (``model`` itself if it is one)."""
    if "transformers" not in sys.modules:  # never imported: the model cannot hold a PreTrainedModel
        return []
    from transformers import PreTrainedModel

    found: list[nn.Module] = []
    inside: set[int] = set()
    for m in model.modules():
        if isinstance(m, PreTrainedModel) and id(m) not in inside:
            found.append(m)
            inside.update(id(sub) for sub in m.modules())
    return found


def swap(model: nn.Module, geometry: str | Geometry, **geometry_params) -> nn.Module:
    """Change the attention geometry of ``model`` in place and return it.

    ``geometry`` is a name from :func:`geoattn.available_geometries` (built per attention module with
    ``num_heads`` = its heads and ``**geometry_params``, e.g. ``curvature=-1.0, learnable=True``) or a
    :class:`geoattn.Geometry` (deep-copied per module, so every layer trains its own parameters).

    ``geometry="euclidean"`` reproduces the original model's outputs, padding included (measured, float32,
    CPU, torch 2.13): exactly (max |Δ| = 0) where PyTorch runs its ordinary path (training, or autograd
    on) and against a Hugging Face model on its default ``attn_implementation="sdpa"``; to within 2e-6
    (measured max 1.4e-6: eval-mode ``nn.TransformerEncoder`` under ``no_grad``, d_model up to 256, 6
    layers, 128 tokens) where PyTorch would take its fused inference fast path, because the swapped
    layers stay off that path (it computes Euclidean attention itself, bypassing the geometry) and the
    fused kernel rounds differently; to within 5e-6 at real tokens (measured max 3.0e-6, all-MiniLM-L6-v2)
    against ``attn_implementation="eager"``, whose softmax and matmuls are not SDPA's.
    A bare ``nn.MultiheadAttention``
    cannot change its class in place: it is returned as a new :class:`geoattn.MultiheadAttention`
    (use the return value).

    Raises ``TypeError`` for a non-module, ``ValueError`` for an unknown geometry, a model with no
    attention that swap recognises, or a geometry the model cannot host (see the messages).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"geoattn.swap expects a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(geometry, Geometry):
        geometry_class(geometry)  # unknown names fail before anything changes
    if type(model) is nn.MultiheadAttention:
        return _from_torch(model, geometry, geometry_params)
    pretrained = _pretrained_models(model)
    if pretrained:
        from .hf import check_model, swap_hf

        for hf_model in pretrained:
            check_model(hf_model)  # all checks first, so a failing model is left untouched
    swapped = _swap_torch(model, geometry, geometry_params)
    for hf_model in pretrained:
        swap_hf(hf_model, geometry, **geometry_params)
    if not swapped and not pretrained:
        raise ValueError(
            f"geoattn.swap found no attention to swap in {type(model).__name__}: it looks for "
            "torch.nn.MultiheadAttention modules (also inside nn.Transformer*), geoattn's own attention modules "
            "and Hugging Face transformers "
            "PreTrainedModels whose attention goes through transformers' AttentionInterface; a custom attention "
            "module can call geoattn.attention(q, k, v, geometry=...) directly"
        )
    return model
