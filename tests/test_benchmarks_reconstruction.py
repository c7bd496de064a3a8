"""The wordnet-reconstruction task: negative sampling, the ranking metric and MAP against brute force, the
model's scores, and a one-epoch run through the command line."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.cli import main
from benchmarks.data import load_closure
from benchmarks.log import read_log
from benchmarks.tasks.reconstruction import ReconstructionModel
from benchmarks.tasks.reconstruction_data import build_closure, reconstruction_metrics, sample_negatives

# r ─ a ─ c          closure pairs (child, ancestor)
#   │   └ d
#   └ b ─ e
SMALL = [("a", "r"), ("b", "r"), ("c", "a"), ("c", "r"), ("d", "a"), ("d", "r"), ("e", "b"), ("e", "r")]


@pytest.fixture(scope="module")
def mammals():
    return build_closure(load_closure())


def _check_negatives(closure, u: torch.Tensor, negs: torch.Tensor, n: int) -> None:
    anc = torch.from_numpy(closure.ancestors)
    assert negs.shape == (len(u), n) and negs.dtype == torch.long
    assert not (negs == u[:, None]).any(), "a negative equals its query node"
    assert not anc[u[:, None], negs].any(), "a negative is an ancestor of its query node"


def test_negatives_are_never_u_nor_an_ancestor_and_distinct(mammals):
    allowed = torch.from_numpy(mammals.allowed)
    pairs = torch.from_numpy(mammals.pairs)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):  # 40 × 256 rows × 50 draws
        u = pairs[torch.randint(len(pairs), (256,), generator=gen), 0]
        negs = sample_negatives(allowed, u, 50, gen)
        _check_negatives(mammals, u, negs, 50)
        assert all(len(set(row)) == 50 for row in negs.tolist()), "negatives of a row must be distinct"
    assert mammals.pairs.shape == (6540, 2) and mammals.ancestors.sum() == 6540


def test_negatives_are_uniform_over_the_allowed_nodes():
    closure = build_closure(SMALL)
    allowed = torch.from_numpy(closure.allowed)
    c = closure.names.index("c")                  # allowed for c: b, d, e
    u = torch.full((30000,), c)
    negs = sample_negatives(allowed, u, 1, torch.Generator().manual_seed(1))
    counts = np.bincount(negs.flatten().numpy(), minlength=len(closure.names))
    expected = {closure.names.index(x) for x in "bde"}
    assert set(np.flatnonzero(counts)) == expected
    assert all(abs(counts[i] / 30000 - 1 / 3) < 0.015 for i in expected)


def test_negatives_with_fewer_allowed_nodes_than_requested_repeat_drawn_ones():
    """Node c of the small tree has 3 allowed negatives; asking for 5 takes all 3 and repeats them (the exact
    fallback path), as poincare-embeddings fills its free slots."""
    closure = build_closure(SMALL)
    allowed = torch.from_numpy(closure.allowed)
    gen = torch.Generator().manual_seed(2)
    u = torch.from_numpy(closure.pairs[:, 0]).repeat(50)
    negs = sample_negatives(allowed, u, 5, gen)
    _check_negatives(closure, u, negs, 5)
    for node, row in zip(u.tolist(), negs.tolist()):
        assert set(row) == set(np.flatnonzero(closure.allowed[node]))  # every allowed node shows up


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


def test_ranking_metrics_by_hand_and_against_brute_force():
    closure = build_closure(SMALL)
    idx = {name: i for i, name in enumerate(closure.names)}
    scores = np.zeros((6, 6))
    # row c by hand: a 3, r 1, b 1 (tied with r), d 2, e 0 → rank(a) = 1, rank(r) = 1 + 1 (d) + ½ (b) = 2.5;
    # AP(c) = (1/1 + 2/4) / 2 = 0.75 (r's threshold admits a, r, b, d)
    for name, value in dict(a=3, r=1, b=1, d=2, e=0, c=99).items():
        scores[idx["c"], idx[name]] = value
    only_c = closure.ancestors & (np.arange(6)[:, None] == idx["c"])
    m = reconstruction_metrics(scores, only_c)
    assert m["mean_rank"] == pytest.approx((1 + 2.5) / 2) and m["map"] == pytest.approx(0.75)
    rng = np.random.default_rng(0)
    for trial in range(30):  # integer scores: many ties
        scores = rng.integers(0, 4, size=(6, 6)).astype(float) if trial % 2 else rng.normal(size=(6, 6))
        m = reconstruction_metrics(scores, closure.ancestors)
        rank, mean_ap = _brute_force(scores, closure.ancestors)
        assert m["mean_rank"] == pytest.approx(rank) and m["map"] == pytest.approx(mean_ap)
    perfect = reconstruction_metrics(closure.ancestors.astype(float), closure.ancestors)
    assert perfect == {"mean_rank": 1.0, "map": 1.0}


def test_map_matches_scikit_learn_average_precision():
    metrics = pytest.importorskip("sklearn.metrics")
    closure = build_closure(SMALL)
    rng = np.random.default_rng(1)
    for scores in (rng.normal(size=(6, 6)), rng.integers(0, 3, size=(6, 6)).astype(float)):
        aps = []
        for u in np.flatnonzero(closure.ancestors.any(1)):
            keep = np.arange(6) != u
            aps.append(metrics.average_precision_score(closure.ancestors[u, keep], scores[u, keep]))
        assert reconstruction_metrics(scores, closure.ancestors)["map"] == pytest.approx(np.mean(aps))


@pytest.mark.parametrize("geometry", ["euclidean", "l2", "poincare", "metric"])
def test_model_scores_a_batch_as_it_scores_the_whole_table(geometry):
    torch.manual_seed(0)
    model = ReconstructionModel(30, 4, geometry, {"learnable": True}, 0.5, torch.float64)
    u = torch.randint(30, (7,))
    keys = torch.randint(30, (7, 5))
    torch.testing.assert_close(model(u, keys), model.all_scores()[u[:, None], keys])
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
    """26 steps of 256 pairs ≈ one epoch of the mammal closure (6,540 pairs), two geometries, two dims."""
    argv = ["run", "--tasks", "wordnet-reconstruction", "--geometries", "euclidean,l2", "--seeds", "1",
            "--out", str(tmp_path), "--quiet", "--jobs", "1", "--set", "iters=26", "--set", "eval_interval=13",
            "--set", "dim=[2,5]"]
    assert main(argv) == 0, capsys.readouterr().err
    records, bad = read_log(tmp_path / "results.jsonl")
    assert len(records) == 4 and not bad
    for r in records:
        assert r["metric"] == "map" and r["sweep"] == "dim" and r["sweep_value"] in (2, 5)
        assert 0 < r["metrics"]["map"] <= 1 and r["metrics"]["mean_rank"] >= 1
        assert [p["step"] for p in r["curve"]] == [13, 26]
        assert r["config"]["weight_decay"] == 0.0
    table = (tmp_path / "results.md").read_text()
    assert "| wordnet-reconstruction | dim=5 | l2 |" in table and "mean_rank" in table
    assert (tmp_path / "sweep_wordnet-reconstruction.png").stat().st_size > 1000


def test_any_closure_file_through_data(tmp_path, capsys):
    """--data wordnet-reconstruction=FILE runs the task on another closure; the loader's checks apply first."""
    small = tmp_path / "small.tsv"
    small.write_text("".join(f"{c}\t{a}\n" for c, a in SMALL))
    base = ["run", "--tasks", "wordnet-reconstruction", "--geometries", "poincare", "--seeds", "1", "--quiet",
            "--jobs", "1", "--no-report", "--set", "iters=4", "--set", "eval_interval=2", "--set", "dim=[2]",
            "--set", "batch_size=4", "--set", "n_negatives=3"]
    assert main([*base, "--out", str(tmp_path / "ok"), "--data", f"wordnet-reconstruction={small}"]) == 0
    (record,), _ = read_log(tmp_path / "ok" / "results.jsonl")
    assert record["data"] == str(small) and record["params"]["total"] - record["params"]["geometry"] == 6 * 2
    broken = tmp_path / "broken.tsv"
    broken.write_text("c\ta\na\tr\n")  # c -> a -> r without c -> r
    capsys.readouterr()
    assert main([*base, "--out", str(tmp_path / "bad"), "--data", f"wordnet-reconstruction={broken}"]) == 2
    assert "not transitively closed" in capsys.readouterr().err
