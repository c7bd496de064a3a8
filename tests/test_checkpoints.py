"""Checkpoints: exact state_dict round trips for every geometry; a checkpoint of another geometry is refused."""
from __future__ import annotations

import io

import pytest
import torch

import geoattn
from conftest import GEOMETRY_CASES

CASES = sorted(GEOMETRY_CASES)


def roundtrip(state: dict) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def perturb(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


@pytest.mark.parametrize("case", CASES)
def test_geometry_state_dict_round_trips_exactly(case):
    source = GEOMETRY_CASES[case](4, 3)
    perturb(source, 0)
    target = GEOMETRY_CASES[case](4, 3)
    target.load_state_dict(roundtrip(source.state_dict()))
    for (name, a), (_, b) in zip(source.state_dict().items(), target.state_dict().items()):
        assert torch.equal(a, b), name
    q, k, v = (torch.randn(2, 3, 5, 4, generator=torch.Generator().manual_seed(i)) for i in range(3))
    assert torch.equal(geoattn.attention(q, k, v, geometry=source), geoattn.attention(q, k, v, geometry=target))


@pytest.mark.parametrize("case", CASES)
def test_model_state_dict_round_trips_exactly(case):
    name = case.split("-")[0]
    params = {} if name == "euclidean" else {"learnable": True}
    cfg = geoattn.models.TransformerConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=2, max_len=16,
                                           geometry=name, geometry_params=params)
    torch.manual_seed(0)
    source = geoattn.models.DecoderLM(cfg)
    perturb(source, 1)
    torch.manual_seed(1)
    target = geoattn.models.DecoderLM(cfg)
    target.load_state_dict(roundtrip(source.state_dict()))
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    tokens = torch.randint(0, 11, (2, 9), generator=torch.Generator().manual_seed(2))
    assert torch.equal(source(tokens)[0], target(tokens)[0])


def test_geoopt_manifold_parameters_round_trip_exactly():
    """A model mixing geoattn layers with a geoopt ManifoldParameter (a Poincaré embedding table)."""
    import geoopt

    ball = geoopt.PoincareBall(c=1.0)

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.points = geoopt.ManifoldParameter(ball.expmap0(0.3 * torch.randn(7, 4)), manifold=ball)
            self.attn = geoattn.MultiheadAttention(4, 2, geometry="poincare", batch_first=True, learnable=True)

    source, target = Model(), Model()
    opt = geoattn.riemannian_optimizer(source, lr=1e-2)
    out, _ = source.attn(source.points[None], source.points[None], source.points[None])
    out.square().sum().backward()
    opt.step()
    target.load_state_dict(roundtrip(source.state_dict()))
    assert isinstance(target.points, geoopt.ManifoldParameter)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    assert (target.points.norm(dim=-1) < 1).all()


@pytest.mark.parametrize("source_case, target_case", [
    ("poincare", "lorentz"), ("lorentz", "poincare"), ("poincare", "poincare-midpoint"),
    ("sphere-cosine", "sphere-geodesic"), ("stereographic-neg", "poincare"), ("metric", "metric-lowrank"),
])
def test_loading_a_checkpoint_of_another_geometry_fails_clearly(source_case, target_case):
    source, target = GEOMETRY_CASES[source_case](4, 2), GEOMETRY_CASES[target_case](4, 2)
    with pytest.raises(ValueError,
                       match=r"checkpoint at .* was made with geometry '.*' but this module uses '.*'; build"):
        target.load_state_dict(source.state_dict())


def test_loading_a_model_of_another_geometry_fails_clearly():
    make = lambda g: geoattn.models.DecoderLM(geoattn.models.TransformerConfig(  # noqa: E731
        vocab_size=11, d_model=16, n_heads=2, n_layers=1, max_len=8, geometry=g))
    made_with = r"made with geometry 'poincare\|aggregation=linear\|clip_radius=10.0' but this module uses 'lorentz"
    with pytest.raises(ValueError, match=made_with):
        make("lorentz").load_state_dict(make("poincare").state_dict())


def test_free_sign_curvature_is_stored_as_asinh_and_reads_back_the_same_kappa():
    """κ-stereographic stores ``asinh κ`` (``asinh_curvature``): κ reads back as given at any sign and at 0,
    ∂κ/∂r = cosh r (autograd against the closed form), and a checkpoint loads to the same κ, strictly, through
    torch.save."""
    given = torch.tensor([-20.0, -1.0, -1e-8, 0.0, 0.5, 3.0], dtype=torch.float64)
    g = geoattn.Stereographic(curvature=given, num_heads=6, learnable=True)
    assert [name for name, _ in g.named_parameters()] == ["log_temperature", "asinh_curvature"]
    assert g.curvature_parameter is g.asinh_curvature
    torch.testing.assert_close(g.curvature.detach(), given, rtol=1e-15, atol=1e-300)
    torch.testing.assert_close(g.asinh_curvature.detach(), torch.asinh(given), rtol=0, atol=0)
    (slope,) = torch.autograd.grad(g.curvature.sum(), g.asinh_curvature)
    torch.testing.assert_close(slope, torch.cosh(torch.asinh(given)), rtol=1e-15, atol=0)

    again = geoattn.Stereographic(num_heads=6, learnable=True)
    again.load_state_dict(roundtrip(g.state_dict()))
    assert torch.equal(again.asinh_curvature, g.asinh_curvature)
    torch.testing.assert_close(again.curvature.detach(), given, rtol=1e-15, atol=1e-300)
    # the fixed-sign geometries store log|κ|
    assert [name for name, _ in geoattn.Poincare(learnable=True).named_parameters()] == ["log_temperature",
                                                                                          "raw_curvature"]
