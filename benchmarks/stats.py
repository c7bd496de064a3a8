"""Statistics across seeds: mean ± 95% t confidence interval and Welch's t-test against the baseline.

Both come from :mod:`scipy.stats` (``t.interval`` with the standard error of the mean, and
``ttest_ind(equal_var=False)``, Welch 1947).
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


def welch(values: Sequence[float], baseline: Sequence[float]) -> float:
    """Two-sided p-value of Welch's t-test (unequal variances); ``nan`` when it is undefined."""
    a, b = np.asarray(values, dtype=float), np.asarray(baseline, dtype=float)
    if a.size < 2 or b.size < 2:
        return math.nan
    if a.var() == 0 and b.var() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def verdict(values: Sequence[float], baseline: Sequence[float], higher_is_better: bool, alpha: float = ALPHA) -> str:
    """``better`` / ``no different`` / ``worse`` than the baseline at level ``alpha`` (direction-aware)."""
    p = welch(values, baseline)
    if math.isnan(p):
        return "n/a (needs ≥2 seeds)"
    if p >= alpha:
        return "no different"
    improved = np.mean(values) > np.mean(baseline)
    return "better" if improved == higher_is_better else "worse"
