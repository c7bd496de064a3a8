"""The README's headline table, generated from the committed results in ``benchmarks/results/``.

One row per geometry: the positive control (Nickel & Kiela's reconstruction of the mammal closure at d = 5, the
quick suite), the character LM at nanoGPT's CPU configuration (the standard suite), the training-step throughput
(paired ratio to Euclidean, quick shape, one thread) and the fused kernel's forward+backward time at L = 4096 (ratio
to SDPA). Statistics come from :func:`benchmarks.report.rows`, the report's own (mean ± 95% t-interval over
seeds, verdict against Euclidean on the Benjamini–Hochberg adjusted p of the suite's whole table).

    python -m benchmarks.headline            # rewrite the table between the markers in README.md
    python -m benchmarks.headline --check    # exit 1 if README.md's table is not the generated one
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from benchmarks.log import read_log
from benchmarks.report import rows

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
START, END = "<!-- headline:start -->", "<!-- headline:end -->"
GEOMETRIES = ("euclidean", "l2", "lorentz", "metric", "poincare", "sphere", "stereographic")
VERDICT = {"better": " (better)", "worse": " (worse)", "no different": "", "baseline": ""}


def _suite_rows(suite: str, task: str, sweep_value=None) -> dict[str, dict]:
    records, _ = read_log(RESULTS / suite / "results.jsonl", warn=False)
    return {r["geometry"]: r for r in rows(records)
            if r["task"] == task and (sweep_value is None or r["sweep_value"] == sweep_value)}


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(row: dict | None, digits: int) -> str:
    if row is None:
        return "–"
    half = (row["ci95_high"] - row["ci95_low"]) / 2
    return f"{row['mean']:.{digits}f} ± {half:.{digits}f}{VERDICT.get(row['vs_euclidean'], '')}"


def table() -> str:
    """The headline table (Markdown), computed from the committed results."""
    recon = _suite_rows("quick", "wordnet-reconstruction", 5)
    lm = _suite_rows("standard", "shakespeare-char")
    speed = {r["geometry"]: r for r in _csv(RESULTS / "throughput" / "quick" / "throughput.csv")
             if r["threads"] == "1" and r["shape"] == "quick"}
    kernel = {r["geometry"]: r for r in _csv(RESULTS / "kernels" / "kernels.csv")
              if r["L"] == "4096" and r["backend"] in ("native", "sdpa") and (r["geometry"] == "euclidean")
              == (r["backend"] == "sdpa")}
    lines = [
        "| geometry | mammal closure, d = 5: MAP ↑ (quick) | char LM, nanoGPT CPU config: val loss ↓ (standard) "
        "| training steps/s × Euclidean (quick shape, 1 thread) | kernel fwd+bwd time × SDPA (L = 4096) |",
        "|---|---|---|---|---|",
    ]
    for g in GEOMETRIES:
        s, k = speed.get(g), kernel.get(g.replace("sphere", "sphere-cosine"))
        ratio = (f"{float(s['vs_euclidean']):.2f} [{float(s['vs_euclidean_low']):.2f}, "
                 f"{float(s['vs_euclidean_high']):.2f}]") if s else "–"
        fused = f"{float(k['fwdbwd_ratio']):.2f}" if k else "–"
        lines.append(f"| `{g}` | {_cell(recon.get(g), 3)} | {_cell(lm.get(g), 3)} | {ratio} | {fused} |")
    return "\n".join(lines) + "\n"


def splice(text: str, generated: str) -> str:
    """``text`` with the part between the markers replaced by ``generated``."""
    head, sep, rest = text.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise ValueError(f"README.md needs the markers {START} and {END} around the headline table")
    return f"{head}{START}\n{generated}{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if README.md's table differs from the generated one")
    a = p.parse_args(argv)
    text = README.read_text()
    new = splice(text, table())
    if a.check:
        if new != text:
            print("README.md's headline table is stale: run python -m benchmarks.headline", file=sys.stderr)
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
