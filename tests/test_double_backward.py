"""Double backward (a gradient penalty: ``grad(out.pow(2).sum(), q, create_graph=True)``, then the backward of its
norm, as in WGAN-GP, R1 and meta-learning) equals the dense float64 backend's on every backend that runs the call:
the fused backends' backward, when autograd records it, recomputes the gradients as torch operations."""
from __future__ import annotations

import copy

import pytest
import torch

import geoattn
from test_native import GEOMETRIES

MASKS = ["none", "bool", "float", "causal"]


@pytest.fixture(autouse=True, scope="module")
def _eager_tiled():
    geoattn.set_tiled_compile(False)
    yield
    geoattn.set_tiled_compile(True)


def penalty_grads(geometry, backend, dtype, mask_kind, self_attention=False):
    """Gradients of ‖∂(Σ out²)/∂q‖ with respect to a projection W (q, k, v = x W, x' Wᵀ, x W / 2), x, and the
    geometry's parameters."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 2, 6, 8, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
    W = (torch.randn(8, 8, generator=g, dtype=torch.float64) / 3).to(dtype).requires_grad_()
    mask = None
    if mask_kind == "bool":
        mask = torch.rand(2, 1, 6, 6, generator=g) > 0.3
        mask[..., 0] = True
    elif mask_kind == "float":
        mask = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64).to(dtype)
    q, k, v = (x @ W,) * 3 if self_attention else (x @ W, x.flip(-2) @ W.t(), 0.5 * x @ W)
    out = geoattn.attention(q, k, v, geometry=geometry, backend=backend, attn_mask=mask,
                            is_causal=mask_kind == "causal")
    gq, = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
    params = [p for p in geometry.parameters() if p.requires_grad]
    return torch.autograd.grad(gq.norm(), [W, x, *params], allow_unused=True)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("backend", ["auto", "native", "tiled"])
@pytest.mark.parametrize("name", sorted(GEOMETRIES))
def test_gradient_penalty_matches_dense(name, backend, mask_kind):
    geometry = GEOMETRIES[name]()
    reference = penalty_grads(copy.deepcopy(geometry).double(), "dense", torch.float64, mask_kind)
    grads = penalty_grads(geometry, backend, torch.float32, mask_kind)
    for g, r in zip(grads, reference):
        if r is None or g is None:  # a parameter the score does not use (κ of a flat geometry)
            assert (g is None or not g.any()) and (r is None or not r.any())
            continue
        assert (g.double() - r).abs().max().item() < 2e-4 * (r.abs().max().item() + 1), name


@pytest.mark.parametrize("backend", ["native", "tiled"])
@pytest.mark.parametrize("name", ["poincare", "lorentz", "metric-full", "affine-form"])
def test_self_attention_gradient_penalty_matches_dense(name, backend):
    """q, k and v one tensor: each gets its own gradient, not their sum three times."""
    geometry = GEOMETRIES[name]()
    reference = penalty_grads(copy.deepcopy(geometry).double(), "dense", torch.float64, "none", True)
    for g, r in zip(penalty_grads(geometry, backend, torch.float32, "none", True), reference):
        assert (g.double() - r).abs().max().item() < 2e-4 * (r.abs().max().item() + 1), name


@pytest.mark.native
def test_first_order_gradients_are_unchanged_by_create_graph():
    """create_graph=True gives the first-order gradients of the fused backward (to float32 rounding)."""
    geometry = geoattn.Poincare(curvature=-0.7, learnable=True)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=g).requires_grad_() for _ in range(3))
    for backend in ("native", "tiled"):
        out = geoattn.attention(q, k, v, geometry=geometry, backend=backend)
        plain = torch.autograd.grad(out.square().sum(), (q, k, v, *geometry.parameters()), retain_graph=True)
        graph = torch.autograd.grad(out.square().sum(), (q, k, v, *geometry.parameters()), create_graph=True)
        for a, b in zip(plain, graph):
            assert b.requires_grad and (a - b).abs().max().item() < 1e-5 * (a.abs().max().item() + 1)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("name", ["euclidean", "euclidean-tau", "lorentz", "l2"])
def test_gradient_penalty_on_sdpa_matches_dense(name, dtype, mask_kind):
    """PyTorch's fused SDPA kernels have no double backward; the sdpa backend's recorded backward runs SDPA's math
    backend, so a gradient penalty through backend='sdpa' (what auto picks for the dot product, and for every affine
    score in float64) equals the dense float64 one."""
    geometry = geoattn.make_geometry(name, num_heads=2, **({"temperature": 0.7} if name != "euclidean" else {}))
    for p in geometry.parameters():
        p.requires_grad_(True)
    reference = penalty_grads(copy.deepcopy(geometry).double(), "dense", torch.float64, mask_kind)
    grads = penalty_grads(geometry.to(dtype), "sdpa", dtype, mask_kind)
    for g, r in zip(grads, reference):
        if r is None or g is None:
            assert (g is None or not g.any()) and (r is None or not r.any())
            continue
        assert (g.double() - r).abs().max().item() < 2e-4 * (r.abs().max().item() + 1), name


def test_first_order_sdpa_gradients_are_the_fused_kernels_own():
    """An ordinary backward through backend='sdpa' is bit for bit F.scaled_dot_product_attention's."""
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 3, 7, 8, generator=g, requires_grad=True) for _ in range(3))
    out = geoattn.attention(q, k, v, geometry="euclidean", backend="sdpa", is_causal=True)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    ref_out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    ref = torch.autograd.grad(ref_out.square().sum(), (q, k, v))
    assert torch.equal(out, ref_out)
    for a, b in zip(grads, ref):
        assert torch.equal(a, b)
