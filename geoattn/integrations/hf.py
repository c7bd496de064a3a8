"""Hugging Face transformers integration through the library's own plug-in point, ``AttentionInterface``.

:func:`register` adds one attention function per geometry, named ``geoattn_<geometry>``
(``geoattn_poincare``, ``geoattn_sphere``, …), to ``transformers.AttentionInterface`` and the sdpa mask
builder under the same name to ``transformers.masking_utils.AttentionMaskInterface`` (without it the
function would receive ``attention_mask=None`` and padding would be silently ignored). Then::

    model = AutoModel.from_pretrained(path, attn_implementation="geoattn_poincare")  # default parameters
    model.set_attn_implementation("geoattn_sphere")                                   # also works

Geometry parameters live on the attention modules: :func:`swap_hf` (what :func:`geoattn.swap` does
for a ``PreTrainedModel``) attaches a geometry module as ``module.geoattn_geometry`` to every module that
calls the attention interface, so its parameters train, and ``save_pretrained`` writes them;
:func:`from_pretrained` loads such a checkpoint back. A module with no attached geometry (a model built
with ``attn_implementation="geoattn_<name>"`` and never swapped) uses the geometry's default parameters.

Loading: a checkpoint saved after a swap must be loaded with :func:`from_pretrained` (this module's); a
plain ``Model.from_pretrained`` skips the geometry tensors as unexpected keys and runs the attention
implementation it is given (sdpa by default).

``output_attentions=True`` works with every geometry: the call then runs on geoattn's dense backend,
which returns the weights (O(L²) memory); otherwise the fused backends run and the weights are None.

Scaling: the model's ``scaling`` (usually ``1/√d``) is passed unchanged to the euclidean geometry, so it
equals sdpa; every other geometry gets ``scaling·√d``, the model's scaling relative to the standard
``1/√d`` (1 for most models), so its temperature τ keeps the meaning it has in
:func:`geoattn.attention`.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import attention
from ..geometry import Geometry, available_geometries, geometry_class, geometry_for_module, make_geometry
from ..geometry.registry import rebuild_options
from .hf_modules import attention_modules, geometry_tensors, head_counts

GEOMETRY_ATTR = "geoattn_geometry"
PREFIX = "geoattn_"
CONFIG_KEY = "geoattn"

try:  # the optional extra: ``pip install geoattn[hf]``
    import transformers
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
except ImportError:  # pragma: no cover - exercised only without the extra
    transformers = None


def _require_transformers() -> None:
    if transformers is None:
        raise ImportError(
            "the Hugging Face integration needs transformers; install the extra with "
            "`pip install 'geoattn[hf]'`"
        )


def implementation_name(geometry: str) -> str:
    """The ``attn_implementation`` string of a geometry: ``"poincare"`` → ``"geoattn_poincare"``."""
    return PREFIX + geometry


def register() -> list[str]:
    """Register ``geoattn_<name>`` for every geometry in :func:`geoattn.available_geometries`.

    Idempotent; call it again after registering a new geometry class. Returns the registered names.
    """
    _require_transformers()
    names = []
    for geometry in available_geometries():
        name = implementation_name(geometry)
        AttentionInterface.register(name, _make_forward(geometry))
        AttentionMaskInterface.register(name, sdpa_mask)  # same mask format as sdpa: bool, True = attend
        names.append(name)
    return names


# -- the attention function ----------------------------------------------------------------------
_DEFAULTS: dict[tuple[str, int, str], Geometry] = {}


def _default_geometry(name: str, head_dim: int, device: torch.device) -> Geometry:
    """The geometry with default parameters (one cached instance per name, head size and device)."""
    key = (name, head_dim, str(device))
    if key not in _DEFAULTS:
        _DEFAULTS[key] = make_geometry(name, head_dim=head_dim).to(device).requires_grad_(False)
    return _DEFAULTS[key]


def _geometry_for(module: nn.Module, name: str, query: Tensor) -> Geometry:
    geom = getattr(module, GEOMETRY_ATTR, None)
    if geom is None:
        return _default_geometry(name, query.shape[-1], query.device)
    if geom.name != name:
        raise ValueError(
            f"{type(module).__name__} carries a {geom.name!r} geometry (attached by geoattn.swap) but the model's "
            f"attn_implementation is {implementation_name(name)!r}; call "
            f"model.set_attn_implementation({implementation_name(geom.name)!r}) or geoattn.swap(model, {name!r})"
        )
    return geom


def _attentions_requested() -> bool:
    """Whether the running forward collects attention weights (``output_attentions=True``).

    transformers 5 records them with hooks on the attention modules' outputs and tells no one but
    its collector, so read that; on versions without it the answer is "no" (weights stay None).
    """
    try:
        from transformers.utils.output_capturing import _active_collector
    except ImportError:  # pragma: no cover - other transformers versions
        return False
    collected = _active_collector.get()
    return bool(collected) and "attentions" in collected


def _unsupported(kwargs: dict[str, Any]) -> None:
    for key, what in (("softcap", "attention-logit soft-capping"), ("s_aux", "attention sinks"),
                      ("position_bias", "an additive position bias")):
        if kwargs.get(key) is not None:
            raise ValueError(
                f"this model passes {key}= ({what}) to its attention function, which geoattn's geometries do "
                "not implement; keep this model on attn_implementation='eager' or 'sdpa'"
            )


def _make_forward(geometry: str):
    def geoattn_forward(
        module: nn.Module,
        query: Tensor,                       # (B, H, L, D)
        key: Tensor,                         # (B, Hkv, S, D)
        value: Tensor,                       # (B, Hkv, S, Dv)
        attention_mask: Tensor | None,       # bool (B, 1, L, S), True = attend, or None
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs,
    ) -> tuple[Tensor, Tensor | None]:
        _unsupported(kwargs)
        geom = _geometry_for(module, geometry, query)
        q_len, kv_len = query.shape[2], key.shape[2]
        # the causal rule of transformers' sdpa_attention_forward: sdpa_mask returns None when the causal
        # pattern alone is needed, and a single query (decoding with a cache) sees every cached key
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        causal = bool(q_len > 1 and attention_mask is None and causal)
        if causal and kv_len > q_len:  # prefill of an empty static cache: keys past q_len are empty slots
            key, value = key[:, :, :q_len], value[:, :, :q_len]
        if scaling is not None and geom.name != "euclidean":
            scaling = scaling * math.sqrt(query.shape[-1])  # relative to the standard 1/√d (see module doc)
        return_weights = _attentions_requested()
        result = attention(
            query, key, value, geometry=geom, attn_mask=attention_mask,
            dropout_p=dropout if module.training else 0.0, is_causal=causal, scale=scaling,
            enable_gqa=key.shape[1] != query.shape[1], return_weights=return_weights,
        )
        out, weights = result if return_weights else (result, None)
        return out.transpose(1, 2).contiguous(), weights  # (B, L, H, Dv)

    geoattn_forward.__name__ = f"geoattn_{geometry}_forward"
    geoattn_forward.__doc__ = f"transformers attention function: {geometry} geometry via geoattn.attention."
    return geoattn_forward


# -- swap and save/load --------------------------------------------------------------------------
def check_model(model: nn.Module) -> list[tuple[nn.Module, int, int]]:
    """The attention modules of a ``PreTrainedModel`` with their (query heads, head size), or a clear error."""
    _require_transformers()
    name = type(model).__name__
    if not type(model)._can_set_attn_implementation():
        raise ValueError(
            f"{name} does not route its attention through transformers' AttentionInterface (its modeling file "
            "never calls ALL_ATTENTION_FUNCTIONS.get_interface), so its attention cannot be swapped; use a "
            "model class ported to the attention interface"
        )
    softcap = getattr(model.config, "attn_logit_softcapping", None)
    if softcap is not None:
        raise ValueError(
            f"{name} soft-caps its attention logits (config.attn_logit_softcapping={softcap}), which geoattn's "
            "geometries do not implement; set config.attn_logit_softcapping=None first if you accept the change"
        )
    modules = attention_modules(model)
    if not modules:
        raise ValueError(
            f"geoattn.swap found no attention module in {name}: it looked for modules whose forward calls "
            "transformers' ALL_ATTENTION_FUNCTIONS (and for torch.nn.MultiheadAttention)"
        )
    return [(m, *head_counts(m)) for m in modules]


def swap_hf(model: nn.Module, geometry: str | Geometry, **geometry_params) -> nn.Module:
    """Put a ``PreTrainedModel`` on ``geoattn_<geometry>`` with trainable parameters per attention module.

    Attaches ``module.geoattn_geometry`` (``num_heads`` and ``head_dim`` = the module's unless given),
    selects the implementation with
    ``model.set_attn_implementation`` and records the geometry's options in ``model.config.geoattn`` so
    :func:`from_pretrained` can rebuild it. Returns ``model``.
    """
    register()
    name = geometry.name if isinstance(geometry, Geometry) else geometry
    geometry_class(name)  # unknown names fail here, with the list of available geometries
    found = check_model(model)
    built = [geometry_for_module(geometry, heads, head_dim, geometry_params, copy=True)  # all before any change
             for _, heads, head_dim in found]
    for (module, _, _), geom in zip(found, built):
        device = next((p.device for p in module.parameters()), torch.device("cpu"))
        if hasattr(module, GEOMETRY_ATTR):
            delattr(module, GEOMETRY_ATTR)
        module.add_module(GEOMETRY_ATTR, geom.to(device))
    impl = implementation_name(name)
    model.set_attn_implementation(impl)
    if model.config._attn_implementation != impl:
        raise ValueError(f"{type(model).__name__} refused attn_implementation={impl!r}; see the warning above")
    setattr(model.config, CONFIG_KEY, {"geometry": name, "options": rebuild_options(built[0])})
    return model


def from_pretrained(model_class, pretrained_model_name_or_path, **kwargs) -> nn.Module:
    """Load a checkpoint saved after :func:`geoattn.swap`, geometry parameters included.

    ``model_class`` is any transformers class with ``from_pretrained`` (``AutoModel``, ``BertModel``, …);
    ``kwargs`` go to it. The checkpoint's ``config.json`` names the geometry (key ``geoattn``); the
    model is loaded with ``attn_implementation="geoattn_<name>"``, swapped, and the geometry tensors are
    read from the checkpoint's safetensors file(s).
    """
    _require_transformers()
    register()

    config = kwargs.pop("config", None) or transformers.AutoConfig.from_pretrained(pretrained_model_name_or_path)
    spec = getattr(config, CONFIG_KEY, None)
    if not isinstance(spec, dict) or "geometry" not in spec:
        raise ValueError(
            f"{pretrained_model_name_or_path} has no '{CONFIG_KEY}' entry in its config, so it was not saved after "
            "geoattn.swap(); load it with from_pretrained(..., attn_implementation='geoattn_<geometry>') for "
            "default geometry parameters, then geoattn.swap(model, geometry, ...)"
        )
    name = spec["geometry"]
    kwargs["attn_implementation"] = implementation_name(name)
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the geometry tensors are "unexpected" until the swap below adds them
    try:
        model = model_class.from_pretrained(pretrained_model_name_or_path, config=config, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    swap_hf(model, name, **spec.get("options", {}))
    expected = {k: v for k, v in model.state_dict().items() if f".{GEOMETRY_ATTR}." in f".{k}"}
    stored = geometry_tensors(pretrained_model_name_or_path, expected, getattr(model, "base_model_prefix", ""))
    model.load_state_dict(stored, strict=False)  # only geometry keys; each geometry checks its tag (name, options)
    return model
