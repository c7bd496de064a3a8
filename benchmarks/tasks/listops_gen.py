"""A ListOps generator following Long Range Arena's specification (Tay et al. 2021, after Nangia & Bowman 2018).

As in LRA's ``lra_benchmarks/data/listops.py``: operators MIN, MAX, MED (``int(np.median)``) and SM
(sum mod 10) over values 0–9; a node is a value with probability 0.75 (always at ``max_depth``),
otherwise an operator with 2..``max_args`` arguments; trees are drawn until their length lies strictly
between ``min_length`` and ``max_length``. The length counts tokens: one per value, two per operator
(its opening token and the closing ``]``). Sequences are written without LRA's redundant parentheses,
e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` → 9.
"""
from __future__ import annotations

import random

import numpy as np

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
VALUES = tuple(str(v) for v in range(10))
VOCAB = ("<pad>", "<cls>", *VALUES, *OPERATORS, END)  # token id = index
VALUE_P = 0.25  # LRA: a node is an operator when random() <= VALUE_P


def apply(op: str, args: list[int]) -> int:
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        return int(np.median(args))
    if op == "[SM":
        return sum(args) % 10
    raise ValueError(f"unknown ListOps operator {op!r}; expected one of {OPERATORS}")


class _TooLong(Exception):
    """Raised to stop drawing a tree that is already too long (it would be rejected anyway)."""


def _tree(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int]) -> tuple[list[str], int]:
    """(tokens, value) of a random subtree, LRA's ``generate_tree``; ``budget[0]`` counts tokens still allowed."""
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        v = rng.randrange(10)
        budget[0] -= 1
        return [str(v)], v
    budget[0] -= 2
    n_args = rng.randint(2, max_args)
    tokens, values = [], []
    for _ in range(n_args):
        if budget[0] < 0:
            raise _TooLong
        t, v = _tree(rng, depth + 1, max_depth, max_args, budget)
        tokens += t
        values.append(v)
    op = rng.choice(OPERATORS)
    return [op, *tokens, END], apply(op, values)


def generate(n: int, min_length: int, max_length: int, seed: int, max_depth: int = 10,
             max_args: int = 10, max_tries: int = 10_000_000) -> list[tuple[list[str], int]]:
    """``n`` distinct (tokens, label) examples with ``min_length < len(tokens) < max_length``."""
    if not 1 <= min_length + 1 < max_length:
        raise ValueError(f"need 0 <= min_length < max_length - 1, got min_length={min_length}, max_length={max_length}")
    if max_depth < 1 or max_args < 2:
        raise ValueError(f"need max_depth >= 1 and max_args >= 2, got {max_depth}, {max_args}")
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[tuple[list[str], int]] = []
    for _ in range(max_tries):
        if len(out) == n:
            return out
        try:
            tokens, value = _tree(rng, 1, max_depth, max_args, [max_length - 1])
        except _TooLong:
            continue
        key = " ".join(tokens)
        if min_length < len(tokens) < max_length and key not in seen:
            seen.add(key)
            out.append((tokens, value))
    raise ValueError(
        f"could draw only {len(out)} of {n} ListOps trees with {min_length} < length < {max_length} in {max_tries} "
        "tries; widen the length range or lower n"
    )


def encode(tokens: list[str]) -> list[int]:
    index = {t: i for i, t in enumerate(VOCAB)}
    return [index[t] for t in tokens]
