"""Every tensor layout gives the dense float64 answer: forward and backward, every geometry, every backend.

A user's q, k, v, mask and upstream gradient may be any strided view: transposed (B, L, H, E) memory,
expanded along any dim (stride 0: keys broadcast over S, a gradient of ``out.sum(dim=-2)``), ``unfold``
(overlapping rows), a last dim with a stride, a storage offset. Each generated case builds the same layouts
from float32 leaves and from float64 leaves, runs every backend that accepts the call (``native``, ``sdpa``,
``tiled`` eager, ``dense``) in float32 and compares the output and the gradients of the leaves and of the
geometry's parameters with ``backend="dense"`` in float64. CI runs a seeded slice; the stress run is

    GEOATTN_STRESS_EXAMPLES=3000 scripts/test.sh tests/test_layouts.py

(3,000 generated cases, each forward and backward on up to four backends).
"""
from __future__ import annotations

import copy
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.backends.policy import unsupported
from geoattn.call import prepare_call

EXAMPLES = int(os.environ.get("GEOATTN_STRESS_EXAMPLES", "40"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
BACKENDS = ["native", "sdpa", "tiled", "dense"]
LAYOUTS = ["contiguous", "heads_last", "expand_rows", "expand_heads", "expand_batch", "unfold", "offset",
           "strided_last", "one_row"]

GEOMETRIES = {
    "euclidean": lambda e, h: geoattn.Euclidean(num_heads=h),
    "euclidean-tau": lambda e, h: geoattn.make_geometry("euclidean-tau", temperature=0.7, num_heads=h),
    "l2": lambda e, h: geoattn.L2(temperature=0.8, num_heads=h),
    "lorentz": lambda e, h: geoattn.Lorentz(curvature=-0.6, temperature=1.5, num_heads=h),
    "lorentz-centroid": lambda e, h: geoattn.Lorentz(num_heads=h, aggregation="centroid"),
    "metric": lambda e, h: geoattn.Metric(head_dim=e, num_heads=h, temperature=2.0),
    "metric-lowrank": lambda e, h: geoattn.Metric(head_dim=e, rank=min(2, e), num_heads=h),
    "poincare": lambda e, h: geoattn.Poincare(curvature=-0.7, temperature=0.8, num_heads=h),
    "poincare-midpoint": lambda e, h: geoattn.Poincare(curvature=-1.3, num_heads=h, aggregation="midpoint"),
    "sphere": lambda e, h: geoattn.Sphere(score="geodesic", curvature=2.0, num_heads=h),
    "sphere-cosine": lambda e, h: geoattn.Sphere(temperature=0.3, num_heads=h),
    "stereographic": lambda e, h: geoattn.Stereographic(curvature=0.8, num_heads=h),
    "stereographic-neg": lambda e, h: geoattn.Stereographic(curvature=-0.5, num_heads=h, aggregation="midpoint"),
}


@pytest.fixture(autouse=True, scope="module")
def _eager_tiled():
    geoattn.set_tiled_compile(False)  # the identical maths, without compiling a graph per family
    yield
    geoattn.set_tiled_compile(True)


def test_every_registered_geometry_is_covered():
    assert {make(4, 2).name for make in GEOMETRIES.values()} == set(geoattn.available_geometries())


def base_shape(layout: str, shape: tuple[int, int, int, int]) -> tuple[int, ...]:
    """The shape of the leaf tensor whose view :func:`view` makes (its gradient is what is compared)."""
    B, H, R, C = shape
    return {"contiguous": shape, "heads_last": (B, R, H, C), "expand_rows": (B, H, 1, C), "expand_heads": (B, 1, R, C),
            "expand_batch": (1, H, R, C), "unfold": (B, H, R + C - 1), "offset": (B + 1, H, R + 2, C + 3),
            "strided_last": (B, H, R, 2 * C), "one_row": (B, H, 1, C)}[layout]


def view(layout: str, leaf: torch.Tensor, shape: tuple[int, int, int, int]) -> torch.Tensor:
    """A (B, H, R, C) view of ``leaf`` in ``layout``."""
    B, H, R, C = shape
    if layout == "contiguous":
        return leaf
    if layout == "heads_last":
        return leaf.transpose(1, 2)
    if layout in ("expand_rows", "expand_heads", "expand_batch"):
        return leaf.expand(B, H, R, C)
    if layout == "unfold":  # rows overlap: row i is elements i … i + C − 1
        return leaf.unfold(-1, C, 1)
    if layout == "offset":  # storage offset, padded rows and batches
        return leaf[1:, :, 2:, 3:]
    if layout == "strided_last":
        return leaf[..., ::2]
    # row stride 0 (as expand_rows); with one row torch calls it contiguous and .contiguous() keeps the stride
    return leaf.as_strided((B, H, R, C), (H * C, C, 0, 1))


@st.composite
def cases(draw):
    name = draw(st.sampled_from(sorted(GEOMETRIES)))
    heads = draw(st.sampled_from([1, 2]))
    E = draw(st.sampled_from([1, 3, 8, 16]))
    L, S = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    layouts = [draw(st.sampled_from(LAYOUTS)) for _ in range(4)]  # q, k, v, dO
    mask = draw(st.sampled_from(["none", "bool", "float", "causal"]))
    mask_layout = draw(st.sampled_from(["contiguous", "transposed", "expanded"]))
    return dict(name=name, heads=heads, B=2, E=E, L=L, S=S, layouts=layouts, mask=mask, mask_layout=mask_layout,
                seed=draw(st.integers(0, 2**16)))


def make_mask(kind: str, layout: str, B: int, H: int, L: int, S: int, g: torch.Generator):
    if kind in ("none", "causal"):
        return None
    shape = (B, H, S, L) if layout == "transposed" else (B, 1, L, S) if layout == "expanded" else (B, H, L, S)
    m = torch.rand(shape, generator=g, dtype=torch.float64)
    m = m > 0.3 if kind == "bool" else m - 0.5
    if layout == "transposed":
        m = m.transpose(-1, -2)
    elif layout == "expanded":
        m = m.expand(B, H, L, S)
    return m


def run(geometry, leaves, case, dtype, backend, mask):
    """Output and the gradients of (leaves…, parameters…) of one call, the upstream gradient in its layout."""
    B, H, E, L, S = case["B"], case["heads"], case["E"], case["L"], case["S"]
    shapes = [(B, H, L, E), (B, H, S, E), (B, H, S, E), (B, H, L, E)]
    leaves = [t.detach().to(dtype).requires_grad_(i < 3) for i, t in enumerate(leaves)]
    q, k, v, dout = (view(lay, t, shape) for lay, t, shape in zip(case["layouts"], leaves, shapes))
    m = None if mask is None else (mask if mask.dtype == torch.bool else mask.to(dtype))
    out = geoattn.attention(q, k, v, geometry=geometry, attn_mask=m, is_causal=case["mask"] == "causal",
                            backend=backend)
    params = [p for p in geometry.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out, leaves[:3] + params, dout, allow_unused=True)
    return out, grads


def accepts(geometry, q, k, v, mask, causal, backend) -> bool:
    return unsupported(prepare_call(q, k, v, geometry, attn_mask=mask, is_causal=causal), backend) is None


def check_case(case):
    g = torch.Generator().manual_seed(case["seed"])
    B, H, E, L, S = case["B"], case["heads"], case["E"], case["L"], case["S"]
    shapes = [(B, H, L, E), (B, H, S, E), (B, H, S, E), (B, H, L, E)]
    leaves = [0.7 * torch.randn(base_shape(lay, sh), generator=g, dtype=torch.float64)
              for lay, sh in zip(case["layouts"], shapes)]
    mask = make_mask(case["mask"], case["mask_layout"], B, H, L, S, g)
    geometry = GEOMETRIES[case["name"]](E, H)
    reference = copy.deepcopy(geometry).double()
    ref_out, ref_grads = run(reference, leaves, case, torch.float64, "dense", mask)
    probe = [view(lay, t.float(), sh) for lay, t, sh in zip(case["layouts"][:3], leaves, shapes)]
    ran = []
    for backend in BACKENDS:
        if not accepts(geometry, *probe, mask, case["mask"] == "causal", backend):
            continue
        geometry.zero_grad()
        out, grads = run(geometry, leaves, case, torch.float32, backend, mask)
        scale = ref_out.abs().max().item() + 1.0
        err = (out.double() - ref_out).abs().max().item()
        assert err < 2e-4 * scale, f"{backend} output off by {err:.3g} for {case}"
        for i, (gr, ref) in enumerate(zip(grads, ref_grads)):
            if ref is None or gr is None:
                assert (gr is None or not gr.any()) and (ref is None or not ref.any()), f"{backend}: grad {i}"
                continue
            err = (gr.double() - ref).abs().max().item()
            assert err < 1e-3 * (ref.abs().max().item() + 1.0), f"{backend} gradient {i} off by {err:.3g} for {case}"
        ran.append(backend)
    assert "dense" in ran


@SETTINGS
@given(case=cases())
def test_every_layout_matches_dense(case):
    check_case(case)


@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_issue_repros_every_geometry(name):
    """The reports: an upstream gradient with stride 0 along L (``out.sum(dim=-2)``) and keys/values expanded
    along S, on every backend; on main the native kernel passed lda < E to sgemm and returned garbage (~1e36)."""
    for layouts in (["contiguous", "contiguous", "contiguous", "expand_rows"],
                    ["contiguous", "expand_rows", "expand_rows", "contiguous"],
                    ["unfold", "unfold", "one_row", "unfold"]):
        check_case(dict(name=name, heads=2, B=1, E=16, L=8, S=8, layouts=layouts, mask="none",
                        mask_layout="contiguous", seed=0))
