"""``torch.compile`` and ``torch.export`` of models with geoattn layers, and the native kernel as an operator.

Every geometry's DecoderLM compiles with ``fullgraph=True`` and no graph break, its compiled loss and gradients
equal eager's (within 1e-5), and the fused geometries' graphs call the native kernel itself
(``torch.ops.geoattn.native_attention``), not a slower fallback; ``torch.library.opcheck`` checks the
operator's registration (schema, fake tensors, autograd, AOT dispatch) on every kind it runs; an inference
model exports, saves, loads and computes what eager computes. Compiling is slow on a shared CPU, so the
models are tiny and AOT autograd's eager backend (the graphs inductor would get) runs most checks; one test
runs inductor itself.
"""
from __future__ import annotations

import io

import pytest
import torch

import geoattn
from benchmarks.throughput import CASES as THROUGHPUT_CASES
from geoattn.backends.native import NativeBackend, load
from geoattn.backends.native.op import native_attention
from geoattn.call import prepare_call
from geoattn.models import DecoderLM, TransformerConfig

NATIVE = load()
needs_native = pytest.mark.skipif(isinstance(NATIVE, str), reason=str(NATIVE))

# label → (registered geometry, parameters): the throughput benchmark's cases, and the euclidean-tau baseline
CASES = {**THROUGHPUT_CASES, "euclidean-tau": ("euclidean-tau", {})}


def _model(label: str, seed: int = 0) -> tuple[DecoderLM, torch.Tensor, torch.Tensor]:
    name, params = CASES[label]
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=17, d_model=16, n_heads=2, n_layers=1, max_len=16, bias=False, geometry=name,
                            geometry_params=dict(params))
    gen = torch.Generator().manual_seed(seed)
    x, y = (torch.randint(0, 17, (2, 8), generator=gen) for _ in range(2))
    return DecoderLM(cfg), x, y


def _graph_code(gm: torch.fx.GraphModule) -> str:
    return "\n".join(m.code for m in gm.modules() if isinstance(m, torch.fx.GraphModule))


def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    _, loss = model(x, y)
    loss.backward()
    return loss.detach(), {n.removeprefix("_orig_mod."): p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


@pytest.mark.slow
@pytest.mark.parametrize("label", sorted(CASES))
def test_decoder_compiles_without_graph_breaks_and_matches_eager(label):
    model, x, y = _model(label)
    explained = torch._dynamo.explain(model)(x, y)
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert explained.graph_count == 1
    code = "\n".join(_graph_code(g) for g in explained.graphs)
    fused = not label.startswith("euclidean") and not isinstance(NATIVE, str)  # the Euclidean ones run on SDPA
    assert ("geoattn.native_attention" in code) == fused, "the fused geometries must reach the native kernel"

    loss, grads = _loss_and_grads(model, x, y)
    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    c_loss, c_grads = _loss_and_grads(compiled, x, y)
    torch.testing.assert_close(c_loss, loss, rtol=0, atol=1e-5)
    assert c_grads.keys() == grads.keys()
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], rtol=0, atol=1e-5, msg=name)


@needs_native
@pytest.mark.slow
def test_inductor_compiled_poincare_step_matches_eager():
    model, x, y = _model("poincare")
    loss, grads = _loss_and_grads(model, x, y)
    torch._dynamo.reset()
    c_loss, c_grads = _loss_and_grads(torch.compile(model, fullgraph=True), x, y)
    torch.testing.assert_close(c_loss, loss, rtol=0, atol=1e-5)
    for name in grads:
        torch.testing.assert_close(c_grads[name], grads[name], rtol=0, atol=1e-5, msg=name)


class _AffineMetric(geoattn.Metric):
    """The learned metric through the generic ``affine`` kind (terms from ``affine_form``, computed in torch)."""

    native_kind = "affine"
    native_spec = geoattn.Geometry.native_spec


OPCHECK_GEOMETRIES = {
    "poincare": lambda: geoattn.Poincare(curvature=[-0.7, -1.3], num_heads=2, learnable=True),
    "sphere-geodesic": lambda: geoattn.Sphere(score="geodesic", learnable=True),
    "lorentz": lambda: geoattn.Lorentz(curvature=[-0.8, -1.6], num_heads=2, learnable=True),
    "metric": lambda: geoattn.Metric(head_dim=4, rank=2, learnable=True),
    "affine": lambda: _AffineMetric(head_dim=4, temperature=[1.0, 0.6], num_heads=2, learnable=True),
}


@needs_native
@pytest.mark.parametrize("mask", ["causal", "bool", "float"])
@pytest.mark.parametrize("label", sorted(OPCHECK_GEOMETRIES))
def test_native_operator_passes_opcheck(label, mask):
    torch.manual_seed(0)
    geometry = OPCHECK_GEOMETRIES[label]().float()
    B, H, L, S, E = 2, 2, 5, 5, 4
    q, k, v = (torch.randn(B, H, n, E, requires_grad=True) for n in (L, S, S))
    kwargs = {"causal": dict(is_causal=True), "bool": dict(attn_mask=torch.rand(B, 1, L, S) > 0.3),
              "float": dict(attn_mask=torch.randn(1, H, L, S))}[mask]
    call = prepare_call(q, k, v, geometry, **kwargs)
    args, _ = NativeBackend().arguments(call)
    # leaves (opcheck differentiates several times; the affine terms were made from q and k)
    args = [a.detach().requires_grad_(a.is_floating_point()) if isinstance(a, torch.Tensor) else a for a in args]
    torch.library.opcheck(native_attention, args)


@needs_native
@pytest.mark.parametrize("label", ["poincare", "lorentz", "euclidean"])
def test_exported_inference_model_round_trips(label):
    model, x, _ = _model(label)
    model.eval()
    program = torch.export.export(model, (x,))
    if label != "euclidean":
        assert "geoattn.native_attention" in _graph_code(program.graph_module)
    saved = io.BytesIO()
    torch.export.save(program, saved)
    saved.seek(0)
    loaded = torch.export.load(saved).module()
    with torch.no_grad():
        want = model(x)[0]
        other = torch.randint(0, 17, x.shape, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(loaded(x)[0], want, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded(other)[0], model(other)[0], rtol=0, atol=1e-6)


@needs_native
@pytest.mark.parametrize("label", ["poincare", "metric", "lorentz"])
def test_eager_call_without_grad_equals_the_operator_bit_for_bit(label):
    """Without autograd an eager call runs the operator's implementation directly (no dispatcher): the same output,
    bit for bit, as the call through the operator (with gradients)."""
    torch.manual_seed(0)
    geometry = OPCHECK_GEOMETRIES[label]().float()
    q, k, v = (torch.randn(2, 2, n, 4) for n in (3, 6, 6))
    with torch.no_grad():
        direct = geoattn.attention(q, k, v, geometry=geometry, is_causal=False, backend="native")
    through_op = geoattn.attention(q.requires_grad_(), k, v, geometry=geometry, backend="native")
    assert through_op.grad_fn is not None
    assert torch.equal(direct, through_op.detach())


@needs_native
@pytest.mark.parametrize("label", ["poincare", "metric"])
def test_remembered_constants_follow_parameters_changed_behind_autograd(label):
    """κ, μ and the metric's G are remembered between calls by the parameters' bits, so a change that autograd's
    version counter does not see (``p.data`` written in place) still changes the output: it equals a fresh
    geometry's with the new parameters."""
    torch.manual_seed(0)
    geometry = OPCHECK_GEOMETRIES[label]()
    q, k, v = (torch.randn(1, 2, n, 4) for n in (2, 5, 5))
    with torch.no_grad():
        before = geoattn.attention(q, k, v, geometry=geometry, backend="native")
        for p in geometry.parameters():
            p.data.mul_(1.5)  # not seen by p._version
        after = geoattn.attention(q, k, v, geometry=geometry, backend="native")
        fresh = OPCHECK_GEOMETRIES[label]()
        fresh.load_state_dict(geometry.state_dict())
        want = geoattn.attention(q, k, v, geometry=fresh, backend="native")
    assert not torch.equal(before, after)
    assert torch.equal(after, want)


def test_compiles_without_graph_breaks_when_native_is_unavailable(monkeypatch):
    """A machine where the native kernel did not build: ``auto`` falls back (and warns once) without breaking the
    compiled graph."""
    from geoattn.backends import policy
    from geoattn.backends.native import build

    monkeypatch.setattr(build, "_LOADED", "the native kernel could not be built (a test's reason)")
    monkeypatch.setattr(policy, "_WARNED_FALLBACK", [False])
    model, x, y = _model("poincare")
    torch._dynamo.reset()
    with pytest.warns(UserWarning, match="a test's reason"):
        explained = torch._dynamo.explain(model)(x, y)
    torch._dynamo.reset()
    assert explained.graph_break_count == 0, [str(b.reason)[:200] for b in explained.break_reasons]
    assert "native_attention" not in "\n".join(_graph_code(g) for g in explained.graphs)
