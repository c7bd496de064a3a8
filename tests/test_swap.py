"""geoattn.swap on plain PyTorch models: nn.MultiheadAttention, nn.TransformerEncoder/Decoder, nn.Transformer.

Reference: the unswapped model (euclidean must reproduce it, including PyTorch's fused inference fast
paths), and the swapped model in its slow training path (the fast paths must not bypass the geometry).
"""
import copy

import pytest
import torch
from torch import nn

import geoattn

E, H = 16, 4
TOL = dict(atol=1e-5, rtol=1e-5)


def encoder(seed=0, layers=2):
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(E, H, 32, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=True).eval()


def padded_batch(B=3, L=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, L, E, generator=g)
    pad = torch.zeros(B, L, dtype=torch.bool)  # True = padding (PyTorch's key_padding_mask convention)
    pad[0, 4:] = True
    pad[2, 2:] = True
    return x, pad


def test_swap_replaces_every_multihead_attention_and_keeps_weights():
    model = encoder()
    before = copy.deepcopy(model.state_dict())
    assert geoattn.swap(model, "poincare", curvature=-0.5) is model
    attns = [layer.self_attn for layer in model.layers]
    assert all(type(a) is geoattn.MultiheadAttention for a in attns)
    assert attns[0].geometry is not attns[1].geometry  # parameters per layer
    torch.testing.assert_close(attns[0].geometry.curvature, torch.full((H,), -0.5, dtype=torch.float64))
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not model.layers[0].training


FAST_PATH_TOL = dict(atol=2e-6, rtol=0)  # the tolerance stated in swap's docstring and the README (float32)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")  # the reference's fast path
@pytest.mark.parametrize("size", [(E, H, 2, 3, 6), (256, 8, 6, 4, 128)], ids=["small", "d256-6layers-L128"])
def test_encoder_euclidean_equals_original_through_its_fast_paths(size):
    """In eval under no_grad PyTorch takes its nested-tensor and fused-layer fast paths, which geoattn keeps
    the swapped layers off (they would bypass the geometry): outputs agree to the stated 2e-6 at real
    tokens (PyTorch's nested path writes zeros at padded positions, geoattn computes them)."""
    d, heads, layers, B, L = size
    torch.manual_seed(0)
    ref = nn.TransformerEncoder(nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, batch_first=True), layers,
                                enable_nested_tensor=True).eval()
    model = geoattn.swap(copy.deepcopy(ref), "euclidean")
    x = torch.randn(B, L, d, generator=torch.Generator().manual_seed(1))
    pad = torch.zeros(B, L, dtype=torch.bool)
    pad[0, 2 * L // 3:], pad[-1, L // 3:] = True, True
    with torch.no_grad():
        expected, got = ref(x, src_key_padding_mask=pad), model(x, src_key_padding_mask=pad)
        torch.testing.assert_close(got[~pad], expected[~pad], **FAST_PATH_TOL)
        torch.testing.assert_close(model(x), ref(x), **FAST_PATH_TOL)  # no padding: the fused layer path
    # where PyTorch runs its ordinary path (autograd on), the swapped model computes the same numbers exactly
    torch.testing.assert_close(model(x, src_key_padding_mask=pad), ref(x, src_key_padding_mask=pad), atol=0, rtol=0)


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_fast_paths_do_not_bypass_the_geometry():
    x, pad = padded_batch()
    ref, model = encoder(), geoattn.swap(encoder(), "poincare")
    with torch.no_grad():
        fast = model(x, src_key_padding_mask=pad)  # where PyTorch would take its fast paths
        plain = ref(x, src_key_padding_mask=pad)
    model.train()  # dropout is 0: the training path computes the same function, without fast paths
    slow = model(x, src_key_padding_mask=pad)
    torch.testing.assert_close(fast[~pad], slow[~pad].detach(), **TOL)
    assert (fast[~pad] - plain[~pad]).abs().max() > 1e-2


def test_transformer_euclidean_equals_original_with_masks():
    torch.manual_seed(0)
    ref = nn.Transformer(E, H, 2, 2, 32, dropout=0.0, batch_first=True).eval()
    model = geoattn.swap(copy.deepcopy(ref), "euclidean")
    assert sum(isinstance(m, geoattn.MultiheadAttention) for m in model.modules()) == 2 + 2 * 2
    src, src_pad = padded_batch()
    tgt = torch.randn(3, 5, E, generator=torch.Generator().manual_seed(2))
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    kw = dict(tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad)
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt, **kw), ref(src, tgt, **kw), **TOL)


def test_decoder_seq_first_euclidean_equals_original():
    torch.manual_seed(0)
    layer = nn.TransformerDecoderLayer(E, H, 32, dropout=0.0, norm_first=True)
    ref = nn.TransformerDecoder(layer, 2).eval()
    model = geoattn.swap(copy.deepcopy(ref), "euclidean")
    g = torch.Generator().manual_seed(3)
    tgt, memory = torch.randn(5, 2, E, generator=g), torch.randn(7, 2, E, generator=g)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    torch.testing.assert_close(model(tgt, memory, tgt_mask=causal), ref(tgt, memory, tgt_mask=causal), **TOL)


def test_bare_multihead_attention_with_kdim_vdim_and_bias_kv():
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, kdim=12, vdim=10, add_bias_kv=True, add_zero_attn=True).double().eval()
    holder = nn.Sequential(copy.deepcopy(ref))
    geoattn.swap(holder, "euclidean")
    ours = holder[0]
    assert isinstance(ours, geoattn.MultiheadAttention) and ours.in_proj_weight is None
    assert ours.q_proj_weight.dtype == torch.float64
    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(5, 2, E, generator=g), torch.randn(7, 2, 12, generator=g), torch.randn(7, 2, 10, generator=g)
    q, k, v = q.double(), k.double(), v.double()
    out, w = ours(q, k, v)
    out_ref, w_ref = ref(q, k, v)
    torch.testing.assert_close(out, out_ref, **TOL)
    torch.testing.assert_close(w, w_ref, **TOL)


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "sphere", "metric", "stereographic"])
def test_other_geometries_train(geometry):
    torch.manual_seed(0)
    model = geoattn.swap(nn.Transformer(E, H, 1, 1, 32, dropout=0.1, batch_first=True), geometry, learnable=True)
    src, pad = padded_batch()
    tgt = torch.randn(3, 4, E)
    out = model(src, tgt, tgt_mask=nn.Transformer.generate_square_subsequent_mask(4), tgt_is_causal=True,
                src_key_padding_mask=pad, memory_key_padding_mask=pad)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    geom_grads = [p.grad for m in model.modules() if isinstance(m, geoattn.Geometry) for p in m.parameters()
                  if p.grad is not None]
    assert geom_grads and all(torch.isfinite(g).all() for g in geom_grads)


def test_geometry_instance_is_copied_per_layer():
    model = geoattn.swap(encoder(), geoattn.Poincare(curvature=-2.0, num_heads=H, learnable=True))
    g0, g1 = model.layers[0].self_attn.geometry, model.layers[1].self_attn.geometry
    assert g0 is not g1 and g0.curvature_parameter is not g1.curvature_parameter
    torch.testing.assert_close(g1.curvature, torch.full((H,), -2.0, dtype=torch.float64))


def test_shared_module_is_replaced_once():
    attn = nn.MultiheadAttention(E, H)
    holder = nn.ModuleDict({"a": attn, "b": attn})
    geoattn.swap(holder, "sphere")
    assert holder["a"] is holder["b"] and isinstance(holder["a"], geoattn.MultiheadAttention)


# -- errors -------------------------------------------------------------------------------------
def test_model_without_attention_is_an_error():
    with pytest.raises(ValueError, match="found no attention.*MultiheadAttention.*AttentionInterface"):
        geoattn.swap(nn.Sequential(nn.Linear(4, 4), nn.ReLU()), "poincare")


def test_not_a_module_is_an_error():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        geoattn.swap({"attn": nn.MultiheadAttention(E, H)}, "poincare")


def test_unknown_geometry_leaves_the_model_alone():
    model = encoder()
    with pytest.raises(ValueError, match="unknown geometry 'hyperbolic'.*poincare"):
        geoattn.swap(model, "hyperbolic")
    assert isinstance(model.layers[0].self_attn, nn.MultiheadAttention)


def test_geometry_the_model_cannot_host_is_an_error():
    with pytest.raises(ValueError, match="num_heads"):
        geoattn.swap(encoder(), geoattn.Sphere(num_heads=3))
    with pytest.raises(ValueError, match="head_dim"):
        geoattn.swap(encoder(), "metric", head_dim=E)  # heads have E // H features
    with pytest.raises(ValueError, match="curvature"):
        geoattn.swap(encoder(), "poincare", curvature=1.0)


def test_failed_swap_changes_nothing():
    model = nn.ModuleList([nn.MultiheadAttention(E, H), nn.MultiheadAttention(E, 2)])
    with pytest.raises(ValueError, match="num_heads"):
        geoattn.swap(model, geoattn.Poincare(num_heads=H))
    assert all(type(m) is nn.MultiheadAttention for m in model)


@pytest.mark.gpu
def test_cuda_transformer_swap_keeps_device_and_equals_original():
    torch.manual_seed(0)
    ref = nn.Transformer(E, H, 1, 1, 32, dropout=0.0, batch_first=True).cuda().eval()
    model = geoattn.swap(copy.deepcopy(ref), "euclidean")
    src, tgt = torch.randn(2, 6, E, device="cuda"), torch.randn(2, 5, E, device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(model(src, tgt), ref(src, tgt), atol=1e-4, rtol=1e-4)
    geoattn.swap(model, "poincare", learnable=True)
    assert model.encoder.layers[0].self_attn.geometry.curvature_parameter.device.type == "cuda"
    model(src, tgt).square().mean().backward()


def test_swapping_again_replaces_the_geometry():
    model = geoattn.swap(encoder(), "poincare")
    layer = model.layers[0].self_attn
    geoattn.swap(model, "sphere", temperature=0.5)
    assert model.layers[0].self_attn is layer and layer.geometry.name == "sphere"
    torch.testing.assert_close(layer.geometry.temperature, torch.full((H,), 0.5, dtype=torch.float64))


def test_geoattn_backbone_gets_the_new_geometry():
    """A backbone built euclidean and swapped = the same backbone built on the geometry (same weights)."""
    from geoattn.models import DecoderLM, TransformerConfig

    sizes = dict(vocab_size=31, d_model=E, n_heads=H, n_layers=2, max_len=16)
    model = geoattn.swap(DecoderLM(TransformerConfig(**sizes)), "lorentz", curvature=-0.5, temperature=0.1)
    ref = DecoderLM(TransformerConfig(**sizes, geometry="lorentz",
                                      geometry_params={"curvature": -0.5, "temperature": 0.1}))
    weights = {k: v for k, v in ref.state_dict().items() if ".geometry." not in k}
    model.load_state_dict(weights, strict=False)
    geoms = [block.attn.geometry for block in model.blocks]
    assert all(isinstance(g, geoattn.Lorentz) for g in geoms) and geoms[0] is not geoms[1]
    idx = torch.randint(0, 31, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], ref(idx)[0], **TOL)
