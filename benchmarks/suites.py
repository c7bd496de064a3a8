"""Suite configurations: ``quick`` (CPU, minutes), ``standard`` (CPU, hours), ``full`` (GPU scale), and two
targeted ones: ``nouns`` (Nickel & Kiela's Table 1, ≈ 6 h on 2 cores) and ``lm-long`` (the char LM at 2× and 4×
nanoGPT's iterations).

Every geometry of a suite runs the same configuration: same backbone size, batches, steps, optimiser
and learning-rate schedule (one setting, not tuned per geometry). The geometry's own parameters
(curvature, temperature, metric matrix) are learnable (Euclidean has none).
"""
from __future__ import annotations

from typing import Any

from .runner import RunSpec
from .tasks import TASKS

# nanoGPT's optimiser for shakespeare_char (config/train_shakespeare_char.py + train.py defaults)
NANOGPT_OPT = dict(lr=1e-3, min_lr=1e-4, warmup_iters=100, beta2=0.99, weight_decay=0.1, grad_clip=1.0)
GEOMETRY_PARAMS: dict[str, Any] = {"learnable": True}
# Nickel & Kiela's reconstruction through attention scores: Adam (AdamW without weight decay: decay would
# pull the embedding table to the origin), lr 0.01, batch 256, 50 negatives, no clipping
RECON_OPT = dict(lr=1e-2, min_lr=1e-2, warmup_iters=0, beta2=0.999, weight_decay=0.0, grad_clip=0.0)
# ... and one hyperbolic radius for every geometry that can be negatively curved: 20/√|κ|, the Poincaré ball's
# default (Lorentz's attention default is 4; benchmarks/tasks/reconstruction.py says why it does not apply here)
RECONSTRUCTION = dict(RECON_OPT, hyperbolic_radius=20.0)
HEAD_DIMS = (2, 4, 8, 16, 32)
QUICK_HEAD_DIMS = (2, 8, 32)  # the quick and standard suites' budget; full sweeps all of HEAD_DIMS
# wordnet-hierarchy on the carnivore subtree (quick and standard differ in their steps only)
CARNIVORE_HIERARCHY = dict(NANOGPT_OPT, lr=3e-3, min_lr=3e-4, warmup_iters=15, n_layers=1, d_model=32,
                           head_dim=QUICK_HEAD_DIMS, subtree="carnivore.n.01", set_size=8, max_dist=4, test_frac=0.2,
                           split_seed=0, n_train=20000, n_test=1000, batch_size=64)

SUITES: dict[str, dict[str, Any]] = {
    "quick": {
        "seeds": 3,
        "jobs": 2,     # two runs at once, one torch thread each: the 2-core budget
        "threads": 1,
        # wordnet-hierarchy is in standard only: with it (head dims 2, 8, 32) the quick suite took 17 min on 2 idle
        # cores (benchmarks/results/budgets/quick-with-hierarchy-17min at commit 4a4f5bd), and its curves at head
        # dim 32 still rise at 1200 steps, so it cannot be cut to fit 10 min and plateau
        "tasks": ["shakespeare-char", "wordnet-reconstruction"],
        # Budgets from learning curves (benchmarks/README.md, "Budgets"): each task trains to a plateau (the headline
        # metric gains < 2% over the last 20% of the steps); models are small rather than stopped early.
        "configs": {
            # a 1-layer, 32-wide char LM: val loss ≈ 2.2 after 1500 steps, flat at the end
            # (nanoGPT's CPU config: standard)
            "shakespeare-char": dict(NANOGPT_OPT, lr=3e-3, min_lr=3e-4, warmup_iters=20, n_layers=1, n_heads=4,
                                     d_model=32,
                                     block_size=32, max_len=32, batch_size=12, iters=1500, eval_interval=150,
                                     eval_iters=20, bias=False),
            # the carnivore subtree (366 synsets) of the mammal closure: test ≈ train accuracy ≈ 0.9 after 1200 steps
            "wordnet-hierarchy": dict(CARNIVORE_HIERARCHY, iters=1200, eval_interval=120),
            # Nickel & Kiela's mammal closure: 80 epochs of 256-pair batches (25 steps each) at a constant lr 0.01,
            # evaluated every 16 epochs (the last evaluation interval is the criterion's last 20%). Poincaré at d = 5
            # passes the published anchor from ≈ 64 epochs on (mean rank 1.23 at 1632 steps, 1.34 at 1224, 1.16 at
            # 2040); 80 epochs fit in the 10 minutes since the task scores through geoattn.pair_scores (each node
            # lifted once)
            "wordnet-reconstruction": dict(RECONSTRUCTION, dim=(2, 5, 10), n_negatives=50, batch_size=256,
                                           init_range=1e-3, epochs=80, eval_epochs=16),
            "listops": dict(NANOGPT_OPT, lr=1e-3, warmup_iters=20, n_layers=2, n_heads=4, d_model=64, max_len=100,
                            min_length=20, max_length=100, n_train=2000, n_test=500, data_seed=0, batch_size=32,
                            iters=200, eval_interval=100),
            "shakespeare-seq2seq": dict(NANOGPT_OPT, warmup_iters=20, n_layers=2, n_heads=4, d_model=64, line_len=48,
                                        max_len=48, batch_size=32, iters=200, eval_interval=100, eval_pairs=512),
        },
    },
    "standard": {
        "seeds": 3,
        "jobs": 2,
        "threads": 1,
        "tasks": ["shakespeare-char", "wordnet-hierarchy", "wordnet-reconstruction", "listops", "shakespeare-seq2seq"],
        # Sized for ≤ 2 h wall on 2 idle cores (2 runs × 1 thread; measured: benchmarks/results/standard/time.txt);
        # budgets from learning curves (benchmarks/README.md, "Budgets"): the char LM is nanoGPT's CPU configuration,
        # the other tasks are small enough to plateau (the last 20% of steps gain < 2%) inside that time.
        "configs": {
            # nanoGPT's CPU configuration (README "I only have a macbook"): expected val loss ≈ 1.88
            "shakespeare-char": dict(NANOGPT_OPT, n_layers=4, n_heads=4, d_model=128, block_size=64, max_len=64,
                                     batch_size=12, iters=2000, lr_decay_iters=2000, dropout=0.0, bias=False,
                                     eval_interval=250, eval_iters=50),
            # the carnivore subtree (366 synsets) at three head dims, twice the quick budget: Poincaré at head dim 32
            # reaches test 0.98 / train 1.00 by step 1920 and holds it to 2400 (the whole closure needs ≈ 3× the
            # time per run: benchmarks/results/budgets/standard-euclidean)
            "wordnet-hierarchy": dict(CARNIVORE_HIERARCHY, iters=2400, eval_interval=240),
            # 160 epochs of 256-pair batches, d = 2, 5, 10, 20 (at 100 epochs 12 of 28 rows still gained 2-16%:
            # results/budgets/standard-2026-12-01; geoattn.pair_scores made the steps cheap enough for 60% more)
            "wordnet-reconstruction": dict(RECONSTRUCTION, dim=(2, 5, 10, 20), n_negatives=50, batch_size=256,
                                           init_range=1e-3, epochs=160, eval_epochs=32),
            # lengths 20-100 (LRA's are 500-2000: full suite). 600 steps left 6 of 7 rows short of the plateau
            # criterion (results/budgets/standard-listops-600steps); 2000 steps plateau (Euclidean and Poincaré,
            # 3 seeds: results/budgets/standard-probes/listops-2000-3seeds; +20 min of the suite's wall time)
            "listops": dict(NANOGPT_OPT, n_layers=2, n_heads=4, d_model=64, max_len=100,
                            min_length=20, max_length=100, n_train=5000, n_test=2000, data_seed=0, batch_size=32,
                            iters=2000, eval_interval=200),
            # 32-character lines, 16 pairs per batch: Euclidean val loss 1.98 → 1.95 over the last 20% of 1500 steps
            # (64-character lines and 32 pairs plateau too, at 5.7× the time per run)
            "shakespeare-seq2seq": dict(NANOGPT_OPT, n_layers=2, n_heads=4, d_model=64, line_len=32, max_len=32,
                                        batch_size=16, iters=1500, eval_interval=150, eval_pairs=1024),
        },
    },
    "full": {
        "seeds": 5,
        "tasks": ["shakespeare-char", "wordnet-hierarchy", "wordnet-reconstruction", "listops", "shakespeare-seq2seq"],
        "configs": {
            # nanoGPT's GPU configuration: best val loss 1.4697
            "shakespeare-char": dict(NANOGPT_OPT, n_layers=6, n_heads=6, d_model=384, block_size=256, max_len=256,
                                     batch_size=64, iters=5000, lr_decay_iters=5000, dropout=0.2, bias=False,
                                     eval_interval=250, eval_iters=200),
            "wordnet-hierarchy": dict(NANOGPT_OPT, lr=1e-2, min_lr=1e-3, n_layers=3, d_model=64, head_dim=HEAD_DIMS,
                                      subtree=None, set_size=16, max_dist=6, test_frac=0.2, split_seed=0,
                                      n_train=200000,
                                      n_test=5000, batch_size=256, iters=5000, eval_interval=500),
            # ≈ 200 epochs, dims up to Nickel & Kiela's 50
            "wordnet-reconstruction": dict(RECONSTRUCTION, dim=(2, 5, 10, 20, 50), n_negatives=50, batch_size=256,
                                           init_range=1e-3, epochs=200, eval_epochs=20),
            # Long Range Arena lengths (500-2000) and training-set size (96k)
            "listops": dict(NANOGPT_OPT, lr=5e-4, min_lr=5e-5, warmup_iters=1000, n_layers=4, n_heads=8,
                            d_model=512, d_ff=1024, max_len=2000, min_length=500, max_length=2000, n_train=96000,
                            n_test=2000, data_seed=0, batch_size=32, iters=5000, eval_interval=1000),
            "shakespeare-seq2seq": dict(NANOGPT_OPT, n_layers=4, n_heads=8, d_model=256, line_len=96, max_len=96,
                                        batch_size=128, iters=5000, eval_interval=500, eval_pairs=4096),
        },
    },
}


# Nickel & Kiela's Table 1 through attention scores: the noun closure (82,115 synsets, 743,241 pairs). Adam at
# lr 0.01, batch 1,024, 50 negatives, float32, the one hyperbolic radius (RECONSTRUCTION), every geometry the same.
# Calibration (issue #29, a float64 loop outside the project, this recipe): Poincaré d = 10 reached MAP 0.43 / 0.61 /
# 0.67 / 0.70 at 10 / 20 / 30 / 40 epochs, still rising. The learning curve is evaluated every 10 epochs on 2,000
# sampled query nodes (eval_queries); the final evaluation is over every node (a few minutes per run).
NOUNS = dict(RECONSTRUCTION, n_negatives=50, batch_size=1024, init_range=1e-3, dtype="float32", epochs=50,
             eval_epochs=10, eval_queries=2000, eval_block=16)
# nanoGPT's CPU configuration of the standard suite at 1×, 2× and 4× its iterations, the schedule stretched
# (warm-up, cosine decay and evaluation interval scale with the iterations: Task.resolve_budget's "stretch")
LM_LONG = dict(NANOGPT_OPT, n_layers=4, n_heads=4, d_model=128, block_size=64, max_len=64, batch_size=12, iters=2000,
               lr_decay_iters=2000, dropout=0.0, bias=False, eval_interval=250, eval_iters=50, stretch=(1, 2, 4))
SUITES["nouns"] = {
    "seeds": 3,
    "jobs": 2,
    "threads": 1,
    "checkpoint_every": 725,  # one epoch of batches of 1,024 pairs: a killed run loses at most that
    "tasks": ["wordnet-nouns"],
    "geometries": ["euclidean", "euclidean-tau", "l2", "lorentz", "poincare", "stereographic"],
    # Poincaré at d = 5 and 10 with 3 seeds (Table 1's rows), every other geometry at d = 10 with one
    "plan": {g: {"seeds": 1, "sweep": (10,)} for g in ("euclidean", "euclidean-tau", "l2", "lorentz", "stereographic")},
    "configs": {"wordnet-nouns": dict(NOUNS, dim=(5, 10))},
}
SUITES["lm-long"] = {
    "seeds": 3,
    "jobs": 2,
    "threads": 1,
    "checkpoint_every": 500,
    "tasks": ["shakespeare-char"],
    "geometries": ["euclidean", "euclidean-tau", "sphere", "poincare"],
    "configs": {"shakespeare-char": LM_LONG},
}


def build_specs(suite: str, tasks: list[str], geometries: list[str], seeds: list[int],
                data_paths: dict[str, str], configs: dict[str, dict[str, Any]] | None = None,
                plan: dict[str, Any] | None = None) -> list[RunSpec]:
    """All runs: task × sweep value × geometry × seed (seeds innermost, so partial runs give CIs).

    ``configs`` replaces the suite's per-task configs (after ``--set`` overrides); a tuple value is the sweep.
    ``plan`` (a suite's ``"plan"``, see ``nouns``) narrows that grid per geometry: ``{geometry: {"seeds": n,
    "sweep": values}}``, the first ``n`` of ``seeds`` and only those sweep values for that geometry (a geometry
    the plan does not name keeps the grid).
    """
    specs = []
    for task in tasks:
        base = dict((configs or SUITES[suite]["configs"])[task])
        sweep = next((k for k, v in base.items() if isinstance(v, tuple)), None)
        values = base[sweep] if sweep else (None,)
        for value in values:
            config = dict(base, **({sweep: value} if sweep else {}))
            for geometry in geometries:
                rule = (plan or {}).get(geometry, {})
                if sweep and "sweep" in rule and value not in rule["sweep"]:
                    continue
                cfg = dict(config, geometry_params=dict(GEOMETRY_PARAMS))
                cfg = TASKS[task].resolve_budget(cfg, data_paths.get(task))
                specs.extend(RunSpec(task, geometry, seed, cfg, data_paths.get(task), suite)
                             for seed in seeds[:rule.get("seeds", len(seeds))])
    return specs
