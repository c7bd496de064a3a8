"""``report``: the results log → Markdown table, CSV and plots (matplotlib).

Per task (and sweep value) and geometry: the headline metric's mean ± 95% t-interval over seeds, the
difference to each baseline (``euclidean``, and ``euclidean-tau``: the dot product with a learned temperature)
with its Welch 95% CI, Welch's t-test against it with Benjamini–Hochberg adjusted p-values over all
comparisons with that baseline in the report (better / no different / worse
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
# every row is compared with both: the dot product (SDPA) and the dot product with a learned temperature, the
# control for the temperature every curved geometry learns
BASELINES = ("euclidean", "euclidean-tau")
SUFFIXES = ("", "_tau")  # of the comparison columns of each baseline (p_adj, p_adj_tau, ...)
TASK_ORDER = ["shakespeare-char", "wordnet-hierarchy", "wordnet-reconstruction", "wordnet-nouns", "listops",
              "shakespeare-seq2seq"]
EXTRA_METRICS = {  # shown beside the headline metric (mean ± 95% CI)
    "shakespeare-char": ("val_bpc",),
    "wordnet-hierarchy": ("train_acc",),
    "wordnet-reconstruction": ("mean_rank",),
    "wordnet-nouns": ("mean_rank",),
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


def _compare(row: dict[str, Any], suffix: str, name: str, vals: list[float], base_vals: list[float],
             geometry: str) -> None:
    """The columns of one comparison (``suffix`` "" for euclidean, "_tau" for euclidean-tau): the difference of
    the means with its Welch CI, Welch's p, and the verdict filled in after the BH adjustment."""
    compared = geometry != name and bool(base_vals)
    diff, low, high = mean_difference(vals, base_vals) if compared else ("", "", "")
    tag = name.replace("-", "_")
    row.update({
        f"diff_vs_{tag}": diff, f"diff{suffix}_ci95_low": low, f"diff{suffix}_ci95_high": high,
        f"p_vs_{tag}": welch(vals, base_vals) if compared else "", f"p_adj{suffix}": "",
        f"vs_{tag}": "baseline" if geometry == name else ("" if compared else f"n/a (no {name} runs)"),
        f"_base{suffix}": base_vals,
    })


def rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, sweep value, geometry), compared with each of :data:`BASELINES`. ``p_adj`` (against
    euclidean) and ``p_adj_tau`` (against euclidean-tau) are Benjamini–Hochberg adjusted, each over its own family:
    every comparison with that baseline in ``records`` (all tasks and sweep values); the verdicts are based on
    them."""
    out = []
    for (task, sweep_value, _), by_geom in group(records).items():
        base = by_geom.get(BASELINE, [])
        base_tps = np.mean([r["timings"]["tokens_per_s"] for r in base]) if base else math.nan
        base_mem = np.mean([_memory(r) for r in base]) if base else math.nan
        for geometry in sorted(by_geom, key=lambda g: (g not in BASELINES, BASELINES.index(g)
                                                       if g in BASELINES else 0, g)):
            runs = sorted(by_geom[geometry], key=lambda r: r["seed"])
            metric, hib = runs[0]["metric"], runs[0]["higher_is_better"]
            vals = [r["metrics"][metric] for r in runs]
            s = summarize(vals)
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
            for name, suffix in zip(BASELINES, SUFFIXES):
                _compare(row, suffix, name, vals, [r["metrics"][metric] for r in by_geom.get(name, [])], geometry)
            row.update({
                "plateau": plateau, "late_gain_max": worst_gain,
                "params_total": runs[0]["params"]["total"], "params_geometry": runs[0]["params"]["geometry"],
                "tokens_per_s": tps, "speed_vs_euclidean": tps / base_tps if base else math.nan,
                "memory_mb": mem, "memory_vs_euclidean": mem / base_mem if base and base_mem > 0 else math.nan,
                "train_s_mean": float(np.mean([r["timings"]["train_s"] for r in runs])),
                "_values": vals,
            })
            out.append(row)
    for name, suffix in zip(BASELINES, SUFFIXES):
        tag = name.replace("-", "_")
        compared = [r for r in out if isinstance(r[f"p_vs_{tag}"], float)]
        for r, p_adj in zip(compared, bh_adjust([r[f"p_vs_{tag}"] for r in compared])):
            r[f"p_adj{suffix}"] = float(p_adj)
            r[f"vs_{tag}"] = verdict(r["_values"], r[f"_base{suffix}"], r["higher_is_better"], p=float(p_adj))
    for r in out:
        del r["_values"], r["_base"], r["_base_tau"]
    return out


def family_size(table: list[dict[str, Any]], suffix: str = "") -> int:
    """The number of comparisons in a Benjamini–Hochberg family (those with a p-value): against euclidean, or with
    ``suffix="_tau"`` against euclidean-tau."""
    return sum(1 for r in table if isinstance(r[f"p_adj{suffix}"], float) and not math.isnan(r[f"p_adj{suffix}"]))


def _versus(r: dict[str, Any], name: str, suffix: str) -> str:
    """``diff (CI) verdict (p_adj; p)`` of one row against one baseline."""
    tag = name.replace("-", "_")
    diff = r[f"diff_vs_{tag}"]
    if not isinstance(diff, float):
        return r[f"vs_{tag}"]
    p = (f" ({_fmt(r[f'p_adj{suffix}'], 3)}; {_fmt(r[f'p_vs_{tag}'], 3)})"
         if isinstance(r[f"p_adj{suffix}"], float) and not math.isnan(r[f"p_adj{suffix}"]) else "")
    return (f"{diff:+.4g} ({_fmt(r[f'diff{suffix}_ci95_low'], 3)}, {_fmt(r[f'diff{suffix}_ci95_high'], 3)}) "
            f"{r[f'vs_{tag}']}{p}")


def _pm(mean: float, half: float, digits: int = 4) -> str:
    return f"{mean:.{digits}g} ± {_fmt(half, 2)}"


def markdown(table: list[dict[str, Any]]) -> str:
    lines = [
        "| task | sweep | geometry | metric | mean ± 95% CI | seeds | − euclidean (95% CI) verdict (p_adj; Welch p) "
        "| − euclidean-tau (95% CI) verdict (p_adj; Welch p) | plateau (worst last-20% gain) | params (geometry) "
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
        plateau = r["plateau"] + (f" ({100 * r['late_gain_max']:.2g}%)" if not math.isnan(r["late_gain_max"]) else "")
        lines.append(
            f"| {r['task']} | {sweep} | {r['geometry']} | {metric} | {r['mean']:.4f} ± {_fmt(half, 2)}{extra} "
            f"| {r['seeds']} | {_versus(r, 'euclidean', '')} | {_versus(r, 'euclidean-tau', '_tau')} | {plateau} "
            f"| {r['params_total']:,} ({r['params_geometry']}) "
            f"| {r['tokens_per_s']:,.0f} ({r['speed_vs_euclidean']:.2f}×) "
            f"| {_fmt(r['memory_mb'], 3)} ({_fmt(r['memory_vs_euclidean'], 3)}×) |"
        )
    return "\n".join(lines) + "\n"


def persistence(table: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Whether each geometry's difference from a baseline persists, shrinks or vanishes as the schedule is stretched
    (rows swept over ``stretch``: the same schedule at 1×, 2×, 4× the iterations). Per task, geometry and baseline,
    from the shortest budget's difference d₀ to the longest's d₁ (each with its BH-adjusted p):

    * ``no gain to follow``: d₀ is not significant (p_adj ≥ α) or not a gain;
    * ``vanishes``: d₁ is not significant, or not a gain;
    * ``persists``: d₁ is a significant gain at least half of d₀;
    * ``shrinks``: d₁ is a significant gain smaller than half of d₀.
    """
    out = []
    stretched = [r for r in table if r["sweep"] == "stretch"]
    keys = sorted({(r["task"], r["geometry"]) for r in stretched})
    for task, geometry in keys:
        runs = sorted((r for r in stretched if r["task"] == task and r["geometry"] == geometry),
                      key=lambda r: r["sweep_value"])
        for name, suffix in zip(BASELINES, SUFFIXES):
            tag = name.replace("-", "_")
            points = [r for r in runs if isinstance(r[f"diff_vs_{tag}"], float)]
            if len(points) < 2:
                continue
            sign = 1.0 if points[0]["higher_is_better"] else -1.0

            def gain(r):
                p = r[f"p_adj{suffix}"]
                return sign * r[f"diff_vs_{tag}"] if isinstance(p, float) and p < ALPHA and sign * r[
                    f"diff_vs_{tag}"] > 0 else 0.0

            first, last = gain(points[0]), gain(points[-1])
            verdict_ = ("no gain to follow" if first == 0 else "vanishes" if last == 0
                        else "persists" if last >= first / 2 else "shrinks")
            out.append({"task": task, "geometry": geometry, "baseline": name, "verdict": verdict_,
                        "stretch": [r["sweep_value"] for r in points],
                        "diff": [r[f"diff_vs_{tag}"] for r in points],
                        "p_adj": [r[f"p_adj{suffix}"] for r in points]})
    return out


def persistence_markdown(rows_: list[dict[str, Any]]) -> str:
    if not rows_:
        return ""
    lines = ["\n## Does the difference persist with training?\n",
             "Difference from the baseline (geometry − baseline; BH-adjusted p) at each stretch of the schedule; "
             "verdict from the shortest to the longest (`benchmarks.report.persistence`).\n",
             "| task | geometry | baseline | difference at each stretch (p_adj) | verdict |", "|---|---|---|---|---|"]
    for r in rows_:
        cells = ", ".join(f"{s}×: {d:+.4g} ({_fmt(p, 2)})" for s, d, p in zip(r["stretch"], r["diff"], r["p_adj"]))
        lines.append(f"| {r['task']} | {r['geometry']} | {r['baseline']} | {cells} | {r['verdict']} |")
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
              "- **− euclidean**, **− euclidean-tau**: each row against the dot product (SDPA) and against the dot "
              "product with a learned per-head temperature (the control for the temperature every curved geometry "
              "learns): the difference of the means (the effect size) with its 95% Welch confidence interval "
              "(`ttest_ind(equal_var=False).confidence_interval()`), then the verdict (better / no different / worse) "
              f"at α = {ALPHA} on `p_adj`, the Benjamini–Hochberg adjusted p-value "
              "(`scipy.stats.false_discovery_control`) of Welch's t-test, over the family of all comparisons against "
              f"that baseline in this table (every task, sweep value and geometry: {family_size(table)} against "
              f"euclidean, {family_size(table, '_tau')} against euclidean-tau); the raw Welch p follows it.\n"
              f"- **plateau**: `yes` when every seed's headline metric improved by less than {PLATEAU_TOLERANCE:.0%} "
              f"(relative) over the last {PLATEAU_FRACTION:.0%} of its training steps (from the last evaluation at or "
              "before that point to the final one); the worst seed's gain is shown.\n"
              "- Memory: CUDA allocator peak on GPU; on CPU the activations saved for backward in one training step. "
              "Geometry parameters are counted in params (learnable curvature, temperature, metric). "
              "`euclidean` is the "
              "dot product (SDPA); `l2` the squared Euclidean distance, the flat baseline of the distance scores.\n\n")
    md.write_text(header + markdown(table) + persistence_markdown(persistence(table)))
    write_csv(table, out_dir / "results.csv")
    written = [md, out_dir / "results.csv"]
    written += plots.curves(records, out_dir)
    written += plots.sweep(records, out_dir)
    written += plots.kernel_speed(kernels, out_dir)
    return written
