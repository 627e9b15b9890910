"""The local Ray instance of `study run --executor ray`: gone after SIGTERM, cleaned after a
SIGKILLed driver by the next run, gone after a normal end. A real local Ray, real processes."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest

from test_study_run import cli_args, study_text, write_toy

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def _alive(rec):
    import psutil

    out = []
    for r in rec["processes"]:
        try:
            if abs(psutil.Process(r["pid"]).create_time() - r["created"]) < 0.01:
                out.append(r["pid"])
        except psutil.NoSuchProcess:
            pass
    return out


def _start(args, env):
    return subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )


def _wait_running(proc, home, store, timeout=240):
    """Until the driver's Ray record is written and a unit runs under ITS claim (a killed
    driver's stale claim must not count: the new driver recovers it after Ray is up);
    returns the record."""
    path = home / "ray" / f"{proc.pid}.json"
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        if path.exists() and store.exists():
            try:
                con = sqlite3.connect(store)
                n = con.execute(
                    "SELECT COUNT(*) FROM units WHERE status = 'running' AND pid = ?", (proc.pid,)
                ).fetchone()[0]
                con.close()
            except sqlite3.OperationalError:
                n = 0
            if n:
                return json.loads(path.read_text())
        time.sleep(0.2)
    raise AssertionError("the driver did not start a unit on Ray in time")


def _gone_within(rec, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline and _alive(rec):
        time.sleep(0.5)
    return _alive(rec)


def test_a_local_ray_is_shut_down_on_sigterm_and_cleaned_after_sigkill(tmp_path):
    pytest.importorskip("ray")
    pytest.importorskip("psutil")
    home = tmp_path / "home"
    toy = write_toy(tmp_path / "toy.csv")
    (tmp_path / "s.yaml").write_text(
        study_text(toy, techniques="{lora: {config: {r: 2}}}", pre="[60]", post="[3]")
    )
    store = tmp_path / "s.sqlite"
    env = {
        **os.environ,
        "PEFTPORT_HOME": str(home),
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    args = cli_args(
        "study",
        "run",
        str(tmp_path / "s.yaml"),
        "--store",
        str(store),
        "--executor",
        "ray",
        "--workers",
        "1",
        "--no-progress",
    )

    # 1. SIGKILL: nothing can run in the driver; its Ray processes stay (and its record)
    first = _start(args, env)
    killed = _wait_running(first, home, store)
    assert {p["name"] for p in killed["processes"]} >= {"raylet", "gcs_server"}
    first.send_signal(signal.SIGKILL)
    first.communicate()
    assert (home / "ray" / f"{first.pid}.json").exists()

    # 2. the next driver ends them before it starts its own Ray; SIGTERM ends it cleanly
    second = _start(args, env)
    rec = _wait_running(second, home, store)
    assert _alive(killed) == []
    assert not (home / "ray" / f"{first.pid}.json").exists()
    second.send_signal(signal.SIGTERM)
    _, err = second.communicate(timeout=120)
    assert second.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "ended" in err and f"driver pid {first.pid}" in err
    assert _gone_within(rec, 30) == []
    assert not (home / "ray" / f"{second.pid}.json").exists()
    con = sqlite3.connect(store)
    running = con.execute("SELECT id, pid FROM units WHERE status = 'running'").fetchall()
    events = con.execute("SELECT unit_id, event, pid, detail FROM events").fetchall()
    assert running == [], (running, events, first.pid, second.pid, err[-2000:])

    # 3. a normal end: every unit done, Ray gone, no record left
    third = _start(args, env)
    _, err = third.communicate(timeout=900)
    assert third.returncode == 0, err[-3000:]
    assert list((home / "ray").glob("*.json")) == []
    assert {r[0] for r in con.execute("SELECT status FROM units")} == {"done"}
