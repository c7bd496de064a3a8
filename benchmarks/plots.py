"""Plots of the report: learning curves (training loss and held-out metric) with 95% CI bands, the headline
metric vs the swept dimension, kernel speed vs sequence length (when kernel-benchmark results exist)."""
from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _band(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and 95% t half-width over axis 0 (seeds)."""
    from scipy import stats

    mean = values.mean(0)
    if len(values) < 2:
        return mean, np.zeros_like(mean)
    return mean, stats.sem(values, axis=0) * stats.t.ppf(0.975, len(values) - 1)


def _colors(geometries) -> dict[str, Any]:
    """One colour per geometry, the same in every panel and figure."""
    cmap = _plt().get_cmap("tab10")
    return {g: cmap(i % 10) for i, g in enumerate(sorted(geometries))}


def _line(ax, runs: list[dict[str, Any]], key: str, color, **kwargs) -> None:
    """Mean ± 95% CI band over seeds of the curve entry ``key``."""
    steps = [p["step"] for p in runs[0]["curve"]]
    ys = np.array([[p.get(key, math.nan) for p in r["curve"]] for r in runs if len(r["curve"]) == len(steps)],
                  dtype=float)
    if not ys.size or np.isnan(ys).all():
        return
    mean, half = _band(ys)
    ax.plot(steps, mean, color=color, **kwargs)
    ax.fill_between(steps, mean - half, mean + half, color=color, alpha=0.15)


def _config_labels(records: list[dict[str, Any]]) -> dict[str, str]:
    """``{config json: "key=value, ..."}`` naming what differs between the configurations of one task's runs
    (empty when they share one configuration)."""
    configs = {json.dumps(_base_config(r), sort_keys=True): _base_config(r) for r in records}
    differ = sorted({k for c in configs.values() for k in c
                     if len({json.dumps(o.get(k)) for o in configs.values()}) > 1})
    return {key: ", ".join(f"{k}={c.get(k)}" for k in differ) for key, c in configs.items()}


def _base_config(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record["config"].items() if k not in ("geometry_params", record.get("sweep"))}


def curves(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """One figure per task, a column per sweep value (and configuration, when a log holds several): training
    loss (top) and the headline metric on held-out data (bottom; for ``wordnet-hierarchy`` also the training
    accuracy, dashed), a line per geometry."""
    plt = _plt()
    by_task: dict[str, dict] = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in records:
        config = json.dumps(_base_config(r), sort_keys=True)
        by_task[r["task"]][(r.get("sweep_value"), config)][r["geometry"]].append(r)
    colors = _colors({r["geometry"] for r in records})
    written = []
    for task, panels in by_task.items():
        labels = _config_labels([r for r in records if r["task"] == task])
        keys = sorted(panels, key=lambda v: (v[0] or 0, v[1]))
        fig, axes = plt.subplots(2, len(keys), figsize=(4.2 * len(keys), 6.4), squeeze=False, sharex="col")
        for col, (value, config) in enumerate(keys):
            top, bottom = axes[0][col], axes[1][col]
            for geometry, runs in sorted(panels[(value, config)].items()):
                metric = runs[0]["metric"]
                _line(top, runs, "train_loss", colors[geometry], label=geometry)
                _line(bottom, runs, metric, colors[geometry], label=geometry)
                if task == "wordnet-hierarchy":
                    _line(bottom, runs, "train_acc", colors[geometry], linestyle="--")
            top.set_ylabel("training loss (mean over the interval)")
            bottom.set_ylabel(metric + (" (solid) / train_acc (dashed)" if task == "wordnet-hierarchy" else ""))
            bottom.set_xlabel("training step")
            sweep_key = runs[0]["sweep"]
            title = f"{task}" + (f", {sweep_key}={value}" if value is not None else "")
            top.set_title(title + (f"\n{labels[config]}" if labels[config] else ""), fontsize=9)
            for ax in (top, bottom):
                ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"curves_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def sweep(records: list[dict[str, Any]], out_dir: Path) -> list[Path]:
    """Headline metric vs the swept config value (head dimension, embedding dimension), mean ± 95% CI per
    geometry."""
    plt = _plt()
    written = []
    colors = _colors({r["geometry"] for r in records})
    for task in sorted({r["task"] for r in records if r.get("sweep")}):
        runs = [r for r in records if r["task"] == task]
        metric = runs[0]["metric"]
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for geometry in sorted({r["geometry"] for r in runs}):
            by_value = defaultdict(list)
            for r in runs:
                if r["geometry"] == geometry:
                    by_value[r["sweep_value"]].append(r["metrics"][metric])
            xs = sorted(by_value)
            stats = [_band(np.array(by_value[x])[:, None]) for x in xs]
            ax.errorbar(xs, [m[0] for m, _ in stats], yerr=[h[0] for _, h in stats], marker="o", capsize=3,
                        label=geometry, color=colors[geometry])
        ax.set_xscale("log", base=2)
        values = sorted({r["sweep_value"] for r in runs})
        ax.set_xticks(values, [str(v) for v in values])
        ax.set_xlabel(runs[0]["sweep"])
        ax.set_ylabel(f"{metric} (mean ± 95% CI)")
        ax.set_title(task)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = out_dir / f"sweep_{task}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


_LENGTH = ("length", "seq_len", "L", "seq_length")
# kernels.csv: fwd+bwd × SDPA
_RATIO = ("fwdbwd_ratio", "ratio_to_sdpa", "time_ratio", "ratio", "time_vs_sdpa", "x_sdpa")


def _kernel_rows(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".csv":
        with open(path) as fh:
            return list(csv.DictReader(fh))
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    data = json.loads(text)
    return data if isinstance(data, list) else data.get("results", [])


def kernel_speed(kernels: Path | None, out_dir: Path) -> list[Path]:
    """Time relative to SDPA vs sequence length, per geometry (and pass/backend when present)."""
    if kernels is None or not kernels.exists():
        return []
    rows = _kernel_rows(kernels)
    length_key = next((k for k in _LENGTH if rows and k in rows[0]), None)
    ratio_key = next((k for k in _RATIO if rows and k in rows[0]), None)
    if not rows or length_key is None or ratio_key is None or "geometry" not in rows[0]:
        print(f"report: {kernels} has no geometry/length/ratio columns; skipped the speed plot")
        return []
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    lines = defaultdict(list)
    for r in rows:
        label = " ".join(str(r[k]) for k in ("geometry", "backend", "pass") if k in r)
        value = float(r[ratio_key])
        if math.isfinite(value):
            lines[label].append((float(r[length_key]), value))
    for label, pts in sorted(lines.items()):
        pts.sort()
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length")
    ax.set_ylabel(f"time / SDPA ({ratio_key})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    fig.tight_layout()
    path = out_dir / "speed_vs_length.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]
