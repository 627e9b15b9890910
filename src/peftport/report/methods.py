"""The page's short statement of its statistics (the *Statistics* section); docs/report.md has
the exact definitions."""

from __future__ import annotations

METHODS = [
    "Means: over seeds (by-direction tables, figures) or over seeds, porting directions and data "
    "combinations (pooled tables, overview); each unit result counted once. 95% intervals that "
    "stay in the metric's range: for accuracy (and binary AUC) a two-level bootstrap: resample "
    "the runs, then the stored per-example predictions (one draw of the test examples shared "
    "by the runs evaluated on them); a store without per-example predictions: each run's "
    "accuracy drawn as Binomial(n test examples, accuracy) / n, AUC and macro-F1 over runs; "
    "fewer than 3 runs: no interval ('2 runs: no interval').",
    "Agreement: the share of test examples on which a result predicts what its origin module "
    "predicted on the same examples; negative flips: right on the origin, wrong in the result "
    "(the same for ported, sampled and random: the controls give the chance baseline).",
    "Retained: per seed, ported zero-shot accuracy on the receiver divided by the same module's "
    "accuracy on its origin after the pre-porting steps; mean and bootstrap interval over those "
    "ratios (range 0 to 1/origin). None for a module that did not learn on its origin.",
    "Not learned: mean origin accuracy within 0.02 of the test split's majority-class rate (read "
    "off results that predict one class), or mean origin AUC below 0.60. One class: 95% or more "
    "of a cell's predictions are one class; flagged in tables ([one class]) and figures.",
    "Differences: pairs share technique, origin, receiver, data sets, seed, pre-porting steps "
    "(random has none: it pairs with every pre-porting step count) and post-porting steps. "
    "Pairs that share a pretrained snapshot or a control unit are one independent unit (their "
    "differences averaged); the tests run over units: paired t-test and Wilcoxon signed-rank "
    "test, two-sided; Holm correction over all rows of a table; interval: bootstrap over units; "
    "effect sizes d_z and g_z (Hedges). Bold: Holm-adjusted p < 0.05.",
    "Retention against host distance: per seed, (ported − random) / (origin − random) at "
    "zero-shot (no ratio when origin is not 0.02 above random, or did not learn), mean and "
    "bootstrap interval over seeds (not bounded: 1 all kept, 0 nothing); CKA distance of a pair "
    "= 1 − mean over receiver layers of the CKA with the origin layer each receives; Spearman's "
    "rho of distance and mean retention over the pairs (3 or more), p exact up to 8 pairs.",
    "Steps saved: on the mean curves over complete runs, the first post-porting step at which "
    "random reaches what ported has at checkpoint k (linear interpolation between checkpoints), "
    "minus k; 'not reached' when random never gets there by its last checkpoint; 'not "
    "measured' when ported predicts one class at k or random reaches it only predicting one "
    "class. Interval: 95% percentile bootstrap over runs (3 or more).",
    "Ranking: per run, the score ported − random (averaged over checkpoints, or at step 0); "
    "techniques ranked by mean score, rank intervals and P(best) from a bootstrap over runs "
    "(paired when every technique has the same runs).",
    "Porting methods (a study with more than one `methods:` entry): each method's mean with "
    "the interval above; differences of a method minus copy (pairs: the two ports of one "
    "pretrained snapshot) and minus sampled and random (pairs as above), tested over "
    "independent units as above, Holm over every row of the methods' difference table. The "
    "other tables read copy (else the study's first method) as ported.",
    "Findings: computed from these tables (report/findings.py), never written by hand.",
]
