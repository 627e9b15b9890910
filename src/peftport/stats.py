"""Statistics for the porting study: intervals, paired tests, multiplicity, ranks, metrics.

Pure functions over numbers (no I/O), thin wrappers over scipy.stats, statsmodels and
scikit-learn that fix the NaN policy. Everything that can be undefined
returns `nan` (never raises) when the *data* make it undefined (too few values, zero variance,
one class absent); a malformed *call* (mismatched lengths, a confidence of 2, labels out of range)
raises `StatsError`, a `PeftportError` that is also a `ValueError`.

Conventions:
- NaN values are dropped before any computation, and the `n` that is returned counts what was
  used. Paired functions drop a pair when either side is NaN.
- The libraries compute: Student's t and the normal distribution (scipy.stats), the incomplete
  beta function (scipy.special), midranks (scipy.stats.rankdata), Holm (statsmodels), accuracy
  and macro F1 (scikit-learn), the AUC as the Mann-Whitney U (scipy.stats; scikit-learn's
  trapezoid rule gives the same value in other last bits, and stored metrics must not move).
  Written here: what they do not compute the same way, the exact Wilcoxon signed-rank null
  distribution *with ties* (a subset-sum count over doubled midranks), the round-off guard
  before it, and the seeded resamplers (their draws are part of the reported numbers).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy import stats as sst
from sklearn.metrics import accuracy_score, f1_score
from statsmodels.stats.multitest import multipletests

from peftport.errors import PeftportError

__all__ = [
    "StatsError",
    "accuracy",
    "betainc",
    "bootstrap_ci",
    "holm",
    "macro_auc_ovr",
    "macro_f1",
    "mean_ci",
    "midranks",
    "normal_sf",
    "paired_test",
    "rank_with_uncertainty",
    "roc_auc",
    "steps_saved",
    "steps_to_reach",
    "t_cdf",
    "t_ppf",
    "t_sf",
    "wilcoxon_signed_rank",
]

#: Relative tolerance (of the data's scale) within which differences count as zero or as tied.
TIE_RTOL = 1e-9
#: n (non-zero differences) up to which the Wilcoxon p-value is exact; above: normal approximation.
WILCOXON_EXACT_MAX_N = 25


class StatsError(PeftportError, ValueError):
    """A statistics function was called with malformed input (not merely too little data)."""


# --------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------


def _as_1d(values: ArrayLike, what: str = "values") -> NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1:
        raise StatsError(f"{what} must be one-dimensional, got shape {arr.shape}")
    return arr


def _finite_1d(values: ArrayLike, what: str = "values") -> NDArray[np.float64]:
    """1-D float64 with NaNs dropped; +-inf is an error (no mean or variance)."""
    arr = _as_1d(values, what)
    arr = arr[~np.isnan(arr)]
    if np.isinf(arr).any():
        raise StatsError(f"{what} contain an infinite value")
    return arr


def _check_confidence(confidence: float) -> float:
    c = float(confidence)
    if not 0.0 < c < 1.0:
        raise StatsError(f"confidence must be strictly between 0 and 1, got {confidence!r}")
    return c


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1."""
    if not (a > 0 and b > 0):
        raise StatsError(f"betainc needs a > 0 and b > 0, got a={a}, b={b}")
    if math.isnan(x) or not 0.0 <= x <= 1.0:
        raise StatsError(f"betainc needs 0 <= x <= 1, got x={x}")
    return float(special.betainc(a, b, x))


def normal_sf(z: float) -> float:
    """Upper tail P(Z > z) of the standard normal distribution."""
    return float(sst.norm.sf(z))


def _check_df(df: float) -> float:
    df = float(df)
    if math.isnan(df) or df <= 0:
        raise StatsError(f"degrees of freedom must be positive, got {df!r}")
    return df


def t_sf(t: float, df: float) -> float:
    """Upper tail P(T > t) of Student's t with `df` (> 0, may be non-integer or inf) degrees of
    freedom; nan for t = nan."""
    df = _check_df(df)
    return float(sst.t.sf(float(t), df))


def t_cdf(t: float, df: float) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    return t_sf(-float(t), df)


def t_ppf(p: float, df: float) -> float:
    """Quantile of Student's t: the t with P(T <= t) = p, for 0 < p < 1."""
    df = _check_df(df)
    p = float(p)
    if math.isnan(p) or not 0.0 < p < 1.0:
        raise StatsError(f"t quantile needs 0 < p < 1, got {p!r}")
    return float(sst.t.ppf(p, df))


# --------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float, int]:
    """Mean and Student-t confidence interval: (mean, low, high, n).

    low/high = mean -/+ t_{(1+confidence)/2, n-1} * sd / sqrt(n), sd with ddof=1. NaNs are
    dropped (n counts the rest). n = 0: (nan, nan, nan, 0); n = 1: (mean, nan, nan, 1); all
    values equal: the interval is the single point (mean, mean).
    """
    c = _check_confidence(confidence)
    x = _finite_1d(values)
    n = int(x.size)
    if n == 0:
        return (math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n == 1:
        return (mean, math.nan, math.nan, 1)
    sd = float(x.std(ddof=1))
    half = t_ppf(0.5 + c / 2.0, n - 1) * sd / math.sqrt(n)
    return (mean, mean - half, mean + half, n)


def bootstrap_ci(
    values: ArrayLike,
    stat: Callable[..., Any] = np.mean,
    n_boot: int = 2000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Percentile bootstrap interval: (stat(values), low, high).

    `n_boot` resamples with replacement of the NaN-free values, drawn from
    `numpy.random.default_rng(seed)` (same inputs and seed, same interval); low/high are the
    (1-confidence)/2 and (1+confidence)/2 quantiles (numpy's linear interpolation) of the
    resampled statistic. `stat` is called as stat(matrix, axis=1) when it accepts that (numpy
    reductions do), else once per resample. Fewer than 2 values: (stat or nan, nan, nan).
    """
    c = _check_confidence(confidence)
    if int(n_boot) < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot!r}")
    x = _finite_1d(values)
    if x.size == 0:
        return (math.nan, math.nan, math.nan)
    estimate = float(stat(x))
    if x.size < 2:
        return (estimate, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(int(n_boot), x.size))]
    boot: NDArray[np.float64] | None = None
    try:
        out = np.asarray(stat(samples, axis=1), dtype=np.float64)
        if out.shape == (int(n_boot),):
            boot = out
    except TypeError:
        boot = None
    if boot is None:
        boot = np.array([float(stat(row)) for row in samples], dtype=np.float64)
    alpha = 1.0 - c
    low, high = np.quantile(boot, [alpha / 2.0, 1.0 - alpha / 2.0])
    return (estimate, float(low), float(high))


# --------------------------------------------------------------------------------------------
# Ranks and paired tests
# --------------------------------------------------------------------------------------------


def midranks(values: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.int64]]:
    """1-based ranks with ties given the average of the ranks they span, and the size of every
    tie group (for tie corrections). NaN is an error."""
    x = _as_1d(values)
    if np.isnan(x).any():
        raise StatsError("cannot rank NaN values")
    if x.size == 0:
        return np.empty(0, dtype=np.float64), np.empty(0, dtype=np.int64)
    _, counts = np.unique(x, return_counts=True)  # tie groups in ascending order of value
    return sst.rankdata(x).astype(np.float64), counts.astype(np.int64)


def _signed_rank_null_counts(doubled_ranks: NDArray[np.int64]) -> NDArray[np.float64]:
    """counts[s] = number of sign patterns whose positive doubled-rank sum is s."""
    total = int(doubled_ranks.sum())
    counts = np.zeros(total + 1, dtype=np.float64)  # exact: at most 2**25 < 2**53
    counts[0] = 1.0
    top = 0
    for r in doubled_ranks.tolist():
        counts[r : top + r + 1] += counts[: top + 1].copy()
        top += r
    return counts


def _snap_magnitudes(mag: NDArray[np.float64], atol: float) -> NDArray[np.float64]:
    """Replace each run of sorted values whose consecutive gaps are <= atol by its first value."""
    if mag.size == 0 or atol <= 0:
        return mag
    order = np.argsort(mag, kind="mergesort")
    ms = mag[order]
    new_group = np.empty(ms.size, dtype=bool)
    new_group[0] = True
    new_group[1:] = np.diff(ms) > atol
    firsts = ms[new_group]
    out = np.empty_like(mag)
    out[order] = firsts[np.cumsum(new_group) - 1]
    return out


def wilcoxon_signed_rank(
    differences: ArrayLike, *, scale: float | None = None, rtol: float = TIE_RTOL
) -> dict[str, Any]:
    """Wilcoxon signed-rank test of "the differences are symmetric about 0", two-sided.

    Round-off guard: differences with |d| <= rtol * scale count as zero, and |d| values that
    differ by <= rtol * scale count as tied (0.85 - 0.80 and 0.90 - 0.85 differ in floating
    point); `scale` defaults to max |d| (`paired_test` passes the largest |a|, |b|); rtol = 0
    gives exact comparisons. Zeros are then dropped (Wilcoxon's method) and |d| is ranked with
    midranks for ties.
    `statistic` is W+ (sum of the ranks of the positive differences). With n (non-zero) <=
    WILCOXON_EXACT_MAX_N the p-value is exact: the permutation distribution of W+ over all 2^n
    sign patterns of the observed ranks (so it is also exact, conditionally, with ties), and
    p = min(1, 2 * min(P(W+ <= w), P(W+ >= w))). Above that: normal approximation with the tie
    correction of the variance and a 0.5 continuity correction. No non-zero difference: p = nan.
    """
    d = _finite_1d(differences, "differences")
    if rtol < 0:
        raise StatsError(f"rtol must be non-negative, got {rtol!r}")
    mag = np.abs(d)
    ref = float(mag.max()) if scale is None and d.size else float(scale or 0.0)
    atol = rtol * ref
    is_zero = mag <= atol
    n_zero = int(is_zero.sum())
    mag = _snap_magnitudes(mag[~is_zero], atol)
    d = np.copysign(mag, d[~is_zero])
    n = int(d.size)
    notes: list[str] = []
    if n_zero:
        notes.append(f"{n_zero} zero difference(s) dropped")
    if n == 0:
        notes.append("no non-zero difference: Wilcoxon p undefined")
        return {
            "statistic": math.nan,
            "p": math.nan,
            "method": "undefined",
            "n": 0,
            "ties": False,
            "notes": notes,
        }
    ranks, tie_counts = midranks(np.abs(d))
    ties = bool((tie_counts > 1).any())
    if ties:
        notes.append("tied |differences| given midranks")
    w_plus = float(ranks[d > 0].sum())
    if n <= WILCOXON_EXACT_MAX_N:
        doubled = np.rint(2.0 * ranks).astype(np.int64)
        counts = _signed_rank_null_counts(doubled)
        w2 = int(round(2.0 * w_plus))
        total = 2.0**n
        p_low = counts[: w2 + 1].sum() / total
        p_high = counts[w2:].sum() / total
        p = min(1.0, 2.0 * min(p_low, p_high))
        method = "exact"
    else:
        mu = n * (n + 1) / 4.0
        var = n * (n + 1) * (2 * n + 1) / 24.0 - float((tie_counts**3 - tie_counts).sum()) / 48.0
        if var <= 0:
            p = math.nan
        else:
            z = max(abs(w_plus - mu) - 0.5, 0.0) / math.sqrt(var)
            p = min(1.0, 2.0 * normal_sf(z))
        method = "normal"
    return {
        "statistic": w_plus,
        "p": float(p),
        "method": method,
        "n": n,
        "ties": ties,
        "notes": notes,
    }


def _hedges_j(df: int) -> float:
    """Exact small-sample correction J(df) = G(df/2) / (sqrt(df/2) G((df-1)/2)), df >= 2."""
    return math.exp(math.lgamma(df / 2.0) - math.lgamma((df - 1) / 2.0)) / math.sqrt(df / 2.0)


def paired_test(a: ArrayLike, b: ArrayLike, confidence: float = 0.95) -> dict[str, Any]:
    """Compare paired samples (same seed and host pair): differences d = a - b.

    Returns a dict with:
    - `n`: pairs used (a pair with a NaN on either side is dropped), `mean_a`, `mean_b`;
    - `mean_diff`, `sd_diff` (ddof=1), `ci_low`/`ci_high`: Student-t interval of the mean
      difference (as `mean_ci`);
    - `t`, `df`, `p_t`: paired t-test, two-sided p = I_{df/(df+t^2)}(df/2, 1/2);
    - `wilcoxon_w` (W+), `p_wilcoxon`, `wilcoxon_method` ("exact" / "normal" / "undefined"),
      `wilcoxon_n` (non-zero differences): see `wilcoxon_signed_rank` (differences within
      1e-9 of max(|a|, |b|) of each other count as tied, within that of 0 as zero);
    - `d_z` = mean_diff / sd_diff (Cohen's d for paired data), `g_z` = J(n-1) * d_z with the
      exact Hedges correction J(df) = G(df/2) / (sqrt(df/2) G((df-1)/2));
    - `notes`: what was dropped or undefined.

    Degenerate data give nan, never an exception: n = 0: all nan; n = 1: mean_diff only (the
    Wilcoxon p of a single non-zero difference is 1); sd_diff = 0 (all differences equal): the
    interval is the point mean_diff, t, p_t, d_z and g_z are nan (0/0 or c/0); n = 2: g_z is nan
    (J(1) = 0 would turn any effect into 0); all differences zero: p_wilcoxon is nan.
    """
    c = _check_confidence(confidence)
    xa = _as_1d(a, "a")
    xb = _as_1d(b, "b")
    if xa.shape != xb.shape:
        raise StatsError(f"paired samples must have the same length, got {xa.size} and {xb.size}")
    keep = ~(np.isnan(xa) | np.isnan(xb))
    notes: list[str] = []
    if int((~keep).sum()):
        notes.append(f"{int((~keep).sum())} pair(s) with NaN dropped")
    xa, xb = xa[keep], xb[keep]
    if np.isinf(xa).any() or np.isinf(xb).any():
        raise StatsError("paired samples contain an infinite value")
    d = xa - xb
    n = int(d.size)
    nan = math.nan
    out: dict[str, Any] = {
        "n": n,
        "mean_a": float(xa.mean()) if n else nan,
        "mean_b": float(xb.mean()) if n else nan,
        "mean_diff": float(d.mean()) if n else nan,
        "sd_diff": nan,
        "ci_low": nan,
        "ci_high": nan,
        "t": nan,
        "df": n - 1 if n >= 2 else nan,
        "p_t": nan,
        "wilcoxon_w": nan,
        "p_wilcoxon": nan,
        "wilcoxon_method": "undefined",
        "wilcoxon_n": 0,
        "d_z": nan,
        "g_z": nan,
        "notes": notes,
    }
    if n == 0:
        notes.append("no pairs")
        return out
    scale = float(max(np.abs(xa).max(), np.abs(xb).max()))
    w = wilcoxon_signed_rank(d, scale=scale)
    out.update(
        wilcoxon_w=w["statistic"], p_wilcoxon=w["p"], wilcoxon_method=w["method"], wilcoxon_n=w["n"]
    )
    notes.extend(w["notes"])
    if n == 1:
        notes.append("one pair: no variance, t-test and effect size undefined")
        return out
    mean = out["mean_diff"]
    sd = float(d.std(ddof=1))
    out["sd_diff"] = sd
    _, low, high, _ = mean_ci(d, c)
    out["ci_low"], out["ci_high"] = low, high
    if sd == 0.0:
        notes.append("zero variance of the differences: t-test and effect size undefined")
        return out
    df = n - 1
    t = mean / (sd / math.sqrt(n))
    out["t"] = t
    out["p_t"] = min(1.0, 2.0 * t_sf(abs(t), df))
    out["d_z"] = mean / sd
    if df >= 2:
        out["g_z"] = _hedges_j(df) * out["d_z"]
    else:
        notes.append("two pairs: Hedges correction undefined (g_z = nan)")
    return out


def holm(pvalues: ArrayLike) -> NDArray[np.float64]:
    """Holm-Bonferroni step-down adjusted p-values, in the input order.

    With the m non-NaN p-values sorted ascending, p_(i) becomes
    min(1, max_{j <= i} (m - j + 1) p_(j)), so adjusted values are monotone in the raw ones and
    capped at 1. NaNs stay NaN and are not counted in m. Values outside [0, 1] are an error.
    """
    p = _as_1d(pvalues, "p-values")
    out = p.copy()
    ok = ~np.isnan(p)
    q = p[ok]
    if ((q < 0) | (q > 1)).any():
        raise StatsError("p-values must lie in [0, 1]")
    if q.size:
        out[ok] = multipletests(q, method="holm")[1]
    return out


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------


def _curve(steps: ArrayLike, accuracies: ArrayLike, what: str) -> tuple[NDArray, NDArray]:
    s = _as_1d(steps, f"{what} steps")
    a = _as_1d(accuracies, f"{what} accuracies")
    if s.size != a.size:
        raise StatsError(f"{what}: {s.size} steps but {a.size} accuracies")
    if s.size == 0:
        raise StatsError(f"{what}: empty learning curve")
    if not (np.isfinite(s).all() and np.isfinite(a).all()):
        raise StatsError(f"{what}: steps and accuracies must be finite (no NaN)")
    if (np.diff(s) <= 0).any():
        raise StatsError(f"{what}: steps must be strictly ascending, got {s.tolist()}")
    return s, a


def steps_to_reach(steps: ArrayLike, accuracies: ArrayLike, target: float) -> float | None:
    """First (post-porting) step at which a learning curve reaches `target`.

    The curve is known only at its checkpoints (ascending `steps`). If the first checkpoint
    already has accuracy >= target, that step is returned. Otherwise, with i the first
    checkpoint whose accuracy >= target, the answer is linearly interpolated between checkpoints
    i-1 and i: s[i-1] + (target - a[i-1]) / (a[i] - a[i-1]) * (s[i] - s[i-1]). Later dips do not
    matter (first crossing). None means "not reached by the last checkpoint".
    """
    s, a = _curve(steps, accuracies, "curve")
    target = float(target)
    if not math.isfinite(target):
        raise StatsError(f"target must be finite, got {target!r}")
    hits = np.flatnonzero(a >= target)
    if hits.size == 0:
        return None
    i = int(hits[0])
    if i == 0:
        return float(s[0])
    a0, a1, s0, s1 = float(a[i - 1]), float(a[i]), float(s[i - 1]), float(s[i])
    return s0 + (target - a0) / (a1 - a0) * (s1 - s0)


def steps_saved(
    steps: ArrayLike,
    ported: ArrayLike,
    random: ArrayLike,
    *,
    random_steps: ArrayLike | None = None,
) -> list[float | None]:
    """Training steps a ported module saves, per checkpoint of the ported curve.

    For each checkpoint k of the ported curve (`steps[k]`, accuracy `ported[k]`):
    saved[k] = steps_to_reach(random_steps, random, ported[k]) - steps[k], i.e. how many steps
    the `random` control (training from scratch) needs to reach what the ported module has at
    steps[k], minus the steps the ported module itself used. Positive: porting saves training;
    negative: it costs. None: `random` never reaches ported[k] within its curve (the saving is
    then more than random_steps[-1] - steps[k], which the caller may report as a lower bound).
    `random_steps` defaults to `steps` (both curves evaluated at the same checkpoints).
    """
    s, p = _curve(steps, ported, "ported")
    rs = s if random_steps is None else random_steps
    r_steps, r_acc = _curve(rs, random, "random")
    out: list[float | None] = []
    for step, acc in zip(s.tolist(), p.tolist(), strict=True):
        reach = steps_to_reach(r_steps, r_acc, acc)
        out.append(None if reach is None else reach - step)
    return out


# --------------------------------------------------------------------------------------------
# Ranking techniques
# --------------------------------------------------------------------------------------------


def _row_midranks_desc(boot: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per row, rank 1 = largest, ties share the average rank."""
    return sst.rankdata(-boot, axis=1).astype(np.float64)


def rank_with_uncertainty(
    scores: Mapping[str, Sequence[float] | ArrayLike],
    n_boot: int = 2000,
    seed: int = 0,
    *,
    higher_is_better: bool = True,
    paired: bool = False,
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """Rank techniques by mean score, with a bootstrap distribution of the ranks.

    Each replicate resamples every technique's scores with replacement (independently; with
    `paired=True` all lists must have the same length and the same indices are drawn for all,
    keeping e.g. seed/host-pair structure; a NaN in any list then drops that index everywhere)
    and ranks the replicate means (1 = best, ties share the average rank). Per technique:
    `name`, `n`, `mean`, `rank` (of the observed means), `mean_rank`, `rank_low`/`rank_high`
    (the (1-confidence)/2 lower and (1+confidence)/2 upper quantiles of its replicate ranks,
    rounded outward to observed ranks), `p_best` (share of replicates where it is best, a tie
    for best splitting the credit). Sorted by observed rank, then name.
    """
    c = _check_confidence(confidence)
    if int(n_boot) < 1:
        raise StatsError(f"n_boot must be at least 1, got {n_boot!r}")
    if not scores:
        raise StatsError("no techniques to rank")
    names = list(scores)
    raw = [_as_1d(scores[name], f"scores of {name!r}") for name in names]
    if paired:
        lengths = {x.size for x in raw}
        if len(lengths) != 1:
            raise StatsError(
                f"paired ranking needs equal-length score lists, got {sorted(lengths)}"
            )
        keep = ~np.any([np.isnan(x) for x in raw], axis=0)
        raw = [x[keep] for x in raw]
    arrays = [x[~np.isnan(x)] for x in raw]
    for name, x in zip(names, arrays, strict=True):
        if x.size == 0:
            raise StatsError(f"technique {name!r} has no (non-NaN) scores")
        if np.isinf(x).any():
            raise StatsError(f"technique {name!r} has an infinite score")
    sign = 1.0 if higher_is_better else -1.0
    k, nb = len(names), int(n_boot)
    rng = np.random.default_rng(seed)
    boot = np.empty((nb, k), dtype=np.float64)
    if paired:
        mat = np.stack(arrays)  # (k, n)
        idx = rng.integers(0, mat.shape[1], size=(nb, mat.shape[1]))
        boot[:] = mat[:, idx].mean(axis=2).T
    else:
        for j, x in enumerate(arrays):
            boot[:, j] = x[rng.integers(0, x.size, size=(nb, x.size))].mean(axis=1)
    means = np.array([x.mean() for x in arrays])
    observed = _row_midranks_desc((sign * means)[None, :])[0]
    ranks = _row_midranks_desc(sign * boot)
    best = ranks.min(axis=1, keepdims=True)
    is_best = ranks == best
    share = is_best / is_best.sum(axis=1, keepdims=True)
    alpha = 1.0 - c
    rows = []
    for j, name in enumerate(names):
        rows.append(
            {
                "name": name,
                "n": int(arrays[j].size),
                "mean": float(means[j]),
                "rank": float(observed[j]),
                "mean_rank": float(ranks[:, j].mean()),
                "rank_low": float(np.quantile(ranks[:, j], alpha / 2.0, method="lower")),
                "rank_high": float(np.quantile(ranks[:, j], 1.0 - alpha / 2.0, method="higher")),
                "p_best": float(share[:, j].mean()),
            }
        )
    rows.sort(key=lambda r: (r["rank"], r["name"]))
    return rows


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def _int_labels(values: ArrayLike, what: str) -> NDArray[np.int64]:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise StatsError(f"{what} must be one-dimensional, got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        f = arr.astype(np.float64)
        if not (np.isfinite(f).all() and (f == np.round(f)).all()):
            raise StatsError(f"{what} must be integer class ids")
        return f.astype(np.int64)
    return arr.astype(np.int64)


def accuracy(labels: ArrayLike, preds: ArrayLike) -> float:
    """Share of predictions equal to the label; nan for no examples."""
    y = np.asarray(labels)
    p = np.asarray(preds)
    if y.shape != p.shape or y.ndim != 1:
        raise StatsError(f"labels and preds must be 1-D of equal length, got {y.shape}, {p.shape}")
    if y.size == 0:
        return math.nan
    return float(accuracy_score(y, p))


def macro_f1(labels: ArrayLike, preds: ArrayLike, num_labels: int) -> float:
    """Unweighted mean over classes 0..num_labels-1 of F1 = 2TP / (2TP + FP + FN).

    A class that appears neither among the labels nor among the predictions has an undefined F1
    (0/0) and is left out of the mean (as scikit-learn's `zero_division=np.nan`); no examples:
    nan. A class that is present but never predicted correctly counts with F1 = 0.
    """
    k = int(num_labels)
    if k < 1:
        raise StatsError(f"num_labels must be at least 1, got {num_labels!r}")
    y = _int_labels(labels, "labels")
    p = _int_labels(preds, "preds")
    if y.shape != p.shape:
        raise StatsError(f"labels and preds differ in length: {y.size} and {p.size}")
    for what, arr in (("labels", y), ("preds", p)):
        if arr.size and (arr.min() < 0 or arr.max() >= k):
            raise StatsError(
                f"{what} must lie in [0, {k}), got values in [{int(arr.min())}, {int(arr.max())}]"
            )
    if y.size == 0:
        return math.nan
    # zero_division=nan: a class with 0/0 is left out of the mean
    return float(f1_score(y, p, labels=range(k), average="macro", zero_division=np.nan))


def roc_auc(labels: ArrayLike, scores: ArrayLike) -> float:
    """Binary ROC AUC = P(score of a positive > score of a negative) + 0.5 P(tie).

    Computed exactly as the Mann-Whitney U of the positives (midranks for ties) / (n+ n-). `labels` are 0/1 (or bool), 1 = positive; scores may be
    +-inf but not NaN. nan when either class is absent.
    """
    y = _int_labels(labels, "labels")
    s = _as_1d(scores, "scores")
    if y.shape != s.shape:
        raise StatsError(f"labels and scores differ in length: {y.size} and {s.size}")
    if y.size and not np.isin(y, (0, 1)).all():
        raise StatsError("roc_auc needs binary labels (0/1)")
    if np.isnan(s).any():
        raise StatsError("scores contain NaN")
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return math.nan
    u = sst.mannwhitneyu(s[y == 1], s[y == 0], method="asymptotic").statistic
    return float(u) / (n_pos * n_neg)


def macro_auc_ovr(labels: ArrayLike, score_matrix: ArrayLike) -> float:
    """Multi-class AUC: mean over classes k of roc_auc(labels == k, score_matrix[:, k]).

    One-vs-rest, unweighted. `score_matrix` is (n, num_classes); classes whose one-vs-rest AUC is
    undefined (absent from the labels, or the only class present) are left out; nan if none is
    defined.
    """
    y = _int_labels(labels, "labels")
    s = np.asarray(score_matrix, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != y.size:
        raise StatsError(
            f"score_matrix must be (n, num_classes) with n = {y.size}, got shape {s.shape}"
        )
    k = s.shape[1]
    if y.size and (y.min() < 0 or y.max() >= k):
        raise StatsError(f"labels must lie in [0, {k}) for a score matrix with {k} columns")
    aucs = [roc_auc(y == j, s[:, j]) for j in range(k)]
    defined = [a for a in aucs if not math.isnan(a)]
    return float(np.mean(defined)) if defined else math.nan
