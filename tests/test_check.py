"""`peftport check`: from configs alone, what a module needs against what a host has."""

from __future__ import annotations

import json

import pytest
import torch
import typer
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from peftport.commands import check as check_command
from peftport.hosts.tiny import _vocab, write_tokenizer
from peftport.module import module_meta, read_meta, save_module
from peftport.precheck import check_port, host_facts, module_is_per_layer
from peftport.techniques import attach, module_state
from test_techniques import load, one_thread, perturb, small_config  # noqa: F401


def bert_folder(out, hidden: int = 16, layers: int = 2):
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(_vocab()),
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=2,
            intermediate_size=2 * hidden,
            max_position_embeddings=128,
        )
    ).save_pretrained(out)
    write_tokenizer(out, "bert")
    return out


def saved(tmp_path, technique: str, family: str = "bert"):
    host = load(family)
    att = attach(host.model, family, technique, small_config(technique), seed=0)
    perturb(host.model, seed=1)
    meta = module_meta(att, host, task="sst2", label_words=["negative", "positive"], steps=1)
    return save_module(tmp_path / f"{technique}-{family}", module_state(host.model), meta)


def run(module, host: str):
    meta = read_meta(module)
    facts = host_facts(host, meta["label_words"])
    origin = host_facts(meta["origin_host"], meta["label_words"])
    return check_port(meta, facts, origin, per_layer=module_is_per_layer(module, meta))


def statuses(result) -> dict[str, str]:
    return {f.aspect: f.status for f in result.findings}


def test_same_host_ports_as_it_is(tmp_path):
    r = run(saved(tmp_path, "lora"), "tiny-bert")
    assert r.portable and r.needs == []
    assert set(statuses(r).values()) == {"ok"}
    assert "as it is" in r.verdict()


@pytest.mark.parametrize(
    "technique,hidden,layers,want,needs",
    [
        ("lora", 32, 2, {"width": "fixable"}, ["--method align"]),
        ("lora", 16, 3, {"depth": "fixable"}, ["--layer-map stride (or first_k, cka, explicit)"]),
        ("adapter", 32, 3, {"width": "fixable", "depth": "fixable"}, None),
        ("prompt", 16, 3, {"depth": "ok"}, []),
        ("prefix", 16, 3, {"depth": "blocking"}, None),
        ("compacter", 32, 2, {"width": "blocking"}, None),
        ("ia3", 32, 2, {"width": "blocking"}, None),
    ],
)
def test_each_mismatch_says_what_fixes_it(tmp_path, technique, hidden, layers, want, needs):
    host = bert_folder(tmp_path / "host", hidden, layers)
    r = run(saved(tmp_path, technique), str(host))
    got = statuses(r)
    for aspect, status in want.items():
        assert got[aspect] == status, (aspect, r.findings)
    if needs is not None:
        assert r.needs == needs
    assert r.portable == ("blocking" not in want.values())


def test_another_kind_or_family_cannot_port(tmp_path):
    r = run(saved(tmp_path, "lora"), "tiny-gpt2")
    got = statuses(r)
    assert got["kind"] == "blocking" and got["family"] == "blocking" and not r.portable
    assert "one kind" in r.verdict()


def test_unsupported_technique_on_the_host_kind(tmp_path):
    module = saved(tmp_path, "lora")
    meta = {**read_meta(module), "technique": "prompt", "config": {}}
    r = check_port(meta, host_facts("tiny-gpt2"), None)
    assert statuses(r)["technique"] == "blocking"


def test_check_command_prints_and_exits(tmp_path):
    app = typer.Typer()
    check_command.register(app)
    app.command("noop")(lambda: None)
    module = saved(tmp_path, "lora")
    res = CliRunner().invoke(app, ["check", str(module), "--to", "tiny-bert", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["portable"] and data["needs"] == []
    wide = bert_folder(tmp_path / "wide", 32)
    res = CliRunner().invoke(app, ["check", str(module), "--to", str(wide)])
    assert res.exit_code == 0 and "--method align" in res.output
    res = CliRunner().invoke(app, ["check", str(module), "--to", "tiny-gpt2"])
    assert res.exit_code == 1 and "cannot port" in res.output


# --- predicted retention ----------------------------------------------------------------------


def points(pairs):
    from peftport.precheck import RetentionPoint

    return [RetentionPoint("s", "a", f"r{i}", d, r, 2) for i, (d, r) in enumerate(pairs)]


def test_prediction_follows_the_line_with_a_prediction_interval():
    from peftport.precheck import predict_retention

    exact = predict_retention(points([(0.1, 0.9), (0.2, 0.7), (0.3, 0.5)]), 0.25)
    assert exact["predicted"] == pytest.approx(0.6)
    assert exact["low"] == pytest.approx(0.6) and exact["high"] == pytest.approx(0.6)
    noisy = predict_retention(points([(0.1, 0.95), (0.2, 0.65), (0.3, 0.52), (0.4, 0.2)]), 0.5)
    assert noisy["low"] < noisy["predicted"] < noisy["high"] and noisy["extrapolated"]
    # the interval for a new pair is wider than the line's own uncertainty near the centre
    inside = predict_retention(points([(0.1, 0.95), (0.2, 0.65), (0.3, 0.52), (0.4, 0.2)]), 0.25)
    assert inside["high"] - inside["low"] < noisy["high"] - noisy["low"]


@pytest.mark.parametrize("pairs", [[], [(0.1, 0.9), (0.2, 0.8)], [(0.1, 0.9)] * 3])
def test_too_few_pairs_say_there_is_not_enough_data(pairs):
    from peftport.precheck import predict_retention

    got = predict_retention(points(pairs), 0.2)
    assert got["predicted"] is None and "not enough data" in got["why"]


def test_a_stored_study_gives_its_points(tmp_path):
    from peftport.precheck import prediction, retention_points
    from peftport.study import make_plan
    from peftport.study.driver import run_plan
    from peftport.study.executors import InlineExecutor
    from peftport.study.spec import parse_study
    from peftport.study.store import Store
    from test_golden import write_toy

    data = write_toy(tmp_path / "toy.csv", n=80)
    text = (
        "name: one-pair\ntechniques: {lora: {config: {r: 2}}}\n"
        "pairs: [[tiny-bert, tiny-bert]]\n"
        f"data: [[{data}, {data}]]\npre_steps: [6]\npost_steps: [1]\nseeds: [0, 1]\n"
        "train: {lr: 5.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 24}\n"
        "compare: {texts: 8, max_length: 16}\n"
    )
    store = Store(tmp_path / "s.sqlite")
    try:
        run_plan(store, make_plan(parse_study(text, "one.yaml")), InlineExecutor(),
                 progress=False, echo=lambda s: None, threads=1)  # fmt: skip
    finally:
        store.close()
    pts, notes = retention_points(tmp_path / "s.sqlite", "lora")
    # a point, or the reason there is none (on this toy the origin may not beat random)
    assert pts or notes == ["tiny-bert -> tiny-bert: no retention (2 origin not above random)"]
    for p in pts:
        assert (p.origin, p.receiver) == ("tiny-bert", "tiny-bert") and p.distance >= 0
    assert retention_points(tmp_path / "s.sqlite", "adapter") == ([], [])
    meta = {"technique": "lora", "origin_host": "tiny-bert"}
    got = prediction(meta, "tiny-bert", [tmp_path / "s.sqlite"])
    assert got["predicted"] is None and "not enough data" in got["why"]
