"""Tiny Shakespeare tasks: character-level language modelling (``DecoderLM``) and next-line
generation with cross-attention (``EncoderDecoder``)."""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data import SHAKESPEARE, load_text
from .base import Batch, Task


@lru_cache(maxsize=4)
def _corpus(path: str) -> tuple[list[str], Tensor]:
    text = load_text(path)
    chars = sorted(set(text))
    index = {ch: i for i, ch in enumerate(chars)}
    return chars, torch.tensor([index[ch] for ch in text], dtype=torch.long)


class ShakespeareChar(Task):
    """nanoGPT's ``shakespeare_char``: first 90% of the characters train, last 10% validate.

    Metric: validation cross-entropy in nats per character over ``eval_iters`` fixed random blocks
    (``val_bpc`` = nats / ln 2). nanoGPT's CPU configuration reaches about 1.88.
    """

    name = "shakespeare-char"
    data_kind = "text"
    default_data = SHAKESPEARE
    metric = "val_loss"
    higher_is_better = False
    curve_metric = "val_loss"

    def __init__(self, config, data_path, device):
        super().__init__(config, data_path, device)
        chars, data = _corpus(str(self.data_path))
        self.vocab_size = len(chars)
        n = int(0.9 * len(data))
        self.train_data, self.val_data = data[:n], data[n:]
        block = config["block_size"]
        if len(self.val_data) <= block + 1:
            raise ValueError(f"the validation split has {len(self.val_data)} characters, not more than "
                             f"block_size={block}; use a longer text or a smaller block_size")

    def build_model(self, geometry: str) -> nn.Module:
        from geoattn.models import DecoderLM

        return DecoderLM(self.model_config(geometry))

    def _blocks(self, data: Tensor, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        B, T = self.config["batch_size"], self.config["block_size"]
        ix = torch.randint(len(data) - T, (B,), generator=gen)
        x = torch.stack([data[i:i + T] for i in ix.tolist()])     # (B, T)
        y = torch.stack([data[i + 1:i + 1 + T] for i in ix.tolist()])
        return x.to(self.device), y.to(self.device)

    def train_batch(self, gen):
        x, y = self._blocks(self.train_data, gen)
        return Batch((x, y), x.numel())

    def loss(self, model, batch):
        _, loss = model(*batch.tensors)
        return loss

    @torch.no_grad()
    def evaluate(self, model):
        gen = torch.Generator().manual_seed(1234)  # the same validation blocks for every run
        losses = [model(*self._blocks(self.val_data, gen))[1].item() for _ in range(self.config["eval_iters"])]
        loss = sum(losses) / len(losses)
        return {"val_loss": loss, "val_bpc": loss / math.log(2)}


PAD, BOS, EOS = 0, 1, 2


@lru_cache(maxsize=4)
def _line_pairs(path: str, max_len: int) -> tuple[list[str], Tensor, Tensor]:
    """Consecutive non-empty lines of the play as (source, target) id tensors padded with PAD."""
    text = load_text(path)
    chars = sorted(set(text) - {"\n"})
    index = {ch: i + 3 for i, ch in enumerate(chars)}
    lines = text.split("\n")
    pairs = [(a, b) for a, b in zip(lines, lines[1:]) if a.strip() and b.strip()]
    if len(pairs) < 20:
        raise ValueError(f"{path!r} has only {len(pairs)} pairs of consecutive non-empty lines; "
                         "seq2seq needs at least 20")
    src = torch.full((len(pairs), max_len), PAD, dtype=torch.long)
    tgt = torch.full((len(pairs), max_len + 1), PAD, dtype=torch.long)  # BOS + line + EOS, shifted in the task
    for i, (a, b) in enumerate(pairs):
        a_ids = [index[ch] for ch in a[:max_len]]
        b_ids = [BOS] + [index[ch] for ch in b[:max_len - 1]] + [EOS]
        src[i, :len(a_ids)] = torch.tensor(a_ids)
        tgt[i, :len(b_ids)] = torch.tensor(b_ids)
    return ["<pad>", "<bos>", "<eos>", *chars], src, tgt


class ShakespeareSeq2Seq(Task):
    """Next line of the play given the current line (pairs of consecutive non-empty lines, 90/10 in order).

    Metric: validation cross-entropy per target character (EOS included), nats.
    """

    name = "shakespeare-seq2seq"
    data_kind = "text"
    default_data = SHAKESPEARE
    metric = "val_loss"
    higher_is_better = False
    curve_metric = "val_loss"

    def __init__(self, config, data_path, device):
        super().__init__(config, data_path, device)
        vocab, src, tgt = _line_pairs(str(self.data_path), config["line_len"])
        self.vocab_size = len(vocab)
        n = int(0.9 * len(src))
        self.train, self.val = (src[:n], tgt[:n]), (src[n:], tgt[n:])

    def build_model(self, geometry):
        from geoattn.models import EncoderDecoder

        return EncoderDecoder(self.model_config(geometry, n_decoder_layers=self.config.get("n_decoder_layers")))

    def _batch(self, split: tuple[Tensor, Tensor], idx: Tensor) -> Batch:
        src, tgt = split[0][idx], split[1][idx]
        src = src[:, : max(1, int((src != PAD).sum(1).max()))]          # (B, S) cropped to the longest line
        tgt = tgt[:, : int((tgt != PAD).sum(1).max())]                  # (B, T+1)
        tgt_in, tgt_out = tgt[:, :-1], tgt[:, 1:].clone()
        tgt_out[tgt_out == PAD] = -100
        tensors = (src, tgt_in, tgt_out, src == PAD, tgt_in == PAD)
        return Batch(tuple(t.to(self.device) for t in tensors), int((src != PAD).sum() + (tgt_in != PAD).sum()))

    def train_batch(self, gen):
        return self._batch(self.train, torch.randint(len(self.train[0]), (self.config["batch_size"],), generator=gen))

    def loss(self, model, batch):
        src, tgt_in, tgt_out, src_pad, tgt_pad = batch.tensors
        logits = model(src, tgt_in, src_padding_mask=src_pad, tgt_padding_mask=tgt_pad)  # (B, T, V)
        return F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=-100)

    @torch.no_grad()
    def evaluate(self, model):
        n = min(self.config["eval_pairs"], len(self.val[0]))
        total, count = 0.0, 0
        for start in range(0, n, self.config["batch_size"]):
            batch = self._batch(self.val, torch.arange(start, min(n, start + self.config["batch_size"])))
            src, tgt_in, tgt_out, src_pad, tgt_pad = batch.tensors
            logits = model(src, tgt_in, src_padding_mask=src_pad, tgt_padding_mask=tgt_pad)
            total += F.cross_entropy(logits.flatten(0, 1).float(), tgt_out.flatten(), ignore_index=-100,
                                     reduction="sum").item()
            count += int((tgt_out != -100).sum())
        return {"val_loss": total / count}
