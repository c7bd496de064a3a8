"""A run killed mid-way continues from its last checkpoint and logs what an uninterrupted run logs."""
from __future__ import annotations

import pytest
import torch

from benchmarks import dist
from benchmarks.cli import main
from benchmarks.log import read_log
from benchmarks.runner import RunSpec, train_one
from benchmarks.suites import SUITES
from benchmarks.tasks import TASKS

FOREST = [("a", "r"), ("b", "r"), ("c", "a"), ("c", "r"), ("d", "a"), ("d", "r"), ("e", "b"), ("e", "r"),
          ("f", "s"), ("g", "s"), ("h", "f"), ("h", "s"), ("y", "x")]


class Killed(Exception):
    pass


def _spec(task: str, tmp_path) -> RunSpec:
    if task == "wordnet-nouns":
        path = tmp_path / "forest.tsv"
        path.write_text("".join(f"{c}\t{a}\n" for c, a in FOREST))
        config = dict(SUITES["nouns"]["configs"]["wordnet-nouns"], dim=3, batch_size=4, n_negatives=3, epochs=6,
                      eval_epochs=2, eval_queries=5, geometry_params={"learnable": True})
        return RunSpec(task, "poincare", 0, TASKS[task].resolve_budget(config, path), str(path), "nouns")
    config = dict(SUITES["lm-long"]["configs"]["shakespeare-char"], stretch=1, iters=12, lr_decay_iters=12,
                  warmup_iters=3, eval_interval=4, eval_iters=2, n_layers=1, d_model=16, block_size=16, max_len=16,
                  dropout=0.1, geometry_params={"learnable": True})
    return RunSpec(task, "sphere", 1, TASKS[task].resolve_budget(config, None), None, "lm-long")


@pytest.mark.parametrize("task", ["wordnet-nouns", "shakespeare-char"])
def test_a_killed_run_resumes_from_its_checkpoint_bit_for_bit(task, tmp_path):
    spec = _spec(task, tmp_path)
    iters = spec.config["iters"]
    torch.set_num_threads(1)
    whole = train_one(spec, torch.device("cpu"), dist.DistInfo())
    folder = tmp_path / "checkpoints"
    seen = []

    def kill_after(n):
        seen.append(n)
        if sum(seen) == iters - 2:   # killed two steps before the end, after the checkpoint of step iters - 3
            raise Killed

    with pytest.raises(Killed):
        train_one(spec, torch.device("cpu"), dist.DistInfo(), on_step=kill_after, checkpoints=folder,
                  checkpoint_every=3)
    assert len(list(folder.glob("*.pt"))) == 1
    resumed = train_one(spec, torch.device("cpu"), dist.DistInfo(), checkpoints=folder, checkpoint_every=3)
    assert resumed["resumed_from_step"] == 3 * ((iters - 3) // 3) and whole["resumed_from_step"] == 0
    assert resumed["metrics"] == whole["metrics"] and resumed["curve"] == whole["curve"]
    assert resumed["ddp"]["param_checksums"] == whole["ddp"]["param_checksums"]
    assert resumed["timings"]["tokens"] == whole["timings"]["tokens"]


def test_a_killed_suite_restarts_at_the_run_it_was_in(tmp_path, monkeypatch, capsys):
    """Through the command line: the first run is logged, the second is killed after its checkpoint; the restart
    skips the first, continues the second from its checkpoint and deletes the checkpoint once it is logged."""
    import benchmarks.runner as runner

    forest = tmp_path / "forest.tsv"
    forest.write_text("".join(f"{c}\t{a}\n" for c, a in FOREST))
    argv = ["run", "--suite", "nouns", "--geometries", "euclidean,poincare", "--seeds", "1", "--out", str(tmp_path),
            "--quiet", "--no-report", "--jobs", "1", "--data", f"wordnet-nouns={forest}", "--checkpoint-every", "2",
            *[a for item in ("epochs=2", "eval_epochs=1", "dim=[3]", "batch_size=4", "n_negatives=3")
              for a in ("--set", item)]]
    real = runner.train_one
    calls = []

    def dies_in_the_second_run(spec, device, info, on_step=lambda n: None, **kw):
        calls.append(spec.geometry)
        if len(calls) == 2:
            steps = []

            def kill(n):
                steps.append(n)
                if sum(steps) == 5:
                    raise Killed
            return real(spec, device, info, on_step=kill, **kw)
        return real(spec, device, info, on_step=on_step, **kw)

    monkeypatch.setattr(runner, "train_one", dies_in_the_second_run)
    with pytest.raises(Killed):
        main(argv)
    records, _ = read_log(tmp_path / "results.jsonl")
    assert [r["geometry"] for r in records] == ["euclidean"]
    assert len(list((tmp_path / "checkpoints").glob("*.pt"))) == 1
    monkeypatch.setattr(runner, "train_one", real)
    capsys.readouterr()
    assert main(argv) == 0
    assert "1 run(s) finished, 1 skipped" in capsys.readouterr().out
    records, _ = read_log(tmp_path / "results.jsonl")
    assert [(r["geometry"], r["resumed_from_step"]) for r in records] == [("euclidean", 0), ("poincare", 4)]
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
