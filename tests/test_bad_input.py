"""Bad input gets a clear error naming the problem and the fix."""
from __future__ import annotations

import pytest
import torch

import geoattn


def qkv(*shapes):
    return tuple(torch.randn(*s) for s in shapes)


def qkv64(*shapes):
    return tuple(t.double() for t in qkv(*shapes))


OK = ((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 6, 8))


@pytest.mark.parametrize(
    "call, error, pattern",
    [
        (lambda: geoattn.attention(*qkv(*OK), geometry="hyperbolic"), ValueError,
         r"unknown geometry 'hyperbolic'; available geometries: "
         r"euclidean, euclidean-tau, l2, lorentz, metric, poincare, sphere, stereographic"),
        (lambda: geoattn.make_geometry("klein"), ValueError, r"unknown geometry 'klein'.*available"),
        (lambda: geoattn.attention(*qkv(*OK), geometry=3), TypeError,
         r"geometry must be a name .* or a geoattn.Geometry"),
        (lambda: geoattn.attention(*qkv((2, 4, 5, 8), (3, 4, 6, 8), (3, 4, 6, 8))), ValueError,
         r"batch/head dims differ.*must match"),
        (lambda: geoattn.attention(*qkv((2, 4, 5, 8), (2, 2, 6, 8), (2, 2, 6, 8))), ValueError,
         r"4 heads but key/value have 2; pass enable_gqa=True"),
        (lambda: geoattn.attention(*qkv((2, 4, 5, 8), (2, 4, 6, 7), (2, 4, 6, 8))), ValueError,
         r"query and key feature dims differ.*E=8.*E=7.*project them to the same size"),
        (lambda: geoattn.attention(*qkv((2, 4, 5, 8), (2, 4, 6, 8), (2, 4, 7, 8))), ValueError,
         r"same sequence length S, got key S=6 and value S=7"),
        (lambda: geoattn.attention(*qkv(*OK), attn_mask=torch.ones(5, 7, dtype=torch.bool)), ValueError,
         r"attn_mask of shape \(5, 7\) does not broadcast to the scores' shape \(2, 4, 5, 6\)"),
        (lambda: geoattn.attention(*qkv(*OK), attn_mask=torch.ones(5, 6, dtype=torch.int64)), TypeError,
         r"attn_mask must be bool \(True = take part\) or floating"),
        (lambda: geoattn.attention(*qkv(*OK), attn_mask=torch.ones(5, 6, dtype=torch.bool), is_causal=True), ValueError,
         r"either attn_mask or is_causal=True, not both"),
        (lambda: geoattn.attention(torch.full((2, 4, 5, 8), float("nan")), *qkv(*OK[1:])), ValueError,
         r"query contains 320 non-finite value\(s\).*mask the positions"),
        (lambda: geoattn.attention(*qkv(*OK[:2]), torch.full((2, 4, 6, 8), float("inf"))), ValueError,
         r"value contains .* non-finite"),
        (lambda: geoattn.attention(*qkv(*OK), attn_mask=torch.full((5, 6), float("nan"))), ValueError,
         r"float attn_mask may hold finite values and -inf only"),
        (lambda: geoattn.Poincare(curvature=1.0), ValueError,
         r"poincare needs a negative \(κ < 0, hyperbolic\) curvature, got \[1.0\].*curvature=-1.0"
         r".*'sphere' or 'stereographic'"),
        (lambda: geoattn.Lorentz(curvature=0.0), ValueError, r"lorentz needs a negative .* curvature"),
        (lambda: geoattn.Sphere(curvature=-1.0), ValueError,
         r"sphere needs a positive \(κ > 0, spherical\) curvature.*curvature=1.0"),
        (lambda: geoattn.Poincare(temperature=0.0), ValueError, r"temperature must be > 0 .*got \[0.0\]"),
        (lambda: geoattn.Sphere(temperature=[-1.0, 1.0], num_heads=2), ValueError, r"temperature must be > 0"),
        (lambda: geoattn.Poincare(curvature=[-1.0, -2.0], num_heads=3), ValueError,
         r"curvature has 2 values but the geometry has num_heads=3"),
        (lambda: geoattn.Stereographic(curvature=float("nan")), ValueError, r"curvature must be finite"),
        (lambda: geoattn.attention(*qkv(*OK), geometry="poincare", backend="sdpa"), ValueError,
         r"backend 'sdpa' cannot run this call: geometry 'poincare' has a score that is not affine"
         r".*use backend='auto' or 'dense'"),
        (lambda: geoattn.attention(*qkv(*OK), backend="triton"), ValueError,
         r"unknown backend 'triton'; available backends: auto"),
        (lambda: geoattn.attention(*qkv(*OK), backend="sdpa", return_weights=True), ValueError,
         r"does not return attention weights; use backend='dense'"),
        (lambda: geoattn.attention(*qkv(*OK), geometry=geoattn.Poincare(num_heads=3)), ValueError,
         r"parameters for 3 heads but the input has 4 heads.*num_heads=4 or num_heads=1"),
        (lambda: geoattn.attention(*qkv(*OK), geometry=geoattn.Metric(head_dim=4)), ValueError,
         r"built for head_dim=4 but queries have 8 features; make it with head_dim=8"),
        (lambda: geoattn.attention(*qkv(*OK), dropout_p=1.0), ValueError, r"dropout_p must be in \[0, 1\)"),
        (lambda: geoattn.attention(torch.randn(5), *qkv(*OK[1:])), ValueError, r"query must have shape \(..., L, E\)"),
        (lambda: geoattn.attention(torch.ones(2, 4, 5, 8, dtype=torch.long), *qkv(*OK[1:])), TypeError,
         r"query must be a floating-point tensor"),
        (lambda: geoattn.attention(*qkv(*OK[:2]), torch.randn(2, 4, 6, 8, dtype=torch.float64)), TypeError,
         r"must share a dtype.*cast them"),
        (lambda: geoattn.attention([1.0], *qkv(*OK[1:])), TypeError, r"query must be a torch.Tensor"),
        (lambda: geoattn.Poincare(aggregation="centroid"), ValueError,
         r"unknown aggregation 'centroid'; choose one of 'linear', 'midpoint'"),
        (lambda: geoattn.Sphere(score="dot"), ValueError,
         r"unknown sphere score 'dot'; choose one of 'cosine', 'geodesic'"),
        (lambda: geoattn.Metric(head_dim=4, rank=9), ValueError,
         r"rank must be None \(full\) or an int in \[1, head_dim=4\]"),
        (lambda: geoattn.set_default_backend("fast"), ValueError, r"unknown backend 'fast'"),
        # #14 §4: arguments that used to pass unchecked
        (lambda: geoattn.attention(*qkv64(*OK), geometry="poincare", backend="flex"), ValueError,
         r"backend 'flex' cannot run this call: the flex backend does not run float64.*use backend='tiled' or "
         r"'dense'"),
        (lambda: geoattn.attention(*qkv(*OK), scale=float("nan")), ValueError,
         r"scale must be a finite float, got nan; pass scale=None for the default"),
        (lambda: geoattn.attention(*qkv(*OK), geometry="sphere", scale=float("inf")), ValueError,
         r"scale must be a finite float, got inf"),
        (lambda: geoattn.attention(*qkv(*OK), geometry="poincare", scale=-1.0), ValueError,
         r"scale=-1.0 with geometry 'poincare': scale multiplies a distance-based score, so a scale ≤ 0 makes the "
         r"farthest key the most attended; pass a positive scale"),
        (lambda: geoattn.attention(*qkv(*OK), geometry="lorentz", scale=0), ValueError,
         r"scale=0.0 with geometry 'lorentz'.*makes every key equally likely"),
        (lambda: geoattn.attention(*qkv(*OK), scale="0.5"), TypeError, r"scale must be a float or None.*got str"),
        (lambda: geoattn.attention(*qkv(*OK), scale=torch.tensor(0.5)), TypeError,
         r"scale must be a float or None.*got Tensor; pass float\(scale\)"),
        (lambda: geoattn.attention(*qkv(*OK), attn_mask=torch.ones(5, 6, dtype=torch.bool, device="meta")),
         ValueError, r"attn_mask is on meta but query, key and value are on cpu; move it with "
                     r"attn_mask.to\(query.device\)"),
        (lambda: geoattn.Poincare(curvature="-1"), TypeError,
         r"curvature must be a real number, a sequence of numbers \(one per head\) or a real tensor, got str '-1'; "
         r"pass the number itself, e.g. curvature=-1.0"),
        (lambda: geoattn.Sphere(temperature="hot"), TypeError, r"temperature must be a real number.*got str 'hot'"),
        (lambda: geoattn.Stereographic(curvature=[-1.0, "x"], num_heads=2), TypeError,
         r"curvature must be a real number.*got str 'x'"),
        (lambda: geoattn.Lorentz(curvature=True), TypeError, r"curvature must be a real number.*got bool True"),
        (lambda: geoattn.Poincare(temperature=torch.tensor([True])), TypeError,
         r"temperature must be a real number.*got a torch.bool tensor"),
        (lambda: geoattn.Poincare(curvature=-1j), TypeError, r"curvature must be a real number.*got complex"),
        (lambda: geoattn.make_geometry("poincare", curvature=None, temperature={"a": 1}), TypeError,
         r"temperature must be a real number.*got dict"),
        (lambda: geoattn.Poincare(num_heads=True), ValueError, r"num_heads must be a positive int, got True"),
    ],
)
def test_bad_input_is_named_with_its_fix(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


def test_validation_can_be_switched_off_and_back_on():
    q, k, v = qkv(*OK)
    q[0, 0, 0, 0] = float("nan")
    clean = geoattn.attention(torch.nan_to_num(q), k, v, geometry="poincare")
    geoattn.set_validation(False)
    try:
        out = geoattn.attention(q, k, v, geometry="poincare")  # no check: garbage in, garbage out
        assert not torch.equal(out[0, 0, 0], clean[0, 0, 0])
        torch.testing.assert_close(out[1], clean[1])
    finally:
        geoattn.set_validation(True)
    with pytest.raises(ValueError, match="non-finite"):
        geoattn.attention(q, k, v)


def test_default_backend_context_and_global_setting():
    q, k, v = qkv(*OK)
    with geoattn.default_backend("dense"):
        out, w = geoattn.attention(q, k, v, geometry="lorentz", return_weights=True)
    assert w.shape == (2, 4, 5, 6)
    geoattn.set_default_backend("dense")
    try:
        torch.testing.assert_close(geoattn.attention(q, k, v, geometry="lorentz"), out)
    finally:
        geoattn.set_default_backend("auto")


def test_value_checks_are_exact_where_their_one_reduction_overflows():
    """The NaN/Inf checks sum each tensor first (q and k: take its norm); a sum that overflows falls back to the
    elementwise scan. Values may be as large as float32 allows (queries and keys: see test_input_range.py)."""
    q = torch.full((1, 1, 4, 2), 3e38)  # finite, but its sum is inf in float32
    small = torch.ones(1, 1, 4, 2)
    bias = torch.full((4, 4), 3e38)
    bias[0, 1] = float("-inf")
    geoattn.attention(small, small, q, attn_mask=bias, backend="dense")  # no error: every value is allowed
    bias[2, 3] = float("inf")
    with pytest.raises(ValueError, match="float attn_mask may hold finite values and -inf only"):
        geoattn.attention(q, q, q, attn_mask=bias)
    q[0, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"query contains 1 non-finite value\(s\)"):
        geoattn.attention(q, q.nan_to_num(), q.nan_to_num())


def test_euclidean_takes_any_finite_scale_as_sdpa_does():
    """SDPA allows a negative (or zero) scale: the euclidean geometry is SDPA, so it does too (documented)."""
    import torch.nn.functional as F

    q, k, v = qkv(*OK)
    for scale in (-0.7, 0.0, 3):
        torch.testing.assert_close(geoattn.attention(q, k, v, scale=scale),
                                   F.scaled_dot_product_attention(q, k, v, scale=scale))
        torch.testing.assert_close(geoattn.attention(q, k, v, scale=scale, backend="dense"),
                                   F.scaled_dot_product_attention(q, k, v, scale=scale))


def test_numeric_parameters_of_other_kinds_still_work():
    import numpy as np

    assert geoattn.Poincare(curvature=np.float64(-2.0)).curvature.tolist() == [-2.0]
    assert geoattn.Poincare(curvature=np.array([-1.0, -2.0]), num_heads=2).curvature.tolist() == [-1.0, -2.0]
    assert geoattn.Sphere(temperature=[1, 2], num_heads=2).temperature.tolist() == [1.0, 2.0]
    assert geoattn.Lorentz(curvature=torch.tensor(-0.5, dtype=torch.float64)).curvature.dtype == torch.float64
