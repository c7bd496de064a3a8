"""A geometry's identity in checkpoints: the ``geometry_tag`` buffer every :class:`~geoattn.geometry.base.Geometry`
writes when saved and checks when loaded.

The tag is the geometry's name and the values of the options its class declares (``options = ("score",
"aggregation")``…), e.g. ``"sphere|score=cosine|aggregation=linear"``, stored as :data:`TAG_BYTES` bytes of UTF-8
(zero-padded, longer tags cut) so that it travels in a state dict like any tensor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .base import Geometry

TAG_BYTES = 64


def geometry_tag(geometry: Geometry) -> str:
    """``name|option=value|…`` over the options the geometry's class declares."""
    return "|".join([geometry.name, *(f"{key}={getattr(geometry, key)}" for key in geometry.options)])


def encode_tag(tag: str) -> Tensor:
    """``tag`` as :data:`TAG_BYTES` uint8 values (UTF-8, zero-padded, cut at :data:`TAG_BYTES`)."""
    raw = tag.encode()[:TAG_BYTES]
    return torch.tensor(list(raw) + [0] * (TAG_BYTES - len(raw)), dtype=torch.uint8)


def decode_tag(t: Tensor) -> str:
    """The text of an encoded tag (:func:`encode_tag`)."""
    return bytes(int(b) for b in t.reshape(-1).tolist() if b).decode(errors="replace")
