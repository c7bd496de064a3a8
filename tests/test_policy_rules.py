"""``auto`` only picks a backend that accepts the call: for every row of the decision table, a call built to hit
that row runs on the backend it names, which accepts it, and gives the dense float64 answer."""
from __future__ import annotations

import copy

import pytest
import torch

import geoattn
from geoattn.backends import policy
from geoattn.call import prepare_call


@pytest.fixture(autouse=True)
def _small_tables(monkeypatch):
    geoattn.set_tiled_compile(False)
    monkeypatch.setattr(policy, "DENSE_MAX_SCORES", 64)  # "large" calls at test sizes (the rows read it per call)
    yield
    geoattn.set_tiled_compile(True)


def _qkv(dtype=torch.float32, L=6, device="cpu"):
    g = torch.Generator().manual_seed(0)
    return [torch.randn(1, 2, L, 8, generator=g, dtype=dtype).to(device).requires_grad_() for _ in range(3)]


def _learnable_bias(L=6):
    return (0.3 * torch.randn(1, 2, L, L, generator=torch.Generator().manual_seed(1))).requires_grad_()


# one call per row of policy.RULES, in order: (geometry, q/k/v, keyword arguments)
CASES = [
    ("lorentz", lambda: _qkv(), {}),                                     # native, affine score
    ("lorentz", lambda: _qkv(torch.float64), {}),                        # sdpa (native runs float32 only)
    ("poincare", lambda: _qkv(), {"return_weights": True}),             # dense: weights
    ("poincare", lambda: _qkv(), {"vmap": True}),                       # dense: under a torch.func transform
    ("poincare", lambda: _qkv(), {"dropout_p": 0.5}),                   # dense: dropout
    ("poincare", lambda: _qkv(), {}),                                    # native
    ("poincare", lambda: [t.detach()[..., :2, :].requires_grad_() for t in _qkv(torch.float64)], {}),  # dense: small
    ("poincare", lambda: _qkv(device="cuda"), {}),                       # flex: an accelerator
    ("poincare", lambda: _qkv(torch.float64), {}),                       # tiled
    ("poincare", lambda: _qkv(), {"attn_mask": _learnable_bias()}),     # dense: nothing fused accepts it
]


def test_every_rule_has_a_case():
    assert len(CASES) == len(policy.RULES)


def _outputs(geometry, q, k, v, backend, kwargs):
    kwargs = dict(kwargs)
    if kwargs.pop("vmap", False):
        out = torch.func.vmap(lambda a, b, c: geoattn.attention(a, b, c, geometry=geometry, backend=backend))(q, k, v)
    else:
        if kwargs.get("dropout_p"):
            torch.manual_seed(5)
        out = geoattn.attention(q, k, v, geometry=geometry, backend=backend, **kwargs)
    out = out[0] if isinstance(out, tuple) else out
    mask = kwargs.get("attn_mask")
    leaves = [q, k, v, *(p for p in geometry.parameters() if p.requires_grad), *([mask] if mask is not None else [])]
    return out, torch.autograd.grad(out.square().sum(), leaves, allow_unused=True)


@pytest.mark.parametrize("index", range(len(CASES)))
def test_auto_picks_a_backend_that_accepts_the_call(index):
    name, make, kwargs = CASES[index]
    if policy.RULES[index].backend == "flex" and not torch.cuda.is_available():
        pytest.skip("the flex row needs an accelerator")
    if policy.RULES[index].backend == "native":
        from geoattn.backends.native import load

        if isinstance(load(), str):
            pytest.skip(f"the native row needs the native kernel: {load()}")
    q, k, v = make()
    geometry = geoattn.Poincare(curvature=-0.7) if name == "poincare" else geoattn.Lorentz(curvature=-0.6)
    geometry = geometry.to(device=q.device, dtype=q.dtype)
    rule = policy.RULES[index]
    call_kwargs = {key: val for key, val in kwargs.items() if key != "vmap"}
    if kwargs.get("vmap"):
        seen = []

        def probe(a, b, c):
            seen.append(policy.choose(prepare_call(a, b, c, geometry, **call_kwargs)))
            return a

        torch.func.vmap(probe)(q, k, v)
        choice = seen[0]
    else:
        choice = policy.choose(prepare_call(q, k, v, geometry, **call_kwargs))
        explained = geoattn.explain_backend(q, k, v, geometry=geometry, **call_kwargs)
        assert explained.startswith(f"{rule.backend}: auto: {rule.reason}")
    assert (choice.backend, choice.reason) == (rule.backend, f"auto: {rule.reason}")
    out, grads = _outputs(geometry, q, k, v, "auto", kwargs)
    reference = copy.deepcopy(geometry).double()
    ref_kwargs = {key: (val.detach().double().requires_grad_() if torch.is_tensor(val) else val)
                  for key, val in kwargs.items()}
    ref_out, ref_grads = _outputs(reference, *(t.detach().cpu().double().requires_grad_() for t in (q, k, v)),
                                  "dense", ref_kwargs)
    assert (out.detach().cpu().double() - ref_out).abs().max().item() < 1e-4
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            assert (g.cpu().double() - r).abs().max().item() < 1e-4 * (r.abs().max().item() + 1)


def test_learnable_mask_at_an_ordinary_size_falls_back_to_dense(monkeypatch):
    """The report: B = 1, H = 2, L = 1500 with a relative-position bias that requires grad (B·H·L·S > 2²²):
    auto picked tiled, which refuses a learnable float mask, and explain_backend raised."""
    monkeypatch.setattr(policy, "DENSE_MAX_SCORES", 1 << 22)
    q = torch.randn(1, 2, 1500, 16)
    bias = torch.zeros(1, 2, 1500, 1500, requires_grad=True)
    assert geoattn.explain_backend(q, q, q, geometry="poincare", attn_mask=bias).startswith("dense: auto: no fused")
