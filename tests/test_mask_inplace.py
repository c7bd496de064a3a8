"""A mask changed in place between forward and backward: the fused backends read it again in their backward, so
autograd's version check must raise (as for any tensor a backward needs), never a gradient of another mask."""
from __future__ import annotations

import pytest
import torch

import geoattn


@pytest.fixture(autouse=True, scope="module")
def _eager_tiled():
    geoattn.set_tiled_compile(False)
    yield
    geoattn.set_tiled_compile(True)


def _inputs(kind: str):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 6, 8, generator=g).requires_grad_() for _ in range(3))
    mask = torch.rand(1, 1, 6, 6, generator=g) > 0.3 if kind == "bool" else torch.randn(1, 1, 6, 6, generator=g)
    return q, k, v, mask


@pytest.mark.parametrize("geometry", ["poincare", "lorentz", "sphere", "metric"])
@pytest.mark.parametrize("backend", ["native", "tiled"])
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_mask_changed_in_place_before_backward_raises(geometry, backend, kind):
    q, k, v, mask = _inputs(kind)
    out = geoattn.attention(q, k, v, geometry=geometry, attn_mask=mask, backend=backend)
    with torch.no_grad():
        if kind == "bool":
            mask.logical_not_()
            mask[..., 0] = True  # every row keeps a key
        else:
            mask.mul_(-30.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.square().sum().backward()


@pytest.mark.native
@pytest.mark.parametrize("kind", ["bool", "float"])
def test_unchanged_mask_gradients_match_dense(kind):
    """The saved mask costs nothing else: the native gradients with a mask still equal dense float64's."""
    q, k, v, mask = _inputs(kind)
    out = geoattn.attention(q, k, v, geometry="poincare", attn_mask=mask, backend="native")
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    qd, kd, vd = (t.detach().double().requires_grad_() for t in (q, k, v))
    md = mask if kind == "bool" else mask.double()
    ref = geoattn.attention(qd, kd, vd, geometry="poincare", attn_mask=md, backend="dense")
    ref_grads = torch.autograd.grad(ref.square().sum(), (qd, kd, vd))
    for g, r in zip(grads, ref_grads):
        assert (g.double() - r).abs().max().item() < 1e-4 * (r.abs().max().item() + 1)
