"""The report: built from a tiny real study, its numbers checked against the store's raw rows."""

from __future__ import annotations

import csv
import math
import re
import shutil
import sqlite3
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from peftport.errors import PeftportError
from peftport.report import build_report
from peftport.report.aggregate import aggregate
from peftport.report.load import Observation, StoreData
from test_study_run import write_toy

# two-sided 95% Student t quantiles t(0.975, df), written out so the check does not use stats.py
T975 = {
    1: 12.706204736174707,
    2: 4.302652729749464,
    3: 3.182446305284263,
    5: 2.570581835636314,
    7: 2.364624251592785,
}
SEEDS = (0, 1)
PRE, POST = 60, (10, 30)


def second_host(folder: Path) -> Path:
    """tiny-bert with its weights nudged: another host of the same shapes (a local folder)."""
    import torch
    from safetensors.torch import load_file, save_file

    from peftport.hosts import get_host, host_folder

    shutil.copytree(host_folder(get_host("tiny-bert")), folder)
    g = torch.Generator().manual_seed(1)
    for f in folder.glob("*.safetensors"):
        t = load_file(f)
        save_file(
            {k: v + 0.02 * torch.randn(v.shape, generator=g) for k, v in t.items()},
            f,
            metadata={"format": "pt"},
        )
    return folder


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A real study, both directions, 2 seeds, LoRA (learns here) and an adapter (does not)."""
    from peftport.study import make_plan
    from peftport.study.driver import run_plan
    from peftport.study.executors import InlineExecutor
    from peftport.study.spec import parse_study
    from peftport.study.store import Store

    d = tmp_path_factory.mktemp("report-study")
    toy = write_toy(d / "toy.csv")
    other = second_host(d / "tiny-bert-b")
    text = (
        "name: tiny-report\n"
        "techniques: {lora: {config: {r: 2}}, adapter: {config: {reduction_factor: 4}}}\n"
        f"pairs: [[tiny-bert, {other}]]\nboth_directions: true\n"
        f"data: [[{toy}, {toy}]]\npre_steps: [{PRE}]\npost_steps: {list(POST)}\n"
        f"seeds: {list(SEEDS)}\n"
        "train: {lr: 5.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}\n"
    )
    plan = make_plan(parse_study(text, "tiny-report.yaml"))
    store = Store(d / "study.sqlite")
    try:
        out = run_plan(store, plan, InlineExecutor(), progress=False, echo=lambda s: None)
    finally:
        store.close()
    assert out["done"] == len(plan.units) and out["failed"] == 0
    return d / "study.sqlite"


@pytest.fixture(scope="module")
def report(study, tmp_path_factory):
    return build_report(study, tmp_path_factory.mktemp("report") / "out")


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def raw_rows(store: Path) -> list[dict]:
    """Straight from the store: every cell with its unit's status and accuracy (if any)."""
    con = sqlite3.connect(store)
    con.row_factory = sqlite3.Row
    rows = con.execute(
        "SELECT c.*, u.status, m.value AS acc FROM cells c JOIN units u ON u.id = c.unit_id "
        "LEFT JOIN metrics m ON m.unit_id = c.unit_id AND m.step = c.step AND m.name = 'accuracy'"
    ).fetchall()
    con.close()
    return [dict(r) for r in rows]


def mean_ci(values: list[float]) -> tuple[float, float | None, float | None]:
    x = np.array(values, dtype=float)
    m = float(x.mean())
    if x.size < 2:
        return m, None, None
    half = T975[x.size - 1] * float(x.std(ddof=1)) / math.sqrt(x.size)
    return m, m - half, m + half


def close(a: str, b: float | None) -> bool:
    if b is None:
        return a == ""
    return a != "" and math.isclose(float(a), b, rel_tol=1e-9, abs_tol=1e-12)


# --- the numbers -------------------------------------------------------------------------------


def test_accuracy_tables_equal_a_direct_computation(study, report):
    raw = [r for r in raw_rows(study) if r["condition"] != "origin"]
    pooled = defaultdict(dict)  # one value per unit checkpoint
    by_dir = defaultdict(list)
    for r in raw:
        pooled[(r["technique"], r["condition"], r["pre_steps"], r["post_steps"])][
            (r["unit_id"], r["step"])
        ] = r["acc"]
        by_dir[
            (
                r["technique"],
                r["origin"],
                r["receiver"],
                r["condition"],
                r["pre_steps"],
                r["post_steps"],
            )
        ].append(r["acc"])
    rows = read_csv(report.csv["accuracy"])
    assert len(rows) == len(pooled) == 2 * (2 + 1) * (1 + len(POST))  # techniques x (ported,
    # sampled at one pre count + random) x (zero-shot + post counts)
    for row in rows:
        vals = list(
            pooled[
                (row["technique"], row["condition"], int(row["pre_steps"]), int(row["post_steps"]))
            ].values()
        )
        m, _, _ = mean_ci(vals)
        assert int(row["n"]) == len(vals) == 4  # 2 seeds x 2 directions
        # the interval: a two-level bootstrap (runs, then test examples), within [0, 1]
        assert close(row["mean"], m), row
        assert 0.0 <= float(row["ci_low"]) <= m <= float(row["ci_high"]) <= 1.0, row
    rows = read_csv(report.csv["accuracy_by_direction"])
    assert len(rows) == len(by_dir)
    for row in rows:
        vals = by_dir[
            (
                row["technique"],
                row["origin"],
                row["receiver"],
                row["condition"],
                int(row["pre_steps"]),
                int(row["post_steps"]),
            )
        ]
        m, _, _ = mean_ci(vals)
        assert int(row["n"]) == len(vals) == len(SEEDS)
        # 2 seeds: no interval (a t interval would multiply the spread by 12.7)
        assert close(row["mean"], m) and row["ci_low"] == row["ci_high"] == "", row
    # LoRA learns the toy task: its ported modules must differ from chance somewhere, or the
    # study is too small to test anything
    assert any(
        float(r["mean"]) > 0.6 for r in read_csv(report.csv["accuracy"]) if r["technique"] == "lora"
    )


def test_zero_shot_and_differences_equal_a_direct_computation(study, report):
    raw = raw_rows(study)
    cell = {
        (
            r["technique"],
            r["origin"],
            r["receiver"],
            r["seed"],
            r["condition"],
            r["pre_steps"],
            r["post_steps"],
        ): r["acc"]
        for r in raw
    }
    origin = {
        (r["technique"], r["origin"], r["seed"], r["pre_steps"]): r["acc"]
        for r in raw
        if r["condition"] == "origin"
    }
    ported = [k for k in cell if k[4] == "ported"]

    for row in read_csv(report.csv["zero_shot_by_technique"]):
        t = row["technique"]
        keys = [k for k in ported if k[0] == t and k[6] == 0]
        ratios = [cell[k] / origin[(t, k[1], k[3], PRE)] for k in keys]
        if row["origin_learned"].startswith("not learned"):
            # a module that did not learn on its origin has no retained share
            assert row["retained_mean"] == "" and row["retained_missing"] == "4 not learned"
        elif row["origin_learned"] == "yes":
            m, _, _ = mean_ci(ratios)
            assert close(row["retained_mean"], m)
            # a percentile bootstrap over the ratios: within their own range
            low, high = float(row["retained_ci_low"]), float(row["retained_ci_high"])
            assert min(ratios) - 1e-12 <= low <= m <= high <= max(ratios) + 1e-12
        assert close(row["ported_mean"], float(np.mean([cell[k] for k in keys])))
        assert close(
            row["origin_mean"],
            float(np.mean(list({k: v for k, v in origin.items() if k[0] == t}.values()))),
        )
        assert close(
            row["random_mean"], float(np.mean([cell[(*k[:4], "random", 0, 0)] for k in keys]))
        )

    rows = read_csv(report.csv["differences"])
    assert len(rows) == 2 * 2 * (1 + len(POST))  # comparisons x techniques x steps
    for row in rows:
        control = row["comparison"].split(" - ")[1]
        t, s = row["technique"], int(row["post_steps"])
        keys = [k for k in ported if k[0] == t and k[6] == s]
        d = [cell[k] - cell[(*k[:4], control, 0 if control == "random" else PRE, s)] for k in keys]
        m, _, _ = mean_ci(d)
        assert int(row["n_pairs"]) == len(d) == 4
        # every pair its own independent unit here: one snapshot (technique, origin, seed) and
        # one random unit (receiver, seed) per pair
        assert int(row["n_units"]) == 4
        assert close(row["mean_diff"], m), row
        if np.std(d) > 0:
            low, high = float(row["ci_low"]), float(row["ci_high"])  # bootstrap over units
            assert min(d) - 1e-12 <= low <= m <= high <= max(d) + 1e-12, row
            t_stat = m / (np.std(d, ddof=1) / math.sqrt(len(d)))
            assert close(row["t"], t_stat)
            assert close(row["d_z"], m / np.std(d, ddof=1))
        else:
            assert row["p_t"] == "" and row["t"] == ""  # undefined, not 0
    # Holm over the table's p_t, recomputed here
    p = [(float(r["p_t"]), i) for i, r in enumerate(rows) if r["p_t"]]
    m = len(p)
    running, holm = 0.0, {}
    for rank, (pv, i) in enumerate(sorted(p)):
        running = max(running, min(1.0, (m - rank) * pv))
        holm[i] = running
    for i, r in enumerate(rows):
        assert close(r["p_holm"], holm.get(i))


def first_reach(steps: list[int], curve: list[float], target: float) -> float | None:
    for i, (s, a) in enumerate(zip(steps, curve, strict=True)):
        if a >= target:
            if i == 0:
                return float(s)
            return steps[i - 1] + (target - curve[i - 1]) / (a - curve[i - 1]) * (s - steps[i - 1])
    return None


def test_steps_saved_equal_a_direct_computation(study, report):
    raw = raw_rows(study)
    cell = {
        (r["technique"], r["origin"], r["receiver"], r["seed"], r["condition"], r["post_steps"]): r[
            "acc"
        ]
        for r in raw
    }
    steps = [0, *POST]
    rows = read_csv(report.csv["steps_saved"])
    assert {r["technique"] for r in rows} == {"lora", "adapter"} and len(rows) == 2 * len(steps)
    for row in rows:
        t = row["technique"]
        runs = sorted({k[1:4] for k in cell if k[0] == t and k[4] == "ported"})
        P = np.mean([[cell[(t, *run, "ported", s)] for s in steps] for run in runs], axis=0)
        R = np.mean([[cell[(t, *run, "random", s)] for s in steps] for run in runs], axis=0)
        k = int(row["checkpoint"])
        need = first_reach(steps, list(R), float(P[steps.index(k)]))
        assert int(row["runs"]) == len(runs) == 4
        assert close(row["ported_mean"], float(P[steps.index(k)]))
        if row["not_measured"]:
            # degenerate: ported, or random where it gets there, predicts one class
            assert row["saved"] == "" and row["random_needs"] == "" and row["reached"] == ""
        elif need is None:
            assert row["reached"] == "False" and row["saved"] == "" and row["random_needs"] == ""
        else:
            assert close(row["random_needs"], need) and close(row["saved"], need - k)
    md = report.markdown.read_text()
    assert "not reached" in md or "steps saved" in md.lower()


# the range each CSV interval must stay in: a metric's mean in [0, 1], a difference of two in
# [-1, 1]; retained = ported / origin is not negative; retention is a ratio of differences
METRIC_RANGE = (0.0, 1.0)
DIFFERENCE_RANGE = (-1.0, 1.0)


def interval_range(table: str, prefix: str) -> tuple[float, float] | None:
    if prefix == "retained_":
        return (0.0, math.inf)
    if prefix == "retention_":
        return (-math.inf, math.inf)  # finite, and within its seeds' own ratios (below)
    if prefix == "saved_":
        return None  # steps, not a metric
    if table.startswith("differences") or table == "ranking":
        return DIFFERENCE_RANGE
    return METRIC_RANGE


def test_no_interval_leaves_its_range_and_not_learned_origins_have_no_ratio(report):
    """Every interval of every CSV lies in its metric's range; a module that did not learn on
    its origin has no retained share and no retention anywhere."""
    checked = 0
    for name, path in report.csv.items():
        rows = read_csv(path)
        lows = [c for c in (rows[0] if rows else {}) if c.endswith("ci_low")]
        for col in lows:
            prefix = col[: -len("ci_low")]
            bounds = interval_range(name, prefix)
            if bounds is None:
                continue
            for r in rows:
                low, high = r[col], r[f"{prefix}ci_high"]
                assert (low == "") == (high == ""), (name, col, r)
                if low == "":
                    continue
                lo, hi = float(low), float(high)
                assert math.isfinite(lo) and math.isfinite(hi), (name, col, r)
                assert bounds[0] <= lo <= hi <= bounds[1], (name, col, r)
                mean_col = f"{prefix}mean" if f"{prefix}mean" in r else "mean_diff"
                if r.get(mean_col, "") != "":
                    assert lo - 1e-12 <= float(r[mean_col]) <= hi + 1e-12, (name, col, r)
                checked += 1
    assert checked > 20  # the study has intervals to check (pooled cells have 4 runs)
    not_learned = 0
    for name in ("zero_shot", "zero_shot_by_technique", "retention_vs_distance"):
        for r in read_csv(report.csv[name]) if name in report.csv else []:
            if r["origin_learned"].startswith("not learned"):
                not_learned += 1
                ratio = "retention_" if name == "retention_vs_distance" else "retained_"
                assert r[f"{ratio}mean"] == "" and r[f"{ratio}ci_low"] == "", (name, r)
    assert not_learned  # the adapter does not learn the toy in 60 steps: the check ran
    glance = report.markdown.read_text().split("## Figures")[0]
    assert "not measured (did not learn on its origin)" in glance


def test_html_and_markdown_show_the_table_numbers(report):
    html = report.html.read_text()
    md = report.markdown.read_text()
    for row in read_csv(report.csv["accuracy"]):
        text = f"{float(row['mean']):.3f}"
        if row["ci_low"]:
            text += f" [{float(row['ci_low']):.3f}, {float(row['ci_high']):.3f}]"
        assert text in html and text in md
    for row in read_csv(report.csv["ranking"]):
        assert row["technique"] in html
    assert "missing (" not in html  # a complete study has nothing missing


def test_html_and_markdown_have_the_same_sections_in_the_same_order(report):
    html = report.html.read_text()
    md = report.markdown.read_text()
    h2 = re.findall(r'<h2 id="[^"]+">([^<]+)</h2>', html)
    nav = re.findall(r'<li><a href="#([^"]+)">', html)
    assert h2 == re.findall(r"^## (.+)$", md, re.M)
    assert nav == re.findall(r'<h2 id="([^"]+)">', html) and "missing" in nav
    # the page's folded tables are the Markdown's subsections, in the same places
    folded = "By direction and data combination"
    assert html.count(f"<details><summary>{folded}") == md.count(f"### {folded}") == 4
    assert html.count("<table>") == md.count("\n|---|")  # every table in both


def test_the_page_escapes_what_the_store_says():
    """Text with markup (a failed unit's error, a study name) is shown as text, never run."""
    from peftport.report.blocks import Page, Section, TableBlock, note
    from peftport.report.render import render_html

    evil = '<script>alert("x")</script> & <b>'
    blocks = [note(evil), TableBlock(["h"], [[(evil, "missing")]])]
    page = Page(
        evil, "s", "accuracy", "now", "0", [], True, "ok", [Section("x", evil, evil, blocks)]
    )
    html = render_html(page)
    assert evil not in html and "<script" not in html
    # title, heading, contents, section title, note, table cell
    assert html.count("&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;") == 6


def test_html_is_self_contained(report):
    html = report.html.read_text()
    assert "<script" not in html.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(" not in html
    imgs = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert imgs and all(s.startswith("data:image/png;base64,") for s in imgs)
    for href in re.findall(r'href="([^"#][^"]*)"', html):  # links: the report's own files
        assert (report.out_dir / href).is_file(), href
    # overview + technique x direction + retention against host distance (the run records the
    # study's host pairs)
    assert len(imgs) == len(report.figures) == 1 + 2 * 2 + 1


def test_report_is_deterministic_and_never_writes_the_store(study, report, tmp_path):
    before = study.read_bytes()
    again = build_report(study, tmp_path / "again")
    assert study.read_bytes() == before
    for (png, svg), (png2, svg2) in zip(report.figures, again.figures, strict=True):
        assert png.read_bytes() == png2.read_bytes() and svg.read_bytes() == svg2.read_bytes()
    for name, path in report.csv.items():
        assert path.read_bytes() == again.csv[name].read_bytes(), name


# --- missing results ---------------------------------------------------------------------------


def copy_store(src: Path, dst: Path) -> Path:
    a, b = sqlite3.connect(src), sqlite3.connect(dst)
    a.backup(b)
    a.close()
    b.close()
    return dst


def test_missing_cells_are_shown_as_missing_never_zero(study, tmp_path):
    store = copy_store(study, tmp_path / "partial.sqlite")
    con = sqlite3.connect(store)
    # both seeds of LoRA ported one way: failed; one random unit still pending (its metrics rows
    # stay in the store: status decides, not the presence of numbers)
    failed = [
        r[0]
        for r in con.execute(
            "SELECT id FROM units WHERE kind = 'post' AND technique = 'lora' AND condition = "
            "'ported' AND origin = 'tiny-bert'"
        )
    ]
    assert len(failed) == 2
    con.executemany(
        "UPDATE units SET status = 'failed', error = 'Traceback...\nRuntimeError: "
        "boom in a test' WHERE id = ?",
        [(f,) for f in failed],
    )
    pending = con.execute(
        "SELECT id, receiver FROM units WHERE kind = 'random' AND technique = "
        "'lora' AND seed = 0 AND receiver = 'tiny-bert'"
    ).fetchone()
    con.execute("UPDATE units SET status = 'pending' WHERE id = ?", (pending[0],))
    con.commit()
    con.close()

    paths = build_report(store, tmp_path / "out")
    assert not paths.complete
    rows = read_csv(paths.csv["accuracy_by_direction"])
    gone = [
        r
        for r in rows
        if r["technique"] == "lora" and r["condition"] == "ported" and r["origin"] == "tiny-bert"
    ]
    assert gone and all(
        r["mean"] == "" and r["n"] == "0" and r["missing"] == "2 failed" for r in gone
    )
    part = [
        r
        for r in rows
        if r["technique"] == "lora" and r["condition"] == "random" and r["receiver"] == "tiny-bert"
    ]
    assert part and all(
        r["n"] == "1" and r["expected"] == "2" and r["missing"] == "1 pending" and r["mean"]
        for r in part
    )
    pooled = [
        r
        for r in read_csv(paths.csv["accuracy"])
        if r["technique"] == "lora" and r["condition"] == "ported"
    ]
    assert all(
        r["n"] == "2" and r["expected"] == "4" and r["missing"] == "2 failed" for r in pooled
    )
    # the direct mean of what is there (the other direction), not a mean with zeros
    raw = [
        r
        for r in raw_rows(store)
        if r["technique"] == "lora" and r["condition"] == "ported" and r["post_steps"] == 0
    ]
    there = [r["acc"] for r in raw if r["status"] == "done"]
    assert close(next(r for r in pooled if r["post_steps"] == "0")["mean"], float(np.mean(there)))
    res = read_csv(paths.csv["results"])
    assert all(r["value"] == "" for r in res if r["unit_id"] in failed)
    assert {r["missing"] for r in res if r["unit_id"] == pending[0]} == {"pending"}
    diffs = [
        r
        for r in read_csv(paths.csv["differences_by_direction"])
        if r["technique"] == "lora" and r["origin"] == "tiny-bert"
    ]
    assert all(
        r["n_pairs"] == "0" and r["mean_diff"] == "" and "2 failed" in r["missing_pairs"]
        for r in diffs
    )
    html = paths.html.read_text()
    assert "Incomplete study" in html and "missing (2 failed)" in html
    assert "(2 of 4; 2 failed)" in html and "boom in a test" in html
    md = paths.markdown.read_text()
    assert "missing (2 failed)" in md and "Missing results" in md


def test_a_study_with_nothing_done_gives_a_report_of_missing_results(study, tmp_path):
    store = copy_store(study, tmp_path / "fresh.sqlite")
    con = sqlite3.connect(store)
    con.execute("UPDATE units SET status = 'pending'")
    con.commit()
    con.close()
    paths = build_report(store, tmp_path / "out")
    rows = read_csv(paths.csv["accuracy"])
    assert rows and all(r["mean"] == "" and r["n"] == "0" for r in rows)
    assert all(r["runs"] == "0" for r in read_csv(paths.csv["steps_saved"]))
    assert read_csv(paths.csv["ranking"]) == []
    assert "0.000" not in "".join(r["mean"] for r in rows)


def test_partial_means_and_not_reached_on_synthetic_observations(tmp_path):
    """Pure aggregation on hand-made observations: a partial mean and a saving never reached."""

    def obs(cond, seed, step, value, status="done", pre=5):
        return Observation(
            "lora",
            "a",
            "b",
            "d",
            "d",
            seed,
            cond,
            0 if cond == "random" else pre,
            step,
            f"{cond}{seed}",
            step,
            status,
            value,
        )

    rows = []
    for seed, (p0, p1, r0, r1) in enumerate([(0.9, 0.95, 0.5, 0.6), (0.8, 0.9, 0.5, 0.7)]):
        rows += [
            obs("ported", seed, 0, p0),
            obs("ported", seed, 10, p1),
            obs("random", seed, 0, r0),
            obs("random", seed, 10, r1),
        ]
    rows += [obs("origin", s, 0, 0.9) for s in (0, 1)]
    rows.append(obs("ported", 2, 0, None, "failed"))
    rows.append(obs("ported", 2, 10, None, "failed"))
    rows.append(obs("random", 2, 0, 0.5))
    rows.append(obs("random", 2, 10, 0.6))
    data = StoreData(tmp_path, "accuracy", 1, "", "", [], rows, {}, [], {})
    agg = aggregate(data)
    acc = {(r["condition"], r["post_steps"]): r for r in agg.tables["accuracy"].rows}
    assert acc[("ported", 0)]["mean"] == pytest.approx(0.85) and acc[("ported", 0)]["n"] == 2
    assert acc[("ported", 0)]["expected"] == 3 and acc[("ported", 0)]["missing"] == "1 failed"
    saved = {r["checkpoint"]: r for r in agg.tables["steps_saved"].rows}
    assert saved[0]["runs"] == 2 and saved[0]["expected_runs"] == 3
    assert saved[0]["reached"] is False and saved[0]["saved"] is None  # random tops out at 0.65
    diff = [r for r in agg.tables["differences"].rows if r["comparison"] == "ported - random"]
    assert diff[0]["n_pairs"] == 2 and diff[0]["missing_pairs"] == "1 failed"
    assert diff[0]["mean_diff"] == pytest.approx(((0.9 - 0.5) + (0.8 - 0.5)) / 2)


# --- errors and the command ----------------------------------------------------------------------


def test_not_a_store_gives_clear_errors(tmp_path):
    with pytest.raises(PeftportError, match="no study store at"):
        build_report(tmp_path / "nothing.sqlite", tmp_path / "out")
    (tmp_path / "empty.sqlite").write_bytes(b"")
    with pytest.raises(PeftportError, match="is an empty file, not a peftport study store"):
        build_report(tmp_path / "empty.sqlite", tmp_path / "out")
    (tmp_path / "notes.txt").write_text("hello, not a database\n" * 50)
    with pytest.raises(PeftportError, match="is not a SQLite database"):
        build_report(tmp_path / "notes.txt", tmp_path / "out")
    con = sqlite3.connect(tmp_path / "foreign.sqlite")
    con.execute("CREATE TABLE songs (title TEXT)")
    con.commit()
    con.close()
    with pytest.raises(
        PeftportError, match="a SQLite database but not a peftport study store.*songs"
    ):
        build_report(tmp_path / "foreign.sqlite", tmp_path / "out")
    with pytest.raises(PeftportError, match="is a folder"):
        build_report(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # nothing written for a bad store


def test_empty_store_and_bad_options(study, tmp_path):
    from peftport.study.store import Store

    Store(tmp_path / "new.sqlite").close()  # a store nothing was planned into
    with pytest.raises(PeftportError, match="holds no study yet"):
        build_report(tmp_path / "new.sqlite", tmp_path / "out")
    with pytest.raises(PeftportError, match="no study 'nope'.*tiny-report"):
        build_report(study, tmp_path / "out", study="nope")
    with pytest.raises(PeftportError, match="unknown metric"):
        build_report(study, tmp_path / "out", metric="loss")
    (tmp_path / "file").write_text("x")
    with pytest.raises(PeftportError, match="is a file"):
        build_report(study, tmp_path / "file")


def report_app() -> typer.Typer:
    from peftport import cli
    from peftport.commands import report

    if "report" in cli.COMMAND_MODULES:
        return cli.app
    app = typer.Typer()
    report.register(app)
    app.callback()(lambda: None)
    return app


def test_command(study, tmp_path):
    runner = CliRunner()
    out = tmp_path / "rep"
    res = runner.invoke(
        report_app(), ["report", str(study), "--out", str(out), "--metric", "macro_f1"]
    )
    assert res.exit_code == 0, res.output
    assert "open it in a browser: file://" in res.output and (out / "index.html").is_file()
    assert "macro_f1" in (out / "index.html").read_text()
    res = runner.invoke(report_app(), ["report", str(tmp_path / "none.sqlite"), "--out", str(out)])
    assert isinstance(res.exception, PeftportError) and "no study store" in str(res.exception)


def test_command_exit_status_for_a_foreign_file(tmp_path):
    from peftport import cli

    if "report" not in cli.COMMAND_MODULES:
        pytest.skip("`report` is not wired into the peftport command yet")
    (tmp_path / "x.sqlite").write_text("not a database at all")
    res = subprocess.run(
        [sys.executable, "-m", "peftport", "report", str(tmp_path / "x.sqlite")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 2 and "not a SQLite database" in res.stderr


# --- a real browser ------------------------------------------------------------------------------

CHROMIUM = next(
    (
        shutil.which(n)
        for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
        if shutil.which(n)
    ),
    None,
)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on this machine")
def test_page_opens_in_headless_chromium_without_errors(report, tmp_path):
    args = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
    ]
    url = report.html.resolve().as_uri()
    res = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Uncaught" not in res.stderr and "ERROR:CONSOLE" not in res.stderr, res.stderr[-2000:]
    assert "Portability report" in res.stdout and "Steps saved" in res.stdout
    shot = tmp_path / "shot.png"
    res = subprocess.run(
        [*args, f"--screenshot={shot}", "--window-size=1200,2000", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0 and shot.stat().st_size > 20_000  # a rendered page, not a blank
