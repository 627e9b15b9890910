"""Intervals that fit the metric: a mean over runs never gets an interval outside [0, 1].

The store holds, per result, the metric and how many test examples it was computed on (`n`),
not the per-example predictions. So the interval of a mean of accuracies is a two-level
parametric bootstrap: resample the runs (seeds) with replacement, then draw each resampled run's
accuracy again as Binomial(n, its accuracy) / n (the variation over test examples), and take the
mean; the 2.5% and 97.5% quantiles of those means are the interval. Every draw lies in [0, 1],
so the interval does too. A metric that is not a share of examples (AUC, macro-F1) is resampled
over runs only (its interval lies within the runs' own values). With per-example predictions
stored, the second level becomes a per-example bootstrap (docs/report.md).

Fewer than `MIN_RUNS` runs give no interval: with 2 runs a t interval multiplies the spread by
t(0.975, 1) = 12.7 and a bootstrap has 3 distinct resamples; the tables say "2 runs: no
interval" instead.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MIN_RUNS = 3  # fewer runs in a cell: no interval
N_BOOT = 2000
SEED = 0  # the same store gives the same report
CONFIDENCE = 0.95
TWO_LEVEL = "two-level bootstrap (runs, then binomial over each run's test examples)"
OVER_RUNS = "bootstrap over runs"


def _quantiles(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    a = (1.0 - confidence) / 2.0
    low, high = np.quantile(boot, [a, 1.0 - a])
    return float(low), float(high)


def mean_interval(
    values: Sequence[float],
    examples: Sequence[int | None] | None = None,
    *,
    confidence: float = CONFIDENCE,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float | None, float | None, float | None, int, str]:
    """(mean, low, high, runs, method) of the runs' `values`.

    `examples`: each run's number of test examples when the values are accuracies (shares of
    those examples): the two-level bootstrap; else (or when one is unknown) a bootstrap over
    runs. Fewer than MIN_RUNS values: no interval (low = high = None, method "").
    The interval is kept within `bounds` (the metric's range)."""
    x = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    k = int(x.size)
    if k == 0:
        return None, None, None, 0, ""
    mean = float(x.mean())
    if k < MIN_RUNS:
        return mean, None, None, k, ""
    rng = np.random.default_rng(SEED)
    idx = rng.integers(0, k, size=(N_BOOT, k))
    ns = None
    if examples is not None and len(examples) == k and all(e for e in examples):
        ns = np.asarray(examples, dtype=np.int64)
    if ns is not None:
        n = ns[idx]
        # clip guards a stored value a hair outside [0, 1] (float noise) for the binomial draw
        draws = rng.binomial(n, np.clip(x[idx], 0.0, 1.0)) / n
        boot, method = draws.mean(axis=1), TWO_LEVEL
    else:
        boot, method = x[idx].mean(axis=1), OVER_RUNS
    low, high = _quantiles(boot, confidence)
    lo_b, hi_b = bounds
    return mean, max(low, lo_b), min(high, hi_b), k, method


def ratio_interval(
    values: Sequence[float], *, confidence: float = CONFIDENCE
) -> tuple[float | None, float | None, float | None, int]:
    """(mean, low, high, runs) of per-run ratios: a percentile bootstrap over runs (so the
    interval lies within the runs' own ratios), none below MIN_RUNS runs."""
    mean, low, high, k, _ = mean_interval(values, None, confidence=confidence,
                                          bounds=(-math.inf, math.inf))  # fmt: skip
    return mean, low, high, k
