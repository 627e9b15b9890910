"""The report says when a study's results were computed in more than one precision.

`precision: auto` resolves on each machine (bf16 on a CPU with native bf16, else fp32) and is
left out of unit ids, so a study run across machines with and without native bf16 (a Ray
cluster, or a resume elsewhere) holds both under one plan: the report must say so.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from peftport.report import build_report
from peftport.report.load import load_store, precision_warning
from test_study_run import write_toy


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """A real tiny study, every unit in fp32 (pinned)."""
    from peftport.study import make_plan
    from peftport.study.driver import run_plan
    from peftport.study.executors import InlineExecutor
    from peftport.study.spec import parse_study
    from peftport.study.store import Store

    d = tmp_path_factory.mktemp("precision-study")
    toy = write_toy(d / "toy.csv", n=80)
    text = (
        "name: tiny-precision\ntechniques: {lora: {config: {r: 2}}}\n"
        f"pairs: [[tiny-bert, tiny-bert]]\ndata: [[{toy}, {toy}]]\n"
        "pre_steps: [2]\npost_steps: [1]\nseeds: [0]\n"
        "train: {batch_size: 8, max_length: 32, max_eval_examples: 16, precision: fp32}\n"
    )
    plan = make_plan(parse_study(text, "tiny-precision.yaml"))
    s = Store(d / "study.sqlite")
    try:
        out = run_plan(s, plan, InlineExecutor(), progress=False, echo=lambda m: None, threads=1)
    finally:
        s.close()
    assert out["done"] == len(plan.units) and out["failed"] == 0
    return d / "study.sqlite"


def _as_if_computed_in_bf16(path: Path, n: int) -> None:
    """`n` done units record bf16, as a node with native bf16 running `auto` would write."""
    con = sqlite3.connect(path)
    rows = con.execute("SELECT id, result FROM units WHERE status = 'done' ORDER BY id").fetchall()
    for uid, result in rows[:n]:
        r = json.loads(result)
        r["placement"]["precision"] = "bf16"
        con.execute("UPDATE units SET result = ? WHERE id = ?", (json.dumps(r), uid))
    con.commit()
    con.close()


def test_one_precision_no_warning(store, tmp_path):
    data = load_store(store)
    assert set(data.provenance["precisions"]) == {"fp32"}
    assert precision_warning(data.provenance) is None
    md = build_report(store, tmp_path / "r").markdown.read_text()
    assert "mix precisions" not in md
    assert "| precision | fp32 (" in md


def test_mixed_precisions_give_one_warning_line(store, tmp_path):
    mixed = tmp_path / "mixed.sqlite"
    shutil.copy(store, mixed)
    _as_if_computed_in_bf16(mixed, 1)
    data = load_store(mixed)
    counts = data.provenance["precisions"]
    assert counts["bf16"] == 1 and counts["fp32"] == data.unit_status["done"] - 1
    warning = precision_warning(data.provenance)
    assert warning is not None and "\n" not in warning
    assert warning.startswith("Warning: the results mix precisions: bf16 (1 units), fp32 (")
    paths = build_report(mixed, tmp_path / "r")
    md = paths.markdown.read_text()
    # at the top (the status line) and in the provenance table
    assert md.count(warning) == 2
    assert warning in paths.html.read_text().replace("&#39;", "'").replace("&#96;", "`")


def test_units_without_a_placement_are_not_a_second_precision():
    prov = {"precisions": {"fp32": 5, "not recorded": 3}}
    assert precision_warning(prov) is None
    assert precision_warning({"precisions": {"bf16": 1, "fp32": 2, "not recorded": 3}})
    assert precision_warning({}) is None
