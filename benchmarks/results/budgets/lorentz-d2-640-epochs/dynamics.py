"""Why Lorentz at d = 2 keeps rising: the reconstruction run's learned κ, τ and radii at each evaluation.

Trains one ``wordnet-reconstruction`` run exactly as :func:`benchmarks.runner.train_one` does with the quick
suite's config (same seeding, batches and constant-lr AdamW; at ``--lr 0.01``, float32, seed 0 its MAP at
each evaluation equals the committed quick record's), and prints at every evaluation: MAP, mean rank, κ, τ
and the table's distances from the origin in curvature units before the clip (``r = radius_per_clip·√|κ|·a``,
a = ‖row‖/√d the tangent norm; Lorentz's exp_o maps a to distance a, Poincaré's to 2a), with the count of rows
beyond ``hyperbolic_radius`` = 20, where the clip holds them.

    python benchmarks/results/budgets/lorentz-d2-640-epochs/dynamics.py --geometry lorentz --epochs 640
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[4]))

from benchmarks.runner import make_optimizer  # noqa: E402
from benchmarks.suites import GEOMETRY_PARAMS, SUITES  # noqa: E402
from benchmarks.tasks.reconstruction import WordNetReconstruction  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--geometry", default="lorentz")
    p.add_argument("--dim", type=int, default=2)
    p.add_argument("--epochs", type=int, default=80, help="80 = the quick budget (2040 steps)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="constant lr (default: the suite's, 0.01)")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--evals", type=int, default=5, help="evaluations over the run")
    p.add_argument("--radius", type=float, default=None, help="hyperbolic_radius (default: the suite's, 20)")
    a = p.parse_args()
    torch.set_num_threads(1)

    cfg = dict(SUITES["quick"]["configs"]["wordnet-reconstruction"], dim=a.dim, dtype=a.dtype,
               geometry_params=dict(GEOMETRY_PARAMS))
    if a.radius is not None:
        cfg["hyperbolic_radius"] = a.radius
    if a.lr is not None:
        cfg.update(lr=a.lr, min_lr=a.lr)
    steps = round(cfg["iters"] * a.epochs / 80)                      # the quick suite: 2040 steps = 80 epochs
    task = WordNetReconstruction(cfg, None, torch.device("cpu"))
    torch.manual_seed(a.seed)                                        # as train_one
    model = task.build_model(a.geometry)
    opt = make_optimizer(model, cfg)
    gen = torch.Generator().manual_seed(a.seed * 1000)
    geometry, table = model.geometry, model.embedding.weight
    clip = cfg["hyperbolic_radius"]
    print(f"{a.geometry} d = {a.dim}, {a.epochs} epochs ({steps} steps), seed {a.seed}, lr {cfg['lr']}, {a.dtype}, "
          f"radius {clip:g}")
    print(f"epoch    MAP  mean rank      κ           τ       r median  r max  rows r > {clip:g}")
    for it in range(steps):
        loss = task.loss(model, task.train_batch(gen))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if (it + 1) % (steps // a.evals) == 0:
            model.eval()
            m = task.evaluate(model)
            model.train()
            with torch.no_grad():
                kappa = float(geometry.curvature) if hasattr(geometry, "curvature") else 0.0
                per_clip = getattr(geometry, "radius_per_clip", 1.0)
                radius = per_clip * table.norm(dim=1) / math.sqrt(a.dim) * math.sqrt(abs(kappa))
                print(f"{80 * (it + 1) / cfg['iters']:5.0f} {m['map']:6.4f} {m['mean_rank']:10.2f} {kappa:7.2f} "
                      f"{float(geometry.temperature):11.4g} {float(radius.median()):14.2f} {float(radius.max()):6.2f} "
                      f"{int((radius > clip).sum()):12d}", flush=True)


if __name__ == "__main__":
    main()
