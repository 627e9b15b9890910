"""Planning: what is shared, the counts, and ids that let a store find what is done."""

import json
import os

from typer.testing import CliRunner

from peftport.study import load_preset, make_plan
from peftport.study.plan import describe
from peftport.study.spec import parse_study
from test_study_run import study_app

runner = CliRunner()

BASE = """\
techniques: [lora, adapter]
pairs: [[tiny-bert, tiny-bert]]
data: [[rotten_tomatoes, rotten_tomatoes], [rotten_tomatoes, amazon_snippets]]
pre_steps: [5, 10]
post_steps: [3, 6]
seeds: [0, 1]
"""


def plan_of(text: str):
    return make_plan(parse_study(text, "s.yaml"))


def test_paper_grid_counts_and_sharing():
    plan = make_plan(load_preset("paper"))
    t = plan.totals()
    assert t["runs"] == 1440
    assert t["units"] == {"total": 528, "pretrain": 96, "post": 384, "random": 48}
    # pretrain 96 x 5000 + post 384 x 3000 + random 48 x 3000
    assert t["training_steps"]["shared"] == 1_776_000
    # per (technique, pair, data, seed): 2 conditions x sum over pre p, post q of (p + q)
    # = 2 x (3 x 7500 + 2 x 5000) = 65,000, plus random 5,000; times 96
    assert t["training_steps"]["naive"] == 6_720_000
    assert t["training_steps"]["ratio"] >= 3.0
    assert len([c for c in plan.cells if c.condition != "origin" and c.post_steps > 0]) == 1440


def test_quick_preset_fits_its_budget():
    spec = load_preset("quick")
    t = make_plan(spec).totals()
    # measured at 1 thread (docs/study.md): about 0.28 CPU-seconds per training step and 0.006
    # per evaluated example; 2 workers: about 26 minutes on 2 idle cores
    assert t["training_steps"]["shared"] <= 11000
    assert t["evaluations"] <= 320
    assert t["training_steps"]["ratio"] >= 3.0
    # what the redesign is for (issue 15): 3 seeds, both directions, the origin's head in every
    # condition, techniques that learn slower train longer before porting, and post-porting
    # curves as long as the fast techniques' pretraining, so the controls can catch up
    assert len(spec.seeds) >= 3 and spec.head_policy == "origin"
    assert len(spec.pairs) == 2
    assert spec.pre_steps_of("prefix") == spec.pre_steps_of("compacter") == (200,)
    assert max(spec.post_steps) >= max(spec.pre_steps_of("adapter") + spec.pre_steps_of("lora"))


def test_standard_preset_validates_and_plans():
    """The paper's whole design at small scale, offline: 4 techniques x 4 directed pairs (over
    two real host pairs) x 2 data combinations x 3 seeds x 2 pre-porting step counts."""
    spec = load_preset("standard")
    assert {t.name for t in spec.techniques} == {"adapter", "lora", "prefix", "compacter"}
    assert set(spec.pairs) == {
        ("minilm-l6", "minilm-l6-tuned"),
        ("minilm-l6-tuned", "minilm-l6"),
        ("minilm-l6", "minilm-l6-int8"),
        ("minilm-l6-int8", "minilm-l6"),
    }
    assert len(spec.data) == 2 and len(spec.pre_steps) == 2 and len(spec.seeds) == 3
    assert spec.head_policy == "origin"
    plan = make_plan(spec)
    t = plan.totals()
    posts = len(spec.post_steps)
    assert t["runs"] == 4 * 4 * 2 * 3 * posts * (2 * 2 + 1)
    # random units: per (technique, origin, pre data, receiver, post data, seed) under the
    # origin head policy
    assert t["units"] == {"total": 36 + 384 + 96, "pretrain": 36, "post": 384, "random": 96}
    # full test splits: no cap on evaluation
    assert all(
        u.config["train"].get("max_eval_examples") is None
        for u in plan.units
        if u.kind != "pretrain"
    )
    res = runner.invoke(study_app(), ["study", "plan", "--preset", "standard", "--no-units"])
    assert res.exit_code == 0, res.output
    assert f"runs (paper sense): {t['runs']}" in res.output


def test_units_share_what_can_be_shared():
    plan = plan_of(BASE)
    kinds = [u.kind for u in plan.units]
    # pretrain: technique x origin x pre data set x seed (one pre data set here)
    assert kinds.count("pretrain") == 2 * 1 * 1 * 2
    # post: technique x pair x data combination x seed x pre-steps x {ported, sampled}
    assert kinds.count("post") == 2 * 1 * 2 * 2 * 2 * 2
    # random: technique x receiver x post data set x seed; no pre-steps, no origin
    assert kinds.count("random") == 2 * 1 * 2 * 2
    pre = [u for u in plan.units if u.kind == "pretrain"]
    assert all(u.steps == 10 and u.config["save_at"] == [5, 10] for u in pre)
    post = [u for u in plan.units if u.kind == "post"]
    assert all(u.config["train"]["eval_at"] == [0, 3, 6] and u.horizon == 6 for u in post)
    by_id = plan.by_id()
    for u in post:  # every post unit depends on the pretrain unit that writes its snapshot
        (dep,) = plan.deps[u.id]
        assert (u.pre_steps, u.needs[0]) in by_id[dep].produces
    assert sum(u.runs for u in plan.units) == plan.totals()["runs"] == 2 * 2 * 2 * 2 * (4 + 1)
    text = describe(plan)
    assert "random" in text and "from-scratch baseline" in text


def test_ids_are_stable_and_adding_a_value_adds_only_new_units():
    a = plan_of(BASE)
    assert [u.id for u in a.units] == [u.id for u in plan_of(BASE).units]
    b = plan_of(BASE.replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    assert {u.id for u in a.units} < {u.id for u in b.units}
    c = plan_of(BASE.replace("[lora, adapter]", "[lora, adapter, ia3]"))
    assert {u.id for u in a.units} < {u.id for u in c.units}
    d = plan_of(BASE + "conditions: [ported, random]\n")
    assert {u.id for u in d.units} < {u.id for u in a.units}


def test_random_units_do_not_depend_on_pre_porting():
    a = plan_of(BASE)
    b = plan_of(BASE.replace("pre_steps: [5, 10]", "pre_steps: [7]"))
    rand = lambda p: {u.id for u in p.units if u.kind == "random"}  # noqa: E731
    assert rand(a) == rand(b)


def test_adding_a_pre_step_count_within_a_fixed_horizon_keeps_post_units():
    """Post units name their snapshot by what determines it, not by the pretraining unit."""
    fixed = BASE + "pre: {horizon: 20}\n"
    a = plan_of(fixed)
    b = plan_of(fixed.replace("pre_steps: [5, 10]", "pre_steps: [5, 10, 15]"))
    post = lambda p: {u.id for u in p.units if u.kind == "post"}  # noqa: E731
    assert post(a) < post(b)
    # the pretraining itself runs again: a snapshot at 15 is needed
    pre = lambda p: {u.id for u in p.units if u.kind == "pretrain"}  # noqa: E731
    assert not pre(a) & pre(b)
    # without a fixed horizon the schedule changes, so everything after porting is new too
    c = plan_of(BASE.replace("pre_steps: [5, 10]", "pre_steps: [5, 10, 15]"))
    assert not post(a) & post(c)


def test_a_technique_may_have_its_own_pre_porting_step_counts():
    """A technique that learns slower trains longer before porting (issue 15); the others
    keep the study's counts and their unit ids."""
    text = BASE.replace("[lora, adapter]", "{lora: {}, adapter: {pre_steps: [20]}}")
    plan = plan_of(text)
    spec = plan.spec
    assert spec.pre_steps_of("lora") == (5, 10) and spec.pre_steps_of("adapter") == (20,)
    pre = {u.config["technique"]: u for u in plan.units if u.kind == "pretrain"}
    assert pre["adapter"].config["save_at"] == [20] and pre["adapter"].steps == 20
    assert pre["lora"].config["save_at"] == [5, 10]
    post = [u for u in plan.units if u.kind == "post"]
    assert {u.pre_steps for u in post if u.config["technique"] == "adapter"} == {20}
    assert {u.pre_steps for u in post if u.config["technique"] == "lora"} == {5, 10}
    # runs: lora 2 conditions x 2 counts + random, adapter 2 x 1 + random
    assert plan.totals()["runs"] == 1 * 2 * 2 * 2 * ((2 * 2 + 1) + (2 * 1 + 1))
    # lora's units are those of the study without adapter's own counts
    lora_ids = lambda p: {u.id for u in p.units if u.config["technique"] == "lora"}  # noqa: E731
    assert lora_ids(plan) == lora_ids(plan_of(BASE))
    assert "pre-porting steps: adapter 20; lora 5, 10" in describe(plan)
    # a bad count is named where it is
    from peftport.errors import PeftportError

    try:
        parse_study(text.replace("[20]", "[0]"), "s.yaml")
    except PeftportError as e:
        assert "techniques.adapter.pre_steps" in str(e) and ">= 1" in str(e)
    else:
        raise AssertionError("a pre-porting step count of 0 was accepted")


def test_cli_plan_text_and_json():
    app = study_app()
    res = runner.invoke(app, ["study", "plan", "--preset", "paper", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert out["totals"]["runs"] == 1440 and len(out["units"]) == 528
    assert out["units"][0]["kind"] == "pretrain"
    res = runner.invoke(app, ["study", "plan", "--preset", "quick", "--no-units"])
    assert res.exit_code == 0, res.output
    assert "runs (paper sense): 216" in res.output and "fewer" in res.output
    res = runner.invoke(app, ["study", "presets", "quick"])
    assert res.exit_code == 0 and "pairs:" in res.output


def test_the_cpu_rate_is_measured_once_per_cpu_and_kept(tmp_path, monkeypatch):
    """`study plan` reads the measured matmul rate from $PEFTPORT_HOME instead of timing
    products on every call; a rate measured on busy cores is measured again next time (the best
    kept), and a file it cannot use is measured again and rewritten."""
    from peftport.study import compute

    cores = os.cpu_count() or 1
    monkeypatch.setenv("PEFTPORT_HOME", str(tmp_path))
    kept = lambda: json.loads((tmp_path / "cpu_rate.json").read_text())  # noqa: E731

    def measured(rate: float, load: float) -> None:
        compute.cpu_matmul_rate.cache_clear()  # a new process
        monkeypatch.setattr(compute, "_measure_rate", lambda seconds: rate)
        monkeypatch.setattr(compute.os, "getloadavg", lambda: (load, load, load))

    measured(1.0e9, load=cores + 1.0)  # busy: every core taken by others
    assert compute.cpu_matmul_rate() == 1.0e9
    assert kept() == {compute._cpu_key(): {"rate": 1.0e9, "quiet": False}}
    measured(0.5e9, load=cores + 1.0)  # measured again; the best kept
    assert compute.cpu_matmul_rate() == 1.0e9
    measured(1.5e9, load=0.0)  # quiet: final
    assert compute.cpu_matmul_rate() == 1.5e9
    assert kept() == {compute._cpu_key(): {"rate": 1.5e9, "quiet": True}}

    def must_not_measure(seconds):
        raise AssertionError("measured again")

    compute.cpu_matmul_rate.cache_clear()
    monkeypatch.setattr(compute, "_measure_rate", must_not_measure)
    assert compute.cpu_matmul_rate() == 1.5e9  # a new process: read from the file
    (tmp_path / "cpu_rate.json").write_text("not json")
    measured(2.5e9, load=0.0)
    assert compute.cpu_matmul_rate() == 2.5e9
    assert kept() == {compute._cpu_key(): {"rate": 2.5e9, "quiet": True}}
    compute.cpu_matmul_rate.cache_clear()
