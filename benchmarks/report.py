"""``report``: the results log → Markdown table, CSV and plots (matplotlib).

Per task (and sweep value) and geometry: the headline metric's mean ± 95% t-interval over seeds,
Welch's t-test against ``euclidean`` (better / no different / worse at α = 0.05, direction-aware),
parameter counts, throughput and peak memory as ratios to ``euclidean``.
"""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from .log import read_log
from .stats import ALPHA, summarize, verdict, welch

BASELINE = "euclidean"
TASK_ORDER = ["shakespeare-char", "wordnet-hierarchy", "listops", "shakespeare-seq2seq"]
EXTRA_METRICS = {"shakespeare-char": "val_bpc"}


def _latest_per_key(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_key = {}
    for r in records:
        by_key[r["key"]] = r
    return list(by_key.values())


def group(records: list[dict[str, Any]]) -> dict[tuple, dict[str, list[dict[str, Any]]]]:
    """``{(task, sweep_value, config-without-sweep): {geometry: [records over seeds]}}``."""
    groups: dict[tuple, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for r in _latest_per_key(records):
        cfg = {k: v for k, v in r["config"].items() if k not in ("geometry_params",)}
        groups[(r["task"], r.get("sweep_value"), json.dumps(cfg, sort_keys=True))][r["geometry"]].append(r)
    order = lambda k: (TASK_ORDER.index(k[0]) if k[0] in TASK_ORDER else 99, k[0], k[1] or 0, k[2])  # noqa: E731
    return {k: groups[k] for k in sorted(groups, key=order)}


def _memory(record: dict[str, Any]) -> float:
    """The CUDA allocator peak on GPU, else the activations saved for backward in one step (MB)."""
    mem = record["memory"]
    if mem.get("cuda_peak_mb") is not None:
        return mem["cuda_peak_mb"]
    return mem.get("activation_mb", mem.get("peak_mb", math.nan))  # peak_mb: logs of an older format


def _fmt(x: float, digits: int = 4) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}g}"


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for (task, sweep_value, _), by_geom in group(records).items():
        base = by_geom.get(BASELINE, [])
        base_vals = [r["metrics"][r["metric"]] for r in base]
        base_tps = np.mean([r["timings"]["tokens_per_s"] for r in base]) if base else math.nan
        base_mem = np.mean([_memory(r) for r in base]) if base else math.nan
        for geometry in sorted(by_geom, key=lambda g: (g != BASELINE, g)):
            runs = sorted(by_geom[geometry], key=lambda r: r["seed"])
            metric, hib = runs[0]["metric"], runs[0]["higher_is_better"]
            vals = [r["metrics"][metric] for r in runs]
            s = summarize(vals)
            extra = EXTRA_METRICS.get(task)
            tps = float(np.mean([r["timings"]["tokens_per_s"] for r in runs]))
            mem = float(np.mean([_memory(r) for r in runs]))
            row = {
                "task": task, "sweep": runs[0].get("sweep") or "",
                "sweep_value": sweep_value if sweep_value is not None else "",
                "geometry": geometry, "metric": metric, "higher_is_better": hib, "seeds": s.n, "mean": s.mean,
                "ci95_low": s.ci_low, "ci95_high": s.ci_high,
                "extra_metric": extra or "",
                "extra_mean": float(np.mean([r["metrics"][extra] for r in runs])) if extra else "",
                "p_vs_euclidean": welch(vals, base_vals) if geometry != BASELINE and base_vals else "",
                "vs_euclidean": (verdict(vals, base_vals, hib) if base_vals else "n/a (no euclidean runs)")
                if geometry != BASELINE else "baseline",
                "params_total": runs[0]["params"]["total"], "params_geometry": runs[0]["params"]["geometry"],
                "tokens_per_s": tps, "speed_vs_euclidean": tps / base_tps if base else math.nan,
                "memory_mb": mem, "memory_vs_euclidean": mem / base_mem if base and base_mem > 0 else math.nan,
                "train_s_mean": float(np.mean([r["timings"]["train_s"] for r in runs])),
            }
            out.append(row)
    return out


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| task | head dim | geometry | metric | mean ± 95% CI | seeds | vs euclidean (Welch p) | params (geometry) "
        "| tokens/s (× eucl.) | memory MB (× eucl.) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        half = (r["ci95_high"] - r["ci95_low"]) / 2 if not math.isnan(r["ci95_low"]) else math.nan
        metric = r["metric"] + (" ↑" if r["higher_is_better"] else " ↓")
        extra = f" ({r['extra_metric']} {r['extra_mean']:.3f})" if r["extra_metric"] else ""
        pv = r["p_vs_euclidean"]
        p = f" (p={pv:.3g})" if isinstance(pv, float) and not math.isnan(pv) else ""
        lines.append(
            f"| {r['task']} | {r['sweep_value']} | {r['geometry']} | {metric} "
            f"| {r['mean']:.4f} ± {_fmt(half, 2)}{extra} "
            f"| {r['seeds']} | {r['vs_euclidean']}{p} | {r['params_total']:,} ({r['params_geometry']}) "
            f"| {r['tokens_per_s']:,.0f} ({r['speed_vs_euclidean']:.2f}×) "
            f"| {_fmt(r['memory_mb'], 3)} ({_fmt(r['memory_vs_euclidean'], 3)}×) |"
        )
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)


def build_report(log_path: Path, out_dir: Path, kernels: Path | None = None) -> list[Path]:
    """Write ``results.md``, ``results.csv`` and the plots into ``out_dir``; returns the files written."""
    from . import plots

    records, bad = read_log(log_path)
    if not records:
        raise ValueError(f"no finished runs in {str(log_path)!r}; run `python -m benchmarks run` first (or pass --out)")
    out_dir.mkdir(parents=True, exist_ok=True)
    table = rows(records)
    md = out_dir / "results.md"
    header = (f"Results from {len(_latest_per_key(records))} runs in `{log_path.name}`"
              + (f" ({len(bad)} unreadable line(s) skipped)" if bad else "")
              + f". Mean ± 95% t-interval over seeds; Welch's t-test vs euclidean at α = {ALPHA}; ↓ lower is better, "
              "↑ higher is better. Memory: CUDA allocator peak on GPU; on CPU the activations saved for backward in "
              "one training step. Geometry parameters are counted in params (learnable curvature, temperature, "
              "metric).\n\n")
    md.write_text(header + markdown(table))
    write_csv(table, out_dir / "results.csv")
    written = [md, out_dir / "results.csv"]
    written += plots.curves(records, out_dir)
    written += plots.sweep(records, out_dir)
    written += plots.kernel_speed(kernels, out_dir)
    return written
