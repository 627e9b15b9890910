"""Cross-depth pairs in studies: layer maps in study files, host comparisons and host_pairs in
the store, hosts a study derives, and the crossdepth / drift presets."""

import hashlib
import json
import os
import sqlite3

import pytest
import torch
from typer.testing import CliRunner

from peftport.study import load_preset, make_plan
from peftport.study.driver import run_plan
from peftport.study.executors import InlineExecutor, LocalExecutor
from peftport.study.spec import StudyFileError, parse_study
from peftport.study.store import Store
from test_study_run import study_app, write_toy

runner = CliRunner()


def tiny_bert_of_depth(folder, layers: int, seed: int = 1):
    """A tiny BERT like tiny-bert (same widths, tokenizer) with another depth, as a local
    checkpoint folder: the cross-depth pair of the unit tests."""
    from transformers import BertConfig, BertModel

    from peftport.hosts import get_host, host_folder
    from peftport.hosts.tiny import write_tokenizer

    if (folder / "config.json").exists():
        return folder
    cfg = BertConfig.from_pretrained(host_folder(get_host("tiny-bert")))
    cfg.num_hidden_layers = layers
    torch.manual_seed(seed)
    BertModel(cfg).save_pretrained(folder, safe_serialization=True)
    write_tokenizer(folder, "bert")
    return folder


@pytest.fixture(scope="module")
def deep(tmp_path_factory):
    """A 4-layer tiny BERT (tiny-bert has 2)."""
    return tiny_bert_of_depth(tmp_path_factory.mktemp("hosts") / "tiny-bert-l4", 4)


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return write_toy(tmp_path_factory.mktemp("data") / "toy.csv")


def study(
    pairs: str,
    *,
    techniques="{lora: {config: {r: 2}}}",
    extra="",
    post="[2]",
    data="rotten_tomatoes",
    pre="[4]",
) -> str:
    return (
        f"name: cross\ntechniques: {techniques}\npairs:\n{pairs}\n"
        f"data: [[{data}, {data}]]\npre_steps: {pre}\npost_steps: {post}\nseeds: [0]\n"
        "train: {lr: 1.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 20}\n" + extra
    )


def run_inline(store_path, text, executor=None, **kw):
    plan = make_plan(parse_study(text, "cross.yaml"))
    store = Store(store_path)
    try:
        out = run_plan(
            store, plan, executor or InlineExecutor(), progress=False, echo=lambda s: None, **kw
        )
    finally:
        store.close()
    return plan, out


def db(path):
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    return con


def test_layer_map_accepted_per_direction(deep):
    spec = parse_study(
        study(
            f"  - {{origin: tiny-bert, receiver: {deep}, layer_map: stride, both_directions: true}}"
        ),
        "s.yaml",
    )
    d = str(deep.resolve())
    assert spec.pairs == (("tiny-bert", d), (d, "tiny-bert"))
    assert [(o, r, m.strategy) for o, r, m in spec.layer_maps] == [
        ("tiny-bert", d, "stride"),
        (d, "tiny-bert", "stride"),
    ]
    assert spec.canonical()["layer_maps"] == [
        ["tiny-bert", d, {"strategy": "stride"}],
        [d, "tiny-bert", {"strategy": "stride"}],
    ]
    plan = make_plan(spec)
    post = [u for u in plan.units if u.kind == "post"]
    assert post and all(u.config["layer_map"] == {"strategy": "stride"} for u in post)
    assert all("layer_map" not in u.config for u in plan.units if u.kind != "post")
    from peftport.study.plan import describe, pair_maps

    maps = {(m["origin"], m["receiver"]): m["layer_map"] for m in pair_maps(spec)}
    assert maps == {("tiny-bert", d): [0, 0, 1, 1], (d, "tiny-bert"): [1, 3]}
    assert f"tiny-bert -> {d}: stride [0, 0, 1, 1]" in describe(plan)


def test_explicit_maps_in_both_spellings(deep):
    d = str(deep.resolve())
    a = parse_study(
        study(f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: [0, 3]}}"), "s.yaml"
    )
    b = parse_study(
        study(f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: '0:0,1:3'}}"), "s.yaml"
    )
    c = parse_study(
        study(f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: '0,3'}}"), "s.yaml"
    )
    assert a.layer_map(d, "tiny-bert").layers == (0, 3)
    assert a.id == b.id == c.id
    post = [u for u in make_plan(a).units if u.kind == "post"]
    assert post[0].config["layer_map"] == {"strategy": "explicit", "layers": [0, 3]}


# (pairs text, line, words): every message names the line and the key
def bad_cases(deep):
    d = str(deep)
    wide = deep.parent / "wide-bert"
    if not wide.exists():
        wide.mkdir()
        cfg = json.loads((deep / "config.json").read_text())
        cfg["hidden_size"] = 32
        (wide / "config.json").write_text(json.dumps(cfg))
    return [
        (
            f"  - [tiny-bert, {d}]",
            4,
            ["pairs[0]", "depths differ (num_hidden_layers 2 vs 4)", "add `layer_map: stride`"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: first_k, both_directions: true}}",
            4,
            ["pairs[0].layer_map", "first_k", "the receiver is deeper", "reverse direction"],
        ),
        (
            f"  - {{origin: tiny-bert, receiver: {d}, layer_map: first_k}}",
            4,
            ["pairs[0].layer_map", "2 origin layers into 4 receiver layers", "use stride"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: [1, 3], both_directions: true}}",
            4,
            ["pairs[0].layer_map", "explicit layer map", "list the reverse pair with its own map"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: [1, 2, 3]}}",
            4,
            ["pairs[0].layer_map", "has 3 entries", "4 origin layers into 2 receiver layers"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: [1, 7]}}",
            4,
            ["pairs[0].layer_map", "origin layer(s) [7]"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: strided}}",
            4,
            ["pairs[0].layer_map", "unknown layer map 'strided'", "Did you mean 'stride'"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: identity}}",
            4,
            ["layer_map identity", "use stride or cka"],
        ),
        (
            f"  - {{origin: {wide}, receiver: tiny-bert, layer_map: stride}}",
            4,
            ["pairs[0]", "shapes differ (hidden_size 32 vs 16)"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: stride}}\n"
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: cka}}",
            5,
            ["pairs[1]", "listed twice", "one study per map into the same store"],
        ),
        (
            f"  - {{origin: {d}, receiver: tiny-bert, layer_map: stride, both_directions: true}}\n"
            f"  - {{origin: tiny-bert, receiver: {d}, layer_map: cka}}",
            5,
            ["pairs[1].layer_map", "given twice with different layer maps (stride and cka"],
        ),
    ]


def test_bad_layer_maps_name_the_line(deep):
    for pairs, line, words in bad_cases(deep):
        with pytest.raises(StudyFileError) as e:
            parse_study(study(pairs), "s.yaml")
        msg = str(e.value)
        assert f"s.yaml, line {line}" in msg, msg
        for w in words:
            assert w in msg, msg
        if "identity" not in pairs and "first_k" not in pairs:
            assert len(msg.splitlines()) == 1, msg  # one problem, not a cascade


def test_cka_needs_comparisons_and_prefix_needs_one_depth(deep):
    d = str(deep)
    with pytest.raises(
        StudyFileError,
        match=r"line 4, key 'pairs\[0\].layer_map'.*compare: "
        r"false",
    ):
        parse_study(
            study(
                f"  - {{origin: {d}, receiver: tiny-bert, layer_map: cka}}",
                extra="compare: false\n",
            ),
            "s.yaml",
        )
    with pytest.raises(
        StudyFileError,
        match=r"line 2, key 'techniques.prefix'.*prefix tuning "
        r"keeps the prefixes of all layers in one tensor",
    ):
        parse_study(
            study(
                f"  - {{origin: {d}, receiver: tiny-bert, layer_map: stride}}",
                techniques="{lora: {}, prefix: {}}",
            ),
            "s.yaml",
        )
    # an identity map on hosts of one depth is what no map does: the same study, the same ids
    plain = parse_study(study("  - [tiny-bert, tiny-bert]"), "s.yaml")
    ident = parse_study(
        study("  - {origin: tiny-bert, receiver: tiny-bert, layer_map: identity}"), "s.yaml"
    )
    assert plain.id == ident.id
    assert [u.id for u in make_plan(plain).units] == [u.id for u in make_plan(ident).units]


def test_compare_key_checked():
    base = study("  - [tiny-bert, tiny-bert]")
    for extra, words in [
        ("compare: {texts: 1}\n", ["line 10, key 'compare.texts'", ">= 2"]),
        ("compare: {corpus: rt_plot}\n", ["compare.corpus", "Did you mean 'rt_plots'"]),
        ("compare: {text: 32}\n", ["compare.text", "Did you mean 'texts'"]),
        ("compare: often\n", ["key 'compare'", "false, true or a mapping"]),
    ]:
        with pytest.raises(StudyFileError) as e:
            parse_study(base + extra, "s.yaml")
        for w in words:
            assert w in str(e.value), str(e.value)
    on = parse_study(base, "s.yaml")
    assert on.compare.texts == 256 and "compare" not in on.canonical()
    off = parse_study(base + "compare: false\n", "s.yaml")
    assert off.compare is None and off.canonical()["compare"] is False and off.id != on.id


# ids computed with the code before layer maps existed (git HEAD at the time): existing stores
# must find their units. The sampled units' ids changed once on purpose (their config names
# the module-seeded draw, so stores of the older draw recompute them): digests from that commit.
PAPER_ID, PAPER_UNITS = "9c3772f90279903836c3", "be31648c80441b90"
BASE = """\
techniques: [lora, adapter]
pairs: [[tiny-bert, tiny-bert]]
data: [[rotten_tomatoes, rotten_tomatoes], [rotten_tomatoes, amazon_snippets]]
pre_steps: [5, 10]
post_steps: [3, 6]
seeds: [0, 1]
"""
BASE_ID, BASE_UNITS = "216256c87c7af986cc49", "19c8a0b5ae975c0b"


def units_digest(plan) -> str:
    return hashlib.sha256(",".join(sorted(u.id for u in plan.units)).encode()).hexdigest()[:16]


def test_ids_without_maps_are_unchanged(deep):
    paper = load_preset("paper")
    assert (paper.id, units_digest(make_plan(paper))) == (PAPER_ID, PAPER_UNITS)
    base = parse_study(BASE, "s.yaml")
    assert (base.id, units_digest(make_plan(base))) == (BASE_ID, BASE_UNITS)
    # a map changes the study and its post units, never the pretraining or random units
    d = str(deep)
    stride = make_plan(
        parse_study(study(f"  - {{origin: {d}, receiver: tiny-bert, layer_map: stride}}"), "s.yaml")
    )
    cka = make_plan(
        parse_study(study(f"  - {{origin: {d}, receiver: tiny-bert, layer_map: cka}}"), "s.yaml")
    )
    assert stride.spec.id != cka.spec.id
    by_kind = lambda p, k: {u.id for u in p.units if u.kind == k}  # noqa: E731
    assert by_kind(stride, "pretrain") == by_kind(cka, "pretrain")
    assert by_kind(stride, "random") == by_kind(cka, "random")
    assert not by_kind(stride, "post") & by_kind(cka, "post")
    # a cka map's units also name the comparison settings the map comes from
    cka32 = make_plan(
        parse_study(
            study(
                f"  - {{origin: {d}, receiver: tiny-bert, layer_map: cka}}",
                extra="compare: {texts: 32}\n",
            ),
            "s.yaml",
        )
    )
    assert not by_kind(cka32, "post") & by_kind(cka, "post")


def test_cli_plan_shows_the_map(tmp_path, deep):
    f = tmp_path / "cross.yaml"
    f.write_text(
        study(
            f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: stride, both_directions: true}}"
        )
    )
    app = study_app()
    res = runner.invoke(app, ["study", "plan", str(f), "--no-units"])
    assert res.exit_code == 0, res.output
    d = str(deep.resolve())
    assert f"{d} -> tiny-bert: stride [1, 3]" in res.output
    assert f"tiny-bert -> {d}: stride [0, 0, 1, 1]" in res.output
    assert "host comparisons: 256 texts of rt_plots" in res.output
    res = runner.invoke(app, ["study", "plan", str(f), "--json"])
    maps = json.loads(res.output)["pairs"]
    assert {(m["origin"], m["strategy"], tuple(m["layer_map"])) for m in maps} == {
        (d, "stride", (1, 3)),
        ("tiny-bert", "stride", (0, 0, 1, 1)),
    }
    f.write_text(study(f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: fisrt_k}}"))
    res = runner.invoke(app, ["study", "plan", str(f)])
    assert res.exit_code != 0 and "Did you mean 'first_k'" in str(res.exception)


# --- running: the maps reach port(), comparisons are stored once ----------------------------


@pytest.fixture
def ports(monkeypatch):
    """Every port() call of the post units: its layer map and the tensors it returned."""
    import peftport.porting as porting

    real, calls = porting.port, []

    def spy(tensors, meta, receiver, condition, seed, layer_map=None, **kw):
        out = real(tensors, meta, receiver, condition, seed, layer_map, **kw)
        calls.append(
            {
                "layer_map": layer_map,
                "condition": condition,
                "tensors": tensors,
                "out": out,
                "receiver": receiver,
            }
        )
        return out

    monkeypatch.setattr(porting, "port", spy)
    return calls


def layer_of(name: str) -> tuple[int, str] | None:
    parts = name.split(".")
    if "layer" in parts and parts[parts.index("layer") + 1].isdigit():
        i = parts.index("layer") + 1
        return int(parts[i]), ".".join(parts[i + 1 :])
    return None


def assert_ported_through(call, expected_map):
    """The receiver's layer j holds exactly the origin's layer expected_map[j] (ported)."""
    by_layer = {}
    for name, t in call["tensors"].items():
        if (lr := layer_of(name)) is not None:
            by_layer[lr] = t
    n_receiver = len(expected_map)
    seen = set()
    for name, t in call["out"].items():
        lr = layer_of(name)
        if lr is None:  # outside the stacks (prompt, head): the same name, as trained
            assert torch.equal(t, call["tensors"][name]), name
            continue
        j, rest = lr  # the module has the same name on both hosts here ("peftport")
        assert j < n_receiver
        assert torch.equal(t, by_layer[(expected_map[j], rest)]), (name, expected_map)
        seen.add(j)
    assert seen == (set(range(n_receiver)) if by_layer else set())


@pytest.mark.parametrize(
    ("origin_deep", "strategy", "expected"),
    [
        (True, "stride", [1, 3]),
        (True, "first_k", [0, 1]),
        (True, "[3, 0]", [3, 0]),
        (False, "stride", [0, 0, 1, 1]),
        (True, "cka", None),  # from the stored comparison
    ],
)
def test_post_units_port_the_chosen_layers(
    tmp_path, deep, toy, ports, origin_deep, strategy, expected
):
    o, r = (deep, "tiny-bert") if origin_deep else ("tiny-bert", deep)
    text = study(
        f"  - {{origin: {o}, receiver: {r}, layer_map: {strategy}}}",
        data=toy,
        extra="compare: {texts: 24, max_length: 16}\nconditions: [ported, random]\n",
    )
    plan, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["done"] == len(plan.units) == 3 and out["failed"] == 0
    con = db(tmp_path / "s.sqlite")
    (hp,) = con.execute("SELECT * FROM host_pairs").fetchall()
    resolved = json.loads(hp["layer_map"])
    assert hp["strategy"] == ("explicit" if strategy.startswith("[") else strategy)
    if expected is None:
        comp = json.loads(
            con.execute(
                "SELECT comparison FROM comparisons WHERE key = ?", (hp["comparison_key"],)
            ).fetchone()[0]
        )
        from peftport.hostcompare import HostComparison

        expected = HostComparison.from_dict(comp).layer_map("cka")
    assert resolved == expected
    (call,) = ports
    assert call["layer_map"] == expected and call["condition"] == "ported"
    assert_ported_through(call, expected)
    post = next(u for u in plan.units if u.kind == "post")
    row = con.execute("SELECT result FROM units WHERE id = ?", (post.id,)).fetchone()
    assert json.loads(row["result"])["layer_map"] == expected


def test_identity_passes_no_map(tmp_path, toy, ports):
    """Hosts of one depth without a map port exactly as before: port(..., layer_map=None)."""
    text = study(
        "  - [tiny-bert, tiny-bert]", data=toy, extra="compare: false\nconditions: [ported]\n"
    )
    _, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["failed"] == 0 and [c["layer_map"] for c in ports] == [None]
    con = db(tmp_path / "s.sqlite")
    assert [
        tuple(r)
        for r in con.execute(
            "SELECT origin, receiver, strategy, layer_map, comparison_key FROM host_pairs"
        )
    ] == [("tiny-bert", "tiny-bert", "identity", "[0, 1]", None)]
    assert con.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 0


@pytest.mark.parametrize("technique", ["prompt", "ia3", "adapter"])
def test_other_techniques_port_across_depths(tmp_path, deep, toy, ports, technique):
    """Prompt tuning has no per-layer tensors (it ports whole); IA3 and the adapter have them in
    every layer."""
    text = study(
        f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: stride}}",
        data=toy,
        techniques=f"[{technique}]",
        extra="compare: false\nconditions: [ported]\n",
    )
    plan, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["failed"] == 0, (
        db(tmp_path / "s.sqlite")
        .execute("SELECT error FROM units WHERE status = 'failed'")
        .fetchall()[0][0]
    )
    (call,) = ports
    assert_ported_through(call, [1, 3])
    if technique == "prompt":
        assert not any(layer_of(k) for k in call["out"])  # nothing per layer to map
        assert set(call["out"]) == set(call["tensors"])


def test_comparisons_are_stored_once_and_reused(tmp_path, deep, toy, monkeypatch):
    import peftport.hostcompare as hc

    # a fresh comparison cache ($PEFTPORT_HOME/comparisons is shared with `hosts compare`)
    monkeypatch.setenv("PEFTPORT_HOME", str(tmp_path / "home"))

    text = study(
        f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: stride, both_directions: true}}",
        data=toy,
        post="[1]",
        extra="compare: {texts: 24, max_length: 16}\nconditions: [ported]\n",
    )
    real, made = hc.compare_hosts, []

    def counting(*a, **kw):
        made.append(a)
        # one direction is computed, the other derived from it (CKA transposed)
        assert (len(made) == 1) == (kw.get("reverse_of") is None), (made, kw)
        return real(*a, **kw)

    monkeypatch.setattr(hc, "compare_hosts", counting)
    plan, _ = run_inline(tmp_path / "s.sqlite", text)
    d = str(deep.resolve())
    assert sorted(made) == sorted([(d, "tiny-bert"), ("tiny-bert", d)])
    con = db(tmp_path / "s.sqlite")
    comps = {r["key"]: r for r in con.execute("SELECT * FROM comparisons")}
    assert len(comps) == 2
    pairs = {
        (r["origin"], r["receiver"]): r
        for r in con.execute("SELECT * FROM host_pairs WHERE study_id = ?", (plan.spec.id,))
    }
    assert set(pairs) == {(d, "tiny-bert"), ("tiny-bert", d)}
    for (o, r), row in pairs.items():
        c = comps[row["comparison_key"]]
        assert (c["origin"], c["receiver"]) == (o, r)
        body = json.loads(c["comparison"])
        assert (body["origin_layers"], body["receiver_layers"]) == ((4, 2) if o == d else (2, 4))
        assert body["texts"] == 24 and json.loads(c["versions"])["torch"] and c["seconds"] > 0
    assert json.loads(pairs[(d, "tiny-bert")]["layer_map"]) == [1, 3]

    def boom(*a, **kw):
        raise AssertionError("a stored comparison was computed again")

    monkeypatch.setattr(hc, "compare_hosts", boom)
    _, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["ran"] == 0
    # another study on the same hosts and settings reuses them too
    _, out = run_inline(tmp_path / "s.sqlite", text.replace("post_steps: [1]", "post_steps: [2]"))
    assert out["failed"] == 0
    assert db(tmp_path / "s.sqlite").execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 2
    # other settings: a new comparison
    monkeypatch.setattr(hc, "compare_hosts", counting)
    made.clear()
    run_inline(tmp_path / "s.sqlite", text.replace("texts: 24", "texts: 20"))
    assert len(made) == 2


def test_a_store_from_before_gets_the_new_tables(tmp_path):
    """Stores made before comparisons and host_pairs existed open, and get them (empty)."""
    path = tmp_path / "old.sqlite"
    Store(path).close()
    con = sqlite3.connect(path)
    con.executescript("DROP TABLE comparisons; DROP TABLE host_pairs;")
    con.close()
    st = Store(path)
    names = {r[0] for r in st.db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"comparisons", "host_pairs", "units", "cells"} <= names
    assert st.host_pairs("nope") == [] and st.comparison("nope") is None
    st.close()


def test_cka_map_needs_its_comparison(tmp_path, deep, toy, monkeypatch):
    import peftport.hostcompare as hc
    from peftport.errors import PeftportError

    def fails(*a, **kw):
        raise PeftportError("no corpus today")

    monkeypatch.setattr(hc, "compare_hosts", fails)
    text = study(
        f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: cka}}",
        data=toy,
        extra="conditions: [ported]\n",
    )
    with pytest.raises(
        StudyFileError,
        match=r"cross.yaml, line 4, key 'pairs\[0\]'.*layer_map "
        r"cka needs the host comparison.*no corpus today",
    ):
        run_inline(tmp_path / "s.sqlite", text)
    # a stride map does not need it: the study runs, the pair has no comparison
    _, out = run_inline(tmp_path / "t.sqlite", text.replace("cka", "stride"))
    assert out["failed"] == 0
    (row,) = db(tmp_path / "t.sqlite").execute("SELECT * FROM host_pairs").fetchall()
    assert row["comparison_key"] is None and row["strategy"] == "stride"


def test_local_worker_processes_get_the_map(tmp_path, deep, toy):
    """The resolved map travels in the payload (plain JSON) to a worker process."""
    text = study(
        f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: [3, 0]}}",
        data=toy,
        extra="compare: false\nconditions: [ported]\n",
    )
    plan, out = run_inline(tmp_path / "s.sqlite", text, executor=LocalExecutor(1))
    assert out["done"] == len(plan.units) and out["failed"] == 0
    post = next(u for u in plan.units if u.kind == "post")
    row = (
        db(tmp_path / "s.sqlite")
        .execute("SELECT result, worker FROM units WHERE id = ?", (post.id,))
        .fetchone()
    )
    assert json.loads(row["result"])["layer_map"] == [3, 0]
    assert not row["worker"].endswith(f":{os.getpid()}")


@pytest.mark.ray
def test_ray_tasks_get_the_map(tmp_path, deep, toy):
    ray = pytest.importorskip("ray")
    from peftport.study.executors import RayExecutor

    text = study(
        f"  - {{origin: {deep}, receiver: tiny-bert, layer_map: stride}}",
        data=toy,
        extra="compare: false\nconditions: [ported]\n",
    )
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        plan, out = run_inline(tmp_path / "s.sqlite", text, executor=RayExecutor(workers=1))
    finally:
        ray.shutdown()
    assert out["done"] == len(plan.units) and out["failed"] == 0
    post = next(u for u in plan.units if u.kind == "post")
    row = (
        db(tmp_path / "s.sqlite")
        .execute("SELECT result FROM units WHERE id = ?", (post.id,))
        .fetchone()
    )
    assert json.loads(row["result"])["layer_map"] == [1, 3]


# --- hosts a study derives ----------------------------------------------------------------


@pytest.fixture
def scratch_home(tmp_path, monkeypatch):
    """A PEFTPORT_HOME of its own for derived hosts, sharing the real one's archives and built
    hosts (read only) so that nothing is fetched or rebuilt."""
    from peftport.assets import peftport_home

    real = peftport_home()
    home = tmp_path / "home"
    (home / "hosts").mkdir(parents=True)
    for sub in ("archives", "assets"):
        if (real / sub).is_dir():
            (home / sub).symlink_to(real / sub)
    for h in (real / "hosts").iterdir() if (real / "hosts").is_dir() else ():
        if h.name != "derived" and (h / ".complete").exists():
            (home / "hosts" / h.name).symlink_to(h)
    monkeypatch.setenv("PEFTPORT_HOME", str(home))
    return home


DERIVED = """\
hosts:
  tiny-drift:
    derive: {from: tiny-bert, steps: 3, lr: 1.0e-3, max_length: 32, batch_size: 4}
"""


def test_a_study_derives_its_hosts(tmp_path, toy, scratch_home):
    from peftport.hosts import derived_recipe, get_host

    text = DERIVED + study(
        "  - [tiny-bert, tiny-drift]",
        data=toy,
        extra="compare: {texts: 16, max_length: 16}\nconditions: [ported]\n",
    )
    spec = parse_study(text, "s.yaml")  # planning builds nothing
    assert not (scratch_home / "hosts" / "derived").exists()
    assert spec.hosts == ("tiny-bert", "tiny-drift")
    assert "tiny-drift" in spec.canonical()["hosts"]
    plan, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["done"] == len(plan.units) and out["failed"] == 0
    installed = scratch_home / "hosts" / "derived" / "tiny-drift"
    meta = json.loads((installed / "peftport-host.json").read_text())
    # the recipe `peftport hosts derive --name tiny-drift --from tiny-bert --steps 3 ...` makes
    assert meta["recipe"] == dict(
        derived_recipe("tiny-drift", "tiny-bert", steps=3, lr=1e-3, max_length=32, batch_size=4)
    )
    assert meta["parent"] == "tiny-bert" and get_host("tiny-drift").family == "bert"
    stamp = (installed / "model.safetensors").stat().st_mtime_ns
    _, out = run_inline(tmp_path / "s.sqlite", text)  # cached: nothing built again
    assert out["ran"] == 0 and (installed / "model.safetensors").stat().st_mtime_ns == stamp
    # the same name with another recipe is refused, at the line that declares it
    with pytest.raises(
        StudyFileError,
        match=r"line 2, key 'hosts.tiny-drift'.*exists with "
        r"another recipe",
    ):
        parse_study(text.replace("steps: 3", "steps: 4"), "s.yaml")


@pytest.mark.parametrize(
    ("old", "new", "words"),
    [
        (
            "steps: 3",
            "stepz: 3",
            ["line 3, key 'hosts.tiny-drift.derive.stepz'", "Did you mean 'steps'"],
        ),
        ("from: tiny-bert, ", "", ["key 'hosts.tiny-drift.derive'", "needs 'from'"]),
        ("from: tiny-bert", "from: tiny-t5", ["derive.from", "BERT-family"]),
        ("from: tiny-bert", "from: tiny-bertt", ["derive.from", "unknown host 'tiny-bertt'"]),
        ("lr: 1.0e-3", "lr: 2", ["derive.lr", "lr must be in (0, 1)"]),
        ("steps: 3", "steps: many", ["derive.steps", "must be a whole number"]),
        ("tiny-drift:", "tiny-bert:", ["key 'hosts.tiny-bert'", "built-in host"]),
    ],
)
def test_bad_derived_hosts_name_the_line(old, new, words, scratch_home):
    text = (DERIVED + study("  - [tiny-bert, tiny-drift]")).replace(old, new, 1)
    with pytest.raises(StudyFileError) as e:
        parse_study(text, "s.yaml")
    for w in words:
        assert w in str(e.value), str(e.value)


# --- the presets ----------------------------------------------------------------------------


def test_crossdepth_and_drift_presets():
    cross = load_preset("crossdepth")
    assert set(cross.pairs) == {("minilm-l6", "minilm-l3"), ("minilm-l3", "minilm-l6")}
    assert {m.strategy for _, _, m in cross.layer_maps} == {"stride"}
    assert {t.name for t in cross.techniques} == {"lora", "adapter", "ia3"}
    t = make_plan(cross).totals()
    assert t["training_steps"]["shared"] <= 3200 and t["evaluations"] <= 320  # quick's budget
    drift = load_preset("drift")
    assert {d.name for d in drift.derived_hosts} >= {"drift-a", "drift-b", "drift-c"}
    assert {o for o, _ in drift.pairs} == {"minilm-l6"}
    assert {r for _, r in drift.pairs} >= {"minilm-l6-tuned", "drift-a", "drift-b", "drift-c"}
    # increasing drift: at least as many steps, at a learning rate at least as high
    steps = [(dict(d.settings)["steps"], dict(d.settings)["lr"]) for d in drift.derived_hosts]
    assert steps == sorted(steps)
    assert make_plan(drift).totals()["training_steps"]["shared"] <= 3200


# --- the real cross-depth pair ------------------------------------------------------------


@pytest.mark.slow
def test_quick_offline_study_with_minilm_l6_to_l3(tmp_path):
    """minilm-l6 -> minilm-l3 (stride) and back (cka) in a really small study, then the report."""
    from peftport.report import build_report

    text = """\
name: tiny-cross
techniques: [lora]
pairs:
  - {origin: minilm-l6, receiver: minilm-l3, layer_map: stride}
  - {origin: minilm-l3, receiver: minilm-l6, layer_map: cka}
data: [[rotten_tomatoes, rotten_tomatoes]]
max_examples: 200
pre_steps: [10]
post_steps: [5]
seeds: [0]
train: {lr: 3.0e-3, batch_size: 8, max_length: 48, max_eval_examples: 40}
compare: {texts: 32, max_length: 32}
"""
    plan, out = run_inline(tmp_path / "s.sqlite", text)
    assert out["done"] == len(plan.units) and out["failed"] == 0
    con = db(tmp_path / "s.sqlite")
    maps = {
        (r["origin"], r["receiver"]): (r["strategy"], json.loads(r["layer_map"]))
        for r in con.execute("SELECT * FROM host_pairs")
    }
    assert maps[("minilm-l6", "minilm-l3")] == ("stride", [1, 3, 5])
    strategy, cka_map = maps[("minilm-l3", "minilm-l6")]
    assert strategy == "cka" and len(cka_map) == 6 and set(cka_map) <= {0, 1, 2}
    assert con.execute("SELECT COUNT(*) FROM comparisons").fetchone()[0] == 2
    report = build_report(tmp_path / "s.sqlite", tmp_path / "report")
    assert report.html.is_file() and report.html.stat().st_size > 1000
