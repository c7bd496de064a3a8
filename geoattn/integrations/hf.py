"""Hugging Face transformers integration through the library's own plug-in point, ``AttentionInterface``.

:func:`register` adds one attention function per geometry, named ``geoattn_<geometry>``
(``geoattn_poincare``, ``geoattn_sphere``, …), to ``transformers.AttentionInterface`` and the sdpa mask
builder under the same name to ``transformers.masking_utils.AttentionMaskInterface`` (without it the
function would receive ``attention_mask=None`` and padding would be silently ignored). Then::

    model = AutoModel.from_pretrained(path, attn_implementation="geoattn_poincare")  # default parameters
    model.set_attn_implementation("geoattn_sphere")                                   # also works

Geometry parameters live on the attention modules: :func:`swap_hf` (what :func:`geoattn.swap` does
for a ``PreTrainedModel``) attaches a geometry module as ``module.geoattn_geometry`` to every module that
calls the attention interface, so its parameters train, and ``save_pretrained`` writes them. A module with
no attached geometry (a model built with ``attn_implementation="geoattn_<name>"`` and never swapped) uses
the geometry's default parameters.

Loading: the swap records two entries in the model's config, which ``save_pretrained`` writes to
``config.json``: ``geoattn`` (the geometry's name and its constructor options) and ``attn_implementation``
(``"geoattn_<name>"``, which transformers reads back when it loads the config). So a plain
``AutoModel.from_pretrained(path)`` (or any model class) rebuilds the swapped model:

* with geoattn imported (geoattn registers the attention functions once transformers is imported too,
  in either order), transformers builds the model on ``geoattn_<name>``, and a torch module-registration hook
  (:func:`torch.nn.modules.module.register_module_module_registration_hook`, installed by :func:`register`)
  attaches the saved geometry to each attention module as the model is built, from its config's
  ``geoattn`` entry, so the checkpoint's geometry tensors load as ordinary weights;
* without geoattn, transformers refuses the config: ``ValueError: Specified
  `attn_implementation="geoattn_<name>"` is not supported``. It never loads the Euclidean model silently.

Passing another ``attn_implementation`` to ``from_pretrained`` still attaches and loads the geometry, and
warns that the model then ignores it. :func:`from_pretrained` (this module's) is a convenience that also
loads checkpoints saved before ``attn_implementation`` was recorded, and raises if a geometry tensor is
missing. Geometry classes registered after ``import geoattn`` need :func:`register` called again before
a plain load (``swap`` calls it).

``output_attentions=True`` works with every geometry: the call then runs on geoattn's dense backend,
which returns the weights (O(L²) memory); otherwise the fused backends run and the weights are None.

Scaling: the model's ``scaling`` (usually ``1/√d``) is passed unchanged to the euclidean geometry, so it
equals sdpa; every other geometry gets ``scaling·√d``, the model's scaling relative to the standard
``1/√d`` (1 for most models), so its temperature τ keeps the meaning it has in
:func:`geoattn.attention`.
"""
from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from ..functional import attention
from ..geometry import Geometry, available_geometries, geometry_class, geometry_for_module, make_geometry
from ..geometry.registry import rebuild_options
from .hf_modules import attention_modules, calls_interface, head_counts

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
    """Register ``geoattn_<name>`` for every geometry in :func:`geoattn.available_geometries`, and the
    hook that rebuilds swapped checkpoints on a plain ``from_pretrained`` (see the module doc).

    Idempotent; geoattn calls it once both it and transformers are imported. Call it again after
    registering a new geometry class. Returns the registered names.
    """
    global _BUILD_HOOK
    _require_transformers()
    names = []
    for geometry in available_geometries():
        name = implementation_name(geometry)
        AttentionInterface.register(name, _make_forward(geometry))
        AttentionMaskInterface.register(name, sdpa_mask)  # same mask format as sdpa: bool, True = attend
        names.append(name)
    if _BUILD_HOOK is None:
        _BUILD_HOOK = torch.nn.modules.module.register_module_module_registration_hook(_attach_saved_geometry)
    return names


# -- rebuilding a swapped model from its config ----------------------------------------------------
_BUILD_HOOK = None  # the handle of the module-registration hook, once installed


def _record(config, name: str, options: dict[str, Any]) -> None:
    """Write the swap into ``config``: the geometry to rebuild, and the attention implementation that
    transformers reads back from ``config.json`` (the ``attn_implementation`` key, which it pops into
    ``config._attn_implementation`` on load; a plain attribute, because transformers does not save
    ``_attn_implementation`` itself)."""
    setattr(config, CONFIG_KEY, {"geometry": name, "options": options})
    config.attn_implementation = implementation_name(name)


def _attach(module: nn.Module, geometry: Geometry) -> None:
    if hasattr(module, GEOMETRY_ATTR):
        delattr(module, GEOMETRY_ATTR)
    module.add_module(GEOMETRY_ATTR, geometry)


def _attach_saved_geometry(parent: nn.Module, name: str, child: nn.Module | None) -> None:
    """torch's module-registration hook: when an attention module whose config carries a ``geoattn``
    entry (a model built from a swapped model's config, e.g. by ``from_pretrained``) is assigned to its
    parent, attach that geometry with the saved options. Its tensors are then ordinary weights of the
    model, which ``from_pretrained`` fills from the checkpoint.

    Built on the CPU when transformers builds the model on the meta device (the geometries check their
    parameter values as they are made); the loader moves the checkpoint's tensors where they belong.
    """
    config = None if child is None else child.__dict__.get("config")
    spec = getattr(config, CONFIG_KEY, None) if isinstance(config, transformers.PretrainedConfig) else None
    if not isinstance(spec, dict) or GEOMETRY_ATTR in child._modules or not calls_interface(type(child)):
        return None
    geometry, options = spec["geometry"], spec.get("options", {})
    heads, head_dim = head_counts(child)
    device = torch.get_default_device()
    with torch.device("cpu" if device.type == "meta" else device):
        _attach(child, geometry_for_module(geometry, heads, head_dim, options))
    _record(config, geometry, options)  # so that saving the loaded model keeps it
    impl = implementation_name(geometry)
    if config._attn_implementation != impl:
        warnings.warn(
            f"this {type(child).__name__} was saved after geoattn.swap with the {geometry!r} geometry, which is "
            f"loaded, but the model runs attn_implementation={config._attn_implementation!r}, which ignores it; "
            f"leave attn_implementation out (or pass {impl!r}) to run the saved geometry",
            UserWarning, stacklevel=2,
        )
    return None


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
    selects the implementation with ``model.set_attn_implementation`` and records the geometry
    (``config.geoattn``) and the implementation (``config.attn_implementation``) in the model's config
    and in each attention module's, so ``from_pretrained`` rebuilds it (see the module doc). Returns
    ``model``.
    """
    register()
    name = geometry.name if isinstance(geometry, Geometry) else geometry
    geometry_class(name)  # unknown names fail here, with the list of available geometries
    found = check_model(model)
    built = [geometry_for_module(geometry, heads, head_dim, geometry_params, copy=True)  # all before any change
             for _, heads, head_dim in found]
    for (module, _, _), geom in zip(found, built):
        _attach(module, geom.to(next((p.device for p in module.parameters()), torch.device("cpu"))))
    impl = implementation_name(name)
    model.set_attn_implementation(impl)
    if model.config._attn_implementation != impl:
        raise ValueError(f"{type(model).__name__} refused attn_implementation={impl!r}; see the warning above")
    options = rebuild_options(built[0])
    configs = {id(c): c for c in [model.config, *(getattr(m, "config", None) for m, _, _ in found)]
               if isinstance(c, transformers.PretrainedConfig)}  # a composite model's modules see sub-configs
    for config in configs.values():
        _record(config, name, options)
    return model


def from_pretrained(model_class, pretrained_model_name_or_path, **kwargs) -> nn.Module:
    """Load a checkpoint saved after :func:`geoattn.swap`, geometry parameters included.

    ``model_class`` is any transformers class with ``from_pretrained`` (``AutoModel``, ``BertModel``, …);
    ``kwargs`` go to it. The same as a plain ``model_class.from_pretrained`` with geoattn imported (see
    the module doc), except that it also loads checkpoints whose ``config.json`` has the ``geoattn``
    entry but no ``attn_implementation`` (saved before the swap recorded it), and that it raises
    ``ValueError`` for a checkpoint that is not a swapped one or lacks geometry tensors.
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
    kwargs["attn_implementation"] = implementation_name(spec["geometry"])
    want_info = kwargs.pop("output_loading_info", False)
    model, info = model_class.from_pretrained(pretrained_model_name_or_path, config=config,
                                              output_loading_info=True, **kwargs)
    missing = sorted(k for k in info["missing_keys"] if f".{GEOMETRY_ATTR}." in f".{k}")
    if missing:
        raise ValueError(
            f"the checkpoint {pretrained_model_name_or_path} lacks {len(missing)} geometry tensor(s), e.g. "
            f"{missing[0]!r}; it was saved with a different geometry or model class"
        )
    return (model, info) if want_info else model


if transformers is not None:  # importing this module (geoattn does once transformers is imported) registers
    register()
