"""Statistics against scipy, and the results log's resume and crash safety."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from benchmarks.log import append_record, finished_keys, read_log, run_key
from benchmarks.report import markdown, persistence, persistence_markdown, rows
from benchmarks.stats import (bh_adjust, late_improvement, mean_difference, median_interval, summarize, verdict,
                              welch)

A = [1.90, 1.93, 1.88, 1.91, 1.95]
B = [1.80, 1.82, 1.79, 1.84, 1.81]


def test_summary_matches_scipy():
    s = summarize(A)
    low, high = stats.t.interval(0.95, df=4, loc=np.mean(A), scale=stats.sem(A))
    assert s.mean == pytest.approx(1.914) and (s.ci_low, s.ci_high) == pytest.approx((low, high))
    # by hand: t_{0.975, 4} = 2.7764451
    half = 2.7764451 * np.std(A, ddof=1) / math.sqrt(5)
    assert s.half_width == pytest.approx(half, rel=1e-6)
    assert math.isnan(summarize([1.0]).ci_low)


def test_welch_matches_scipy_and_verdicts():
    p = welch(B, A)
    assert p == pytest.approx(stats.ttest_ind(B, A, equal_var=False).pvalue)
    # Welch by hand: t = (mB - mA) / sqrt(vA/n + vB/n)
    va, vb = np.var(A, ddof=1), np.var(B, ddof=1)
    t = (np.mean(B) - np.mean(A)) / math.sqrt(va / 5 + vb / 5)
    dof = (va / 5 + vb / 5) ** 2 / ((va / 5) ** 2 / 4 + (vb / 5) ** 2 / 4)
    assert p == pytest.approx(2 * stats.t.sf(abs(t), dof))
    assert verdict(B, A, higher_is_better=False) == "better"   # lower loss
    assert verdict(B, A, higher_is_better=True) == "worse"     # lower accuracy
    assert verdict(A, A, higher_is_better=True) == "no different"
    assert verdict([1.0, 1.1, 0.9], [1.05, 0.95, 1.0], True) == "no different"


def test_bh_adjusted_p_values_against_scipy_and_by_hand():
    # by hand, m = 4: sorted 0.01, 0.03, 0.04, 0.20 → p·m/rank = 0.04, 0.06, 0.0533, 0.20 → running minimum from
    # the largest: 0.04, 0.0533, 0.0533, 0.20 (in the original order below)
    p = [0.01, 0.04, 0.03, 0.20]
    assert bh_adjust(p) == pytest.approx([0.04, 0.16 / 3, 0.16 / 3, 0.20])
    rng = np.random.default_rng(0)
    q = rng.uniform(size=40) ** 3
    assert bh_adjust(q) == pytest.approx(stats.false_discovery_control(q, method="bh"))
    # nan entries (undefined tests) are outside the family
    with_nan = bh_adjust([0.01, math.nan, 0.04, 0.03, 0.20])
    assert math.isnan(with_nan[1]) and np.delete(with_nan, 1) == pytest.approx(bh_adjust(p))


def test_mean_difference_and_its_welch_interval():
    diff, low, high = mean_difference(B, A)
    ci = stats.ttest_ind(B, A, equal_var=False).confidence_interval(0.95)
    assert diff == pytest.approx(np.mean(B) - np.mean(A)) and (low, high) == pytest.approx((ci.low, ci.high))
    # by hand: diff ± t_{0.975, ν} · se with Welch's ν
    va, vb = np.var(A, ddof=1) / 5, np.var(B, ddof=1) / 5
    dof = (va + vb) ** 2 / (va ** 2 / 4 + vb ** 2 / 4)
    assert high - diff == pytest.approx(stats.t.ppf(0.975, dof) * math.sqrt(va + vb))
    assert mean_difference([1.0, 1.0], [0.5, 0.5]) == (0.5, 0.5, 0.5)
    assert math.isnan(mean_difference([1.0], A)[1])


def test_late_improvement_of_a_curve():
    curve = [{"step": s, "loss": v, "acc": a} for s, v, a in [(20, 3.0, 0.1), (40, 2.5, 0.5), (60, 2.2, 0.7),
                                                              (80, 2.0, 0.8), (100, 1.98, 0.82)]]
    assert late_improvement(curve, "loss", False, 100) == pytest.approx(0.02 / 2.0)   # from step 80 to 100
    assert late_improvement(curve, "acc", True, 100) == pytest.approx(0.02 / 0.8)
    assert late_improvement(curve, "loss", False, 110) == pytest.approx(0.02 / 2.0)   # 0.8·110 = 88 → step 80
    assert math.isnan(late_improvement(curve[-1:], "loss", False, 100))  # no point at or before step 80
    rising = [{"step": 80, "loss": 2.0}, {"step": 100, "loss": 2.1}]
    assert late_improvement(rising, "loss", False, 100) < 0


def _record(key: str, task="wordnet-hierarchy", geometry="euclidean", seed=0, acc=0.5, sweep_value=None) -> dict:
    return {"key": key, "task": task, "geometry": geometry, "seed": seed, "config": {"iters": 1, "v": sweep_value},
            "sweep": "head_dim" if sweep_value else None, "sweep_value": sweep_value, "metric": "test_acc",
            "higher_is_better": True,
            "metrics": {"test_acc": acc}, "curve": [{"step": 1, "test_acc": acc}],
            "params": {"total": 10, "geometry": 0}, "timings": {"tokens_per_s": 100.0, "train_s": 1.0},
            "memory": {"activation_mb": 1.0, "cuda_peak_mb": None}}


def test_log_append_resume_and_truncated_line(tmp_path):
    log = tmp_path / "r.jsonl"
    append_record(log, _record("a"))
    append_record(log, _record("b", seed=1))
    assert finished_keys(log) == {"a", "b"}
    # a run killed mid-write: half a JSON line without its newline
    with open(log, "ab") as fh:
        fh.write(json.dumps(_record("c", seed=2)).encode()[:37])
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        records, bad = read_log(log)
    assert [r["key"] for r in records] == ["a", "b"] and bad == [3]
    append_record(log, _record("d", seed=3))  # starts on a fresh line: the truncated one stays isolated
    with pytest.warns(UserWarning):
        assert finished_keys(log) == {"a", "b", "d"}
    lines = log.read_bytes().split(b"\n")
    assert json.loads(lines[3])["key"] == "d" and lines[-1] == b""


def test_run_key_is_stable_and_config_sensitive():
    k = run_key("t", "g", 0, {"a": 1, "b": 2})
    assert k == run_key("t", "g", 0, {"b": 2, "a": 1})
    assert k != run_key("t", "g", 1, {"a": 1, "b": 2}) != run_key("t", "g", 0, {"a": 1, "b": 3})


def test_report_rows_direction_and_ratios():
    recs = [_record(f"e{s}", seed=s, acc=a) for s, a in enumerate([0.50, 0.52, 0.51])]
    recs += [_record(f"p{s}", geometry="poincare", seed=s, acc=a) for s, a in enumerate([0.70, 0.72, 0.69])]
    recs[-1]["timings"]["tokens_per_s"] = 40.0
    table = {r["geometry"]: r for r in rows(recs)}
    assert table["poincare"]["vs_euclidean"] == "better"
    assert table["poincare"]["p_vs_euclidean"] == pytest.approx(
        stats.ttest_ind([0.70, 0.72, 0.69], [0.50, 0.52, 0.51], equal_var=False).pvalue)
    assert table["poincare"]["speed_vs_euclidean"] == pytest.approx(80 / 100)
    assert table["poincare"]["p_adj"] == pytest.approx(table["poincare"]["p_vs_euclidean"])  # a family of one
    assert table["poincare"]["diff_vs_euclidean"] == pytest.approx(0.70333 - 0.51, abs=1e-4)
    assert table["poincare"]["plateau"] == "n/a"  # one curve point: no point at 80% of the steps
    assert "| poincare |" in markdown(list(table.values()))


def test_report_adjusts_p_values_over_every_comparison():
    """Three geometries at two sweep values against euclidean: one family of 6 tests, verdicts on p_adj."""
    base = [0.50, 0.52, 0.51]
    shifts = {"lorentz": 0.0, "poincare": 0.05, "sphere": -0.2}
    recs = []
    for value in (2, 8):
        recs += [_record(f"e{value}{s}", seed=s, acc=a, sweep_value=value) for s, a in enumerate(base)]
        for geometry, shift in shifts.items():
            noise = [0.01, -0.012, 0.004] if value == 2 else [-0.006, 0.011, 0.0]
            recs += [_record(f"{geometry}{value}{s}", geometry=geometry, seed=s, acc=a + shift + n, sweep_value=value)
                     for s, (a, n) in enumerate(zip(base, noise))]
    table = [r for r in rows(recs) if r["geometry"] != "euclidean"]
    assert len(table) == 6
    raw = [r["p_vs_euclidean"] for r in table]
    expected = stats.false_discovery_control(raw, method="bh")
    assert [r["p_adj"] for r in table] == pytest.approx(list(expected))
    for r, p_adj in zip(table, expected):
        better = r["diff_vs_euclidean"] > 0
        assert r["vs_euclidean"] == ("no different" if p_adj >= 0.05 else "better" if better else "worse")
    assert {r["vs_euclidean"] for r in table if r["geometry"] == "sphere"} == {"worse"}
    assert {r["vs_euclidean"] for r in table if r["geometry"] == "lorentz"} == {"no different"}


def test_saved_activation_memory_counts_distinct_storages():
    import torch

    from benchmarks.memory import saved_activation_mb

    x = torch.randn(256, 1024, requires_grad=True)   # 1 MiB each in float32
    w = torch.randn(256, 1024, requires_grad=True)
    loss, mb = saved_activation_mb(lambda: (x * w).sum())  # mul saves x and w
    assert mb == pytest.approx(2.0)
    loss.backward()
    assert torch.equal(x.grad, w.detach())
    _, mb = saved_activation_mb(lambda: (x * x[:, :512].repeat(1, 2)).sum())  # x, its view and a new tensor
    assert mb == pytest.approx(2.0)


def _binomial_median_interval(x, confidence=0.95):
    """Brute force: the widest-tail order statistics x_(k), x_(n-k+1) (1-based) with P(Bin(n, ½) < k) ≤ (1 - c)/2,
    the textbook distribution-free interval of a median (Conover, Practical Nonparametric Statistics, §3.2)."""
    from math import comb

    n, tail = len(x), (1 - confidence) / 2
    cdf, k = 0.0, 0
    while cdf + comb(n, k) / 2 ** n <= tail:  # P(X ≤ k) with X ~ Bin(n, 1/2)
        cdf += comb(n, k) / 2 ** n
        k += 1
    xs = sorted(x)
    return (xs[k - 1], xs[n - k]) if k >= 1 else (float("nan"), float("nan"))


@pytest.mark.parametrize("n", [6, 7, 9, 11, 41, 100])
def test_median_interval_is_the_order_statistics_interval(n):
    x = np.random.default_rng(n).lognormal(size=n)
    median, low, high = median_interval(x)
    assert median == np.median(x)
    assert (low, high) == _binomial_median_interval(list(x))
    assert low <= median <= high


def test_median_interval_too_few_values_and_empty():
    median, low, high = median_interval([3.0, 1.0, 2.0])
    assert median == 2.0 and math.isnan(low) and math.isnan(high)  # 3 values cannot give 95%
    with pytest.raises(ValueError, match="at least one value"):
        median_interval([])


def test_throughput_ratio_is_paired_per_round():
    from benchmarks.throughput import paired_ratio

    base = [10.0, 20.0, 10.0, 20.0, 10.0, 20.0, 10.0]  # the machine's speed halves and recovers between rounds
    geom = [11.0, 22.0, 11.0, 22.0, 11.0, 22.0, 11.0]  # always 10% slower in its own round
    ratio, low, high = paired_ratio(base, geom)
    assert ratio == pytest.approx(10 / 11) and low == pytest.approx(10 / 11) and high == pytest.approx(10 / 11)
    # the machine slows down in the middle of round 4, between the two timings: the ratio of the medians falls
    # to 10/22, the median of the rounds' ratios stays 10/11
    base = [10.0, 10.0, 10.0, 10.0, 20.0, 20.0, 20.0]
    geom = [11.0, 11.0, 11.0, 22.0, 22.0, 22.0, 22.0]
    assert np.median(base) / np.median(geom) == pytest.approx(10 / 22)
    assert paired_ratio(base, geom)[0] == pytest.approx(10 / 11)
    with pytest.raises(ValueError, match="one time per round"):
        paired_ratio([1.0, 2.0], [1.0])


def test_report_compares_every_row_with_euclidean_and_euclidean_tau():
    """Two baselines, two BH families: each row's difference, Welch p and adjusted p against euclidean-tau are
    scipy's on the euclidean-tau runs, adjusted over the comparisons with euclidean-tau only."""
    values = {"euclidean": [0.50, 0.52, 0.51], "euclidean-tau": [0.60, 0.61, 0.59],
              "poincare": [0.70, 0.72, 0.69], "sphere": [0.605, 0.60, 0.61]}
    recs = [_record(f"{g}{s}", geometry=g, seed=s, acc=a) for g, vals in values.items() for s, a in enumerate(vals)]
    table = {r["geometry"]: r for r in rows(recs)}
    assert [r["geometry"] for r in rows(recs)][:2] == ["euclidean", "euclidean-tau"]
    assert table["euclidean"]["vs_euclidean"] == table["euclidean-tau"]["vs_euclidean_tau"] == "baseline"
    others = ["euclidean", "poincare", "sphere"]
    raw = [stats.ttest_ind(values[g], values["euclidean-tau"], equal_var=False).pvalue for g in others]
    for g, p, p_adj in zip(others, raw, stats.false_discovery_control(raw, method="bh")):
        assert table[g]["p_vs_euclidean_tau"] == pytest.approx(p)
        assert table[g]["p_adj_tau"] == pytest.approx(p_adj)
        assert table[g]["diff_vs_euclidean_tau"] == pytest.approx(np.mean(values[g]) - 0.60)
    assert table["poincare"]["vs_euclidean_tau"] == "better" and table["sphere"]["vs_euclidean_tau"] == "no different"
    assert table["sphere"]["vs_euclidean"] == "better"                  # a gain over SDPA the control explains
    raw_e = [stats.ttest_ind(values[g], values["euclidean"], equal_var=False).pvalue
             for g in ("euclidean-tau", "poincare", "sphere")]
    assert [table[g]["p_adj"] for g in ("euclidean-tau", "poincare", "sphere")] == pytest.approx(
        list(stats.false_discovery_control(raw_e, method="bh")))
    md = markdown(list(table.values()))
    assert "− euclidean-tau" in md and "| sphere |" in md and "no different" in md


def test_persistence_of_a_gain_over_stretched_schedules():
    """Val loss (lower is better) at 1×, 2×, 4×: sphere's gain over euclidean holds (persists), poincare's falls to
    a third (shrinks), metric's is gone at 4× (vanishes), l2 never had one; against euclidean-tau nobody gains."""
    base = {1: 2.00, 2: 1.90, 4: 1.80}
    gains = {"sphere": {1: 0.10, 2: 0.09, 4: 0.08}, "poincare": {1: 0.12, 2: 0.08, 4: 0.04},
             "metric": {1: 0.10, 2: 0.05, 4: 0.0}, "l2": {1: 0.0, 2: 0.0, 4: 0.0}, "euclidean-tau": {1: 0.10, 2: 0.09,
                                                                                                   4: 0.08}}
    noise = [0.002, -0.003, 0.001]
    recs = []
    for stretch, b in base.items():
        for geometry, gain in [("euclidean", {1: 0, 2: 0, 4: 0}), *gains.items()]:
            for s, n in enumerate(noise):
                r = _record(f"{geometry}{stretch}{s}", task="shakespeare-char", geometry=geometry, seed=s,
                            acc=b - gain[stretch] + n + (0.001 * s if geometry == "l2" else 0))
                r.update(sweep="stretch", sweep_value=stretch, metric="val_loss", higher_is_better=False,
                         metrics={"val_loss": r["metrics"]["test_acc"]}, config={"iters": 1, "stretch": stretch})
                recs.append(r)
    out = {(r["geometry"], r["baseline"]): r for r in persistence(rows(recs))}
    assert {g: out[(g, "euclidean")]["verdict"] for g in gains} == {
        "sphere": "persists", "poincare": "shrinks", "metric": "vanishes", "l2": "no gain to follow",
        "euclidean-tau": "persists"}
    assert out[("sphere", "euclidean-tau")]["verdict"] == "no gain to follow"
    assert out[("poincare", "euclidean")]["stretch"] == [1, 2, 4]
    assert out[("poincare", "euclidean")]["diff"] == pytest.approx([-0.12, -0.08, -0.04], abs=1e-9)
    assert "shrinks" in persistence_markdown(list(out.values()))
