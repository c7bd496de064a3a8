"""Geometry constructor arguments from user values: per-head numbers, choices, positive parameters.

Each check raises a ValueError or TypeError that names the argument and the fix.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

Number = float | int


def per_head(name: str, value: Number | Sequence[Number] | Tensor, num_heads: int) -> Tensor:
    """A float64 tensor of shape ``(num_heads,)`` (or ``(1,)``, shared by all heads) from a user value."""
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads < 1:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")
    t = _real_tensor(name, value).detach().clone().reshape(-1)
    if t.numel() not in (1, num_heads):
        raise ValueError(
            f"{name} has {t.numel()} values but the geometry has num_heads={num_heads}; "
            f"pass one value (shared by all heads) or exactly {num_heads}"
        )
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {t.tolist()}")
    return t if t.numel() == num_heads else t.expand(num_heads).clone()


def _real_tensor(name: str, value) -> Tensor:
    """``value`` (a real number, a sequence of them, a real array or tensor) as float64; TypeError for anything
    else (strings, bools, complex numbers), naming the argument."""
    def bad(item) -> TypeError:
        try:
            fix = f"pass the number itself, e.g. {name}={float(item)!r}" if isinstance(item, (str, bytes)) else ""
        except ValueError:
            fix = ""
        fix = fix or f"pass a float, or one float per head as a list (e.g. {name}=[1.0, 0.5])"
        what = f"a {item.dtype} tensor" if isinstance(item, Tensor) else f"{type(item).__name__} {item!r}"
        return TypeError(f"{name} must be a real number, a sequence of numbers (one per head) or a real tensor, "
                         f"got {what}; {fix}")

    items = list(value) if isinstance(value, (list, tuple)) else [value]
    for item in items:
        if isinstance(item, (bool, str, bytes, complex)):
            raise bad(item)
    try:  # Python numbers straight to float64 (no float32 rounding); arrays and tensors keep their dtype here
        t = torch.as_tensor(value) if hasattr(value, "dtype") else torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise bad(value) from None
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise bad(value)
    return t.to(torch.float64)


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_temperature(temperature: Tensor) -> None:
    if (temperature <= 0).any():
        raise ValueError(
            f"temperature must be > 0 (it divides the score), got {temperature.tolist()}; "
            "use a small positive value such as 0.1 for sharper attention"
        )


def check_choice(what: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose one of {', '.join(map(repr, choices))}")
    return value


def log_param(name: str, value, num_heads: int, check: Callable[[Tensor], None] | None = None) -> Tensor:
    """``log`` of a positive per-head value (the raw parameter of temperatures and |κ|)."""
    t = per_head(name, value, num_heads)
    if check is not None:
        check(t)
    return t.log()
