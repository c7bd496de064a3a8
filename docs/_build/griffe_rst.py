"""A griffe extension for mkdocstrings: geoattn's docstrings use reStructuredText roles, rendered here as Markdown.

``:func:`geoattn.attention``` (or ``:class:``, ``:meth:``, ...) becomes a cross-reference when it names an object
that the API reference renders (a ``::: path`` directive of ``docs/reference/*.md``, a member of a rendered module
or class, or another name of the same object), and inline code otherwise (internal modules, torch, geoopt, ...).
``~`` shortens the text to the last name, as in Sphinx. Double-backtick literals are already Markdown code.
"""
from __future__ import annotations

import importlib
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):`(~?)([^`<>]+?)`")
REFERENCE = Path(__file__).resolve().parents[1] / "reference"


def _resolve(path: str) -> object | None:
    """The Python object at a dotted ``path``, or None."""
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for name in parts[i:]:
            obj = getattr(obj, name, None)
            if obj is None:
                return None
        return obj
    return None


@lru_cache(maxsize=1)
def rendered() -> dict[str, object]:
    """Every path the reference pages render, with its object: the directives' and their modules' public names."""
    paths: dict[str, object] = {}
    for page in sorted(REFERENCE.glob("*.md")):
        for path in re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M):
            obj = _resolve(path)
            paths[path] = obj
            for name in getattr(obj, "__all__", ()) if isinstance(obj, type(re)) else ():
                paths[f"{path}.{name}"] = getattr(obj, name)
    return paths


def target_for(path: str) -> str | None:
    """The rendered path that documents ``path`` (itself, a member of a rendered object, or an alias), or None."""
    paths = rendered()
    if path in paths:
        return path
    head, _, member = path.rpartition(".")
    if head in paths and member and hasattr(paths[head], member):
        return path
    obj = _resolve(path)
    if obj is not None:
        for p, o in paths.items():
            if o is obj:
                return p
    return None


def _replace(match: re.Match) -> str:
    short, raw = match.group(1), match.group(2).strip()
    path = raw.rstrip("()")
    text = path.rsplit(".", 1)[-1] if short else path
    target = target_for(path) if path.startswith("geoattn") else None
    return f"[`{text}`][{target}]" if target else f"`{text}`"


def convert(text: str) -> str:
    """The docstring ``text`` with its reStructuredText roles written as Markdown."""
    return ROLE.sub(_replace, text)


class RstRoles(griffe.Extension):
    """Rewrite every docstring's roles when griffe loads it (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
