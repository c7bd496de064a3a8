"""geoattn.MultiheadAttention against torch.nn.MultiheadAttention (same weights) and per-head geometry."""
import geoopt
import pytest
import torch
from torch import nn

import geoattn

E, H = 16, 4


def pair(batch_first=False, **kw):
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(E, H, batch_first=batch_first, **kw).double().eval()
    ours = geoattn.MultiheadAttention(E, H, batch_first=batch_first, **kw).double().eval()
    ours.load_state_dict(ref.state_dict())
    return ref, ours


def inputs(B=3, L=5, S=7, kdim=E, vdim=E, batch_first=False):
    g = torch.Generator().manual_seed(1)
    shp = (lambda n, d: (B, n, d)) if batch_first else (lambda n, d: (n, B, d))
    return (torch.randn(*shp(L, E), generator=g, dtype=torch.float64),
            torch.randn(*shp(S, kdim), generator=g, dtype=torch.float64),
            torch.randn(*shp(S, vdim), generator=g, dtype=torch.float64))


def close(a, b):
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


B, L, S = 3, 5, 7
_kpm_bool = torch.zeros(B, S, dtype=torch.bool)
_kpm_bool[0, -2:] = True
_kpm_bool[2, :3] = True
_causal = torch.ones(L, S, dtype=torch.bool).triu(1)
_fmask = torch.randn(L, S, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
_mask3 = torch.rand(B * H, L, S, generator=torch.Generator().manual_seed(4)) > 0.7
_mask3[..., 0] = False  # every query keeps one key (PyTorch gives NaN for fully masked rows, geoattn zeros)

MASKS = {
    "none": {},
    "bool_attn": {"attn_mask": _causal},
    "float_attn": {"attn_mask": _fmask},
    "per_head_attn": {"attn_mask": _mask3},
    "kpm_bool": {"key_padding_mask": _kpm_bool},
    "kpm_float": {"key_padding_mask": torch.zeros(B, S, dtype=torch.float64).masked_fill(_kpm_bool, float("-inf"))},
    "both": {"attn_mask": _fmask, "key_padding_mask": _kpm_bool},
}


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("masks", list(MASKS))
@pytest.mark.parametrize("average", [True, False])
def test_euclidean_equals_torch(batch_first, masks, average):
    ref, ours = pair(batch_first)
    q, k, v = inputs(batch_first=batch_first)
    o1, w1 = ref(q, k, v, average_attn_weights=average, **MASKS[masks])
    o2, w2 = ours(q, k, v, average_attn_weights=average, **MASKS[masks])
    close(o2, o1)
    close(w2, w1)
    o3, w3 = ours(q, k, v, need_weights=False, **MASKS[masks])  # SDPA backend
    assert w3 is None
    close(o3, o1)


@pytest.mark.parametrize("kw", [dict(kdim=6, vdim=10), dict(add_bias_kv=True), dict(add_zero_attn=True),
                                dict(bias=False), dict(add_bias_kv=True, add_zero_attn=True, kdim=5, vdim=9)])
def test_euclidean_options_equal_torch(kw):
    ref, ours = pair(True, **kw)
    # the same keys as torch, plus the geometry tag that makes checkpoints of other geometries fail clearly
    assert set(ref.state_dict()) == set(ours.state_dict()) - {"geometry.geometry_tag"}
    q, k, v = inputs(kdim=kw.get("kdim", E), vdim=kw.get("vdim", E), batch_first=True)
    for m in ({}, {"key_padding_mask": _kpm_bool}, {"attn_mask": _fmask}):
        o1, w1 = ref(q, k, v, **m)
        o2, w2 = ours(q, k, v, **m)
        close(o2, o1)
        close(w2, w1)


def test_causal_self_attention_and_unbatched():
    ref, ours = pair(True)
    x = inputs(L=6, S=6, batch_first=True)[0]
    causal = nn.Transformer.generate_square_subsequent_mask(6, dtype=torch.float64)
    o1, _ = ref(x, x, x, attn_mask=causal, is_causal=True, need_weights=False)
    close(ours(x, x, x, attn_mask=causal, is_causal=True)[0], o1)
    close(ours(x, x, x, is_causal=True, need_weights=False)[0], o1)  # geoattn also accepts the bare hint
    close(ours(x, x, x, is_causal=True, key_padding_mask=torch.zeros(B, 6, dtype=torch.bool))[0], o1)
    o1, w1 = ref(x[0], x[0], x[0])
    o2, w2 = ours(x[0], x[0], x[0])
    close(o2, o1)
    close(w2, w1)


def test_gradients_equal_torch():
    ref, ours = pair(False)
    q, k, v = inputs()
    ref(q, k, v, key_padding_mask=_kpm_bool)[0].square().sum().backward()
    ours(q, k, v, key_padding_mask=_kpm_bool, need_weights=False)[0].square().sum().backward()
    mine = dict(ours.named_parameters())
    for n, p1 in ref.named_parameters():
        close(mine[n].grad, p1.grad)


def test_state_dict_from_torch_into_curved_geometry():
    ref = nn.MultiheadAttention(E, H)
    ours = geoattn.MultiheadAttention(E, H, geometry="poincare", curvature=[-0.5, -1.0, -1.5, -2.0], learnable=True)
    before = ours.geometry.curvature.detach().clone()
    ours.load_state_dict(ref.state_dict())  # strict: the geometry keys are filled from the layer itself
    for n, p in ref.state_dict().items():
        assert torch.equal(ours.state_dict()[n], p)
    torch.testing.assert_close(ours.geometry.curvature.detach(), before)
    with pytest.raises(RuntimeError, match="Unexpected"):
        ours.load_state_dict({**ref.state_dict(), "extra": torch.zeros(1)})


@pytest.mark.parametrize("name,params", [("poincare", dict(curvature=[-0.3, -1.0, -2.0, -4.0])),
                                         ("sphere", dict(score="geodesic", temperature=[0.2, 0.5, 1.0, 2.0])),
                                         ("lorentz", dict(curvature=[-0.5, -1.0, -1.5, -3.0]))])
def test_per_head_geometry_equals_one_head_at_a_time(name, params):
    """Head h of the layer equals geoattn.attention with a single-head geometry holding parameter h."""
    torch.manual_seed(0)
    layer = geoattn.MultiheadAttention(E, H, geometry=name, batch_first=True, **params).double()
    q, k, v = inputs(batch_first=True)
    out, w = layer(q, k, v, average_attn_weights=False)
    qh, kh, vh = (t.view(B, t.shape[1], H, E // H).transpose(1, 2) for t in layer._project(q, k, v))
    heads = []
    for h in range(H):
        one = {key: val[h] for key, val in params.items() if isinstance(val, list)}
        rest = {key: val for key, val in params.items() if not isinstance(val, list)}
        g = geoattn.make_geometry(name, **one, **rest)
        o, wh = geoattn.attention(qh[:, h], kh[:, h], vh[:, h], geometry=g, return_weights=True)
        close(w[:, h], wh)
        heads.append(o)
    expect = layer.out_proj(torch.stack(heads, 1).transpose(1, 2).reshape(B, -1, E))
    close(out, expect)


def test_bad_inputs():
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        geoattn.MultiheadAttention(10, 4)
    layer = geoattn.MultiheadAttention(E, H, kdim=6, vdim=8, batch_first=True)
    q, k, v = torch.randn(2, 3, E), torch.randn(2, 4, 6), torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="kdim=6"):
        layer(q, torch.randn(2, 4, 7), v)
    with pytest.raises(ValueError, match="vdim=8"):
        layer(q, k, torch.randn(2, 4, E))
    with pytest.raises(ValueError, match="same length"):
        layer(q, k, torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match="batch sizes"):
        layer(q, torch.randn(3, 4, 6), torch.randn(3, 4, 8))
    with pytest.raises(ValueError, match="attn_mask has shape"):
        layer(q, k, v, attn_mask=torch.zeros(4, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="key_padding_mask has shape"):
        layer(q, k, v, key_padding_mask=torch.zeros(2, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        layer(q, k, v, key_padding_mask=torch.zeros(2, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="unknown geometry"):
        geoattn.MultiheadAttention(E, H, geometry="hyperbolic")
    with pytest.raises(ValueError, match="4 values but the geometry has num_heads=2"):
        geoattn.MultiheadAttention(E, 2, geometry="poincare", curvature=[-1.0] * 4)


def test_riemannian_optimizer_trains_geometry_and_keeps_manifold_params_on_manifold():
    torch.manual_seed(0)
    ball = geoopt.PoincareBall()

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.points = geoopt.ManifoldParameter(ball.expmap0(torch.randn(6, E) * 0.5), manifold=ball)
            self.attn = geoattn.MultiheadAttention(E, H, geometry="poincare", learnable=True, batch_first=True)

        def forward(self, x):
            kv = ball.logmap0(self.points).expand(x.shape[0], -1, -1)
            return self.attn(x, kv, kv, need_weights=False)[0]

    model = Model()
    opt = geoattn.riemannian_optimizer(model, lr=0.05, geometry_lr=0.1)
    assert isinstance(opt, geoopt.optim.RiemannianAdam) and [g["lr"] for g in opt.param_groups] == [0.05, 0.1]
    x, y = torch.randn(4, 3, E), torch.randn(4, 3, E)
    kappa0 = model.attn.geometry.curvature.detach().clone()
    losses = []
    for _ in range(30):
        loss = (model(x) - y).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
    assert not torch.allclose(model.attn.geometry.curvature, kappa0)  # the curvature was learned
    assert (model.points.norm(dim=-1) < 1).all()                     # the points stayed in the ball
    torch.testing.assert_close(ball.projx(model.points.detach()), model.points.detach())


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors")
def test_inside_torch_transformer_encoder_layer_in_eval():
    """PyTorch's fused encoder fast path (eval, no grad) must not bypass the geometry."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(E, H, dim_feedforward=32, dropout=0.0, batch_first=True)
    layer.self_attn = geoattn.MultiheadAttention(E, H, geometry="poincare", batch_first=True)
    x = torch.randn(2, 5, E)
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[1, 3:] = True
    train_out = layer(x, src_key_padding_mask=pad)
    layer.eval()
    with torch.no_grad():
        eval_out = layer(x, src_key_padding_mask=pad)
    close(eval_out[~pad], train_out[~pad])
    h = layer.norm1(x + layer.self_attn(x, x, x, key_padding_mask=pad, need_weights=False)[0])
    close(eval_out[~pad], layer.norm2(h + layer.linear2(torch.relu(layer.linear1(h))))[~pad])
    enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=True).eval()
    with torch.no_grad(), pytest.raises(ValueError, match="enable_nested_tensor=False"):
        enc(x, src_key_padding_mask=pad)
