"""Intervals that fit the metric: a mean over runs never gets an interval outside [0, 1].

With per-example predictions in the store (`predictions` table), the interval of a mean over
runs is a two-level bootstrap over runs and test examples (`per_example_interval`,
`auc_interval`): resample the runs with replacement, then the test examples with replacement,
ONE draw of examples for all the runs evaluated on the same examples (same
`examples_sha256`: the study evaluates every run of a cell on the same sample of the split, so
an example that is hard for one run is hard for the others, and the examples' variation does
not average away over runs), recompute each resampled run's metric on the resampled examples
and average over the resampled runs. It serves any per-example share (accuracy, agreement,
negative flips) and the binary AUC (computed on the resampled examples with the rank formula,
ties counted half).

A store without per-example predictions (made before the table) holds, per result, the metric
and how many test examples it was computed on (`n`). Then the interval of a mean of accuracies
is a two-level parametric bootstrap: resample the runs (seeds) with replacement, then draw each resampled run's
accuracy again as Binomial(n, its accuracy) / n (the variation over test examples), and take the
mean; the 2.5% and 97.5% quantiles of those means are the interval. Every draw lies in [0, 1],
so the interval does too. A metric that is not a share of examples (AUC, macro-F1) is resampled
over runs only (its interval lies within the runs' own values). Every interval says which
method gave it (`TWO_LEVEL_EXAMPLES`, `TWO_LEVEL`, `OVER_RUNS`).

Fewer than `MIN_RUNS` runs give no interval: with 2 runs a t interval multiplies the spread by
t(0.975, 1) = 12.7 and a bootstrap has 3 distinct resamples; the tables say "2 runs: no
interval" instead.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable, Sequence

import numpy as np

MIN_RUNS = 3  # fewer runs in a cell: no interval
N_BOOT = 2000
SEED = 0  # the same store gives the same report
CONFIDENCE = 0.95
TWO_LEVEL = "two-level bootstrap (runs, then binomial over each run's test examples)"
OVER_RUNS = "bootstrap over runs"
TWO_LEVEL_EXAMPLES = "two-level bootstrap (runs, then the stored per-example predictions)"


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


def _groups(keys: Sequence[str]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for j, key in enumerate(keys):
        out.setdefault(key, []).append(j)
    return out


def _counts(rng: np.random.Generator, n: int, rows: int) -> np.ndarray:
    """(rows, n): how often each of n items is drawn when n are drawn with replacement
    (float32: small whole numbers, exact)."""
    idx = rng.integers(0, n, size=(rows, n)) + (np.arange(rows) * n)[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(np.float32)


CHUNK = 2_000_000  # resampled example counts held at once (8 MB): bounded for big splits


@functools.lru_cache(maxsize=8)
def _example_counts(key: str, n: int, rows: int, chunk: int) -> np.ndarray:
    """The resampled example counts of one example set (chunk `chunk` of rows resamples), seeded
    by the set's key: the same examples get the same resamples in every group of the report,
    whatever the order (and a report makes them once, not once per table cell)."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little")
    w = _counts(np.random.default_rng([SEED, digest, n, chunk]), n, rows)
    w.flags.writeable = False
    return w


def _two_level(
    k: int,
    keys: Sequence[str],
    sizes: dict[str, int],
    per_run: Callable[[int, np.ndarray], np.ndarray],
    rng: np.random.Generator,
    n_boot: int,
) -> np.ndarray:
    """The n_boot resampled means: run weights (how often each run is drawn, resampling k runs
    with replacement) times each run's metric on its example group's resampled examples
    (`per_run(j, W)` with W the (rows, n) example counts of j's group, one draw per group shared
    by its runs), averaged over k."""
    groups = _groups(keys)
    rows = max(1, CHUNK // max(sizes.values()))
    out = []
    for chunk, start in enumerate(range(0, n_boot, rows)):
        b = min(rows, n_boot - start)
        v = _counts(rng, k, b)  # (b, k) run counts
        total = np.zeros(b)
        for key, members in groups.items():
            w = _example_counts(key, sizes[key], b, chunk)  # one draw of the group's examples
            for j in members:
                total += v[:, j] * per_run(j, w)
        out.append(total / k)
    return np.concatenate(out)


def per_example_interval(
    runs: Sequence[np.ndarray],
    keys: Sequence[str] | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
    bounds: tuple[float, float] = (0.0, 1.0),
) -> tuple[float | None, float | None, float | None, int, str]:
    """(mean, low, high, runs, method) of the mean over runs of each run's mean per-example
    value (1/0 per example: correct, agreeing, flipped), by the two-level bootstrap over runs
    and examples (module docstring). `keys[j]` names run j's examples (runs with one key were
    evaluated on the same examples, in the same order, and share each resample of them); None:
    all runs on the same examples. Fewer than MIN_RUNS runs: no interval."""
    xs = [np.asarray(r, dtype=np.float64) for r in runs]
    k = len(xs)
    if k == 0 or any(x.size == 0 for x in xs):
        return None, None, None, k, ""
    mean = float(np.mean([x.mean() for x in xs]))
    if k < MIN_RUNS:
        return mean, None, None, k, ""
    keys = list(keys) if keys is not None else [""] * k
    sizes = {key: xs[j].size for j, key in enumerate(keys)}
    if any(xs[j].size != sizes[key] for j, key in enumerate(keys)):
        raise ValueError("runs with the same examples key have different numbers of examples")
    x32 = [x.astype(np.float32) for x in xs]  # w is float32: no float64 copy of w per run
    boot = _two_level(
        k, keys, sizes, lambda j, w: (w @ x32[j]) / x32[j].size, np.random.default_rng(SEED), n_boot
    )
    low, high = _quantiles(boot, confidence)
    return mean, max(low, bounds[0]), min(high, bounds[1]), k, TWO_LEVEL_EXAMPLES


def _weighted_auc(labels: np.ndarray, scores: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Binary AUC of one run's examples under each row of example weights w (B, n): P(score of
    a positive > score of a negative) + 0.5 P(tie), each example counted w times (the rank
    formula with weights; nan where a resample has no positive or no negative)."""
    pos = np.flatnonzero(labels == 1)
    neg = np.flatnonzero(labels != 1)
    order = neg[np.argsort(scores[neg], kind="stable")]
    s_neg = scores[order]
    cum = np.zeros((w.shape[0], order.size + 1))
    np.cumsum(w[:, order], axis=1, out=cum[:, 1:])  # negative weight up to each sorted score
    below = cum[:, np.searchsorted(s_neg, scores[pos], side="left")]  # strictly below
    upto = cum[:, np.searchsorted(s_neg, scores[pos], side="right")]  # below or tied
    wp = w[:, pos]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (wp * (below + upto)).sum(axis=1) / (2.0 * wp.sum(axis=1) * cum[:, -1])


def auc_interval(
    labels: Sequence[np.ndarray],
    scores: Sequence[np.ndarray],
    keys: Sequence[str] | None = None,
    *,
    confidence: float = CONFIDENCE,
    n_boot: int = N_BOOT,
) -> tuple[float | None, float | None, float | None, int, str]:
    """(mean, low, high, runs, method) of the mean binary AUC over runs (run j: gold labels
    0/1 and scores, the margin of class 1), by the two-level bootstrap over runs and examples;
    the mean is of the runs' own AUCs. Fewer than MIN_RUNS runs: no interval."""
    ys = [np.asarray(y) for y in labels]
    ss = [np.asarray(x, dtype=np.float64) for x in scores]
    k = len(ys)
    if k == 0:
        return None, None, None, 0, ""
    own = [_weighted_auc(y, x, np.ones((1, y.size)))[0] for y, x in zip(ys, ss, strict=True)]
    mean = float(np.mean(own))
    if k < MIN_RUNS or not np.isfinite(mean):
        return (mean if np.isfinite(mean) else None), None, None, k, ""
    keys = list(keys) if keys is not None else [""] * k
    sizes = {key: ys[j].size for j, key in enumerate(keys)}
    boot = _two_level(
        k,
        keys,
        sizes,
        lambda j, w: _weighted_auc(ys[j], ss[j], w),
        np.random.default_rng(SEED),
        n_boot,
    )
    boot = boot[np.isfinite(boot)]  # a resample without one of the classes has no AUC
    if boot.size == 0:
        return mean, None, None, k, ""
    low, high = _quantiles(boot, confidence)
    return mean, max(low, 0.0), min(high, 1.0), k, TWO_LEVEL_EXAMPLES
