"""The wordnet-reconstruction task: negative sampling, the ranking metric and MAP against brute force, the
model's scores, and a one-epoch run through the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.data import NOUN_CLOSURE, load_closure
from benchmarks.log import read_log
from benchmarks.tasks.reconstruction import ReconstructionModel
from benchmarks.tasks.reconstruction_data import (Closure, build_closure, metrics_from_sums, reconstruction_metrics,
                                                  reconstruction_sums, sample_negatives)

# r ─ a ─ c          closure pairs (child, ancestor)
#   │   └ d
#   └ b ─ e
SMALL = [("a", "r"), ("b", "r"), ("c", "a"), ("c", "r"), ("d", "a"), ("d", "r"), ("e", "b"), ("e", "r")]


# a forest of two trees (roots r and s) and a lone pair (y -> x)
FOREST = SMALL + [("f", "s"), ("g", "s"), ("h", "f"), ("h", "s"), ("y", "x")]


@pytest.fixture(scope="module")
def mammals():
    return build_closure(load_closure())


def _check_negatives(closure, u: torch.Tensor, negs: torch.Tensor, n: int) -> None:
    anc = torch.from_numpy(closure.dense())
    assert negs.shape == (len(u), n) and negs.dtype == torch.long
    assert not (negs == u[:, None]).any(), "a negative equals its query node"
    assert not anc[u[:, None], negs].any(), "a negative is an ancestor of its query node"


def _sample(closure, u, n, gen):
    return sample_negatives(torch.from_numpy(closure.padded()), u, n, gen)


def _dense_sampler(allowed: torch.Tensor, u: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """The sampler as it was with an (N, N) ``allowed`` matrix (the reference the CSR sampler must equal draw for
    draw): first occurrences found by an (B, N) scatter, the exact fallback on (B, N) rows of ``allowed``."""
    B, N = u.shape[0], allowed.shape[1]
    m = n + max(16, n // 4)
    draws = torch.randint(0, N, (B, m), generator=gen)
    position = torch.arange(m).expand(B, -1)
    earliest = torch.full((B, N), m, dtype=torch.long).scatter_reduce_(1, draws, position, "amin")
    accepted = allowed.view(-1)[u[:, None] * N + draws] & (earliest.gather(1, draws) == position)
    count = accepted.cumsum(1)
    ok = count[:, -1] >= n
    out = torch.empty(B, n, dtype=torch.long)
    out[ok] = draws.masked_select(accepted & (count <= n) & ok[:, None]).view(-1, n)
    if not bool(ok.all()):
        rows = allowed[u[~ok]]
        keys = torch.rand(rows.shape, generator=gen).masked_fill(~rows, 2.0)
        k = min(n, N)
        negs = keys.topk(k, dim=1, largest=False, sorted=True).indices
        if k < n:
            negs = torch.cat([negs, negs[:, :1].expand(-1, n - k)], dim=1)
        cnt = rows.sum(1, keepdim=True)
        repeat = (torch.rand(negs.shape, generator=gen) * cnt.clamp(max=k)).long()  # unclamped: an index error
        out[~ok] = torch.where(torch.arange(n) < cnt, negs, negs.gather(1, repeat))
    return out


@pytest.mark.parametrize("tree, n", [("small", 5), ("small", 1), ("forest", 3), ("forest", 9), ("mammals", 50)])
def test_sampler_equals_the_dense_one_draw_for_draw(tree, n, mammals):
    """Same generator state → the same negatives as the (N, N) sampler, on trees, a forest and the mammals (on the
    small ones most rows take the exact fallback, on the mammals rejection sampling)."""
    closure = {"small": build_closure(SMALL), "forest": build_closure(FOREST), "mammals": mammals}[tree]
    allowed = torch.from_numpy(~(closure.dense() | np.eye(closure.n, dtype=bool)))
    u = torch.from_numpy(closure.pairs[:, 0]).repeat(3)[:512]
    for seed in range(3):
        got = _sample(closure, u, n, torch.Generator().manual_seed(seed))
        want = _dense_sampler(allowed, u, n, torch.Generator().manual_seed(seed))
        assert torch.equal(got, want)
        _check_negatives(closure, u, got, n)


def test_negatives_are_never_u_nor_an_ancestor_and_distinct(mammals):
    pairs = torch.from_numpy(mammals.pairs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # 40 × 256 rows × 50 draws
        u = pairs[torch.randint(len(pairs), (256,), generator=gen), 0]
        negs = _sample(mammals, u, 50, gen)
        _check_negatives(mammals, u, negs, 50)
        assert all(len(set(row)) == 50 for row in negs.tolist()), "negatives of a row must be distinct"
    assert mammals.pairs.shape == (6540, 2) and mammals.dense().sum() == 6540


def test_sampler_at_the_noun_scale_never_gives_u_nor_an_ancestor():
    """The noun closure (82,115 nodes, 743,241 pairs): 20 batches of 1,024 rows × 50 negatives, every negative
    checked against the node's ancestor set from the file (Python sets, not the sampler's search)."""
    pairs = load_closure(NOUN_CLOSURE)
    closure = build_closure(pairs)
    assert (closure.n, len(closure.pairs)) == (82115, 743241)
    index = {name: i for i, name in enumerate(closure.names)}
    ancestors: dict[int, set[int]] = {}
    for child, anc in pairs:
        ancestors.setdefault(index[child], set()).add(index[anc])
    gen = torch.Generator().manual_seed(0)
    table = torch.from_numpy(closure.padded())
    deepest = max(ancestors, key=lambda u: len(ancestors[u]))
    for i in range(20):
        u = torch.from_numpy(closure.pairs[:, 0])[torch.randint(len(closure.pairs), (1024,), generator=gen)]
        u[0] = deepest
        negs = sample_negatives(table, u, 50, gen)
        for node, row in zip(u.tolist(), negs.tolist()):
            assert node not in row and not ancestors[node] & set(row) and len(set(row)) == 50


def test_negatives_are_uniform_over_the_allowed_nodes():
    closure = build_closure(SMALL)
    c = closure.names.index("c")                  # allowed for c: b, d, e
    u = torch.full((30000,), c)
    negs = _sample(closure, u, 1, torch.Generator().manual_seed(1))
    counts = np.bincount(negs.flatten().numpy(), minlength=len(closure.names))
    expected = {closure.names.index(x) for x in "bde"}
    assert set(np.flatnonzero(counts)) == expected
    assert all(abs(counts[i] / 30000 - 1 / 3) < 0.015 for i in expected)


def test_negatives_with_fewer_allowed_nodes_than_requested_repeat_drawn_ones():
    """Node c of the small tree has 3 allowed negatives; asking for 5 takes all 3 and repeats them (the exact
    fallback path), as poincare-embeddings fills its free slots."""
    closure = build_closure(SMALL)
    allowed = ~(closure.dense() | np.eye(closure.n, dtype=bool))
    gen = torch.Generator().manual_seed(2)
    u = torch.from_numpy(closure.pairs[:, 0]).repeat(50)
    negs = _sample(closure, u, 5, gen)
    _check_negatives(closure, u, negs, 5)
    for node, row in zip(u.tolist(), negs.tolist()):
        assert set(row) == set(np.flatnonzero(allowed[node]))  # every allowed node shows up


def test_a_chain_has_no_negatives():
    with pytest.raises(ValueError, match="no negatives"):
        build_closure([("b", "a"), ("c", "b"), ("c", "a")])


def _brute_force(scores: np.ndarray, ancestors: np.ndarray) -> tuple[float, float]:
    """Definitions, written out: rank = 1 + #non-ancestors above + ½ #tied; AP as Σ_k (R_k − R_{k−1}) P_k over
    the distinct score thresholds (scikit-learn's average_precision_score), u excluded."""
    ranks, aps = [], []
    n = len(scores)
    for u in range(n):
        if not ancestors[u].any():
            continue
        others = [w for w in range(n) if w != u]
        for v in np.flatnonzero(ancestors[u]):
            ahead = sum(1.0 if scores[u, w] > scores[u, v] else 0.5 if scores[u, w] == scores[u, v] else 0.0
                        for w in others if not ancestors[u, w])
            ranks.append(1 + ahead)
        n_pos, ap, prev_recall = ancestors[u].sum(), 0.0, 0.0
        for t in sorted({scores[u, w] for w in others}, reverse=True):
            selected = [w for w in others if scores[u, w] >= t]
            tp = sum(ancestors[u, w] for w in selected)
            recall = tp / n_pos
            ap += (recall - prev_recall) * tp / len(selected)
            prev_recall = recall
        aps.append(ap)
    return float(np.mean(ranks)), float(np.mean(aps))


def _dense_metrics(scores: np.ndarray, ancestors: np.ndarray) -> dict[str, float]:
    """The evaluation as it was on the whole (N, N) matrix (sorted rows, binary searches): the blocked one must
    give the same numbers."""
    n = len(scores)
    ranks, aps = [], []
    for u in np.flatnonzero(ancestors.any(1)):
        others = np.arange(n) != u
        pos = ancestors[u] & others
        s_pos = scores[u, pos]
        s_neg = np.sort(scores[u, others & ~pos])
        s_all = np.sort(scores[u, others])
        above_neg = s_neg.size - np.searchsorted(s_neg, s_pos, side="right")
        tied_neg = np.searchsorted(s_neg, s_pos, side="right") - np.searchsorted(s_neg, s_pos, side="left")
        ranks.append(1 + above_neg + 0.5 * tied_neg)
        at_least_pos = s_pos.size - np.searchsorted(np.sort(s_pos), s_pos, side="left")
        at_least_all = s_all.size - np.searchsorted(s_all, s_pos, side="left")
        aps.append(float(np.mean(at_least_pos / at_least_all)))
    return {"mean_rank": float(np.concatenate(ranks).mean()), "map": float(np.mean(aps))}


def _metrics(scores: np.ndarray, closure, block: int = 2) -> dict[str, float]:
    calls = []

    def rows(r):
        calls.append(len(r))
        return scores[r]

    out = reconstruction_metrics(rows, closure, block)
    assert max(calls) <= block
    return out


def test_ranking_metrics_by_hand_and_against_brute_force():
    closure = build_closure(SMALL)
    idx = {name: i for i, name in enumerate(closure.names)}
    scores = np.zeros((6, 6))
    # row c by hand: a 3, r 1, b 1 (tied with r), d 2, e 0 → rank(a) = 1, rank(r) = 1 + 1 (d) + ½ (b) = 2.5;
    # AP(c) = (1/1 + 2/4) / 2 = 0.75 (r's threshold admits a, r, b, d)
    for name, value in dict(a=3, r=1, b=1, d=2, e=0, c=99).items():
        scores[idx["c"], idx[name]] = value
    pairs_c = closure.pairs[closure.pairs[:, 0] == idx["c"]]         # the query c alone
    m = _metrics(scores, Closure(closure.names, pairs_c, np.searchsorted(pairs_c[:, 0], np.arange(7))))
    assert m["mean_rank"] == pytest.approx((1 + 2.5) / 2) and m["map"] == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    for tree in (SMALL, FOREST):
        closure = build_closure(tree)
        n, dense = closure.n, closure.dense()
        for trial in range(30):  # integer scores: many ties
            scores = rng.integers(0, 4, size=(n, n)).astype(float) if trial % 2 else rng.normal(size=(n, n))
            m = _metrics(scores, closure, block=1 + trial % 4)
            rank, mean_ap = _brute_force(scores, dense)
            assert m["mean_rank"] == pytest.approx(rank) and m["map"] == pytest.approx(mean_ap)
            assert m == pytest.approx(_dense_metrics(scores, dense), rel=1e-12)
        assert _metrics(dense.astype(float), closure) == {"mean_rank": 1.0, "map": 1.0}


def test_blocked_evaluation_equals_the_dense_one_on_the_mammals(mammals):
    dense = mammals.dense()
    rng = np.random.default_rng(3)
    scores = rng.normal(size=dense.shape) + 2.0 * dense           # informative, ties only by chance
    scores[:, ::7] = np.round(scores[:, ::7], 1)                     # and some ties
    assert _metrics(scores, mammals, block=97) == pytest.approx(_dense_metrics(scores, dense), rel=1e-12)


def test_shards_of_the_queries_add_up_to_the_whole(mammals):
    """DDP ranks evaluate every world-size-th query row; their sums add up to one process's, metric for metric."""
    rng = np.random.default_rng(4)
    scores = rng.normal(size=(mammals.n, mammals.n)) + 2.0 * mammals.dense()
    queries = np.flatnonzero(np.diff(mammals.indptr) > 0)
    whole = reconstruction_sums(lambda r: scores[r], mammals, 64)
    shards = [reconstruction_sums(lambda r: scores[r], mammals, 64, queries[rank::3]) for rank in range(3)]
    np.testing.assert_allclose(np.sum(shards, axis=0), whole, rtol=1e-12)
    assert metrics_from_sums(whole) == pytest.approx(_dense_metrics(scores, mammals.dense()), rel=1e-12)


def test_map_matches_scikit_learn_average_precision():
    metrics = pytest.importorskip("sklearn.metrics")
    for tree in (SMALL, FOREST):
        closure = build_closure(tree)
        n, dense = closure.n, closure.dense()
        rng = np.random.default_rng(1)
        for scores in (rng.normal(size=(n, n)), rng.integers(0, 3, size=(n, n)).astype(float)):
            aps = []
            for u in np.flatnonzero(dense.any(1)):
                keep = np.arange(n) != u
                aps.append(metrics.average_precision_score(dense[u, keep], scores[u, keep]))
            assert _metrics(scores, closure, block=3)["map"] == pytest.approx(np.mean(aps))


@pytest.mark.parametrize("geometry", ["euclidean", "euclidean-tau", "l2", "poincare", "lorentz", "sphere", "metric",
                                      "stereographic"])
def test_model_scores_a_batch_as_it_scores_the_whole_table(geometry):
    torch.manual_seed(0)
    model = ReconstructionModel(30, 4, geometry, {"learnable": True}, 0.5, torch.float64)
    u = torch.randint(30, (7,))
    keys = torch.randint(30, (7, 5))
    every = model.row_scores(torch.arange(30))
    torch.testing.assert_close(model(u, keys), every[u[:, None], keys])
    torch.testing.assert_close(model.row_scores(u), every[u])
    torch.testing.assert_close(model.scorer()(u), every[u])                 # the table lifted once for every call
    torch.testing.assert_close(model.scorer()(u[:3]), every[u[:3]])
    assert model.embedding.weight.abs().max() <= 0.5


@pytest.mark.parametrize("geometry", ["poincare", "stereographic", "lorentz"])
@pytest.mark.parametrize("radius, c", [(8.0, 1.0), (8.0, 4.0), (3.0, 0.25)])  # geoopt's ball projects past R ≈ 12
def test_hyperbolic_radius_bounds_the_distance_from_the_origin(geometry, radius, c):
    """``clip_for_radius``: a clipped vector lands at geodesic distance R/√c from the origin, by geoopt's own maps
    (the ball's and κ-stereographic's ``expmap0`` with ``dist0``; the hyperboloid's with its ``dist0``)."""
    geoopt = pytest.importorskip("geoopt")
    model = ReconstructionModel(3, 5, geometry, {"curvature": -c}, 1e-3, torch.float64, hyperbolic_radius=radius)
    g = model.geometry
    x = torch.full((1, 1, 1, 5), 1e3, dtype=torch.float64)         # far past any clip
    with pytest.warns(UserWarning, match="clipped"):
        u = g.tangent(x, g.kappa(x))[0, 0, 0]
    if geometry == "lorentz":
        point = geoopt.Lorentz(k=1.0 / c).expmap0(torch.cat([u.new_zeros(1), u]))
        d = geoopt.Lorentz(k=1.0 / c).dist0(point)
    else:
        ball = geoopt.PoincareBall(c=c) if geometry == "poincare" else geoopt.Stereographic(k=-c)
        d = ball.dist0(ball.expmap0(u))
    assert float(d) == pytest.approx(radius / c ** 0.5, rel=1e-9)


def test_hyperbolic_radius_sets_the_clip_of_curved_geometries_only():
    clip = {name: ReconstructionModel(3, 4, name, {}, 1e-3, torch.float32, hyperbolic_radius=20.0).geometry.clip_radius
            for name in ("lorentz", "poincare", "stereographic")}
    assert clip == {"lorentz": 20.0, "poincare": 10.0, "stereographic": 10.0}
    for name in ("euclidean", "l2", "sphere", "metric"):           # nothing to clip: built as without the radius
        assert getattr(ReconstructionModel(3, 4, name, {}, 1e-3, torch.float32, 20.0).geometry, "clip_radius",
                       None) is None
    given = ReconstructionModel(3, 4, "lorentz", {"clip_radius": 4.0}, 1e-3, torch.float32, hyperbolic_radius=20.0)
    assert given.geometry.clip_radius == 4.0                       # geometry_params name one: it wins
    assert ReconstructionModel(3, 4, "lorentz", {}, 1e-3, torch.float32).geometry.clip_radius == 4.0


def test_one_epoch_through_the_cli(tmp_path, capsys):
    """Two epochs of the mammal closure (6,540 pairs: 25 steps of 256), two geometries, two dims."""
    argv = ["run", "--tasks", "wordnet-reconstruction", "--geometries", "euclidean,l2", "--seeds", "1",
            "--out", str(tmp_path), "--quiet", "--jobs", "1", "--set", "epochs=2", "--set", "eval_epochs=1",
            "--set", "dim=[2,5]"]
    assert main(argv) == 0, capsys.readouterr().err
    records, bad = read_log(tmp_path / "results.jsonl")
    assert len(records) == 4 and not bad
    for r in records:
        assert r["metric"] == "map" and r["sweep"] == "dim" and r["sweep_value"] in (2, 5)
        assert 0 < r["metrics"]["map"] <= 1 and r["metrics"]["mean_rank"] >= 1
        assert [p["step"] for p in r["curve"]] == [25, 50] and r["config"]["iters"] == 50
        assert r["config"]["weight_decay"] == 0.0
    table = (tmp_path / "results.md").read_text()
    assert "| wordnet-reconstruction | dim=5 | l2 |" in table and "mean_rank" in table
    assert (tmp_path / "sweep_wordnet-reconstruction.png").stat().st_size > 1000


def test_any_closure_file_through_data(tmp_path, capsys):
    """--data wordnet-reconstruction=FILE runs the task on another closure; the loader's checks apply first."""
    small = tmp_path / "small.tsv"
    small.write_text("".join(f"{c}\t{a}\n" for c, a in SMALL))
    base = ["run", "--tasks", "wordnet-reconstruction", "--geometries", "poincare", "--seeds", "1", "--quiet",
            "--jobs", "1", "--no-report", "--set", "epochs=2", "--set", "eval_epochs=1", "--set", "dim=[2]",
            "--set", "batch_size=4", "--set", "n_negatives=3"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--data", f"wordnet-reconstruction={small}"]) == 0
    (record,), _ = read_log(tmp_path / "ok" / "results.jsonl")
    assert record["data"] == str(small) and record["params"]["total"] - record["params"]["geometry"] == 6 * 2
    assert record["config"]["iters"] == 4 and [p["step"] for p in record["curve"]] == [2, 4]  # 8 pairs // 4
    forest = tmp_path / "forest.tsv"
    forest.write_text("".join(f"{c}\t{a}\n" for c, a in FOREST))
    assert main([*base, "--out", str(tmp_path / "forest"), "--data", f"wordnet-reconstruction={forest}"]) == 0
    (record,), _ = read_log(tmp_path / "forest" / "results.jsonl")   # 13 pairs // 4 = 3 steps an epoch
    assert record["config"]["iters"] == 6 and [p["step"] for p in record["curve"]] == [3, 6]
    assert 0 < record["metrics"]["map"] <= 1
    broken = tmp_path / "broken.tsv"
    broken.write_text("c\ta\na\tr\n")  # c -> a -> r without c -> r
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--data", f"wordnet-reconstruction={broken}"]) == 2
    assert "not transitively closed" in capsys.readouterr().err
