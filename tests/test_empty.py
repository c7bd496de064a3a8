"""Empty inputs (L = 0, S = 0, B = 0, H = 0, E = 0, Ev = 0) behave as ``F.scaled_dot_product_attention``:
an empty result, zeros where there is no key, uniform weights where queries and keys have no features
(euclidean only; every other geometry raises), for every geometry, backend and ``return_weights``, with
gradients; and through ``energy``, ``MultiheadAttention`` and the backbone models."""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import GEOMETRY_CASES
from torch import nn

import geoattn
from geoattn.models import DecoderLM, Encoder, EncoderClassifier, EncoderDecoder, TransformerConfig

SHAPES = {  # q, k, v
    "L=0": ((2, 3, 0, 4), (2, 3, 5, 4), (2, 3, 5, 6)),
    "S=0": ((2, 3, 5, 4), (2, 3, 0, 4), (2, 3, 0, 6)),
    "B=0": ((0, 3, 5, 4), (0, 3, 5, 4), (0, 3, 5, 6)),
    "H=0": ((2, 0, 5, 4), (2, 0, 5, 4), (2, 0, 5, 6)),
    "Ev=0": ((2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 0)),
    "5-D, a lead dim 0": ((2, 0, 3, 5, 4), (2, 0, 3, 5, 4), (2, 0, 3, 5, 6)),
    "3-D, L=0": ((3, 0, 4), (3, 5, 4), (3, 5, 6)),
}
MASKS = ["none", "causal", "bool", "float"]


@pytest.fixture(autouse=True)
def eager_tiles():
    """Ev = 0 is not empty (there are scores) and runs on the backends: tiled's blocks eagerly (same maths)."""
    geoattn.set_tiled_compile(False)
    yield
    geoattn.set_tiled_compile(True)


def inputs(shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*s, generator=g, requires_grad=True) for s in shapes)


def mask_kwargs(kind, L, S):
    g = torch.Generator().manual_seed(7)
    if kind == "causal":
        return {"is_causal": True}
    if kind == "bool":
        return {"attn_mask": torch.rand(L, S, generator=g) > 0.3}
    if kind == "float":
        return {"attn_mask": torch.randn(L, S, generator=g)}
    return {}


def backends(geometry, return_weights):
    names = ["auto", "dense"]
    if not return_weights:
        names.append("tiled")
        if geometry.affine:
            names.append("sdpa")
    return names


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
@pytest.mark.parametrize("shape", SHAPES)
def test_empty_calls_give_sdpas_result_for_every_geometry_and_backend(case, shape):
    qs, ks, vs = SHAPES[shape]
    heads = qs[-3] if len(qs) >= 4 else 1
    geometry = GEOMETRY_CASES[case](qs[-1], 1 if heads == 0 else heads)
    L, S, Ev = qs[-2], ks[-2], vs[-1]
    for kind in MASKS:
        for return_weights in (False, True):
            for backend in backends(geometry, return_weights):
                q, k, v = inputs(SHAPES[shape])
                res = geoattn.attention(q, k, v, geometry=geometry, backend=backend, return_weights=return_weights,
                                        **mask_kwargs(kind, L, S))
                out, weights = res if return_weights else (res, None)
                assert out.shape == (*qs[:-1], Ev)
                if S == 0:
                    assert (out == 0).all()  # no key: a fully masked row
                if weights is not None:
                    assert weights.shape == (*qs[:-1], S)
                loss = out.sum() + (weights.sum() if weights is not None else 0)
                loss.backward()  # gradients through an empty call, as through SDPA's
                for t in (q, k, v):
                    assert t.grad is not None and t.grad.shape == t.shape and torch.isfinite(t.grad).all()
                if shape == "S=0":
                    assert (q.grad == 0).all()


@pytest.mark.parametrize("shape", [*SHAPES, "E=0"])
@pytest.mark.parametrize("kind", MASKS)
def test_euclidean_empty_calls_equal_sdpa_with_gradients(shape, kind):
    shapes = SHAPES.get(shape, ((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4)))
    L, S = shapes[0][-2], shapes[1][-2]
    kw = mask_kwargs(kind, L, S)
    q, k, v = inputs(shapes)
    q2, k2, v2 = (t.detach().clone().requires_grad_() for t in (q, k, v))
    out = geoattn.attention(q, k, v, **kw)
    ref = F.scaled_dot_product_attention(q2, k2, v2, **kw)
    torch.testing.assert_close(out, ref)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    out.backward(grad)
    ref.backward(grad)
    for ours, theirs in ((q, q2), (k, k2), (v, v2)):
        torch.testing.assert_close(ours.grad, theirs.grad)


def test_e0_gives_uniform_weights_over_the_allowed_keys():
    q, k, v = inputs(((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4)))
    allowed = torch.ones(5, 6, dtype=torch.bool).tril()
    out, w = geoattn.attention(q, k, v, attn_mask=allowed, return_weights=True)
    torch.testing.assert_close(w, (allowed / allowed.sum(-1, keepdim=True)).expand(2, 3, 5, 6))
    torch.testing.assert_close(out, w @ v)


@pytest.mark.parametrize("geometry", [g for g in geoattn.available_geometries() if g != "euclidean"])
def test_e0_is_an_error_for_every_other_geometry(geometry):
    q, k, v = inputs(((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4)))
    with pytest.raises(ValueError, match=rf"E=0 features.*geometry '{geometry}' needs at least one feature.*"
                                         r"Only geometry='euclidean' accepts E=0"):
        geoattn.attention(q, k, v, geometry=geometry)
    with pytest.raises(ValueError, match="E=0"):
        geoattn.energy(q, k, geometry=geoattn.make_geometry(geometry, head_dim=4))


def test_empty_call_still_reports_backend_errors():
    q, k, v = inputs(SHAPES["L=0"])
    with pytest.raises(ValueError, match="not affine"):
        geoattn.attention(q, k, v, geometry="poincare", backend="sdpa")
    with pytest.raises(ValueError, match="unknown backend"):
        geoattn.attention(q, k, v, backend="nope")


@pytest.mark.parametrize("case", sorted(GEOMETRY_CASES))
def test_energy_of_empty_calls(case):
    geometry = GEOMETRY_CASES[case](4, 3)
    q, k, _ = inputs(SHAPES["S=0"])
    e = geoattn.energy(q, k, geometry)
    assert e.shape == (2, 3, 5) and (e == float("-inf")).all()  # no key: -inf, as for a fully masked row
    e.sum().backward()
    assert (q.grad == 0).all()
    for shape in ("L=0", "B=0"):
        q, k, _ = inputs(SHAPES[shape])
        e = geoattn.energy(q, k, geometry, is_causal=True)
        assert e.shape == SHAPES[shape][0][:-1]
        e.sum().backward()
    q, k, _ = inputs(((2, 3, 5, 0), (2, 3, 6, 0), (2, 3, 6, 4)))
    torch.testing.assert_close(geoattn.energy(q, k), torch.full((2, 3, 5), 6.0).log())  # log Σ exp(0)


@pytest.mark.parametrize("geometry", ["euclidean", "poincare"])
@pytest.mark.parametrize("need_weights", [True, False])
def test_multihead_attention_empty_like_torch(geometry, need_weights):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, batch_first=True)
    with torch.no_grad():
        ref.out_proj.bias.normal_()  # S = 0 gives out_proj's bias: visible only if it is not 0
    ours = geoattn.swap(copy.deepcopy(ref), geometry)
    for q_shape, k_shape in (((2, 0, 8), (2, 5, 8)), ((2, 5, 8), (2, 0, 8)), ((0, 5, 8), (0, 5, 8))):
        x, y = torch.randn(*q_shape), torch.randn(*k_shape)
        out, w = ours(x, y, y, need_weights=need_weights)
        out_ref, w_ref = ref(x, y, y, need_weights=need_weights)
        torch.testing.assert_close(out, out_ref)  # empty, or (S = 0) out_proj's bias: no geometry is involved
        if need_weights:
            assert w.shape == w_ref.shape


CFG = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=8, num_classes=3)


@pytest.mark.parametrize("geometry", ["euclidean", "poincare", "sphere"])
def test_models_with_empty_batches_and_sequences(geometry):
    torch.manual_seed(0)
    cfg = TransformerConfig(**CFG, geometry=geometry)
    empty = lambda *shape: torch.zeros(*shape, dtype=torch.long)  # noqa: E731
    lm, enc, clf, s2s = DecoderLM(cfg), Encoder(cfg), EncoderClassifier(cfg), EncoderDecoder(cfg)
    for shape in ((2, 0), (0, 3)):
        logits, loss = lm(empty(*shape))
        assert logits.shape == (*shape, 11) and loss is None
        assert enc(empty(*shape)).shape == (*shape, 8)
    logits, _ = lm(empty(2, 0), cache=lm.new_cache(2))
    assert logits.shape == (2, 0, 11)
    assert clf(empty(0, 3)).shape == (0, 3)
    assert s2s(empty(2, 0), empty(2, 3)).shape == (2, 3, 11)  # no source tokens: cross-attention gives zeros
    assert s2s(empty(2, 3), empty(2, 0)).shape == (2, 0, 11)
    assert s2s(empty(0, 3), empty(0, 2)).shape == (0, 2, 11)
    assert lm.generate(empty(0, 4), 3).shape == (0, 7)
    assert s2s.generate(empty(0, 4), 3, bos_id=1).shape == (0, 4)
    assert s2s.generate(empty(2, 0), 3, bos_id=1).shape == (2, 4)
    lm(empty(2, 0)).__getitem__(0).sum().backward()  # gradients through an empty forward


def test_models_refuse_what_has_no_meaning_when_empty():
    cfg = TransformerConfig(**CFG)
    lm, clf = DecoderLM(cfg), EncoderClassifier(cfg)
    none = torch.zeros(2, 0, dtype=torch.long)
    with pytest.raises(ValueError, match=r"targets are empty \(shape \(2, 0\)\): the mean cross-entropy of no "
                                         r"tokens is undefined; skip the batch"):
        lm(none, none)
    with pytest.raises(ValueError, match=r"the prompt has no tokens \(shape \(2, 0\)\).*at least one token"):
        lm.generate(none, 3)
    with pytest.raises(ValueError, match=r"tokens has no positions \(shape \(2, 0\)\).*nothing to pool"):
        clf(none)
