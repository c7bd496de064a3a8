"""A geometry's identity in checkpoints: the ``geometry_tag`` buffer every :class:`~geoattn.geometry.base.Geometry`
writes when saved and checks when loaded.

The tag is the geometry's name and the values of the options its class declares (``options = ("score",
"aggregation")``…), e.g. ``"sphere|score=cosine|aggregation=linear"``, stored as :data:`TAG_BYTES` bytes of UTF-8
(zero-padded, longer tags cut) so that it travels in a state dict like any tensor.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

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


class Tagged(nn.Module):
    """The checkpoint side of :class:`~geoattn.geometry.base.Geometry`: a ``geometry_tag`` buffer, written by
    ``state_dict`` and compared by ``load_state_dict``, which refuses a checkpoint made with another geometry or
    other options (a checkpoint without the buffer, e.g. one carried over from ``nn.MultiheadAttention``, loads)."""

    name: str
    options: tuple[str, ...]

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("geometry_tag", torch.zeros(TAG_BYTES, dtype=torch.uint8))

    def tag(self) -> str:
        """The geometry's identity in checkpoints: its name and the values of its :attr:`options`."""
        return geometry_tag(self)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        self.geometry_tag.copy_(encode_tag(self.tag()))
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        saved = state_dict.get(prefix + "geometry_tag")
        if saved is None:
            state_dict[prefix + "geometry_tag"] = encode_tag(self.tag())
        elif (made_with := decode_tag(saved)) != decode_tag(encode_tag(self.tag())):
            raise ValueError(
                f"checkpoint at {prefix or 'the root'!r} was made with geometry {made_with!r} but this "
                f"module uses {self.tag()!r}; build the model with the checkpoint's geometry (and options), "
                "or load only the other weights"
            )
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
