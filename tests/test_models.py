"""The shared backbone: cache equality for every geometry, generation, padding, counts, training, errors."""
import pytest
import torch

import geoattn
from geoattn.models import (DecoderLM, Encoder, EncoderClassifier, EncoderDecoder, TransformerConfig,
                            count_parameters)

GEOMETRIES = geoattn.available_geometries()
V = 13


def cfg(**kw):
    base = dict(vocab_size=V, d_model=16, n_heads=2, n_layers=2, max_len=16, num_classes=3)
    base.update(kw)
    return TransformerConfig(**base)


def tokens(B=2, T=9, seed=0):
    return torch.randint(0, V, (B, T), generator=torch.Generator().manual_seed(seed))


def chunked(fn, seq, sizes):
    out, i = [], 0
    for n in sizes:
        out.append(fn(seq[:, i:i + n]))
        i += n
    return torch.cat(out, dim=1)


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_decoder_cache_equals_full_forward(geometry, positional):
    torch.manual_seed(0)
    lm = DecoderLM(cfg(geometry=geometry, positional=positional, geometry_params={"learnable": True})).eval()
    idx = tokens()
    full, _ = lm(idx)
    cache = lm.new_cache(2)
    inc = chunked(lambda t: lm(t, cache=cache)[0], idx, [4, 2, 1, 2])
    assert cache.length == 9
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)


VARIANTS = [("poincare", {"aggregation": "midpoint"}), ("lorentz", {"aggregation": "centroid"}),
            ("sphere", {"score": "geodesic", "aggregation": "mean"}),
            ("stereographic", {"curvature": 0.8, "aggregation": "midpoint"}), ("stereographic", {"curvature": 0.0}),
            ("metric", {"rank": 2})]


@pytest.mark.parametrize("geometry,params", VARIANTS,
                         ids=[f"{g}-{'-'.join(map(str, p.values()))}" for g, p in VARIANTS])
def test_cache_equals_full_forward_for_score_and_aggregation_variants(geometry, params):
    torch.manual_seed(0)
    c = cfg(geometry=geometry, positional="learned", geometry_params={**params, "learnable": True})
    lm, s2s = DecoderLM(c).eval(), EncoderDecoder(c).eval()
    idx, src = tokens(), tokens(T=5, seed=1)
    cache = lm.new_cache(2)
    torch.testing.assert_close(chunked(lambda t: lm(t, cache=cache)[0], idx, [4, 1, 4]), lm(idx)[0], atol=1e-5, rtol=0)
    memory, cache = s2s.encode(src), s2s.new_cache(2)
    torch.testing.assert_close(chunked(lambda t: s2s.decode(t, memory, cache=cache), idx, [2, 1, 6]), s2s(src, idx),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_decoder_cache_equals_full_forward_float64_post_norm(geometry):
    torch.manual_seed(1)
    lm = DecoderLM(cfg(geometry=geometry, positional="rotary", pre_norm=False)).double().eval()
    idx = tokens(T=7)
    cache = lm.new_cache(2)
    torch.testing.assert_close(chunked(lambda t: lm(t, cache=cache)[0], idx, [1, 1, 3, 2]), lm(idx)[0],
                               atol=1e-10, rtol=0)


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_encoder_decoder_cache_equals_full_forward(geometry):
    torch.manual_seed(0)
    model = EncoderDecoder(cfg(geometry=geometry, positional="rotary", n_decoder_layers=1)).eval()
    src, tgt = tokens(T=6, seed=1), tokens(T=7, seed=2)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    full = model(src, tgt, src_padding_mask=pad)
    memory = model.encode(src, pad)
    cache = model.new_cache(2)
    inc = chunked(lambda t: model.decode(t, memory, pad, cache=cache), tgt, [3, 1, 1, 2])
    torch.testing.assert_close(inc, full, atol=1e-5, rtol=0)
    assert all(kv.k.shape == (2, 2, 6, 8) for kv in cache.cross_kv)  # memory keys computed once, reused


def naive_generate(step_logits, idx, n, max_len):
    for _ in range(n):
        nxt = step_logits(idx[:, -max_len:])[:, -1].argmax(-1, keepdim=True)
        idx = torch.cat([idx, nxt], 1)
    return idx


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
def test_generate_greedy_and_sliding_window(positional):
    torch.manual_seed(0)
    lm = DecoderLM(cfg(geometry="poincare", positional=positional, max_len=8)).eval()
    idx = tokens(T=3)
    out = lm.generate(idx, 5)
    assert out.shape == (2, 8) and torch.equal(out[:, :3], idx)
    assert torch.equal(out, naive_generate(lambda t: lm(t)[0], idx, 5, 8))
    with pytest.raises(ValueError, match="sliding_window=True"):
        lm.generate(idx, 6)
    long = lm.generate(idx, 12, sliding_window=True)
    assert torch.equal(long, naive_generate(lambda t: lm(t)[0], idx, 12, 8))


def test_sampling_top_k_and_temperature():
    torch.manual_seed(0)
    lm = DecoderLM(cfg()).eval()
    idx = tokens(T=2)
    torch.manual_seed(5)
    assert torch.equal(lm.generate(idx, 6, do_sample=True, top_k=1), lm.generate(idx, 6))  # top-1 = greedy
    torch.manual_seed(5)
    a = lm.generate(idx, 6, do_sample=True, temperature=0.7, top_k=3)
    torch.manual_seed(5)
    assert torch.equal(a, lm.generate(idx, 6, do_sample=True, temperature=0.7, top_k=3))
    for t in range(2, 8):  # every sampled token is among the 3 most likely given its prefix
        top3 = lm(a[:, :t])[0][:, -1].topk(3).indices
        assert (top3 == a[:, t:t + 1]).any(-1).all()
    with pytest.raises(ValueError, match="temperature"):
        lm.generate(idx, 2, do_sample=True, temperature=0.0)


def test_encoder_decoder_generate_matches_naive_loop():
    torch.manual_seed(0)
    model = EncoderDecoder(cfg(geometry="sphere", max_len=6)).eval()
    src = tokens(T=5)
    out = model.generate(src, 5, bos_id=1)
    start = torch.ones(2, 1, dtype=torch.long)
    assert torch.equal(out, naive_generate(lambda t: model(src, t), start, 5, 6))
    with pytest.raises(ValueError, match="sliding_window"):
        model.generate(src, 6, bos_id=1)
    assert torch.equal(model.generate(src, 9, bos_id=1, sliding_window=True),
                       naive_generate(lambda t: model(src, t), start, 9, 6))


@pytest.mark.parametrize("geometry", ["euclidean", "poincare"])
def test_padding_is_ignored(geometry):
    torch.manual_seed(0)
    clf = EncoderClassifier(cfg(geometry=geometry, positional="sinusoidal")).eval()
    x = tokens(T=5)
    pad = torch.zeros(2, 8, dtype=torch.bool)
    pad[:, 5:] = True
    padded = torch.cat([x, tokens(T=3, seed=9)], 1)  # arbitrary tokens at the padding
    h = clf.encoder(padded, pad)
    torch.testing.assert_close(h[:, :5], clf.encoder(x), atol=1e-5, rtol=0)
    torch.testing.assert_close(clf(padded, pad), clf(x), atol=1e-5, rtol=0)
    cls = EncoderClassifier(cfg(geometry=geometry, pooling="cls")).eval()
    torch.testing.assert_close(cls(x), cls.head(cls.encoder(x)[:, 0]))


def test_parameter_counts_differ_only_by_geometry():
    ref = dict(d_model=32, n_heads=4, n_layers=2, max_len=32)
    counts = {g: {m.__name__: count_parameters(m(cfg(geometry=g, **ref)))
                  for m in (DecoderLM, EncoderClassifier, EncoderDecoder)} for g in GEOMETRIES}
    H, D, n_attn = 4, 8, {"DecoderLM": 2, "EncoderClassifier": 2, "EncoderDecoder": 2 + 2 * 2}
    per_layer = {"euclidean": 0, "poincare": 2 * H, "lorentz": 2 * H, "stereographic": 2 * H,
                 "sphere": 2 * H, "metric": H * D * D + H}
    for g, by_model in counts.items():
        for name, c in by_model.items():
            assert c["backbone"] == counts["euclidean"][name]["backbone"]
            if g in per_layer:
                assert c["geometry"] == per_layer[g] * n_attn[name]
            assert c["total"] == c["backbone"] + c["geometry"]


def train(model, step_loss, steps=25, lr=1e-2):
    opt = geoattn.riemannian_optimizer(model, lr=lr)
    losses = []
    for _ in range(steps):
        loss = step_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_short_training_decreases_loss(geometry):
    torch.manual_seed(0)
    small = cfg(geometry=geometry, n_layers=1, geometry_params={"learnable": True}, dropout=0.1)
    x, y = tokens(B=8, T=8, seed=3), tokens(B=8, T=8, seed=4)
    labels = torch.arange(8) % 3
    lm, clf, s2s = DecoderLM(small), EncoderClassifier(small), EncoderDecoder(small)
    runs = {
        "lm": train(lm, lambda: lm(x[:, :-1], x[:, 1:])[1]),
        "clf": train(clf, lambda: torch.nn.functional.cross_entropy(clf(x), labels)),
        "s2s": train(s2s, lambda: torch.nn.functional.cross_entropy(s2s(x, y[:, :-1]).reshape(-1, V),
                                                                    y[:, 1:].reshape(-1))),
    }
    for name, losses in runs.items():
        assert losses[-1] < 0.7 * losses[0], (name, losses[0], losses[-1])


def test_per_layer_geometries_and_params():
    c = cfg(geometry=["poincare", "sphere"], geometry_params={"learnable": True, "poincare": {"curvature": -0.5}})
    lm = DecoderLM(c)
    g0, g1 = (b.attn.geometry for b in lm.blocks)
    assert g0.name == "poincare" and g1.name == "sphere" and g0.curvature.shape == (2,)
    torch.testing.assert_close(g0.curvature.detach(), torch.tensor([-0.5, -0.5], dtype=torch.float64))
    assert g0.curvature_parameter.requires_grad and g1.curvature_parameter.requires_grad
    s2s = EncoderDecoder(cfg(geometry=["euclidean", "lorentz", "sphere"], n_decoder_layers=1))
    assert [b.attn.geometry.name for b in s2s.encoder.blocks] == ["euclidean", "lorentz"]
    assert s2s.blocks[0].attn.geometry.name == "sphere" and s2s.blocks[0].cross.geometry.name == "sphere"
    assert s2s.blocks[0].attn.geometry is not s2s.blocks[0].cross.geometry


def test_bad_inputs():
    with pytest.raises(ValueError, match="not divisible by n_heads"):
        cfg(d_model=10, n_heads=4)
    with pytest.raises(ValueError, match="positional"):
        cfg(positional="alibi")
    with pytest.raises(ValueError, match="unknown geometry"):
        cfg(geometry="hyperbolic")
    with pytest.raises(ValueError, match="lists 3 names"):
        DecoderLM(cfg(geometry=["euclidean"] * 3))
    with pytest.raises(TypeError, match="geometry_params"):
        DecoderLM(cfg(geometry="euclidean", geometry_params={"aggregation": "midpoint"}))
    with pytest.raises(ValueError, match="num_classes"):
        EncoderClassifier(cfg(num_classes=None))
    lm, other = DecoderLM(cfg()), DecoderLM(cfg())
    with pytest.raises(ValueError, match="another model"):
        lm(tokens(), cache=other.new_cache(2))
    with pytest.raises(ValueError, match="batch size 3"):
        lm(tokens(), cache=lm.new_cache(3))
    with pytest.raises(TypeError, match="KVCache"):
        lm(tokens(), cache={})
    cache = lm.new_cache(2)
    lm(tokens(T=10), cache=cache)
    with pytest.raises(ValueError, match="max_len is 16"):
        lm(tokens(T=7), cache=cache)
    with pytest.raises(ValueError, match="max_len is 16"):
        lm(tokens(T=17))
    enc = Encoder(cfg())
    with pytest.raises(ValueError, match="padding_mask has shape"):
        enc(tokens(), torch.zeros(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        enc(tokens(), torch.zeros(2, 9))
    with pytest.raises(TypeError, match="long"):
        enc(tokens().float())
    s2s = EncoderDecoder(cfg())
    with pytest.raises(ValueError, match="another model"):
        s2s.decode(tokens(T=2), torch.randn(2, 3, 16), cache=lm.new_cache(2))


@pytest.mark.gpu
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cache_equals_full_forward_cuda(geometry):
    torch.manual_seed(0)
    model = EncoderDecoder(cfg(geometry=geometry, positional="rotary")).cuda().eval()
    src, tgt = tokens(T=6).cuda(), tokens(T=7, seed=2).cuda()
    memory, cache = model.encode(src), model.new_cache(2)
    inc = chunked(lambda t: model.decode(t, memory, cache=cache), tgt, [3, 1, 1, 2])
    torch.testing.assert_close(inc, model(src, tgt), atol=1e-5, rtol=0)
    assert model.generate(src, 4, bos_id=1).shape == (2, 5)


# -- left-padded batches (#14 §4) ------------------------------------------------------------------
def left_padded(prompts, pad_id=0):
    """Prompts of different lengths → (idx, attention_mask) left-padded as Hugging Face does (1 = real token)."""
    T = max(len(p) for p in prompts)
    idx = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(prompts), T, dtype=torch.long)
    for i, p in enumerate(prompts):
        idx[i, T - len(p):], mask[i, T - len(p):] = p, 1
    return idx, mask


def prompts(lengths=(5, 2, 4), seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, V, (n,), generator=g) for n in lengths]


@pytest.mark.parametrize("positional", ["learned", "sinusoidal", "rotary"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_left_padded_batch_generates_what_each_prompt_generates_alone(geometry, positional):
    torch.manual_seed(0)
    lm = DecoderLM(cfg(geometry=geometry, positional=positional, max_len=12)).eval()
    ps = prompts()
    idx, mask = left_padded(ps, pad_id=7)
    T = idx.shape[1]
    for sliding, n in ((False, 7), (True, 12)):  # within max_len, and past it with the sliding window
        alone = [lm.generate(p[None], n, sliding_window=sliding)[0, len(p):] for p in ps]
        for use_cache in (True, False):
            out = lm.generate(idx, n, attention_mask=mask, use_cache=use_cache, sliding_window=sliding)
            assert out.shape == (3, T + n) and torch.equal(out[:, :T], idx)  # padding columns returned as given
            for i in range(3):
                assert torch.equal(out[i, T:], alone[i]), (i, sliding, use_cache)


@pytest.mark.parametrize("positional", ["learned", "rotary"])
def test_padded_forward_and_cache_equal_each_row_alone(positional):
    torch.manual_seed(0)
    lm = DecoderLM(cfg(geometry="poincare", positional=positional)).eval()
    ps = prompts((6, 3))
    idx, mask = left_padded(ps)
    logits, _ = lm(idx, attention_mask=mask)
    for i, p in enumerate(ps):
        torch.testing.assert_close(logits[i, -len(p):], lm(p[None])[0][0], atol=1e-5, rtol=0)
    cache = lm.new_cache(2)  # cached steps take the mask of every position seen so far, as in Hugging Face
    steps = [lm(idx[:, :4], cache=cache, attention_mask=mask[:, :4])[0]]
    steps.append(lm(idx[:, 4:], cache=cache, attention_mask=mask)[0])
    torch.testing.assert_close(torch.cat(steps, 1)[mask.bool()], logits[mask.bool()], atol=1e-5, rtol=0)
    bool_mask = lm(idx, attention_mask=mask.bool())[0]
    torch.testing.assert_close(bool_mask, logits)


def test_generate_without_cache_equals_cached_and_checks_before_any_forward():
    torch.manual_seed(0)
    lm = DecoderLM(cfg(geometry="sphere", max_len=8)).eval()
    idx = tokens(T=3)
    assert torch.equal(lm.generate(idx, 9, sliding_window=True, use_cache=False),
                       lm.generate(idx, 9, sliding_window=True))
    s2s = EncoderDecoder(cfg(geometry="lorentz", max_len=6)).eval()
    src = tokens(T=5)
    assert torch.equal(s2s.generate(src, 8, bos_id=1, sliding_window=True, use_cache=False),
                       s2s.generate(src, 8, bos_id=1, sliding_window=True))
    calls = []
    lm.register_forward_pre_hook(lambda m, args: calls.append(1))
    with pytest.raises(ValueError, match="token id 13"):
        lm.generate(torch.tensor([[1, 13]]), 2)
    with pytest.raises(ValueError, match="padding after a real token"):
        lm.generate(idx, 2, attention_mask=torch.tensor([[1, 0, 1], [1, 1, 1]]))
    assert not calls
