"""Feature clipping of tangent vectors: the ``clip_radius`` argument, and counting and warning when the clip acts.

Geometries that can be negatively curved bound ``√|κ|·‖u‖ ≤ clip_radius`` (``u = x/√E``; Guo et al., "Clipped
Hyperbolic Classifiers Are Super-Hyperbolic Classifiers", CVPR 2022, see
:class:`~geoattn.geometry.curved.CurvedGeometry`). A clip that acts changes scores, so it is counted on the
geometry (``geometry.clipped``) and announced once per geometry with a :class:`ClipWarning`.
"""
from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .curved import CurvedGeometry


class ClipWarning(UserWarning):
    """A hyperbolic geometry shortened some tangent vectors (feature clipping); shown once per geometry."""


def check_clip_radius(geometry: str, default: float | None, clip_radius) -> float | None:
    """The clip radius a geometry uses: ``clip_radius``, or ``default`` when None; a geometry without a default
    (never negatively curved) takes none."""
    if default is None:
        if clip_radius is not None:
            raise ValueError(f"geometry {geometry!r} is never negatively curved, so it has no tangent clip; "
                             "drop clip_radius")
        return None
    value = default if clip_radius is None else clip_radius
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"clip_radius must be a positive number (the bound on √|κ|·‖u‖), got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"clip_radius must be positive and finite (the bound on √|κ|·‖u‖), got {value!r}; the "
                         f"default is {default}")
    return float(value)


def record_clip(geometry: CurvedGeometry, shortened: Tensor | int) -> None:
    """Add the vectors a clip shortened (a bool tensor, or a count from the native kernel) to
    ``geometry.clipped`` and warn the first time. Tensors are counted on CPU in eager mode only: reading one
    back would break ``torch.compile`` graphs and ``torch.func`` transforms, and stall an accelerator."""
    if isinstance(shortened, Tensor):
        if (shortened.device.type != "cpu" or torch.compiler.is_compiling()
                or torch._C._functorch.is_functorch_wrapped_tensor(shortened)):
            return
        shortened = int(shortened.sum())
    if not shortened:
        return
    geometry.clipped += shortened
    if not geometry._clip_warned:
        geometry._clip_warned = True
        warnings.warn(
            f"geoattn: the {geometry.name!r} geometry clipped {shortened} tangent vector(s) to √|κ|·‖u‖ = "
            f"{geometry.clip_radius} (u = x/√E; feature clipping, which changes their scores). Pass a larger "
            "clip_radius= to the geometry, or scale the inputs down; geometry.clipped counts every clipped "
            "vector (this warning is shown once per geometry)", ClipWarning, stacklevel=5)
