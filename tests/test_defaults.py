"""Defaults that work at every head dimension, parameters that keep their values, and clipping that says so.

The scale rule (``geoattn/geometry/base.py``): every geometry scores ``√E·sim(q/√E, k/√E)/τ``, so with
unit-variance activations its initial attention is as sharp as SDPA's ``⟨q, k⟩/√E`` at every head size.
"""
from __future__ import annotations

import math
import warnings

import pytest
import torch

import geoattn
from geoattn.geometry.clip import ClipWarning
from test_contract import HEAD_DIMS, normalised_entropy

GEOMETRIES = {  # parameters other than the defaults (which test_contract's entropy contract covers)
    "metric-lowrank": lambda d: geoattn.Metric(head_dim=d, rank=max(1, d // 4)),
    "stereographic-flat": lambda d: geoattn.Stereographic(curvature=0.0),
    "stereographic-positive": lambda d: geoattn.Stereographic(curvature=1.0),
}


@pytest.mark.parametrize("name", list(GEOMETRIES))
def test_initial_attention_is_as_sharp_as_sdpa_at_every_head_dim(name):
    """Normalised entropy of the attention (unit-variance q, k; 64 keys) within 0.2 of SDPA's (0.89) at every
    head size from 2 to 128, and never uniform (≤ 0.98), for parameters other than the defaults."""
    for d in HEAD_DIMS:
        reference = normalised_entropy(geoattn.Euclidean(), d)
        h = normalised_entropy(GEOMETRIES[name](d), d)
        assert abs(h - reference) <= 0.2 and h <= 0.98, (name, d, h, reference)


def test_parameters_keep_the_values_given():
    """Stored in float64: ``curvature=-0.1`` reads back as -0.1 (float32 storage of log 0.1 gave
    -0.09999999404), and a float64 run uses exactly that value."""
    g = geoattn.Poincare(curvature=-0.1, temperature=0.3)
    # log-parametrised, so exp(log 0.1) is exact to one float64 ulp
    assert abs(g.curvature.item() + 0.1) < 2e-17 and abs(g.temperature.item() - 0.3) < 6e-17
    assert g.curvature_parameter.dtype == torch.float64
    q, k, v = (torch.randn(1, 1, 5, 4, dtype=torch.float64) for _ in range(3))
    exact = geoattn.Poincare(curvature=torch.tensor(-0.1, dtype=torch.float64),
                             temperature=torch.tensor(0.3, dtype=torch.float64))
    torch.testing.assert_close(geoattn.attention(q, k, v, geometry=g), geoattn.attention(q, k, v, geometry=exact),
                               rtol=0, atol=1e-15)


def orthogonal_keys(d: int, radii: list[float], kappa: float) -> tuple[torch.Tensor, torch.Tensor]:
    """A query at tangent norm 1 and keys orthogonal to it at tangent norms √|κ|‖u‖ = radii (raw x = √d·u)."""
    q = torch.zeros(1, 1, 1, d, dtype=torch.float64)
    q[..., 0] = math.sqrt(d) / math.sqrt(abs(kappa))
    k = torch.zeros(1, 1, len(radii), d, dtype=torch.float64)
    for j, r in enumerate(radii):
        k[0, 0, j, 1] = r * math.sqrt(d) / math.sqrt(abs(kappa))
    return q, k


def test_the_clip_is_explicit_counted_and_warned_about_once():
    """κ = -4: keys at √c‖u‖ = 4 and 8 are inside the default clip (10) and keep their order (the nearer
    wins); keys at 20 and 40 are clipped to the same radius, which the geometry reports."""
    g = geoattn.Poincare(curvature=-4.0)
    assert g.clip_radius == 10.0 and g.clipped == 0
    q, k = orthogonal_keys(4, [4.0, 8.0], -4.0)
    _, w = geoattn.attention(q, k, k, geometry=g, return_weights=True)
    _, exact = geoattn.attention(q, k, k, geometry=geoattn.Poincare(curvature=-4.0, clip_radius=1e6),
                                 return_weights=True)
    assert g.clipped == 0 and w[0, 0, 0, 0] > 0.95  # the key at radius 4 is far nearer
    torch.testing.assert_close(w, exact, rtol=0, atol=1e-15)
    q, k = orthogonal_keys(4, [20.0, 40.0], -4.0)
    with pytest.warns(ClipWarning, match=r"clipped 2 tangent vector\(s\) to √\|κ\|·‖u‖ = 10.0"):
        _, w = geoattn.attention(q, k, k, geometry=g, return_weights=True)
    assert g.clipped == 2
    torch.testing.assert_close(w[0, 0, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))  # both at radius 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # shown once per geometry
        geoattn.attention(q, k, k, geometry=g)
    assert g.clipped == 4
    wide = geoattn.Poincare(curvature=-4.0, clip_radius=50.0)
    _, w = geoattn.attention(q, k, k, geometry=wide, return_weights=True)
    assert wide.clipped == 0 and w[0, 0, 0, 0] > 0.999  # unclipped, the key at radius 20 wins outright
    with pytest.raises(ValueError, match="clip_radius must be positive"):
        geoattn.Poincare(clip_radius=0.0)
    with pytest.raises(TypeError, match="clip_radius must be a positive number"):
        geoattn.Lorentz(clip_radius="4")
    with pytest.raises(TypeError, match="clip_radius"):  # the sphere is never negatively curved: no clip
        geoattn.Sphere(clip_radius=3.0)


@pytest.mark.parametrize("c", [4.0, 10.0])
@pytest.mark.parametrize("name", ["poincare", "lorentz", "stereographic"])
def test_ordinary_heads_are_never_clipped(name, c):
    """randn heads of dim 64 at curvature -4 and -10 (√c‖u‖ ≈ 2 and 3.2): nothing is clipped, and the
    weights equal those of a geometry that never clips (before: off by 0.43 and 0.49 in float64)."""
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 2, 16, 64, generator=gen, dtype=torch.float64) for _ in range(3))
    g = geoattn.make_geometry(name, curvature=-c)
    _, w = geoattn.attention(q, k, v, geometry=g, return_weights=True)
    unclipped = geoattn.make_geometry(name, curvature=-c, clip_radius=1e6)
    _, ref = geoattn.attention(q, k, v, geometry=unclipped, return_weights=True)
    assert g.clipped == 0
    torch.testing.assert_close(w, ref, rtol=0, atol=1e-13)


@pytest.mark.parametrize("score", ["cosine", "geodesic"])
def test_the_sphere_is_scale_invariant_even_for_huge_inputs(score):
    """``q·1e20`` squares to inf in float32; the directions are formed without squaring."""
    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=gen) for _ in range(3))
    g = geoattn.Sphere(score=score)
    torch.testing.assert_close(geoattn.attention(q * 1e20, k * 1e15, v, geometry=g),
                               geoattn.attention(q, k, v, geometry=g), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["poincare", "stereographic", "lorentz"])
def test_huge_hyperbolic_inputs_are_clipped_not_garbled(name):
    """``q·1e20`` lies far past the clip: it is clipped along its own direction (reported), so the call
    equals the one with q rescaled to the clip radius, instead of changing by O(1)."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 9, 8, generator=gen) for _ in range(3))
    g = geoattn.make_geometry(name)
    with pytest.warns(ClipWarning):
        out = geoattn.attention(q * 1e20, k, v, geometry=g)
    at_clip = q / q.norm(dim=-1, keepdim=True) * g.clip_radius * math.sqrt(8)
    torch.testing.assert_close(out, geoattn.attention(at_clip, k, v, geometry=geoattn.make_geometry(name)),
                               rtol=0, atol=2e-5)
    assert torch.isfinite(out).all() and g.clipped >= 18
