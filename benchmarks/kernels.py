"""Kernel benchmark: every geometry × backend against ``F.scaled_dot_product_attention`` (same process).

For each length L: forward and forward+backward wall time (median of ``--repeats`` runs after one
warm-up), the first call's time (compilation included), and the peak extra memory of one
forward+backward (:mod:`benchmarks.peak_rss`: resident-set high-water mark with glibc returning every
large block; forward only where a backend has no backward). Each is also given as a ratio to SDPA
on the same shape. Writes ``kernels.csv`` and ``kernels.png`` (log-log time and memory vs L, one line
per geometry/backend) to ``--out`` and prints a table.

    python -m benchmarks.kernels --quick                  # L = 256, 1024; a smoke run (~minutes)
    python -m benchmarks.kernels                          # L = 256 … 8192 on CPU (32k on GPU)
    python -m benchmarks.kernels --device cuda --dtype bfloat16 --sdpa-kernel flash --backends flex sdpa
                                                          # against FlashAttention (scripts/gpu-check.sh)
"""
from __future__ import annotations

import argparse
import random
import csv
import statistics
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import geoattn
from benchmarks.peak_rss import configure as configure_peak_rss, peak_bytes

# The benchmarked case of each registered geometry: (label, parameters); a geometry not listed runs with its defaults.
CASES: dict[str, tuple[str, dict]] = {
    "lorentz": ("lorentz", {"curvature": -1.0, "learnable": True}),
    "metric": ("metric", {"rank": 8, "learnable": True}),
    "sphere": ("sphere-geodesic", {"score": "geodesic", "learnable": True}),
    "poincare": ("poincare", {"curvature": -1.0, "learnable": True}),
    "stereographic": ("stereographic", {"curvature": -0.5, "learnable": True}),
}


# Further cases of a registered geometry: label → (geometry, parameters)
MORE_CASES: dict[str, tuple[str, dict]] = {"sphere-cosine": ("sphere", {"score": "cosine", "learnable": True})}


def geometries() -> dict[str, Callable[[int], geoattn.Geometry]]:
    """Label → ``head_dim ↦ geometry`` for every registered geometry (its case in :data:`CASES`, or its
    defaults) and the cases of :data:`MORE_CASES`."""
    out = {}
    for name in geoattn.available_geometries():
        label, params = CASES.get(name, (name, {}))
        out[label] = lambda d, name=name, params=params: geoattn.make_geometry(name, head_dim=d, **params)
    for label, (name, params) in MORE_CASES.items():
        if name in geoattn.available_geometries():
            out[label] = lambda d, name=name, params=params: geoattn.make_geometry(name, head_dim=d, **params)
    return out
FIELDS = ["device", "geometry", "backend", "L", "fwd_s", "fwdbwd_s", "first_call_s", "peak_mib",
          "sdpa_fwd_s", "sdpa_fwdbwd_s", "sdpa_peak_mib", "fwd_ratio", "fwdbwd_ratio", "mem_ratio", "dtype",
          "sdpa_kernel"]
SDPA_KERNELS = ("auto", "flash", "efficient", "cudnn", "math")


def sdpa_baseline(kernel: str = "auto") -> Callable:
    """The baseline: ``F.scaled_dot_product_attention``, on the kernel torch picks (``auto``) or the one named
    (``flash``: FlashAttention-2, bf16/fp16 on CUDA; ``efficient``: memory-efficient, also fp32; ...)."""
    if kernel == "auto":
        return F.scaled_dot_product_attention
    from torch.nn.attention import SDPBackend, sdpa_kernel

    backend = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
               "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kernel]

    def call(q, k, v):
        with sdpa_kernel(backend):
            return F.scaled_dot_product_attention(q, k, v)
    return call


def _timed(fn: Callable[[], object], sync: Callable[[], None]) -> float:
    sync()
    t0 = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t0


def _peak_mib(fn: Callable[[], object], device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    peak = peak_bytes(fn)
    return float("nan") if peak is None else peak / 2**20


class Case:
    """One measured call: ``call(q, k, v)`` forward (no grad) and forward+backward (if ``backward``)."""

    def __init__(self, call: Callable, q, k, v, backward: bool, sync: Callable[[], None]) -> None:
        self.call, self.q, self.k, self.v, self.backward, self.sync = call, q, k, v, backward, sync
        self.fwd_times: list[float] = []
        self.fwdbwd_times: list[float] = []

    def fwd(self):
        with torch.no_grad():
            return self.call(self.q, self.k, self.v)

    def fwdbwd(self):
        out = self.call(self.q, self.k, self.v)
        out.sum().backward()
        self.q.grad = self.k.grad = self.v.grad = None

    def first(self) -> float:
        """The first call (forward+backward, or forward without a backward), any one-time build included."""
        return _timed(self.fwdbwd if self.backward else self.fwd, self.sync)

    def time_once(self) -> None:
        self.fwd_times.append(_timed(self.fwd, self.sync))
        if self.backward:
            self.fwdbwd_times.append(_timed(self.fwdbwd, self.sync))

    def medians(self) -> tuple[float, float]:
        nan = float("nan")
        return (statistics.median(self.fwd_times) if self.fwd_times else nan,
                statistics.median(self.fwdbwd_times) if self.fwdbwd_times else nan)


def measure_interleaved(cases: list[Case], repeats: int, seed: int = 0) -> None:
    """After one warm-up call each, ``repeats`` rounds timing every case in turn (each round sees the same
    machine state for all of them), in a new random order each round (measured: the case timed first in
    a round ran ~8% slower than the same call later in it); medians over the rounds."""
    for case in cases:
        case.fwd()
        if case.backward:
            case.fwdbwd()
    order = random.Random(seed)
    for _ in range(repeats):
        for case in order.sample(cases, len(cases)):
            case.time_once()


def backends_for(geom: geoattn.Geometry, L: int, max_dense: int, device: str = "cpu") -> list[str]:
    """The backends a geometry is measured on: the native CPU kernel where it has one (what ``auto`` picks
    on CPU); then SDPA for affine scores, and for the others the portable tiled kernel (flex on an
    accelerator) and dense while small."""
    native = ["native"] if device == "cpu" and geom.native_kind is not None else []
    if geom.affine:
        return native + ["sdpa"]
    return native + (["tiled"] if native else ["flex", "tiled"]) + (["dense"] if L * L <= max_dense else [])


def run(lengths, names, B, H, D, repeats, device, dtype, max_dense, log=print, memory_only=False,
        only: list[str] | None = None, sdpa_kernel: str = "auto") -> list[dict]:
    """Every (geometry, backend) against SDPA at each length: times interleaved (:func:`measure_interleaved`),
    or with ``memory_only`` the first call and the peak memory of each, one after another (CPU memory only
    in such a run: the RSS method switches glibc to one mmap per large allocation for the rest of the
    process, which would slow and bias any timing taken after it)."""
    rows, geoms = [], geometries()
    if memory_only and device == "cpu":
        configure_peak_rss()  # before the first tensor, so no freed heap memory is reused unseen
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    nan = float("nan")
    for L in lengths:
        gen = torch.Generator().manual_seed(L)
        q, k, v = ((0.5 * torch.randn(B, H, L, D, generator=gen)).to(device, dtype).requires_grad_() for _ in range(3))
        sdpa = Case(sdpa_baseline(sdpa_kernel), q, k, v, True, sync)
        labelled = []
        for name in names:
            geom = geoms[name](D).to(device)
            for backend in backends_for(geom, L, max_dense, device):
                if only and backend not in only:
                    continue
                backward = not (backend == "flex" and device == "cpu")  # no CPU backward in torch 2.13

                def call(q, k, v, geom=geom, backend=backend):
                    return geoattn.attention(q, k, v, geometry=geom, backend=backend)
                labelled.append((name, backend, Case(call, q, k, v, backward, sync)))
        first = {id(c): c.first() for c in [sdpa] + [c for _, _, c in labelled]}
        measured_memory = memory_only or device == "cuda"
        peak = {id(c): (_peak_mib(c.fwdbwd if c.backward else c.fwd, device) if measured_memory else nan)
                for c in [sdpa] + [c for _, _, c in labelled]}
        if not memory_only:
            measure_interleaved([sdpa] + [c for _, _, c in labelled], repeats)
        sdpa_fwd, sdpa_fwdbwd = sdpa.medians()
        for name, backend, case in labelled:
            fwd, fwdbwd = case.medians()
            r = dict(device=device, geometry=name, backend=backend, L=L, fwd_s=fwd, fwdbwd_s=fwdbwd,
                     first_call_s=first[id(case)], peak_mib=peak[id(case)], sdpa_fwd_s=sdpa_fwd,
                     sdpa_fwdbwd_s=sdpa_fwdbwd, sdpa_peak_mib=peak[id(sdpa)],
                     dtype=str(dtype).removeprefix("torch."), sdpa_kernel=sdpa_kernel)
            r["fwd_ratio"] = fwd / sdpa_fwd if not memory_only else nan
            r["fwdbwd_ratio"] = fwdbwd / sdpa_fwdbwd if not memory_only else nan
            r["mem_ratio"] = r["peak_mib"] / r["sdpa_peak_mib"] if r["sdpa_peak_mib"] > 0 else nan
            rows.append(r)
            log(_format(r))
    return rows


FIRST_CALL_FIELDS = ["geometry", "backend", "cache", "L", "first_s", "second_shape_L", "second_shape_first_s",
                     "steady_s"]


def first_call_child(label: str, L: int, backend: str) -> dict:
    """In a fresh process: the first forward+backward at length L (any one-time build included), the first
    one at a new length 2L (a shape change: nothing is rebuilt), and a steady-state one at 2L."""
    geom = geometries()[label](64)
    times = {}
    for key, n in (("first_s", L), ("second_shape_first_s", 2 * L), ("steady_s", 2 * L)):
        q, k, v = (0.5 * torch.randn(1, 8, n, 64)).requires_grad_(), torch.randn(1, 8, n, 64), torch.randn(1, 8, n, 64)
        t0 = time.perf_counter()
        geoattn.attention(q, k, v, geometry=geom, backend=backend).sum().backward()
        times[key] = time.perf_counter() - t0
    return times


def first_calls(labels: list[str], L: int, log=print, only: list[str] | None = None) -> list[dict]:
    """Cold (empty on-disk caches: geoattn's native build, Inductor's) and warm first calls, each in its own
    process, for every fused geometry on the backend auto picks on CPU and on tiled."""
    import json
    import os
    import subprocess
    import sys
    import tempfile

    rows = []
    for label in labels:
        geom = geometries()[label](64)
        if geom.affine:
            continue
        for backend in (["native"] if geom.native_kind is not None else []) + ["tiled"]:
            if only and backend not in only:
                continue
            with tempfile.TemporaryDirectory() as cache:
                env = dict(os.environ, GEOATTN_CACHE=cache, TORCHINDUCTOR_CACHE_DIR=os.path.join(cache, "inductor"))
                for state in ("cold", "warm"):
                    out = subprocess.run([sys.executable, "-m", "benchmarks.kernels", "--first-call-child", label,
                                          str(L), backend], capture_output=True, text=True, env=env, check=True)
                    times = json.loads(out.stdout.strip().splitlines()[-1])
                    row = dict(geometry=label, backend=backend, cache=state, L=L, second_shape_L=2 * L, **times)
                    rows.append(row)
                    log(f"{label:>15} {backend:>6} {state}: first call {times['first_s']:.2f} s, first at L={2 * L} "
                        f"{times['second_shape_first_s']:.2f} s (steady {times['steady_s']:.2f} s)")
    return rows


def _format(r: dict) -> str:
    return (f"{r['geometry']:>15} {r['backend']:>5} L={r['L']:>5}  fwd {r['fwd_s']:.4f}s ({r['fwd_ratio']:.2f}x)  "
            f"fwd+bwd {r['fwdbwd_s']:.4f}s ({r['fwdbwd_ratio']:.2f}x)  peak {r['peak_mib']:.1f} MiB "
            f"({r['mem_ratio']:.2f}x)  first {r['first_call_s']:.1f}s")


def write(rows: list[dict], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "kernels.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.6g}" if isinstance(r[k], float) else r[k]) for k in FIELDS})
    plot(rows, out / "kernels.png")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    series: dict[str, list[dict]] = {}
    for r in rows:
        series.setdefault(f"{r['geometry']}/{r['backend']}", []).append(r)
    sd = {r["L"]: r for r in rows}
    for label, rs in sorted(series.items()):
        rs = sorted(rs, key=lambda r: r["L"])
        key = "fwd_s" if rs[0]["backend"] == "flex" and rs[0]["device"] == "cpu" else "fwdbwd_s"
        axes[0].plot([r["L"] for r in rs], [r[key] for r in rs], marker="o",
                     label=label + (" (fwd only)" if key == "fwd_s" else ""))
        axes[1].plot([r["L"] for r in rs], [r["peak_mib"] for r in rs], marker="o", label=label)
    Ls = sorted(sd)
    axes[0].plot(Ls, [sd[L]["sdpa_fwdbwd_s"] for L in Ls], "k--", label="F.sdpa (fwd+bwd)")
    axes[1].plot(Ls, [sd[L]["sdpa_peak_mib"] for L in Ls], "k--", label="F.sdpa")
    for ax, title in zip(axes, ["forward+backward time (s)", "peak extra memory (MiB)"]):
        ax.set_xscale("log", base=2)
        if any(y > 0 for line in ax.get_lines() for y in line.get_ydata() if y == y):
            ax.set_yscale("log")  # (a --memory-only run has no times)
        ax.set_xlabel("sequence length L")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.kernels", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="L = 256, 1024 with 3 repeats: a smoke run")
    p.add_argument("--lengths", type=int, nargs="+", help="sequence lengths (default 256 … 8192 CPU, … 32768 GPU)")
    p.add_argument("--geometries", nargs="+", choices=sorted(geometries()), default=sorted(geometries()))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5, help="timed runs after one warm-up (median)")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-dense", type=int, default=2048 * 2048, help="largest L² the dense path is run at")
    p.add_argument("--memory-only", action="store_true", help="one call per backend: first-call time and peak memory")
    p.add_argument("--first-call", action="store_true",
                   help="only the first-call latencies, cold and warm on-disk caches (subprocesses), at --lengths[0]")
    p.add_argument("--first-call-child", nargs=3, metavar=("LABEL", "L", "BACKEND"), help=argparse.SUPPRESS)
    p.add_argument("--backends", nargs="+", default=None,
                   help="measure only these of each geometry's backends (default: all of backends_for)")
    p.add_argument("--sdpa-kernel", choices=SDPA_KERNELS, default="auto",
                   help="the baseline's SDPA kernel (flash, efficient, cudnn: CUDA only; default: torch's choice)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/kernels"))
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    p = parser()
    a = p.parse_args(argv)
    if a.sdpa_kernel in ("flash", "efficient", "cudnn") and a.device != "cuda":
        p.error(f"--sdpa-kernel {a.sdpa_kernel} is a CUDA kernel; give --device cuda (or --sdpa-kernel auto)")
    if a.first_call_child:
        import json

        label, n, backend = a.first_call_child
        print(json.dumps(first_call_child(label, int(n), backend)))
        return []
    if a.first_call:
        rows = first_calls(a.geometries, (a.lengths or [1024])[0], only=a.backends)
        a.out.mkdir(parents=True, exist_ok=True)
        with open(a.out / "first_call.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=FIRST_CALL_FIELDS)
            w.writeheader()
            w.writerows({k: (f"{r[k]:.4g}" if isinstance(r[k], float) else r[k]) for k in FIRST_CALL_FIELDS}
                        for r in rows)
        print(f"\nwrote {a.out / 'first_call.csv'}")
        return rows
    top = 32768 if a.device == "cuda" else 8192
    lengths = a.lengths or ([256, 1024] if a.quick else [n for n in (256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
                                                           if n <= top])
    repeats = 3 if a.quick and a.repeats == 5 else a.repeats
    rows = run(lengths, a.geometries, a.batch, a.heads, a.head_dim, repeats, a.device, getattr(torch, a.dtype),
               a.max_dense, memory_only=a.memory_only, only=a.backends, sdpa_kernel=a.sdpa_kernel)
    write(rows, a.out)
    print(f"\nwrote {a.out / 'kernels.csv'} and {a.out / 'kernels.png'}")
    return rows


if __name__ == "__main__":
    main()
