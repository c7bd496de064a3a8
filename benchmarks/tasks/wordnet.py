"""``wordnet-hierarchy``: point to the candidate synset nearest to a query synset in the mammal hierarchy.

Input ``[query, c₁, …, c_N]`` (synset tokens) goes through the shared ``Encoder``; the output is an
*attention pointer*: one extra attention head of the same geometry scores the encoded query against
the encoded candidates, ``logits_j = score_geometry(W_q h₀, W_k h_j)``, trained with cross-entropy on
the position of the nearest candidate. The head dimension of the pointer and of every backbone head is
the swept ``head_dim``, so the geometry has to hold the hierarchy in
that many dimensions: the setting where hyperbolic attention is claimed to win. The backbone width
``d_model`` is fixed, so ``n_heads = d_model / head_dim`` and the backbone has the same parameter count at
every head dimension (only the pointer's two ``d_model × head_dim`` projections change).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import MAMMAL_CLOSURE, load_closure, restrict_to_subtree
from .base import Batch, Task
from .scoring import scores
from .wordnet_data import Hierarchy, build_hierarchy, make_examples, split_pairs


@lru_cache(maxsize=2)
def _hierarchy(path: str, subtree: str | None = None) -> Hierarchy:
    return build_hierarchy(restrict_to_subtree(load_closure(path), subtree))


@lru_cache(maxsize=4)
def _examples(path: str, subtree: str | None, max_dist: int, test_frac: float, split_seed: int, set_size: int,
              n_train: int, n_test: int):
    h = _hierarchy(path, subtree)
    split = split_pairs(h, max_dist, test_frac, split_seed)
    rng = np.random.default_rng(split_seed + 1)
    train = make_examples(h, split.train, n_train, set_size, rng)
    test = make_examples(h, split.test, n_test, set_size, rng)
    as_t = lambda ex: tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in ex)  # noqa: E731
    return as_t(train), as_t(test)


class PointerModel(nn.Module):
    """The shared ``Encoder`` plus a one-head pointer attention of the same geometry over the set."""

    def __init__(self, cfg, head_dim: int) -> None:
        super().__init__()
        from geoattn.geometry import geometry_for_module
        from geoattn.models import Encoder

        self.encoder = Encoder(cfg)
        self.w_q = nn.Linear(cfg.d_model, head_dim, bias=cfg.bias)
        self.w_k = nn.Linear(cfg.d_model, head_dim, bias=cfg.bias)
        name = cfg.geometry if isinstance(cfg.geometry, str) else cfg.geometry[0]
        self.pointer_geometry = geometry_for_module(name, 1, head_dim, cfg.geometry_params)

    def forward(self, tokens: Tensor) -> Tensor:
        h = self.encoder(tokens, None)                                  # (B, 1+N, d)
        q = self.w_q(h[:, :1]).unsqueeze(1)                             # (B, 1, 1, hd)
        k = self.w_k(h[:, 1:]).unsqueeze(1)                             # (B, 1, N, hd)
        return scores(self.pointer_geometry, q, k)[:, 0, 0]             # (B, N)


class WordNetHierarchy(Task):
    name = "wordnet-hierarchy"
    data_kind = "closure"
    default_data = MAMMAL_CLOSURE
    metric = "test_acc"
    higher_is_better = True
    curve_metric = "test_acc"
    sweep = "head_dim"

    def __init__(self, config, data_path, device):
        super().__init__(config, data_path, device)
        c = config
        h = _hierarchy(str(self.data_path), c.get("subtree"))
        self.vocab_size = len(h.names)
        self.train, self.test = _examples(str(self.data_path), c.get("subtree"), c["max_dist"], c["test_frac"],
                                          c["split_seed"],
                                          c["set_size"], c["n_train"], c["n_test"])

    def build_model(self, geometry):
        c = self.config
        if c["d_model"] % c["head_dim"]:
            raise ValueError(f"wordnet-hierarchy: d_model={c['d_model']} is not a multiple of "
                             f"head_dim={c['head_dim']}; pick head dims that divide d_model")
        cfg = self.model_config(geometry, n_heads=c["d_model"] // c["head_dim"], max_len=c["set_size"] + 1)
        return PointerModel(cfg, c["head_dim"])

    def _batch(self, split, idx) -> Batch:
        q, cands, y = (t[idx] for t in split)
        tokens = torch.cat([q[:, None], cands], dim=1)                  # (B, 1+N)
        return Batch((tokens.to(self.device), y.to(self.device)), tokens.numel())

    def train_batch(self, gen):
        return self._batch(self.train, torch.randint(len(self.train[0]), (self.config["batch_size"],), generator=gen))

    def loss(self, model, batch):
        tokens, y = batch.tensors
        return F.cross_entropy(model(tokens).float(), y)

    def _accuracy(self, model, split, n: int) -> tuple[float, float]:
        correct, loss = 0, 0.0
        for start in range(0, n, 512):
            tokens, y = self._batch(split, torch.arange(start, min(n, start + 512))).tensors
            logits = model(tokens).float()
            correct += int((logits.argmax(-1) == y).sum())
            loss += F.cross_entropy(logits, y, reduction="sum").item()
        return correct / n, loss / n

    @torch.no_grad()
    def evaluate(self, model):
        """Test accuracy and loss; ``train_acc`` on the first ``n_test`` training examples (a fixed random
        subset of the training set, the test set's size), so under-fitting and failure to generalise can be
        told apart."""
        n = len(self.test[0])
        test_acc, test_loss = self._accuracy(model, self.test, n)
        train_acc, train_loss = self._accuracy(model, self.train, min(n, len(self.train[0])))
        return {"test_acc": test_acc, "test_loss": test_loss, "train_acc": train_acc, "train_eval_loss": train_loss}
