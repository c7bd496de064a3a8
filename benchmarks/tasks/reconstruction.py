"""``wordnet-reconstruction``: Nickel & Kiela's reconstruction of a closure (the mammals by default, the nouns of
their Table 1 with ``--data``), through attention scores.

Poincaré embeddings (Nickel & Kiela, NeurIPS 2017) are trained with a softmax over ``-d(u, v)`` against
sampled negatives: for a closure pair (u, v), ``softmax([score(u, v), score(u, n₁), …, score(u, n₅₀)])``
with cross-entropy on the first entry. That is an attention distribution of one query over 51 keys, so
here it runs on the library's own scoring path: one embedding table of all synsets (tangent vectors at
the origin, lifted by the run's geometry exactly as :func:`geoattn.attention` lifts queries and keys),
queries and keys drawn from the same table, no encoder; score = the geometry's
(:func:`benchmarks.tasks.scoring.scores`). The table is initialised U(-0.001, 0.001) as in the paper.

Negatives, ranks and MAP follow facebookresearch/poincare-embeddings (``hype/graph_dataset.pyx``,
``hype/graph.py``): see :mod:`.reconstruction_data`; nothing of size N × N is formed (the evaluation scores
``eval_block`` query rows at a time, 16 by default: a (16, N) block of float64 scores stays in cache, and the
geometry's score is a few dozen elementwise passes over it). The paper reports mean rank 1.26 and MAP 0.927 for
Poincaré at d = 5 (Figure 2 caption). Headline metric: ``map`` (↑); ``mean_rank`` (↓) beside it. The
optimiser is the runner's (AdamW with the suite's schedule), with ``weight_decay=0`` for this task:
every geometry gets the same one. Swept over the embedding dimension ``dim``. Config keys: ``dim``,
``n_negatives``, ``batch_size``, ``epochs`` and ``eval_epochs`` (the budget in epochs of the closure's pairs, so
any ``--data`` closure trains as many epochs as the default; :meth:`WordNetReconstruction.resolve_budget` turns
them into the runner's ``iters`` and ``eval_interval``), ``eval_block``, ``init_range``, ``dtype``
(``"float32"``, or ``"float64"`` for the table and the geometry; evaluation always scores in float64) and
``hyperbolic_radius``.

``hyperbolic_radius`` (R): every geometry that can be negatively curved keeps its points within distance
R/√|κ| of the origin (its ``clip_radius`` from :meth:`~geoattn.geometry.curved.CurvedGeometry.clip_for_radius`,
unless ``geometry_params`` names one). The suites set R = 20, the Poincaré ball's default; without it Lorentz
would keep its attention default, radius 4, which bounds the float32 cancellation of its affine form in the
attention kernels. This task scores through the lift (:func:`geoattn.pair_scores`, the reference computation of
``d²_L`` without cancellation at any radius), so that bound guards nothing here, while a tree of the closure's
depth needs the radius: at radius 4, more than half of Lorentz's table sits at the clip by the 64th epoch.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geoattn.geometry import geometry_class

from ..data import MAMMAL_CLOSURE, NOUN_CLOSURE, load_closure
from .base import Batch, Task
from .reconstruction_data import Closure, build_closure, metrics_from_sums, reconstruction_sums, sample_negatives
from .scoring import make, pair_scores, scores, table_scorer

DTYPES = {"float32": torch.float32, "float64": torch.float64}


@lru_cache(maxsize=2)
def _closure(path: str) -> Closure:
    return build_closure(load_closure(path))


class ReconstructionModel(nn.Module):
    """One embedding table (tangent vectors at the origin) and one single-head geometry that scores it."""

    def __init__(self, n: int, dim: int, geometry: str, geometry_params: dict, init_range: float,
                 dtype: torch.dtype, hyperbolic_radius: float | None = None) -> None:
        super().__init__()
        self.embedding = nn.Embedding(n, dim, dtype=dtype)
        nn.init.uniform_(self.embedding.weight, -init_range, init_range)
        cls = geometry_class(geometry)
        if hyperbolic_radius is not None and getattr(cls, "default_clip", None) is not None:
            geometry_params = {"clip_radius": cls.clip_for_radius(hyperbolic_radius), **geometry_params}
        self.geometry = make(geometry, dim, num_heads=1, **geometry_params).to(dtype)

    def forward(self, u: Tensor, keys: Tensor) -> Tensor:
        """Scores of each query node ``u`` (B,) against its keys ``keys`` (B, K) → (B, K): the numbers of
        ``scores(table[u], table[keys])``, with each node lifted once per step (:func:`geoattn.pair_scores`).
        When the batch names fewer indices than the table has rows (the noun closure: 1,024 × 51 against
        82,115), only the rows it names are lifted: the lift of the table costs more than the pairs there."""
        table = self.embedding.weight
        if u.numel() + keys.numel() >= len(table):
            return pair_scores(self.geometry, table, u, keys)
        rows, index = torch.unique(torch.cat([u, keys.flatten()]), return_inverse=True)
        return pair_scores(self.geometry, table.index_select(0, rows), index[:len(u)], index[len(u):].view_as(keys))

    def row_scores(self, rows: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """The nodes ``rows`` (b,) against every node → (b, N), computed in ``dtype`` (default: the table's)."""
        e = self.embedding.weight.to(dtype or self.embedding.weight.dtype)                 # (N, d)
        return scores(self.geometry, e[rows][None, None], e[None, None])[0, 0]

    def scorer(self, dtype: torch.dtype | None = None):
        """:meth:`row_scores` as a function of ``rows`` alone, the table lifted once for all its calls
        (:func:`~benchmarks.tasks.scoring.table_scorer`): for an evaluation over blocks of rows."""
        return table_scorer(self.geometry, self.embedding.weight.to(dtype or self.embedding.weight.dtype))


class WordNetReconstruction(Task):
    name = "wordnet-reconstruction"
    data_kind = "closure"
    default_data = MAMMAL_CLOSURE
    metric = "map"
    higher_is_better = True
    curve_metric = "map"
    sweep = "dim"

    def __init__(self, config, data_path, device):
        super().__init__(config, data_path, device)
        closure = _closure(str(self.data_path))
        self.closure = closure
        self.vocab_size = len(closure.names)
        self.pairs = torch.from_numpy(closure.pairs).to(device)
        self.ancestors = torch.from_numpy(closure.padded()).to(device)
        self.dtype = DTYPES[config.get("dtype", "float32")]
        self._order: Tensor | None = None
        self._pos = 0

    @classmethod
    def resolve_budget(cls, config, data_path):
        """``epochs`` and ``eval_epochs`` → ``iters`` and ``eval_interval`` for this closure: an epoch is
        ``len(pairs) // batch_size`` steps (the partial last batch is dropped)."""
        if "epochs" not in config:
            return super().resolve_budget(config, data_path)
        pairs = len(_closure(str(data_path or cls.default_data)).pairs)
        steps = pairs // config["batch_size"]
        if steps < 1:
            raise ValueError(f"wordnet-reconstruction: batch_size={config['batch_size']} exceeds the closure's "
                             f"{pairs} pairs, so an epoch has no step; lower batch_size")
        return dict(config, iters=config["epochs"] * steps,
                    eval_interval=config.get("eval_epochs", config["epochs"]) * steps)

    def state(self):
        return {"order": self._order, "pos": self._pos}

    def load_state(self, state):
        self._order, self._pos = state["order"], state["pos"]

    def build_model(self, geometry):
        c = self.config
        return ReconstructionModel(self.vocab_size, c["dim"], geometry, dict(c.get("geometry_params", {})),
                                   c.get("init_range", 1e-3), self.dtype, c.get("hyperbolic_radius"))

    def train_batch(self, gen):
        """The next ``batch_size`` pairs of a per-epoch random permutation, each with its negatives (an epoch's
        last, partial batch is dropped: the next epoch starts a fresh permutation)."""
        B = self.config["batch_size"]
        if self._order is None or self._pos + B > len(self._order):
            self._order, self._pos = torch.randperm(len(self.pairs), generator=gen).to(self.device), 0
        pairs = self.pairs[self._order[self._pos:self._pos + B]]
        self._pos += B
        u, v = pairs[:, 0], pairs[:, 1]
        negs = sample_negatives(self.ancestors, u, self.config["n_negatives"], gen)
        keys = torch.cat([v[:, None], negs], dim=1)                     # (B, 1 + n): the ancestor first
        return Batch((u, keys), keys.numel() + u.numel())

    def loss(self, model, batch):
        u, keys = batch.tensors
        logits = model(u, keys)                                         # (B, 1 + n), the ancestor at 0
        return F.cross_entropy(logits, torch.zeros(len(u), dtype=torch.long, device=logits.device))

    @torch.no_grad()
    def evaluate(self, model, queries: np.ndarray | None = None):
        """Mean rank and MAP over every node with ancestors (or ``queries``). Under DDP each rank scores its share
        of the query rows (every world-size-th) and the sums are all-reduced, so W ranks evaluate W× faster."""
        raw = model.module if hasattr(model, "module") else model
        device = raw.embedding.weight.device
        if queries is None:
            queries = np.flatnonzero(np.diff(self.closure.indptr) > 0)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if distributed:
            queries = queries[torch.distributed.get_rank()::torch.distributed.get_world_size()]

        scorer = raw.scorer(torch.float64)

        def score_rows(rows):
            return scorer(torch.from_numpy(rows).to(device)).cpu().numpy()

        sums = reconstruction_sums(score_rows, self.closure, self.config.get("eval_block", 16), queries)
        if distributed:
            total = torch.from_numpy(sums).to(device)
            torch.distributed.all_reduce(total)
            sums = total.cpu().numpy()
        return metrics_from_sums(sums)

    def evaluate_during(self, model):
        """An evaluation before the last: over ``eval_queries`` query nodes (a fixed uniform sample, the same for
        every run) when the config names that many, else over all. MAP over a uniform sample of the queries
        estimates the full MAP without bias; the final evaluation is always the full one."""
        n = self.config.get("eval_queries")
        queries = np.flatnonzero(np.diff(self.closure.indptr) > 0)
        if n and n < queries.size:
            queries = np.sort(np.random.default_rng(1234).choice(queries, size=n, replace=False))
        return self.evaluate(model, queries)


class WordNetNouns(WordNetReconstruction):
    """The same task on the whole WordNet noun closure (82,115 synsets, 743,241 pairs): Nickel & Kiela's Table 1
    (reconstruction, mean rank / MAP: Poincaré d = 5 4.9 / 0.823, d = 10 4.02 / 0.851; Euclidean distance
    d = 10 2286.9 / 0.059). A task of its own, so its rows and run keys stand apart from the mammals'."""

    name = "wordnet-nouns"
    default_data = NOUN_CLOSURE
