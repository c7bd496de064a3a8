"""ListOps (Long Range Arena) with ``EncoderClassifier``: 10-way classification of the expression's value."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F

from . import listops_gen
from .base import Batch, Task

PAD, CLS = 0, 1


@lru_cache(maxsize=4)
def _dataset(n: int, min_length: int, max_length: int, seed: int, max_depth: int, max_args: int):
    examples = listops_gen.generate(n, min_length, max_length, seed, max_depth, max_args)
    x = torch.full((n, max_length), PAD, dtype=torch.long)  # [CLS] + tokens (< max_length of them)
    for i, (tokens, _) in enumerate(examples):
        x[i, : len(tokens) + 1] = torch.tensor([CLS, *listops_gen.encode(tokens)])
    y = torch.tensor([label for _, label in examples])
    return x, y


class ListOps(Task):
    """Examples drawn once per configuration (``data_seed``): ``n_train`` for training, ``n_test`` distinct
    others for the test accuracy. LRA reports 36.37% for a vanilla Transformer at lengths 500–2000."""

    name = "listops"
    metric = "test_acc"
    higher_is_better = True
    curve_metric = "test_acc"
    vocab_size = len(listops_gen.VOCAB)

    def __init__(self, config, data_path, device):
        super().__init__(config, data_path, device)
        c = config
        x, y = _dataset(c["n_train"] + c["n_test"], c["min_length"], c["max_length"], c["data_seed"],
                        c.get("max_depth", 10), c.get("max_args", 10))
        self.train = (x[: c["n_train"]], y[: c["n_train"]])
        self.test = (x[c["n_train"]:], y[c["n_train"]:])

    def build_model(self, geometry):
        from geoattn.models import EncoderClassifier

        return EncoderClassifier(self.model_config(geometry, num_classes=10, pooling=self.config.get("pooling", "cls")))

    def _batch(self, split, idx) -> Batch:
        x, y = split[0][idx], split[1][idx]
        x = x[:, : int((x != PAD).sum(1).max())]                   # (B, T) cropped to the longest example
        pad = x == PAD
        return Batch((x.to(self.device), pad.to(self.device), y.to(self.device)), int((~pad).sum()))

    def train_batch(self, gen):
        return self._batch(self.train, torch.randint(len(self.train[1]), (self.config["batch_size"],), generator=gen))

    def loss(self, model, batch):
        x, pad, y = batch.tensors
        return F.cross_entropy(model(x, padding_mask=pad).float(), y)

    @torch.no_grad()
    def evaluate(self, model):
        correct, loss = 0, 0.0
        n = len(self.test[1])
        for start in range(0, n, self.config["batch_size"]):
            x, pad, y = self._batch(self.test, torch.arange(start, min(n, start + self.config["batch_size"]))).tensors
            logits = model(x, padding_mask=pad).float()
            correct += int((logits.argmax(-1) == y).sum())
            loss += F.cross_entropy(logits, y, reduction="sum").item()
        return {"test_acc": correct / n, "test_loss": loss / n}
