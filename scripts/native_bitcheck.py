"""Bit-identity check of the native kernel across a change: outputs and every gradient, torch.equal.

``python scripts/native_bitcheck.py save FILE`` (run from the reference checkout) writes every case's output
and gradients; ``python scripts/native_bitcheck.py compare FILE`` (from the changed checkout) recomputes them
and reports each case whose tensors differ in any bit. One thread, so the per-head reductions run in one order.
Cases: every native kind (κ-stereographic both signs and flat, Poincaré, sphere geodesic and cosine, Lorentz,
l2, the learned metric full and low-rank, the generic ``affine`` kind) × shapes (S ≠ L, E not a multiple of
16, L = 1, S > 512: several key chunks) × masks (none, causal, bool, float).
"""
from __future__ import annotations

import sys

import torch

import geoattn

H = 2


class AffineFormMetric(geoattn.Metric):
    """The learned metric through the generic ``affine`` kind (its ``affine_form`` terms computed in torch)."""

    native_kind = "affine"
    native_spec = geoattn.Geometry.native_spec


def geometries(E):
    return {
        "poincare": lambda: geoattn.Poincare(curvature=[-0.7, -1.3], temperature=[0.8, 1.5], num_heads=H,
                                             learnable=True),
        "stereo-pos": lambda: geoattn.Stereographic(curvature=0.4, temperature=1.2, learnable=True),
        "stereo-mixed": lambda: geoattn.Stereographic(curvature=[-0.5, 0.3], num_heads=H, learnable=True),
        "stereo-flat": lambda: geoattn.Stereographic(curvature=0.0),
        "sphere-geodesic": lambda: geoattn.Sphere(score="geodesic", curvature=2.0, temperature=0.5, learnable=True),
        "sphere-cosine": lambda: geoattn.Sphere(temperature=[0.7, 1.4], num_heads=H, learnable=True),
        "lorentz": lambda: geoattn.Lorentz(curvature=[-0.8, -1.6], temperature=[0.9, 1.2], num_heads=H,
                                           learnable=True),
        "metric-lowrank": lambda: geoattn.Metric(head_dim=E, rank=3, learnable=True),
        "metric-full": lambda: geoattn.Metric(head_dim=E, temperature=[1.0, 0.6], num_heads=H, learnable=True),
        "l2": lambda: geoattn.L2(temperature=[0.8, 1.3], num_heads=H, learnable=True),
        "affine": lambda: AffineFormMetric(head_dim=E, temperature=[1.0, 0.6], num_heads=H, learnable=True),
    }


SHAPES = [(2, 5, 7, 8), (1, 1, 9, 20), (2, 33, 33, 16), (1, 40, 600, 12), (2, 17, 3, 5), (1, 64, 64, 32)]  # B L S E
MASKS = ["none", "causal", "bool", "float"]


def case(name, shape, mask_kind, seed):
    B, L, S, E = shape
    torch.manual_seed(seed)
    geom = geometries(E)[name]().float()
    scale = 3.0 if name in ("poincare", "lorentz", "stereo-mixed") else 1.0  # some clipped tokens
    q = (torch.randn(B, H, L, E) * scale).requires_grad_()
    k = (torch.randn(B, H, S, E) * scale).requires_grad_()
    v = torch.randn(B, H, S, E + 3).requires_grad_()
    mask, causal = None, False
    if mask_kind == "causal":
        causal = True
    elif mask_kind == "bool":
        mask = torch.rand(B, 1, L, S) > 0.3
    elif mask_kind == "float":
        mask = torch.randn(1, H, L, S)
    out = geoattn.attention(q, k, v, geometry=geom, attn_mask=mask, is_causal=causal, backend="native")
    loss = (out.double() * torch.linspace(-1, 1, out.shape[-1], dtype=torch.float64)).pow(2).sum()
    params = [p for p in geom.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [q, k, v, *params], allow_unused=True)
    return [out.detach(), *(g for g in grads if g is not None)]


def main(mode, path):
    torch.set_num_threads(1)
    results, seed = {}, 0
    for shape in SHAPES:
        for name in geometries(shape[-1]):
            for mask_kind in MASKS:
                seed += 1
                results[(name, shape, mask_kind)] = case(name, shape, mask_kind, seed)
    if mode == "save":
        torch.save(results, path)
        print(f"saved {len(results)} cases")
        return 0
    ref = torch.load(path)
    bad = [key for key, tensors in results.items()
           if len(tensors) != len(ref[key]) or not all(torch.equal(a, b) for a, b in zip(tensors, ref[key]))]
    tensors = sum(len(t) for t in results.values())
    print(f"{len(results) - len(bad)}/{len(results)} cases bit-identical ({tensors} tensors)")
    for key in bad:
        print("DIFFERS:", key)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
