"""Numerical stress: no NaN or Inf in outputs or gradients at the edges of every geometry.

Seeded hypothesis property tests over: tangent norms up to 1.25 × the geometry's clip (so both
sides of ``clip_radius`` are exercised; far around the sphere, large norms for the flat
geometries), curvature from -10 to 10 across 0, temperatures from 1e-3 to 1e3, fully masked rows,
causal masks, float32 / float64 / bf16 / fp16 inputs and bf16 autocast, on every backend that runs
the geometry. CI runs a seeded slice; the full run (> 10,000 generated cases) is

    GEOATTN_STRESS_EXAMPLES=3000 scripts/test.sh tests/test_stress.py

(3 × 3,000 + 1,000 examples; each example runs forward and backward and checks every gradient).
"""
from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import geoattn

EXAMPLES = int(os.environ.get("GEOATTN_STRESS_EXAMPLES", "60"))
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

curvatures = (st.floats(min_value=-10.0, max_value=10.0, allow_nan=False)
              | st.sampled_from([0.0, -1e-12, 1e-12, -10.0, 10.0]))
temperatures = st.floats(min_value=-3.0, max_value=3.0).map(lambda e: 10.0 ** e)
dtypes = st.sampled_from(["float32", "float64", "bfloat16", "float16", "autocast"])
radii = st.floats(min_value=0.0, max_value=1.0) | st.just(1.0)


def build(name: str, kappa: float, tau: float, heads: int, dim: int, aggregation: int) -> geoattn.Geometry:
    if name == "euclidean":
        return geoattn.Euclidean()
    if name == "metric":
        return geoattn.Metric(head_dim=dim, rank=None if aggregation % 2 else 2, temperature=tau, num_heads=heads)
    if name == "sphere":
        return geoattn.Sphere(score=("cosine", "geodesic")[aggregation % 2], curvature=abs(kappa) + 1e-3,
                              temperature=tau, num_heads=heads, aggregation=("linear", "mean")[aggregation // 2 % 2])
    if name == "lorentz":
        return geoattn.Lorentz(curvature=-abs(kappa) - 1e-3, temperature=tau, num_heads=heads,
                               aggregation=("linear", "centroid")[aggregation % 2])
    if name == "poincare":
        return geoattn.Poincare(curvature=-abs(kappa) - 1e-3, temperature=tau, num_heads=heads,
                                aggregation=("linear", "midpoint")[aggregation % 2])
    return geoattn.Stereographic(curvature=kappa, temperature=tau, num_heads=heads,
                                 aggregation=("linear", "midpoint")[aggregation % 2])


def tangent(shape, radius: float, geometry: geoattn.Geometry, kappa: float, g: torch.Generator) -> torch.Tensor:
    """Random (unscaled) inputs whose tangent norm ‖x‖/√E reaches ``radius`` × 1.25 × the clip for κ < 0
    (past it, so the clip acts), or ``radius`` × 10/√|κ| (many turns round the sphere; 10 for flat ones)."""
    dim = shape[-1]
    u = torch.randn(*shape, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    r = torch.rand(*shape[:-1], 1, generator=g, dtype=torch.float64) * radius
    clip = getattr(geometry, "clip_radius", None)
    if kappa < -1e-6 and clip is not None:
        scale = 1.25 * clip / math.sqrt(abs(kappa))
    else:
        scale = 10.0 / math.sqrt(max(abs(kappa), 1e-2))
    u = u * r * scale * math.sqrt(dim)
    u[..., 0, :] = 0.0  # a zero vector (the origin) in every sequence
    return u


def run_case(name, kappa, tau, dtype_name, radius, seed, L, S, heads, dim, aggregation, mask_kind, backend):
    g = torch.Generator().manual_seed(seed)
    geometry = build(name, kappa, tau, heads, dim, aggregation)
    for p in geometry.parameters():
        p.requires_grad_(True)
    k_eff = float(geometry.curvature.detach().min()) if hasattr(geometry, "curvature") else 0.0
    q = tangent((2, heads, L, dim), radius, geometry, k_eff, g)
    k = tangent((2, heads, S, dim), radius, geometry, k_eff, g)
    v = torch.randn(2, heads, S, dim, generator=g, dtype=torch.float64)
    dtype = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
             "float16": torch.float16, "autocast": torch.float32}[dtype_name]
    if dtype == torch.float64:
        geometry = geometry.double()
    if name == "euclidean" and dtype == torch.float16:
        # the Euclidean score is SDPA's dot product, computed in the input dtype (as SDPA does): past
        # ‖q‖‖k‖/√E ≈ 65504 it leaves float16's range in SDPA itself; keep the norms inside that range
        q, k = (t * torch.clamp(100.0 / t.norm(dim=-1, keepdim=True).clamp(min=1e-30), max=1.0) for t in (q, k))
    q, k, v = (t.to(dtype).requires_grad_() for t in (q, k, v))
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, L, S, generator=g) > 0.5
        mask[:, :, 0] = False  # a fully masked row
    kwargs = {"attn_mask": mask, "is_causal": mask_kind == "causal", "backend": backend}
    if not geometry.affine and backend == "sdpa":
        kwargs["backend"] = "auto"
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype_name == "autocast"), warnings.catch_warnings():
        warnings.simplefilter("ignore", geoattn.ClipWarning)  # the clip acting is the point here
        out = geoattn.attention(q, k, v, geometry=geometry, **kwargs)
    assert torch.isfinite(out).all(), f"non-finite output for {geometry}"
    if mask_kind == "bool":
        assert (out[:, :, 0] == 0).all(), "fully masked rows must give zeros"
    out.float().square().mean().backward()
    for t_name, t in (("q", q), ("k", k), ("v", v), *geometry.named_parameters()):
        assert t.grad is None or torch.isfinite(t.grad).all(), f"non-finite gradient of {t_name} for {geometry}"


common = dict(
    kappa=curvatures, tau=temperatures, dtype_name=dtypes, radius=radii, seed=st.integers(0, 2**16),
    heads=st.sampled_from([1, 2]), dim=st.sampled_from([2, 4, 8, 32]), aggregation=st.integers(0, 3),
    mask_kind=st.sampled_from(["none", "bool", "causal"]),
)


@SETTINGS
@given(name=st.sampled_from(["poincare", "stereographic"]), L=st.integers(1, 9), S=st.integers(1, 9),
       backend=st.sampled_from(["auto", "dense"]), **common)
def test_fused_geometries_never_give_nan(**case):
    run_case(**case)


@SETTINGS
@given(name=st.sampled_from(["lorentz", "sphere", "metric", "euclidean"]), L=st.integers(1, 9),
       S=st.integers(1, 9), backend=st.sampled_from(["auto", "dense", "sdpa"]), **common)
def test_affine_geometries_never_give_nan(**case):
    run_case(**case)


@settings(SETTINGS, max_examples=max(EXAMPLES // 3, 10))
@given(name=st.sampled_from(geoattn.available_geometries()), L=st.sampled_from([128, 384]),
       S=st.sampled_from([256, 512]), backend=st.just("auto"), **common)
def test_long_sequences_never_give_nan(**case):
    run_case(**case)


@SETTINGS
@given(name=st.sampled_from(geoattn.available_geometries()), L=st.integers(1, 4), S=st.integers(1, 4),
       backend=st.just("dense"),
       **{**common, "radius": st.just(1.0), "dtype_name": st.sampled_from(["float32", "bfloat16", "float16"])})
def test_boundary_points_in_low_precision_never_give_nan(**case):
    run_case(**case)


@pytest.mark.parametrize("name, kappa, radius, L, S", [
    ("stereographic", 0.0, 1e-14, 1, 2),       # found by the 10,000-case run: 0·inf in clip_tangent's gradient
    ("lorentz", 1.0, 2.2e-16, 128, 256),       # the same, on the hyperboloid
    ("poincare", -1.0, 1e-15, 3, 4),
])
def test_tiny_tangent_vectors_regressions(name, kappa, radius, L, S):
    for aggregation in range(4):
        run_case(name=name, kappa=kappa, tau=1.0, dtype_name="float32", radius=radius, seed=0, L=L, S=S, heads=1,
                 dim=2, aggregation=aggregation, mask_kind="none", backend="auto")


@pytest.mark.parametrize("name, backend", [("sphere", "dense"), ("sphere", "auto"), ("sphere-cosine", "dense"),
                                           ("sphere-cosine", "auto")])
def test_zero_query_vector_in_float16_regression(name, backend):
    """Found by the 10,000-case run: a query that is exactly the zero vector (the test's origin) gave the geodesic
    sphere an infinite float16 gradient (1/NORM_MIN through the direction), and cosine one from a compute-dtype
    floor. The direction of a zero vector now has gradient zero (as in the native kernel)."""
    geometry = geoattn.Sphere(score="geodesic" if name == "sphere" else "cosine", temperature=10.0)
    q = torch.zeros(2, 1, 1, 2, dtype=torch.float16, requires_grad=True)
    k = torch.tensor([[3.0, 4.0], [0.0, 0.0]], dtype=torch.float16).expand(2, 1, 2, 2).clone().requires_grad_()
    v = torch.randn(2, 1, 2, 2, generator=torch.Generator().manual_seed(0)).half().requires_grad_()
    geoattn.attention(q, k, v, geometry=geometry, backend=backend).float().square().mean().backward()
    assert torch.isfinite(q.grad).all() and torch.isfinite(k.grad).all()
    assert (q.grad == 0).all()  # nothing depends on the direction of a zero query


def test_unit_of_a_zero_vector_has_zero_gradient():
    from geoattn.math.vectors import unit

    x = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    (unit(x) * torch.randn(3, 4, dtype=torch.float64)).sum().backward()
    assert (x.grad == 0).all() and (unit(x) == 0).all()
    torch.autograd.gradcheck(unit, (y,))  # away from zero: the ordinary derivative of x/‖x‖
