"""The contract every geometry meets, on every backend that runs it."""
from __future__ import annotations

import math

import pytest
import torch

import geoattn
from conftest import GEOMETRY_CASES

CASES = sorted(GEOMETRY_CASES)
B, H, L, S, D = 2, 3, 5, 7, 4


def make(case: str, heads: int = H, dtype=torch.float32) -> geoattn.Geometry:
    return GEOMETRY_CASES[case](D, heads).to(dtype)


def inputs(dtype=torch.float32, seed=0, scale=0.7, L=L, S=S):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, L, D, generator=g, dtype=dtype) * scale
    k = torch.randn(B, H, S, D, generator=g, dtype=dtype) * scale
    v = torch.randn(B, H, S, D, generator=g, dtype=dtype)
    return q, k, v


def normalised_entropy(geometry, d: int, n: int = 256, keys: int = 64, seed: int = 0) -> float:
    """Mean normalised entropy of the attention of ``n`` unit-variance queries over ``keys`` unit-variance keys."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(n, 1, 1, d, generator=gen)
    k = torch.randn(n, 1, keys, d, generator=gen)
    _, w = geoattn.attention(q, k, k[..., :1], geometry=geometry, return_weights=True)
    w = w[:, 0, 0].detach()
    return float((-(w * w.clamp_min(1e-30).log()).sum(-1) / math.log(keys)).mean())


HEAD_DIMS = [2, 4, 8, 16, 32, 64, 128]


def backends_for(geometry) -> list[str]:
    return ["dense", "sdpa"] if geometry.affine else ["dense"]


def test_every_registered_geometry_has_a_contract_case():
    names = sorted(geoattn.available_geometries(), key=len, reverse=True)
    # a case is a registered name (which may hold a hyphen: "euclidean-tau"), or one with a variant after a hyphen
    # ("sphere-geodesic"): the longest registered name it starts with
    of_case = {case: next((n for n in names if case == n or case.startswith(n + "-")), case) for case in GEOMETRY_CASES}
    assert set(of_case.values()) == set(names)


@pytest.mark.parametrize("case", CASES)
def test_weight_rows_sum_to_one_and_output_is_finite(case):
    q, k, v = inputs()
    out, w = geoattn.attention(q, k, v, geometry=make(case), backend="dense", return_weights=True)
    assert w.shape == (B, H, L, S)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, H, L), atol=1e-6, rtol=0)
    assert (w >= 0).all() and torch.isfinite(out).all()


@pytest.mark.parametrize("case", CASES)
def test_permutation_equivariance_over_keys(case):
    geometry = make(case)
    q, k, v = inputs(seed=1)
    perm = torch.randperm(S, generator=torch.Generator().manual_seed(3))
    for backend in backends_for(geometry):
        out = geoattn.attention(q, k, v, geometry=geometry, backend=backend)
        out_perm = geoattn.attention(q, k[..., perm, :], v[..., perm, :], geometry=geometry, backend=backend)
        torch.testing.assert_close(out_perm, out, atol=2e-6, rtol=1e-5)
        # permuting queries permutes the outputs
        qperm = torch.randperm(L, generator=torch.Generator().manual_seed(4))
        out_q = geoattn.attention(q[..., qperm, :], k, v, geometry=geometry, backend=backend)
        torch.testing.assert_close(out_q, out[..., qperm, :], atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_masks_behave_like_sdpa(case):
    """Bool mask ≡ -inf float mask; masked keys get zero weight and their values do not matter;
    is_causal ≡ the lower-triangular bool mask; fully masked rows give zeros."""
    geometry = make(case)
    q, k, v = inputs(seed=2)
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(B, 1, L, S, generator=g) > 0.4
    mask[..., 0] = True
    mask[0, 0, 2] = False  # one fully masked row
    float_mask = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    v_changed = torch.where(mask.any(dim=2, keepdim=True).transpose(-1, -2), v, v + 100.0)  # only unseen keys
    for backend in backends_for(geometry):
        out = geoattn.attention(q, k, v, geometry=geometry, attn_mask=mask, backend=backend)
        with_float = geoattn.attention(q, k, v, geometry=geometry, attn_mask=float_mask, backend=backend)
        torch.testing.assert_close(with_float, out)
        assert out[0, :, 2].abs().max() == 0, "a fully masked row must give zeros"
        assert torch.isfinite(out).all()
        unseen = ~mask.any(dim=2).squeeze(1)  # (B, S) keys no query may see
        v2 = v.clone()
        v2[unseen[:, None, :, None].expand_as(v2)] = 1e3
        torch.testing.assert_close(geoattn.attention(q, k, v2, geometry=geometry, attn_mask=mask, backend=backend), out)
        causal = geoattn.attention(q, k, v, geometry=geometry, is_causal=True, backend=backend)
        tril = torch.ones(L, S, dtype=torch.bool).tril()
        with_tril = geoattn.attention(q, k, v, geometry=geometry, attn_mask=tril, backend=backend)
        torch.testing.assert_close(with_tril, causal)
    _, w = geoattn.attention(q, k, v, geometry=geometry, attn_mask=mask, backend="dense", return_weights=True)
    assert (w[~mask.expand_as(w)] == 0).all()
    del v_changed


@pytest.mark.parametrize("case", CASES)
def test_additive_float_mask_shifts_scores(case):
    """A float mask is added to the scores: weights ∝ exp(score + bias)."""
    geometry = make(case)
    q, k, v = inputs(seed=6)
    bias = torch.randn(1, H, L, S, generator=torch.Generator().manual_seed(7))
    _, w0 = geoattn.attention(q, k, v, geometry=geometry, backend="dense", return_weights=True)
    _, w1 = geoattn.attention(q, k, v, geometry=geometry, attn_mask=bias, backend="dense", return_weights=True)
    expected = w0 * bias.exp()
    torch.testing.assert_close(w1, expected / expected.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("case", CASES)
def test_sdpa_reduction_equals_dense_in_float32(case):
    geometry = make(case)
    if not geometry.affine:
        with pytest.raises(ValueError, match="not affine"):
            geoattn.attention(*inputs(), geometry=geometry, backend="sdpa")
        return
    q, k, v = inputs(seed=8, L=33, S=41)
    mask = torch.rand(B, 1, 33, 41, generator=torch.Generator().manual_seed(9)) > 0.3
    for kwargs in ({}, {"is_causal": True}, {"attn_mask": mask}):
        dense = geoattn.attention(q, k, v, geometry=geometry, backend="dense", **kwargs)
        sdpa = geoattn.attention(q, k, v, geometry=geometry, backend="sdpa", **kwargs)
        torch.testing.assert_close(sdpa, dense, atol=1e-5, rtol=1e-5)


class _Attend(torch.nn.Module):
    """Wraps a geometry so ``functional_call`` can substitute its parameters (for gradcheck)."""

    def __init__(self, geometry, backend="dense"):
        super().__init__()
        self.geometry, self.backend = geometry, backend

    def forward(self, q, k, v):
        return geoattn.attention(q, k, v, geometry=self.geometry, backend=self.backend, is_causal=True)


@pytest.mark.parametrize("case", CASES)
def test_gradcheck_float64_including_geometry_parameters(case):
    """Gradients w.r.t. q, k, v and every geometry parameter (curvature, temperature, metric) in float64."""
    module = _Attend(make(case, heads=2, dtype=torch.float64))
    names = [n for n, _ in module.named_parameters()]
    assert names or case == "euclidean", "every non-euclidean geometry has parameters"
    g = torch.Generator().manual_seed(10)
    q = (torch.randn(1, 2, 3, D, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    k = (torch.randn(1, 2, 4, D, generator=g, dtype=torch.float64) * 0.6).requires_grad_()
    v = torch.randn(1, 2, 4, D, generator=g, dtype=torch.float64).requires_grad_()
    params = tuple(p.detach().clone().requires_grad_() for _, p in module.named_parameters())

    def fn(q, k, v, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (q, k, v))

    assert torch.autograd.gradcheck(fn, (q, k, v, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_parameters_receive_gradients_when_learnable(case):
    geometry = GEOMETRY_CASES[case](D, H)
    for p in geometry.parameters():
        p.requires_grad_(True)
    q, k, v = inputs(seed=11)
    q.requires_grad_()
    geoattn.attention(q, k, v, geometry=geometry).square().sum().backward()
    assert torch.isfinite(q.grad).all() and q.grad.abs().sum() > 0
    for name, p in geometry.named_parameters():
        if case == "sphere-cosine" and name == "raw_curvature":
            assert p.grad is None  # the cosine score does not depend on the radius (documented)
            continue
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


def test_per_head_parameters_change_each_head_independently():
    q, k, v = inputs(seed=12)
    geometry = geoattn.Poincare(curvature=[-0.5, -1.0, -2.0], temperature=[1.0, 0.5, 2.0], num_heads=3)
    out = geoattn.attention(q, k, v, geometry=geometry)
    for h, (c, t) in enumerate([(-0.5, 1.0), (-1.0, 0.5), (-2.0, 2.0)]):
        single = geoattn.attention(q[:, h], k[:, h], v[:, h], geometry=geoattn.Poincare(curvature=c, temperature=t))
        torch.testing.assert_close(out[:, h], single)


def test_learnable_flag_and_reported_values():
    g = geoattn.Lorentz(curvature=-2.0, temperature=0.5, num_heads=4, learnable=True)
    assert all(p.requires_grad for p in g.parameters())
    # parameters are stored in float64, so they report exactly the values given
    torch.testing.assert_close(g.curvature, torch.full((4,), -2.0, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(g.temperature, torch.full((4,), 0.5, dtype=torch.float64), rtol=0, atol=1e-15)
    fixed = geoattn.Stereographic(curvature=0.3)
    assert not any(p.requires_grad for p in fixed.parameters())
    torch.testing.assert_close(fixed.curvature, torch.tensor([0.3], dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("case", CASES)
def test_leading_dims_broadcast_like_sdpa(case):
    """(L, E) inputs, (B, L, E) inputs with one head, and extra batch dims all work and agree."""
    geometry = make(case, heads=1)
    q, k, v = inputs(seed=13)
    q, k, v = q[:, :1], k[:, :1], v[:, :1]
    full = geoattn.attention(q, k, v, geometry=geometry)
    torch.testing.assert_close(geoattn.attention(q[0, 0], k[0, 0], v[0, 0], geometry=geometry), full[0, 0])
    torch.testing.assert_close(geoattn.attention(q[:, 0], k[:, 0], v[:, 0], geometry=geometry), full[:, 0])
    five = geoattn.attention(q[None], k[None], v[None], geometry=geometry)
    torch.testing.assert_close(five[0], full)


@pytest.mark.parametrize("name", sorted(set(geoattn.available_geometries())))
def test_geometry_by_name_uses_defaults(name):
    q, k, v = inputs(seed=14)
    out = geoattn.attention(q, k, v, geometry=name)
    kwargs = {"head_dim": D} if name == "metric" else {}
    torch.testing.assert_close(out, geoattn.attention(q, k, v, geometry=geoattn.make_geometry(name, **kwargs)))


@pytest.mark.parametrize("case", CASES)
def test_default_attention_is_as_sharp_as_sdpa_at_every_head_dim(case):
    """The scale rule (:mod:`geoattn.geometry.base`): the case's geometry built by name with its options (score,
    rank, aggregation, ...) and default parameters gives unit-variance queries and keys an attention whose
    normalised entropy is within 0.2 of SDPA's (≈ 0.89 over 64 keys) at every head size from 2 to 128, and
    never uniform (≤ 0.98)."""
    template = make(case, heads=1)
    options = {key: getattr(template, key) for key in template.options}
    for d in HEAD_DIMS:
        geometry = geoattn.make_geometry(template.name, head_dim=d, **options)
        reference, h = normalised_entropy(geoattn.Euclidean(), d), normalised_entropy(geometry, d)
        assert abs(h - reference) <= 0.2 and h <= 0.98, (case, d, h, reference)
