"""Why Lorentz at d = 2 keeps rising: the reconstruction run's learned κ, τ and radii at each evaluation.

Trains one ``wordnet-reconstruction`` run through the runner itself (:func:`benchmarks.runner.train_one`, the
quick suite's config; at ``--lr 0.01``, float32, seed 0 its MAP at each evaluation equals the committed quick
record's), with the task's evaluation extended to report, beside MAP and mean rank: κ, τ and the table's
distances from the origin in curvature units before the clip (``r = radius_per_clip·√|κ|·a``, a = ‖row‖/√d the
tangent norm; Lorentz's exp_o maps a to distance a, Poincaré's to 2a), with the count of rows beyond
``hyperbolic_radius`` (20 unless ``--radius``), where the clip holds them.

    python -m benchmarks.dynamics --geometry lorentz --epochs 640

Its output for that command, and the runs it explains, are in git history (``benchmarks/results/README.md``,
"Evidence commits").
"""
from __future__ import annotations

import argparse
import math

import torch

from benchmarks import dist
from benchmarks.runner import RunSpec, train_one
from benchmarks.suites import GEOMETRY_PARAMS, SUITES
from benchmarks.tasks import TASKS
from benchmarks.tasks.reconstruction import WordNetReconstruction


QUICK_STEPS = 2040  # the quick suite's budget when dynamics.txt was made: 2040 steps of 256 pairs = 80 epochs


class WithDynamics(WordNetReconstruction):
    """The reconstruction task, whose evaluation also reports the geometry's κ, τ and the table's radii."""

    name = "wordnet-reconstruction-dynamics"

    @torch.no_grad()
    def evaluate(self, model, queries=None):
        metrics = super().evaluate(model, queries)
        geometry, table = model.geometry, model.embedding.weight
        kappa = float(geometry.curvature) if hasattr(geometry, "curvature") else 0.0
        per_clip = getattr(geometry, "radius_per_clip", 1.0)
        radius = per_clip * table.norm(dim=1) / math.sqrt(table.shape[1]) * math.sqrt(abs(kappa))
        bound = self.config["hyperbolic_radius"]
        return dict(metrics, kappa=kappa, tau=float(geometry.temperature), r_median=float(radius.median()),
                    r_max=float(radius.max()), beyond=int((radius > bound).sum()))


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

    quick = SUITES["quick"]["configs"]["wordnet-reconstruction"]
    steps = round(QUICK_STEPS * a.epochs / 80)
    cfg = dict(quick, dim=a.dim, dtype=a.dtype, geometry_params=dict(GEOMETRY_PARAMS), iters=steps,
               eval_interval=steps // a.evals)
    if a.radius is not None:
        cfg["hyperbolic_radius"] = a.radius
    if a.lr is not None:
        cfg.update(lr=a.lr, min_lr=a.lr)
    TASKS[WithDynamics.name] = WithDynamics
    record = train_one(RunSpec(WithDynamics.name, a.geometry, a.seed, cfg), torch.device("cpu"), dist.DistInfo())
    bound = cfg["hyperbolic_radius"]
    print(f"{a.geometry} d = {a.dim}, {a.epochs} epochs ({steps} steps), seed {a.seed}, lr {cfg['lr']}, {a.dtype}, "
          f"radius {bound:g}")
    print(f"epoch    MAP  mean rank      κ           τ       r median  r max  rows r > {bound:g}")
    for e in record["curve"]:
        print(f"{80 * e['step'] / QUICK_STEPS:5.0f} {e['map']:6.4f} {e['mean_rank']:10.2f} {e['kappa']:7.2f} "
              f"{e['tau']:11.4g} {e['r_median']:14.2f} {e['r_max']:6.2f} {e['beyond']:12d}")


if __name__ == "__main__":
    main()
