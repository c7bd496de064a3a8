"""Data and metrics of the ``wordnet-reconstruction`` task (Nickel & Kiela 2017), after
facebookresearch/poincare-embeddings.

* :class:`Closure`: the closure pairs ``(u, v)`` (v an ancestor of u) as indices, and the boolean
  ancestor matrix ``A[u, v]``.
* :func:`sample_negatives`: for each pair, ``n`` *distinct* negatives drawn uniformly from the nodes that
  are neither u nor an ancestor of u (``hype/graph_dataset.pyx``: uniform draws, a node rejected when it
  is u or one of u's closure neighbours or already drawn; when fewer than ``n`` exist, the free slots
  repeat negatives already drawn, chosen uniformly).
* :func:`reconstruction_metrics`: ``hype/graph.py``'s ``eval_reconstruction``. For every u with ancestors,
  every other node is scored (u excluded). Each ancestor v gets rank ``1 +`` the number of
  *non-ancestors* scoring higher than v (other ancestors never count against it); a non-ancestor tied
  with v counts ½ (the expected rank under random tie-breaking; hype's sort breaks ties arbitrarily).
  Mean rank is over all pairs. MAP is the mean over u of the average precision of ranking u's ancestors
  above its non-ancestors, with scikit-learn's ``average_precision_score`` semantics (hype's): tied
  scores form one threshold, so AP(u) = mean over ancestors v of ``#{ancestors w: s_w ≥ s_v} /
  #{nodes w ≠ u: s_w ≥ s_v}``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass
class Closure:
    names: list[str]
    pairs: np.ndarray       # (P, 2) int64: (u, ancestor v)
    ancestors: np.ndarray   # (N, N) bool: ancestors[u, v] iff v is an ancestor of u

    @property
    def allowed(self) -> np.ndarray:
        """(N, N) bool: the negatives of u (neither u itself nor an ancestor of u)."""
        return ~(self.ancestors | np.eye(len(self.names), dtype=bool))


def build_closure(pairs: list[tuple[str, str]]) -> Closure:
    names = sorted({n for p in pairs for n in p})
    index = {n: i for i, n in enumerate(names)}
    idx = np.array([(index[c], index[a]) for c, a in pairs], dtype=np.int64).reshape(-1, 2)
    idx = np.unique(idx, axis=0)  # a duplicated line is one pair
    anc = np.zeros((len(names), len(names)), dtype=bool)
    anc[idx[:, 0], idx[:, 1]] = True
    closure = Closure(names, idx, anc)
    starved = np.flatnonzero(closure.allowed[np.unique(idx[:, 0])].sum(1) == 0)
    if starved.size:
        raise ValueError(f"node {names[np.unique(idx[:, 0])[starved[0]]]!r} has every other node as an ancestor, "
                         "so it has no negatives; the reconstruction task needs a hierarchy with more than a chain")
    return closure


def sample_negatives(allowed: Tensor, u: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """``n`` distinct negatives per row of ``u`` (B,), uniform over ``allowed[u]`` → (B, n) int64.

    poincare-embeddings' sampler, vectorised: uniform draws over all N nodes, each rejected when it is not
    allowed (u itself or an ancestor of u) or repeats an earlier draw of its row; the first ``n`` accepted
    are kept. Rejection sampling of this kind gives a uniformly random ``n``-subset of the allowed nodes.
    A row whose ``n + max(16, n/4)`` draws do not give ``n`` (rare unless few nodes are allowed) is drawn
    exactly by :func:`_subset`.
    """
    B, N = u.shape[0], allowed.shape[1]
    m = n + max(16, n // 4)
    draws = torch.randint(0, N, (B, m), generator=gen).to(allowed.device)
    position = torch.arange(m, device=allowed.device).expand(B, -1)
    earliest = torch.full((B, N), m, dtype=torch.long, device=allowed.device)
    earliest = earliest.scatter_reduce_(1, draws, position, "amin")
    fresh = earliest.gather(1, draws) == position                      # not a repeat of an earlier draw
    accepted = allowed.view(-1)[u[:, None] * N + draws] & fresh
    count = accepted.cumsum(1)
    ok = count[:, -1] >= n
    out = torch.empty(B, n, dtype=torch.long, device=allowed.device)
    out[ok] = draws.masked_select(accepted & (count <= n) & ok[:, None]).view(-1, n)
    if not bool(ok.all()):
        out[~ok] = _subset(allowed, u[~ok], n, gen)
    return out


def _subset(allowed: Tensor, u: Tensor, n: int, gen: torch.Generator) -> Tensor:
    """Exact: a uniform key per node, disallowed nodes pushed above every allowed key, the ``n`` smallest
    taken (a uniformly random subset). A row with fewer than ``n`` allowed nodes fills its free slots with
    uniform repeats of the negatives it has (as poincare-embeddings does)."""
    rows = allowed[u]                                                   # (B, N) bool
    keys = torch.rand(rows.shape, generator=gen).to(allowed.device).masked_fill(~rows, 2.0)
    k = min(n, rows.shape[1])
    negs = keys.topk(k, dim=1, largest=False, sorted=True).indices     # allowed nodes first
    if k < n:
        negs = torch.cat([negs, negs[:, :1].expand(-1, n - k)], dim=1)
    count = rows.sum(1, keepdim=True)                                   # (B, 1), ≥ 1 (build_closure checks)
    repeat = (torch.rand(negs.shape, generator=gen).to(allowed.device) * count).long()
    return torch.where(torch.arange(n, device=allowed.device) < count, negs, negs.gather(1, repeat))


def reconstruction_metrics(scores: np.ndarray, ancestors: np.ndarray) -> dict[str, float]:
    """``mean_rank`` and ``map`` of an (N, N) score matrix (higher = closer) against the ancestor matrix."""
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    ranks, aps = [], []
    for u in np.flatnonzero(ancestors.any(1)):
        others = np.arange(n) != u
        pos = ancestors[u] & others
        s_pos = scores[u, pos]
        s_neg = np.sort(scores[u, others & ~pos])                      # ascending
        s_all = np.sort(scores[u, others])
        above_neg = s_neg.size - np.searchsorted(s_neg, s_pos, side="right")   # non-ancestors strictly higher
        tied_neg = np.searchsorted(s_neg, s_pos, side="right") - np.searchsorted(s_neg, s_pos, side="left")
        ranks.append(1 + above_neg + 0.5 * tied_neg)
        s_pos_sorted = np.sort(s_pos)
        at_least_pos = s_pos.size - np.searchsorted(s_pos_sorted, s_pos, side="left")  # ancestors with s ≥ s_v
        at_least_all = s_all.size - np.searchsorted(s_all, s_pos, side="left")         # nodes with s ≥ s_v
        aps.append(float(np.mean(at_least_pos / at_least_all)))
    all_ranks = np.concatenate(ranks) if ranks else np.array([np.nan])
    return {"mean_rank": float(all_ranks.mean()), "map": float(np.mean(aps)) if aps else float("nan")}
