"""Input checks for the public API: every error names the problem and the fix.

The value checks (NaN/Inf in q, k, v; query and key rows whose dot product overflows float32, :data:`MAX_GRAM`;
NaN/+inf in a float mask) cost one reduction per tensor: a sum (for q and k, the norm of the whole tensor, which
bounds each row's) is finite exactly when no element is NaN/Inf, unless it overflows, and only then (or to count
the bad values for the error) is the elementwise scan run. The verdict is read as a Python float, not kept as a
0-dim ``isfinite`` tensor op, and the scan (``isfinite(t).all()``, a pass that writes a bool per element) runs only
on the rare failing path, so the checks stay a small fraction of the attention call they guard.

On an accelerator, reading the verdict back would synchronise with the host on every call, so the
value checks run on CPU tensors only: on a GPU a NaN or Inf in the inputs is not reported and
propagates to the output, as in ``F.scaled_dot_product_attention``. :func:`set_validation` turns the
checks off everywhere; its docstring lists what they guard and what the backends then do with such inputs (the
native kernel can turn a NaN input into a finite output row).

Under :mod:`torch.func` transforms (``vmap``, ``grad``, ``vjp``) a Python branch on a tensor's value is
not allowed, so the value checks read the plain tensor underneath the transforms' wrappers
(:func:`unwrapped`): the same values, every vmapped sample at once. Shape checks see the per-sample
shapes, as the call does.
"""
from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor
from torch._C import _functorch

_ENABLED = True


def set_validation(enabled: bool) -> None:
    """Turn the value checks of :func:`geoattn.attention` on (default) or off (saves one pass over the inputs).

    What they guard (CPU tensors; on an accelerator they are skipped, see the module docstring): NaN or Inf in
    q, k or v; a query and a key row whose norms multiply past :data:`MAX_GRAM` (8.5e37) in a dtype computed in
float32;
    NaN or +inf in a float mask. Each raises a ValueError naming the tensor and the fix. Shapes, dtypes, devices,
    the scale and dropout are checked either way.

    With the checks off, such inputs are not reported and the output is unspecified: the ``dense`` and ``sdpa``
    backends carry a NaN through to the rows it reaches, but the ``native`` kernel (what ``auto`` runs on CPU for
    float32) does not: a NaN in a query row, or in a key of a Poincaré or stereographic call, gives finite,
    meaningless output rows, and rows past MAX_GRAM overflow the float32 Gram. Turn the checks off only for
    inputs known to be finite and in range."""
    global _ENABLED
    _ENABLED = bool(enabled)


def validation_enabled() -> bool:
    return _ENABLED and not torch.compiler.is_compiling()


def _wrapped(t) -> bool:
    """Whether ``t`` is a :mod:`torch.func` wrapper: vmap's batched tensor or grad's tracking tensor."""
    return isinstance(t, Tensor) and (_functorch.is_batchedtensor(t) or _functorch.is_gradtrackingtensor(t))


def unwrapped(t: Tensor) -> Tensor:
    """The plain tensor under ``t``'s :mod:`torch.func` wrappers (vmap's batched tensors, grad's tracking
    tensors), or ``t`` itself: its values can be read in a Python branch (every vmapped sample at once)."""
    while _wrapped(t):
        t = _functorch.get_unwrapped(t)
    return t


def _levels(t) -> list[bool]:
    """For each :mod:`torch.func` wrapper around ``t``, outermost first: whether it is vmap's."""
    if torch.compiler.is_compiling():  # dynamo sees fake tensors, never these wrappers
        return []
    kinds = []
    while _wrapped(t):
        kinds.append(_functorch.is_batchedtensor(t))
        t = _functorch.get_unwrapped(t)
    return kinds


def under_vmap(*tensors: Tensor | None) -> bool:
    """Whether any of ``tensors`` is batched by :func:`torch.func.vmap`, at any level of nested transforms.
    The one test of "is this call under vmap?": :attr:`geoattn.call.AttentionCall.under_vmap`."""
    return any(any(_levels(t)) for t in tensors)


def under_transform(*tensors: Tensor | None) -> bool:
    """Whether any of ``tensors`` is wrapped by a :mod:`torch.func` transform (``vmap``, ``grad``, ``vjp``,
    ``jacrev``, ...): :attr:`geoattn.call.AttentionCall.under_transform`."""
    return any(bool(_levels(t)) for t in tensors)


def _scan_values(t: Tensor) -> bool:
    """Whether to check ``t``'s values: on CPU only (elsewhere the verdict costs a device synchronisation)."""
    return validation_enabled() and t.device.type == "cpu"


def _sum(t: Tensor) -> Tensor:
    """The sum of ``t`` in float32 or wider (one vectorised reduction)."""
    return t.sum(dtype=torch.float64 if t.dtype == torch.float64 else torch.float32)


# The largest product of a query row's and a key row's norms that float32 arithmetic can score: every backend
# computing in float32 forms ⟨q, k⟩ ≤ ‖q‖‖k‖ (the Gram), up to float32's maximum (3.4e38) with room for the terms
# added to it. Past it the Gram overflows: NaN from some geometries, a finite wrong output from others. A long row
# against short ones is fine (the native kernel forms norms in double; huge hyperbolic inputs are clipped).
# float64 inputs (computed in float64) have no such bound.
MAX_GRAM = torch.finfo(torch.float32).max / 4


def check_finite(name: str, t: Tensor, norm: bool = False) -> float:
    """``t`` holds no NaN or Inf. One reduction (the sum, or with ``norm`` the norm of the whole tensor, which is
    returned: inf where it overflows float32, 0 where values are not scanned); the elementwise scan only when it
    is not finite."""
    if not _scan_values(t):
        return 0.0
    t = unwrapped(t)
    wide = torch.float64 if t.dtype == torch.float64 else torch.float32
    total = (torch.linalg.vector_norm(t, dtype=wide) if norm else _sum(t)).item()
    if math.isfinite(total):  # .item(): no 0-dim isfinite op
        return total
    if not torch.isfinite(t).all():
        bad = int((~torch.isfinite(t)).sum())
        raise ValueError(
            f"{name} contains {bad} non-finite value(s) (NaN or Inf); attention cannot score them. "
            "Fix the upstream computation (e.g. a diverging loss or an overflow in fp16), or mask the "
            "positions with attn_mask instead of filling them with inf"
        )
    return math.inf


def check_gram_range(query: Tensor, key: Tensor, bound: float) -> None:
    """The largest ‖q‖·‖k‖ of a query and a key row is at most :data:`MAX_GRAM` (below float64; ``bound``: the
    product of the tensors' norms, which bounds it, from :func:`check_finite`; the row norms only when it fails)."""
    if query.dtype == torch.float64 or bound <= MAX_GRAM:
        return
    q_max, k_max = (torch.linalg.vector_norm(unwrapped(t).double(), dim=-1).max().item() for t in (query, key))
    if q_max * k_max > MAX_GRAM:
        raise ValueError(
            f"query and key have rows of norm up to {q_max:.3g} and {k_max:.3g}; {query.dtype} attention computes "
            f"their dot products in float32, which overflow past a product of norms of {MAX_GRAM:.3g}. Rescale the "
            "inputs (e.g. normalise them, or lower the scale of the layer that makes them), or pass float64 tensors"
        )


def check_geometry(geometry) -> None:
    """A geometry argument is a registered name or a :class:`geoattn.Geometry` (TypeError otherwise)."""
    from .geometry import Geometry, available_geometries

    if not isinstance(geometry, (str, Geometry)):
        raise TypeError(
            f"geometry must be a name (one of {', '.join(available_geometries())}) or a geoattn.Geometry, "
            f"got {type(geometry).__name__}"
        )


def check_attention_inputs(query, key, value, attn_mask, is_causal: bool, dropout_p: float, enable_gqa: bool) -> None:
    """Shapes, dtypes and values in the conventions of ``F.scaled_dot_product_attention``."""
    for name, t in (("query", query), ("key", key), ("value", value)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.dim() < 2:
            raise ValueError(f"{name} must have shape (..., L, E) with at least 2 dims, got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}; convert it with .float()")
    if not (query.dtype == key.dtype == value.dtype):
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, {value.dtype}; "
            "cast them to one with .to(dtype)"
        )
    if not (query.device == key.device == value.device):
        raise ValueError(
            f"query, key and value are on different devices ({query.device}, {key.device}, {value.device})")
    if not (query.dim() == key.dim() == value.dim()):
        raise ValueError(
            f"query, key and value must have the same number of dims, got shapes {tuple(query.shape)}, "
            f"{tuple(key.shape)}, {tuple(value.shape)}"
        )
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(
            f"query and key feature dims differ: query (..., L, E={query.shape[-1]}) vs key "
            f"(..., S, E={key.shape[-1]}); project them to the same size"
        )
    if key.shape[-2] != value.shape[-2]:
        raise ValueError(
            f"key and value must have the same sequence length S, got key S={key.shape[-2]} and value "
            f"S={value.shape[-2]}"
        )
    if key.shape[:-2] != value.shape[:-2]:
        raise ValueError(f"key and value batch/head dims differ: {tuple(key.shape[:-2])} vs {tuple(value.shape[:-2])}")
    _check_leading(query, key, enable_gqa)
    if not 0.0 <= float(dropout_p) < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if attn_mask is not None:
        _check_mask(attn_mask, query, key, is_causal)
    q_norm, k_norm = check_finite("query", query, norm=True), check_finite("key", key, norm=True)
    check_finite("value", value)
    check_gram_range(query, key, q_norm * k_norm)


def _check_leading(query: Tensor, key: Tensor, enable_gqa: bool) -> None:
    qd, kd = tuple(query.shape[:-2]), tuple(key.shape[:-2])
    if qd == kd:
        return
    divides = query.dim() >= 3 and qd[:-1] == kd[:-1] and kd[-1] > 0 and qd[-1] % kd[-1] == 0
    if enable_gqa and divides:
        return
    if divides:
        raise ValueError(
            f"query has {qd[-1]} heads but key/value have {kd[-1]}; pass enable_gqa=True for grouped-query attention"
        )
    raise ValueError(
        f"query and key batch/head dims differ: query {qd} vs key {kd} (shapes (..., H, L, E)); "
        "they must match, or with enable_gqa=True the query heads must be a multiple of the key heads"
    )


def _check_mask(mask, query: Tensor, key: Tensor, is_causal: bool) -> None:
    if not isinstance(mask, Tensor):
        raise TypeError(f"attn_mask must be a torch.Tensor (bool or float), got {type(mask).__name__}")
    if is_causal:
        raise ValueError("pass either attn_mask or is_causal=True, not both; fold the causal mask into attn_mask")
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise TypeError(
            f"attn_mask must be bool (True = take part) or floating (added to the scores), got {mask.dtype}"
        )
    if mask.device != query.device:
        raise ValueError(
            f"attn_mask is on {mask.device} but query, key and value are on {query.device}; move it with "
            "attn_mask.to(query.device)"
        )
    target = (*query.shape[:-1], key.shape[-2])
    try:
        ok = torch.broadcast_shapes(mask.shape, target) == torch.Size(target)
    except RuntimeError:
        ok = False
    if not ok:
        raise ValueError(
            f"attn_mask of shape {tuple(mask.shape)} does not broadcast to the scores' shape {target} "
            "(..., L, S); give it shape (L, S), (B, 1, L, S), (B, 1, 1, S) or the like"
        )
    if mask.is_floating_point():
        check_finite_or_neg_inf(mask)


def check_finite_or_neg_inf(mask: Tensor) -> None:
    if not _scan_values(mask):
        return
    mask = unwrapped(mask)
    total = _sum(mask)  # -inf or finite unless the mask holds NaN or +inf (or the sum overflows)
    if (torch.isnan(total) or total == float("inf")) and (torch.isnan(mask).any() or (mask == float("inf")).any()):
        raise ValueError("a float attn_mask may hold finite values and -inf only (NaN or +inf found)")


def check_scale(scale, geometry) -> float | None:
    """``scale`` is None or a finite real number; for every geometry but ``euclidean`` also > 0.

    The Euclidean score is SDPA's ``⟨q, k⟩·scale``, where any finite scale is allowed (a negative one
    reverses the ranking, as in SDPA). Every other geometry's score is ``-distance/τ`` (or a cosine over
    τ) times ``scale``: a scale ≤ 0 would make the farthest key the most attended (or all keys equal).
    """
    from .geometry import Euclidean

    if scale is None:
        return None
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a float or None (the default), got {type(scale).__name__}"
                        + ("; pass float(scale)" if isinstance(scale, Tensor) else ""))
    value = float(scale)
    if not math.isfinite(value):
        raise ValueError(f"scale must be a finite float, got {value}; pass scale=None for the default (1/√E for "
                         "the euclidean geometry, 1 for the others)")
    if value <= 0 and not isinstance(geometry, Euclidean):
        effect = "makes every key equally likely" if value == 0 else "makes the farthest key the most attended"
        raise ValueError(
            f"scale={value} with geometry {geometry.name!r}: scale multiplies a distance-based score, so a scale "
            f"≤ 0 {effect}; pass a positive scale (or None for 1), and set the sharpness with the geometry's "
            "temperature"
        )
    return value


def check_empty(query: Tensor, geometry) -> None:
    """Queries and keys with no features (E = 0) are SDPA's: ``⟨q, k⟩ = 0`` for every key, uniform weights.
    Only the euclidean geometry is that dot product; the others have no point to put a 0-dim vector on."""
    from .geometry import Euclidean

    if query.shape[-1] != 0:
        return
    name = geometry if isinstance(geometry, str) else getattr(geometry, "name", type(geometry).__name__)
    if not (name == "euclidean" if isinstance(geometry, str) else isinstance(geometry, Euclidean)):
        raise ValueError(
            f"query and key have E=0 features (shape {tuple(query.shape)}); geometry {name!r} needs at least one "
            "feature to place them on its manifold. Only geometry='euclidean' accepts E=0 (as SDPA: every score "
            "is 0 and the weights are uniform); give the heads at least one feature"
        )
