"""Hypothesis: the distances behind every distance-based score satisfy the metric axioms."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import geoattn
from geoattn.backends import dense_scores
from geoattn.math import lorentz

T64 = dict(dtype=torch.float64)
DIM = 3
coords = st.floats(min_value=-3.0, max_value=3.0, allow_nan=False)
vectors = st.lists(coords, min_size=DIM, max_size=DIM)
triples = st.tuples(vectors, vectors, vectors)


def distance_matrix(name: str, kappa: float, points: torch.Tensor) -> torch.Tensor:
    """Pairwise geodesic distances of (tangent) points under a geometry, in float64."""
    x = points[None, None]
    if name == "lorentz":
        p = lorentz.expmap0(points, torch.tensor(kappa, **T64), clip=None)  # √|κ|·‖u‖ ≤ 3√DIM·√|κ|: cosh finite
        return lorentz.distance(p[:, None], p[None], kappa)
    if name == "metric":
        g = geoattn.Metric(head_dim=DIM, rank=2).double()
        with torch.no_grad():
            g.factor.copy_(torch.tensor([[[1.0, 0.5], [0.0, -1.0], [2.0, 0.3]]], **T64))
        return (-dense_scores(g, g.lift(x, x, None))[0, 0]).clamp(min=0).sqrt()
    if name == "sphere":
        g = geoattn.Sphere(score="geodesic", curvature=torch.tensor(kappa, **T64), temperature=torch.tensor(1.0, **T64))
    else:
        g = geoattn.Stereographic(curvature=torch.tensor(kappa, **T64), temperature=torch.tensor(1.0, **T64))
    return -dense_scores(g, g.lift(x, x, None))[0, 0]


CASES = [("stereographic", k) for k in (-4.0, -1.0, -0.1, 0.0, 0.1, 1.0)] + [
    ("lorentz", -1.0), ("lorentz", -3.0), ("sphere", 1.0), ("sphere", 2.5), ("metric", 0.0)
]


@settings(max_examples=60, deadline=None, derandomize=True)
@given(triples, st.sampled_from(CASES))
def test_metric_axioms(points, case):
    name, kappa = case
    p = torch.tensor(points, **T64)
    if name == "stereographic" and kappa > 0:  # stay inside the injectivity radius of the sphere
        p = p * (1.2 / (kappa ** 0.5 * (1 + p.norm(dim=-1, keepdim=True))))
    if kappa < 0:  # hyperbolic radius √|κ|‖u‖ ≤ 3; see test_gram_form_error_near_the_diagonal for beyond
        p = p * (3 / (abs(kappa) ** 0.5 * p.norm(dim=-1, keepdim=True)).clamp(min=3))
    if name == "sphere":
        p = p + torch.tensor([0.0, 0.0, 1e-3], **T64)  # directions need a nonzero vector
    d = distance_matrix(name, kappa, p).detach()
    tol = 1e-6 * (1 + d.abs().max())
    assert torch.isfinite(d).all()
    # identity up to the Gram form's cancellation, ≈ √ε·cosh²(3) ≈ 1.5e-6 at radius 3 (see eps.py);
    # the sphere's arccos is clamped at 1 - 1e-12, i.e. d(x, x) = 1.4e-6
    assert (d.diagonal().abs() <= 1e-5).all(), "identity: d(x, x) = 0"
    torch.testing.assert_close(d, d.T, atol=float(tol), rtol=0)  # symmetry
    assert (d >= -tol).all()  # non-negativity
    for i in range(3):
        for j in range(3):
            for k in range(3):
                assert d[i, k] <= d[i, j] + d[j, k] + tol, "triangle inequality"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(vectors, st.floats(min_value=0.0, max_value=8.0), st.sampled_from([-0.5, -1.0, -3.0]))
def test_gram_form_error_near_the_diagonal(direction, radius, kappa):
    """The fused-kernel (Gram) form computes d(x, x) with absolute error ≲ 4√ε·cosh²θ/√c (θ = √c‖u‖):
    the documented price of never forming x − y. Checked in float64 and float32."""
    u = torch.tensor(direction, **T64) + torch.tensor([1e-3, 0.0, 0.0], **T64)
    c = -kappa
    u = u / u.norm() * radius / c ** 0.5
    for dtype in (torch.float64, torch.float32):
        g = geoattn.Stereographic(curvature=torch.tensor(kappa, dtype=dtype),
                                  temperature=torch.tensor(1.0, dtype=dtype))
        x = u.to(dtype)[None, None, None]
        d = -dense_scores(g, g.lift(x, x, None))[0, 0, 0, 0].double()
        bound = 4 * torch.finfo(dtype).eps ** 0.5 * torch.cosh(torch.tensor(radius, **T64)) ** 2 / c ** 0.5
        assert 0 <= d <= bound + 1e-6
