"""The `methods:` study axis: parsing, planning (one ported unit per method, ids of copy-only
studies unchanged), the store's `method` column (and an older store migrated), export, and a
tiny-host study end to end (scale 1 equals copy exactly)."""

import csv
import json
import sqlite3

import pytest

from peftport.study import make_plan
from peftport.study.source import StudyFileError
from peftport.study.spec import parse_study
from peftport.study.store import Store
from test_study_run import run_inline, study_text, write_toy

BASE = (
    "name: m\ntechniques: [lora, adapter]\npairs: [[tiny-bert, tiny-bert]]\n"
    "data: [[rotten_tomatoes, rotten_tomatoes]]\npre_steps: [4, 8]\npost_steps: [3]\n"
    "seeds: [0, 1]\n"
)


def plan_of(text):
    return make_plan(parse_study(text, "m.yaml"))


def test_default_copy_leaves_ids_unchanged():
    without = plan_of(BASE)
    with_copy = plan_of(BASE + "methods: [copy]\n")
    assert [u.id for u in without.units] == [u.id for u in with_copy.units]
    assert without.spec.id == with_copy.spec.id
    assert {c.method for c in without.cells} == {"copy"}
    assert all("method" not in u.config for u in without.units)


def test_axis_expands_ported_units_per_method_only():
    base = plan_of(BASE)
    plan = plan_of(BASE + "methods: [copy, 'scaled:0.5', align]\n")
    kinds = lambda p, k: [u for u in p.units if u.kind == k]  # noqa: E731
    # pretrain and random are method-free; ported: one unit per method, sampled once
    assert len(kinds(plan, "pretrain")) == len(kinds(base, "pretrain")) == 4
    assert len(kinds(plan, "random")) == len(kinds(base, "random")) == 4
    ported = [u for u in kinds(plan, "post") if u.condition == "ported"]
    sampled = [u for u in kinds(plan, "post") if u.condition == "sampled"]
    # 2 techniques x 2 seeds x 2 pre-step counts = 8 ported units per method
    assert len(ported) == 8 * 3 and len(sampled) == 8
    assert {u.method for u in ported} == {"copy", "scaled:0.5", "align"}
    # copy's units are the very units of the study without methods
    base_ids = {u.id for u in base.units}
    assert {u.id for u in ported if u.method == "copy"} <= base_ids
    assert not {u.id for u in ported if u.method != "copy"} & base_ids
    assert all(u.config["method"] == u.method for u in ported if u.method != "copy")
    assert plan.totals()["runs"] == len(
        [c for c in plan.cells if c.post_steps == 3 and c.condition != "origin"]
    )
    assert (
        "scaled:0.5" in plan.totals()["runs_formula"] or "methods" in plan.totals()["runs_formula"]
    )


def test_a_method_a_technique_cannot_take_is_skipped_with_a_note():
    plan = plan_of(BASE + "methods: [copy, subspace]\n")
    ported = [u for u in plan.units if u.condition == "ported"]
    assert {(u.technique, u.method) for u in ported} == {
        ("lora", "copy"),
        ("lora", "subspace"),
        ("adapter", "copy"),
    }
    assert any(
        "subspace is not planned for adapter" in n and "not weight updates" in n
        for n in plan.spec.notes
    )
    plan.totals()  # the run count formula holds with a skip


@pytest.mark.parametrize(
    "entry, words",
    [
        ("'scaled:x'", ["methods[1]", "line 10", "needs a finite factor", "choose from copy"]),
        ("warp", ["methods[1]", "line 10", "warp", "choose from copy"]),
        ("'subspace:0'", ["methods[1]", "rank >= 1"]),
        ("'align:pca'", ["methods[1]", "procrustes"]),
        ("copy", ["methods[1]", "listed twice"]),
    ],
)
def test_a_bad_method_names_its_entry_line_and_the_choices(entry, words):
    with pytest.raises(StudyFileError) as e:
        parse_study(BASE + f"methods:\n  - copy\n  - {entry}\n", "m.yaml")
    for w in words:
        assert w in str(e.value), (w, str(e.value))


def test_a_method_no_technique_can_take_says_why():
    text = BASE.replace("[lora, adapter]", "[ia3, compacter]") + "methods: [copy, align]\n"
    with pytest.raises(StudyFileError) as e:
        parse_study(text, "m.yaml")
    msg = str(e.value)
    assert "methods[1]" in msg and "cannot port any technique" in msg
    assert "rescale coordinates" in msg and "Kronecker" in msg  # methods.align_problem's reasons
    with pytest.raises(StudyFileError, match="leave out ported"):
        parse_study(BASE + "conditions: [sampled, random]\nmethods: [copy, 'scaled:2']\n", "m.yaml")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny-host study with methods copy, scaled:1.0 and align, 3 seeds."""
    d = tmp_path_factory.mktemp("methods")
    toy = write_toy(d / "toy.csv")
    text = (
        study_text(
            toy, techniques="{lora: {config: {r: 2}}}", pre="[4]", post="[3]", seeds="[0, 1, 2]"
        )
        + "methods: [copy, 'scaled:1.0', align]\n"
    )
    plan, out = run_inline(d / "s.sqlite", text)
    assert out["failed"] == 0 and out["done"] == len(plan.units)
    return d / "s.sqlite"


def test_tiny_study_scale_one_equals_copy_end_to_end(tiny, tmp_path):
    con = sqlite3.connect(tiny)
    con.row_factory = sqlite3.Row
    rows = [dict(r) for r in con.execute("SELECT * FROM results WHERE condition = 'ported'")]
    by = {}
    for r in rows:
        by.setdefault(r["method"], {})[(r["seed"], r["post_steps"])] = (
            r["accuracy"],
            r["auc"],
            r["macro_f1"],
        )
    assert set(by) == {"copy", "scaled:1", "align"}
    assert by["scaled:1"] == by["copy"]  # exact, zero-shot and after training
    # the method is in the unit's provenance (result JSON), with align's fit
    res = {
        json.loads(r["config"]).get("method", "copy"): json.loads(r["result"])
        for r in con.execute(
            "SELECT config, result FROM units WHERE kind = 'post' AND "
            "condition = 'ported' AND seed = 0"
        )
    }
    assert "method" not in res["copy"]
    assert res["scaled:1"]["method"] == {"method": "scaled", "factor": 1.0}
    assert res["align"]["method"]["method"] == "align"
    assert res["align"]["method"]["fit"] == "procrustes"
    # a port between one host and itself: align's fitted maps are the identity, so align is
    # copy too (to float rounding)
    for seed in (0, 1, 2):
        assert by["align"][(seed, 0)][0] == pytest.approx(by["copy"][(seed, 0)][0], abs=1e-6)
    con.close()

    from peftport.study.export import export_results

    export_results(tiny, None, csv_path=tmp_path / "r.csv")
    with open(tmp_path / "r.csv") as f:
        got = list(csv.DictReader(f))
    assert {r["method"] for r in got if r["condition"] == "ported"} == {"copy", "scaled:1", "align"}
    assert {r["method"] for r in got if r["condition"] != "ported"} == {"copy"}


def test_an_older_store_without_the_method_column_is_migrated(tmp_path):
    from peftport.study.schema import SCHEMA, cells_have_method

    old = (
        SCHEMA.replace("    method TEXT NOT NULL DEFAULT 'copy',\n", "")
        .replace("pre_steps, post_steps, method));", "pre_steps, post_steps));")
        .replace("c.step, c.method, u.kind", "c.step, u.kind")
        .replace("c.post_steps, c.method;", "c.post_steps;")
    )
    assert old != SCHEMA
    path = tmp_path / "old.sqlite"
    con = sqlite3.connect(path)
    con.executescript(old)
    con.execute("INSERT INTO meta VALUES ('schema_version', '1')")
    con.execute(
        "INSERT INTO cells VALUES ('s', 'lora', 'a', 'b', 'd', 'd', 0, 'ported', 4, 0, 'u1', 0)"
    )
    con.commit()
    assert not cells_have_method(con)
    con.close()
    ro = Store(path, readonly=True)  # a read-only reader takes it as it is
    assert ro.results() == []  # no unit rows: the view joins none
    ro.close()
    st = Store(path)
    try:
        assert cells_have_method(st.db)
        rows = [dict(r) for r in st.db.execute("SELECT * FROM cells")]
        assert rows == [
            {
                "study_id": "s",
                "technique": "lora",
                "origin": "a",
                "receiver": "b",
                "pre_data": "d",
                "post_data": "d",
                "seed": 0,
                "condition": "ported",
                "pre_steps": 4,
                "post_steps": 0,
                "unit_id": "u1",
                "step": 0,
                "method": "copy",
            }
        ]
        assert "method" in [r[1] for r in st.db.execute("PRAGMA table_info(results)")]
    finally:
        st.close()


def test_report_section_pairs_methods_by_unit(tiny, tmp_path):
    from dataclasses import replace

    from peftport import stats
    from peftport.report import build_report
    from peftport.report.aggregate import aggregate
    from peftport.report.load import load_store

    data = load_store(tiny)
    # the report's other tables read copy as `ported`: the store's copy cells exactly
    assert {o.method for o in data.observations} == {"copy"}
    assert {o.method for o in data.method_observations} == {"copy", "scaled:1", "align"}
    agg = aggregate(data)
    diff = {(r["comparison"], r["post_steps"]): r for r in agg.tables["methods_differences"].rows}
    assert set(diff) == {
        (f"{m} - {c}", s)
        for s in (0, 3)
        for m, c in [
            ("scaled:1", "copy"),
            ("align", "copy"),
            *[(m, c) for m in ("copy", "scaled:1", "align") for c in ("sampled", "random")],
        ]
    }
    one = diff[("scaled:1 - copy", 3)]
    assert one["n_pairs"] == one["n_units"] == 3 and one["mean_diff"] == 0.0
    # align - sampled at step 3, computed directly: one pair per seed (its own snapshot: one
    # independent unit each), the paired t-test over them, Holm over the table's rows
    val = {(o.method, o.seed): o.value for o in data.method_observations if o.post_steps == 3}
    smp = {
        o.seed: o.value for o in data.observations if o.condition == "sampled" and o.post_steps == 3
    }
    a, b = [val[("align", s)] for s in (0, 1, 2)], [smp[s] for s in (0, 1, 2)]
    row = diff[("align - sampled", 3)]
    assert row["n_units"] == 3
    assert row["mean_diff"] == pytest.approx(sum(a) / 3 - sum(b) / 3, abs=1e-12)
    want = stats.paired_test(a, b, 0.95)
    if want.get("p_t") is not None and want["p_t"] == want["p_t"]:
        assert row["p_t"] == pytest.approx(want["p_t"])
        assert row["p_holm"] >= row["p_t"]
    acc = agg.tables["methods_accuracy"].rows
    assert {(r["condition"], r["method"]) for r in acc} == {
        ("ported", "copy"),
        ("ported", "scaled:1"),
        ("ported", "align"),
        ("sampled", ""),
        ("random", ""),
    }
    # the section is on the page; a single-method study has neither the tables nor the section
    out = build_report(tiny, tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Porting methods against copy and the controls" in md
    assert (tmp_path / "r" / "tables" / "methods_differences.csv").exists()
    single = replace(
        data,
        method_observations=[o for o in data.method_observations if o.method == "copy"],
        studies=[
            {**s, "spec": {k: v for k, v in s["spec"].items() if k != "methods"}}
            for s in data.studies
        ],
    )
    agg1 = aggregate(single)
    assert "methods_accuracy" not in agg1.tables and "methods_differences" not in agg1.tables
    from peftport.report.portmethods import methods_sections

    assert methods_sections(agg1) == []
    assert out is not None


def test_methods_preset_plans_every_method_the_techniques_take():
    from peftport.study import load_preset

    plan = make_plan(load_preset("methods"))
    ported = {(u.technique, u.method) for u in plan.units if u.condition == "ported"}
    lora = ("copy", "scaled:0.5", "subspace:16", "subspace:64", "subspace:192", "align")
    assert ported == {("lora", m) for m in lora} | {
        ("adapter", m) for m in ("copy", "scaled:0.5", "align")
    }
    t = plan.totals()
    # 3 seeds: 6 pretrain, (6 + 3) ported + 2 sampled per seed, 2 random per seed
    assert t["units"] == {"total": 6 + 33 + 6, "pretrain": 6, "post": 33, "random": 6}
    assert plan.spec.head_policy == "origin"
