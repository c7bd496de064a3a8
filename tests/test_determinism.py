"""Determinism: with the same seed and ``torch.use_deterministic_algorithms(True)``, training and
benchmark runs reproduce bit for bit on CPU."""
from __future__ import annotations

import pytest
import torch

import geoattn
from benchmarks.cli import main
from benchmarks.log import read_log
from geoattn.models import DecoderLM, TransformerConfig
from test_benchmarks_cli import _tiny


@pytest.fixture
def deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(previous)


def train(geometry: str, seed: int, steps: int = 15) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    cfg = TransformerConfig(vocab_size=17, d_model=16, n_heads=2, n_layers=2, max_len=12, dropout=0.1,
                            geometry=geometry, geometry_params={} if geometry == "euclidean" else {"learnable": True})
    model = DecoderLM(cfg)
    opt = geoattn.riemannian_optimizer(model, lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randint(0, 17, (4, 12), generator=g)
        _, loss = model(x[:, :-1], x[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("geometry", geoattn.available_geometries())
def test_training_reproduces_bit_for_bit(deterministic, geometry):
    a, b = train(geometry, 0), train(geometry, 0)
    assert all(torch.equal(a[k], b[k]) for k in a)
    c = train(geometry, 1)
    assert not all(torch.equal(a[k], c[k]) for k in a if a[k].is_floating_point()), "the seed must matter"


def test_benchmark_runs_reproduce_bit_for_bit(deterministic, tmp_path):
    metrics = []
    for out in ("first", "second"):
        argv = ["run", "--tasks", "shakespeare-char,wordnet-hierarchy", "--geometries", "euclidean,poincare",
                "--seeds", "1", "--out", str(tmp_path / out), "--quiet", "--no-report", "--jobs", "1",
                *_tiny("shakespeare-char"), *_tiny("wordnet-hierarchy")]
        assert main(argv) == 0
        records, bad = read_log(tmp_path / out / "results.jsonl")
        assert not bad
        metrics.append(sorted((r["task"], r["geometry"], str(r.get("head_dim")), r["metrics"][r["metric"]],
                               str(r["curve"])) for r in records))
    assert metrics[0] == metrics[1] and len(metrics[0]) == 4
