"""What a new user sees: durations, progress outside a terminal, the demo's first line, the next
step after a study, and `adapt`'s defaults."""

import io
import json
import time

import pytest
from typer.testing import CliRunner

from peftport.progress import bar, format_duration, ticker
from test_study_run import study_app, study_text, write_toy

runner = CliRunner()


@pytest.mark.parametrize(
    "seconds,text",
    [
        (0.42, "0.4 s"),
        (9.96, "10.0 s"),
        (12.4, "12 s"),
        (59.6, "1 min 0 s"),
        (1992, "33 min 12 s"),
        (3600, "1 h 00 min"),
        (7530, "2 h 05 min"),
    ],
)
def test_durations_read_as_minutes_and_seconds(seconds, text):
    assert format_duration(seconds) == text


def test_progress_outside_a_terminal_is_plain_periodic_lines(monkeypatch):
    monkeypatch.setenv("PEFTPORT_PROGRESS_INTERVAL", "0")  # a line at every update
    out = io.StringIO()  # not a terminal, like a log file or CI
    b = bar(total=4, desc="deriving from tiny-bert", unit="step", stream=out)
    for _ in range(4):
        b.update(1)
        b.set_postfix(loss="0.500")
    b.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "deriving from tiny-bert: started, 4 steps"
    assert lines[1].startswith("deriving from tiny-bert: 1/4 steps (25%), ")
    assert "left" in lines[1] and "loss=0.500" in lines[2]
    assert lines[-1].startswith("deriving from tiny-bert: finished, 4/4 steps (100%)")
    # iterating, as derive.py does
    out = io.StringIO()
    assert list(bar(range(3), desc="x", stream=out)) == [0, 1, 2]
    assert out.getvalue().splitlines()[-1].startswith("x: finished, 3/3 steps")
    # the interval holds: no line between start and end within it
    monkeypatch.setenv("PEFTPORT_PROGRESS_INTERVAL", "30")
    out = io.StringIO()
    b = bar(total=1000, desc="y", stream=out)
    for _ in range(1000):
        b.update(1)
    b.close()
    assert len(out.getvalue().splitlines()) == 2
    # a unit's plural reads as English ("16 batches", not "16 batchs")
    out = io.StringIO()
    list(bar(range(16), desc="comparing", unit="batch", stream=out))
    assert out.getvalue().splitlines()[-1].startswith("comparing: finished, 16/16 batches")


def test_a_step_with_nothing_to_count_says_it_still_runs():
    out = io.StringIO()
    with ticker("evaluating m in tiny-bert", stream=out, every=0.05):
        time.sleep(0.3)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("evaluating m in tiny-bert: still running, ")
    assert lines[-1].startswith("evaluating m in tiny-bert: done in ")
    out = io.StringIO()
    with ticker("quick", stream=out, every=5):
        pass
    assert out.getvalue() == ""  # a short step prints nothing


def test_the_demo_starts_with_a_human_summary():
    from peftport.commands.demo import plan_summary
    from peftport.study.plan import make_plan
    from peftport.study.spec import load_preset

    totals = make_plan(load_preset("quick")).totals()
    line = plan_summary(totals, workers=2)
    assert line.startswith(f"study quick: {totals['units']['total']} units (")
    assert f"{totals['training_steps']['shared']:,} training steps" in line
    assert " min " in line and "{" not in line and "'" not in line


def test_study_run_prints_progress_in_a_log_and_names_the_next_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PEFTPORT_PROGRESS_INTERVAL", "0")
    toy = write_toy(tmp_path / "toy.csv")
    (tmp_path / "s.yaml").write_text(
        study_text(toy, techniques="{lora: {}}", pre="[2]", post="[2]")
    )
    store = tmp_path / "my store.sqlite"
    res = runner.invoke(
        study_app(),
        ["study", "run", str(tmp_path / "s.yaml"), "--store", str(store), "--workers", "0"],
    )
    assert res.exit_code == 0, res.output
    assert "study tiny: started" in res.stderr and "study tiny: finished" in res.stderr
    assert "\r" not in res.stderr
    assert res.stdout.splitlines()[-1] == f"next: peftport report '{store}'"


def test_adapt_evaluates_zero_shot_and_the_last_step_and_says_when_nothing_is_kept(tmp_path):
    from peftport.cli import app

    data = tmp_path / "d.jsonl"
    rows = [
        {"text": f"{w} movie number {i}", "label": int(w == "great")}
        for i in range(40)
        for w in ("great", "terrible")
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = [
        "--max-length",
        "16",
        "--batch-size",
        "4",
        "--lr",
        "0.01",
        "--data",
        str(data),
        "--host",
        "tiny-bert",
    ]
    res = runner.invoke(
        app, ["train", "--technique", "lora", "--steps", "2", "--out", str(tmp_path / "m"), *common]
    )
    assert res.exit_code == 0, res.output
    assert "not kept" not in res.stderr
    res = runner.invoke(app, ["adapt", str(tmp_path / "m"), "--steps", "3", "--json", *common])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert set(out["metrics"]) == {"0", "3"} and out["module"] is None
    res = runner.invoke(app, ["adapt", str(tmp_path / "m"), "--steps", "3", *common])
    assert res.exit_code == 0, res.output
    assert "note: the module is not kept (give --out DIR to save it)" in res.stderr
