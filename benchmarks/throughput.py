"""Training throughput of the shared backbone: ``DecoderLM`` steps per second, every geometry against Euclidean.

One process, interleaved: after a warm-up, each round times ``--steps`` AdamW training steps of every
geometry in turn, in a new random order each round (same model shape, same batch, same initialisation seed),
with Python's garbage collector off while a geometry's steps are timed (as ``timeit`` does; collected between
them). The reported time per step is the median over ``--rounds`` rounds. The ratio is paired: in each round,
Euclidean's time over the geometry's (higher is faster, 1.00 = as fast as SDPA), and the reported ratio is the
median of the rounds' ratios with its 95% distribution-free interval (:func:`benchmarks.stats.median_interval`):
a round's two timings are seconds apart, so the machine's drift over the run (this VM's speed moves by 10-30%
within a session) cancels in the ratio rather than widening it. The first step of each geometry is timed
separately (it includes any one-time build, e.g. the native kernel's compile). Run it alone on idle cores: a
second job beside it moves same-process ratios by 20-50% on a 2-core machine.

    python -m benchmarks throughput                      # quick and medium shapes, 1 and 2 threads
    python -m benchmarks throughput --shapes quick --threads 1 --rounds 3

Shapes (``SHAPES``): quick = the quick suite's char-LM (2 layers, d 64, 4 heads, 12 × 64 tokens),
medium = 4 layers, d 256, 8 heads, 8 × 256 tokens. Writes ``throughput.csv`` and ``throughput.md``.
"""
from __future__ import annotations

import argparse
import csv
import gc
import random
import statistics
import time
from pathlib import Path

import torch

import geoattn
from geoattn.models import DecoderLM, TransformerConfig

from .stats import median_interval

SHAPES = {
    "quick": dict(n_layers=2, d_model=64, n_heads=4, batch=12, length=64),
    "medium": dict(n_layers=4, d_model=256, n_heads=8, batch=8, length=256),
}
# label → (registered geometry, its parameters); learnable like the benchmark suites
CASES = {
    "euclidean": ("euclidean", {}),
    "lorentz": ("lorentz", {"learnable": True}),
    "sphere": ("sphere", {"learnable": True}),
    "sphere-geodesic": ("sphere", {"score": "geodesic", "learnable": True}),
    "metric": ("metric", {"learnable": True}),
    "l2": ("l2", {"learnable": True}),
    "poincare": ("poincare", {"learnable": True}),
    "stereographic": ("stereographic", {"learnable": True}),
}
FIELDS = ["threads", "shape", "geometry", "backend", "ms_per_step", "vs_euclidean", "vs_euclidean_low",
          "vs_euclidean_high", "first_step_s", "rounds", "steps"]


def make_step(label: str, shape: dict, seed: int = 0):
    """A closure running one training step of the shape's DecoderLM with ``label``'s geometry."""
    name, params = CASES[label]
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=65, d_model=shape["d_model"], n_heads=shape["n_heads"],
                            n_layers=shape["n_layers"], max_len=shape["length"], bias=False, geometry=name,
                            geometry_params=dict(params))
    model = DecoderLM(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 65, (shape["batch"], shape["length"]), generator=gen)
    y = torch.randint(0, 65, (shape["batch"], shape["length"]), generator=gen)

    def step():
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    q = torch.zeros(shape["batch"], shape["n_heads"], shape["length"], shape["d_model"] // shape["n_heads"],
                    requires_grad=True)
    backend = geoattn.explain_backend(q, q, q, geometry=model.blocks[0].attn.geometry, is_causal=True).split(":")[0]
    return step, backend


def paired_ratio(base: list[float], times: list[float]) -> tuple[float, float, float]:
    """``(median, low, high)`` of the rounds' ratios ``base[r] / times[r]`` (Euclidean's time over the
    geometry's in the same round) and the 95% interval of that median (:func:`benchmarks.stats.median_interval`)."""
    if len(base) != len(times) or not base:
        raise ValueError(f"paired_ratio needs one time per round for both, got {len(base)} and {len(times)}")
    return median_interval([b / t for b, t in zip(base, times)])


def measure(labels: list[str], shape_name: str, threads: int, rounds: int, steps: int, log=print,
            seed: int = 0) -> list[dict]:
    torch.set_num_threads(threads)
    order = random.Random(seed)
    shape = SHAPES[shape_name]
    runs, first = {}, {}
    for label in labels:
        runs[label] = make_step(label, shape)
        t0 = time.perf_counter()
        runs[label][0]()
        first[label] = time.perf_counter() - t0
        for _ in range(2):  # warm-up
            runs[label][0]()
    times = {label: [] for label in labels}
    for _ in range(rounds):
        # interleaved, every geometry in each round, in a new order each round (the case timed first in a round
        # tends to run slow: kernels.py)
        for label in order.sample(labels, len(labels)):
            step = runs[label][0]
            gc.collect()  # as timeit does: the collector off while timing, so a collection of garbage that any
            gc.disable()  # geometry left does not land on whichever geometry happens to be running
            try:
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                times[label].append((time.perf_counter() - t0) / steps)
            finally:
                gc.enable()
    rows = []
    for label in labels:
        ms = statistics.median(times[label])
        ratio, low, high = paired_ratio(times["euclidean"], times[label])
        row = dict(threads=threads, shape=shape_name, geometry=label, backend=runs[label][1], ms_per_step=1000 * ms,
                   vs_euclidean=ratio, vs_euclidean_low=low, vs_euclidean_high=high, first_step_s=first[label],
                   rounds=rounds, steps=steps)
        rows.append(row)
        log(f"{threads} thread(s) {shape_name:>6} {label:>16} ({row['backend']:>6}): {1000 * ms:8.2f} ms/step  "
            f"{ratio:.3f}× euclidean [{low:.3f}, {high:.3f}]  (first step {first[label]:.2f} s)")
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| threads | shape | geometry | backend | ms / step | × euclidean (throughput; median of the rounds' "
             "ratios, 95% interval) | first step (s) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['threads']} | {r['shape']} | {r['geometry']} | {r['backend']} | {r['ms_per_step']:.2f} | "
                     f"{r['vs_euclidean']:.3f} ({r['vs_euclidean_low']:.3f}–{r['vs_euclidean_high']:.3f}) | "
                     f"{r['first_step_s']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks throughput", description=__doc__.split("\n")[0])
    p.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["quick", "medium"])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--geometries", nargs="+", default=None,
                   help="labels of CASES (default: every case whose geometry is registered)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=5, help="steps per geometry per round")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput"))
    a = p.parse_args(argv)
    labels = a.geometries or [label for label, (name, _) in CASES.items() if name in geoattn.available_geometries()]
    unknown = [label for label in labels if label not in CASES]
    if unknown or "euclidean" not in labels:
        raise ValueError(f"--geometries must include euclidean and name cases of {sorted(CASES)}; got {labels}")
    if min(a.threads) < 1 or a.rounds < 1 or a.steps < 1:
        raise ValueError("--threads, --rounds and --steps must be positive")
    rows = []
    for threads in a.threads:
        for shape in a.shapes:
            rows += measure(labels, shape, threads, a.rounds, a.steps)
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / "throughput.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    (a.out / "throughput.md").write_text(markdown(rows))
    print(f"\nwrote {a.out / 'throughput.csv'} and {a.out / 'throughput.md'}")
    return rows


if __name__ == "__main__":
    main()
