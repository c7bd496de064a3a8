"""The native CPU kernel (``geoattn/backends/native``) against the dense float64 reference.

Every kind it runs (κ-stereographic of either sign, the geodesic sphere, and the affine kind: learned
metric, squared distance, cosine, Lorentz with its outer time term), every mask form, one and several
key chunks (S > 512: the online softmax across chunks, causal rows that end inside a chunk), float32 and
bf16 inputs: outputs and the gradients of q, k, v and every learnable geometry parameter.
"""
from __future__ import annotations

import zlib

import pytest
import torch

import geoattn
from benchmarks.memory import saved_activation_mb

from test_backends_fused import GRAD_TOL, TOL

pytestmark = pytest.mark.native

H, D = 2, 8
class AffineFormMetric(geoattn.Metric):
    """The learned metric through the generic ``affine`` native kind (the terms of its ``affine_form`` computed
    in torch, the operator's affine kind): the path of a new affine geometry that has no kernel kind of its own."""

    native_kind = "affine"
    native_spec = geoattn.Geometry.native_spec


GEOMETRIES = {
    "poincare": lambda: geoattn.Poincare(curvature=[-0.7, -1.3], temperature=[0.8, 1.5], num_heads=H, learnable=True),
    "stereo-pos": lambda: geoattn.Stereographic(curvature=0.4, temperature=1.2, learnable=True),
    "stereo-mixed": lambda: geoattn.Stereographic(curvature=[-0.5, 0.3], num_heads=H, learnable=True),
    "stereo-flat": lambda: geoattn.Stereographic(curvature=0.0),
    "sphere-geodesic": lambda: geoattn.Sphere(score="geodesic", curvature=2.0, temperature=0.5, learnable=True),
    "sphere-cosine": lambda: geoattn.Sphere(temperature=[0.7, 1.4], num_heads=H, learnable=True),
    "lorentz": lambda: geoattn.Lorentz(curvature=[-0.8, -1.6], temperature=[0.9, 1.2], num_heads=H, learnable=True),
    "metric": lambda: geoattn.Metric(head_dim=D, rank=3, learnable=True),
    "metric-full": lambda: geoattn.Metric(head_dim=D, temperature=[1.0, 0.6], num_heads=H, learnable=True),
    "l2": lambda: geoattn.L2(temperature=[0.8, 1.3], num_heads=H, learnable=True),
    "affine-form": lambda: AffineFormMetric(head_dim=D, temperature=[1.0, 0.6], num_heads=H, learnable=True),
}


def _run(geom, q, k, v, mask, causal, backend):
    """Output and the gradients of a fixed loss w.r.t. q, k, v and the parameters the score uses."""
    out = geoattn.attention(q, k, v, geometry=geom, attn_mask=mask, is_causal=causal, backend=backend)
    loss = (out.double() * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).pow(2).sum()
    params = [p for p in geom.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [q, k, v, *params], allow_unused=True)  # cosine: κ is unused
    return out, [g for g in grads if g is not None]


def _compare_with_float64(make_geometry, q, k, v, mask, causal, dtype):
    """The native kernel's output and gradients against the dense float64 path (within the float32 dense
    path's own error, or the dtype's tolerance); returns the native output."""
    geom = make_geometry().float()
    out, grads = _run(geom, q, k, v, mask, causal, "native")
    same, same_grads = _run(geom, q, k, v, mask, causal, "dense")  # float32 conditioning bounds both
    ref_geom = make_geometry().double()
    ref_geom.load_state_dict({n: p.double() for n, p in geom.state_dict().items()})
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_grads = _run(ref_geom, qd, kd, vd, mask, causal, "dense")
    assert out.dtype == dtype and out.shape == ref.shape

    def close(x, y, x_dense, tol):
        err, err_dense = (x.double() - y).abs().max().item(), (x_dense.double() - y).abs().max().item()
        assert torch.isfinite(x).all()
        assert err < max(tol * (y.abs().max().item() + 1), 2 * err_dense), (err, err_dense)

    close(out, ref, same, TOL[dtype])
    assert len(grads) == len(ref_grads)
    for g, r, g_dense in zip(grads, ref_grads, same_grads):
        close(g, r, g_dense, GRAD_TOL[dtype])
    return out


SHAPES = {"one-chunk": (2, 37, 45), "chunks": (1, 70, 1100)}  # (B, L, S); chunks: 512 + 512 + 76 keys


def _mask(kind, B, L, S, gen):
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind == "bool":
        m = torch.rand(B, 1, L, S, generator=gen) > 0.4
        m[0, 0, 3] = False  # a fully masked row: zeros
        return m, False
    bias = torch.randn(1, H, 1, S, generator=gen)
    bias[..., 5] = float("-inf")
    return bias, False


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_native_matches_dense_float64(name, mask_kind, shape, dtype):
    B, L, S = SHAPES[shape]
    if mask_kind == "causal":
        S = L if shape == "one-chunk" else 1030  # top-left causal: rows end in every chunk
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{mask_kind}/{shape}".encode()))
    mask, causal = _mask(mask_kind, B, L, S, gen)
    q, k, v = ((0.6 * torch.randn(B, H, n, D, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()
               for n in (L, S, S))
    out = _compare_with_float64(GEOMETRIES[name], q, k, v, mask, causal, dtype)
    if mask_kind == "bool":
        assert out[0, 0, 3].abs().max().item() == 0.0


# One query block and one key chunk (the quick suite's tiles, L = 64) at the head dims users pick: whole
# 16-lane vectors (16, 64), a vector and a tail (24), and more keys than one 64-wide tile (S = 80).
@pytest.mark.parametrize("head_dim", [16, 24, 64])
@pytest.mark.parametrize("mask_kind", ["none", "causal"])
@pytest.mark.parametrize("name", ["poincare", "lorentz", "metric"])
def test_native_small_tiles_match_dense_float64(name, mask_kind, head_dim):
    B, L, S = 2, 64, (64 if mask_kind == "causal" else 80)
    make = {"poincare": GEOMETRIES["poincare"], "lorentz": GEOMETRIES["lorentz"],
            "metric": lambda: geoattn.Metric(head_dim=head_dim, rank=5, learnable=True)}[name]
    gen = torch.Generator().manual_seed(zlib.crc32(f"small/{name}/{mask_kind}/{head_dim}".encode()))
    q, k, v = ((0.6 * torch.randn(B, H, n, head_dim, generator=gen, dtype=torch.float64)).float().requires_grad_()
               for n in (L, S, S))
    _compare_with_float64(make, q, k, v, None, mask_kind == "causal", torch.float32)


# q, k, v as a transformer layer passes them, views of (B, L, H, E) tensors: the learned metric's k̃ = K G then runs
# as one sgemm per head over every batch element (metric.h); and L = 300 > 256 query rows, two work items per head,
# whose dK and dV are accumulated across items (one item per head writes them directly, the shapes above).
@pytest.mark.parametrize("L", [40, 300])
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool"])
@pytest.mark.parametrize("name", ["metric", "metric-full", "lorentz", "poincare", "l2"])
def test_native_heads_last_inputs_and_query_blocks_match_dense_float64(name, mask_kind, L):
    B, S = 2, (L if mask_kind == "causal" else L + 9)
    gen = torch.Generator().manual_seed(zlib.crc32(f"layout/{name}/{mask_kind}/{L}".encode()))
    mask, causal = _mask(mask_kind, B, L, S, gen)
    q, k, v = ((0.6 * torch.randn(B, n, H, D, generator=gen, dtype=torch.float64)).float().requires_grad_()
               for n in (L, S, S))
    assert q.transpose(1, 2).stride()[0] == L * q.transpose(1, 2).stride()[2]  # batch elements stack

    def make():  # parameters moved off their initial values (G ≈ I, κ = -1, τ = 1 there), the same each time
        geom, moved = GEOMETRIES[name](), torch.Generator().manual_seed(7)
        with torch.no_grad():
            for p in geom.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=moved, dtype=p.dtype))
        return geom

    _compare_with_float64(make, q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), mask, causal, torch.float32)


@pytest.mark.parametrize("name", ["lorentz", "metric", "sphere-cosine", "poincare"])
def test_auto_runs_the_native_kernel_on_cpu_float32(name):
    q = torch.randn(1, H, 16, D)
    assert geoattn.explain_backend(q, q, q, geometry=GEOMETRIES[name]()).startswith("native: auto: on CPU")
    assert geoattn.explain_backend(q.double(), q.double(), q.double(),
                                   geometry=GEOMETRIES[name]()).split(":")[0] in ("sdpa", "dense", "tiled")


@pytest.mark.parametrize("name, bound", [("lorentz", 1.1), ("l2", 1.1), ("sphere-cosine", 1.1), ("metric", 1.35)])
def test_affine_kinds_keep_about_what_sdpa_keeps(name, bound):
    """The radial affine kinds (lorentz, l2, cosine) run on the raw q, k with their per-token terms formed in
    the kernel: saved for backward are q, k, v, the output, one log-sum-exp per row and the terms (5 floats
    and a double per token and side), i.e. what SDPA saves plus O(L); the metric keeps k̃ = G k as well.
    The SDPA route of the same geometry keeps the lifted q̃, k̃ and the lift's own graph."""
    E = 64
    geom = GEOMETRIES[name]() if name != "metric" else geoattn.Metric(head_dim=E, rank=3, learnable=True)
    q, k, v = (torch.randn(1, H, 1024, E, requires_grad=True) for _ in range(3))

    def saved(**kwargs) -> float:
        return saved_activation_mb(lambda: geoattn.attention(q, k, v, **kwargs).sum())[1]

    native, sdpa, euclid = saved(geometry=geom, backend="native"), saved(geometry=geom, backend="sdpa"), saved()
    assert native <= bound * euclid, (native, euclid)
    assert sdpa > 1.4 * euclid, (sdpa, euclid)


def test_lorentz_clip_is_counted_on_the_native_kernel():
    geom = geoattn.Lorentz(curvature=-1.0)
    q = torch.randn(1, 1, 8, 4)
    q[0, 0, 0] *= 100.0  # √c‖q‖/√E ≫ 4
    with pytest.warns(geoattn.ClipWarning):
        geoattn.attention(q, q, q, geometry=geom, backend="native")
    assert geom.clipped == 2  # the query and the key


@pytest.mark.parametrize("sign, power, param_heads",
                         [(-1, 0.0, 4), (1, -0.5, 4), (0, 0.0, 1), (1, -0.5, 1), (None, 0.0, 4)])
def test_head_constants_match_the_tensor_expression(sign, power, param_heads):
    """κ and μ of the native kernel (geoattn.backends.native.spec.HeadConstants, no autograd graph) and its written-out
    chain rule against the plain tensor expression in float64: the values (to float32 rounding) and both
    parameters' gradients for random cotangents (autograd of the expression)."""
    from geoattn.backends.native.spec import HeadConstants

    heads, coef = 4, -1.7
    gen = torch.Generator().manual_seed(3)
    raw = None if sign is None else 0.5 * torch.randn(param_heads, generator=gen, dtype=torch.float64)
    raw = None if raw is None else raw.requires_grad_()
    log_t = (0.3 * torch.randn(param_heads, generator=gen, dtype=torch.float64)).requires_grad_()
    d_kappa, d_mu = torch.randn(2, heads, generator=gen, dtype=torch.float64)

    kappa = torch.zeros(1, dtype=torch.float64) if raw is None else (sign * raw.exp() if sign else raw.sinh())
    mu = coef * (-log_t).exp() * (kappa.abs() ** power if power else 1.0)
    want = kappa.expand(heads), mu.expand(heads)

    head = HeadConstants(raw, log_t, heads, sign or 0, coef, power)
    for got, ref in zip(head.values(), want):  # one double per head, bit for bit torch's float64 expression
        assert len(got) == heads
        assert torch.equal(torch.tensor(got, dtype=torch.float64), ref.detach())
    params = [t for t in (raw, log_t) if t is not None]
    ref = torch.autograd.grad((want[0] * d_kappa).sum() + (want[1] * d_mu).sum(), params, allow_unused=True)
    got = [g for g in head.grads(d_kappa.tolist(), d_mu.tolist()) if g is not None]
    assert len(got) == len(ref)
    for g, r in zip(got, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-14)
    # and bit for bit the same chain rule written as float64 tensor ops (the form the class replaced)
    with torch.no_grad():
        k, m = (t.detach().expand(heads) for t in want)
        chain = [(-d_mu * m).sum_to_size(log_t.shape)]
        if raw is not None:
            dk = d_kappa + d_mu * power * m / k if power else d_kappa
            chain.insert(0, (dk * (k if sign else raw.cosh().expand(heads))).sum_to_size(raw.shape))
    assert all(torch.equal(g, c) for g, c in zip(got, chain))


@pytest.mark.parametrize("rank, param_heads", [(None, 4), (None, 1), (3, 4), (3, 1)])
def test_metric_constants_match_the_tensor_expression(rank, param_heads):
    """G of the native kernel (geoattn.backends.native.spec.MetricConstants, no autograd graph) and its written-out
    chain rule against Metric.metric_tensor in float64: the values (to float32 rounding, expanded to every
    head) and the gradients of the factor and raw_diagonal for a random, non-symmetric dG (as the kernel's
    is), with heads sharing one parameter (param_heads = 1) or each its own."""
    from geoattn.backends.native.spec import MetricConstants

    heads, E = 4, 6
    gen = torch.Generator().manual_seed(5)
    geom = geoattn.Metric(head_dim=E, rank=rank, num_heads=param_heads)
    with torch.no_grad():
        for p in geom.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    d_metric = torch.randn(heads, E, E, generator=gen, dtype=torch.float64)
    want = geom.metric_tensor().expand(heads, -1, -1)

    metric = MetricConstants(geom.factor, geom.raw_diagonal, geom.epsilon, heads)
    got = metric.values()
    assert got.dtype == torch.float32 and got.shape == (heads, E, E) and got.is_contiguous()
    assert not got.requires_grad
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-7, atol=1e-7)
    params = [p for p in (geom.factor, geom.raw_diagonal) if p is not None]
    ref = torch.autograd.grad((want * d_metric).sum(), params)
    grads = [g for g in metric.grads(d_metric) if g is not None]
    assert len(grads) == len(ref) == (1 if rank is None else 2)
    for g, r in zip(grads, ref):
        assert g.shape == r.shape
        torch.testing.assert_close(g, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("rank", [None, 3])
@pytest.mark.parametrize("param_heads", [4, 1])
def test_native_metric_parameter_gradients_match_dense_float64(rank, param_heads):
    """The learned metric's parameter gradients (factor, and raw_diagonal for rank=r) through the native kernel's
    one autograd node (dG from the kernel, the chain rule of MetricConstants) against the dense float64 path,
    with 4 heads, each with its own parameters or all sharing one, and a factor away from its initial value."""
    heads, B, L, E = 4, 2, 33, 8
    gen = torch.Generator().manual_seed(zlib.crc32(f"metric-params/{rank}/{param_heads}".encode()))
    perturb = 0.3 * torch.randn(param_heads, E, E if rank is None else rank, generator=gen, dtype=torch.float64)

    def make():
        geom = geoattn.Metric(head_dim=E, rank=rank, temperature=0.8, num_heads=param_heads, learnable=True)
        with torch.no_grad():
            geom.factor.add_(perturb)
        return geom

    q, k, v = ((0.6 * torch.randn(B, heads, L, E, generator=gen, dtype=torch.float64)).float().requires_grad_()
               for _ in range(3))
    _compare_with_float64(make, q, k, v, None, True, torch.float32)


@pytest.mark.parametrize("head_dim", [1, 8])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_native_self_scores_and_head_dim_one_match_dense_float64(name, head_dim):
    """Keys equal to the queries (a token scored against itself: gap 0 up to rounding) and head dim 1 (every pair
    parallel or antipodal). The geodesic sphere's 1/sin θ once turned the rounding of its two cancelling gradient
    parts into gradients of 1e8 here; θ is not differentiable at 0 and the subgradient 0 is the dense path's."""
    if name in ("metric", "metric-full", "affine-form") and head_dim == 1:
        pytest.skip("the metric's geometry is built for head dim 8")
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, H, 9, head_dim, generator=gen)
    v = torch.randn(2, H, 9, 5, generator=gen)
    k = q.clone()
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    _compare_with_float64(GEOMETRIES[name], *leaves, None, False, torch.float32)
