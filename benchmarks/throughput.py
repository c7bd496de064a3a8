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
    python -m benchmarks throughput --compile --threads 1  # also each geometry under torch.compile
    python -m benchmarks throughput --mode decode --threads 1  # KV-cache generation, tokens per second

Shapes (``SHAPES``): quick = the quick suite's char-LM (2 layers, d 64, 4 heads, 12 × 64 tokens),
medium = 4 layers, d 256, 8 heads, 8 × 256 tokens. Writes ``throughput.csv`` and ``throughput.md``.

``--compile`` times every geometry twice in the same rounds, eager and compiled
(``torch.compile(model, fullgraph=True)``; the first step, timed apart, includes the compile), and reports each
compiled step against Euclidean's compiled step and against the same geometry's eager step (``vs_eager``: the
eager time over the compiled time, paired per round; ≥ 1 is no slower). Writes ``throughput-compile.csv/.md``.

``--mode decode`` times ``DecoderLM.generate`` with its KV cache (greedy, ``DECODE_SHAPES``: a prompt of 32
tokens, then 96 new tokens one query row at a time) at each ``--batch``, interleaved and paired as above:
tokens per second and Euclidean's time over the geometry's per round (``vs_euclidean``, higher is faster).
Writes ``decode.csv`` and ``decode.md``.
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
DECODE_SHAPES = {
    "d128": dict(n_layers=4, d_model=128, n_heads=4, prompt=32, new_tokens=96),
    "medium": dict(n_layers=4, d_model=256, n_heads=8, prompt=32, new_tokens=96),
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
COMPILE_FIELDS = FIELDS[:3] + ["mode"] + FIELDS[3:] + ["vs_eager", "vs_eager_low", "vs_eager_high"]
DECODE_FIELDS = ["threads", "shape", "batch", "geometry", "backend", "ms_per_token", "tokens_per_s", "vs_euclidean",
                 "vs_euclidean_low", "vs_euclidean_high", "rounds", "new_tokens"]


def make_model(label: str, shape: dict, max_len: int, seed: int = 0) -> DecoderLM:
    """The shape's DecoderLM with ``label``'s geometry (the same initialisation seed for every geometry)."""
    name, params = CASES[label]
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=65, d_model=shape["d_model"], n_heads=shape["n_heads"],
                            n_layers=shape["n_layers"], max_len=max_len, bias=False, geometry=name,
                            geometry_params=dict(params))
    return DecoderLM(cfg)


def backend_of(model: DecoderLM, batch: int, length: int, grad: bool) -> str:
    """The backend ``auto`` picks for the model's attention calls at this size (the first layer's)."""
    shape = model.cfg
    q = torch.zeros(batch, shape.n_heads, length, shape.d_model // shape.n_heads, requires_grad=grad)
    return geoattn.explain_backend(q, q, q, geometry=model.blocks[0].attn.geometry, is_causal=True).split(":")[0]


def make_step(label: str, shape: dict, seed: int = 0, compiled: bool = False):
    """A closure running one training step of the shape's DecoderLM with ``label``'s geometry (compiled with
    ``torch.compile(fullgraph=True)`` when ``compiled``), and the backend its attention runs on."""
    model = make_model(label, shape, shape["length"], seed)
    run = torch.compile(model, fullgraph=True) if compiled else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 65, (shape["batch"], shape["length"]), generator=gen)
    y = torch.randint(0, 65, (shape["batch"], shape["length"]), generator=gen)

    def step():
        _, loss = run(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step, backend_of(model, shape["batch"], shape["length"], True)


def paired_ratio(base: list[float], times: list[float]) -> tuple[float, float, float]:
    """``(median, low, high)`` of the rounds' ratios ``base[r] / times[r]`` (Euclidean's time over the
    geometry's in the same round) and the 95% interval of that median (:func:`benchmarks.stats.median_interval`)."""
    if len(base) != len(times) or not base:
        raise ValueError(f"paired_ratio needs one time per round for both, got {len(base)} and {len(times)}")
    return median_interval([b / t for b, t in zip(base, times)])


def interleaved(runs: dict, rounds: int, repeat: int, seed: int = 0) -> dict[object, list[float]]:
    """Seconds per call of each of ``runs`` (key → callable), one timing of ``repeat`` calls per round, every run
    in each round in a new random order (the case timed first in a round tends to run slow: kernels.py), with
    the garbage collector off while a run is timed (as timeit does: a collection of garbage that any case left
    does not land on whichever case happens to be running)."""
    order = random.Random(seed)
    times = {key: [] for key in runs}
    for _ in range(rounds):
        for key in order.sample(list(runs), len(runs)):
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                for _ in range(repeat):
                    runs[key]()
                times[key].append((time.perf_counter() - t0) / repeat)
            finally:
                gc.enable()
    return times


def measure(labels: list[str], shape_name: str, threads: int, rounds: int, steps: int, log=print,
            seed: int = 0, compiled: bool = False) -> list[dict]:
    """Training steps of every geometry (and, with ``compiled``, of every geometry compiled too), interleaved."""
    torch.set_num_threads(threads)
    shape = SHAPES[shape_name]
    cases = [(label, False) for label in labels] + ([(label, True) for label in labels] if compiled else [])
    runs, first = {}, {}
    for case in cases:
        runs[case] = make_step(case[0], shape, compiled=case[1])
        t0 = time.perf_counter()
        runs[case][0]()
        first[case] = time.perf_counter() - t0
        for _ in range(2):  # warm-up
            runs[case][0]()
    times = interleaved({case: run[0] for case, run in runs.items()}, rounds, steps, seed)
    rows = []
    for label, mode in cases:
        case = (label, mode)
        ms = statistics.median(times[case])
        ratio, low, high = paired_ratio(times[("euclidean", mode)], times[case])
        row = dict(threads=threads, shape=shape_name, geometry=label, backend=runs[case][1], ms_per_step=1000 * ms,
                   vs_euclidean=ratio, vs_euclidean_low=low, vs_euclidean_high=high, first_step_s=first[case],
                   rounds=rounds, steps=steps)
        note = ""
        if compiled:
            row["mode"] = "compile" if mode else "eager"
            if mode:
                row["vs_eager"], row["vs_eager_low"], row["vs_eager_high"] = paired_ratio(times[(label, False)],
                                                                                          times[case])
                note = (f"  {row['vs_eager']:.3f}× its eager step [{row['vs_eager_low']:.3f}, "
                        f"{row['vs_eager_high']:.3f}]")
        rows.append(row)
        log(f"{threads} thread(s) {shape_name:>6} {label:>16}{' compiled' if mode else ''} ({row['backend']:>6}): "
            f"{1000 * ms:8.2f} ms/step  {ratio:.3f}× euclidean [{low:.3f}, {high:.3f}]  (first step "
            f"{first[case]:.2f} s){note}")
    return rows


def measure_decode(labels: list[str], shape_name: str, batch: int, threads: int, rounds: int, log=print,
                   seed: int = 0) -> list[dict]:
    """KV-cache generation (``DecoderLM.generate``, greedy) of every geometry, interleaved: tokens per second."""
    torch.set_num_threads(threads)
    shape = DECODE_SHAPES[shape_name]
    new = shape["new_tokens"]
    prompt = torch.randint(0, 65, (batch, shape["prompt"]), generator=torch.Generator().manual_seed(seed))
    runs, backends = {}, {}
    for label in labels:
        model = make_model(label, shape, shape["prompt"] + new, seed).eval()
        runs[label] = lambda model=model: model.generate(prompt, new)
        backends[label] = backend_of(model, batch, 1, False)
        for _ in range(2):  # warm-up (and the native kernel's build)
            runs[label]()
    times = interleaved(runs, rounds, 1, seed)
    rows = []
    for label in labels:
        per_token = statistics.median(times[label]) / new
        ratio, low, high = paired_ratio(times["euclidean"], times[label])
        rows.append(dict(threads=threads, shape=shape_name, batch=batch, geometry=label, backend=backends[label],
                         ms_per_token=1000 * per_token, tokens_per_s=batch / per_token, vs_euclidean=ratio,
                         vs_euclidean_low=low, vs_euclidean_high=high, rounds=rounds, new_tokens=new))
        log(f"{threads} thread(s) {shape_name:>6} batch {batch} {label:>16} ({backends[label]:>6}): "
            f"{1000 * per_token:7.3f} ms/token  {ratio:.3f}× euclidean [{low:.3f}, {high:.3f}]")
    return rows


def markdown(rows: list[dict], fields: list[str]) -> str:
    """The rows as a markdown table of ``fields`` (ratios with their 95% interval in one cell)."""
    shown = [f for f in fields if not f.endswith(("_low", "_high"))]
    lines = ["| " + " | ".join(f.replace("_", " ") for f in shown) + " |", "|" + "---|" * len(shown)]
    for r in rows:
        cells = []
        for f in shown:
            v = r.get(f, "")
            if f in ("vs_euclidean", "vs_eager") and v != "":
                cells.append(f"{v:.3f} ({r[f + '_low']:.3f}–{r[f + '_high']:.3f})")
            else:
                cells.append(f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(prog="python -m benchmarks throughput", description=__doc__.split("\n")[0])
    p.add_argument("--mode", choices=["train", "decode"], default="train")
    p.add_argument("--shapes", nargs="+", choices=sorted({*SHAPES, *DECODE_SHAPES}), default=None,
                   help=f"train: {sorted(SHAPES)} (default: all); decode: {sorted(DECODE_SHAPES)} (default: all)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--geometries", nargs="+", default=None,
                   help="labels of CASES (default: every case whose geometry is registered)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default: 7 train, 9 decode)")
    p.add_argument("--steps", type=int, default=5, help="steps per geometry per round (train)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="batch sizes (decode)")
    p.add_argument("--compile", action="store_true",
                   help="train: also time every geometry under torch.compile(fullgraph=True)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/throughput"))
    a = p.parse_args(argv)
    decode = a.mode == "decode"
    known = DECODE_SHAPES if decode else SHAPES
    shapes = a.shapes or list(known)
    rounds = a.rounds or (9 if decode else 7)
    labels = a.geometries or [label for label, (name, _) in CASES.items() if name in geoattn.available_geometries()]
    unknown = [label for label in labels if label not in CASES]
    if unknown or "euclidean" not in labels:
        raise ValueError(f"--geometries must include euclidean and name cases of {sorted(CASES)}; got {labels}")
    if any(shape not in known for shape in shapes):
        raise ValueError(f"--mode {a.mode} takes the shapes {sorted(known)}; got {shapes}")
    if decode and a.compile:
        raise ValueError("--compile times training steps; drop it with --mode decode")
    if min(a.threads) < 1 or rounds < 1 or a.steps < 1 or min(a.batch) < 1:
        raise ValueError("--threads, --rounds, --steps and --batch must be positive")
    if a.compile:  # one compiled DecoderLM per geometry and shape: more than dynamo's default 8 recompiles
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 4 * len(labels))
    rows = []
    for threads in a.threads:
        for shape in shapes:
            if decode:
                for batch in a.batch:
                    rows += measure_decode(labels, shape, batch, threads, rounds)
            else:
                torch._dynamo.reset()
                rows += measure(labels, shape, threads, rounds, a.steps, compiled=a.compile)
    name, fields = ("decode", DECODE_FIELDS) if decode else (("throughput-compile", COMPILE_FIELDS) if a.compile
                                                             else ("throughput", FIELDS))
    a.out.mkdir(parents=True, exist_ok=True)
    with open(a.out / f"{name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()} for r in rows)
    (a.out / f"{name}.md").write_text(markdown(rows, fields))
    print(f"\nwrote {a.out / (name + '.csv')} and {a.out / (name + '.md')}")
    return rows


if __name__ == "__main__":
    main()
