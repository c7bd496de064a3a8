"""Energy identities (autograd = attention-weighted score gradients; the Euclidean M∇E identity),
exclude_self on every backend, and geoattn.trace against a hand computation."""
import math

import pytest
import torch

import geoattn
from conftest import GEOMETRY_CASES
from geoattn.models import DecoderLM, EncoderClassifier, EncoderDecoder, TransformerConfig


def geometries():
    """Every contract case of conftest (each geometry, score and aggregation) plus a random metric."""
    torch.manual_seed(0)
    out = {name: make(3, 1) for name, make in GEOMETRY_CASES.items()}
    metric = geoattn.Metric(head_dim=3, rank=2)
    with torch.no_grad():
        metric.factor.normal_()
    out["metric-random"] = metric
    return {k: g.double() for k, g in out.items()}


GEOMS = geometries()


def qk(L=4, S=5, E=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(2, L, E, generator=g, dtype=torch.float64),
            0.5 * torch.randn(2, S, E, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name", list(GEOMS))
def test_energy_gradient_is_attention_weighted_score_gradient(name):
    geom = GEOMS[name]
    q, k = qk()
    mask = torch.ones(4, 5, dtype=torch.bool)
    mask[1, :3] = False
    q_ = q.clone().requires_grad_()
    (grad,) = torch.autograd.grad(geoattn.energy(q_, k, geom, attn_mask=mask).sum(), q_)
    _, w = geoattn.attention(q, k, k, geometry=geom, attn_mask=mask, return_weights=True)  # (2, 4, 5)
    expect = torch.zeros_like(q)
    for b in range(2):
        for i in range(4):
            for j in range(5):  # ∇_q score of one (query, key) pair, through the geometry's own lift
                qi = q[b, i].clone().requires_grad_()
                lifted = geom.lift(qi.view(1, 1, 1, 3), k[b, j].view(1, 1, 1, 3), None)
                (g,) = torch.autograd.grad(geoattn.backends.dense_scores(geom, lifted).sum(), qi)
                expect[b, i] += w[b, i, j] * g
    torch.testing.assert_close(grad, expect, atol=1e-10, rtol=1e-8)
    assert torch.autograd.gradcheck(lambda a, c: geoattn.energy(a, c, geom, attn_mask=mask),
                                    (q.clone().requires_grad_(), k.clone().requires_grad_()))


@pytest.mark.parametrize("name", list(GEOMS))
def test_energy_is_log_normaliser_of_attention(name):
    """exp(score_ij - E_i) are the attention weights: a closed form, checked per geometry."""
    geom = GEOMS[name]
    q, k = qk(L=5, S=5, seed=1)
    e = geoattn.energy(q, k, geom, exclude_self=True, is_causal=True)
    score = geoattn.backends.dense_scores(geom, geom.lift(q[:, None], k[:, None], None))[:, 0]
    _, w = geoattn.attention(q, k, k, geometry=geom, exclude_self=True, is_causal=True, return_weights=True)
    allowed = torch.ones(5, 5, dtype=torch.bool).tril(-1)
    torch.testing.assert_close(torch.where(allowed, (score - e[..., None]).exp(), 0.0), w)
    assert torch.isneginf(e[:, 0]).all()  # the first query has no key left: -inf, documented


def test_euclidean_identity_m_grad_energy():
    """t_i + Σ_{k≠i} softmax(Qt_i·Kt_k) Vt_k = t_i + M ∇_{t_i} log Σ_{k≠i} exp(Qt_i·Kt_k), M = V(QᵀK)⁻¹."""
    g = torch.Generator().manual_seed(0)
    n, d = 7, 4
    t = torch.randn(n, d, generator=g, dtype=torch.float64)
    Q, K, V = (torch.randn(d, d, generator=g, dtype=torch.float64) + 2 * torch.eye(d, dtype=torch.float64)
               for _ in range(3))
    assert min(torch.linalg.cond(Q), torch.linalg.cond(K), torch.linalg.cond(V)) < 1e3
    lhs = t + geoattn.attention(t @ Q.T, t @ K.T, t @ V.T, scale=1.0, exclude_self=True)
    tq = t.clone().requires_grad_()  # t_i enters E_i only as a query (k ≠ i): its gradient is query-side
    (grad,) = torch.autograd.grad(geoattn.energy(tq @ Q.T, t @ K.T, scale=1.0, exclude_self=True).sum(), tq)
    M = V @ torch.linalg.inv(Q.T @ K)
    torch.testing.assert_close(lhs, t + grad @ M.T, atol=1e-10, rtol=1e-10)
    # the same with a hand-written softmax (independent of geoattn.attention)
    s = (t @ Q.T) @ (t @ K.T).T
    p = torch.softmax(s.masked_fill(torch.eye(n, dtype=torch.bool), -math.inf), dim=-1)
    torch.testing.assert_close(lhs, t + p @ (t @ V.T), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("backend,name", [("sdpa", "euclidean"), ("sdpa", "lorentz"), ("dense", "poincare"),
                                          ("dense", "euclidean"), ("auto", "sphere-geodesic"),
                                          ("sdpa", "metric-lowrank")])
@pytest.mark.parametrize("extra", [{}, {"is_causal": True}, {"attn_mask": "bool"}, {"attn_mask": "float"}])
def test_exclude_self_equals_explicit_mask(backend, name, extra):
    geom = GEOMS[name]
    q, k = qk(L=5, S=5, seed=2)
    v = torch.randn(2, 5, 3, dtype=torch.float64)
    off = ~torch.eye(5, dtype=torch.bool)
    kw, mask = dict(extra), off
    if extra.get("is_causal"):
        mask = off & torch.ones(5, 5, dtype=torch.bool).tril()
    elif extra.get("attn_mask") == "bool":
        kw["attn_mask"] = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(3)) > 0.3
        kw["attn_mask"][..., 0] = kw["attn_mask"][..., 1] = True
        mask = off & kw["attn_mask"]
    elif extra.get("attn_mask") == "float":
        kw["attn_mask"] = torch.randn(5, 5, dtype=torch.float64)
        mask = kw["attn_mask"].masked_fill(~off, -math.inf)
    got = geoattn.attention(q, k, v, geometry=geom, exclude_self=True, backend=backend, **kw)
    want = geoattn.attention(q, k, v, geometry=geom, attn_mask=mask, backend="dense")
    if extra.get("is_causal"):  # the first query has no key left: zeros (SDPA gives NaN, so compare rows 1..)
        got, want = got[:, 1:], want[:, 1:]
    torch.testing.assert_close(got, want)


def test_exclude_self_errors():
    q, k = qk(L=4, S=5)
    with pytest.raises(ValueError, match="L=4 queries and S=5 keys"):
        geoattn.attention(q, k, k, exclude_self=True)
    with pytest.raises(ValueError, match="L=4 queries and S=5 keys"):
        geoattn.energy(q, k, exclude_self=True)
    with pytest.raises(ValueError, match="attn_mask of shape"):
        geoattn.energy(q, k, attn_mask=torch.ones(3, 5, dtype=torch.bool))


def small(geometry, **kw):
    return TransformerConfig(vocab_size=11, d_model=16, n_heads=2, n_layers=3, max_len=12, num_classes=2,
                             geometry=geometry, **kw)


def test_trace_euclidean_layer0_by_hand():
    torch.manual_seed(0)
    clf = EncoderClassifier(small("euclidean"))
    x = torch.randint(0, 11, (2, 6))
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    tr = geoattn.trace(clf, x, pad)
    assert clf.training  # mode restored
    assert len(tr.hidden) == 4 and len(tr.energies) == len(tr.weights) == 3
    torch.testing.assert_close(tr.mean_energy(), torch.stack([e.mean() for e in tr.energies]))
    clf.eval()
    torch.testing.assert_close(clf.encoder.ln_f(tr.hidden[-1]), clf.encoder(x, pad))
    blk = clf.encoder.blocks[0]
    h0 = clf.encoder.embed.tok(x) + clf.encoder.embed.pos.weight[:6]
    torch.testing.assert_close(tr.hidden[0], h0)
    q, k, _ = blk.attn.qkv_proj(blk.ln1(h0)).view(2, 6, 3, 2, 8).unbind(2)  # (B, T, H, D) each
    s = torch.einsum("bthd,bshd->bhts", q, k) / math.sqrt(8)
    s = s.masked_fill(pad[:, None, None, :], -math.inf)
    torch.testing.assert_close(tr.energies[0], torch.logsumexp(s, -1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(tr.weights[0], torch.softmax(s, -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("geometry", ["poincare", "sphere", ["lorentz", "euclidean", "metric"]])
def test_trace_decoder_and_seq2seq(geometry):
    torch.manual_seed(0)
    lm = DecoderLM(small(geometry, positional="rotary")).eval()
    x = torch.randint(0, 11, (2, 7))
    tr = geoattn.trace(lm, x)
    assert tr.geometries == ([geometry] * 3 if isinstance(geometry, str) else geometry)
    torch.testing.assert_close(lm.lm_head(lm.ln_f(tr.hidden[-1])), lm(x)[0])
    for w, e in zip(tr.weights, tr.energies):
        assert w.shape == (2, 2, 7, 7) and e.shape == (2, 2, 7) and torch.isfinite(e).all()
        assert (w.triu(1) == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 7))
    s2s = EncoderDecoder(small(geometry if isinstance(geometry, str) else "sphere"))
    assert len(geoattn.trace(s2s, x).hidden) == 4
    with pytest.raises(TypeError, match="backbone"):
        geoattn.trace(torch.nn.Linear(2, 2), x)


@pytest.mark.parametrize("name", list(GEOMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pair_scores_equal_scores_of_the_gathered_rows(name, dtype):
    """pair_scores lifts each point once; the scores and every gradient (points and geometry parameters) are those
    of scores() on the gathered queries and keys."""
    geom = GEOMS[name].to(dtype)
    g = torch.Generator().manual_seed(3)
    points = (0.8 * torch.randn(12, 3, generator=g, dtype=dtype)).requires_grad_()
    u = torch.randint(12, (9,), generator=g)
    keys = torch.randint(12, (9, 6), generator=g)
    keys[0] = u[0]                                                    # a key equal to its query: distance 0
    fast = geoattn.pair_scores(points, u, keys, geom)
    slow = geoattn.scores(points[u][:, None, None], points[keys][:, None], geom)[:, 0, 0]
    assert fast.shape == (9, 6) and fast.dtype == slow.dtype
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast, slow, **tol)
    weights = torch.randn(9, 6, generator=g, dtype=dtype)
    inputs = [points, *[p for p in geom.parameters() if p.requires_grad]]
    for a, b in zip(torch.autograd.grad((fast * weights).sum(), inputs, allow_unused=True),
                    torch.autograd.grad((slow * weights).sum(), inputs, allow_unused=True)):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **tol)
    geom.double()


def test_pair_scores_empty_and_bad_input():
    points = torch.randn(5, 3)
    assert geoattn.pair_scores(points, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4, dtype=torch.long),
                               "poincare").shape == (0, 4)
    assert geoattn.pair_scores(points, torch.tensor([1, 2]), torch.zeros(2, 0, dtype=torch.long)).shape == (2, 0)
    u, keys = torch.tensor([0, 1]), torch.tensor([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"\(N, E\)"):
        geoattn.pair_scores(points[None], u, keys)
    with pytest.raises(TypeError, match="int64"):
        geoattn.pair_scores(points, u.int(), keys)
    with pytest.raises(TypeError, match="key_index as a 2-D"):
        geoattn.pair_scores(points, u, keys[0])
    with pytest.raises(ValueError, match=r"outside \[0, 5\)"):
        geoattn.pair_scores(points, u, keys + 1)
    with pytest.raises(ValueError, match="one row of keys per query"):
        geoattn.pair_scores(points, u, keys[:1])
