"""``geoattn.attention``: ``softmax(score_geometry(q, k)) · V`` with SDPA's tensor and mask conventions."""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from .backends import policy
from .call import AttentionCall, prepare_call
from .geometry import Euclidean, Geometry
from .masks import masked_softmax


def attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    geometry: str | Geometry = "euclidean",
    attn_mask: Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    backend: str = "auto",
    return_weights: bool = False,
    exclude_self: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention under a geometry: ``softmax(score(q, k) + mask) · V``.

    Same conventions as :func:`torch.nn.functional.scaled_dot_product_attention`: ``query`` (..., L, E),
    ``key`` (..., S, E), ``value`` (..., S, Ev), heads in dim -3; ``attn_mask`` bool (True = take part)
    or float (added to the scores), broadcastable to (..., L, S); ``is_causal`` top-left aligned;
    ``enable_gqa`` lets key/value have fewer heads than query. ``scale`` defaults to ``1/√E`` for the
    Euclidean geometry and multiplies the score of every other geometry (default 1, their temperature
    sets the sharpness). ``scale`` is a finite float: for the Euclidean geometry any value SDPA takes
    (a negative scale reverses the ranking of the keys, as in SDPA); for every other geometry it must
    be > 0 (it multiplies a distance-based score). Rows whose keys are all masked give zeros.
    ``dropout_p`` is applied whenever it is > 0, as in SDPA.

    Empty inputs behave as in SDPA, for every geometry and with ``return_weights``: an empty output
    when B, H or L is 0, zeros (B, H, L, Ev) when S = 0 (no key: a fully masked row), and for E = 0
    (queries and keys without features; euclidean only, other geometries raise) every score is 0, so
    the weights are uniform over the allowed keys. Gradients flow through these results as in SDPA.

    Under :func:`torch.func.vmap` (and ``grad``/``vjp``) the call works on the ``dense`` and ``sdpa``
    backends (``auto`` picks one of them); the fused backends (``native``, ``tiled``, ``flex``) refuse every
    ``torch.func`` transform with a ValueError naming ``backend='dense'``.

    ``geometry`` is a name from :func:`geoattn.available_geometries` (default parameters) or a
    :class:`geoattn.Geometry`. ``backend`` is ``"auto"`` (the first row of the decision table
    :data:`geoattn.backends.policy.RULES` that fits the call; :func:`explain_backend` says which and why) or a
    name from :func:`geoattn.available_backends`. Returns the output (..., L, Ev), or ``(output, weights)``
    with ``return_weights=True`` (weights (..., L, S), dense backend). ``exclude_self=True`` drops key i for
    query i (needs L == S; folded into the mask, so every backend honours it; with ``is_causal`` the first
    query then has no key and gives zeros).
    """
    call = prepare_call(query, key, value, geometry, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                        return_weights, exclude_self)
    runner = policy.backend_for(call, backend)  # also for an empty call: the same errors as for any other
    with compute_precision(call):
        call.map_values()
        out, weights = empty_attention(call) if call.empty else runner.run(call)
        out = call.post_values(out)
    return call.finish(out, weights)


def empty_scores(call: AttentionCall) -> Tensor:
    """The masked scores (B, H, L, S) of an empty call (:attr:`AttentionCall.empty`), as SDPA computes them:
    ``q kᵀ`` is an empty tensor when a dim is 0 and exactly 0 when E = 0 (only the euclidean geometry gets
    here with E = 0, see :func:`geoattn.validation.check_empty`); the float mask is added, disallowed keys
    are -inf. Every input stays in the autograd graph, as in SDPA."""
    score = call.q @ call.k.transpose(-1, -2)                              # (B, H, L, S)
    mask = call.mask
    if mask.bias is not None:
        score = score + mask.bias.to(score.dtype)
    if mask.allowed is not None:
        score = score.masked_fill(~mask.allowed, float("-inf"))
    return score


def empty_attention(call: AttentionCall) -> tuple[Tensor, Tensor]:
    """An empty call answered as SDPA answers it, without a backend: uniform weights over the allowed keys
    (none when S = 0) and ``weights @ values`` (zeros when S = 0)."""
    weights = masked_softmax(empty_scores(call))
    return weights @ call.values.to(weights.dtype), weights


def compute_precision(call: AttentionCall) -> contextlib.AbstractContextManager:
    """Geometric scores are computed in float32 or wider, also under bf16/fp16 autocast (which stays on
    for the Euclidean geometry, as for SDPA)."""
    device = call.device.type
    if not torch.is_autocast_enabled(device) or isinstance(call.geometry, Euclidean):
        return contextlib.nullcontext()  # nothing to change (and no autocast region in compiled or exported graphs)
    return torch.autocast(device, enabled=False)


def explain_backend(query: Tensor, key: Tensor, value: Tensor, geometry: str | Geometry = "euclidean",
                    backend: str = "auto", **kwargs) -> str:
    """Which backend :func:`attention` would run these arguments on, and why (one line, nothing computed).

    Takes the arguments of :func:`attention` and returns ``"<backend>: <why> [<the call's facts>]"``, where
    ``<why>`` is the backend named, the default set with :func:`geoattn.set_default_backend`, or the reason of
    the row of :data:`geoattn.backends.policy.RULES` that ``auto`` took, e.g.
    ``"native: auto: on CPU the native kernel fuses ... [geometry 'poincare' (not affine), ..., cpu float32, ...]"``.
    Where ``auto`` would have picked a backend this machine cannot run (the native kernel did not build), the
    reason says so, with the fix; ``python -m geoattn doctor`` reports the whole setup.
    """
    call = prepare_call(query, key, value, geometry, **kwargs)
    choice = policy.choose(call, backend)
    return f"{choice.backend}: {choice.reason} [{policy.describe(call)}]"
