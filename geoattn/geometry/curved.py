"""Geometries with a per-head signed curvature κ: the parameter behind κ, the tangent clip, manifold aggregation."""
from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..backends.native.spec import HeadConstants
from ..math.vectors import clip_radius as clip_norm, robust_norm, unit
from .arguments import check_choice, per_head
from .base import TemperedGeometry
from .clip import check_clip_radius, record_clip
from .curvature import curvature_from_parameter, parameter_from_curvature


class CurvedGeometry(TemperedGeometry):
    """A tempered geometry with a per-head signed curvature κ, and values aggregated linearly or on the manifold.

    ``curvature_sign`` fixes the sign (-1 hyperbolic, +1 spherical; stored as ``log|κ|``, parameter
    ``raw_curvature``) or leaves it free (0; stored as ``asinh κ``, parameter ``asinh_curvature``), see
    :mod:`geoattn.geometry.curvature` for why. :attr:`curvature_parameter` is the parameter behind κ in either
    case. ``curvature`` defaults to +1 for a spherical sign, else -1.
    ``aggregations`` names the ways values may be combined: ``"linear"`` (the weighted sum) and those the
    geometry implements with :meth:`manifold_values` (before the weighted sum) and :meth:`manifold_output`
    (after it).

    Geometries that can be negatively curved clip their tangent vectors (feature clipping, Guo et al.,
    "Clipped Hyperbolic Classifiers Are Super-Hyperbolic Classifiers", CVPR 2022): with ``u = x/√E`` (the
    scale rule), ``‖u‖ ← min(‖u‖, clip_radius/√|κ|)`` where κ < 0, i.e. points stay within hyperbolic
    radius ``radius_per_clip·clip_radius/√|κ|`` of the origin (``radius_per_clip`` = 2 for the stereographic
    geometries, whose ``exp_o`` maps ‖u‖ to distance 2‖u‖, 1 for Lorentz; :meth:`clip_for_radius` inverts it). The
    class sets ``default_clip``; ``clip_radius=`` overrides it. When the clip acts, :attr:`clipped` counts
    the vectors it shortened and a :class:`ClipWarning` is shown once per geometry (counted on CPU in
    eager mode; not under ``torch.compile`` or ``torch.func`` transforms).
    """

    curvature_sign: ClassVar[int] = 0
    aggregations: ClassVar[tuple[str, ...]] = ("linear",)
    default_clip: ClassVar[float | None] = None  # set by geometries that can be negatively curved
    radius_per_clip: ClassVar[float] = 2.0  # hyperbolic radius (at |κ| = 1) per unit of clip_radius
    options = ("aggregation",)

    def __init__(self, curvature=None, temperature=1.0, num_heads: int = 1, learnable: bool = False,
                 aggregation: str = "linear", head_dim: int | None = None, clip_radius: float | None = None) -> None:
        super().__init__(temperature=temperature, num_heads=num_heads, learnable=learnable, head_dim=head_dim)
        if curvature is None:
            curvature = 1.0 if self.curvature_sign > 0 else -1.0
        kappa = per_head("curvature", curvature, num_heads)
        sign = self.curvature_sign
        if sign and not (kappa * sign > 0).all():
            want = "negative (κ < 0, hyperbolic)" if sign < 0 else "positive (κ > 0, spherical)"
            other = "'sphere' or 'stereographic'" if sign < 0 else "'poincare', 'lorentz' or 'stereographic'"
            raise ValueError(
                f"{self.name} needs a {want} curvature, got {kappa.tolist()}; geoattn uses signed "
                f"sectional curvature everywhere, so pass e.g. curvature={sign * 1.0}, or use {other}"
            )
        setattr(self, self._curvature_name(), self._parameter(parameter_from_curvature(kappa, sign), given=curvature))
        self.aggregation = check_choice("aggregation", aggregation, self.aggregations)
        self.clip_radius = check_clip_radius(self.name, self.default_clip, clip_radius)
        self.clipped = 0            # vectors the clip shortened (CPU, eager)
        self._clip_warned = False

    @classmethod
    def clip_for_radius(cls, radius: float) -> float:
        """The ``clip_radius`` that keeps points within hyperbolic distance ``radius/√|κ|`` of the origin."""
        return radius / cls.radius_per_clip

    @classmethod
    def _curvature_name(cls) -> str:
        return "raw_curvature" if cls.curvature_sign else "asinh_curvature"

    @property
    def curvature_parameter(self) -> nn.Parameter:
        """The parameter behind κ, (num_heads,): ``raw_curvature = log|κ|`` (fixed sign) or
        ``asinh_curvature = asinh κ`` (free sign)."""
        return self._parameters[self._curvature_name()]

    @property
    def curvature(self) -> Tensor:
        """Signed κ per head, shape ``(num_heads,)``."""
        return curvature_from_parameter(self.curvature_parameter, self.curvature_sign)

    def kappa(self, ref: Tensor) -> Tensor:
        """κ per head as ``(H,)`` in ``ref``'s compute dtype."""
        return self._head(self.curvature, ref)

    def native_constants(self, ref: Tensor, scale: float | None, coef: float, power: float = 0.0,
                         curvature: bool = True) -> HeadConstants:
        """κ and μ for the native kernel (:mod:`.head`): κ (0 and no gradient unless ``curvature``) and
        ``μ = coef·scale/τ·|κ|^power``."""
        raw = self.curvature_parameter if curvature or power else None
        return HeadConstants(raw, self.log_temperature, ref.shape[1], self.curvature_sign,
                             coef * (1.0 if scale is None else scale), power)

    # -- tangent vectors ---------------------------------------------------------------------
    def tangent_norm(self, x: Tensor, kappa: Tensor, head_dim: int | None = None) -> tuple[Tensor, Tensor]:
        """``(‖x‖, a = min(‖x‖/√E, clip/√|κ|))`` of ``x`` (B, H, N, E), both (B, H, N, 1), under the scale rule
        and the clip (counted when it acts); ``kappa`` is (H,). ``head_dim``: the E of the scale rule where ``x``
        is part of a head (a factor of a product manifold); by default ``x``'s last dimension."""
        norm = robust_norm(x)                                                    # (B, H, N, 1)
        a = norm / math.sqrt(head_dim or x.shape[-1])
        if self.clip_radius is not None:
            a, shortened = clip_norm(a, kappa.view(-1, 1, 1), self.clip_radius)
            self.record_clip(shortened)
        return norm, a

    def radial(self, x: Tensor, kappa: Tensor, input_dtype: torch.dtype | None = None,
               head_dim: int | None = None) -> tuple[Tensor, Tensor]:
        """Direction and tangent norm of ``x`` (B, H, N, E) under the scale rule and the clip:
        ``(x̂ (B, H, N, E), a (B, H, N, 1))`` (:meth:`tangent_norm`). ``input_dtype``: the dtype x came in (it
        sets the floor under ‖x‖, see :func:`geoattn.math.vectors.unit`)."""
        norm, a = self.tangent_norm(x, kappa, head_dim)
        return unit(x, norm, input_dtype), a

    def tangent(self, x: Tensor, kappa: Tensor, input_dtype: torch.dtype | None = None,
                head_dim: int | None = None) -> Tensor:
        """The clipped tangent vector ``u = x̂·a`` of ``x`` (see :meth:`radial`), (B, H, N, E)."""
        direction, a = self.radial(x, kappa, input_dtype, head_dim)
        return direction * a

    def record_clip(self, shortened: Tensor | int) -> None:
        """Count the vectors a clip shortened (a bool tensor, or a count from the native kernel) and warn once
        (:func:`geoattn.geometry.clip.record_clip`)."""
        record_clip(self, shortened)

    # -- aggregation -------------------------------------------------------------------------
    def pre_values(self, v: Tensor) -> Tensor:
        return v if self.aggregation == "linear" else self.manifold_values(v)

    def post_values(self, out: Tensor) -> Tensor:
        return out if self.aggregation == "linear" else self.manifold_output(out)

    def manifold_values(self, v: Tensor) -> Tensor:
        """Values (B, H, S, Ev) → what the weighted sum of a manifold aggregation runs over."""
        raise NotImplementedError

    def manifold_output(self, out: Tensor) -> Tensor:
        """The weighted sum of :meth:`manifold_values` → the aggregate (B, H, L, Ev)."""
        raise NotImplementedError
