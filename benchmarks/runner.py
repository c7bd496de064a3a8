"""Training one run (task × geometry × seed × config) and running a list of them with resume.

Optimisation follows nanoGPT (``train.py``): AdamW with weight decay on ≥2-D tensors only, linear
warm-up then cosine decay from ``lr`` to ``min_lr`` at ``lr_decay_iters``, gradient clipping. Every
geometry gets exactly the same optimiser, schedule, batches (seeded by seed and rank) and token budget.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import torch

from . import dist
from .log import append_record, finished_keys, run_key
from .memory import CudaPeak, saved_activation_mb
from .tasks import TASKS

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RunSpec:
    task: str
    geometry: str
    seed: int
    config: dict[str, Any]
    data_path: str | None = None
    suite: str = "custom"

    @property
    def key(self) -> str:
        cfg = dict(self.config, data=str(self.data_path) if self.data_path else None)
        return run_key(self.task, self.geometry, self.seed, cfg)


def lr_at(it: int, c: dict[str, Any]) -> float:
    """nanoGPT's ``get_lr``: linear warm-up, cosine decay to ``min_lr``, then constant."""
    lr, min_lr, warmup = c["lr"], c.get("min_lr", c["lr"] / 10), c.get("warmup_iters", 0)
    decay = c.get("lr_decay_iters", c["iters"])
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay:
        return min_lr
    ratio = (it - warmup) / max(1, decay - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def make_optimizer(model: torch.nn.Module, c: dict[str, Any]) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": c.get("weight_decay", 0.1)},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=c["lr"], betas=(0.9, c.get("beta2", 0.99)))


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(  # code changes only: results being written don't make a run "dirty"
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!benchmarks/results"],
            cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import numpy
    import scipy

    import geoattn

    return {"python": platform.python_version(), "torch": torch.__version__, "geoattn": geoattn.__version__,
            "numpy": numpy.__version__, "scipy": scipy.__version__}


def _checkpoint_path(folder: Path, spec: RunSpec, info: dist.DistInfo) -> Path:
    return folder / f"{spec.key}.rank{info.rank}of{info.world_size}.pt"


def _save(path: Path, state: dict[str, Any]) -> None:
    """``torch.save`` to a temporary file, then an atomic rename: a kill leaves the previous checkpoint whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _resume_step(path: Path | None, info: dist.DistInfo) -> dict[str, Any] | None:
    """This rank's checkpoint when every rank has one of the same step (else None: the run starts afresh)."""
    state = None
    if path is not None and path.exists():
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError):
            state = None
    steps = dist.gather(float(state["step"]) if state else -1.0, info)
    return state if min(steps) == max(steps) >= 0 else None


def train_one(spec: RunSpec, device: torch.device, info: dist.DistInfo,
              on_step: Callable[[int], None] = lambda n: None, checkpoints: Path | None = None,
              checkpoint_every: int | None = None) -> dict[str, Any]:
    """Train and evaluate one run; returns its results record (identical metrics on every rank).

    With ``checkpoints`` (a folder) and ``checkpoint_every`` (steps), the run's whole state (model, optimiser,
    batch generator, torch RNG, the task's batch stream, curve, timings so far) is saved every that many steps,
    per rank, and a run that finds its checkpoint continues from it: the record is the one an uninterrupted
    run gives (the timings add the stretches). The checkpoint is deleted once the record exists."""
    from geoattn.models import count_parameters

    c = spec.config
    cpu0, wall0 = time.process_time(), time.perf_counter()  # the whole run: data, model, training, evaluation
    task = TASKS[spec.task](c, spec.data_path, device)
    torch.manual_seed(spec.seed)
    model = task.build_model(spec.geometry).to(device)
    params = count_parameters(model)
    ddp_model = dist.wrap(model, info, device)
    opt = make_optimizer(model, c)
    gen = torch.Generator().manual_seed(spec.seed * 1000 + info.rank)
    curve, train_s, eval_s, tokens, running = [], 0.0, 0.0, 0, []
    eval_every = c.get("eval_interval", c["iters"])
    path = _checkpoint_path(checkpoints, spec, info) if checkpoints is not None and checkpoint_every else None
    state, start, activation_mb, before = _resume_step(path, info), 0, float("nan"), {"cpu_s": 0.0, "run_s": 0.0}
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        torch.set_rng_state(state["torch_rng"])
        task.load_state(state["task"])
        start, curve, running, activation_mb, before = state["step"], state["curve"], state["running"], \
            state["activation_mb"], state["elapsed"]
        train_s, eval_s, tokens = state["train_s"], state["eval_s"], state["tokens"]
        on_step(start)

    def evaluate(step: int) -> dict[str, float]:
        nonlocal eval_s
        t0 = time.perf_counter()
        model.eval()
        metrics = task.evaluate(model) if step == c["iters"] else task.evaluate_during(model)
        model.train()
        eval_s += time.perf_counter() - t0
        train_loss = sum(running) / len(running) if running else float("nan")
        curve.append({"step": step, "train_loss": train_loss, **metrics})
        running.clear()
        return metrics

    with CudaPeak(device) as mem:
        model.train()
        for it in range(start, c["iters"]):
            t0 = time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(it, c)
            batch = task.train_batch(gen)
            if it == 0:  # count the activations saved for backward once (same batch shape every step)
                loss, activation_mb = saved_activation_mb(lambda: task.loss(ddp_model, batch))
            else:
                loss = task.loss(ddp_model, batch)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if c.get("grad_clip", 1.0):
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.get("grad_clip", 1.0))
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            train_s += time.perf_counter() - t0
            tokens += batch.tokens
            running.append(loss.item())
            if not math.isfinite(running[-1]):
                raise FloatingPointError(
                    f"{spec.task}/{spec.geometry}/seed {spec.seed}: training loss became {running[-1]} at step {it}; "
                    "lower lr in the suite config or check the geometry's parameters"
                )
            if (it + 1) % eval_every == 0 and it + 1 < c["iters"]:
                evaluate(it + 1)
            if path is not None and (it + 1) % checkpoint_every == 0 and it + 1 < c["iters"]:
                elapsed = {"cpu_s": before["cpu_s"] + time.process_time() - cpu0,
                           "run_s": before["run_s"] + time.perf_counter() - wall0}
                _save(path, {"step": it + 1, "model": model.state_dict(), "opt": opt.state_dict(),
                             "gen": gen.get_state(), "torch_rng": torch.get_rng_state(), "task": task.state(),
                             "curve": curve, "running": running, "activation_mb": activation_mb,
                             "train_s": train_s, "eval_s": eval_s, "tokens": tokens, "elapsed": elapsed})
            on_step(1)
        final = evaluate(c["iters"])
    sweep = "stretch" if "stretch" in c else task.sweep  # a stretched schedule is swept over its factor
    world_tokens = sum(dist.gather(float(tokens), info))
    checksums = dist.gather(dist.param_checksum(model), info)
    rank_metric = dist.gather(final[task.metric], info)
    return {
        "key": spec.key, "suite": spec.suite, "task": spec.task, "geometry": spec.geometry, "seed": spec.seed,
        "config": c, "data": str(spec.data_path) if spec.data_path else None, "sweep": sweep,
        "sweep_value": c.get(sweep) if sweep else None,
        "metric": task.metric, "higher_is_better": task.higher_is_better, "metrics": final, "curve": curve,
        "params": params,
        "timings": {"train_s": train_s, "eval_s": eval_s, "cpu_s": before["cpu_s"] + time.process_time() - cpu0,
                    "run_s": before["run_s"] + time.perf_counter() - wall0, "tokens": world_tokens,
                    "tokens_per_s": world_tokens / train_s, "ms_per_step": 1000 * train_s / c["iters"]},
        "memory": {"activation_mb": activation_mb, "cuda_peak_mb": mem.peak_mb},
        "ddp": {"world_size": info.world_size, "param_checksums": checksums, "rank_metric": rank_metric,
                "agree": max(checksums) - min(checksums) == 0.0},
        "resumed_from_step": start,
        "device": str(device), "threads": torch.get_num_threads(), "host": platform.node(),
        "versions": _versions(), "git_commit": _git_commit(),
        "finished_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


@dataclass
class RunOutcome:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    wall_s: float = 0.0


_QUEUE = None  # a worker process's progress queue (set by _init_worker)


def _init_worker(queue, threads: int | None) -> None:
    global _QUEUE
    _QUEUE = queue
    if threads:
        torch.set_num_threads(threads)


def _work(spec: RunSpec, device: str, checkpoints: Path | None, checkpoint_every: int | None) -> dict[str, Any]:
    return train_one(spec, torch.device(device), dist.DistInfo(), on_step=_QUEUE.put, checkpoints=checkpoints,
                     checkpoint_every=checkpoint_every)


def _forget(checkpoints: Path | None, spec: RunSpec) -> None:
    """Delete a logged run's checkpoint (a worker process's run: one rank)."""
    if checkpoints is not None:
        for path in checkpoints.glob(f"{spec.key}.rank*.pt"):
            path.unlink(missing_ok=True)


def run_all(specs: list[RunSpec], log_path: Path, device: torch.device, info: dist.DistInfo,
            progress: bool = True, jobs: int = 1, threads: int | None = None,
            checkpoint_every: int | None = None) -> RunOutcome:
    """Run every spec not already in the log; each finished run is appended (and fsync-ed) at once.

    A killed suite restarts at the first run without a record; with ``checkpoint_every`` (steps) a run also
    saves its state that often under ``LOG_FOLDER/checkpoints/`` and a restarted run continues from its last
    checkpoint (:func:`train_one`). ``jobs > 1`` trains that many runs at once in worker processes (``threads``
    torch threads each); only this process writes the log, so crash safety is the same.
    """
    from tqdm.auto import tqdm

    outcome, t0 = RunOutcome(), time.perf_counter()
    done = dist.broadcast_object(finished_keys(log_path) if info.is_main else None, info)
    pending = [s for s in specs if s.key not in done]
    outcome.skipped = [s.key for s in specs if s.key in done]
    bar = tqdm(total=sum(s.config["iters"] for s in pending), unit="step",  # a resumed run adds its steps at once
               disable=not (progress and info.is_main),
               desc=f"{len(pending)} runs ({len(outcome.skipped)} done before)",
               smoothing=0.05)

    def label(i: int, spec: RunSpec) -> str:
        key = TASKS[spec.task].sweep
        sweep = f" {key}={spec.config[key]}" if key in spec.config else ""
        return f"run {i + 1}/{len(pending)}: {spec.task} {spec.geometry}{sweep} seed={spec.seed}"

    checkpoints = log_path.parent / "checkpoints" if checkpoint_every else None
    with bar:
        if jobs > 1 and not info.enabled and len(pending) > 1:
            _run_parallel(pending, log_path, device, jobs, threads, bar, label, outcome, checkpoints,
                          checkpoint_every)
        else:
            for i, spec in enumerate(pending):
                bar.set_postfix_str(label(i, spec))
                record = train_one(spec, device, info, on_step=bar.update, checkpoints=checkpoints,
                                   checkpoint_every=checkpoint_every)
                if info.is_main:
                    append_record(log_path, record)
                dist.barrier(info)
                if checkpoints is not None:  # each rank its own (its file may be on its own machine)
                    _checkpoint_path(checkpoints, spec, info).unlink(missing_ok=True)
                outcome.done.append(spec.key)
    outcome.wall_s = time.perf_counter() - t0
    return outcome


def _run_parallel(pending, log_path, device, jobs, threads, bar, label, outcome, checkpoints,
                  checkpoint_every) -> None:
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    pool = ctx.Pool(jobs, initializer=_init_worker, initargs=(q, threads), maxtasksperchild=None)
    try:
        waiting = {pool.apply_async(_work, (spec, str(device), checkpoints, checkpoint_every)): (i, spec)
                   for i, spec in enumerate(pending)}
        while waiting:
            try:
                bar.update(q.get(timeout=0.5))
                while True:
                    bar.update(q.get_nowait())
            except queue_mod.Empty:
                pass
            for res in [r for r in waiting if r.ready()]:
                i, spec = waiting.pop(res)
                append_record(log_path, res.get())  # a failed run raises here, after the others' records
                _forget(checkpoints, spec)
                outcome.done.append(spec.key)
                bar.set_postfix_str(f"finished {label(i, spec)}")
        pool.close()
    finally:
        pool.terminate()  # on an error or a kill, stop the workers too (finished runs are already logged)
        pool.join()
