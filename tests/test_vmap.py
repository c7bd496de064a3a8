"""torch.func: ``vmap`` (and ``grad``/``vjp`` through it) works on the dense and sdpa backends for every
geometry and equals a loop; ``auto`` picks a backend that supports it; the fused backends refuse it clearly;
the input checks still run (on the plain tensor under the transforms)."""
from __future__ import annotations

import pytest
import torch
from conftest import GEOMETRY_CASES
from torch.func import grad, vjp, vmap

import geoattn

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop because we have not yet implemented "
                                        "the batching rule:UserWarning")  # torch's own SDPA fallback under vmap
N, H, L, S, D = 3, 2, 5, 6, 4


def data(seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(N, 2, H, n, D, generator=g, dtype=dtype) for n in (L, S, S))
    return q, k, v


def cases() -> list:
    out = []
    for name, make in sorted(GEOMETRY_CASES.items()):
        for backend in ("dense", "sdpa") if make(D, H).affine else ("dense",):
            out.append(pytest.param(name, backend, id=f"{name}-{backend}"))
    return out


def loop(f, *args):
    return torch.stack([f(*(a[i] for a in args)) for i in range(N)])


@pytest.mark.parametrize("case, backend", cases())
@pytest.mark.parametrize("mask", ["none", "causal", "bool"])
def test_vmap_equals_a_loop_forward_and_gradients(case, backend, mask):
    geometry = GEOMETRY_CASES[case](D, H).double()
    allowed = torch.rand(L, S, generator=torch.Generator().manual_seed(1)) > 0.3
    kw = {"is_causal": True} if mask == "causal" else {"attn_mask": allowed} if mask == "bool" else {}

    def f(q, k, v):
        return geoattn.attention(q, k, v, geometry=geometry, backend=backend, **kw)

    q, k, v = data()
    torch.testing.assert_close(vmap(f)(q, k, v), loop(f, q, k, v))
    loss = lambda q, k, v: f(q, k, v).square().sum()  # noqa: E731
    grads = vmap(grad(loss, argnums=(0, 1, 2)))(q, k, v)  # per-sample gradients
    qs, ks, vs = (t.detach().requires_grad_() for t in (q, k, v))
    expected = torch.autograd.grad(sum(loss(qs[i], ks[i], vs[i]) for i in range(N)), [qs, ks, vs])
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours, theirs)
    out, pull = vjp(vmap(f), q, k, v)  # vjp of the vmapped call against autograd through the loop
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2), dtype=out.dtype)
    expected = torch.autograd.grad((loop(f, qs, ks, vs) * cot).sum(), [qs, ks, vs])
    for ours, theirs in zip(pull(cot), expected):
        torch.testing.assert_close(ours, theirs)


@pytest.fixture
def no_dense_limit(monkeypatch):
    """auto's "small score matrix → dense" row never applies: what auto does for large calls, on small ones."""
    monkeypatch.setattr(geoattn.backends.policy, "DENSE_MAX_SCORES", 0)
    geoattn.set_tiled_compile(False)
    yield
    geoattn.set_tiled_compile(True)


@pytest.mark.parametrize("geometry", geoattn.available_geometries())
def test_auto_under_vmap_picks_a_backend_that_supports_it(geometry, no_dense_limit):
    q, k, v = data(dtype=torch.float32)
    seen = []

    def f(q, k, v):
        seen.append(geoattn.explain_backend(q, k, v, geometry=geometry))
        return geoattn.attention(q, k, v, geometry=geometry)

    vmap(f)(q, k, v)
    expected = "sdpa" if geoattn.make_geometry(geometry, head_dim=D).affine else "dense"
    assert seen[0].startswith(f"{expected}:"), seen[0]
    if expected == "dense":
        assert "under a torch.func transform" in seen[0]


@pytest.mark.parametrize("backend", ["tiled", "flex"])
def test_fused_backends_refuse_torch_func_transforms(backend):
    q, k, v = data(dtype=torch.float32)
    attend = lambda q, k, v: geoattn.attention(q, k, v, geometry="poincare", backend=backend)  # noqa: E731
    with pytest.raises(ValueError, match=rf"backend '{backend}' cannot run this call: torch.func.vmap is not "
                                         rf"supported by the {backend} backend; use backend='dense'"):
        vmap(attend)(q, k, v)
    with pytest.raises(ValueError, match=rf"torch.func transforms \(grad, vjp, jacrev, ...\) are not supported by "
                                         rf"the {backend} backend; use backend='dense'"):
        grad(lambda q: attend(q, k[0], v[0]).sum())(q[0])


def test_grad_without_vmap_under_auto_runs_dense_and_equals_autograd(no_dense_limit):
    q, k, v = (t[0] for t in data(dtype=torch.float32))
    seen = []

    def loss(q):
        seen.append(geoattn.explain_backend(q, k, v, geometry="poincare"))
        return geoattn.attention(q, k, v, geometry="poincare").sum()

    ours = grad(loss)(q)
    assert seen[0].startswith("dense:") and "under a torch.func transform" in seen[0]
    qs = q.detach().requires_grad_()
    theirs, = torch.autograd.grad(loss(qs), qs)
    assert seen[1].split(":")[0] in ("native", "tiled")  # the same call outside torch.func: a fused backend
    torch.testing.assert_close(ours, theirs)


def test_input_checks_still_run_under_vmap():
    q, k, v = data(dtype=torch.float32)
    q[1, 0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"query contains 1 non-finite value\(s\)"):
        vmap(lambda q, k, v: geoattn.attention(q, k, v))(q, k, v)
    with pytest.raises(ValueError, match="query and key feature dims differ"):
        vmap(lambda q, k: geoattn.attention(q, k, k))(q, k[..., :3])
    bias = torch.zeros(N, L, S)
    bias[2, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="float attn_mask may hold finite values and -inf only"):
        vmap(lambda q, m: geoattn.attention(q, k[0], v[0], attn_mask=m))(q.nan_to_num(), bias)


def test_vmap_over_some_arguments_only():
    q, k, v = data()
    f = lambda q: geoattn.attention(q, k[0], v[0], geometry="lorentz", backend="dense")  # noqa: E731
    torch.testing.assert_close(vmap(f)(q), loop(f, q))
    f = lambda q, k, v: geoattn.attention(q, k, v, geometry="sphere")  # noqa: E731
    torch.testing.assert_close(vmap(f, in_dims=(1, 1, 1), out_dims=1)(q, k, v),
                               torch.stack([f(q[:, j], k[:, j], v[:, j]) for j in range(2)], dim=1))
