"""Swapping the attention geometry of existing models: plain PyTorch and Hugging Face transformers.

When transformers is installed, geoattn registers its ``geoattn_<geometry>`` attention implementations
with it (:func:`geoattn.integrations.hf.register`) as soon as both are imported, in either order, so
that a plain ``from_pretrained`` of a checkpoint saved after :func:`swap` rebuilds its geometry.
Importing geoattn does not import transformers (a second or more of start-up for users who never
touch it): an import hook registers the functions right after ``import transformers`` runs.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import sys

from .swap import swap

__all__ = ["swap"]


def _register() -> None:
    from . import hf  # noqa: F401  (registers at the end of its import; a no-op if it is being imported)


class _RegisterAfterTransformers(importlib.abc.MetaPathFinder):
    """A one-shot import hook: finds ``transformers`` as usual and registers geoattn once it has loaded."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "transformers":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            load = spec.loader.exec_module

            def load_then_register(module):
                load(module)
                _register()

            spec.loader.exec_module = load_then_register
        return spec


if "transformers" in sys.modules:
    _register()
elif importlib.util.find_spec("transformers") is not None:
    sys.meta_path.insert(0, _RegisterAfterTransformers())
