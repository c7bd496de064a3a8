"""Distances at every radius up to the clip: the dense reference against mpmath, and the float32 backends'
nearest-neighbour order against the exact order of their (float32) inputs.

Queries and keys are given as ``x = √E·u`` for tangent vectors u (the scale rule), so ``‖u‖`` is the
tangent norm the clip bounds (``√|κ|·‖u‖ ≤ clip_radius``, κ = -1 here). Nearby points far from the origin
are where the Gram form ``‖x‖² + ‖y‖² - 2⟨x, y⟩`` cancelled: keys on the query's ray (same direction,
norms 0.1% to 10% apart) and keys turned away from it by 1e-3 to 1e-6 rad.
"""
from __future__ import annotations

import math

import mpmath
import pytest
import torch

import geoattn
from geoattn.backends import dense_scores

E = 16
ROOT = math.sqrt(E)
mpmath.mp.dps = 60


def mp_vector(t):
    return [mpmath.mpf(float(x)) for x in t]


def poincare_distance(u, w, c=1.0):
    """The ball distance of exp₀(u), exp₀(w) (geoopt's convention: radius 2‖u‖), in 60-digit arithmetic."""
    c = mpmath.mpf(c)

    def point(t):
        t = mp_vector(t)
        r = mpmath.sqrt(sum(x * x for x in t))
        return [x * mpmath.tanh(mpmath.sqrt(c) * r) / (mpmath.sqrt(c) * r) for x in t] if r > 0 else t

    x, y = point(u), point(w)
    diff = sum((a - b) ** 2 for a, b in zip(x, y))
    den = (1 - c * sum(a * a for a in x)) * (1 - c * sum(b * b for b in y))
    return mpmath.acosh(1 + 2 * c * diff / den) / mpmath.sqrt(c)


def sphere_side_distance(u, w, kappa):
    """κ > 0: the κ-stereographic distance of exp₀(u), exp₀(w) via the sphere of radius 1/√κ."""
    k = mpmath.mpf(kappa)

    def on_sphere(t):  # the point at angle 2√κ‖u‖ from the pole, in direction û
        t = mp_vector(t)
        r = mpmath.sqrt(sum(x * x for x in t))
        a = 2 * mpmath.sqrt(k) * r
        return [mpmath.cos(a)] + [mpmath.sin(a) * x / r for x in t]

    x, y = on_sphere(u), on_sphere(w)
    cos = max(-1, min(1, sum(a * b for a, b in zip(x, y))))
    chord = mpmath.sqrt(sum((a - b) ** 2 for a, b in zip(x, y)))
    return 2 * mpmath.asin(chord / 2) / mpmath.sqrt(k) if cos > 0 else (mpmath.pi - 2 * mpmath.asin(
        mpmath.sqrt(sum((a + b) ** 2 for a, b in zip(x, y))) / 2)) / mpmath.sqrt(k)


def lorentz_squared_distance(u, w):
    """``-2 - 2⟨x, y⟩_L`` for x = exp_o(u), y = exp_o(w) on the hyperboloid of curvature -1."""
    def point(t):
        t = mp_vector(t)
        r = mpmath.sqrt(sum(x * x for x in t))
        return [mpmath.cosh(r)] + ([x * mpmath.sinh(r) / r for x in t] if r > 0 else t)

    x, y = point(u), point(w)
    return -2 - 2 * (-x[0] * y[0] + sum(a * b for a, b in zip(x[1:], y[1:])))


def near_keys(query: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Keys near a query u (one row): on its ray, turned by small angles, and two generic ones."""
    def turned(angle):
        d = torch.randn(E, generator=gen, dtype=torch.float64)
        d = d - (d @ query) * query / query.norm() ** 2
        return query * math.cos(angle) + d / d.norm() * query.norm() * math.sin(angle)

    other = torch.randn(2, E, generator=gen, dtype=torch.float64)
    keys = [query * 0.999, query * 0.99, query * 0.9, turned(1e-3), turned(1e-4), turned(1e-6),
            other[0] / other[0].norm() * query.norm() * 0.7, other[1] / other[1].norm() * 0.5]
    return torch.stack(keys)


def distances_from_scores(geometry, u, w, per_unit=2.0):
    """Read the distances back from the dense scores of inputs √E·u, √E·w: score = -√E·d/(per_unit·τ)."""
    lifted = geometry.lift(ROOT * u[None, None], ROOT * w[None, None], None)
    return -(dense_scores(geometry, lifted) * geometry.temperature.to(u.dtype))[0, 0] * per_unit / ROOT


RADII = [0.3, 2.0, 5.0, 8.0, 9.99]  # tangent norms √c‖u‖, up to the default clip radius 10 of Poincaré


@pytest.mark.parametrize("radius", RADII)
def test_dense_float64_poincare_is_exact_against_mpmath_at_every_radius(radius):
    gen = torch.Generator().manual_seed(int(radius * 10))
    u = torch.randn(E, generator=gen, dtype=torch.float64)
    u = u / u.norm() * radius
    keys = near_keys(u, gen)
    ours = distances_from_scores(geoattn.Poincare(), u[None], keys)[0]
    exact = torch.tensor([float(poincare_distance(u, w)) for w in keys], dtype=torch.float64)
    # relative 1e-10 for every key down to 1e-6 rad from the query's direction (the old Gram form gave
    # [0.5, 0.5] for keys 0.1% apart on the ray at radius 10)
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=0)


@pytest.mark.parametrize("kappa", [0.4, 1.5])
def test_dense_float64_positive_curvature_is_exact_against_mpmath(kappa):
    gen = torch.Generator().manual_seed(3)
    for radius in (0.2, 0.6):  # 2√κ‖u‖ below π: points on the near half of the sphere
        u = torch.randn(E, generator=gen, dtype=torch.float64)
        u = u / u.norm() * radius / math.sqrt(kappa)
        keys = near_keys(u, gen)
        geometry = geoattn.Stereographic(curvature=torch.tensor(kappa, dtype=torch.float64))
        ours = distances_from_scores(geometry, u[None], keys)[0]
        exact = torch.tensor([float(sphere_side_distance(u, w, kappa)) for w in keys], dtype=torch.float64)
        torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("radius", [0.3, 1.5, 3.9, 8.0])
def test_dense_float64_lorentz_is_exact_against_mpmath(radius):
    gen = torch.Generator().manual_seed(4)
    u = torch.randn(E, generator=gen, dtype=torch.float64)
    u = u / u.norm() * radius
    keys = near_keys(u, gen)
    geometry = geoattn.Lorentz(clip_radius=15.0)
    ours = distances_from_scores(geometry, u[None], keys)[0]  # score = -√E·d²_L/(2τ)
    exact = torch.tensor([float(lorentz_squared_distance(u, w)) for w in keys], dtype=torch.float64)
    torch.testing.assert_close(ours, exact, rtol=1e-10, atol=1e-300)


def exact_weights_for(q32: torch.Tensor, k32: torch.Tensor, distance, per_unit=2.0) -> torch.Tensor:
    """Softmax weights of -√E·d/(per_unit·τ) for the exact distances of the float32 inputs themselves."""
    d = torch.tensor([[float(distance(a / ROOT, b / ROOT)) for b in k32.double()] for a in q32.double()],
                     dtype=torch.float64)
    return torch.softmax(-ROOT * d / per_unit, dim=-1)


def backend_weights(geometry, q32, k32, backend, dtype=torch.float32):
    """The attention weights a backend computes, read off with one-hot values."""
    v = torch.eye(k32.shape[0], dtype=dtype)[None, None]
    return geoattn.attention(q32[None, None].to(dtype), k32[None, None].to(dtype), v, geometry=geometry,
                             backend=backend)[0, 0].double()


@pytest.mark.parametrize("radius", [0.3, 2.0, 5.0, 8.0, 9.99])
@pytest.mark.parametrize("backend,dtype", [pytest.param("native", torch.float32, marks=pytest.mark.native),
                                           ("dense", torch.float32),
                                           ("tiled", torch.float64)])
def test_fused_and_dense_keep_the_exact_order_of_float32_inputs(radius, backend, dtype):
    """Float32 inputs at every tangent norm the default clip admits: the weights equal the exact weights
    of those inputs (mpmath) to 1e-5, so no two keys are ever ranked in the wrong order. (At radius 10 the
    float32 rounding of the inputs themselves moves near points apart by O(1); the exact weights are those
    of the rounded inputs.)"""
    gen = torch.Generator().manual_seed(int(radius * 10) + 1)
    u = torch.randn(E, generator=gen, dtype=torch.float64)
    u = u / u.norm() * radius
    keys = near_keys(u, gen)
    keys = keys * torch.clamp(9.999 / keys.norm(dim=-1, keepdim=True), max=1.0)  # stay inside the clip
    q32, k32 = (ROOT * u[None]).float(), (ROOT * keys).float()
    exact = exact_weights_for(q32, k32, poincare_distance)
    ours = backend_weights(geoattn.Poincare(), q32, k32, backend, dtype)
    torch.testing.assert_close(ours, exact, atol=1e-5, rtol=0)
    distinct = (exact[0, :, None] - exact[0, None, :]).abs() > 2e-5
    agree = (ours[0, :, None] > ours[0, None, :]) == (exact[0, :, None] > exact[0, None, :])
    assert agree[distinct].all()


@pytest.mark.parametrize("backend", ["sdpa", pytest.param("native", marks=pytest.mark.native)])
@pytest.mark.parametrize("radius", [0.3, 1.5, 3.0, 3.99])
def test_lorentz_affine_form_keeps_the_exact_order_up_to_its_clip(radius, backend):
    """Lorentz runs on its affine form (SDPA's augmented dot product, or the native kernel's factored Gram
    tile), which cancels like ε·cosh²(√c‖u‖): up to its default clip radius 4 the float32 weights stay
    within 1e-4 of the exact ones (measured 6e-5 at 3.99 on SDPA)."""
    gen = torch.Generator().manual_seed(int(radius * 100))
    u = torch.randn(E, generator=gen, dtype=torch.float64)
    u = u / u.norm() * radius
    keys = near_keys(u, gen)
    keys = keys * torch.clamp(3.999 / keys.norm(dim=-1, keepdim=True), max=1.0)
    q32, k32 = (ROOT * u[None]).float(), (ROOT * keys).float()
    exact = exact_weights_for(q32, k32, lorentz_squared_distance)
    ours = backend_weights(geoattn.Lorentz(), q32, k32, backend)
    torch.testing.assert_close(ours, exact, atol=1e-4, rtol=0)
    distinct = (exact[0, :, None] - exact[0, None, :]).abs() > 2e-4
    agree = (ours[0, :, None] > ours[0, None, :]) == (exact[0, :, None] > exact[0, None, :])
    assert agree[distinct].all()


@pytest.mark.native
def test_sphere_geodesic_is_exact_for_nearby_and_antipodal_directions():
    """The geodesic angle from the chord (dense) and from the native kernel's exact near-pair gap, where
    arccos of the cosine would lose √ε: directions 1e-7 rad apart."""
    gen = torch.Generator().manual_seed(5)
    u = torch.randn(E, generator=gen, dtype=torch.float64)
    keys = near_keys(u / u.norm(), gen)
    keys = torch.cat([keys, -keys[:1]])  # and the antipode
    geometry = geoattn.Sphere(score="geodesic")
    theta = distances_from_scores(geometry, u[None] / ROOT, keys / ROOT, per_unit=1.0)[0]

    def angle(a, b):  # normalised in 60 digits, then 2·asin(‖â - b̂‖/2)
        a, b = mp_vector(a), mp_vector(b)
        na, nb = mpmath.sqrt(sum(x * x for x in a)), mpmath.sqrt(sum(x * x for x in b))
        return 2 * mpmath.asin(mpmath.sqrt(sum((x / na - y / nb) ** 2 for x, y in zip(a, b))) / 2)

    exact = torch.tensor([float(angle(u, w)) for w in keys], dtype=torch.float64)
    torch.testing.assert_close(theta[:-1], exact[:-1], rtol=1e-9, atol=1e-14)
    assert abs(theta[-1].item() - math.pi) < 2e-6
    q32, k32 = (u[None]).float(), keys.float()
    native = backend_weights(geometry, q32, k32, "native")
    dense64 = backend_weights(geometry, q32.double(), k32.double(), "dense", torch.float64)
    torch.testing.assert_close(native, dense64, atol=2e-6, rtol=0)
