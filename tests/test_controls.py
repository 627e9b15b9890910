"""Controls that measure what they claim: sampled draws specific to the module they imitate,
and the head policy (follow / origin) for encoder classifiers, from `port` to a study's report."""

from __future__ import annotations

import json
import sqlite3

import pytest
import torch
import typer
from typer.testing import CliRunner

from peftport.commands import port as port_command
from peftport.errors import PeftportError
from peftport.module import load_module
from peftport.porting import module_identity, port
from peftport.study import make_plan
from peftport.study.spec import parse_study
from test_porting import receiver, saved, trained
from test_study_run import write_toy
from test_techniques import one_thread  # noqa: F401 - an autouse fixture


def other_module(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Another module with the same names and shapes: every tensor moved and rescaled, so its
    standardised values (and, if a draw ignored the module, its standardised draw) are alike."""
    return {k: v * 1.5 + 0.25 for k, v in tensors.items()}


def standardised_draws(tensors, drawn) -> torch.Tensor:
    """Each drawn tensor as z-scores of the module tensor it imitates, all concatenated."""
    parts = []
    for k, t in tensors.items():
        x = t.to(torch.float64)
        if x.numel() < 2 or x.std(correction=0) == 0:
            continue  # a constant stays constant: no draw
        parts.append(((drawn[k].to(torch.float64) - x.mean()) / x.std(correction=0)).flatten())
    return torch.cat(parts)


def test_sampled_draws_are_independent_across_modules_and_reproducible():
    _, tensors, meta = trained("bert", "lora", config={"r": 32})  # a few thousand values
    _, spec = receiver("bert", "lora", config={"r": 32}, seed=3)
    a = port(tensors, meta, spec, "sampled", seed=3)
    b = port(other_module(tensors), meta, spec, "sampled", seed=3)
    za = standardised_draws(tensors, a)
    zb = standardised_draws(other_module(tensors), b)
    assert za.numel() >= 2000
    r = torch.corrcoef(torch.stack([za, zb]))[0, 1].item()
    assert abs(r) < 0.1, f"draws for two modules at one seed correlate: r = {r:.3f}"
    again = port({k: v.clone() for k, v in tensors.items()}, meta, spec, "sampled", seed=3)
    assert all(torch.equal(a[k], again[k]) for k in a), "same module, same seed: same draw"
    other_seed = port(tensors, meta, spec, "sampled", seed=4)
    assert not torch.equal(a[next(iter(a))], other_seed[next(iter(a))])


def test_module_identity_is_the_content_in_memory_and_on_disk(tmp_path):
    src, tensors = saved(tmp_path)
    loaded, _ = load_module(src)
    assert module_identity(loaded) == module_identity(tensors)
    changed = dict(tensors)
    k = next(iter(changed))
    changed[k] = changed[k].clone()
    changed[k].view(-1)[0] += 1e-3
    assert module_identity(changed) != module_identity(tensors)


def _head_and_body(spec, out):
    head = {k: v for k, v in out.items() if k in spec.head_keys}
    return head, {k: v for k, v in out.items() if k not in spec.head_keys}


def test_head_origin_keeps_the_trained_head_in_every_condition():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora", seed=3)
    assert spec.head_keys, "tiny-bert is an encoder classifier: its head is part of the module"
    ported = port(tensors, meta, spec, "ported", seed=3)
    trained_head, _ = _head_and_body(spec, ported)

    follow = port(tensors, meta, spec, "sampled", seed=3)
    origin = port(tensors, meta, spec, "sampled", seed=3, head="origin")
    f_head, f_body = _head_and_body(spec, follow)
    o_head, o_body = _head_and_body(spec, origin)
    assert all(torch.equal(o_head[k], trained_head[k]) for k in trained_head)
    assert not any(torch.equal(f_head[k], trained_head[k]) for k in trained_head)
    assert all(torch.equal(o_body[k], f_body[k]) for k in f_body), "the body is drawn the same"

    r_follow = port(tensors, meta, spec, "random", seed=3)
    r_origin = port(tensors, meta, spec, "random", seed=3, head="origin")
    for k, v in spec.fresh.items():
        want = trained_head[k] if k in spec.head_keys else v
        assert torch.equal(r_origin[k], want), k
        assert torch.equal(r_follow[k], v), k


def test_head_origin_random_needs_only_the_head_to_fit():
    from test_porting import small_bert

    _, tensors, meta = trained("bert", "adapter")
    _, spec = receiver("bert", "adapter", model=small_bert(layers=1))
    with pytest.raises(PeftportError):  # the body's layers do not match without a layer map
        port(tensors, meta, spec, "random", seed=5)
    out = port(tensors, meta, spec, "random", seed=5, head="origin")
    assert out.keys() == spec.fresh.keys()


def test_head_policy_mistakes_are_clear_errors():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora", seed=3)
    with pytest.raises(PeftportError, match="unknown head policy 'trained'"):
        port(tensors, meta, spec, "sampled", seed=3, head="trained")
    with pytest.raises(PeftportError, match="choose one"):
        port(tensors, meta, spec, "sampled", seed=3, head="origin", keep_receiver_head=True)


@pytest.mark.parametrize("condition", ["sampled", "random"])
def test_head_policy_is_moot_without_a_head(condition):
    _, tensors, meta = trained("t5", "lora")
    _, spec = receiver("t5", "lora", seed=3)
    assert not spec.head_keys
    a = port(tensors, meta, spec, condition, seed=3)
    b = port(tensors, meta, spec, condition, seed=3, head="origin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_port_command_records_the_head_policy(tmp_path):
    src, tensors = saved(tmp_path)
    app = typer.Typer()
    port_command.register(app)
    app.callback()(lambda: None)
    out = tmp_path / "sampled"
    res = CliRunner().invoke(
        app,
        [
            "port",
            str(src),
            "--to",
            "tiny-bert",
            "--condition",
            "sampled",
            "--seed",
            "2",
            "--head",
            "origin",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "head origin" in res.output
    got, meta = load_module(out)
    assert meta["port"]["head"] == "origin" and meta["port"]["head_applies"] is True
    heads = [k for k in got if k.startswith("classifier.")]
    assert heads and all(torch.equal(got[k], tensors[k]) for k in heads)
    res = CliRunner().invoke(
        app, ["port", str(src), "--to", "tiny-bert", "--head", "body", "--out", str(tmp_path / "x")]
    )
    assert res.exit_code != 0 and "unknown head policy 'body'" in str(res.exception)


BASE = """\
techniques: [lora, adapter]
pairs: [[tiny-bert, tiny-bert]]
data: [[rotten_tomatoes, rotten_tomatoes], [rotten_tomatoes, amazon_snippets]]
pre_steps: [5, 10]
post_steps: [3, 6]
seeds: [0, 1]
"""


def test_study_head_policy_default_keeps_ids_and_origin_changes_only_controls():
    plain = make_plan(parse_study(BASE, "s.yaml"))
    follow = make_plan(parse_study(BASE + "head_policy: follow\n", "s.yaml"))
    origin = make_plan(parse_study(BASE + "head_policy: origin\n", "s.yaml"))
    assert plain.spec.id == follow.spec.id != origin.spec.id
    assert [u.id for u in plain.units] == [u.id for u in follow.units]
    assert origin.spec.canonical()["head_policy"] == "origin"
    ids = lambda p, kind, cond=None: {  # noqa: E731
        u.id for u in p.units if u.kind == kind and (cond is None or u.condition == cond)
    }
    assert ids(origin, "pretrain") == ids(plain, "pretrain")
    assert ids(origin, "post", "ported") == ids(plain, "post", "ported")
    assert not ids(origin, "post", "sampled") & ids(plain, "post", "sampled")
    assert all(u.config["head"] == "origin" for u in origin.units if u.condition == "sampled")
    producers = {key: u for u in origin.units for _, key in u.produces}
    for u in (u for u in origin.units if u.kind == "random"):
        (key,) = u.needs  # the origin's head: the snapshot at the largest pre-porting step
        assert producers[key].id in origin.deps[u.id] and u.config["pre_steps"] == 10
        assert dict(producers[key].produces)[10] == key
    assert len(ids(origin, "random")) == len(ids(plain, "random"))  # one pre data set here
    assert sum(u.runs for u in origin.units) == sum(u.runs for u in plain.units)
    assert "head policy (encoder classifiers): origin" in __import__(
        "peftport.study.plan", fromlist=["describe"]
    ).describe(origin)
    with pytest.raises(PeftportError, match="head_policy must be one of follow, origin"):
        parse_study(BASE + "head_policy: trained\n", "s.yaml")


def test_study_head_policy_is_moot_on_a_host_without_a_head():
    text = BASE.replace("tiny-bert, tiny-bert", "tiny-t5, tiny-t5")
    plain = make_plan(parse_study(text, "s.yaml"))
    origin = make_plan(parse_study(text + "head_policy: origin\n", "s.yaml"))
    assert [u.id for u in plain.units] == [u.id for u in origin.units]


def test_a_study_with_head_origin_runs_and_reports_its_policy(tmp_path):
    from peftport.report import build_report
    from peftport.study.driver import run_plan
    from peftport.study.executors import InlineExecutor
    from peftport.study.store import Store

    toy = write_toy(tmp_path / "toy.csv")
    text = (
        f"name: heads\ntechniques: {{lora: {{config: {{r: 2}}}}}}\n"
        f"pairs: [[tiny-bert, tiny-bert]]\ndata: [[{toy}, {toy}]]\npre_steps: [4]\n"
        "post_steps: [2]\nseeds: [0]\nhead_policy: origin\ncompare: false\n"
        "train: {lr: 5.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}\n"
    )
    plan = make_plan(parse_study(text, "heads.yaml"))
    store = Store(tmp_path / "s.sqlite")
    try:
        out = run_plan(store, plan, InlineExecutor(), progress=False, echo=lambda s: None)
    finally:
        store.close()
    assert out["done"] == len(plan.units) == 4 and out["failed"] == 0
    con = sqlite3.connect(tmp_path / "s.sqlite")
    con.row_factory = sqlite3.Row
    rows = {
        r["condition"]: r
        for r in con.execute("SELECT * FROM results WHERE post_steps = 0 OR condition = 'origin'")
    }
    assert rows["random"]["accuracy"] is not None and rows["sampled"]["accuracy"] is not None
    (random_unit,) = [u for u in plan.units if u.kind == "random"]
    (pretrain,) = [u for u in plan.units if u.kind == "pretrain"]
    dep = con.execute(
        "SELECT depends_on FROM edges WHERE unit_id = ?", (random_unit.id,)
    ).fetchone()
    assert dep["depends_on"] == pretrain.id  # it waited for the module whose head it keeps
    assert "head of tiny-bert's module" in random_unit.label
    stored = json.loads(
        con.execute("SELECT config FROM units WHERE id = ?", (random_unit.id,)).fetchone()["config"]
    )
    assert stored["head"] == "origin"
    paths = build_report(tmp_path / "s.sqlite", tmp_path / "report")
    page = paths.markdown.read_text()
    assert "head policy (encoder classifiers)" in page and "heads: origin (the origin's" in page
