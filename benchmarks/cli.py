"""``python -m benchmarks``: run a suite, rebuild its report, or run the kernel benchmark.

    python -m benchmarks run --suite quick                      # every geometry, tasks 1-2, 3 seeds
    python -m benchmarks run --suite standard --tasks listops --geometries euclidean,poincare --seeds 5
    python -m benchmarks report --out benchmarks/results/quick
    python -m benchmarks kernels [kernel-benchmark options]
    python -m benchmarks throughput [throughput-benchmark options]
    torchrun --nproc_per_node 2 -m benchmarks run --suite quick  # DistributedDataParallel (gloo on CPU)
    python -m benchmarks run --suite nouns                      # Table 1 of Nickel & Kiela; resumable, ≈ 6 h
    python -m benchmarks run --suite lm-long                    # the char LM at 2× and 4× the iterations
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results"          # committed results (benchmarks/results/SUITE)
RUNS = Path(__file__).resolve().parent.parent / "bench-results"  # default output of `run` (git-ignored)
LOG_NAME = "results.jsonl"


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_seeds(value: str) -> list[int]:
    """``"3"`` → seeds 0, 1, 2; ``"0,5,7"`` → exactly those."""
    try:
        if "," in value:
            return [int(v) for v in _csv(value)]
        n = int(value)
    except ValueError:
        raise ValueError(f"--seeds takes a count (e.g. 3) or a comma-separated list (e.g. 0,1,2), "
                         f"got {value!r}") from None
    if n < 1:
        raise ValueError(f"--seeds must be at least 1, got {n}")
    return list(range(n))


def parse_data(items: list[str], tasks: list[str]) -> dict[str, str]:
    """``--data [TASK=]PATH``: a bare path applies to every selected task that reads a file."""
    from .tasks import TASKS

    paths: dict[str, str] = {}
    file_tasks = [t for t in tasks if TASKS[t].data_kind]
    for item in items:
        task, sep, path = item.partition("=")
        if sep and task in TASKS:
            if not TASKS[task].data_kind:
                raise ValueError(f"--data {item!r}: task {task!r} generates its data and reads no file; "
                                 "drop this --data")
            paths[task] = path
            continue
        kinds = {TASKS[t].data_kind for t in file_tasks}
        if len(kinds) != 1:
            raise ValueError(
                f"--data {item!r} is ambiguous: the selected tasks read {'no' if not kinds else 'different'} "
                "file formats "
                f"({', '.join(file_tasks) or 'none'}); write --data TASK=PATH"
            )
        paths.update({t: item for t in file_tasks})
    return paths


# --set values are checked against the type of the suite's default for the key: a count (int) must be ≥ 1
# unless listed here (≥ 0), a float must be finite and ≥ 0 (the rates and fractions below have tighter bounds)
NONNEGATIVE_INTS = {"warmup_iters", "lr_decay_iters", "split_seed", "data_seed"}
FLOAT_RANGES = {  # key: (low, high, low inclusive, high inclusive, what)
    "lr": (0.0, math.inf, False, False, "a learning rate > 0"),
    "beta2": (0.0, 1.0, True, False, "Adam's beta2 in [0, 1)"),
    "dropout": (0.0, 1.0, True, False, "a dropout probability in [0, 1)"),
    "test_frac": (0.0, 1.0, False, False, "a fraction in (0, 1)"),
}


def _type_name(default: Any) -> str:
    return {bool: "true or false", int: "an int", float: "a number", str: "a string"}.get(type(default),
                                                                                        type(default).__name__)


def check_value(item: str, key: str, value: Any, default: Any) -> Any:
    """One ``--set`` value against the suite's ``default`` for ``key``: the same type (an int is also a float), a
    count ≥ 1 (or ≥ 0, see :data:`NONNEGATIVE_INTS`), a float finite and ≥ 0 (or in its :data:`FLOAT_RANGES`)."""
    if default is None:  # no default to compare with: taken as given
        return value
    fix = f"e.g. --set {key}={json.dumps(default)} (the suite's default)"
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ValueError(f"--set {item!r}: {key} takes {_type_name(default)}, got {value!r}; {fix}")
    if isinstance(default, int) and not isinstance(default, bool):
        low = 0 if key in NONNEGATIVE_INTS else 1
        if value < low:
            raise ValueError(f"--set {item!r}: {key} must be an int ≥ {low}, got {value}; {fix}")
    if isinstance(default, float):
        lo, hi, lo_in, hi_in, what = FLOAT_RANGES.get(key, (0.0, math.inf, True, False, "a finite number ≥ 0"))
        inside = math.isfinite(value) and (value >= lo if lo_in else value > lo) and (value <= hi if hi_in
                                                                                       else value < hi)
        if not inside:
            raise ValueError(f"--set {item!r}: {key} must be {what}, got {value}; {fix}")
        value = float(value)
    return value


def check_override(item: str, key: str, value: Any, default: Any) -> Any:
    """A scalar, or a non-empty list (a sweep), each value checked by :func:`check_value` against the default
    (the default's first value when the suite sweeps the key)."""
    scalar_default = default[0] if isinstance(default, tuple) and default else default
    if isinstance(value, list):
        if not value:
            example = list(default) if isinstance(default, tuple) else [default, default]
            raise ValueError(f"--set {item!r}: an empty list sweeps nothing, so no run would start; give one value "
                             f"or a non-empty list, e.g. --set {key}={json.dumps(example)}")
        return tuple(check_value(item, key, v, scalar_default) for v in value)
    return check_value(item, key, value, scalar_default)


def parse_overrides(items: list[str], configs: dict[str, dict[str, Any]]) -> None:
    """``--set [TASK:]KEY=VALUE`` (VALUE as JSON, else a string; a JSON list sets a sweep) applied in place.

    Every value is checked against the type of the suite's default for the key (see :func:`check_value`),
    a ``TASK:`` prefix must name a selected task, and each task sweeps at most one key."""
    from .tasks import TASKS

    for item in items:
        target, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE or TASK:KEY=VALUE, e.g. --set iters=10")
        task, _, key = target.rpartition(":")
        if task and task not in configs:
            if task in TASKS:
                raise ValueError(f"--set {item!r}: task {task!r} is not selected (selected: {', '.join(configs)}); "
                                 f"add it with --tasks, or drop the {task + ':'!r} prefix")
            raise ValueError(f"--set {item!r}: unknown task {task!r}; available tasks: {', '.join(TASKS)}")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        hits = [t for t in configs if (not task or t == task) and key in configs[t]]
        if not hits:
            raise ValueError(f"--set {item!r}: no selected task has a config key {key!r}; keys: "
                             + "; ".join(f"{t}: {', '.join(sorted(c))}" for t, c in configs.items()))
        for t in hits:
            configs[t][key] = check_override(item, key, parsed, configs[t][key])
    for t, config in configs.items():
        sweeps = [k for k, v in config.items() if isinstance(v, tuple)]
        if len(sweeps) > 1:
            raise ValueError(f"--set: task {t!r} would sweep {', '.join(sweeps)}, but a run sweeps one key; give the "
                             "others one value each")


def positive_int(text: str) -> int:
    """argparse type of ``--jobs`` and ``--threads``: an int ≥ 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int ≥ 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}; leave it out for the suite's default")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="train and evaluate a suite; finished runs are skipped")
    run.add_argument("--suite", default="quick", choices=["quick", "standard", "full", "nouns", "lm-long"],
                     help="nouns: Nickel & Kiela's Table 1 (the WordNet noun closure); lm-long: the char LM at 2× and "
                          "4× nanoGPT's iterations (benchmarks/README.md)")
    run.add_argument("--tasks", type=_csv, default=None, help="comma-separated (default: the suite's tasks)")
    run.add_argument("--geometries", type=_csv, default=None, help="comma-separated (default: all available)")
    run.add_argument("--seeds", default=None, help="a count (3 → seeds 0,1,2) or a list (0,1,2); default: the suite's")
    run.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ... or auto (cuda when available)")
    run.add_argument("--out", type=Path, default=None,
                     help="results folder (default bench-results/SUITE; committed: benchmarks/results/SUITE)")
    run.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH",
                     help="replace a task's data file with another of the same format")
    run.add_argument("--set", action="append", default=[], metavar="[TASK:]KEY=VALUE", dest="overrides",
                     help="override a config value (e.g. --set iters=20, --set wordnet-hierarchy:head_dim=[2,8])")
    run.add_argument("--jobs", type=positive_int, default=None,
                     help="runs trained at once in worker processes (default: the suite's; quick: 2)")
    run.add_argument("--threads", type=positive_int, default=None,
                     help="torch threads per process (default: the suite's; quick: 1, which on 2 shared cores is "
                          "several times faster than 2 for these small models)")
    run.add_argument("--checkpoint-every", type=positive_int, default=None, metavar="STEPS",
                     help="save each run's state every STEPS steps under OUT/checkpoints/, so a killed run continues "
                          "from there (default: the suite's; nouns and lm-long checkpoint, the others do not)")
    run.add_argument("--no-report", action="store_true", help="skip writing the report after the runs")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    rep = sub.add_parser("report", help="rebuild the Markdown table, CSV and plots from a results log")
    rep.add_argument("--out", type=Path, default=RESULTS / "quick", help="folder holding results.jsonl")
    rep.add_argument("--kernels", type=Path, default=None,
                     help="kernel-benchmark results (CSV/JSON) for the speed-vs-length plot (default: OUT/kernels.csv "
                          "if OUT has one; no plot otherwise)")
    sub.add_parser("kernels", help="the fused-kernel benchmark (benchmarks/kernels.py); options pass through",
                   add_help=False)
    sub.add_parser("throughput", help="training throughput of the backbone per geometry (benchmarks/throughput.py); "
                   "options pass through", add_help=False)
    return p


def _device(name: str):
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"--device {name!r} is not a torch device; use cpu, cuda, cuda:N or auto") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda but no CUDA device is available; use --device cpu")
    return device


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    import geoattn

    from . import dist
    from .data import load_closure, load_text
    from .report import build_report
    from .runner import run_all
    from .suites import SUITES, build_specs
    from .tasks import TASKS

    suite = SUITES[args.suite]
    tasks = args.tasks or suite["tasks"]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {', '.join(map(repr, unknown))}; available tasks: {', '.join(TASKS)}")
    geometries = args.geometries or suite.get("geometries") or geoattn.available_geometries()
    unknown = [g for g in geometries if g not in geoattn.available_geometries()]
    if unknown:
        raise ValueError(f"unknown geometr{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))}; "
                         f"available geometries: {', '.join(geoattn.available_geometries())}")
    if "euclidean" not in geometries:
        print("note: euclidean is not among --geometries, so the report has no baseline to compare with")
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(suite["seeds"]))
    configs = {t: copy.deepcopy(suite["configs"][t]) for t in tasks}
    parse_overrides(args.overrides, configs)
    data = parse_data(args.data, tasks)
    loaders = {"text": load_text, "closure": load_closure}
    for t in tasks:  # validate every data file before any training starts
        if TASKS[t].data_kind:
            loaders[TASKS[t].data_kind](data.get(t, TASKS[t].default_data))
    device = _device(args.device)
    threads = args.threads if args.threads is not None else suite.get("threads")
    jobs = args.jobs if args.jobs is not None else suite.get("jobs", 1)
    if threads:
        torch.set_num_threads(threads)
    specs = build_specs(args.suite, tasks, geometries, seeds, data, configs=configs,
                        plan=None if args.seeds else suite.get("plan"))
    info = dist.init(device)
    if device.type == "cuda" and info.enabled:
        device = torch.device("cuda", info.local_rank)
        torch.cuda.set_device(device)
    out = args.out or RUNS / args.suite
    log = out / LOG_NAME
    t0 = time.perf_counter()
    try:
        every = args.checkpoint_every if args.checkpoint_every is not None else suite.get("checkpoint_every")
        outcome = run_all(specs, log, device, info, progress=not args.quiet, jobs=jobs, threads=threads,
                          checkpoint_every=every)
    finally:
        dist.shutdown(info)
    if info.is_main:
        print(f"{len(outcome.done)} run(s) finished, {len(outcome.skipped)} skipped (already in {log}); "
              f"wall time {time.perf_counter() - t0:.1f} s")
        if not args.no_report:
            for path in build_report(log, out, _kernels_path(out, None)):
                print(f"wrote {path}")
    return 0


def _kernels_path(out: Path, given: Path | None) -> Path | None:
    if given is not None:
        if not given.exists():
            raise ValueError(f"--kernels {str(given)!r} does not exist; run `python -m benchmarks kernels` first "
                             "or drop it")
        return given
    for name in ("kernels.csv", "kernels.json", "kernels.jsonl"):  # only OUT's own: never another folder's results
        if (out / name).exists():
            return out / name
    return None


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    log = args.out / LOG_NAME
    if not log.exists():
        raise ValueError(f"no results log at {str(log)!r}; run `python -m benchmarks run --out {args.out}` first")
    for path in build_report(log, args.out, _kernels_path(args.out, args.kernels)):
        print(f"wrote {path}")
    return 0


def cmd_kernels(argv: list[str]) -> int:
    import importlib
    import importlib.util

    if importlib.util.find_spec(f"{__package__}.kernels") is None:
        raise ValueError("the kernel benchmark (benchmarks/kernels.py, from the fused-kernel work) is not in this "
                         "checkout; update to a version that has it")
    kernels = importlib.import_module(f"{__package__}.kernels")
    result = kernels.main(argv)
    return int(result) if isinstance(result, int) else 0


def _exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit so worker processes are stopped too (finished runs are already logged)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "kernels":
            return cmd_kernels(argv[1:])
        if argv and argv[0] == "throughput":
            from . import throughput

            throughput.main(argv[1:])
            return 0
        try:
            args = _parser().parse_args(argv)
        except SystemExit as stop:  # argparse printed its error (or --help) already
            return stop.code if isinstance(stop.code, int) else 2
        return cmd_run(args) if args.command == "run" else cmd_report(args)
    except ValueError as err:  # includes DataError: a clear message, no traceback
        print(f"error: {err}", file=sys.stderr)
        return 2
