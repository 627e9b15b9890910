"""The report's science on hand-made observations: intervals that fit the metric, modules that
did not learn, degenerate (one-class) results, tests at the independent unit, and findings that
are computed (a flipped input flips the verdict)."""

from __future__ import annotations

from pathlib import Path

import pytest

from peftport.report.aggregate import aggregate
from peftport.report.columns import stat_text
from peftport.report.load import Observation, StoreData
from peftport.report.model import Stat, summarize
from peftport.report.paired import independent_units
from peftport.report.render import render_markdown
from peftport.report.science import base_rates, learned_modules
from peftport.report.uncertainty import MIN_RUNS, mean_interval

N = 200  # test examples per result
BASE = 0.58  # the synthetic test split's majority-class rate


def ob(t, cond, seed, step, acc, *, origin="a", receiver="b", pre_data="d", post_data="d",
       pre=50, share=0.6, auc=None, unit=None) -> Observation:  # fmt: skip
    """One done result with every metric the store holds (accuracy is the report's metric)."""
    # macro-F1 of a single-class prediction is (2p / (1 + p)) / 2 on a binary task
    f1 = (2 * acc / (1 + acc)) / 2 if share >= 0.999 else 0.6
    pre_steps = 0 if cond == "random" else pre
    uid = unit or f"{t}-{cond}-{origin}-{receiver}-{pre_data}-{post_data}-{seed}-{pre_steps}"
    return Observation(
        t, origin, receiver, pre_data, post_data, seed, cond, pre_steps, step, uid, step,
        "done", acc, share, acc, auc if auc is not None else (0.9 if acc > 0.7 else 0.55),
        f1, N,
    )  # fmt: skip


def study(
    ported: float = 0.80, sampled: float = 0.60, seeds: int = 5, flat_origin: float = 0.59
) -> list[Observation]:
    """Two techniques, both directions of one pair, one data set, `seeds` seeds, steps 0 and
    10. "good" learns (origin 0.9); "flat" does not (origin at the majority class)."""
    out = []
    for s in range(seeds):
        jitter = 0.01 * ((s * 7) % 5 - 2)
        for o, r in (("a", "b"), ("b", "a")):
            kw = {"origin": o, "receiver": r}
            for t, org in (("good", 0.9), ("flat", flat_origin)):
                out.append(ob(t, "origin", s, 0, org + jitter, **{"origin": o, "receiver": o}))
                out += [
                    ob(
                        t,
                        "ported",
                        s,
                        0,
                        ported + jitter + (0.02 + 0.005 * (s % 2) if o == "a" else 0),
                        **kw,
                    ),
                    ob(t, "ported", s, 10, 0.85 + jitter, **kw),
                    ob(t, "sampled", s, 0, sampled + jitter, **kw),
                    ob(t, "sampled", s, 10, 0.7 + jitter, **kw),
                    # random at zero-shot predicts the majority class only
                    ob(t, "random", s, 0, BASE, share=1.0, **kw),
                    ob(t, "random", s, 10, 0.7 + jitter, **kw),
                ]
    return out


def agg_of(obs: list[Observation], tmp_path: Path):
    return aggregate(StoreData(tmp_path, "accuracy", 1, "", "", [], obs, {}, [], {}))


def test_intervals_fit_the_metric_and_few_runs_have_none():
    # accuracies at the top of the range: a t interval would pass 1, the bootstrap cannot
    vals = [1.0, 0.99, 0.97]
    mean, low, high, n, method = mean_interval(vals, [N] * 3)
    assert n == 3 and mean == pytest.approx(sum(vals) / 3) and "binomial" in method
    assert 0.0 <= low <= mean <= high <= 1.0
    # without example counts: over runs only, within the runs' own values
    _, low, high, _, _ = mean_interval(vals)
    assert min(vals) <= low <= high <= max(vals)
    # two runs: no interval, and the page says so
    mean, low, high, n, _ = mean_interval([0.53, 0.9], [N, N])
    assert (low, high, n) == (None, None, 2) and MIN_RUNS == 3
    text = stat_text(Stat(mean, low, high, n, n))
    assert text == f"{mean:.3f} (2 runs: no interval)"
    # the two-level bootstrap is wider than resampling runs alone (it adds the test examples)
    vals = [0.7, 0.72, 0.71, 0.69]
    _, l2, h2, _, _ = mean_interval(vals, [50] * 4)
    _, l1, h1, _, _ = mean_interval(vals)
    assert h2 - l2 > h1 - l1


def test_majority_rate_and_not_learned_modules():
    obs = study()
    rate = base_rates(obs)["d"]
    assert rate.share == pytest.approx(BASE) and rate.exact  # 0.58 read off a one-class result
    # a minority-class collapse gives the majority rate too (binary: 1 - p)
    assert base_rates([ob("x", "random", 0, 0, 1 - BASE, share=1.0)])["d"].share == pytest.approx(
        BASE
    )
    learned = learned_modules(obs)
    assert learned[("good", "a", "d", 50)].learned
    flat = learned[("flat", "a", "d", 50)]
    assert not flat.learned and "majority class 0.580" in flat.why
    # a high accuracy with AUC below 0.60 has not learned either
    low_auc = [ob("t", "origin", s, 0, 0.9, auc=0.55) for s in range(3)]
    assert not learned_modules(low_auc)[("t", "a", "d", 50)].learned


def test_a_module_that_did_not_learn_gets_no_retention_anywhere(tmp_path):
    agg = agg_of(study(), tmp_path)
    zs = {r["technique"]: r for r in agg.tables["zero_shot_by_technique"].rows}
    assert zs["good"]["retained_mean"] is not None and zs["good"]["origin_learned"] == "yes"
    assert zs["flat"]["retained_mean"] is None and zs["flat"]["retained_n"] == 0
    assert zs["flat"]["retained_missing"] == "10 not learned"
    assert zs["flat"]["origin_learned"].startswith("not learned")
    glance = {g["technique"]: g for g in agg.glance}
    assert glance["good"]["measured"] and not glance["flat"]["measured"]
    from peftport.report.columns import glance_rows

    header, rows = glance_rows(agg)
    flat = next(
        dict(zip(header, (c for c, _ in r), strict=True)) for r in rows if r[0][0] == "flat"
    )
    assert flat["retained of origin"] == "not measured (did not learn on its origin)"
    assert flat["ported AUC, zero-shot"] != "n/a"  # AUC beside accuracy
    # the figures: marked there too, and every accuracy panel has its majority-class line
    assert [p.title for p in agg.overview.panels] == ["flat (not learned on its origin)", "good"]
    assert all(p.chance == pytest.approx(BASE) for f in agg.figures for p in f.panels)
    assert all("not learned" in p.title for f in agg.figures if f.technique == "flat"
               for p in f.panels)  # fmt: skip
    # "flat" is left out of every finding
    assert all("flat" not in f.detail for f in agg.findings)


def test_one_class_cells_are_flagged(tmp_path):
    agg = agg_of(study(), tmp_path)
    acc = {
        (r["technique"], r["condition"], r["post_steps"]): r for r in agg.tables["accuracy"].rows
    }
    r = acc[("good", "random", 0)]
    assert r["majority_share"] == 1.0
    st = summarize([o for o in study() if o.condition == "random" and o.post_steps == 0])
    assert st.one_class and stat_text(st).endswith("[one class]")
    assert not acc[("good", "ported", 0)]["majority_share"] >= 0.95


def test_steps_saved_never_comes_from_a_control_at_the_majority_class(tmp_path):
    obs = []
    for s in range(4):
        obs += [
            ob("t", "origin", s, 0, 0.9),
            ob("t", "ported", s, 0, 0.56),  # ported at zero-shot below the majority rate
            ob("t", "ported", s, 10, 0.8),
            ob("t", "random", s, 0, 0.50),
            ob("t", "random", s, 10, BASE, share=1.0),  # reaches 0.56 only by one class
        ]
    saved = {r["checkpoint"]: r for r in agg_of(obs, tmp_path).tables["steps_saved"].rows}
    assert saved[0]["saved"] is None and saved[0]["saved_ci_low"] is None
    assert "only by predicting one class" in saved[0]["not_measured"]
    # the same curves with a random module that really learned: a number
    obs = [
        o if not (o.condition == "random" and o.post_steps == 10)
        else ob("t", "random", o.seed, 10, BASE, share=0.7)
        for o in obs
    ]  # fmt: skip
    saved = {r["checkpoint"]: r for r in agg_of(obs, tmp_path).tables["steps_saved"].rows}
    assert saved[0]["not_measured"] == "" and saved[0]["saved"] is not None


def test_pairs_are_tested_at_the_independent_unit(tmp_path):
    """Two post-porting data sets port the same snapshot: two pairs, one unit per seed; one
    random unit serving two pairs is counted once."""
    obs = []
    for s in range(4):
        obs.append(ob("t", "origin", s, 0, 0.9))
        for post in ("d", "e"):
            obs += [
                ob("t", "ported", s, 0, 0.8 + 0.01 * s, post_data=post),
                ob("t", "random", s, 0, 0.5, post_data=post),
            ]
    agg = agg_of(obs, tmp_path)
    row = next(r for r in agg.tables["differences"].rows if r["comparison"] == "ported - random")
    assert row["n_pairs"] == 8 and row["n_units"] == 4 and row["df"] == 3
    # a random unit shared by two snapshots joins them into one unit
    p1, p2 = ob("t", "ported", 0, 0, 0.8), ob("t", "ported", 0, 0, 0.8, origin="c")
    r = ob("t", "random", 0, 0, 0.5, unit="shared")
    assert independent_units([(p1, r), (p2, r)]) == [[0, 1]]


def verdicts(agg) -> dict[str, str]:
    return {f.key: f.verdict for f in agg.findings}


def test_findings_are_computed_and_flip_with_their_input(tmp_path):
    agg = agg_of(study(), tmp_path)
    v = verdicts(agg)
    assert v["beats_sampled"] == "holds" and v["beats_random"] == "holds"
    assert v["best"] == "not measured"  # one technique learned: nothing to rank it against
    assert v["direction"] == "holds"  # a -> b ports 0.02 better than b -> a on every seed
    assert v["cross_data"] == "not measured"  # one data set only
    # sampled now beats ported: the same code says the finding does not hold
    flipped = agg_of(study(ported=0.62, sampled=0.75), tmp_path)
    assert verdicts(flipped)["beats_sampled"] == "does not hold"
    # the page lists them above the tables
    md = render_markdown_of(agg, tmp_path)
    assert md.index("Ported beats sampled") < md.index("| technique |")
    # one seed, two directions: 2 independent units, too few for a verdict
    assert verdicts(agg_of(study(seeds=1), tmp_path))["beats_sampled"] == "not measured"


def render_markdown_of(agg, tmp_path: Path) -> str:
    from peftport.report.render import page

    data = StoreData(tmp_path, "accuracy", 1, "", "", [], [], {"done": 0, "running": 0,
                     "pending": 0, "failed": 0}, [], {})  # fmt: skip
    return render_markdown(page(data, agg, [], None, "now", "test"))


def test_each_technique_is_read_at_its_own_largest_pre_porting_count(tmp_path):
    """A study may train a slow technique longer before porting: the at-a-glance table, the
    findings and the ranking then read every technique at its own largest count."""
    from dataclasses import replace

    good = [o for o in study() if o.technique == "good"]
    slow = [
        replace(o, technique="slow", pre_steps=0 if o.condition == "random" else 100,
                unit_id=o.unit_id.replace("good", "slow"))
        for o in good
    ]  # fmt: skip
    agg = agg_of(good + slow, tmp_path)
    assert agg.axes.top("good") == 50 and agg.axes.top("slow") == 100
    assert {g["technique"]: g["pre_steps"] for g in agg.glance} == {"good": 50, "slow": 100}
    assert all(g["vs_random"] is not None for g in agg.glance)
    beats = next(f for f in agg.findings if f.key == "beats_random")
    assert beats.verdict == "holds" and "good" in beats.detail and "slow" in beats.detail
    ranked = [r for r in agg.tables["ranking"].rows if r["score"] == "zero_shot"]
    assert {r["technique"] for r in ranked} == {"good", "slow"} and all(r["paired"] for r in ranked)
    md = render_markdown_of(agg, tmp_path)
    assert "modules trained good 50, slow 100 steps before porting" in md
    # a figure per technique, direction and the technique's own counts: none of random alone
    from peftport.report.aggregate import figures

    drawn = {(f.technique, f.pre_steps) for f in figures(agg.axes, good + slow, "accuracy")}
    assert drawn == {("good", 50), ("slow", 100)}


def test_the_glance_gives_steps_saved_with_its_interval(tmp_path):
    """At a glance, steps saved carries its bootstrap interval (issue 15: a number with an
    interval), the same numbers as the steps-saved table."""
    from peftport.report.columns import glance_rows, signed

    agg = agg_of(study(ported=0.66), tmp_path)
    row = next(
        r
        for r in agg.tables["steps_saved"].rows
        if r["technique"] == "good" and r["checkpoint"] == 0
    )
    assert row["reached"] and 0 < row["saved_ci_low"] <= row["saved"] <= row["saved_ci_high"]
    header, rows = glance_rows(agg)
    good = next(
        dict(zip(header, (c for c, _ in r), strict=True)) for r in rows if r[0][0] == "good"
    )
    want = (
        f"{signed(row['saved'], 1)} [{signed(row['saved_ci_low'], 1)}, "
        f"{signed(row['saved_ci_high'], 1)}]"
    )
    assert good["steps saved at zero-shot [95% CI]"] == want
