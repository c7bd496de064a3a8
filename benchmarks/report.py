"""``report``: the results log → Markdown table, CSV and plots (matplotlib).

Per task (and sweep value) and geometry: the headline metric's mean ± 95% t-interval over seeds, the
difference to ``euclidean`` with its Welch 95% CI, Welch's t-test against ``euclidean`` with
Benjamini–Hochberg adjusted p-values over all comparisons of the report (better / no different / worse
at α = 0.05 on the adjusted p, direction-aware), whether the learning curves reached a plateau,
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
from .stats import (ALPHA, PLATEAU_FRACTION, PLATEAU_TOLERANCE, bh_adjust, late_improvement, mean_difference,
                    summarize, verdict, welch)

BASELINE = "euclidean"
TASK_ORDER = ["shakespeare-char", "wordnet-hierarchy", "wordnet-reconstruction", "listops", "shakespeare-seq2seq"]
EXTRA_METRICS = {  # shown beside the headline metric (mean ± 95% CI)
    "shakespeare-char": ("val_bpc",),
    "wordnet-hierarchy": ("train_acc",),
    "wordnet-reconstruction": ("mean_rank",),
}


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


def _plateau(runs: list[dict[str, Any]]) -> tuple[float, str]:
    """The worst (largest) late improvement over the seeds and whether every seed meets the criterion."""
    gains = [late_improvement(r["curve"], r["metric"], r["higher_is_better"], r["config"]["iters"]) for r in runs]
    if any(math.isnan(g) for g in gains):
        return math.nan, "n/a"
    worst = max(gains)
    return worst, "yes" if worst < PLATEAU_TOLERANCE else "no"


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, sweep value, geometry). ``p_adj`` is Benjamini–Hochberg over every comparison with
    euclidean in ``records`` (all tasks and sweep values); the verdict is based on it."""
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
            compared = geometry != BASELINE and bool(base_vals)
            diff, diff_low, diff_high = mean_difference(vals, base_vals) if compared else ("", "", "")
            worst_gain, plateau = _plateau(runs)
            tps = float(np.mean([r["timings"]["tokens_per_s"] for r in runs]))
            mem = float(np.mean([_memory(r) for r in runs]))
            row = {
                "task": task, "sweep": runs[0].get("sweep") or "",
                "sweep_value": sweep_value if sweep_value is not None else "",
                "geometry": geometry, "metric": metric, "higher_is_better": hib, "seeds": s.n, "mean": s.mean,
                "ci95_low": s.ci_low, "ci95_high": s.ci_high,
            }
            for name in EXTRA_METRICS.get(task, ()):
                extra = summarize([r["metrics"][name] for r in runs if name in r["metrics"]] or [math.nan])
                row[f"{name}_mean"], row[f"{name}_half_ci95"] = extra.mean, extra.half_width
            row.update({
                "diff_vs_euclidean": diff, "diff_ci95_low": diff_low, "diff_ci95_high": diff_high,
                "p_vs_euclidean": welch(vals, base_vals) if compared else "", "p_adj": "",
                "vs_euclidean": "baseline" if geometry == BASELINE else ("" if compared else "n/a (no euclidean runs)"),
                "plateau": plateau, "late_gain_max": worst_gain,
                "params_total": runs[0]["params"]["total"], "params_geometry": runs[0]["params"]["geometry"],
                "tokens_per_s": tps, "speed_vs_euclidean": tps / base_tps if base else math.nan,
                "memory_mb": mem, "memory_vs_euclidean": mem / base_mem if base and base_mem > 0 else math.nan,
                "train_s_mean": float(np.mean([r["timings"]["train_s"] for r in runs])),
                "_values": vals, "_base": base_vals,
            })
            out.append(row)
    compared = [r for r in out if isinstance(r["p_vs_euclidean"], float)]
    for r, p_adj in zip(compared, bh_adjust([r["p_vs_euclidean"] for r in compared])):
        r["p_adj"] = float(p_adj)
        r["vs_euclidean"] = verdict(r["_values"], r["_base"], r["higher_is_better"], p=float(p_adj))
    for r in out:
        del r["_values"], r["_base"]
    return out


def family_size(table: list[dict[str, Any]]) -> int:
    """The number of comparisons in the Benjamini–Hochberg family (those with a p-value)."""
    return sum(1 for r in table if isinstance(r["p_adj"], float) and not math.isnan(r["p_adj"]))


def _pm(mean: float, half: float, digits: int = 4) -> str:
    return f"{mean:.{digits}g} ± {_fmt(half, 2)}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| task | sweep | geometry | metric | mean ± 95% CI | seeds | geometry − euclidean (95% CI) "
        "| vs euclidean (p_adj; Welch p) | plateau (worst last-20% gain) | params (geometry) "
        "| tokens/s (× eucl.) | memory MB (× eucl.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in table:
        half = (r["ci95_high"] - r["ci95_low"]) / 2 if not math.isnan(r["ci95_low"]) else math.nan
        metric = r["metric"] + (" ↑" if r["higher_is_better"] else " ↓")
        extras = [f"{name} {_pm(r[f'{name}_mean'], r[f'{name}_half_ci95'])}"
                  for name in EXTRA_METRICS.get(r["task"], ())
                  if f"{name}_mean" in r and not math.isnan(r[f"{name}_mean"])]
        extra = f" ({'; '.join(extras)})" if extras else ""
        sweep = f"{r['sweep']}={r['sweep_value']}" if r["sweep"] else ""
        diff = (f"{r['diff_vs_euclidean']:+.4g} ({_fmt(r['diff_ci95_low'], 3)}, {_fmt(r['diff_ci95_high'], 3)})"
                if isinstance(r["diff_vs_euclidean"], float) else "")
        p = (f" ({_fmt(r['p_adj'], 3)}; {_fmt(r['p_vs_euclidean'], 3)})"
             if isinstance(r["p_adj"], float) and not math.isnan(r["p_adj"]) else "")
        plateau = r["plateau"] + (f" ({100 * r['late_gain_max']:.2g}%)" if not math.isnan(r["late_gain_max"]) else "")
        lines.append(
            f"| {r['task']} | {sweep} | {r['geometry']} | {metric} | {r['mean']:.4f} ± {_fmt(half, 2)}{extra} "
            f"| {r['seeds']} | {diff} | {r['vs_euclidean']}{p} | {plateau} "
            f"| {r['params_total']:,} ({r['params_geometry']}) "
            f"| {r['tokens_per_s']:,.0f} ({r['speed_vs_euclidean']:.2f}×) "
            f"| {_fmt(r['memory_mb'], 3)} ({_fmt(r['memory_vs_euclidean'], 3)}×) |"
        )
    return "\n".join(lines) + "\n"


def write_csv(table: list[dict[str, Any]], path: Path) -> None:
    fields = list(dict.fromkeys(key for row in table for key in row))  # extra metrics differ per task
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
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
              + ". Mean ± 95% t-interval over seeds; ↓ lower is better, ↑ higher is better.\n\n"
              f"- **vs euclidean**: Welch's t-test per row; the verdict (better / no different / worse) is decided on "
              f"`p_adj`, the Benjamini–Hochberg adjusted p-value (`scipy.stats.false_discovery_control`) over "
              f"the family of "
              f"all {family_size(table)} comparisons against euclidean in this table (every task, sweep value and "
              f"geometry), at α = {ALPHA}; the raw Welch p follows it.\n"
              "- **geometry − euclidean**: the difference of the means (the effect size) with its 95% Welch confidence "
              "interval (`ttest_ind(equal_var=False).confidence_interval()`).\n"
              f"- **plateau**: `yes` when every seed's headline metric improved by less than {PLATEAU_TOLERANCE:.0%} "
              f"(relative) over the last {PLATEAU_FRACTION:.0%} of its training steps (from the last evaluation at or "
              "before that point to the final one); the worst seed's gain is shown.\n"
              "- Memory: CUDA allocator peak on GPU; on CPU the activations saved for backward in one training step. "
              "Geometry parameters are counted in params (learnable curvature, temperature, metric). "
              "`euclidean` is the "
              "dot product (SDPA); `l2` the squared Euclidean distance, the flat baseline of the distance scores.\n\n")
    md.write_text(header + markdown(table))
    write_csv(table, out_dir / "results.csv")
    written = [md, out_dir / "results.csv"]
    written += plots.curves(records, out_dir)
    written += plots.sweep(records, out_dir)
    written += plots.kernel_speed(kernels, out_dir)
    return written
