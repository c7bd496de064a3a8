"""The interface between Python and ``kernel.cpp``: the ctypes mirror of its structs, checked when it loads.

``View`` and ``Problem`` copy ``struct View`` and ``struct Problem`` of ``common.h`` field for field. The
library exports its own layout (``geoattn_native_layout``: ``sizeof`` of each struct and the ``offsetof``
of every field, by name) and :func:`read` compares it with these classes when the library loads; the first
field that differs (name, offset, or a field one side lacks) makes the load fail with that field named, and
the backend then declines like any other load failure. A mismatch can no longer pass unnoticed, so no
version number has to be bumped by hand.

The constants both languages need (the kind numbers, the number of per-token term rows ``kTerms`` and the
vector width ``kLanes``) come from the same export: C++ is their one source of truth, since the kernel's
code is written around them (its ``switch`` on the kind, its loops over 16 lanes), while Python only passes
them on. They are read once per load, into :class:`Constants`, and nothing in Python repeats them.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

_P, _I64, _I32, _F32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int32, ctypes.c_float


class View(ctypes.Structure):
    """``struct View``: a (B, H, rows, cols) float32 tensor with a contiguous last dim, by its strides."""

    _fields_ = [("data", _P), ("sb", _I64), ("sh", _I64), ("sr", _I64)]


class Problem(ctypes.Structure):
    """``struct Problem`` (common.h): one forward or backward call's arguments (documented there)."""

    _fields_ = [
        ("B", _I64), ("H", _I64), ("L", _I64), ("S", _I64), ("D", _I64), ("Ev", _I64), ("bq", _I64),
        ("kind", _I32), ("causal", _I32), ("nthreads", _I32), ("chunk", _I32),
        ("q", View), ("k", View), ("v", View), ("out", View), ("lse", _P), ("kappa", _P), ("mu", _P),
        ("inv_sqrt_e", _F32), ("clip", _F32), ("eta", _F32), ("want_dkappa", _I32),
        ("allowed", _P), ("am_b", _I64), ("am_h", _I64), ("am_i", _I64), ("am_j", _I64),
        ("bias", _P), ("bm_b", _I64), ("bm_h", _I64), ("bm_i", _I64), ("bm_j", _I64),
        ("clipped", _P), ("qterms", _P), ("kterms", _P), ("qnorm", _P), ("knorm", _P),
        ("dout", View), ("dq", View), ("dk", View), ("dv", View), ("dkappa", _P), ("dmu", _P), ("dkbias", _P),
        ("dqouter", _P), ("dkouter", _P), ("dqfactor", _P), ("dkfactor", _P), ("outer", _I32), ("pad3_", _I32),
        ("sgemm", _P), ("metric", _P), ("ktilde", _P), ("dmetric", _P),
    ]


@dataclass(frozen=True)
class Constants:
    """What the loaded kernel says about itself: ``kinds`` (name → the ``Kind`` enum's number), ``terms``
    (per-token term rows, ``kTerms``) and ``lanes`` (its vector width in floats, ``kLanes``)."""

    kinds: dict[str, int]
    terms: int
    lanes: int


def exported(lib) -> dict[str, int]:
    """The library's ``geoattn_native_layout`` table: ``"sizeof View"``, ``"View.data"`` (offsets in bytes),
    …, ``"kind.sphere"``, ``"kTerms"``, ``"kLanes"``."""
    fn = lib.geoattn_native_layout
    fn.restype = ctypes.c_int64
    fn.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int64), ctypes.c_int64]
    n = fn(None, None, 0)
    names, values = (ctypes.c_char_p * n)(), (ctypes.c_int64 * n)()
    fn(names, values, n)
    return {name.decode(): value for name, value in zip(names, values)}


def layout_mismatch(table: dict[str, int], structs: tuple[type[ctypes.Structure], ...] = (View, Problem)) -> str | None:
    """The first difference between the library's layout ``table`` and the ctypes ``structs`` (each named as
    its C struct, ``Problem`` or ``View``, by ``__name__`` unless it sets ``_c_name_``), or None."""
    for struct in structs:
        c_name = getattr(struct, "_c_name_", struct.__name__)
        mine = {f"{c_name}.{name}": getattr(struct, name).offset for name, *_ in struct._fields_}
        theirs = {key: value for key, value in table.items() if key.startswith(f"{c_name}.")}
        for key in [*sorted(theirs, key=theirs.get), *(key for key in mine if key not in theirs)]:  # C's order
            if mine.get(key) != theirs.get(key):
                return (f"field {key} is at offset {theirs.get(key, 'none (no such field)')} in the library and "
                        f"{mine.get(key, 'none (no such field)')} in abi.py's ctypes {struct.__name__}")
        size = table.get(f"sizeof {c_name}")
        if size != ctypes.sizeof(struct):
            return f"sizeof({c_name}) is {size} in the library and {ctypes.sizeof(struct)} in abi.py's ctypes mirror"
    return None


def read(lib) -> Constants | str:
    """The loaded library's :class:`Constants`, or why its interface does not match this module's."""
    try:
        table = exported(lib)
    except AttributeError:
        return "it exports no geoattn_native_layout (built from another version of kernel.cpp: delete the file)"
    mismatch = layout_mismatch(table)
    if mismatch is not None:
        return f"{mismatch} (abi.py's ctypes View and Problem must mirror common.h's structs field for field)"
    kinds = {key.removeprefix("kind."): value for key, value in table.items() if key.startswith("kind.")}
    return Constants(kinds, table["kTerms"], table["kLanes"])
