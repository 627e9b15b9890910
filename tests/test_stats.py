"""peftport.stats against hand-derived and textbook values (no scipy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from peftport import stats as S
from peftport.errors import PeftportError

# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 4, 2.776445105),  # textbook table
        (0.975, 10, 2.228138852),
        (0.975, 30, 2.042272456),
        (0.95, 1, 6.313751515),
        (0.995, 3, 5.840909309),
    ],
)
def test_t_ppf_table_values(p, df, expected):
    assert S.t_ppf(p, df) == pytest.approx(expected, rel=1e-9)


def test_t_ppf_closed_forms():
    # df = 1 (Cauchy): tan(pi (p - 1/2)); df = 2: (2p - 1) / sqrt(2 p (1 - p)).
    for p in (0.6, 0.9, 0.975, 0.999, 0.01):
        assert S.t_ppf(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-11)
        assert S.t_ppf(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-11)
    assert S.t_ppf(0.975, 1) == pytest.approx(12.7062047, rel=1e-8)
    assert S.t_ppf(0.975, 2) == pytest.approx(4.30265273, rel=1e-8)
    assert S.t_ppf(0.5, 7) == 0.0
    assert S.t_ppf(0.025, 4) == pytest.approx(-2.776445105, rel=1e-9)
    assert S.t_ppf(0.975, math.inf) == pytest.approx(1.959963985, rel=1e-9)


def test_t_cdf_closed_forms_and_roundtrip():
    for t in (-20.0, -1.5, 0.0, 0.3, 2.0, 7.0):
        assert S.t_cdf(t, 1) == pytest.approx(0.5 + math.atan(t) / math.pi, rel=1e-12, abs=1e-15)
        assert S.t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), rel=1e-12)
        u = 1 + t * t / 4  # df = 4
        f4 = 0.5 + 3 / 8 * (t / math.sqrt(u)) * (1 - t * t / (12 * u))
        assert S.t_cdf(t, 4) == pytest.approx(f4, rel=1e-12)
    for df in (1, 3, 8.5, 50, 1000):
        for p in (0.001, 0.2, 0.7, 0.95, 0.9999):
            assert S.t_cdf(S.t_ppf(p, df), df) == pytest.approx(p, rel=1e-11)
    assert S.t_sf(math.inf, 3) == 0.0 and S.t_sf(-math.inf, 3) == 1.0
    assert math.isnan(S.t_sf(math.nan, 3))
    assert S.t_sf(1.0, math.inf) == pytest.approx(0.158655254, rel=1e-8)
    # Large df stays accurate (no lgamma cancellation) and approaches the normal.
    assert S.t_sf(1.96, 1e6) == pytest.approx(S.normal_sf(1.96), rel=1e-5)


def test_betainc_values_and_errors():
    assert S.betainc(1.0, 1.0, 0.3) == pytest.approx(0.3)  # uniform
    assert S.betainc(2.0, 1.0, 0.5) == pytest.approx(0.25)  # x^a for b = 1
    assert S.betainc(1.0, 3.0, 0.2) == pytest.approx(1 - 0.8**3)
    assert S.betainc(2.0, 3.0, 0.0) == 0.0 and S.betainc(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(PeftportError, match="a > 0"):
        S.betainc(0.0, 1.0, 0.5)
    with pytest.raises(PeftportError, match="0 <= x <= 1"):
        S.betainc(1.0, 1.0, 1.5)


def test_distribution_errors():
    with pytest.raises(PeftportError, match="degrees of freedom"):
        S.t_sf(1.0, 0)
    with pytest.raises(PeftportError, match="0 < p < 1"):
        S.t_ppf(1.0, 3)
    with pytest.raises(PeftportError, match="0 < p < 1"):
        S.t_ppf(math.nan, 3)


# --------------------------------------------------------------------------------------------
# mean_ci / bootstrap
# --------------------------------------------------------------------------------------------


def test_mean_ci_worked_example():
    mean, low, high, n = S.mean_ci([1, 2, 3, 4, 5])
    half = 2.776445105197793 * math.sqrt(2.5) / math.sqrt(5)  # 1.963243...
    assert (mean, n) == (3.0, 5)
    assert low == pytest.approx(3 - half, rel=1e-12) and high == pytest.approx(3 + half)
    assert low == pytest.approx(1.036756839, rel=1e-9)
    m90 = S.mean_ci([1, 2, 3, 4, 5], confidence=0.90)
    assert m90[2] - m90[0] == pytest.approx(2.131846786 * math.sqrt(0.5), rel=1e-9)


def test_mean_ci_degenerate():
    assert all(math.isnan(v) for v in S.mean_ci([])[:3]) and S.mean_ci([])[3] == 0
    mean, low, high, n = S.mean_ci([0.7])
    assert (mean, n) == (0.7, 1) and math.isnan(low) and math.isnan(high)
    assert S.mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5, 3)
    assert S.mean_ci([1.0, math.nan, 3.0])[3] == 2  # NaN dropped, n says so
    assert S.mean_ci(4.0)[0] == 4.0 and S.mean_ci(4.0)[3] == 1  # a scalar is one value


def test_mean_ci_errors():
    with pytest.raises(PeftportError, match="confidence"):
        S.mean_ci([1, 2], confidence=1.0)
    with pytest.raises(PeftportError, match="infinite"):
        S.mean_ci([1, math.inf])
    with pytest.raises(PeftportError, match="one-dimensional"):
        S.mean_ci([[1, 2], [3, 4]])


def test_bootstrap_ci_deterministic_and_sane():
    rng = np.random.default_rng(3)
    x = rng.normal(10.0, 2.0, size=40)
    est, low, high = S.bootstrap_ci(x, seed=7)
    assert est == pytest.approx(x.mean())
    assert low < est < high
    assert (est, low, high) == S.bootstrap_ci(x, seed=7)
    assert (low, high) != S.bootstrap_ci(x, seed=8)[1:]
    _, tl, th, _ = S.mean_ci(x)  # percentile and t intervals agree roughly for normal data
    assert abs(low - tl) < 0.4 and abs(high - th) < 0.4
    # A statistic without an axis argument is applied per resample, with the same draws.
    est_m, low_m, high_m = S.bootstrap_ci(x, stat=lambda v: float(np.mean(v)), seed=7)
    assert (est_m, low_m, high_m) == pytest.approx((est, low, high), rel=1e-12)
    med = S.bootstrap_ci(x, stat=np.median, n_boot=500, seed=1)
    assert med[1] <= med[0] <= med[2]


def test_bootstrap_ci_degenerate_and_errors():
    assert S.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    est, low, high = S.bootstrap_ci([5.0])
    assert est == 5.0 and math.isnan(low) and math.isnan(high)
    assert all(math.isnan(v) for v in S.bootstrap_ci([]))
    with pytest.raises(PeftportError, match="n_boot"):
        S.bootstrap_ci([1, 2, 3], n_boot=0)
    with pytest.raises(PeftportError, match="confidence"):
        S.bootstrap_ci([1, 2, 3], confidence=0)


# --------------------------------------------------------------------------------------------
# Paired tests
# --------------------------------------------------------------------------------------------


def test_paired_t_closed_form_df2():
    # d = [1, 2, 3]: mean 2, sd 1, t = 2 sqrt(3), df 2; p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(6/7).
    r = S.paired_test([2, 4, 6], [1, 2, 3])
    assert r["n"] == 3 and r["df"] == 2
    assert r["mean_diff"] == 2.0 and r["sd_diff"] == pytest.approx(1.0)
    assert r["t"] == pytest.approx(2 * math.sqrt(3))
    assert r["p_t"] == pytest.approx(1 - math.sqrt(6 / 7), rel=1e-10)  # 0.0741799
    half = 4.302652729749464 / math.sqrt(3)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((2 - half, 2 + half), rel=1e-10)
    assert r["d_z"] == pytest.approx(2.0)
    # Exact Hedges J(2) = G(1) / (1 * G(1/2)) = 1 / sqrt(pi).
    assert r["g_z"] == pytest.approx(2.0 / math.sqrt(math.pi))


def test_paired_t_worked_example():
    a = [5.1, 4.9, 5.6, 5.8, 6.0]
    b = [4.8, 4.7, 5.1, 5.5, 5.6]
    r = S.paired_test(a, b)
    # d = [.3, .2, .5, .3, .4]: mean .34, sd sqrt(.013), t = 6.66795, df 4
    assert r["mean_diff"] == pytest.approx(0.34)
    assert r["sd_diff"] == pytest.approx(math.sqrt(0.013))
    assert r["t"] == pytest.approx(6.667948595, rel=1e-9)
    assert r["p_t"] == pytest.approx(0.002628545108, rel=1e-8)
    assert r["d_z"] == pytest.approx(0.34 / math.sqrt(0.013))
    j4 = 1.0 / (math.sqrt(2.0) * math.gamma(1.5))  # 0.797885, close to 1 - 3/(4*4-1) = 0.8
    assert r["g_z"] == pytest.approx(j4 * r["d_z"])
    # All five differences positive; the two 0.3's tie (midranks) even after float round-off.
    assert r["p_wilcoxon"] == pytest.approx(0.0625) and r["wilcoxon_method"] == "exact"
    assert any("midranks" in note for note in r["notes"])
    # t = 3 sqrt(2) with df 4, from the closed-form df-4 CDF.
    t = 3 * math.sqrt(2)
    u = 1 + t * t / 4
    p_closed = 2 * (1 - (0.5 + 3 / 8 * (t / math.sqrt(u)) * (1 - t * t / (12 * u))))
    assert S.paired_test([1, 2, 3, 4, 5], [0, 0, 0, 0, 0])["p_t"] == pytest.approx(p_closed)


def test_paired_sign_and_symmetry():
    a, b = [0.9, 0.8, 0.85, 0.7], [0.6, 0.7, 0.5, 0.65]
    r1, r2 = S.paired_test(a, b), S.paired_test(b, a)
    assert r1["mean_diff"] == pytest.approx(-r2["mean_diff"])
    assert r1["p_t"] == pytest.approx(r2["p_t"]) and r1["p_wilcoxon"] == r2["p_wilcoxon"]
    assert r1["d_z"] > 0 > r2["d_z"]


def test_wilcoxon_exact_values():
    assert S.wilcoxon_signed_rank([1, 2, 3, 4, 5])["p"] == pytest.approx(0.0625)  # 2 / 32
    assert S.wilcoxon_signed_rank([-1, -2, -3, -4, -5])["p"] == pytest.approx(0.0625)
    # W+ = 12: P(W+ >= 12) = P(W+ <= 3) = 5/32 (subsets {}, 1, 2, 3, 12) -> p = 10/32.
    r = S.wilcoxon_signed_rank([1, 2, -3, 4, 5])
    assert r["statistic"] == 12.0 and r["p"] == pytest.approx(0.3125)
    # Ties: |d| = 1, 1, 1, 2 -> midranks 2, 2, 2, 4; W+ = 8; P(W+ >= 8) = 4/16 -> p = 0.5.
    r = S.wilcoxon_signed_rank([1, 1, -1, 2])
    assert r["ties"] and r["statistic"] == 8.0 and r["p"] == pytest.approx(0.5)
    # Zeros are dropped: same as [1, 2, 3, 4, 5].
    r = S.wilcoxon_signed_rank([0, 1, 2, 0, 3, 4, 5])
    assert r["n"] == 5 and r["p"] == pytest.approx(0.0625)
    assert "2 zero difference(s) dropped" in r["notes"]
    assert S.wilcoxon_signed_rank([3.0])["p"] == 1.0  # one difference: p = min(1, 2 * 1/2)
    # n = 10, all positive: 2 / 1024.
    assert S.wilcoxon_signed_rank(np.arange(1, 11))["p"] == pytest.approx(2 / 1024)


def test_wilcoxon_normal_approximation():
    d = np.array([-i if i % 3 == 0 else i for i in range(1, 31)], dtype=float)
    r = S.wilcoxon_signed_rank(d)
    assert r["method"] == "normal" and r["n"] == 30 and r["statistic"] == 300.0
    mu, var = 30 * 31 / 4, 30 * 31 * 61 / 24
    z = (abs(300 - mu) - 0.5) / math.sqrt(var)
    assert r["p"] == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert r["p"] == pytest.approx(0.1681789797, rel=1e-8)  # reference value (scipy, corrected)


def test_wilcoxon_round_off_and_errors():
    # 0.85 - 0.80 and 0.90 - 0.85 differ in floating point; they count as tied.
    r = S.wilcoxon_signed_rank([0.85 - 0.80, 0.90 - 0.85, 0.2])
    assert r["ties"]
    r_exact = S.wilcoxon_signed_rank([0.85 - 0.80, 0.90 - 0.85, 0.2], rtol=0)
    assert not r_exact["ties"]
    with pytest.raises(PeftportError, match="rtol"):
        S.wilcoxon_signed_rank([1, 2], rtol=-1)


def test_paired_degenerate_inputs():
    r = S.paired_test([], [])
    assert r["n"] == 0 and math.isnan(r["mean_diff"]) and math.isnan(r["p_t"])
    assert math.isnan(r["p_wilcoxon"])
    r = S.paired_test([0.8], [0.7])
    assert r["n"] == 1 and r["mean_diff"] == pytest.approx(0.1)
    assert math.isnan(r["p_t"]) and math.isnan(r["ci_low"]) and math.isnan(r["d_z"])
    r = S.paired_test([0.8, 0.9], [0.7, 0.6])  # n = 2: d_z defined, g_z not
    assert not math.isnan(r["d_z"]) and math.isnan(r["g_z"])
    r = S.paired_test([5.0, 6.0, 7.0], [4.0, 5.0, 6.0])  # exact constant difference 1: sd 0
    assert r["sd_diff"] == 0.0 and r["mean_diff"] == 1.0
    assert math.isnan(r["t"]) and math.isnan(r["p_t"]) and math.isnan(r["d_z"])
    assert math.isnan(r["g_z"]) and r["ci_low"] == r["ci_high"] == 1.0
    assert r["p_wilcoxon"] == pytest.approx(0.25)  # Wilcoxon is still defined: 2 / 2^3
    r = S.paired_test([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])  # identical: nothing to test
    assert math.isnan(r["p_t"]) and math.isnan(r["p_wilcoxon"]) and r["mean_diff"] == 0.0
    assert any("zero variance" in note for note in r["notes"])
    r = S.paired_test([1.0, math.nan, 3.0, 4.0], [0.0, 1.0, math.nan, 2.0])
    assert r["n"] == 2 and "2 pair(s) with NaN dropped" in r["notes"]


def test_paired_errors():
    with pytest.raises(PeftportError, match="same length"):
        S.paired_test([1, 2, 3], [1, 2])
    with pytest.raises(PeftportError, match="infinite"):
        S.paired_test([1, math.inf], [1, 2])
    with pytest.raises(PeftportError, match="confidence"):
        S.paired_test([1, 2], [1, 2], confidence=95)


# --------------------------------------------------------------------------------------------
# Holm
# --------------------------------------------------------------------------------------------


def test_holm_example():
    # Sorted: .005*4 = .02, .01*3 = .03, .03*2 = .06, .04*1 = .04 -> max so far .06.
    adj = S.holm([0.01, 0.04, 0.03, 0.005])
    assert adj == pytest.approx([0.03, 0.06, 0.06, 0.02])


def test_holm_nan_cap_ties_empty():
    adj = S.holm([0.01, math.nan, 0.04])  # m = 2
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.04)
    assert S.holm([0.5, 0.6]).tolist() == [1.0, 1.0]
    assert S.holm([0.01, 0.01]).tolist() == pytest.approx([0.02, 0.02])
    assert S.holm([]).size == 0
    assert np.isnan(S.holm([math.nan])).all()
    raw = np.random.default_rng(0).uniform(size=20)
    adj = S.holm(raw)
    order = np.argsort(raw)
    assert (np.diff(adj[order]) >= 0).all() and (adj >= raw).all() and (adj <= 1).all()


def test_holm_errors():
    with pytest.raises(PeftportError, match=r"\[0, 1\]"):
        S.holm([0.1, 1.2])
    with pytest.raises(PeftportError, match="one-dimensional"):
        S.holm([[0.1]])


# --------------------------------------------------------------------------------------------
# Learning curves
# --------------------------------------------------------------------------------------------


def test_steps_to_reach():
    steps, acc = [0, 50, 100, 300], [0.5, 0.6, 0.8, 0.9]
    assert S.steps_to_reach(steps, acc, 0.7) == pytest.approx(75.0)
    assert S.steps_to_reach(steps, acc, 0.85) == pytest.approx(200.0)
    assert S.steps_to_reach(steps, acc, 0.8) == pytest.approx(100.0)
    assert S.steps_to_reach(steps, acc, 0.4) == 0.0  # reached at the first checkpoint
    assert S.steps_to_reach(steps, acc, 0.95) is None
    # First crossing counts, later dips do not.
    assert S.steps_to_reach([0, 10, 20, 30], [0.5, 0.9, 0.6, 1.0], 0.7) == pytest.approx(5.0)


def test_steps_saved():
    steps = [0, 50, 100, 300]
    ported = [0.7, 0.85, 0.9, 0.95]
    random = [0.5, 0.6, 0.8, 0.9]
    # random reaches .7 at 75 (75 - 0), .85 at 200 (200 - 50), .9 at 300 (300 - 100), .95 never.
    assert S.steps_saved(steps, ported, random) == [
        pytest.approx(75.0),
        pytest.approx(150.0),
        pytest.approx(200.0),
        None,
    ]
    # Ported worse than random: negative savings.
    # (random has 0.6 at step 0, and reaches 0.7 at 100/3.)
    assert S.steps_saved([0, 100], [0.5, 0.6], [0.6, 0.9]) == [0.0, -100.0]
    assert S.steps_saved([0, 100], [0.5, 0.7], [0.6, 0.9]) == [0.0, pytest.approx(100 / 3 - 100)]
    # Different checkpoints for random.
    out = S.steps_saved([0], [0.75], [0.5, 1.0], random_steps=[0, 1000])
    assert out == [pytest.approx(500.0)]


def test_curve_errors():
    with pytest.raises(PeftportError, match="ascending"):
        S.steps_to_reach([0, 100, 50], [0.1, 0.2, 0.3], 0.2)
    with pytest.raises(PeftportError, match="3 steps but 2 accuracies"):
        S.steps_to_reach([0, 50, 100], [0.1, 0.2], 0.2)
    with pytest.raises(PeftportError, match="empty"):
        S.steps_to_reach([], [], 0.2)
    with pytest.raises(PeftportError, match="finite"):
        S.steps_to_reach([0, 50], [0.1, math.nan], 0.2)
    with pytest.raises(PeftportError, match="target"):
        S.steps_to_reach([0, 50], [0.1, 0.2], math.nan)
    with pytest.raises(PeftportError, match="random"):
        S.steps_saved([0, 50], [0.1, 0.2], [0.1])


# --------------------------------------------------------------------------------------------
# Ranking
# --------------------------------------------------------------------------------------------


def test_rank_clear_winner():
    scores = {"lora": [0.9, 0.91, 0.92], "adapter": [0.7, 0.71, 0.69], "prefix": [0.5, 0.52, 0.5]}
    rows = S.rank_with_uncertainty(scores, n_boot=500, seed=1)
    assert [r["name"] for r in rows] == ["lora", "adapter", "prefix"]
    assert [r["rank"] for r in rows] == [1.0, 2.0, 3.0]
    assert rows[0]["p_best"] == 1.0 and rows[0]["mean_rank"] == 1.0
    assert (rows[0]["rank_low"], rows[0]["rank_high"]) == (1.0, 1.0)
    assert rows[2]["mean"] == pytest.approx(1.52 / 3)
    assert sum(r["p_best"] for r in rows) == pytest.approx(1.0)
    assert rows == S.rank_with_uncertainty(scores, n_boot=500, seed=1)  # deterministic
    low = S.rank_with_uncertainty(scores, n_boot=200, higher_is_better=False)
    assert low[0]["name"] == "prefix"


def test_rank_ties_and_overlap():
    rows = S.rank_with_uncertainty({"b": [0.5, 0.5], "a": [0.5, 0.5]}, n_boot=100)
    assert [r["name"] for r in rows] == ["a", "b"]  # tie: by name
    assert all(r["rank"] == 1.5 and r["p_best"] == 0.5 for r in rows)
    rng = np.random.default_rng(0)
    noisy = {"x": rng.normal(0.8, 0.1, 6).tolist(), "y": rng.normal(0.8, 0.1, 6).tolist()}
    rows = S.rank_with_uncertainty(noisy, n_boot=1000, seed=2)
    assert all(0.05 < r["p_best"] < 0.95 for r in rows)
    assert all(r["rank_low"] == 1.0 and r["rank_high"] == 2.0 for r in rows)


def test_rank_paired():
    base = np.array([0.6, 0.7, 0.8, 0.9, 0.75])
    scores = {"a": (base + 0.01).tolist(), "b": base.tolist()}
    rows = S.rank_with_uncertainty(scores, n_boot=300, paired=True)
    assert rows[0]["name"] == "a" and rows[0]["p_best"] == 1.0  # a beats b on every seed
    unpaired = S.rank_with_uncertainty(scores, n_boot=300, paired=False)
    assert unpaired[0]["p_best"] < 1.0
    rows = S.rank_with_uncertainty({"a": [1.0, math.nan, 3.0], "b": [1.0, 2.0, 3.0]}, paired=True)
    assert [r["n"] for r in rows] == [2, 2]


def test_rank_errors():
    with pytest.raises(PeftportError, match="no techniques"):
        S.rank_with_uncertainty({})
    with pytest.raises(PeftportError, match="no \\(non-NaN\\) scores"):
        S.rank_with_uncertainty({"a": [], "b": [1.0]})
    with pytest.raises(PeftportError, match="infinite"):
        S.rank_with_uncertainty({"a": [math.inf]})
    with pytest.raises(PeftportError, match="equal-length"):
        S.rank_with_uncertainty({"a": [1.0, 2.0], "b": [1.0]}, paired=True)
    with pytest.raises(PeftportError, match="n_boot"):
        S.rank_with_uncertainty({"a": [1.0]}, n_boot=0)


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_accuracy():
    assert S.accuracy([0, 1, 1, 0], [0, 1, 0, 0]) == 0.75
    assert math.isnan(S.accuracy([], []))
    with pytest.raises(PeftportError, match="equal length"):
        S.accuracy([0, 1], [0])


def test_macro_f1():
    labels = [0, 0, 1, 1, 2, 2]
    preds = [0, 1, 1, 1, 2, 0]
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 2 fp 1 fn 0 -> 0.8; class 2: tp 1 fn 1 -> 2/3
    assert S.macro_f1(labels, preds, 3) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert S.macro_f1([0, 1, 1], [0, 1, 1], 2) == 1.0
    # Class 2 absent from labels and preds: left out; class 1 never predicted: F1 0.
    assert S.macro_f1([0, 0, 1], [0, 0, 0], 3) == pytest.approx((0.8 + 0.0) / 2)
    assert math.isnan(S.macro_f1([], [], 2))
    assert S.macro_f1(np.array([True, False]), np.array([True, True]), 2) == pytest.approx(
        (0.0 + 2 / 3) / 2
    )


def test_macro_f1_errors():
    with pytest.raises(PeftportError, match="num_labels"):
        S.macro_f1([0], [0], 0)
    with pytest.raises(PeftportError, match=r"labels must lie in \[0, 2\)"):
        S.macro_f1([0, 2], [0, 1], 2)
    with pytest.raises(PeftportError, match="preds must lie"):
        S.macro_f1([0, 1], [0, -1], 2)
    with pytest.raises(PeftportError, match="differ in length"):
        S.macro_f1([0, 1], [0], 2)
    with pytest.raises(PeftportError, match="integer class ids"):
        S.macro_f1([0.5, 1], [0, 1], 2)
    with pytest.raises(PeftportError, match="one-dimensional"):
        S.macro_f1([[0, 1]], [[0, 1]], 2)


def test_roc_auc():
    y = [0, 0, 1, 1]
    assert S.roc_auc(y, [0.1, 0.2, 0.8, 0.9]) == 1.0  # perfect
    assert S.roc_auc(y, [0.9, 0.8, 0.2, 0.1]) == 0.0  # reversed
    assert S.roc_auc(y, [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    assert S.roc_auc(y, [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)  # 3 of 4 pairs
    assert S.roc_auc(y, [0.2, 0.5, 0.5, 0.9]) == pytest.approx(0.875)  # one tie counts 1/2
    assert S.roc_auc([True, False], [-math.inf, math.inf]) == 0.0
    assert math.isnan(S.roc_auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(S.roc_auc([], []))
    # Brute force over all pairs, with many ties.
    rng = np.random.default_rng(5)
    yy = rng.integers(0, 2, 300)
    ss = np.round(rng.normal(size=300) + yy, 1)
    pos, neg = ss[yy == 1], ss[yy == 0]
    brute = ((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])).mean()
    assert S.roc_auc(yy, ss) == pytest.approx(brute, rel=1e-12)


def test_roc_auc_errors():
    with pytest.raises(PeftportError, match="binary"):
        S.roc_auc([0, 2], [0.1, 0.2])
    with pytest.raises(PeftportError, match="NaN"):
        S.roc_auc([0, 1], [0.1, math.nan])
    with pytest.raises(PeftportError, match="differ in length"):
        S.roc_auc([0, 1], [0.1])


def test_macro_auc_ovr():
    y = [0, 1, 2, 0, 1, 2]
    perfect = np.eye(3)[y]
    assert S.macro_auc_ovr(y, perfect) == 1.0
    assert S.macro_auc_ovr(y, np.full((6, 3), 0.3)) == 0.5
    # Class 2 absent: left out of the mean.
    y2 = [0, 1, 0, 1]
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.0], [0.6, 0.4, 0.0], [0.7, 0.3, 0.0]])
    # class 0: pos .9, .6 vs neg .2, .7 -> 3/4; class 1: pos .8, .3 vs neg .1, .4 -> 3/4
    assert S.macro_auc_ovr(y2, scores) == pytest.approx(0.75)
    assert math.isnan(S.macro_auc_ovr([0, 0], np.ones((2, 2))))


def test_macro_auc_ovr_errors():
    with pytest.raises(PeftportError, match="num_classes"):
        S.macro_auc_ovr([0, 1], np.ones((3, 2)))
    with pytest.raises(PeftportError, match="num_classes"):
        S.macro_auc_ovr([0, 1], np.ones(2))
    with pytest.raises(PeftportError, match="must lie in"):
        S.macro_auc_ovr([0, 3], np.ones((2, 2)))


def test_midranks():
    ranks, counts = S.midranks([10, 20, 20, 5])
    assert ranks.tolist() == [2.0, 3.5, 3.5, 1.0] and sorted(counts.tolist()) == [1, 1, 2]
    assert S.midranks([])[0].size == 0
    with pytest.raises(PeftportError, match="NaN"):
        S.midranks([1.0, math.nan])


def test_errors_are_value_errors_too():
    with pytest.raises(ValueError):
        S.holm([2.0])


# --------------------------------------------------------------------------------------------
# The library-backed metrics give the stored numbers of the hand-written ones, bit for bit
# --------------------------------------------------------------------------------------------


def _old_macro_f1(y: np.ndarray, p: np.ndarray, k: int) -> float:
    """peftport's hand-written macro F1 before it used scikit-learn (the stored numbers)."""
    cm = np.bincount(y * k + p, minlength=k * k).reshape(k, k)
    tp = np.diag(cm).astype(np.float64)
    denom = cm.sum(axis=0) + cm.sum(axis=1)
    defined = denom > 0
    return float(np.mean(2.0 * tp[defined] / denom[defined]))


def _old_midranks(x: np.ndarray) -> np.ndarray:
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    counts = np.diff(np.append(starts, x.size))
    ranks = np.empty(x.size)
    ranks[order] = np.repeat(starts + (counts + 1) / 2.0, counts)
    return ranks


def _old_roc_auc(y: np.ndarray, s: np.ndarray) -> float:
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    r_pos = float(_old_midranks(s.astype(np.float64))[y == 1].sum())
    return (r_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def _old_holm(q: np.ndarray) -> np.ndarray:
    m = q.size
    order = np.argsort(q, kind="mergesort")
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * q[order]), 1.0)
    out = np.empty(m)
    out[order] = adjusted
    return out


@pytest.mark.filterwarnings("error")
def test_library_metrics_equal_the_hand_written_ones_bit_for_bit():
    rng = np.random.default_rng(11)
    for i in range(150):
        n, k = int(rng.integers(1, 120)), int(rng.integers(2, 6))
        y, p = rng.integers(0, k, n), rng.integers(0, k, n)
        assert S.accuracy(y, p) == float(np.mean(y == p))
        assert S.macro_f1(y, p, k) == _old_macro_f1(y, p, k)
        # scores as the engine makes them: float32 logit differences, often tied
        s = rng.normal(size=n).astype(np.float32)
        if i % 2:
            s = np.round(s, 1)
        yb = rng.integers(0, 2, n)
        if 0 < yb.sum() < n:
            assert S.roc_auc(yb, s) == _old_roc_auc(yb, s)
            assert np.array_equal(S.midranks(s)[0], _old_midranks(s.astype(np.float64)))
    for _ in range(20):  # few: statsmodels' multipletests runs a garbage collection per call
        q = rng.uniform(size=int(rng.integers(1, 60))) ** 3
        q[-1] = q[0]  # a tie
        assert np.array_equal(S.holm(q), _old_holm(q))
