"""``euclidean-tau``: the dot product with a learnable per-head temperature, SDPA exactly at τ = 1."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import geoattn

BACKENDS = [b for b in ("dense", "sdpa", "tiled", "auto") if b in geoattn.available_backends()]
TOL = {torch.float64: 1e-12, torch.float32: 2e-6}


def test_auto_runs_it_on_sdpa_like_the_dot_product():
    q = torch.randn(2, 4, 64, 16)
    assert geoattn.explain_backend(q, q, q, geometry="euclidean-tau").startswith("sdpa")
    assert geoattn.explain_backend(q, q, q, geometry="euclidean").startswith("sdpa")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_is_sdpa_at_initialisation_and_sdpa_with_scale_over_tau_after(backend, dtype):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=dtype) for _ in range(3))
    geometry = geoattn.make_geometry("euclidean-tau", num_heads=3, head_dim=8, learnable=True).to(dtype)
    tol = TOL[dtype]
    torch.testing.assert_close(geoattn.attention(q, k, v, geometry=geometry, backend=backend),
                               F.scaled_dot_product_attention(q, k, v), rtol=tol, atol=tol)
    tau = torch.tensor([0.5, 1.0, 3.0], dtype=dtype)
    with torch.no_grad():
        geometry.log_temperature.copy_(tau.log())
    out = geoattn.attention(q, k, v, geometry=geometry, backend=backend, is_causal=True)
    for h in range(3):  # head h is SDPA at scale 1/(√E τ_h)
        want = F.scaled_dot_product_attention(q[:, h], k[:, h], v[:, h], is_causal=True,
                                              scale=1 / (math.sqrt(8) * float(tau[h])))
        torch.testing.assert_close(out[:, h], want, rtol=tol, atol=tol)


def test_scale_multiplies_the_score_and_the_temperature_learns():
    g = torch.Generator().manual_seed(1)
    q, k = (torch.randn(1, 2, 4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    geometry = geoattn.make_geometry("euclidean-tau", num_heads=2, head_dim=6, learnable=True).double()
    dot = q @ k.transpose(-1, -2)
    torch.testing.assert_close(geoattn.scores(q, k, geometry), dot / math.sqrt(6), rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(geoattn.scores(q, k, geometry, scale=0.25), 0.25 * dot / math.sqrt(6),
                               rtol=1e-13, atol=1e-13)
    geoattn.scores(q, k, geometry).square().sum().backward()
    # d/d log τ of Σ (dot/(√E τ))² at τ = 1 is -2 Σ (dot/√E)² per head
    want = -2 * (dot / math.sqrt(6)).square().sum(dim=(0, 2, 3))
    torch.testing.assert_close(geometry.log_temperature.grad, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="scale"):
        geoattn.scores(q, k, geometry, scale=-1.0)
