"""The paper's grid end to end on tiny text-to-text hosts (`--preset paper-tiny`).

Exactly the paper preset's axes (4 techniques, 4 directed pairs over two same-shape T5 pairs,
2 data combinations, 3 seeds, 2 pre- and 3 post-porting step counts, 3 conditions): the plan
counts 528 units and 1,440 runs like the paper's; the slow test runs all of it through the CLI,
kills the driver midway (SIGKILL), resumes, finds 1,440 runs in the store and reports them.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from peftport.study import make_plan
from peftport.study.spec import load_preset

RUNS, UNITS = 1440, 528


def _axes(spec):
    return dict(
        techniques=len(spec.techniques),
        data=len(spec.data),
        seeds=len(spec.seeds),
        pre=len(spec.pre_steps),
        post=len(spec.post_steps),
        conditions=tuple(spec.conditions),
        pairs=len(spec.pairs),
    )


def test_paper_tiny_has_the_paper_presets_axes_and_counts():
    tiny, paper = load_preset("paper-tiny"), load_preset("paper")
    assert _axes(tiny) == _axes(paper)
    assert [t.name for t in tiny.techniques] == [t.name for t in paper.techniques]
    plan = make_plan(tiny)
    assert len(plan.units) == UNITS == len(make_plan(paper).units)
    assert plan.totals()["runs"] == RUNS == make_plan(paper).totals()["runs"]


def test_paper_tiny_plan_prints_the_paper_counts():
    res = subprocess.run(
        [sys.executable, "-m", "peftport", "study", "plan", "--preset", "paper-tiny", "--no-units"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    assert "runs (paper sense): 1,440" in res.stdout
    assert "work units: 528" in res.stdout


def test_paper_tiny_pairs_are_same_shape_text_to_text_twins():
    from peftport.hosts import TEXT_TO_TEXT, get_host, host_folder

    pairs = load_preset("paper-tiny").pairs
    assert len(pairs) == 4  # two pairs, both directions
    for origin, receiver in pairs[::2]:
        a, b = get_host(origin), get_host(receiver)
        assert a.kind == b.kind == TEXT_TO_TEXT
        ca = json.loads((host_folder(a) / "config.json").read_text())
        cb = json.loads((host_folder(b) / "config.json").read_text())
        assert a.layout.shape(ca) == b.layout.shape(cb)
        assert receiver == f"{origin}-tuned" and b.parent == origin


def _done(store) -> int:
    try:
        con = sqlite3.connect(store)
        try:
            return con.execute("SELECT COUNT(*) FROM units WHERE status = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:
        return 0  # the schema is being created


@pytest.mark.slow
def test_paper_tiny_runs_all_units_resumes_after_a_kill_and_reports(tmp_path):
    store = tmp_path / "paper-tiny.sqlite"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    args = [
        sys.executable,
        "-m",
        "peftport",
        "study",
        "run",
        "--preset",
        "paper-tiny",
        "--store",
        str(store),
        "--workers",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and _done(store) < UNITS // 3:
        time.sleep(0.5)
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)  # midway: some units done, some running, most pending
    proc.wait()
    proc.stderr.close()
    killed_at = _done(store)
    assert 0 < killed_at < UNITS
    time.sleep(0.5)  # the workers die with the driver

    res = subprocess.run(args, capture_output=True, text=True, timeout=3600, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert f"{killed_at} of {UNITS} units done already" in res.stderr
    con = sqlite3.connect(store)
    assert con.execute("SELECT status, COUNT(*) FROM units GROUP BY status").fetchall() == [
        ("done", UNITS)
    ]
    runs = con.execute(
        "SELECT COUNT(*) FROM results WHERE post_steps > 0 AND accuracy IS NOT NULL"
    ).fetchone()[0]
    assert runs == RUNS
    per = con.execute(
        "SELECT technique, COUNT(*) FROM results WHERE post_steps > 0 GROUP BY technique"
    ).fetchall()
    assert dict(per) == {t: RUNS // 4 for t in ("adapter", "lora", "prefix", "compacter")}

    out = tmp_path / "report"
    rep = subprocess.run(
        [sys.executable, "-m", "peftport", "report", str(store), "--out", str(out), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    paths = json.loads(rep.stdout)
    assert paths["complete"] is True
    assert (out / "index.html").stat().st_size > 0 and paths["figures"]
    with open(paths["json"]) as f:
        assert json.load(f)["missing_results"] == 0
