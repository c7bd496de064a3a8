"""The add-a-geometry example (examples/custom_geometry.py) passes the same contract suite as the built-in
geometries, and its score matches the product-manifold formula computed independently in closed form.

The example registers its geometry when imported. The registration lasts only while this module's tests
run (module fixture), so the other test files see the built-in registry; the contract test functions of
``test_contract.py`` run unchanged over a copy of conftest's cases extended with the example's (via
``monkeypatch.setitem`` on the shared dict, undone after each test).
"""
from __future__ import annotations

import importlib.util
import inspect
from pathlib import Path

import pytest
import torch

import geoattn
import test_contract as contract
from conftest import GEOMETRY_CASES
from geoattn.geometry.registry import _REGISTRY

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "custom_geometry.py"
CASES = {
    "hyperspherical": lambda d, h: _example().HyperbolicSpherical(curvature=-0.7, temperature=0.8, num_heads=h),
    "hyperspherical-flat-ish": lambda d, h: _example().HyperbolicSpherical(curvature=-0.05, num_heads=h),
}
_loaded: dict[str, object] = {}


def _example():
    return _loaded["module"]


@pytest.fixture(autouse=True, scope="module")
def example():
    """Import the example (registering its geometry) for this module only."""
    spec = importlib.util.spec_from_file_location("geoattn_example_custom_geometry", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _loaded["module"] = module
    yield module
    _REGISTRY.pop(module.HyperbolicSpherical.name, None)
    _loaded.clear()


@pytest.fixture
def cases(monkeypatch):
    for name, make in CASES.items():
        monkeypatch.setitem(GEOMETRY_CASES, name, make)
    return CASES


def test_example_is_short_and_registered(example):
    assert len(EXAMPLE.read_text().splitlines()) < 50
    assert "hyperspherical" in geoattn.available_geometries()
    assert isinstance(geoattn.make_geometry("hyperspherical"), example.HyperbolicSpherical)


CONTRACT = {name: fn for name, fn in vars(contract).items()
            if name.startswith("test_") and "case" in inspect.signature(fn).parameters}


def test_contract_suite_is_found():
    assert len(CONTRACT) >= 8, sorted(CONTRACT)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("contract_test", sorted(CONTRACT))
def test_contract_over_the_example(contract_test, case, cases):
    CONTRACT[contract_test](case)


def test_registry_check_and_defaults_by_name(cases):
    """test_contract's own registry check holds with the example registered, and its by-name defaults work."""
    contract.test_every_registered_geometry_has_a_contract_case()
    contract.test_geometry_by_name_uses_defaults("hyperspherical")


def _closed_form_score(q, k, c: float, tau: float, clip: float = 4.0):
    """``-√E(d²_L + ρ²‖x̂ - ŷ‖²)/(2τ)``, ``ρ² = (E - m)/E``, from the textbook formulas: hyperboloid point of
    curvature -c ``(cosh(√c‖u‖)/√c, sinh(√c‖u‖) u/(√c‖u‖))`` of ``u = q[:m]/√E`` (shortened to ``√c‖u‖ = clip``
    where longer), ``d²_L = -2/c - 2⟨x, y⟩_L``; chord on the unit sphere."""
    E = q.shape[-1]
    m = E // 2

    def hyperboloid(x):
        u = x / E**0.5
        r = u.norm(dim=-1, keepdim=True)
        u = u * (clip / (c**0.5 * r)).clamp(max=1)
        r = u.norm(dim=-1, keepdim=True)
        return torch.cat([torch.cosh(c**0.5 * r) / c**0.5, torch.sinh(c**0.5 * r) * u / (c**0.5 * r)], -1)

    x, y = hyperboloid(q[..., :m]), hyperboloid(k[..., :m])
    lorentz_inner = -x[..., :, None, 0] * y[..., None, :, 0] + x[..., 1:] @ y[..., 1:].transpose(-1, -2)
    d2_lorentz = -2 / c - 2 * lorentz_inner
    xs = q[..., m:] / q[..., m:].norm(dim=-1, keepdim=True)
    ys = k[..., m:] / k[..., m:].norm(dim=-1, keepdim=True)
    chord2 = ((xs[..., :, None, :] - ys[..., None, :, :]) ** 2).sum(-1)
    return -E**0.5 * (d2_lorentz + (E - m) / E * chord2) / (2 * tau)


@pytest.mark.parametrize("head_dim", [2, 5, 8])
def test_weights_match_the_product_manifold_formula(example, head_dim):
    g = torch.Generator().manual_seed(head_dim)
    q = torch.randn(2, 1, 6, head_dim, generator=g, dtype=torch.float64)
    k = torch.randn(2, 1, 9, head_dim, generator=g, dtype=torch.float64)
    v = torch.randn(2, 1, 9, 3, generator=g, dtype=torch.float64)
    geometry = example.HyperbolicSpherical(curvature=torch.tensor(-0.6, dtype=torch.float64),
                                           temperature=torch.tensor(1.7, dtype=torch.float64))
    out, w = geoattn.attention(q, k, v, geometry=geometry, backend="dense", return_weights=True)
    expected = torch.softmax(_closed_form_score(q, k, 0.6, 1.7), dim=-1)
    torch.testing.assert_close(w, expected, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(geoattn.attention(q, k, v, geometry=geometry, backend="sdpa"), expected @ v)
    # the constant per-query term makes the log-sum-exp energy the exact potential, not just up to a shift
    energy = geoattn.energy(q, k, geometry)
    torch.testing.assert_close(energy, torch.logsumexp(_closed_form_score(q, k, 0.6, 1.7), -1))


def test_the_example_clips_its_hyperbolic_part_and_says_so(example):
    """Tangent vectors past √|κ|‖u‖ = 4 are shortened to it (the closed form's clip), counted, and warned about."""
    g = torch.Generator().manual_seed(3)
    q = torch.randn(1, 1, 5, 6, generator=g, dtype=torch.float64)
    q[..., 0, :3] *= 40  # √0.6·‖u[:m]‖ ≈ 40·√0.6·√(3/6) > 4: clipped
    k = torch.randn(1, 1, 7, 6, generator=g, dtype=torch.float64)
    geometry = example.HyperbolicSpherical(curvature=torch.tensor(-0.6, dtype=torch.float64))
    with pytest.warns(geoattn.ClipWarning, match="'hyperspherical' geometry clipped 1 tangent"):
        _, w = geoattn.attention(q, k, k, geometry=geometry, backend="dense", return_weights=True)
    assert geometry.clipped == 1
    torch.testing.assert_close(w, torch.softmax(_closed_form_score(q, k, 0.6, 1.0), -1), atol=1e-12, rtol=1e-10)
    unclipped = torch.softmax(_closed_form_score(q, k, 0.6, 1.0, clip=1e9), -1)
    assert not torch.allclose(w[..., 0, :], unclipped[..., 0, :], atol=1e-3)  # the clip changed that query's row


def test_too_small_heads_are_a_clear_error(example):
    with pytest.raises(ValueError, match="head_dim >= 2"):
        geoattn.attention(*(torch.randn(1, 1, 3, 1) for _ in range(3)), geometry=example.HyperbolicSpherical())
