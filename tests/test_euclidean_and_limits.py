"""Euclidean = SDPA exactly; the squared-distance geometry (l2) against its closed form; κ-stereographic limits;
reduced precision."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import geoattn

T64 = dict(dtype=torch.float64)


def qkv(B=2, H=4, L=9, S=11, E=8, Ev=6, Hkv=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    Hkv = Hkv or H
    return (torch.randn(B, H, L, E, generator=g, dtype=dtype), torch.randn(B, Hkv, S, E, generator=g, dtype=dtype),
            torch.randn(B, Hkv, S, Ev, generator=g, dtype=dtype))


@pytest.mark.parametrize("backend", ["auto", "sdpa", "dense"])
def test_euclidean_equals_sdpa(backend):
    q, k, v = qkv()
    g = torch.Generator().manual_seed(1)
    bool_mask = torch.rand(2, 1, 9, 11, generator=g) > 0.3
    float_mask = torch.randn(2, 4, 9, 11, generator=g)
    cases = [
        {}, {"is_causal": True}, {"attn_mask": bool_mask}, {"attn_mask": float_mask}, {"scale": 0.37},
        {"attn_mask": bool_mask[0, 0]},
    ]
    for kwargs in cases:
        expected = F.scaled_dot_product_attention(q, k, v, **kwargs)
        got = geoattn.attention(q, k, v, geometry="euclidean", backend=backend, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("backend", ["auto", "dense"])
def test_euclidean_equals_sdpa_with_gqa(backend):
    q, k, v = qkv(H=6, Hkv=2, seed=2)
    expected = F.scaled_dot_product_attention(q, k, v, enable_gqa=True, is_causal=True)
    got = geoattn.attention(q, k, v, enable_gqa=True, is_causal=True, backend=backend)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-6)


def test_euclidean_unbatched_and_extra_batch_dims_equal_sdpa():
    q, k, v = qkv(seed=3)
    torch.testing.assert_close(geoattn.attention(q[0, 0], k[0, 0], v[0, 0]),
                               F.scaled_dot_product_attention(q[0, 0], k[0, 0], v[0, 0]))
    q5, k5, v5 = (t.reshape(1, 2, 4, *t.shape[-2:]) for t in (q, k, v))
    torch.testing.assert_close(geoattn.attention(q5, k5, v5, is_causal=True),
                               F.scaled_dot_product_attention(q5, k5, v5, is_causal=True), atol=1e-6, rtol=1e-6)


def test_euclidean_weights_equal_softmax_of_scaled_dot_products():
    q, k, v = qkv(seed=4)
    _, w = geoattn.attention(q, k, v, return_weights=True)
    torch.testing.assert_close(w, torch.softmax(q @ k.transpose(-1, -2) / 8 ** 0.5, dim=-1), atol=1e-6, rtol=1e-6)


def test_dropout_is_applied_like_sdpa():
    """With dropout, outputs are a dropout of the weights: mean over many draws ≈ the no-dropout output."""
    q, k, v = qkv(B=1, H=1, L=4, S=6, seed=5)
    torch.manual_seed(0)
    draws = torch.stack([geoattn.attention(q, k, v, dropout_p=0.5, backend="dense") for _ in range(4000)])
    assert not torch.allclose(draws[0], draws[1])
    torch.testing.assert_close(draws.mean(0), geoattn.attention(q, k, v), atol=0.06, rtol=0)


@pytest.mark.parametrize("backend", ["auto", "sdpa", "dense"])
def test_l2_equals_softmax_of_minus_squared_distance(backend):
    """``l2``: weights = softmax(-‖q - k‖² / (2√E τ)) per head (brute-force cdist², float64), with masks,
    causal masking, ``scale`` (multiplies the score) and one temperature per head."""
    q, k, v = qkv(seed=20, dtype=torch.float64)
    tau = torch.tensor([0.5, 1.0, 1.7, 3.0], **T64)
    geometry = geoattn.L2(temperature=tau, num_heads=4)
    E = q.shape[-1]
    score = -torch.cdist(q, k) ** 2 / (2 * math.sqrt(E) * tau.view(-1, 1, 1))      # (B, H, L, S)
    g = torch.Generator().manual_seed(21)
    bool_mask = torch.rand(2, 1, 9, 11, generator=g) > 0.3
    causal = torch.ones(9, 11, dtype=torch.bool).tril()
    for kwargs, s, allowed in [({}, score, None), ({"attn_mask": bool_mask}, score, bool_mask),
                               ({"is_causal": True}, score, causal), ({"scale": 0.37}, 0.37 * score, None)]:
        expected = torch.softmax(s if allowed is None else s.masked_fill(~allowed, -math.inf), dim=-1) @ v
        got = geoattn.attention(q, k, v, geometry=geometry, backend=backend, **kwargs)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-10)
    # the dense score is the exact energy (the per-query term is kept), not just equal up to a row constant
    dense = geoattn.backends.dense_scores(geometry, geometry.lift(q, k, None))
    torch.testing.assert_close(dense, score, atol=1e-12, rtol=1e-12)


def test_l2_is_sdpa_with_a_key_norm_bias():
    """At τ = 1 the q·k interaction of ``l2`` is SDPA's ⟨q, k⟩/√E: the weights equal SDPA's with the additive
    per-key mask -‖k‖²/(2√E); so ``l2`` differs from ``euclidean`` only by that norm penalty."""
    q, k, v = qkv(seed=22)
    bias = (-(k * k).sum(-1) / (2 * math.sqrt(q.shape[-1])))[:, :, None, :]        # (B, H, 1, S)
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    torch.testing.assert_close(geoattn.attention(q, k, v, geometry="l2"), expected, atol=1e-6, rtol=1e-5)
    assert geoattn.make_geometry("l2").affine


@pytest.mark.parametrize("kappa", [0.0, 1e-9, -1e-9, 1e-5, -1e-5])
def test_stereographic_at_zero_curvature_is_euclidean_distance_attention(kappa):
    """At κ → 0: ``score = -‖q - k‖/τ`` (the scale rule's ``-√E·d/2`` with ``d = 2‖q - k‖/√E``: the κ = 0
    model's metric is 4× the Euclidean one)."""
    q, k, v = qkv(seed=6, dtype=torch.float64)
    tau = 1.7
    geometry = geoattn.Stereographic(curvature=torch.tensor(kappa, **T64), temperature=torch.tensor(tau, **T64))
    out = geoattn.attention(q, k, v, geometry=geometry, backend="dense")
    weights = torch.softmax(-torch.cdist(q, k) / tau, dim=-1)
    # exact at κ = 0, and the deviation shrinks linearly with κ (measured slope ≈ 5.4 here)
    torch.testing.assert_close(out, weights @ v, atol=1e-10 + 20 * abs(kappa), rtol=0)


def test_stereographic_is_smooth_through_zero():
    """The κ-derivative of the scores is continuous at κ = 0 and matches one-sided finite differences."""
    q, k, _ = qkv(B=1, H=1, L=3, S=4, seed=7, dtype=torch.float64)

    def score(kappa: float):
        geometry = geoattn.Stereographic(curvature=torch.tensor(kappa, **T64), learnable=True)
        s = geoattn.backends.dense_scores(geometry, geometry.lift(q, k, None)).sum()
        (grad,) = torch.autograd.grad(s, geometry.curvature_parameter)
        return s.item(), grad.item()

    (s_minus, g_minus), (s0, g0), (s_plus, g_plus) = score(-1e-6), score(0.0), score(1e-6)
    assert g0 != 0
    assert abs(g_minus - g0) < 1e-4 * abs(g0) and abs(g_plus - g0) < 1e-4 * abs(g0)
    assert abs((s_plus - s0) / 1e-6 - g0) < 1e-4 * abs(g0)   # right derivative
    assert abs((s0 - s_minus) / 1e-6 - g0) < 1e-4 * abs(g0)  # left derivative


def test_stereographic_at_minus_one_equals_poincare():
    q, k, v = qkv(seed=8)
    for aggregation in ("linear", "midpoint"):
        kw = dict(temperature=0.6, aggregation=aggregation)
        a = geoattn.attention(q, k, v, geometry=geoattn.Stereographic(curvature=-1.0, **kw), is_causal=True)
        b = geoattn.attention(q, k, v, geometry=geoattn.Poincare(curvature=-1.0, **kw), is_causal=True)
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", ["poincare", "lorentz", "sphere", "stereographic", "metric", "l2"])
def test_reduced_precision_inputs_are_scored_in_float32(dtype, name):
    """bf16/fp16 inputs: geometric scores are computed in float32, so the output equals the float32
    computation on the same (rounded) inputs, rounded once to the input dtype."""
    q, k, v = qkv(seed=9)
    q, k, v = (t.to(dtype) * 0.5 for t in (q, k, v))
    low = geoattn.attention(q, k, v, geometry=name)
    ref = geoattn.attention(q.float(), k.float(), v.float(), geometry=name, backend="dense")
    assert low.dtype == dtype and torch.isfinite(low).all()
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(low.float(), ref, atol=4 * eps, rtol=2 * eps)
