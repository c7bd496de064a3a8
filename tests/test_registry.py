"""The one geometry factory (geoattn.geometry.registry): by-name construction with head_dim for every geometry,
declared options (checkpoint tags, the Hugging Face config round trip), and what register asks of a class."""
from __future__ import annotations

import pytest
import torch

import geoattn
from conftest import GEOMETRY_CASES
from geoattn.geometry.registry import geometry_for_module, rebuild_options
from geoattn.geometry.tags import encode_tag

D, H = 4, 3


@pytest.mark.parametrize("name", geoattn.available_geometries())
def test_every_geometry_takes_num_heads_and_head_dim(name):
    g = geoattn.make_geometry(name, num_heads=H, head_dim=D)
    assert g.name == name and g.num_heads == H
    q = torch.randn(2, H, 5, D)
    assert geoattn.attention(q, q, q, geometry=g).shape == (2, H, 5, D)
    assert geoattn.make_geometry("poincare", head_dim=8).tag() == "poincare|aggregation=linear|clip_radius=10.0"


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_rebuild_options_round_trip(case):
    """What the Hugging Face config stores rebuilds the same geometry by name (tensors travel separately)."""
    g = GEOMETRY_CASES[case](D, H)
    rebuilt = geometry_for_module(g.name, H, D, rebuild_options(g))
    assert rebuilt.tag() == g.tag() and type(rebuilt) is type(g) and rebuilt.num_heads == g.num_heads
    rebuilt.load_state_dict(g.state_dict())
    q = torch.randn(2, H, 5, D)
    torch.testing.assert_close(geoattn.attention(q, q, q, geometry=rebuilt), geoattn.attention(q, q, q, geometry=g))


def test_metric_epsilon_is_an_option_and_tags_match_exactly():
    source = geoattn.Metric(head_dim=D, epsilon=1e-3)
    assert rebuild_options(source)["epsilon"] == 1e-3
    with pytest.raises(ValueError, match=r"made with geometry 'metric\|rank=None\|epsilon=0.001'"):
        geoattn.Metric(head_dim=D).load_state_dict(source.state_dict())
    state = geoattn.Metric(head_dim=D).state_dict()
    geoattn.Metric(head_dim=D).load_state_dict(state)
    with pytest.raises(ValueError, match=r"made with geometry 'metric\|rank=None' but"):  # an option left out
        geoattn.Metric(head_dim=D).load_state_dict({**state, "geometry_tag": encode_tag("metric|rank=None")})


def test_instances_and_sizes():
    g = geoattn.Poincare(num_heads=H)
    assert geoattn.make_geometry(g) is g and geoattn.make_geometry(g, num_heads=H) is g
    assert geometry_for_module(g, H, D, copy=True) is not g
    with pytest.raises(ValueError, match="were given with a Geometry instance"):
        geoattn.make_geometry(g, curvature=-2.0)
    with pytest.raises(ValueError, match="parameters for 3 heads but the input has 2 heads"):
        geometry_for_module(g, 2, D)
    assert geometry_for_module("sphere", H, D, {"num_heads": 1}).num_heads == 1  # shared by the heads


def test_a_geometry_whose_constructor_takes_no_head_dim_is_refused_at_registration(monkeypatch):
    """The factory passes num_heads and head_dim to every geometry, so register says what to add."""
    from geoattn.geometry import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    class Old(geoattn.TemperedGeometry):
        name = "old-style"
        affine = True

        def __init__(self, temperature=1.0, num_heads: int = 1, learnable: bool = False) -> None:
            super().__init__(temperature, num_heads, learnable)

    with pytest.raises(TypeError, match="old-style.*takes no head_dim.*add them"):
        geoattn.register(Old)
    assert "old-style" not in geoattn.available_geometries()

    class WithOptions(Old):
        name = "with-options"

        def __init__(self, temperature=1.0, num_heads: int = 1, learnable: bool = False, **options) -> None:
            super().__init__(temperature, num_heads, learnable)

    assert geoattn.register(WithOptions) is WithOptions
    assert geoattn.make_geometry("with-options", num_heads=2, head_dim=D).num_heads == 2


def test_kernel_benchmark_cases_come_from_the_registry():
    from benchmarks.kernels import geometries

    cases = geometries()
    assert sorted(cases) == ["euclidean", "euclidean-tau", "l2", "lorentz", "metric", "poincare", "sphere-cosine",
                            "sphere-geodesic", "stereographic"]
    assert cases["metric"](16).rank == 8 and cases["sphere-geodesic"](16).score == "geodesic"
    torch.testing.assert_close(cases["stereographic"](16).curvature, torch.tensor([-0.5], dtype=torch.float64))
