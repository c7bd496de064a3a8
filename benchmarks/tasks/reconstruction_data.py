"""Data and metrics of the ``wordnet-reconstruction`` task (Nickel & Kiela 2017), after
facebookresearch/poincare-embeddings, with nothing of size N × N (the noun closure has N = 82,115).

* :class:`Closure`: the closure pairs ``(u, v)`` (v an ancestor of u) as indices, sorted by (u, v), which is
  the CSR form of the ancestor relation: u's ancestors are ``pairs[indptr[u]:indptr[u + 1], 1]``. A forest is
  a closure like any other: each node's ancestors are its pairs.
* :func:`sample_negatives`: for each pair, ``n`` *distinct* negatives drawn uniformly from the nodes that
  are neither u nor an ancestor of u (``hype/graph_dataset.pyx``: uniform draws, a node rejected when it
  is u or one of u's closure neighbours or already drawn; when fewer than ``n`` exist, the free slots
  repeat negatives already drawn, chosen uniformly). Membership is a comparison with u's row of the padded
  ancestor table (:meth:`Closure.padded`, N × the most ancestors of any node).
* :func:`reconstruction_metrics`: ``hype/graph.py``'s ``eval_reconstruction`` over blocks of query rows. For
  every u with ancestors, every other node is scored (u excluded). Each ancestor v gets rank ``1 +`` the
  number of *non-ancestors* scoring higher than v (other ancestors never count against it); a non-ancestor
  tied with v counts ½ (the expected rank under random tie-breaking; hype's sort breaks ties arbitrarily).
  Mean rank is over all pairs. MAP is the mean over u of the average precision of ranking u's ancestors
  above its non-ancestors, with scikit-learn's ``average_precision_score`` semantics (hype's): tied
  scores form one threshold, so AP(u) = mean over ancestors v of ``#{ancestors w: s_w ≥ s_v} /
  #{nodes w ≠ u: s_w ≥ s_v}``. Each row's counts come from comparing the row with its ancestors' scores
  (:func:`_row_counts`), so a block of ``b`` rows needs ``O(b·N)`` memory.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor


@dataclass
class Closure:
    names: list[str]
    pairs: np.ndarray       # (P, 2) int64: (u, ancestor v), sorted by (u, v), no duplicates
    indptr: np.ndarray      # (N + 1,) int64: u's pairs are pairs[indptr[u]:indptr[u + 1]]

    @property
    def n(self) -> int:
        return len(self.names)

    def padded(self) -> np.ndarray:
        """(N, k) int64: row u holds u's ancestors, then -1 up to k, the most ancestors of any node (≥ 1); the
        sampler's membership table (noun closure: 82,115 × 19)."""
        counts = np.diff(self.indptr)
        table = np.full((self.n, max(1, int(counts.max(initial=0)))), -1, dtype=np.int64)
        table[self.pairs[:, 0], np.arange(len(self.pairs)) - self.indptr[self.pairs[:, 0]]] = self.pairs[:, 1]
        return table

    def ancestors_of(self, u: int) -> np.ndarray:
        return self.pairs[self.indptr[u]:self.indptr[u + 1], 1]

    def dense(self) -> np.ndarray:
        """(N, N) bool ``A[u, v]`` iff v is an ancestor of u: for tests on small closures only."""
        a = np.zeros((self.n, self.n), dtype=bool)
        a[self.pairs[:, 0], self.pairs[:, 1]] = True
        return a


def build_closure(pairs: list[tuple[str, str]]) -> Closure:
    names = sorted({n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(names)}
    idx = np.array([(index[c], index[a]) for c, a in pairs], dtype=np.int64).reshape(-1, 2)
    idx = np.unique(idx, axis=0)  # sorted by (u, v); a duplicated line is one pair
    indptr = np.searchsorted(idx[:, 0], np.arange(len(names) + 1)).astype(np.int64)
    closure = Closure(names, idx, indptr)
    starved = np.flatnonzero(np.diff(indptr) >= len(names) - 1)
    if starved.size:
        raise ValueError(f"node {names[starved[0]]!r} has every other node as an ancestor, so it has no negatives; "
                         "the reconstruction task needs a hierarchy with more than a chain")
    return closure


def sample_negatives(ancestors: Tensor, u: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` distinct negatives per row of ``u`` (B,), uniform over the nodes that are neither u nor an ancestor
    of u → (B, n) int64. ``ancestors`` is :meth:`Closure.padded` as a tensor (N, k).

    poincare-embeddings' sampler, vectorised: ``m = n + max(16, n/4)`` uniform draws over all N nodes per row,
    each rejected when it is u, one of u's k ancestors (k comparisons of (B, m)) or a repeat of an earlier draw of
    its row (a stable sort of the row); the first ``n`` accepted are kept. Rejection sampling of this kind gives a
    uniformly random ``n``-subset of the allowed nodes. A row whose draws do not give ``n`` (rare unless few
    nodes are allowed) is drawn exactly by :func:`_subset`.
    """
    B, N = u.shape[0], ancestors.shape[0]
    m = n + max(16, n // 4)
    draws = torch.randint(0, N, (B, m), generator=gen).to(ancestors.device)
    # repeats: a stable sort of each row puts equal draws side by side in the order drawn; all but the first repeat
    ordered, order = torch.sort(draws, dim=1, stable=True)
    later = torch.zeros_like(ordered, dtype=torch.bool)
    later[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
    repeat = torch.empty_like(later).scatter_(1, order, later)
    accepted = ~repeat & (draws != u[:, None]) & ~_is_ancestor(ancestors, u, draws)
    count = accepted.cumsum(1)
    ok = count[:, -1] >= n
    out = torch.empty(B, n, dtype=torch.long, device=ancestors.device)
    out[ok] = draws.masked_select(accepted & (count <= n) & ok[:, None]).view(-1, n)
    if not bool(ok.all()):
        out[~ok] = _subset(ancestors, u[~ok], n, gen)
    return out


def _is_ancestor(ancestors: Tensor, u: Tensor, nodes: Tensor) -> Tensor:
    """``nodes`` (B, m) → bool (B, m): is ``nodes[b, j]`` an ancestor of ``u[b]`` (one comparison per column of
    the padded table: a reduction over its short last dimension costs ~10× more on CPU)."""
    rows = ancestors[u]                                                 # (B, k)
    hit = torch.zeros_like(nodes, dtype=torch.bool)
    for j in range(rows.shape[1]):
        hit |= nodes == rows[:, j:j + 1]
    return hit


def _subset(ancestors: Tensor, u: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """Exact: a uniform key per node, disallowed nodes pushed above every allowed key, the ``n`` smallest
    taken (a uniformly random subset). A row with fewer than ``n`` allowed nodes fills its free slots with
    uniform repeats of the negatives it has (as poincare-embeddings does). Only the rows that rejection
    sampling could not fill come here: (len(u), N) for those rows."""
    N = ancestors.shape[0]
    nodes = torch.arange(N, device=ancestors.device).expand(len(u), -1)
    rows = (nodes != u[:, None]) & ~_is_ancestor(ancestors, u, nodes)              # (b, N) allowed
    keys = torch.rand(rows.shape, generator=gen).to(ancestors.device).masked_fill(~rows, 2.0)
    k = min(n, N)
    negs = keys.topk(k, dim=1, largest=False, sorted=True).indices      # allowed nodes first
    if k < n:
        negs = torch.cat([negs, negs[:, :1].expand(-1, n - k)], dim=1)
    count = rows.sum(1, keepdim=True)                                   # (b, 1), ≥ 1 (build_closure checks)
    # repeats come from the allowed nodes taken (a row with ≥ n of them uses none, but gather reads every entry)
    repeat = (torch.rand(negs.shape, generator=gen).to(ancestors.device) * count.clamp(max=k)).long()
    return torch.where(torch.arange(n, device=ancestors.device) < count, negs, negs.gather(1, repeat))


def _row_counts(s: np.ndarray, u: int, anc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One query row: ``s`` (N,) float64 scores of u against every node, ``anc`` u's k ancestors → (ranks, AP
    terms) per ancestor (see the module doc). Two (k, N) comparisons with the row: a full sort of the row
    costs ~5× more at the noun closure's k ≈ 9."""
    s_pos = s[anc]
    s_self = s[u]
    ge_all = np.count_nonzero(s >= s_pos[:, None], axis=1) - (s_self >= s_pos)   # nodes w ≠ u with s_w ≥ s_v
    gt_all = np.count_nonzero(s > s_pos[:, None], axis=1) - (s_self > s_pos)     # nodes w ≠ u with s_w > s_v
    ge_pos = np.count_nonzero(s_pos >= s_pos[:, None], axis=1)                    # ancestors w with s_w ≥ s_v
    gt_pos = np.count_nonzero(s_pos > s_pos[:, None], axis=1)
    above_neg = gt_all - gt_pos                                         # non-ancestors strictly higher
    tied_neg = (ge_all - gt_all) - (ge_pos - gt_pos)                    # non-ancestors tied with v
    return 1 + above_neg + 0.5 * tied_neg, ge_pos / ge_all


def reconstruction_sums(score_rows: Callable[[np.ndarray], np.ndarray], closure: Closure, block: int = 16,
                        queries: np.ndarray | None = None) -> np.ndarray:
    """``[Σ rank, #pairs, Σ AP, #queries]`` over ``queries`` (default: every node with ancestors), ``block`` query
    rows at a time: sums, so that shards of the queries (DDP ranks) add up (:func:`metrics_from_sums`).

    ``score_rows(rows)`` gives the float64 scores (higher = closer) of the query nodes ``rows`` (b,) against
    every node → (b, N); it is called once per block, so at most ``block × N`` scores exist at a time."""
    if queries is None:
        queries = np.flatnonzero(np.diff(closure.indptr) > 0)
    sums = np.zeros(4)
    for start in range(0, queries.size, block):
        rows = queries[start:start + block]
        scores = np.asarray(score_rows(rows), dtype=np.float64)
        if scores.shape != (rows.size, closure.n):
            raise ValueError(f"score_rows returned shape {scores.shape}, expected {(rows.size, closure.n)}")
        for s, u in zip(scores, rows):
            ranks, precision = _row_counts(s, int(u), closure.ancestors_of(u))
            sums += (ranks.sum(), ranks.size, precision.mean(), 1)
    return sums


def metrics_from_sums(sums: np.ndarray) -> dict[str, float]:
    rank_sum, n_ranks, ap_sum, n_queries = (float(x) for x in sums)
    if not n_ranks:
        return {"mean_rank": float("nan"), "map": float("nan")}
    return {"mean_rank": rank_sum / n_ranks, "map": ap_sum / n_queries}


def reconstruction_metrics(score_rows: Callable[[np.ndarray], np.ndarray], closure: Closure, block: int = 16,
                           queries: np.ndarray | None = None) -> dict[str, float]:
    """``mean_rank`` and ``map`` of a scorer against the closure (over ``queries``, default every node with
    ancestors), ``block`` query rows at a time (:func:`reconstruction_sums`)."""
    return metrics_from_sums(reconstruction_sums(score_rows, closure, block, queries))
