"""Benchmark data: loader validation, the ListOps generator, the WordNet task construction."""
from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from benchmarks.data import DataError, load_closure, load_text, restrict_to_subtree
from benchmarks.tasks import listops_gen
from benchmarks.tasks.wordnet_data import build_hierarchy, make_examples, split_pairs


# -- loaders -------------------------------------------------------------------------------------
def test_bundled_files_load():
    assert len(load_text()) == 1_115_394
    pairs = load_closure()
    assert len(pairs) == 6540 and len({n for p in pairs for n in p}) == 1180


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist.*--data"):
        load_text(tmp_path / "nope.txt")
    with pytest.raises(DataError, match="does not exist"):
        load_closure(tmp_path / "nope.tsv")


@pytest.mark.parametrize("content, match", [
    ("a\tb\tc\n", "expected 'child<TAB>ancestor'"),
    ("a b\n", "expected 'child<TAB>ancestor'"),
    ("a\ta\n", "its own ancestor"),
    ("a\tb\nb\ta\n", "cycle"),
    ("a\tb\nb\tc\n", "not transitively closed"),
    ("a\tb\nb\tc\nc\ta\na\tc\nb\ta\nc\tb\n", "cycle"),
    ("\n\n", "no pairs"),
])
def test_malformed_closure(tmp_path, content, match):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=match):
        load_closure(path)


def test_a_forest_and_a_gzip_file_load(tmp_path):
    """Several roots (r, s) and a lone pair are a closure like any other; a .gz file is read decompressed."""
    import gzip

    forest = [("a", "r"), ("b", "a"), ("b", "r"), ("c", "s"), ("y", "x")]
    path = tmp_path / "forest.tsv.gz"
    path.write_bytes(gzip.compress("".join(f"{c}\t{a}\n" for c, a in forest).encode()))
    assert load_closure(path) == forest
    path.write_bytes(gzip.compress(b"a\tb\nb\ta\n"))
    with pytest.raises(DataError, match="cycle"):
        load_closure(path)
    path.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(DataError, match="does not decompress"):
        load_closure(path)


def test_subtree_of_a_closure(tmp_path):
    pairs = load_closure()
    sub = restrict_to_subtree(pairs, "carnivore.n.01")
    nodes = {n for p in sub for n in p}
    assert len(nodes) == 366 and all(anc in nodes and child != "carnivore.n.01" for child, anc in sub)
    assert {a for c, a in sub if c == "dog.n.01"} == {a for c, a in pairs if c == "dog.n.01"} & nodes
    path = tmp_path / "sub.tsv"
    path.write_text("".join(f"{c}\t{a}\n" for c, a in sub))
    assert sorted(load_closure(path)) == sorted(sub)  # still a valid closure with one root
    assert restrict_to_subtree(pairs, None) is pairs
    with pytest.raises(DataError, match="no descendants"):
        restrict_to_subtree(pairs, "dog.n.99")


def test_malformed_text(tmp_path):
    path = tmp_path / "bin.txt"
    path.write_bytes(b"\xff\xfe\x00" * 1000)
    with pytest.raises(DataError, match="not UTF-8"):
        load_text(path)
    path.write_text("short")
    with pytest.raises(DataError, match="fewer than"):
        load_text(path)


# -- ListOps -------------------------------------------------------------------------------------
def _evaluate(tokens: list[str]) -> int:
    """An independent recursive-descent evaluator of a parenthesis-free ListOps expression."""
    def parse(i: int) -> tuple[float, int]:
        tok = tokens[i]
        if tok.isdigit():
            return int(tok), i + 1
        args, i = [], i + 1
        while tokens[i] != "]":
            value, i = parse(i)
            args.append(value)
        fn = {"[MIN": min, "[MAX": max, "[MED": lambda a: math.floor(statistics.median(a)),
              "[SM": lambda a: sum(a) % 10}[tok]
        return fn(args), i + 1

    value, end = parse(0)
    assert end == len(tokens), "trailing tokens"
    return value


def _depth(tokens: list[str]) -> int:
    depth = best = 0
    for t in tokens:
        depth += t.startswith("[")
        best = max(best, depth)
        depth -= t == "]"
    return best


def _max_args(tokens: list[str]) -> int:
    stack, best = [], 0
    for t in tokens:
        if stack:
            stack[-1] += t != "]"
        if t.startswith("["):
            stack.append(0)
        elif t == "]":
            best = max(best, stack.pop())
    return best


@pytest.mark.parametrize("lo, hi, depth, args", [(20, 100, 10, 10), (5, 40, 3, 4)])
def test_listops_labels_and_bounds(lo, hi, depth, args):
    data = listops_gen.generate(300, lo, hi, seed=1, max_depth=depth, max_args=args)
    assert len({" ".join(t) for t, _ in data}) == 300
    for tokens, label in data:
        assert lo < len(tokens) < hi
        assert _evaluate(tokens) == label
        assert _depth(tokens) <= depth and 2 <= _max_args(tokens) <= args
        assert set(tokens) <= set(listops_gen.VOCAB)
    labels = np.bincount([y for _, y in data], minlength=10)
    assert (labels > 0).sum() >= 8  # every class shows up (SM spreads the labels)


def test_listops_lra_lengths_and_determinism():
    a = listops_gen.generate(5, 500, 2000, seed=3)
    assert a == listops_gen.generate(5, 500, 2000, seed=3)
    assert all(500 < len(t) < 2000 and _evaluate(t) == y for t, y in a)
    assert listops_gen.apply("[MED", [1, 2, 3, 9]) == 2 and listops_gen.apply("[SM", [7, 8]) == 5


def test_listops_bad_bounds():
    with pytest.raises(ValueError, match="min_length"):
        listops_gen.generate(1, 10, 5, seed=0)


# -- WordNet -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hierarchy():
    return build_hierarchy(load_closure())


def test_tree_distance_against_networkx(hierarchy):
    nx = pytest.importorskip("networkx")
    g = nx.Graph()
    g.add_edges_from((c, p) for c, ps in enumerate(hierarchy.parents) for p in ps)
    rng = np.random.default_rng(0)
    for a, b in rng.integers(0, len(hierarchy.names), size=(200, 2)):
        assert hierarchy.dist[a, b] == nx.shortest_path_length(g, int(a), int(b))
    # transitive reduction agrees with networkx's
    closure = nx.DiGraph(load_closure())
    reduced = nx.transitive_reduction(closure)
    index = {n: i for i, n in enumerate(hierarchy.names)}
    ours = {(c, p) for c, ps in enumerate(hierarchy.parents) for p in ps}
    assert ours == {(index[c], index[p]) for c, p in reduced.edges}


def test_examples_unique_answer_and_split(hierarchy):
    split = split_pairs(hierarchy, max_dist=4, test_frac=0.2, split_seed=0)
    train = {tuple(p) for p in split.train}
    test = {tuple(p) for p in split.test}
    assert not train & test and len(test) > 1000
    assert all((b, a) in test for a, b in test)  # split as unordered pairs
    rng = np.random.default_rng(0)
    for pairs, name in ((split.train, "train"), (split.test, "test")):
        q, cands, y = make_examples(hierarchy, pairs, 2000, 8, rng)
        d = hierarchy.dist[q[:, None], cands]                   # (n, 8)
        assert (d.argmin(1) == y).all(), name
        s = np.sort(d, 1)
        assert (s[:, 0] < s[:, 1]).all(), f"{name}: the nearest candidate must be unique"
        assert all(len(set(row)) == 8 and qq not in row for qq, row in zip(q, cands.tolist()))
        answers = {(int(a), int(c[t])) for a, c, t in zip(q, cands, y)}
        assert answers <= (train if name == "train" else test)
    q, cands, y = make_examples(hierarchy, split.train, 2000, 8, rng)
    assert not {(int(a), int(c[t])) for a, c, t in zip(q, cands, y)} & test
