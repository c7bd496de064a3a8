"""A short demo: every geometry through ``geoattn.attention``, checked against the dense float64
reference and timed against ``F.scaled_dot_product_attention`` in the same process.

Run: ``python -m geoattn.demo [--length 512] [--repeats 7]``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import geoattn


def _median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=512)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    shape = (args.batch, args.heads, args.length, args.dim)
    q, k, v = (torch.randn(shape) for _ in range(3))
    sdpa = _median_time(lambda: F.scaled_dot_product_attention(q, k, v), args.repeats)
    print(f"geoattn {geoattn.__version__} demo: B, H, L, D = {shape}, float32, CPU; median of {args.repeats} runs")
    print(f"{'geometry':<15}{'backend':<10}{'max |out - dense float64|':>28}{'time / SDPA':>14}")
    for name in geoattn.available_geometries():
        geometry = geoattn.make_geometry(name, head_dim=args.dim)
        with torch.no_grad():
            out = geoattn.attention(q, k, v, geometry=geometry)
            ref = geoattn.attention(q.double(), k.double(), v.double(), geometry=geometry, backend="dense")
            seconds = _median_time(lambda: geoattn.attention(q, k, v, geometry=geometry), args.repeats)
        backend = geoattn.explain_backend(q, k, v, geometry=geometry).split(":")[0]
        err = (out.double() - ref).abs().max().item()
        print(f"{name:<15}{backend:<10}{err:>28.2e}{seconds / sdpa:>13.2f}x")


if __name__ == "__main__":
    main()
