"""The benchmark command line: clear errors, a tiny smoke run of every task, resume, DDP agreement."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.cli import main
from benchmarks.log import read_log

REPO = Path(__file__).resolve().parent.parent
FOREST = [("a", "r"), ("b", "r"), ("c", "a"), ("c", "r"), ("d", "a"), ("d", "r"), ("e", "b"), ("e", "r"),  # two trees
          ("f", "s"), ("g", "s"), ("h", "f"), ("h", "s"), ("y", "x")]                                 # and a pair
TINY = {  # seconds-long configurations of each task
    "shakespeare-char": ["iters=4", "eval_interval=2", "eval_iters=2", "n_layers=1", "d_model=16", "block_size=16"],
    "wordnet-hierarchy": ["iters=4", "eval_interval=2", "n_train=256", "n_test=64", "head_dim=[2]", "d_model=8"],
    "wordnet-reconstruction": ["epochs=2", "eval_epochs=1", "dim=[2]", "batch_size=2048", "n_negatives=10"],
    "listops": ["iters=3", "eval_interval=2", "n_train=32", "n_test=16", "n_layers=1", "d_model=16",
                "min_length=5", "max_length=30", "max_len=30"],
    "shakespeare-seq2seq": ["iters=3", "eval_interval=2", "n_layers=1", "d_model=16", "eval_pairs=16",
                            "line_len=16", "max_len=16"],
}


def _tiny(task: str) -> list[str]:
    return [arg for item in TINY[task] for arg in ("--set", f"{task}:{item}")]


def _err(capsys, argv) -> str:
    assert main(argv) == 2
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["run", "--tasks", "nope"], "unknown task(s) 'nope'; available tasks: shakespeare-char"),
    (["run", "--geometries", "euclidean,hyperbolic"], "unknown geometry 'hyperbolic'; available geometries: euclidean"),
    (["run", "--tasks", "listops", "--data", "x.txt"], "ambiguous"),
    (["run", "--tasks", "listops", "--data", "listops=x"], "generates its data"),
    (["run", "--seeds", "two"], "--seeds takes a count"),
    (["run", "--tasks", "listops", "--set", "nokey=1"], "no selected task has a config key 'nokey'"),
    (["run", "--tasks", "listops", "--device", "banana"], "is not a torch device"),
    (["report", "--out", "/nonexistent/folder"], "no results log"),
])
def test_cli_errors(capsys, argv, match):
    assert match in _err(capsys, argv)


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if any run would start: the CLI must refuse bad arguments before training."""
    import benchmarks.runner

    def refuse(*args, **kwargs):
        raise AssertionError("training started")
    monkeypatch.setattr(benchmarks.runner, "run_all", refuse)
    monkeypatch.setattr(benchmarks.runner, "train_one", refuse)


HIERARCHY = ["--tasks", "wordnet-hierarchy"]  # in the standard suite; the quick suite does not run it


@pytest.mark.parametrize("argv, match", [
    (["--set", "iters=abc"], "--set 'iters=abc': iters takes an int, got 'abc'; e.g. --set iters="),
    (["--set", "iters=0"], "--set 'iters=0': iters must be an int ≥ 1, got 0"),
    (["--set", "iters=-5"], "iters must be an int ≥ 1, got -5"),
    (["--set", "iters=2.5"], "iters takes an int, got 2.5"),
    (["--set", "batch_size=0"], "batch_size must be an int ≥ 1, got 0"),
    (["--set", "warmup_iters=-1"], "warmup_iters must be an int ≥ 0, got -1"),
    (["--set", "lr=0"], "lr must be a learning rate > 0, got 0"),
    (["--set", "lr=nan"], "lr takes a number, got 'nan'"),
    (["--set", "weight_decay=-0.1"], "weight_decay must be a finite number ≥ 0, got -0.1"),
    (["--set", "bias=1"], "bias takes true or false, got 1"),
    ([*HIERARCHY, "--set", "wordnet-hierarchy:head_dim=[]"],
     "an empty list sweeps nothing, so no run would start; give one value or a non-empty list, e.g. --set "
     "head_dim=[2, 8, 32]"),
    ([*HIERARCHY, "--set", "wordnet-hierarchy:head_dim=[2, 0]"], "head_dim must be an int ≥ 1, got 0"),
    (["--set", "iters=[]"], "an empty list sweeps nothing"),
    ([*HIERARCHY, "--set", "wordnet-hierarchy:iters=[5, 10]"],
     "task 'wordnet-hierarchy' would sweep head_dim, iters, but a run sweeps one key"),
    (["--set", "listops:iters=5"], "--set 'listops:iters=5': task 'listops' is not selected (selected: "
                                   "shakespeare-char, wordnet-reconstruction); add it with --tasks, "
                                   "or drop the 'listops:' "
                                   "prefix"),
    (["--set", "lisops:iters=5"], "unknown task 'lisops'; available tasks: shakespeare-char"),
    (["--jobs", "0"], "argument --jobs: must be ≥ 1, got 0"),
    (["--threads", "0"], "argument --threads: must be ≥ 1, got 0"),
    (["--jobs", "-2"], "argument --jobs: must be ≥ 1, got -2"),
    (["--threads", "two"], "argument --threads: expected an int ≥ 1, got 'two'"),
])
def test_cli_bad_values_are_refused_before_training(capsys, no_training, argv, match):
    assert match in _err(capsys, ["run", "--quiet", *argv])


def test_cli_valid_overrides_are_applied(no_training):
    from benchmarks.cli import parse_overrides
    from benchmarks.suites import SUITES

    configs = {t: dict(SUITES["quick"]["configs"][t]) for t in ("shakespeare-char", "wordnet-hierarchy")}
    parse_overrides(["iters=7", "lr=1", "wordnet-hierarchy:head_dim=4", "shakespeare-char:n_layers=[1, 2]",
                     "warmup_iters=0", "bias=true"], configs)
    assert configs["shakespeare-char"]["iters"] == configs["wordnet-hierarchy"]["iters"] == 7
    assert configs["shakespeare-char"]["lr"] == 1.0 and isinstance(configs["shakespeare-char"]["lr"], float)
    assert configs["wordnet-hierarchy"]["head_dim"] == 4 and configs["shakespeare-char"]["n_layers"] == (1, 2)
    assert configs["shakespeare-char"]["warmup_iters"] == 0 and configs["shakespeare-char"]["bias"] is True


def test_report_writes_the_speed_plot_only_from_its_own_or_given_kernel_results(tmp_path, capsys):
    import shutil

    from benchmarks.cli import RESULTS

    out = tmp_path / "report"
    out.mkdir()
    (out / "results.jsonl").write_bytes((RESULTS / "quick" / "results.jsonl").read_bytes())
    assert main(["report", "--out", str(out)]) == 0
    assert not (out / "speed_vs_length.png").exists()  # the committed kernel results are another folder's
    assert "speed_vs_length" not in capsys.readouterr().out
    assert main(["report", "--out", str(out), "--kernels", str(RESULTS / "kernels" / "kernels.csv")]) == 0
    assert (out / "speed_vs_length.png").exists()
    (out / "speed_vs_length.png").unlink()
    shutil.copy(RESULTS / "kernels" / "kernels.csv", out / "kernels.csv")
    assert main(["report", "--out", str(out)]) == 0
    assert (out / "speed_vs_length.png").exists()


def test_cli_missing_and_malformed_data(capsys, tmp_path):
    err = _err(capsys, ["run", "--tasks", "shakespeare-char", "--data", str(tmp_path / "missing.txt")])
    assert "does not exist" in err and "--data" in err
    bad = tmp_path / "bad.tsv"
    bad.write_text("mammal.n.01 dog.n.01\n")
    err = _err(capsys, ["run", "--tasks", "wordnet-hierarchy", "--data", f"wordnet-hierarchy={bad}"])
    assert "line 1: expected 'child<TAB>ancestor'" in err


def test_cli_kernels_missing_or_present(capsys):
    if (REPO / "benchmarks" / "kernels.py").exists():
        pytest.skip("benchmarks/kernels.py is present; its own tests cover it")
    assert "kernel benchmark" in _err(capsys, ["kernels"])


@pytest.mark.parametrize("task", list(TINY))
def test_smoke_each_task(tmp_path, capsys, task):
    argv = ["run", "--tasks", task, "--geometries", "euclidean,poincare", "--seeds", "2", "--out", str(tmp_path),
            "--quiet", "--jobs", "1", *_tiny(task)]
    assert main(argv) == 0, capsys.readouterr().err
    records, bad = read_log(tmp_path / "results.jsonl")
    assert len(records) == 4 and not bad
    for r in records:
        assert r["task"] == task and r["metrics"][r["metric"]] == r["curve"][-1][r["metric"]]
        assert all(map(lambda v: v == v, r["metrics"].values()))  # no NaN
        assert r["params"]["total"] > 0 and r["timings"]["tokens_per_s"] > 0 and r["git_commit"]
    by_geom = {r["geometry"]: r["params"] for r in records}
    # same backbone: the parameter counts differ only by the geometry's own parameters
    backbone = {g: by_geom[g]["total"] - by_geom[g]["geometry"] for g in ("poincare", "euclidean")}
    assert backbone["poincare"] == backbone["euclidean"]
    table = (tmp_path / "results.md").read_text()
    assert "| poincare |" in table and (tmp_path / "results.csv").exists()
    assert (tmp_path / f"curves_{task}.png").stat().st_size > 1000


def test_resume_skips_finished_and_reruns_truncated(tmp_path, capsys):
    argv = ["run", "--tasks", "wordnet-hierarchy", "--geometries", "euclidean", "--seeds", "3", "--out", str(tmp_path),
            "--quiet", "--no-report", "--jobs", "1", *_tiny("wordnet-hierarchy")]
    assert main(argv) == 0
    log = tmp_path / "results.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    assert len(lines) == 3
    # the process was killed while writing the third record: keep half of it
    log.write_bytes(b"".join(lines[:2]) + lines[2][: len(lines[2]) // 2])
    capsys.readouterr()
    with pytest.warns(UserWarning, match="unreadable"):
        assert main(argv) == 0
    assert "1 run(s) finished, 2 skipped" in capsys.readouterr().out
    with pytest.warns(UserWarning):
        records, bad = read_log(log)
    assert sorted(r["seed"] for r in records) == [0, 1, 2] and bad == [3]
    assert main(argv) == 0  # everything done: nothing runs
    assert "0 run(s) finished, 3 skipped" in capsys.readouterr().out


def test_ddp_two_processes_agree(tmp_path):
    """torchrun with 2 CPU processes (gloo): both ranks end with identical parameters and metrics."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "benchmarks",
           "run", "--tasks", "shakespeare-char", "--geometries", "poincare", "--seeds", "1", "--out", str(tmp_path),
           "--quiet", "--no-report", "--threads", "1", *_tiny("shakespeare-char")]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,), _ = read_log(tmp_path / "results.jsonl")
    ddp = record["ddp"]
    assert ddp["world_size"] == 2 and ddp["agree"]
    assert ddp["param_checksums"][0] == ddp["param_checksums"][1] and ddp["rank_metric"][0] == ddp["rank_metric"][1]
    # each rank trains on its own batches: twice the tokens of one process
    assert record["timings"]["tokens"] == 2 * 4 * record["config"]["batch_size"] * 16


def test_parallel_workers_match_sequential(tmp_path):
    """--jobs 2 (spawned worker processes) logs the same metrics as one process, run for run."""
    base = ["run", "--tasks", "wordnet-hierarchy", "--geometries", "euclidean,sphere", "--seeds", "1", "--quiet",
            "--no-report", "--threads", "1", *_tiny("wordnet-hierarchy")]
    assert main([*base, "--jobs", "1", "--out", str(tmp_path / "seq")]) == 0
    assert main([*base, "--jobs", "2", "--out", str(tmp_path / "par")]) == 0
    seq, _ = read_log(tmp_path / "seq" / "results.jsonl")
    par, _ = read_log(tmp_path / "par" / "results.jsonl")
    assert {r["key"]: r["metrics"] for r in seq} == {r["key"]: r["metrics"] for r in par}
    assert len(par) == 2


def test_throughput_decode_mode_writes_paired_rows(tmp_path, monkeypatch):
    """``throughput --mode decode`` on a tiny shape: one row per batch and geometry, Euclidean's ratio exactly 1,
    tokens per second consistent with the time per token, and generation through the KV cache (the rows'
    backend is the one a one-row decoding call gets)."""
    import csv

    from benchmarks import throughput

    monkeypatch.setitem(throughput.DECODE_SHAPES, "d128", dict(n_layers=1, d_model=16, n_heads=2, prompt=4,
                                                              new_tokens=3))
    rows = throughput.main(["--mode", "decode", "--shapes", "d128", "--threads", "1", "--batch", "1", "2",
                            "--rounds", "2", "--geometries", "euclidean", "poincare", "--out", str(tmp_path)])
    assert [(r["batch"], r["geometry"]) for r in rows] == [(1, "euclidean"), (1, "poincare"), (2, "euclidean"),
                                                          (2, "poincare")]
    for r in rows:
        assert r["tokens_per_s"] == pytest.approx(r["batch"] * 1000 / r["ms_per_token"])
        assert r["new_tokens"] == 3 and r["rounds"] == 2
    assert all(r["vs_euclidean"] == 1.0 for r in rows if r["geometry"] == "euclidean")
    with open(tmp_path / "decode.csv") as f:
        assert len(list(csv.DictReader(f))) == 4
    assert "vs euclidean" in (tmp_path / "decode.md").read_text()


@pytest.mark.parametrize("argv, match", [
    (["--mode", "decode", "--compile"], "--compile times training steps"),
    (["--mode", "decode", "--shapes", "quick"], "takes the shapes"),
    (["--geometries", "poincare"], "must include euclidean"),
])
def test_throughput_refuses_bad_arguments(argv, match):
    from benchmarks import throughput

    with pytest.raises(ValueError, match=match):
        throughput.main(argv)


def test_ddp_two_processes_agree_on_the_nouns_task(tmp_path):
    """The wordnet-nouns task under torchrun (2 CPU processes, gloo), on a small forest closure given with --data:
    identical parameters and metrics on both ranks (each rank evaluates half of the query rows, the sums
    all-reduced), checkpoints written and deleted once the record is logged."""
    forest = tmp_path / "forest.tsv"
    forest.write_text("".join(f"{c}\t{a}\n" for c, a in FOREST))
    sets = ["epochs=2", "eval_epochs=1", "dim=[3]", "batch_size=4", "n_negatives=3", "eval_queries=5"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "benchmarks",
           "run", "--suite", "nouns", "--geometries", "poincare", "--seeds", "1", "--out", str(tmp_path),
           "--quiet", "--no-report", "--threads", "1", "--data", f"wordnet-nouns={forest}", "--checkpoint-every", "2",
           *[arg for item in sets for arg in ("--set", item)]]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,), _ = read_log(tmp_path / "results.jsonl")
    ddp = record["ddp"]
    assert record["task"] == "wordnet-nouns" and ddp["world_size"] == 2 and ddp["agree"]
    assert ddp["rank_metric"][0] == ddp["rank_metric"][1] and record["config"]["iters"] == 6  # 13 pairs // 4 × 2
    assert not list((tmp_path / "checkpoints").glob("*.pt"))            # deleted once the record is logged
    assert 0 < record["metrics"]["map"] <= 1 and [p["step"] for p in record["curve"]] == [3, 6]


def test_nouns_and_lm_long_suites_plan_their_runs():
    """nouns: Poincaré at d = 5 and 10 × 3 seeds, every other geometry at d = 10 × 1 seed, budgets in epochs of the
    noun closure (725 steps of 1,024 pairs); lm-long: the char LM's whole schedule at 1×, 2× and 4×."""
    from benchmarks.suites import SUITES, build_specs

    s = SUITES["nouns"]
    specs = build_specs("nouns", s["tasks"], s["geometries"], [0, 1, 2], {}, plan=s["plan"])
    runs = sorted((r.geometry, r.config["dim"], r.seed) for r in specs)
    assert runs == sorted([("poincare", d, seed) for d in (5, 10) for seed in range(3)]
                          + [(g, 10, 0) for g in ("euclidean", "euclidean-tau", "l2", "lorentz", "stereographic")])
    assert {(r.config["iters"], r.config["eval_interval"]) for r in specs} == {(50 * 725, 10 * 725)}
    assert all(r.data_path is None and r.task == "wordnet-nouns" for r in specs)
    s = SUITES["lm-long"]
    specs = build_specs("lm-long", s["tasks"], s["geometries"], [0, 1, 2], {})
    assert len(specs) == 3 * 4 * 3
    schedules = {(r.config["stretch"], r.config["iters"], r.config["lr_decay_iters"], r.config["warmup_iters"],
                  r.config["eval_interval"]) for r in specs}
    assert schedules == {(k, 2000 * k, 2000 * k, 100 * k, 250 * k) for k in (1, 2, 4)}
