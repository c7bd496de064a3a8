"""The bad-input matrix across the public API beyond ``attention`` (see test_bad_input.py for that):
layers, models, generation, caches, energy, swap, the Hugging Face hook. Each case asserts the
exception type and that the message names the problem *and* the fix."""
from __future__ import annotations

import pytest
import torch

import geoattn
from geoattn.models import DecoderLM, EncoderClassifier, EncoderDecoder, TransformerConfig

CFG = dict(vocab_size=11, d_model=8, n_heads=2, n_layers=1, max_len=6)


def lm(**kw):
    return DecoderLM(TransformerConfig(**{**CFG, **kw}))


def tokens(B=2, T=4):
    return torch.randint(0, 11, (B, T))


MHA = lambda **kw: geoattn.MultiheadAttention(8, 2, batch_first=True, **kw)  # noqa: E731
X = torch.randn(2, 5, 8)

CASES = {
    "mha embed_dim % heads": (lambda: geoattn.MultiheadAttention(10, 3), ValueError,
                              r"embed_dim=10 is not divisible by num_heads=3"),
    "mha key dim": (lambda: MHA()(X, torch.randn(2, 5, 6), torch.randn(2, 5, 8)), ValueError,
                    r"key has 6 features but the layer expects .*=8"),
    "mha value length": (lambda: MHA()(X, X, torch.randn(2, 4, 8)), ValueError,
                         r"key and value must have the same length and batch size"),
    "mha padding mask shape": (lambda: MHA()(X, X, X, key_padding_mask=torch.zeros(2, 4, dtype=torch.bool)),
                               ValueError, r"key_padding_mask has shape \(2, 4\) but must be one of"),
    "mha attn_mask shape": (lambda: MHA()(X, X, X, attn_mask=torch.zeros(4, 4, dtype=torch.bool)), ValueError,
                            r"attn_mask has shape \(4, 4\) but must be one of"),
    "mha padding mask device": (lambda: MHA()(X, X, X, key_padding_mask=torch.zeros(2, 5, dtype=torch.bool,
                                                                                   device="meta")),
                                ValueError, r"key_padding_mask is on meta but the inputs are on cpu; move it with "
                                            r"key_padding_mask.to\(query.device\)"),
    "mha geometry params with instance": (
        lambda: geoattn.MultiheadAttention(8, 2, geometry=geoattn.Poincare(), curvature=-2.0),
        ValueError, r"geometry parameters \['curvature'\] were given with a Geometry instance"),
    "config heads": (lambda: TransformerConfig(vocab_size=5, d_model=10, n_heads=3), ValueError,
                     r"d_model=10 is not divisible by n_heads=3"),
    "config positional": (lambda: TransformerConfig(vocab_size=5, positional="alibi"), ValueError,
                          r"unknown positional 'alibi'; choose one of"),
    "config geometry": (lambda: TransformerConfig(vocab_size=5, geometry="hyperbolic"), ValueError,
                        r"unknown geometry 'hyperbolic' in TransformerConfig.geometry; available"),
    "config geometry list length": (lambda: lm(n_layers=2, geometry=["poincare"]), ValueError,
                                    r"geometry lists 1 names but the .* needs 2; give one name per layer"),
    "config geometry params": (lambda: lm(geometry="poincare", geometry_params={"radius": 2.0}), TypeError,
                               r"geometry 'poincare' does not accept geometry_params \['radius'\]"),
    "classifier classes": (lambda: EncoderClassifier(TransformerConfig(**CFG)), ValueError,
                           r"EncoderClassifier needs TransformerConfig.num_classes as a positive int"),
    "tokens dtype": (lambda: lm()(torch.rand(2, 4)), TypeError, r"must be an integer \(long\) tensor of token ids"),
    "tokens shape": (lambda: lm()(torch.tensor([1, 2, 3])), ValueError, r"must have shape \(B, T\).*add a batch dim"),
    "padding mask": (lambda: EncoderClassifier(TransformerConfig(**CFG, num_classes=2))(
                         tokens(), torch.zeros(2, 3, dtype=torch.bool)),
                     ValueError, r"padding_mask has shape \(2, 3\) but the tokens are \(B, T\) = \(2, 4\)"),
    "past max_len": (lambda: lm().generate(tokens(), 5), ValueError,
                     r"generation needs 9 positions but max_len is 6; generate fewer tokens, "
                     r".*or pass sliding_window=True"),
    "bad temperature": (lambda: lm().generate(tokens(), 1, temperature=0.0, do_sample=True), ValueError,
                        r"temperature must be > 0"),
    "cache of another model": (lambda: lm()(tokens(), cache=lm().new_cache(2)), ValueError,
                               r"KVCache was made by another model.*new_cache"),
    "cache batch size": (lambda: (lambda m: m(tokens(), cache=m.new_cache(3)))(lm()), ValueError,
                         r"made for batch size 3 but the input has batch size 2; "
                         r"make a new one with model.new_cache\(2\)"),
    "swap no attention": (lambda: geoattn.swap(torch.nn.Linear(3, 3), "poincare"), ValueError,
                          r"found no attention to swap in Linear: it looks for torch.nn.MultiheadAttention"),
    "swap not a module": (lambda: geoattn.swap("bert", "poincare"), TypeError, r"expects a torch.nn.Module"),
    "swap unknown geometry": (lambda: geoattn.swap(torch.nn.MultiheadAttention(8, 2), "hyperbolic"), ValueError,
                              r"unknown geometry 'hyperbolic'; available geometries"),
    "swap metric head_dim": (lambda: geoattn.swap(torch.nn.TransformerEncoderLayer(8, 2), "metric", head_dim=3),
                             ValueError,
                             r"built for head_dim=3 but the model's heads have 4 features.*head_dim=4"),
    "optimizer frozen model": (lambda: geoattn.riemannian_optimizer(torch.nn.Linear(2, 2).requires_grad_(False)),
                               ValueError, r"no trainable parameters"),
    "generate token id >= vocab": (lambda: lm().generate(torch.tensor([[3, 11, 2]]), 1), ValueError,
                                   r"idx holds the token id 11, outside the vocabulary \[0, 11\) "
                                   r"\(TransformerConfig.vocab_size=11\); map such tokens to an id in range"),
    "generate negative token id": (lambda: lm().generate(torch.tensor([[3, -1]]), 1), ValueError,
                                   r"idx holds the token id -1, outside the vocabulary \[0, 11\)"),
    "forward token id >= vocab": (lambda: lm()(torch.tensor([[12]])), ValueError, r"token id 12, outside the vocab"),
    "encoder token id": (lambda: EncoderClassifier(TransformerConfig(**CFG, num_classes=2))(torch.tensor([[-3, 1]])),
                         ValueError, r"tokens holds the token id -3"),
    "seq2seq src token id": (lambda: EncoderDecoder(TransformerConfig(**CFG)).generate(torch.tensor([[11]]), 2, 1),
                             ValueError, r"src holds the token id 11"),
    "seq2seq bos id": (lambda: EncoderDecoder(TransformerConfig(**CFG)).generate(tokens(), 2, bos_id=11), ValueError,
                       r"bos_id must be a token id \(an int\) in \[0, 11\)"),
    "generate mask right-padded": (lambda: lm().generate(tokens(), 1, attention_mask=torch.tensor([[1, 1, 1, 0],
                                                                                                  [1, 1, 1, 1]])),
                                   ValueError, r"attention_mask row 0 has padding after a real token.*pad prompts on "
                                               r"the left"),
    "generate mask all padding": (lambda: lm().generate(tokens(), 1, attention_mask=torch.tensor([[0, 0, 0, 0],
                                                                                                 [1, 1, 1, 1]])),
                                  ValueError, r"attention_mask row 0 is all padding"),
    "mask shape": (lambda: lm()(tokens(), attention_mask=torch.ones(2, 3)), TypeError,
                   r"attention_mask must be a bool or integer tensor"),
    "mask length": (lambda: lm()(tokens(), attention_mask=torch.ones(2, 3, dtype=torch.long)), ValueError,
                    r"attention_mask has shape \(2, 3\) but must be \(B, positions\) = \(2, 4\)"),
    "mask values": (lambda: lm()(tokens(), attention_mask=torch.full((2, 4), 2)), ValueError,
                    r"attention_mask may hold 0 \(padding\) and 1 \(real token\) only"),
    "load another geometry": (lambda: lm(geometry="lorentz").load_state_dict(lm(geometry="sphere").state_dict()),
                              ValueError, r"made with geometry 'sphere\|score=cosine\|aggregation=linear' "
                                          r"but this module uses 'lorentz"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_names_problem_and_fix(case):
    call, error, pattern = CASES[case]
    with pytest.raises(error, match=pattern):
        call()


def test_the_matrix_is_large():
    from test_bad_input import test_bad_input_is_named_with_its_fix as functional

    functional_cases = len(functional.pytestmark[0].args[1])
    assert len(CASES) + functional_cases >= 50


def test_swap_of_a_bare_multihead_attention_returns_the_converted_layer():
    torch.manual_seed(0)
    old = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    new = geoattn.swap(old, "euclidean")
    assert isinstance(new, geoattn.MultiheadAttention)
    torch.testing.assert_close(new(X, X, X)[0], old(X, X, X)[0], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match=r"built for head_dim=3 but the model's heads have 4 features.*head_dim=4"):
        geoattn.swap(old, "metric", head_dim=3)
