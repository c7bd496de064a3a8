"""Which backend runs a call: the registry of backends, the default, and ``auto``'s decision table.

``backend="auto"`` walks :data:`RULES` top to bottom and takes the first row whose condition holds and whose
backend accepts the call (its :meth:`~geoattn.backends.base.Backend.unsupported` finds nothing: e.g. a float
mask that requires grad passes over ``tiled`` and ``native``, which do not differentiate it, to ``dense``, the
last row, which runs every call).
A backend named explicitly (per call, or as the default with :func:`geoattn.set_default_backend`)
runs the call if its :meth:`~geoattn.backends.base.Backend.unsupported` finds nothing, else the call
fails with that reason. Every choice is logged at DEBUG level on the ``"geoattn"`` logger (in eager mode:
under ``torch.compile`` a logging call would break the graph), and :func:`geoattn.explain_backend` returns it
as text. Where ``auto`` passes over a backend this machine cannot run (an
:class:`~geoattn.backends.base.Unavailable` reason: the native kernel did not build), the reason says so and
the first such call in a process warns. A new backend is a :func:`register_backend` call
plus, for ``auto`` to pick it, one row inserted into :data:`RULES`.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import torch

from .base import Backend, Unavailable

if TYPE_CHECKING:
    from ..call import AttentionCall

DENSE_MAX_SCORES = 1 << 22  # B·H·L·S up to which ``auto`` prefers the dense path over compiling a fused kernel


@dataclass(frozen=True)
class Rule:
    """One row of ``auto``'s table: when ``applies(call)``, run ``backend``, because ``reason``."""

    applies: Callable[[AttentionCall], bool]
    backend: str
    reason: str


RULES: list[Rule] = [
    Rule(lambda c: c.geometry.affine and not c.return_weights and unsupported(c, "native") is None,
         "native", "on CPU the native kernel runs the affine score at the head dim of q and k (SDPA needs one more "
         "column for a per-key term) and keeps only what SDPA keeps for the backward (measured faster and smaller)"),
    Rule(lambda c: c.geometry.affine and not c.return_weights, "sdpa",
         "the score is affine in a dot product, so F.scaled_dot_product_attention computes it exactly"),
    Rule(lambda c: c.return_weights, "dense", "attention weights were asked for (only the dense backend returns them)"),
    Rule(lambda c: c.under_transform, "dense",
         "under a torch.func transform (vmap, grad, ...), which the fused backends do not support"),
    Rule(lambda c: c.dropout_p > 0, "dense", "attention dropout (only the dense backend applies it to this score)"),
    Rule(lambda c: unsupported(c, "native") is None, "native",
         "on CPU the native kernel fuses this geometry's score exactly, at any size (measured fastest)"),
    Rule(lambda c: c.num_scores <= DENSE_MAX_SCORES, "dense",
         f"the score matrix is small (B·H·L·S ≤ {DENSE_MAX_SCORES}): dense is faster than compiling a fused kernel"),
    Rule(lambda c: c.device.type != "cpu", "flex",
         "on an accelerator, FlexAttention fuses the score (with a backward)"),
    # benchmarks/results/kernels: on CPU the tiled forward is faster than flex and its memory linear, where
    # torch 2.13's CPU flex grows faster than linearly in L (and has no backward)
    Rule(lambda c: True, "tiled",
         "on CPU, tiled is faster than CPU flex and linear in memory (measured), with a backward"),
    Rule(lambda c: True, "dense", "no fused backend accepts this call; dense runs every call"),
]


@dataclass(frozen=True)
class Choice:
    """The backend that runs a call and why; ``fallback``: why a faster backend ``auto`` would have picked
    cannot run on this machine (see :class:`~geoattn.backends.base.Unavailable`)."""

    backend: str
    reason: str
    fallback: str | None = None


_BACKENDS: dict[str, Backend] = {}
_DEFAULT = ["auto"]  # what backend="auto" means: "auto" (the table) or a backend name
_log = logging.getLogger("geoattn")
_WARNED_FALLBACK = [False]  # the first call that falls back warns; later ones are explained, not warned about


def register_backend(backend: Backend) -> Backend:
    """Make ``backend`` available by name (``backend="<name>"``); ``auto`` picks it through a row of :data:`RULES`."""
    _BACKENDS[backend.name] = backend
    return backend


def available_backends() -> list[str]:
    """Names accepted by ``backend=``: ``"auto"`` and every registered backend (``"dense"``, ``"sdpa"``, ...)."""
    return ["auto", *sorted(_BACKENDS)]


def check_name(name: str) -> None:
    if name not in available_backends():
        raise ValueError(f"unknown backend {name!r}; available backends: {', '.join(available_backends())}")


def set_default(name: str) -> str:
    """Make ``name`` what ``backend="auto"`` means; returns the previous setting."""
    check_name(name)
    previous, _DEFAULT[0] = _DEFAULT[0], name
    return previous


def choose(call: AttentionCall, backend: str = "auto") -> Choice:
    """The backend for ``call`` and why: the one named, the default set globally, or ``auto``'s first row."""
    check_name(backend)
    name, why = backend, f"named by backend={backend!r}"
    if name == "auto" and _DEFAULT[0] != "auto":
        name, why = _DEFAULT[0], f"the default backend, set with geoattn.set_default_backend({_DEFAULT[0]!r})"
    fallback = None
    if name == "auto":
        rule = next(rule for rule in RULES if rule.applies(call) and unsupported(call, rule.backend) is None)
        name, why = rule.backend, f"auto: {rule.reason}"
        missed = [(b, v) for b, v in call.verdicts.items() if isinstance(v, Unavailable) and b != name]
        if missed:
            fallback = "; ".join(f"the {b} backend is unavailable on this machine: {v}" for b, v in missed)
            why = f"{why} ({fallback})"
    reason = unsupported(call, name)
    if reason is not None:
        raise ValueError(f"backend {name!r} cannot run this call: {reason}")
    if not torch.compiler.is_compiling() and _log.isEnabledFor(logging.DEBUG):  # a logging call breaks the graph
        _log.debug("backend %s for %s: %s", name, describe(call), why)
    return Choice(name, why, fallback)


def unsupported(call: AttentionCall, name: str) -> str | None:
    """Why backend ``name`` cannot run ``call`` (None: it can), asked once per call: a row of :data:`RULES` and
    :func:`choose` ask the same backend (its answer is kept in ``call.verdicts``)."""
    if name not in call.verdicts:
        call.verdicts[name] = _BACKENDS[name].unsupported(call)
    return call.verdicts[name]


def backend_for(call: AttentionCall, backend: str = "auto") -> Backend:
    """The :class:`Backend` that runs ``call`` (see :func:`choose`); the first call in a process that ``auto``
    runs on a slower backend because a faster one is unavailable here warns, with the reason and the fix."""
    choice = choose(call, backend)
    if choice.fallback is not None and not _WARNED_FALLBACK[0]:
        _warn_fallback(f"geoattn: backend='auto' runs {call.geometry.name!r} on {choice.backend!r}, a slower path, "
                       f"because {choice.fallback} (warned once; geoattn.explain_backend(...) and "
                       "`python -m geoattn doctor` say more)")
    return _BACKENDS[choice.backend]


@torch.compiler.assume_constant_result
def _warn_fallback(message: str) -> bool:
    """Warn once per process; under ``torch.compile`` this runs while the graph is traced, outside it (a warning
    call inside it would break the graph)."""
    if not _WARNED_FALLBACK[0]:
        _WARNED_FALLBACK[0] = True
        warnings.warn(message, UserWarning, stacklevel=4)
    return True


def describe(call: AttentionCall) -> str:
    """The facts of a call the table reads, in one line."""
    parts = [f"geometry {call.geometry.name!r} ({'affine' if call.geometry.affine else 'not affine'})",
             f"B·H·L·S = {call.num_scores}", f"{call.device.type} {str(call.dtype).removeprefix('torch.')}",
             "gradients" if call.needs_grad else "no gradients"]
    if call.return_weights:
        parts.append("weights")
    if call.dropout_p > 0:
        parts.append(f"dropout {call.dropout_p}")
    return ", ".join(parts)
