"""Flat space: the scaled dot product of Vaswani et al. (2017), identical to PyTorch's SDPA."""
from __future__ import annotations

from torch import Tensor

from .base import Geometry, Lifted, inverse_sqrt
from .registry import register


@register
class Euclidean(Geometry):
    """``score = ⟨q, k⟩ · scale`` with ``scale = 1/√E`` by default ("Attention Is All You Need").

    The inner product of flat space; every benchmark's baseline. Runs on
    :func:`torch.nn.functional.scaled_dot_product_attention` unchanged.
    """

    name = "euclidean"
    affine = True

    def lift(self, q: Tensor, k: Tensor, scale: float | None) -> Lifted:
        return Lifted(q, k, scale=inverse_sqrt(q.shape[-1]) if scale is None else scale)
