"""The WordNet nearest-relative task: given a query synset and a set of candidate synsets, point to the
candidate closest to the query in the hierarchy.

Tree distance is the shortest-path length in the Hasse diagram (the transitive reduction of the
closure: child → direct parent edges, undirected), computed with :func:`scipy.sparse.csgraph.shortest_path`.
The answer is unique by construction: every distractor is strictly farther from the query than the
target. Query–target pairs are split once (``split_seed``) into train and test as *unordered* pairs, so
no test (query, target) pair — in either order — is ever a training (query, answer) pair.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import shortest_path


@dataclass
class Hierarchy:
    names: list[str]          # synset names, index = token id offset
    parents: list[list[int]]  # direct parents (transitive reduction)
    dist: np.ndarray          # (N, N) int tree distance


def build_hierarchy(pairs: list[tuple[str, str]]) -> Hierarchy:
    names = sorted({n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(names)}
    ancestors: list[set[int]] = [set() for _ in names]
    for child, anc in pairs:
        ancestors[index[child]].add(index[anc])
    # a is a direct parent of c iff no other ancestor b of c has a as an ancestor
    parents = [sorted(a for a in ancs if not any(a in ancestors[b] for b in ancs)) for ancs in ancestors]
    rows = [c for c, ps in enumerate(parents) for _ in ps]
    cols = [p for ps in parents for p in ps]
    graph = csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(names), len(names)))
    dist = shortest_path(graph, directed=False, unweighted=True)
    if not np.isfinite(dist).all():
        raise ValueError("the hierarchy is not connected; tree distances are undefined")
    return Hierarchy(names, parents, dist.astype(np.int64))


@dataclass
class PairSplit:
    train: np.ndarray  # (P, 2) ordered (query, target) pairs, both orders of each unordered pair
    test: np.ndarray


def split_pairs(h: Hierarchy, max_dist: int, test_frac: float, split_seed: int) -> PairSplit:
    """All (query, target) pairs with ``1 <= d <= max_dist``, split as unordered pairs."""
    if not 0 < test_frac < 1:
        raise ValueError(f"test_frac must be in (0, 1), got {test_frac}")
    i, j = np.nonzero(np.triu((h.dist >= 1) & (h.dist <= max_dist), k=1))
    rng = np.random.default_rng(split_seed)
    is_test = rng.random(i.size) < test_frac
    def both(mask):
        a, b = i[mask], j[mask]
        return np.concatenate([np.stack([a, b], 1), np.stack([b, a], 1)])
    return PairSplit(train=both(~is_test), test=both(is_test))


def make_examples(h: Hierarchy, pairs: np.ndarray, n: int, set_size: int, rng: np.random.Generator,
                  hard_frac: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n`` examples: query (n,), candidates (n, set_size), target index in the set (n,).

    The target comes from ``pairs``; each distractor is strictly farther from the query than the
    target: with probability ``hard_frac`` from the band ``d_t < d <= d_t + 2`` (hard negatives, when
    that band is non-empty), otherwise from all farther synsets.
    """
    if set_size < 2:
        raise ValueError(f"set_size must be >= 2 (a target and at least one distractor), got {set_size}")
    picks = pairs[rng.integers(0, len(pairs), size=n)]
    queries, cands, targets = picks[:, 0], np.empty((n, set_size), np.int64), rng.integers(0, set_size, size=n)
    for e, (q, t) in enumerate(picks):
        d_q = h.dist[q]
        far = np.flatnonzero(d_q > d_q[t])
        band = far[d_q[far] <= d_q[t] + 2]
        hard = rng.random(set_size - 1) < hard_frac if band.size >= set_size - 1 else np.zeros(set_size - 1, bool)
        hard_pick = rng.choice(band, size=int(hard.sum()), replace=False)
        easy_pick = rng.choice(np.setdiff1d(far, hard_pick), size=int((~hard).sum()), replace=False)
        chosen = np.concatenate([hard_pick, easy_pick])
        row = np.insert(rng.permutation(chosen), targets[e], t)
        cands[e] = row
    return queries, cands, targets
