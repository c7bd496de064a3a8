"""Distances behind the scores, against geomstats (the oracle) and geoopt, in float64."""
from __future__ import annotations

import math

import pytest
import torch

import geoattn
from geoattn.backends import dense_scores
from geoattn.math import lorentz, sphere, stereographic

DIM = 5
# Ball norms from the centre to 1 - 1e-6 of the radius. geomstats 2.8 itself saturates beyond that
# (at ‖x‖ = 1 - 1e-8 it returns 15.38 where the exact distance is 19.29), so the extreme boundary is
# checked against mpmath below.
NORMS = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.99, 1 - 1e-4, 1 - 1e-5, 1 - 1e-6], dtype=torch.float64)
EXTREME = torch.tensor([1 - 1e-7, 1 - 1e-8, 1 - 1e-10, 1 - 1e-12], dtype=torch.float64)
T64 = dict(dtype=torch.float64)


def ball_points(n: int, seed: int, norms: torch.Tensor = NORMS) -> torch.Tensor:
    """Points of the unit ball with norms taken from ``norms`` (exact in float64) in random directions."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, DIM, generator=g, dtype=torch.float64)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    return directions * norms[torch.randint(len(norms), (n,), generator=g)][:, None]


def ball_log0(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    """logmap₀ of the ball of curvature -c: ``artanh(√c‖x‖) x/(√c‖x‖)`` (exact input, well conditioned)."""
    r = x.norm(dim=-1, keepdim=True)
    sc = math.sqrt(c)
    return torch.where(r > 0, torch.atanh(sc * r) / (sc * r.clamp(min=1e-300)), torch.ones_like(r)) * x


def pairwise_distance(geometry, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The geodesic distance matrix (L, S) between the points of tangent vectors u (L, D), w (S, D), read
    off the geometry's score. The scale rule scores inputs ``x = √D·u`` as ``-√D·d/(2τ)`` (stereographic
    family: its metric is 4× Euclidean at the origin) or ``-√D·d/τ`` (sphere, geodesic angle)."""
    root = math.sqrt(u.shape[-1])
    lifted = geometry.lift(root * u[None, None], root * w[None, None], None)
    per_unit = 1.0 if isinstance(geometry, geoattn.Sphere) else 2.0
    return -(dense_scores(geometry, lifted) * geometry.temperature.double())[0, 0] * per_unit / root


def test_poincare_scores_match_geomstats_including_near_the_boundary(geomstats):
    x, y = ball_points(40, 0), ball_points(40, 1)
    geometry = geoattn.Poincare(curvature=torch.tensor(-1.0, **T64), temperature=torch.tensor(0.5, **T64))
    ours = pairwise_distance(geometry, ball_log0(x), ball_log0(y))
    oracle = geomstats.dist("ball", DIM, x[:, None, :].expand(-1, 40, -1).reshape(-1, DIM),
                            y[None, :, :].expand(40, -1, -1).reshape(-1, DIM)).reshape(40, 40)
    assert oracle.max() > 25, "the sample must reach the boundary"
    torch.testing.assert_close(ours, oracle, atol=1e-8, rtol=1e-10)


def test_poincare_at_the_extreme_boundary_against_mpmath():
    """Tangent inputs whose images have ball norms 1 - 2e-7 … 1 - 1.4e-12 (distances near 55), against
    50-digit arithmetic on the exact images. (Such points cannot be *given* as float64 ball
    coordinates: 1 - ‖x‖² would already lose 4 digits; attention receives tangent vectors.)"""
    import mpmath

    mpmath.mp.dps = 50
    g = torch.Generator().manual_seed(20)
    def tangents(n, angles):
        d = torch.randn(n, DIM, generator=g, dtype=torch.float64)
        d = d / d.norm(dim=-1, keepdim=True)
        return d * angles[torch.randint(len(angles), (n,), generator=g)][:, None]
    u = tangents(10, torch.tensor([8.0, 10.0, 12.0, 14.0], **T64))
    w = tangents(10, torch.tensor([0.0, 0.5, 3.0, 8.0, 14.0], **T64))
    # (past the default clip radius 10, which bounds where even nearly parallel pairs keep 1e-10)
    ours = pairwise_distance(geoattn.Poincare(curvature=torch.tensor(-1.0, **T64), clip_radius=15.0), u, w)

    def exact(a, b):
        def point(t):
            t = [mpmath.mpf(float(c)) for c in t]
            r = mpmath.sqrt(sum(c * c for c in t))
            return [c * mpmath.tanh(r) / r for c in t] if r > 0 else t
        x, y = point(a), point(b)
        diff = sum((s - t) ** 2 for s, t in zip(x, y))
        den = (1 - sum(s * s for s in x)) * (1 - sum(t * t for t in y))
        return float(mpmath.acosh(1 + 2 * diff / den))

    oracle = torch.tensor([[exact(a, b) for b in w] for a in u], **T64)
    assert oracle.max() > 45
    torch.testing.assert_close(ours, oracle, atol=1e-8, rtol=1e-10)


@pytest.mark.parametrize("c", [0.25, 2.0])
def test_poincare_curvature_scaling(geomstats, c):
    """``d_c(x, y) = d_1(√c x, √c y)/√c`` against geomstats' unit ball."""
    x, y = ball_points(12, 2) / math.sqrt(c), ball_points(12, 3) / math.sqrt(c)
    geometry = geoattn.Poincare(curvature=torch.tensor(-c, **T64), temperature=torch.tensor(1.0, **T64))
    ours = pairwise_distance(geometry, ball_log0(x, c), ball_log0(y, c))
    sx, sy = x * math.sqrt(c), y * math.sqrt(c)
    oracle = geomstats.dist("ball", DIM, sx[:, None].expand(-1, 12, -1).reshape(-1, DIM),
                            sy[None].expand(12, -1, -1).reshape(-1, DIM)).reshape(12, 12) / math.sqrt(c)
    torch.testing.assert_close(ours, oracle, atol=1e-8, rtol=1e-10)


def test_point_distance_function_matches_geomstats(geomstats):
    x, y = ball_points(60, 4), ball_points(60, 5)
    ours = stereographic.distance(x, y, -1.0)
    torch.testing.assert_close(ours, geomstats.dist("ball", DIM, x, y), atol=1e-8, rtol=1e-10)


def test_lorentz_geometry_matches_geomstats_hyperboloid(geomstats):
    g = torch.Generator().manual_seed(6)
    radii = torch.linspace(0.01, 4, 10, dtype=torch.float64)[:, None]
    u = torch.randn(10, DIM, generator=g, dtype=torch.float64) * radii
    w = torch.randn(8, DIM, generator=g, dtype=torch.float64) * 2
    kappa = torch.tensor(-1.0, dtype=torch.float64)
    x, y = lorentz.expmap0(u, kappa, clip=None), lorentz.expmap0(w, kappa, clip=None)  # geomstats: unclipped
    origin = torch.zeros(DIM + 1, dtype=torch.float64)
    origin[0] = 1
    tangent = torch.cat([torch.zeros(10, 1, dtype=torch.float64), u], -1)
    torch.testing.assert_close(x, geomstats.exp("hyperboloid", DIM, tangent, origin), atol=1e-9, rtol=1e-10)
    d = geomstats.dist("hyperboloid", DIM, x[:, None].expand(-1, 8, -1).reshape(-1, DIM + 1),
                       y[None].expand(10, -1, -1).reshape(-1, DIM + 1)).reshape(10, 8)
    torch.testing.assert_close(lorentz.distance(x[:, None], y[None], kappa), d, atol=1e-8, rtol=1e-10)
    # the attention score is -√D/(2τ) times the squared Lorentzian distance 2cosh(d) - 2 (κ = -1) of the
    # tangent vectors u = x/√D (the scale rule), on the exact (dense) path and on SDPA's affine form
    # (the tangent norms reach 4.5, past the default clip radius 4 of the SDPA-accurate range)
    geometry = geoattn.Lorentz(curvature=kappa, temperature=torch.tensor(0.7, **T64), clip_radius=15.0)
    root = math.sqrt(DIM)
    score = dense_scores(geometry, geometry.lift(root * u[None, None], root * w[None, None], None))[0, 0]
    torch.testing.assert_close(score, -root * (2 * torch.cosh(d) - 2) / (2 * 0.7), atol=1e-8, rtol=1e-10)
    affine = dense_scores(geometry, geometry.affine_lift(root * u[None, None], root * w[None, None], None))[0, 0]
    torch.testing.assert_close(affine, score, atol=1e-7, rtol=1e-9)
    torch.testing.assert_close(lorentz.inner(x, x), torch.full((10,), -1.0, dtype=torch.float64))
    torch.testing.assert_close(lorentz.logmap0(x, kappa), u, atol=1e-10, rtol=1e-10)


def test_sphere_geodesic_matches_geomstats_hypersphere(geomstats):
    g = torch.Generator().manual_seed(7)
    u, w = torch.randn(9, DIM, generator=g, dtype=torch.float64), torch.randn(7, DIM, generator=g, dtype=torch.float64)
    w[0] = -u[0] * 3  # antipodal pair
    w[1] = u[1] * 0.5  # same direction
    xu, xw = sphere.normalize(u), sphere.normalize(w)
    d = geomstats.dist("sphere", DIM - 1, xu[:, None].expand(-1, 7, -1).reshape(-1, DIM),
                       xw[None].expand(9, -1, -1).reshape(-1, DIM)).reshape(9, 7)
    geometry = geoattn.Sphere(score="geodesic", curvature=torch.tensor(1.0, **T64),
                              temperature=torch.tensor(2.0, **T64))
    # the angle is clamped below π by √(2e-12) for a finite gradient: ≤ 1.5e-6 off at exactly antipodal points
    torch.testing.assert_close(pairwise_distance(geometry, u, w), d, atol=2e-6, rtol=0)
    generic = torch.ones_like(d, dtype=torch.bool)
    generic[0, 0] = generic[1, 1] = False
    torch.testing.assert_close(pairwise_distance(geometry, u, w)[generic], d[generic], atol=1e-8, rtol=1e-10)
    # cosine score is √D·⟨x̂, ŷ⟩/τ
    cosine = geoattn.Sphere(temperature=torch.tensor(0.25, **T64))
    torch.testing.assert_close(dense_scores(cosine, cosine.lift(u[None, None], w[None, None], None))[0, 0],
                               math.sqrt(DIM) * torch.cos(d) / 0.25, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("kappa", [0.3, 1.0, 4.0])
def test_positive_stereographic_matches_sphere_through_inverse_projection(geomstats, kappa):
    """For κ > 0 the κ-stereographic model is the sphere of radius 1/√κ: project back and compare."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, DIM, generator=g, dtype=torch.float64) * 2
    y = torch.randn(6, DIM, generator=g, dtype=torch.float64)

    def to_sphere(p):  # inverse stereographic projection of √κ p onto the unit sphere
        p = p * math.sqrt(kappa)
        n = (p * p).sum(-1, keepdim=True)
        return torch.cat([2 * p, 1 - n], dim=-1) / (1 + n)

    d = geomstats.dist("sphere", DIM, to_sphere(x)[:, None].expand(-1, 6, -1).reshape(-1, DIM + 1),
                       to_sphere(y)[None].expand(6, -1, -1).reshape(-1, DIM + 1)).reshape(6, 6) / math.sqrt(kappa)
    torch.testing.assert_close(stereographic.distance(x[:, None], y[None], kappa), d, atol=1e-8, rtol=1e-10)


@pytest.mark.parametrize("kappa", [-2.0, -0.3, 0.0, 0.5, 1.7])
def test_stereographic_attention_scores_match_geoopt(kappa):
    """Scores of inputs ``√D·u`` equal ``-√D·geoopt.Stereographic(k).dist(expmap0(u), expmap0(w))/(2τ)``."""
    import geoopt

    g = torch.Generator().manual_seed(9)
    limit = 0.9 * math.pi / (2 * math.sqrt(kappa)) if kappa > 0 else 3.0  # keep tan_κ finite for geoopt
    u = torch.randn(7, DIM, generator=g, dtype=torch.float64)
    u = u / u.norm(dim=-1, keepdim=True) * torch.rand(7, 1, generator=g, dtype=torch.float64) * limit
    w = torch.randn(6, DIM, generator=g, dtype=torch.float64)
    w = w / w.norm(dim=-1, keepdim=True) * torch.rand(6, 1, generator=g, dtype=torch.float64) * limit
    k = torch.tensor(kappa, dtype=torch.float64)
    manifold = geoopt.Stereographic(k=k)
    oracle = manifold.dist(manifold.expmap0(u)[:, None], manifold.expmap0(w)[None])
    geometry = geoattn.Stereographic(curvature=k, temperature=torch.tensor(1.3, **T64))
    # geoopt's tan_k/artan_k are accurate to ~1e-8 (our formula matches the sphere to 1e-10 above)
    torch.testing.assert_close(pairwise_distance(geometry, u, w), oracle, atol=1e-7, rtol=1e-7)


def test_stereographic_beyond_the_antipode_stays_finite_and_periodic():
    """For κ > 0 a tangent vector of length π/√κ wraps around the sphere back to the origin."""
    kappa = 1.0
    u = torch.tensor([[0.3, 0.0, 0.0]], dtype=torch.float64)
    wrapped = u + torch.tensor([[math.pi, 0.0, 0.0]], dtype=torch.float64)  # once around (2·π/2)
    geometry = geoattn.Stereographic(curvature=torch.tensor(kappa, **T64))
    w = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(pairwise_distance(geometry, wrapped, w), pairwise_distance(geometry, u, w))


def test_midpoint_aggregation_matches_geoopt_weighted_midpoint():
    """κ < 0: geoopt's ``weighted_midpoint``. κ > 0: Ungar's gyromidpoint from geoopt's primitives
    (geoopt additionally swaps in the antipode when it has a smaller distance sum; geoattn does not,
    as that needs a second pass over the keys; documented on the geometry)."""
    import geoopt.manifolds.stereographic.math as gmath

    g = torch.Generator().manual_seed(11)
    for kappa in (-1.0, -0.4, 0.6):
        k = torch.tensor(kappa, dtype=torch.float64)
        geometry = geoattn.Stereographic(curvature=k, aggregation="midpoint")
        q = torch.randn(1, 1, 3, DIM, generator=g, dtype=torch.float64)
        key = torch.randn(1, 1, 5, DIM, generator=g, dtype=torch.float64)
        v = torch.randn(1, 1, 5, DIM, generator=g, dtype=torch.float64) * 0.5
        out, w = geoattn.attention(q, key, v, geometry=geometry, return_weights=True, backend="dense")
        # the scale rule: values enter as tangent vectors v/√D and the midpoint leaves as √D·log₀
        root = math.sqrt(DIM)
        points = gmath.expmap0(v[0, 0] / root, k=k)                              # (S, D)
        lam = gmath.lambda_x(points, k=k, keepdim=True)                          # (S, 1)
        for i in range(3):
            if kappa < 0:
                mid = gmath.weighted_midpoint(points, w[0, 0, i], k=k, reducedim=[0], lincomb=False)
            else:
                weights = w[0, 0, i][:, None]
                two_mean = (weights * lam * points).sum(0) / (weights * (lam - 1)).sum(0)
                mid = gmath.mobius_scalar_mul(torch.tensor(0.5, **T64), two_mean, k=k)
            torch.testing.assert_close(out[0, 0, i], root * gmath.logmap0(mid, k=k), atol=1e-9, rtol=1e-8)


def test_lorentz_centroid_aggregation_is_the_normalised_weighted_sum():
    g = torch.Generator().manual_seed(12)
    kappa = torch.tensor(-0.5, dtype=torch.float64)
    geometry = geoattn.Lorentz(curvature=kappa, aggregation="centroid")
    q, k, v = (torch.randn(1, 1, n, DIM, generator=g, dtype=torch.float64) for n in (3, 4, 4))
    out, w = geoattn.attention(q, k, v, geometry=geometry, return_weights=True, backend="dense")
    root = math.sqrt(DIM)  # the scale rule: values enter as v/√D, the centroid leaves as √D·log_o
    a = w[0, 0] @ lorentz.expmap0(v[0, 0] / root, kappa, clip=None)                          # (L, D+1)
    mu = a / ((-kappa) * -lorentz.inner(a, a)).sqrt()[:, None]
    torch.testing.assert_close(lorentz.inner(mu, mu), torch.full((3,), 1 / kappa.item(), dtype=torch.float64))
    torch.testing.assert_close(lorentz.expmap0(out[0, 0] / root, kappa, clip=None), mu, atol=1e-9, rtol=1e-9)


def test_metric_geometry_is_the_mahalanobis_distance():
    g = torch.Generator().manual_seed(13)
    geometry = geoattn.Metric(head_dim=DIM, rank=2, temperature=torch.tensor(0.5, **T64)).double()
    with torch.no_grad():
        geometry.factor.normal_(generator=g)
    u, w = torch.randn(4, DIM, generator=g, dtype=torch.float64), torch.randn(3, DIM, generator=g, dtype=torch.float64)
    G = geometry.metric_tensor()[0]
    assert torch.linalg.eigvalsh(G).min() > 0
    diff = u[:, None] - w[None]
    expected = torch.einsum("lsd,de,lse->ls", diff, G, diff)
    # the score is -(q - k)ᵀG(q - k)/(2√D τ), exact on the dense path and on SDPA's affine form
    for lift in (geometry.lift, geometry.affine_lift):
        score = dense_scores(geometry, lift(u[None, None], w[None, None], None))[0, 0]
        torch.testing.assert_close(-score * 0.5 * 2 * math.sqrt(DIM), expected, atol=1e-10, rtol=1e-10)
