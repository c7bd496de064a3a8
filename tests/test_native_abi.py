"""The native kernel's interface check (``backends/native/abi.py``): the library exports the layout of its
structs and its constants, and Python's ctypes mirror must match it field for field when it loads."""
from __future__ import annotations

import ctypes

import pytest
import torch

import geoattn
from geoattn.backends.native import abi, build, load

NATIVE = load()
pytestmark = pytest.mark.skipif(isinstance(NATIVE, str), reason=str(NATIVE))

_LAYOUT_FN = ctypes.CFUNCTYPE(ctypes.c_int64, ctypes.POINTER(ctypes.c_char_p), ctypes.POINTER(ctypes.c_int64),
                              ctypes.c_int64)


class _FakeLibrary:
    """A library whose ``geoattn_native_layout`` exports ``table`` (a real C-callable function pointer)."""

    def __init__(self, table: dict[str, int]):
        items = list(table.items())
        keep = [ctypes.c_char_p(name.encode()) for name, _ in items]

        def layout(names, values, cap):
            slots = ctypes.cast(names, ctypes.POINTER(ctypes.c_void_p))  # the addresses of our own strings
            for i, (_, value) in enumerate(items[:cap]):
                slots[i], values[i] = ctypes.cast(keep[i], ctypes.c_void_p).value, value
            return len(items)

        self._keep = keep
        self.geoattn_native_layout = _LAYOUT_FN(layout)


def _swapped(fields, a, b):
    i, j = (next(n for n, f in enumerate(fields) if f[0] == name) for name in (a, b))
    fields = list(fields)
    fields[i], fields[j] = fields[j], fields[i]
    return fields


def test_the_library_exports_what_the_ctypes_mirror_says():
    table = abi.exported(NATIVE.lib)
    # every field of both structs, at the offset ctypes computes, and both sizes
    for struct in (abi.View, abi.Problem):
        for name, *_ in struct._fields_:
            assert table[f"{struct.__name__}.{name}"] == getattr(struct, name).offset
        assert table[f"sizeof {struct.__name__}"] == ctypes.sizeof(struct)
    assert abi.layout_mismatch(table) is None
    # the kinds the built-in geometries name all exist in the kernel, with distinct numbers
    kinds = NATIVE.abi.kinds
    assert len(set(kinds.values())) == len(kinds)
    for geometry in (geoattn.Poincare(), geoattn.Stereographic(curvature=0.5), geoattn.Lorentz(), geoattn.L2(),
                     geoattn.Sphere(), geoattn.Sphere(score="geodesic"), geoattn.Metric(head_dim=4)):
        assert geometry.native_kind in kinds
    assert "affine" in kinds
    # the key-term rows are padded to whole vectors of lanes floats: a power of two
    assert NATIVE.abi.lanes > 0 and NATIVE.abi.lanes & (NATIVE.abi.lanes - 1) == 0


def test_a_ctypes_struct_with_swapped_fields_is_caught():
    class Problem(ctypes.Structure):
        _fields_ = _swapped(abi.Problem._fields_, "kind", "causal")

    message = abi.layout_mismatch(abi.exported(NATIVE.lib), (abi.View, Problem))
    kind, causal = abi.Problem.kind.offset, abi.Problem.causal.offset
    assert message == f"field Problem.kind is at offset {kind} in the library and {causal} in abi.py's ctypes Problem"

    class View(ctypes.Structure):  # same size, different order: only the offsets tell
        _fields_ = _swapped(abi.View._fields_, "data", "sr")

    message = abi.layout_mismatch(abi.exported(NATIVE.lib), (View, abi.Problem))
    assert message is not None and "field View.data" in message


def test_a_ctypes_struct_missing_a_field_is_caught():
    class Problem(ctypes.Structure):
        _fields_ = [f for f in abi.Problem._fields_ if f[0] != "dmetric"]

    message = abi.layout_mismatch(abi.exported(NATIVE.lib), (abi.View, Problem))
    assert message is not None and "Problem.dmetric" in message and "no such field" in message


@pytest.mark.parametrize("change, field", [
    (lambda t: t.update({"Problem.clip": t["Problem.clip"] + 4}), "Problem.clip"),
    (lambda t: t.update({"Problem.extra": 512}), "Problem.extra"),
    (lambda t: t.update({"sizeof Problem": t["sizeof Problem"] + 8}), "sizeof(Problem)"),
])
def test_a_library_with_another_layout_is_refused(change, field):
    table = abi.exported(NATIVE.lib)
    assert isinstance(abi.read(_FakeLibrary(table)), abi.Constants)  # the fake itself works
    change(table)
    reason = abi.read(_FakeLibrary(table))
    assert isinstance(reason, str) and field in reason


def test_a_library_without_the_export_is_refused():
    reason = abi.read(object())
    assert isinstance(reason, str) and "geoattn_native_layout" in reason and "delete the file" in reason


def test_the_backend_declines_a_mismatched_library(monkeypatch):
    real = abi.exported

    def shifted(lib):
        table = real(lib)
        table["Problem.kind"] += 4
        return table

    monkeypatch.setattr(abi, "exported", shifted)
    monkeypatch.setattr(build, "_LOADED", None)
    reason = build.load()
    assert isinstance(reason, str) and "Problem.kind" in reason and "mirror common.h" in reason
    q = torch.randn(1, 2, 8, 4)
    with pytest.raises(ValueError, match="Problem.kind"):
        geoattn.attention(q, q, q, geometry="poincare", backend="native")
    assert geoattn.attention(q, q, q, geometry="poincare").shape == q.shape  # auto runs elsewhere
