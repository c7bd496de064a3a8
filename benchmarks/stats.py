"""Statistics across seeds: mean ± 95% t confidence interval, Welch's t-test against the baseline, the
difference of means with its Welch confidence interval, Benjamini–Hochberg adjusted p-values over a
family of comparisons, the median with its distribution-free confidence interval (the throughput benchmark's
ratios), and the plateau check of a learning curve.

All come from :mod:`scipy.stats`: ``t.interval`` with the standard error of the mean,
``ttest_ind(equal_var=False)`` (Welch 1947) and its ``confidence_interval()``,
``false_discovery_control(method="bh")`` (Benjamini & Hochberg 1995), and ``quantile_test`` (order statistics:
the interval of the median assumes nothing of the distribution, Conover 1999, §3.2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05


@dataclass
class Summary:
    n: int
    mean: float
    ci_low: float
    ci_high: float

    @property
    def half_width(self) -> float:
        return (self.ci_high - self.ci_low) / 2


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Mean and its two-sided ``confidence`` t-interval (``nan`` bounds for a single value)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, math.nan, math.nan)
    sem = float(stats.sem(x))
    if sem == 0.0:
        return Summary(int(x.size), mean, mean, mean)
    low, high = stats.t.interval(confidence, df=x.size - 1, loc=mean, scale=sem)
    return Summary(int(x.size), mean, float(low), float(high))


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(median, low, high)``: the sample median and its two-sided ``confidence`` interval from the order
    statistics (``scipy.stats.quantile_test``), valid for any continuous distribution of independent values;
    ``nan`` bounds when there are too few values for that confidence (fewer than 6 at 95%)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("median_interval needs at least one value")
    median = float(np.median(x))
    interval = stats.quantile_test(x, q=median, p=0.5).confidence_interval(confidence)
    return median, float(interval.low), float(interval.high)


def welch(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); ``nan`` when it is undefined."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.size < 2 or b.size < 2:
        return math.nan
    if a.var() == 0 and b.var() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(values: Sequence[float], baseline: Sequence[float], higher_is_better: bool, alpha: float = ALPHA,
            p: float | None = None) -> str:
    """``better`` / ``no different`` / ``worse`` than the baseline at level ``alpha`` (direction-aware).

    ``p`` is the p-value to decide on (e.g. a multiplicity-adjusted one); default: Welch's raw p.
    """
    p = welch(values, baseline) if p is None else p
    if math.isnan(p):
        return "n/a (needs ≥2 seeds)"
    if p >= alpha:
        return "no different"
    improved = np.mean(values) > np.mean(baseline)
    return "better" if improved == higher_is_better else "worse"


def mean_difference(values: Sequence[float], baseline: Sequence[float],
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """Effect size: ``mean(values) - mean(baseline)`` and its Welch ``confidence`` interval (``nan`` bounds
    with fewer than 2 values on a side; a zero-width interval when neither side varies)."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    diff = float(a.mean() - b.mean())
    if a.size < 2 or b.size < 2:
        return diff, math.nan, math.nan
    if a.var() == 0 and b.var() == 0:
        return diff, diff, diff
    ci = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return diff, float(ci.low), float(ci.high)


def bh_adjust(pvalues: Sequence[float]) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values (``scipy.stats.false_discovery_control``); ``nan`` entries are
    left out of the family and stay ``nan``."""
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = ~np.isnan(p)
    if ok.any():
        out[ok] = stats.false_discovery_control(p[ok], method="bh")
    return out


PLATEAU_FRACTION = 0.2   # the last 20% of the training steps ...
PLATEAU_TOLERANCE = 0.02  # ... improve the headline metric by less than 2% (relative)


def late_improvement(curve: Sequence[dict], metric: str, higher_is_better: bool, iters: int,
                     fraction: float = PLATEAU_FRACTION) -> float:
    """Relative improvement of ``metric`` over the last ``fraction`` of the steps: from the last curve point at
    or before step ``(1 - fraction)·iters`` to the final point, in the good direction (a loss that rose
    gives a negative value). ``nan`` when the curve has no point that early."""
    points = [p for p in curve if metric in p]
    early = [p for p in points if p["step"] <= (1 - fraction) * iters]
    if not early or not points:
        return math.nan
    start, end = early[-1][metric], points[-1][metric]
    gain = end - start if higher_is_better else start - end
    return gain / abs(start) if start else math.nan
