"""The fused backends (``tiled``, ``flex``) against the dense float64 reference: outputs and gradients.

The grid runs the tiled backend's block functions eagerly (``set_tiled_compile(False)``: identical
maths, no compile cost); a few tests run the compiled kernels (tiled forward+backward, flex forward).
"""
from __future__ import annotations

import zlib

import pytest
import torch

import geoattn
from benchmarks.peak_rss import peak_bytes
from geoattn.backends.policy import choose
from geoattn.backends.tiled import TiledAttention, _Plan, tiled_attention
from geoattn.call import prepare_call

B, H, L, D = 2, 2, 37, 8

GEOMETRIES = {
    "poincare": lambda: geoattn.Poincare(curvature=[-0.7, -1.3], temperature=[0.8, 1.5], num_heads=H, learnable=True),
    "poincare-midpoint": lambda: geoattn.Poincare(curvature=-1.0, temperature=0.9, learnable=True,
                                                  aggregation="midpoint"),
    "stereo-pos": lambda: geoattn.Stereographic(curvature=0.4, temperature=1.2, learnable=True, aggregation="midpoint"),
    "stereo-neg": lambda: geoattn.Stereographic(curvature=[-0.5, 0.3], num_heads=H, learnable=True),
    "sphere-geodesic": lambda: geoattn.Sphere(score="geodesic", curvature=2.0, temperature=0.5, learnable=True,
                                              aggregation="mean"),
    "lorentz-centroid": lambda: geoattn.Lorentz(curvature=-0.8, learnable=True, aggregation="centroid"),
    "metric": lambda: geoattn.Metric(head_dim=D, rank=3, learnable=True),
}


@pytest.fixture(autouse=True)
def eager_tiles():
    geoattn.set_tiled_compile(False)
    yield
    geoattn.set_tiled_compile(True)


def _mask(kind: str, gen: torch.Generator):
    if kind == "none":
        return None, False
    if kind == "causal":
        return None, True
    if kind == "bool":
        m = torch.rand(B, 1, L, L, generator=gen) > 0.4
        m[0, 0, 3] = False  # a fully masked row: zeros, like SDPA and the dense path
        return m, False
    bias = torch.randn(1, H, 1, L, generator=gen)
    bias[..., 5] = float("-inf")
    return bias, False


def _inputs(dtype, gen):
    return [(0.6 * torch.randn(B, H, L, D, generator=gen, dtype=torch.float64)).to(dtype).requires_grad_()
            for _ in range(3)]


def _run(geom, q, k, v, mask, causal, backend):
    out = geoattn.attention(q, k, v, geometry=geom, attn_mask=mask, is_causal=causal, backend=backend)
    loss = (out.double() * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).pow(2).sum()
    params = [p for p in geom.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [q, k, v, *params])
    return out, grads


TOL = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 3e-2}
# Gradients in float32: the FlashAttention identity Δᵢ = rowsum(dOᵢ ⊙ Oᵢ) replaces Σⱼ pᵢⱼ dPᵢⱼ, and with
# large manifold-aggregation values (λ - 1 of the midpoint) the cancellation in dP - Δ costs ~1e-3
# (measured 1.5e-3 on a gradient of size 0.3 for the causal Poincaré midpoint; float64 agrees to 1e-12).
GRAD_TOL = {torch.float64: 1e-9, torch.float32: 6e-3, torch.bfloat16: 3e-2}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("mask_kind", ["none", "causal", "bool", "float"])
@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_tiled_matches_dense_float64(name, mask_kind, dtype):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{name}/{mask_kind}".encode()))
    geom = GEOMETRIES[name]()
    mask, causal = _mask(mask_kind, gen)
    q, k, v = _inputs(dtype, gen)
    geom = geom.to(torch.float64 if dtype == torch.float64 else torch.float32)
    out, grads = _run(geom, q, k, v, mask, causal, "tiled")
    # the dense path in the same dtype: float32 conditioning (midpoints near the boundary) bounds both
    same, same_grads = _run(geom, q, k, v, mask, causal, "dense")
    ref_geom = GEOMETRIES[name]().double()
    ref_geom.load_state_dict({n: p.double() for n, p in geom.state_dict().items()})
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_grads = _run(ref_geom, qd, kd, vd, mask, causal, "dense")
    assert out.dtype == dtype and out.shape == ref.shape
    tol = TOL[dtype]

    def close(x, y, x_dense, tol):
        err, err_dense = (x.double() - y).abs().max().item(), (x_dense.double() - y).abs().max().item()
        assert torch.isfinite(x).all()
        assert err < max(tol * (y.abs().max().item() + 1), 2 * err_dense), (err, err_dense)

    close(out, ref, same, tol)
    assert len(grads) == len(ref_grads) >= 4  # q, k, v and at least one geometry parameter
    for g, r, g_dense in zip(grads, ref_grads, same_grads):
        close(g, r, g_dense, GRAD_TOL[dtype])
    if mask_kind == "bool":
        assert out[0, 0, 3].abs().max().item() == 0.0


def test_tiled_gradcheck_float64():
    """``torch.autograd.gradcheck`` of the Function itself, including term and per-head gradients."""
    gen = torch.Generator().manual_seed(0)
    geom = geoattn.Stereographic(curvature=[-0.8, 0.5], temperature=[0.7, 1.1], num_heads=H).double()
    q, k, v = (0.5 * torch.randn(1, H, 9, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    lifted = geom.lift(q, k, None)
    leaves = [t.detach().clone().requires_grad_() for t in (lifted.q, lifted.k, v, *lifted.q_terms,
                                                           *lifted.k_terms, *lifted.head)]
    allowed = torch.rand(1, 1, 9, 9, generator=gen) > 0.3
    for causal in (False, True):
        plan = _Plan(geom.score_from_dot, 1.0, len(lifted.q_terms), len(lifted.k_terms), causal, allowed, None,
                     block_q=4, block_k=3)
        assert torch.autograd.gradcheck(lambda *xs: TiledAttention.apply(plan, *xs), leaves)
        # the chord form (what the stereographic lift gives): the pairwise tile is ‖q̃ - k̃‖² per pair
        plan = _Plan(geom.score_from_chord, 1.0, len(lifted.q_terms), len(lifted.k_terms), causal, allowed, None,
                     block_q=4, block_k=3, chord=True)
        assert torch.autograd.gradcheck(lambda *xs: TiledAttention.apply(plan, *xs), leaves)


def test_tiled_blocks_do_not_change_the_result():
    gen = torch.Generator().manual_seed(1)
    geom = geoattn.Poincare(curvature=-1.0).double()
    q, k, v = (torch.randn(1, 1, 50, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    call = prepare_call(q, k, v, geom, is_causal=True)
    outs = [tiled_attention(call, block_elements=n) for n in (1, 16 * 50, 10**9)]
    ref, _ = geoattn.backends.dense.DenseBackend().run(call)
    for out in outs:
        assert (out - ref).abs().max().item() < 1e-12


def test_tiled_memory_is_linear_in_length():
    """At L = S = 8192 the dense path holds several 256 MiB score matrices (GBs with its backward);
    the tiled path's forward+backward stays within a fixed budget, and grows ~linearly with L."""
    geom = geoattn.Poincare(curvature=-1.0, learnable=True)
    peaks = {}
    for n in (2048, 8192):
        q, k, v = (torch.randn(1, 1, n, 8).requires_grad_() for _ in range(3))

        def step():
            out = geoattn.attention(q, k, v, geometry=geom, backend="tiled")
            out.sum().backward()
        peaks[n] = peak_bytes(step)
    if peaks[8192] is None:
        pytest.skip("peak memory needs Linux /proc")
    dense_score_bytes = 8192 * 8192 * 4
    assert peaks[8192] < dense_score_bytes  # one dense score matrix alone is 256 MiB (its backward: GBs)
    assert peaks[8192] < 8 * max(peaks[2048], 4 * 2**20)  # quadratic growth would be 16×


def select_backend(name, geometry, q, return_weights, dropout_p, needs_grad):
    """The backend ``name`` resolves to for self-attention on ``q`` (the policy's call form)."""
    q = q.clone().requires_grad_(needs_grad)
    return choose(prepare_call(q, q, q, geometry, dropout_p=dropout_p, return_weights=return_weights), name).backend


@pytest.mark.native
def test_auto_choice_and_overrides():
    poincare, lorentz = geoattn.Poincare(), geoattn.Lorentz()
    big, small = torch.randn(1, 8, 2048, 16), torch.randn(1, 2, 64, 16)
    assert select_backend("auto", lorentz, big, False, 0.0, True) == "native"  # CPU float32: at head dim E
    assert select_backend("auto", lorentz, big.double(), False, 0.0, True) == "sdpa"
    assert select_backend("auto", poincare, big, False, 0.0, False) == "native"  # CPU float32: the fused kernel
    assert select_backend("auto", poincare, big, False, 0.0, True) == "native"
    assert select_backend("auto", poincare, small, False, 0.0, True) == "native"    # at every size
    assert select_backend("auto", poincare, big.double(), False, 0.0, False) == "tiled"  # float64: portable paths
    assert select_backend("auto", poincare, small.double(), False, 0.0, True) == "dense"
    assert select_backend("auto", poincare, big, True, 0.0, False) == "dense"  # weights
    with geoattn.default_backend("dense"):
        assert select_backend("auto", poincare, big, False, 0.0, True) == "dense"
    with pytest.raises(ValueError, match="no backward on CPU"):
        select_backend("flex", poincare, big, False, 0.0, True)
    with pytest.raises(ValueError, match="does not return attention weights"):
        select_backend("tiled", poincare, big, True, 0.0, False)


@pytest.mark.native
def test_auto_explains_its_choice(caplog):
    q = torch.randn(1, 8, 2048, 16)
    assert geoattn.explain_backend(q, q, q, geometry="lorentz").startswith("native: auto: on CPU the native kernel "
                                                                            "runs the affine score")
    assert geoattn.explain_backend(q.double(), q.double(), q.double(), geometry="lorentz").startswith(
        "sdpa: auto: the score is affine")
    assert geoattn.explain_backend(q, q, q, geometry="poincare").startswith("native: auto: on CPU")
    assert geoattn.explain_backend(q.double(), q.double(), q.double(), geometry="poincare").startswith(
        "tiled: auto: on CPU")
    assert geoattn.explain_backend(q, q, q, geometry="poincare", return_weights=True).startswith("dense: auto: ")
    assert geoattn.explain_backend(q, q, q, geometry="poincare", backend="flex").startswith("flex: named by")
    with caplog.at_level("DEBUG", logger="geoattn"):
        geoattn.attention(q[:, :1, :64], q[:, :1, :64], q[:, :1, :64], geometry="sphere")
    assert "backend native for geometry 'sphere' (affine)" in caplog.text


def test_auto_falls_back_when_the_native_kernel_is_unavailable(monkeypatch):
    from geoattn.backends.native import build

    monkeypatch.setattr(build, "_LOADED", "no C++ compiler found (set $CXX or install g++) to build the native kernel")
    poincare = geoattn.Poincare()
    big, small = torch.randn(1, 8, 2048, 16), torch.randn(1, 2, 64, 16)
    assert select_backend("auto", poincare, big, False, 0.0, True) == "tiled"
    assert select_backend("auto", poincare, small, False, 0.0, True) == "dense"
    assert select_backend("auto", geoattn.Lorentz(), big, False, 0.0, True) == "sdpa"
    with pytest.raises(ValueError, match="no C.. compiler found"):
        select_backend("native", poincare, big, False, 0.0, True)


def test_tiled_rejects_learnable_float_mask():
    q = torch.randn(1, 1, 8, 4, requires_grad=True)
    bias = torch.zeros(8, 8, requires_grad=True)
    with pytest.raises(ValueError, match="float attn_mask that requires grad"):
        geoattn.attention(q, q, q, geometry="poincare", attn_mask=bias, backend="tiled")


# -- compiled kernels (a few shapes: compiling costs seconds per family) --------------------------

def test_tiled_compiled_forward_backward_matches_dense():
    geoattn.set_tiled_compile(True)
    gen = torch.Generator().manual_seed(2)
    geom = geoattn.Sphere(score="geodesic", temperature=0.5, learnable=True)
    ref_geom = geoattn.Sphere(score="geodesic", temperature=0.5, learnable=True).double()
    for n in (150, 300):  # two lengths, one compiled graph (dynamic shapes)
        q, k, v = (torch.randn(1, H, n, D, generator=gen).requires_grad_() for _ in range(3))
        out, grads = _run(geom, q, k, v, None, True, "tiled")
        qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
        ref, ref_grads = _run(ref_geom, qd, kd, vd, None, True, "dense")
        assert (out.double() - ref).abs().max().item() < 1e-4
        for g, r in zip(grads, ref_grads):
            assert (g.double() - r).abs().max().item() < 1e-3 * (r.abs().max().item() + 1)


@pytest.mark.parametrize("mask_kind", ["bool", "float"])
def test_flex_forward_matches_dense(mask_kind):
    gen = torch.Generator().manual_seed(3)
    geom = geoattn.Sphere(score="geodesic", temperature=[0.5, 2.0], num_heads=H, aggregation="mean")
    mask, causal = _mask(mask_kind, gen)
    q, k, v = (torch.randn(B, H, L, D, generator=gen) for _ in range(3))
    with torch.no_grad():
        out = geoattn.attention(q, k, v, geometry=geom, attn_mask=mask, is_causal=causal, backend="flex")
        ref = geoattn.attention(q.double(), k.double(), v.double(), geometry=geom.double(), attn_mask=mask,
                                is_causal=causal, backend="dense")
    assert (out.double() - ref).abs().max().item() < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("causal", [False, True])
def test_flex_cuda_forward_backward(causal):
    gen = torch.Generator().manual_seed(4)
    geom = geoattn.Poincare(curvature=-0.9, temperature=0.7, learnable=True)
    q, k, v = (torch.randn(1, H, 256, 64, generator=gen).cuda().requires_grad_() for _ in range(3))
    out, grads = _run(geom.cuda(), q, k, v, None, causal, "flex")
    ref_geom = geoattn.Poincare(curvature=-0.9, temperature=0.7, learnable=True).double().cuda()
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    ref, ref_grads = _run(ref_geom, qd, kd, vd, None, causal, "dense")
    assert (out.double() - ref).abs().max().item() < 1e-4
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max().item() < 1e-3 * (r.abs().max().item() + 1)
