"""Training stability: 500 steps of DecoderLM at a high learning rate (3e-3) for every geometry, no NaN.

Character-level Tiny Shakespeare (the benchmark's data), a small model, Adam at lr 3e-3 without warm-up
or clipping (deliberately harsh), loss checked finite at every step and lower at the end.
"""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import geoattn
from geoattn.models import DecoderLM, TransformerConfig

DATA = Path(__file__).resolve().parents[1] / "benchmarks" / "data" / "tinyshakespeare" / "input.txt"
STEPS, BLOCK, BATCH = 500, 32, 8


@pytest.fixture(scope="module")
def corpus() -> torch.Tensor:
    text = DATA.read_text()[:200_000]
    vocab = sorted(set(text))
    return torch.tensor([vocab.index(c) for c in text], dtype=torch.long), len(vocab)


@pytest.mark.slow
@pytest.mark.parametrize("geometry", geoattn.available_geometries())
def test_500_steps_at_lr_3e_3_without_nan(corpus, geometry):
    data, vocab = corpus
    torch.manual_seed(0)
    params = {} if geometry == "euclidean" else {"learnable": True}
    model = DecoderLM(TransformerConfig(vocab_size=vocab, d_model=32, n_heads=2, n_layers=2, max_len=BLOCK,
                                        geometry=geometry, geometry_params=params))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)
    losses = []
    for step in range(STEPS):
        start = torch.randint(0, len(data) - BLOCK - 1, (BATCH,), generator=g)
        x = torch.stack([data[s:s + BLOCK] for s in start])
        y = torch.stack([data[s + 1:s + BLOCK + 1] for s in start])
        _, loss = model(x, y)
        assert torch.isfinite(loss), f"{geometry}: loss {loss.item()} at step {step}"
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    for p in model.parameters():
        assert torch.isfinite(p).all()
    last = sum(losses[-20:]) / 20
    assert abs(losses[0] - math.log(vocab)) < 0.3 and last < losses[0] - 1.2, (geometry, losses[0], last)
