"""The mammal closure in two dimensions: Nickel & Kiela's picture, from the reconstruction task's own training.

Trains the quick suite's ``wordnet-reconstruction`` configuration at ``dim=2`` (80 epochs, seed 0, one thread)
through the runner (:func:`benchmarks.runner.train_one`) for ``poincare``, ``euclidean`` (the dot product) and
``l2`` (the squared distance), saves each final embedding table with its MAP, mean rank and curvature to a
small ``.npz``, and draws the three tables side by side, each node joined to its parent (its deepest ancestor in
the closure), a few synsets labelled. The Poincaré table is drawn twice. First in the unit disk: a row ``w`` is
the tangent vector ``u = w/√E`` at the origin (the scale rule), clipped to ``√|κ|·‖u‖ ≤ clip_radius`` and mapped
with ``exp₀``, ``x = tanh(√|κ|‖u‖)·u/‖u‖`` (the ball of curvature κ scaled by √|κ| to radius 1). Trained with a
learnable κ and the task's radius bound (20 in units of 1/√|κ|), most of the closure sits so far out that the
disk shows it on its boundary; so the second panel keeps each point's direction and draws its hyperbolic distance
from the origin, ``2·√|κ|‖u‖`` in units of 1/√|κ|, as the radius (geodesic polar coordinates, the ``log₀``
picture), where the tree shows. The flat panels show the rows themselves.

    python -m benchmarks.figures --train     # ≈ 1 min per geometry; writes benchmarks/results/figures/
    python -m benchmarks.figures             # redraws docs/assets/mammals-2d.png from the committed .npz
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import torch

from benchmarks import dist
from benchmarks.runner import RunSpec, train_one
from benchmarks.suites import GEOMETRY_PARAMS, SUITES
from benchmarks.tasks import TASKS
from benchmarks.tasks.reconstruction import WordNetReconstruction, _closure

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT / "benchmarks" / "results" / "figures" / "mammals-2d.npz"
PNG = ROOT / "docs" / "assets" / "mammals-2d.png"
GEOMETRIES = ("poincare", "euclidean", "l2")
PANELS = ("poincare", "poincare-log", "euclidean", "l2")
TITLES = {"poincare": "Poincaré disk", "poincare-log": "Poincaré: direction and hyperbolic distance from 0",
          "euclidean": "dot product (SDPA's score)", "l2": "squared distance (l2)"}
LABELS = ("mammal.n.01", "carnivore.n.01", "primate.n.02", "ungulate.n.01", "rodent.n.01", "canine.n.02",
          "feline.n.01", "whale.n.02", "bat.n.01", "dog.n.01")


class _Capture(WordNetReconstruction):
    """The reconstruction task, whose evaluation also keeps the table and the geometry's κ and clip."""

    name = "wordnet-reconstruction-capture"
    final: dict = {}

    @torch.no_grad()
    def evaluate(self, model, queries=None):
        metrics = super().evaluate(model, queries)
        geometry = model.geometry
        _Capture.final = dict(table=model.embedding.weight.detach().double().numpy().copy(),
                              kappa=float(geometry.curvature) if hasattr(geometry, "curvature") else 0.0,
                              clip=float(getattr(geometry, "clip_radius", None) or math.inf), **metrics)
        return metrics


def parents(ancestors: np.ndarray) -> np.ndarray:
    """Each node's deepest ancestor (the one with the most ancestors of its own), -1 for the root."""
    depth = ancestors.sum(axis=1)
    return np.array([int(np.flatnonzero(row)[np.argmax(depth[row])]) if row.any() else -1 for row in ancestors])


def train(geometry: str, seed: int = 0) -> dict:
    """One quick-suite reconstruction run at d = 2; returns the final table, κ, clip, MAP and mean rank."""
    cfg = dict(SUITES["quick"]["configs"]["wordnet-reconstruction"], dim=2, geometry_params=dict(GEOMETRY_PARAMS))
    cfg = WordNetReconstruction.resolve_budget(cfg, None)                  # its epochs → steps
    TASKS[_Capture.name] = _Capture
    record = train_one(RunSpec(_Capture.name, geometry, seed, cfg), torch.device("cpu"), dist.DistInfo())
    return dict(_Capture.final, git=record.get("git_commit", ""))


def export(path: Path = NPZ) -> None:
    """Train the three 2-D models one after the other and save them to ``path``."""
    torch.set_num_threads(1)
    closure = _closure(str(WordNetReconstruction.default_data))
    out: dict[str, np.ndarray] = {"names": np.array(closure.names), "parent": parents(closure.dense())}
    for g in GEOMETRIES:
        r = train(g)
        print(f"{g}: MAP {r['map']:.4f}, mean rank {r['mean_rank']:.2f}, κ {r['kappa']:.3g}")
        out.update({f"{g}_table": r["table"], f"{g}_kappa": np.array(r["kappa"]), f"{g}_clip": np.array(r["clip"]),
                    f"{g}_map": np.array(r["map"]), f"{g}_mean_rank": np.array(r["mean_rank"]),
                    f"{g}_git": np.array(str(r["git"]))})
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **out)


def disk_points(table: np.ndarray, kappa: float, clip: float, log: bool = False) -> np.ndarray:
    """Rows of a Poincaré table (tangent vectors ×√E) → points of the unit disk, or with ``log`` the same
    directions at the hyperbolic distance from the origin (see the module docstring)."""
    u = table / math.sqrt(table.shape[1])
    norm = np.linalg.norm(u, axis=1, keepdims=True)
    r = np.minimum(math.sqrt(abs(kappa)) * norm, clip)
    return (2 * r if log else np.tanh(r)) * u / np.maximum(norm, 1e-300)


def plot(path: Path = NPZ, out: Path = PNG) -> None:
    """Draw the three panels from the saved ``.npz`` into ``out``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = np.load(path)
    names, parent = [str(n) for n in data["names"]], data["parent"]
    fig, axes = plt.subplots(1, 4, figsize=(20, 5.6))
    for ax, panel in zip(axes, PANELS):
        g = panel.split("-")[0]
        table, kappa, clip = data[f"{g}_table"], float(data[f"{g}_kappa"]), float(data[f"{g}_clip"])
        xy = disk_points(table, kappa, clip, log=panel.endswith("log")) if g == "poincare" else table
        note = ""
        if panel == "poincare":
            ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, color="0.3", lw=1))
            ax.set_xlim(-1.05, 1.05)
            ax.set_ylim(-1.05, 1.05)
            note = f"\nκ = {kappa:.0f}; {int((np.linalg.norm(xy, axis=1) > 0.999).sum())} of {len(xy)} at ‖x‖ > 0.999"
        elif panel == "poincare-log":
            bound = 2 * clip
            ax.add_patch(plt.Circle((0, 0), bound, fill=False, color="0.3", lw=1, ls="--"))
            note = f"\nradius bound {bound:g} (dashed)"
        for i, p in enumerate(parent):
            if p >= 0:
                ax.plot(*zip(xy[i], xy[p]), color="0.75", lw=0.3, zorder=1)
        ax.scatter(xy[:, 0], xy[:, 1], s=3, color="tab:blue", zorder=2)
        for j, name in enumerate(n for n in LABELS if n in names):
            i = names.index(name)
            ax.scatter(*xy[i], s=18, color="tab:red", zorder=3)
            ax.annotate(name.split(".")[0], xy[i], xytext=(4, 4 if j % 2 else -10), textcoords="offset points",
                        fontsize=8, zorder=4)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{TITLES[panel]}\nMAP {float(data[f'{g}_map']):.3f}, "
                     f"mean rank {float(data[f'{g}_mean_rank']):.1f}{note}", fontsize=10)
    fig.suptitle("WordNet mammal closure (1,180 synsets) trained in 2 dimensions: the reconstruction task, "
                 "quick budget, seed 0", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=80)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", action="store_true", help="train the three models and rewrite the .npz first")
    p.add_argument("--npz", type=Path, default=NPZ)
    p.add_argument("--out", type=Path, default=PNG)
    a = p.parse_args()
    if a.train:
        export(a.npz)
    plot(a.npz, a.out)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
