"""Per-example predictions: stored for every evaluation of a study, the two-level bootstrap over
runs and examples, agreement and negative flips, and stores without predictions."""

from __future__ import annotations

import csv
import dataclasses
import json
import sqlite3

import numpy as np
import pytest
from typer.testing import CliRunner

from peftport import stats
from peftport.data import load_dataset
from peftport.errors import PeftportError
from peftport.predictions import Predictions
from peftport.report.agreement import agreement_table, compare
from peftport.report.load import Observation, StoreData, load_store
from peftport.report.model import summarize
from peftport.report.uncertainty import (
    TWO_LEVEL,
    TWO_LEVEL_EXAMPLES,
    auc_interval,
    per_example_interval,
)
from test_study_run import run_inline, write_toy

TRAIN = "train: {lr: 1.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}\n"


def tiny_study(data, other) -> str:
    """LoRA on tiny-bert, one seed, the same data set and another one after porting."""
    return (
        "name: preds\ntechniques: {lora: {config: {r: 2}}}\n"
        "pairs: [[tiny-bert, tiny-bert]]\n"
        f"data: [[{data}, {data}], [{data}, {other}]]\npre_steps: [4]\npost_steps: [3]\n"
        "seeds: [0]\n" + TRAIN + "compare: false\n"
    )


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preds")
    data, other = write_toy(tmp / "toy.csv"), write_toy(tmp / "other.csv", n=200)
    plan, _ = run_inline(tmp / "s.sqlite", tiny_study(data, other), threads=1)
    return tmp / "s.sqlite", plan, data, other


def rows(path, where=""):
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    try:
        return con.execute(f"SELECT * FROM predictions {where}").fetchall(), {
            (r["unit_id"], r["step"], r["name"]): r["value"]
            for r in con.execute("SELECT * FROM metrics")
        }
    finally:
        con.close()


def test_every_evaluation_stores_its_predictions(store):
    path, plan, data, other = store
    own, metrics = rows(path, "WHERE evaluated = ''")
    assert len(own) == sum(u.evals for u in plan.units) == plan.totals()["evaluations"]
    by_unit = {u.id: u for u in plan.units}
    for r in own:
        p = Predictions.from_record(r)
        u = by_unit[r["unit_id"]]
        d = load_dataset(str(u.post_data if u.kind != "pretrain" else u.pre_data))
        truth = [e.label for e in d.split("test")[:40]]
        assert p.labels.tolist() == truth  # the gold labels of the evaluated examples, in order
        key = (r["unit_id"], r["step"])
        # the stored metrics come from exactly these predictions
        assert p.accuracy() == metrics[(*key, "accuracy")]
        assert stats.roc_auc(p.labels, p.scores) == metrics[(*key, "auc")]
        assert p.n == metrics[(*key, "n")] == len(truth)
        share = max((p.predicted == c).mean() for c in range(2))
        assert float(share) == metrics[(*key, "majority_share")]
    # the same data set before and after porting: the same examples, checkably
    shas = {
        (by_unit[r["unit_id"]].post_data or by_unit[r["unit_id"]].pre_data, r["examples_sha256"])
        for r in own
    }
    assert len({d for d, _ in shas}) == len(shas) == 2


def test_cross_data_post_units_evaluate_their_origin_module(store):
    path, plan, data, other = store
    origin, _ = rows(path, "WHERE evaluated = 'origin'")
    cross = {u.id for u in plan.units if u.kind == "post" and u.pre_data != u.post_data}
    assert {r["unit_id"] for r in origin} == cross and cross
    own, _ = rows(path, "WHERE evaluated = ''")
    sha = {r["unit_id"]: r["examples_sha256"] for r in own}
    for r in origin:
        assert r["step"] == 4 and r["examples_sha256"] == sha[r["unit_id"]]
    # ported and sampled start from one snapshot: one origin prediction
    assert len({bytes(r["predicted"]) for r in origin}) == 1


def test_report_agreement_from_the_store(store, tmp_path):
    path, *_ = store
    data = load_store(path)
    assert data.has_predictions
    table = agreement_table(data)
    got = {(r["condition"], r["post_steps"]): r for r in table.rows}
    assert set(got) == {(c, s) for c in ("ported", "sampled", "random") for s in (0, 3)}
    for r in table.rows:
        assert r["agreement_n"] == r["agreement_expected"] == 2  # two data combinations
        assert 0.0 <= r["agreement_mean"] <= 1.0 and 0.0 <= r["negative_flips_mean"] <= 1.0
    # tiny-bert -> tiny-bert, ported on the same data at zero-shot: the module itself
    from peftport.report.agreement import origin_predictions

    origins = origin_predictions(data)
    same = [
        o
        for o in data.observations
        if o.condition == "ported" and o.post_steps == 0 and o.pre_data == o.post_data
    ]
    agree, flips = compare(
        same[0].predictions,
        origins[(same[0].technique, same[0].origin, same[0].pre_data, same[0].post_data, 0, 4)],
    )
    assert agree.mean() == 1.0 and flips.sum() == 0

    from peftport.report import build_report

    out = build_report(path, tmp_path / "r")
    text = out.markdown.read_text()
    assert "Agreement with the origin module" in text
    assert (out.out_dir / "tables" / "agreement.csv").exists()


def test_a_store_without_the_predictions_table_still_reports(store, tmp_path):
    path, *_ = store
    old = tmp_path / "old.sqlite"
    src, dst = sqlite3.connect(path), sqlite3.connect(old)
    src.backup(dst)
    src.close()
    dst.execute("DROP TABLE predictions")
    dst.commit()
    dst.close()
    data = load_store(old)
    assert not data.has_predictions and all(o.predictions is None for o in data.observations)
    from peftport.report import build_report

    out = build_report(old, tmp_path / "r")
    text = out.markdown.read_text()
    assert "no per-example predictions" in text and "binomial" in text
    assert "Not measured: this store was written before" in text


def test_evaluate_run_returns_the_same_metrics_with_predictions(tmp_path):
    from peftport.engine import TrainConfig
    from peftport.runs import evaluate_run, evaluate_run_with_predictions, train_run

    data = str(write_toy(tmp_path / "toy.csv"))
    cfg = TrainConfig(
        steps=3,
        eval_at=(3,),
        lr=1e-2,
        batch_size=8,
        max_length=32,
        max_eval_examples=24,
        seed=3,
        threads=1,
    )
    run = train_run("tiny-bert", "lora", data, cfg, technique_config={"r": 2}, progress=False)
    module = (run.tensors, run.meta)
    m = evaluate_run(module, "tiny-bert", data, max_examples=24, max_length=32)
    m2, p = evaluate_run_with_predictions(module, "tiny-bert", data, max_examples=24, max_length=32)
    assert m == m2 == run.result.metrics[3]
    assert p.accuracy() == m["accuracy"] and p.n == m["n"] == 20
    assert p.examples_sha256 == run.result.predictions[3].examples_sha256
    assert np.array_equal(p.predicted, run.result.predictions[3].predicted)


def test_evaluate_command_writes_predictions(tmp_path):
    from peftport.cli import app

    data = str(write_toy(tmp_path / "toy.csv"))
    runner = CliRunner()
    mod = tmp_path / "mod"
    r = runner.invoke(
        app,
        [
            "train",
            "--host",
            "tiny-bert",
            "--technique",
            "lora",
            "--data",
            data,
            "--steps",
            "2",
            "--eval-at",
            "2",
            "--max-length",
            "32",
            "--max-eval-examples",
            "16",
            "--out",
            str(mod),
        ],
    )
    assert r.exit_code == 0, r.output
    for name in ("p.csv", "p.jsonl"):
        r = runner.invoke(
            app,
            [
                "evaluate",
                str(mod),
                "--host",
                "tiny-bert",
                "--data",
                data,
                "--max-length",
                "32",
                "--max-eval-examples",
                "16",
                "--json",
                "--predictions",
                str(tmp_path / name),
            ],
        )
        assert r.exit_code == 0, r.output
        acc = json.loads(r.output[r.output.index("{") :])["accuracy"]
        if name.endswith(".csv"):
            with open(tmp_path / name) as f:
                got = list(csv.DictReader(f))
            got = [{k: float(v) for k, v in g.items()} for g in got]
        else:
            got = [json.loads(line) for line in (tmp_path / name).read_text().splitlines()]
        assert [int(g["index"]) for g in got] == list(range(16))
        assert np.mean([g["label"] == g["predicted"] for g in got]) == acc
    r = runner.invoke(
        app,
        [
            "evaluate",
            str(mod),
            "--host",
            "tiny-bert",
            "--data",
            data,
            "--predictions",
            str(tmp_path / "p.txt"),
        ],
    )
    # a PeftportError: `peftport` (cli.main) prints its one line and exits 2
    assert isinstance(r.exception, PeftportError) and "--predictions" in str(r.exception)
    assert not (tmp_path / "p.txt").exists()


# --- the two-level bootstrap and agreement on hand-made predictions -------------------------


def test_two_level_bootstrap_on_hand_made_predictions():
    ones = [np.ones(50)] * 4
    mean, low, high, n, method = per_example_interval(ones, ["a"] * 4)
    assert (mean, low, high, n, method) == (1.0, 1.0, 1.0, 4, TWO_LEVEL_EXAMPLES)
    rng = np.random.default_rng(0)
    widths = []
    for size in (40, 400, 4000):
        runs = [(rng.random(size) < p).astype(float) for p in (0.6, 0.7, 0.65, 0.62)]
        mean, low, high, n, _ = per_example_interval(runs, ["x"] * 4)
        assert 0.0 <= low <= mean <= high <= 1.0
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]  # more examples: narrower
    # an extreme share stays inside [0, 1]
    _, low, high, _, _ = per_example_interval([np.r_[np.ones(39), 0.0]] * 3)
    assert 0.0 <= low <= high <= 1.0
    # fewer than 3 runs: no interval
    assert per_example_interval(ones[:2])[1:3] == (None, None)
    # the AUC's interval: the runs' AUCs mean, inside [0, 1], exact AUC per run
    ys = [rng.integers(0, 2, 300) for _ in range(3)]
    ss = [rng.normal(size=300) + 1.5 * y for y in ys]
    mean, low, high, n, method = auc_interval(ys, ss)
    assert mean == pytest.approx(
        np.mean([stats.roc_auc(y, s) for y, s in zip(ys, ss, strict=True)])
    )
    assert 0.0 <= low < mean < high <= 1.0 and method == TWO_LEVEL_EXAMPLES
    perfect = auc_interval([np.r_[np.zeros(10), np.ones(10)]] * 3, [np.arange(20.0)] * 3)
    assert perfect[:3] == (1.0, 1.0, 1.0)


def test_agreement_on_hand_made_predictions():
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    origin = Predictions(labels, np.array([0, 1, 0, 1, 1, 0, 0, 1]), np.zeros(8), "s")
    agree, flips = compare(origin, origin)
    assert agree.mean() == 1.0 and flips.sum() == 0
    # the ported module changes three answers: two right -> wrong, one wrong -> right
    ported = Predictions(labels, np.array([1, 0, 0, 1, 1, 0, 1, 1]), np.zeros(8), "s")
    agree, flips = compare(ported, origin)
    assert agree.sum() == 5 and flips.sum() == 2
    with pytest.raises(ValueError):
        compare(ported, dataclasses.replace(origin, examples_sha256="other"))


def _obs(cond, seed, pred, *, pre=5, sha="s", step=0):
    labels = np.array([0, 1] * 10)
    p = Predictions(labels, np.asarray(pred), np.zeros(20), sha)
    pre_steps = 0 if cond == "random" else pre
    uid = f"{cond}-{seed}-{pre_steps}"
    return Observation(
        "lora",
        "a",
        "a" if cond == "origin" else "b",
        "d",
        "d",
        seed,
        cond,
        pre_steps,
        step,
        uid,
        step,
        "done",
        p.accuracy(),
        0.5,
        p.accuracy(),
        0.7,
        0.6,
        20,
        "accuracy",
        p,
    )


def test_agreement_table_and_intervals_from_hand_made_observations(tmp_path):
    right = np.array([0, 1] * 10)
    wrong2 = right.copy()
    wrong2[:2] = 1 - wrong2[:2]
    obs = []
    for s in range(3):
        obs += [
            _obs("origin", s, right),
            _obs("ported", s, right),
            _obs("sampled", s, wrong2),
            _obs("random", s, 1 - right, sha="other" if s == 2 else "s"),
        ]
    data = StoreData(tmp_path, "accuracy", 1, "", "", [], obs, {}, [], {}, has_predictions=True)
    rows = {r["condition"]: r for r in agreement_table(data).rows}
    assert rows["ported"]["agreement_mean"] == 1.0 == rows["ported"]["agreement_ci_low"]
    assert rows["ported"]["negative_flips_mean"] == 0.0
    assert rows["sampled"]["agreement_mean"] == pytest.approx(0.9)
    assert rows["sampled"]["negative_flips_mean"] == pytest.approx(0.1)
    # random: all flipped; seed 2 was evaluated on other examples, so not compared
    assert rows["random"]["agreement_mean"] == 0.0 and rows["random"]["agreement_n"] == 2
    assert "1 different test examples" in rows["random"]["agreement_missing"]
    # summarize: the per-example interval when every run has predictions, binomial otherwise
    st = summarize([o for o in obs if o.condition == "sampled"])
    assert st.method == TWO_LEVEL_EXAMPLES and st.mean == pytest.approx(0.9)
    old = [dataclasses.replace(o, predictions=None) for o in obs if o.condition == "sampled"]
    assert summarize(old).method == TWO_LEVEL and summarize(old).mean == st.mean


def test_a_record_round_trips_for_two_and_more_classes():
    scores2 = np.array([[0.1, 0.9], [2.0, -1.0], [0.5, 0.5]], dtype=np.float32)
    p = Predictions.from_scores([1, 0, 1], scores2.argmax(1), scores2, "abc")
    assert p.scores.shape == (3,) and p.scores.dtype == np.float32
    assert p.scores.tolist() == (scores2[:, 1] - scores2[:, 0]).tolist()  # the AUC's margin
    scores3 = np.arange(12, dtype=np.float32).reshape(4, 3)
    q = Predictions.from_scores([0, 1, 2, 2], [2, 2, 2, 2], scores3, "def")
    for x in (p, q):
        back = Predictions.from_record(x.to_record())
        assert np.array_equal(back.labels, x.labels) and np.array_equal(back.scores, x.scores)
        assert (back.n_classes, back.examples_sha256) == (x.n_classes, x.examples_sha256)
    assert q.accuracy() == 0.5 and "score_2" in q.as_text("csv").splitlines()[0]
    bad = dict(q.to_record(), n=5)
    with pytest.raises(ValueError):
        Predictions.from_record(bad)


def test_a_random_result_meets_only_its_own_techniques_pre_porting_counts(tmp_path):
    """Techniques may train to their own pre-porting counts (issue 15): a random result is
    compared with its technique's origin modules only, not with counts another technique
    trained to (which have no origin predictions and would show as not measured)."""
    right = np.array([0, 1] * 10)
    obs = []
    for s in range(3):
        obs += [_obs("origin", s, right), _obs("random", s, 1 - right)]  # lora at 5 steps
        obs += [
            dataclasses.replace(o, technique="adapter", unit_id="adapter-" + o.unit_id)
            for o in (_obs("origin", s, right, pre=10), _obs("random", s, right))
        ]
    data = StoreData(tmp_path, "accuracy", 1, "", "", [], obs, {}, [], {}, has_predictions=True)
    rows = {
        (r["technique"], r["pre_steps"]): r
        for r in agreement_table(data).rows
        if r["condition"] == "random"
    }
    assert set(rows) == {("lora", 5), ("adapter", 10)}
    assert rows["lora", 5]["agreement_mean"] == 0.0 and rows["adapter", 10]["agreement_mean"] == 1.0
    assert not any(r["agreement_missing"] for r in rows.values())
