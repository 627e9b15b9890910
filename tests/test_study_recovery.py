"""Stores that are not stores, damaged artifacts, and workers that die: the study recovers.

Real SQLite files, real module folders, real worker processes (the CLI as a subprocess where the
exit code matters).
"""

import hashlib
import json
import os
import sqlite3
import subprocess

import pytest
from typer.testing import CliRunner

from peftport.study import make_plan
from peftport.study.spec import parse_study
from peftport.study.store import Store
from test_study_run import cli_args, db, run_inline, study_app, study_text, write_toy

runner = CliRunner()
LORA = "{lora: {config: {r: 2}}}"
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def listing(folder):
    return sorted(p.name for p in folder.iterdir())


def other_app_db(path):
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices VALUES (1, 9.5)")
    con.commit()
    con.close()


def newer_store(path):
    Store(path).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    con.commit()
    con.execute("PRAGMA journal_mode=DELETE")  # one file: its bytes are the whole store
    con.close()


STORE_FILES = [  # (what the file is, how to make it, a fragment of the expected message)
    ("another application's database", other_app_db, "not a peftport study store"),
    ("a zero-byte file", lambda p: p.write_bytes(b""), "empty file"),
    ("a newer store", newer_store, "schema version 2"),
    ("random bytes", lambda p: p.write_bytes(os.urandom(3000)), "not a SQLite database"),
]


@pytest.mark.parametrize("what,make,message", STORE_FILES, ids=[c[0] for c in STORE_FILES])
@pytest.mark.parametrize("command", ["status", "export"])
def test_read_only_commands_refuse_a_file_that_is_no_store_and_leave_it_as_it_is(
    tmp_path, what, make, message, command
):
    target = tmp_path / "other.db"
    make(target)
    before, files = sha(target), listing(tmp_path)
    args = ["study", command, "--store", str(target)]
    if command == "export":
        args += ["--csv", str(tmp_path / "out.csv")]
    res = subprocess.run(cli_args(*args), capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2, res.stdout + res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr
    assert sha(target) == before and listing(tmp_path) == files  # no -wal, no artifacts, no csv


@pytest.mark.parametrize(
    "what,make,message",
    STORE_FILES[:1] + STORE_FILES[2:],
    ids=[c[0] for c in STORE_FILES[:1] + STORE_FILES[2:]],
)
def test_run_refuses_a_file_that_is_no_store_before_any_work(tmp_path, what, make, message):
    toy = write_toy(tmp_path / "toy.csv")
    (tmp_path / "s.yaml").write_text(study_text(toy, techniques=LORA, pre="[2]", post="[2]"))
    target = tmp_path / "other.db"
    make(target)
    before, files = sha(target), listing(tmp_path)
    res = subprocess.run(
        cli_args("study", "run", str(tmp_path / "s.yaml"), "--store", str(target), "--no-progress"),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert "host tiny-bert" not in res.stderr  # refused before preparing anything
    assert sha(target) == before and listing(tmp_path) == files


@pytest.mark.parametrize(
    "args,message",
    [
        (["--executor", "bogus"], "unknown executor 'bogus'"),
        (["--address", "127.0.0.1:6379"], "--address is for --executor ray"),
        (["--threads", "0"], "--threads must be >= 1"),
        (["--workers", "-1"], "--workers must be >= 0"),
    ],
)
def test_run_with_a_bad_option_creates_nothing(tmp_path, args, message):
    toy = write_toy(tmp_path / "toy.csv")
    (tmp_path / "s.yaml").write_text(study_text(toy, techniques=LORA, pre="[2]", post="[2]"))
    files = listing(tmp_path)
    res = subprocess.run(
        cli_args(
            "study",
            "run",
            str(tmp_path / "s.yaml"),
            "--store",
            str(tmp_path / "new.sqlite"),
            "--no-progress",
            *args,
        ),
        capture_output=True,
        text=True,
        env=ENV,
        timeout=120,
    )
    assert res.returncode == 2 and message in res.stderr, res.stderr
    assert listing(tmp_path) == files  # no store, no artifacts folder


# --- damaged artifacts ------------------------------------------------------------------------


def _finished(tmp_path):
    toy = write_toy(tmp_path / "toy.csv")
    text = study_text(toy, techniques=LORA, pre="[4]", post="[3]")
    store = tmp_path / "s.sqlite"
    plan, out = run_inline(store, text)
    assert out["done"] == len(plan.units)
    con = db(store)
    metrics = con.execute(
        "SELECT unit_id, step, name, value FROM metrics ORDER BY 1, 2, 3"
    ).fetchall()
    (art,) = con.execute("SELECT * FROM artifacts WHERE kind = 'snapshot'").fetchall()
    return plan, text, store, [tuple(r) for r in metrics], dict(art)


def run_again(store, text, lines, **kw):
    from peftport.study.driver import run_plan
    from peftport.study.executors import InlineExecutor

    st = Store(store)
    try:
        return run_plan(
            st,
            make_plan(parse_study(text, "tiny.yaml")),
            InlineExecutor(),
            progress=False,
            echo=lines.append,
            **kw,
        )
    finally:
        st.close()


def flip_a_byte(folder):
    f = folder / "module.safetensors"
    data = bytearray(f.read_bytes())
    data[-3] ^= 0x10
    f.write_bytes(bytes(data))


def delete_folder(folder):
    import shutil

    shutil.rmtree(folder)


def damage_json(folder):
    meta = json.loads((folder / "module.json").read_text())
    meta["num_tensors"] = meta["num_tensors"] + 1
    (folder / "module.json").write_text(json.dumps(meta))


DAMAGE = [
    ("one byte flipped", flip_a_byte, "sha256"),
    ("folder deleted", delete_folder, "no such module folder"),
    ("metadata edited", damage_json, ""),
]


@pytest.mark.parametrize("what,damage,problem", DAMAGE, ids=[d[0] for d in DAMAGE])
def test_a_damaged_snapshot_of_a_finished_study_is_reported_and_recomputed(
    tmp_path, what, damage, problem
):
    plan, text, store, metrics, art = _finished(tmp_path)
    folder = tmp_path / "s.artifacts" / art["path"]
    damage(folder)
    app = study_app()
    res = runner.invoke(app, ["study", "status", "--store", str(store)])
    assert res.exit_code == 1 and "DAMAGED snapshot" in res.output, res.output
    assert problem in res.output
    if what == "folder deleted":  # the report (from metrics) notices it too, cheaply
        from peftport.cli import app as cli_app

        res = runner.invoke(cli_app, ["report", str(store), "--out", str(tmp_path / "rep")])
        assert res.exit_code == 0 and "missing or damaged" in res.stderr, res.output
    lines = []
    out = run_again(store, text, lines)
    said = [s for s in lines if "is damaged" in s]
    assert len(said) == 1 and f"unit {art['unit_id']} runs again" in said[0], lines
    assert out["done"] == len(plan.units) and out["ran"] == 1  # only its producer ran again
    con = db(store)
    assert [
        tuple(r)
        for r in con.execute("SELECT unit_id, step, name, value FROM metrics ORDER BY 1, 2, 3")
    ] == metrics  # the same bits
    assert (
        dict(con.execute("SELECT * FROM artifacts WHERE kind = 'snapshot'").fetchone())["sha256"]
        == art["sha256"]
    )
    events = [
        r[0]
        for r in con.execute(
            "SELECT event FROM events WHERE unit_id = ? ORDER BY id", (art["unit_id"],)
        )
    ]
    assert events == ["claimed", "done", "recompute", "claimed", "done"]
    res = runner.invoke(app, ["study", "status", "--store", str(store)])
    assert res.exit_code == 0 and "DAMAGED" not in res.output, res.output


def test_a_unit_that_failed_on_its_damaged_input_runs_once_the_input_is_recomputed(tmp_path):
    """The state `--retry-failed` used to fail on forever: a post unit failed because its
    snapshot did not load. The next run (no flag needed) recomputes the snapshot and the failed
    unit runs after it."""
    plan, text, store, metrics, art = _finished(tmp_path)
    con = db(store)
    (post,) = [u for u in plan.units if u.kind == "post" and u.condition == "ported"]
    con.execute(
        "UPDATE units SET status = 'failed', error = 'could not load its input: x', "
        "attempts = 3 WHERE id = ?",
        (post.id,),
    )
    con.execute("DELETE FROM metrics WHERE unit_id = ?", (post.id,))
    con.commit()
    flip_a_byte(tmp_path / "s.artifacts" / art["path"])
    lines = []
    out = run_again(store, text, lines, verify=False)
    assert out["failed"] == 0 and out["done"] == len(plan.units), lines
    assert any("is damaged" in s for s in lines)
    assert [
        tuple(r)
        for r in db(store).execute(
            "SELECT unit_id, step, name, value FROM metrics ORDER BY 1, 2, 3"
        )
    ] == metrics


def test_stage_artifact_never_reuses_a_folder_with_other_content(tmp_path):
    from peftport.module import load_module
    from peftport.study.store import artifact_problem

    plan, text, store, metrics, art = _finished(tmp_path)
    folder = tmp_path / "s.artifacts" / art["path"]
    tensors, meta = load_module(folder)
    tensors = {k: v.clone() for k, v in tensors.items()}  # not views of the file we damage
    flip_a_byte(folder)
    assert artifact_problem(folder, art["sha256"]) is not None
    st = Store(store)
    try:
        digest, rel, size = st.stage_artifact(tensors, meta)
    finally:
        st.close()
    assert (digest, rel) == (art["sha256"], art["path"])
    assert artifact_problem(folder, art["sha256"]) is None
    assert size == art["bytes"]


# --- a worker process dies ----------------------------------------------------------------------


def test_a_dead_worker_charges_only_its_own_unit(tmp_path):
    """`--workers 2`; the worker of the lora pretraining unit SIGKILLs itself on every attempt.
    That unit ends failed after 3 attempts; every other unit (the adapter's, on the surviving
    worker at the same time) runs once, uncharged."""
    toy = write_toy(tmp_path / "toy.csv")
    text = study_text(toy, pre="[6]", post="[3]")
    (tmp_path / "s.yaml").write_text(text)
    plan = make_plan(parse_study(text, "tiny.yaml"))
    (victim,) = [u for u in plan.units if u.kind == "pretrain" and u.technique == "lora"]
    store = tmp_path / "s.sqlite"
    res = subprocess.run(
        cli_args(
            "study",
            "run",
            str(tmp_path / "s.yaml"),
            "--store",
            str(store),
            "--workers",
            "2",
            "--no-progress",
        ),
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENV, "PEFTPORT_TEST_KILL_WORKER_OF": victim.id},
    )
    assert res.returncode == 1, res.stderr[-3000:]
    assert res.stderr.count("worker died") == 3
    con = db(store)
    rows = {r["id"]: r for r in con.execute("SELECT * FROM units")}
    assert rows[victim.id]["status"] == "failed" and rows[victim.id]["attempts"] == 3
    assert "died (killed by signal 9)" in rows[victim.id]["error"]
    lora_posts = {u.id for u in plan.units if u.kind == "post" and u.technique == "lora"}
    for uid, r in rows.items():
        if uid == victim.id:
            continue
        if uid in lora_posts:
            assert (r["status"], r["attempts"]) == ("pending", 0)  # blocked by the victim
        else:
            assert (r["status"], r["attempts"]) == ("done", 1), dict(r)
    charged = {
        r[0]
        for r in con.execute("SELECT unit_id FROM events WHERE event IN ('released', 'failed')")
    }
    assert charged == {victim.id}


# --- two drivers, and a driver killed at chosen moments ---------------------------------------


def _every_unit_done_once(store, plan):
    con = db(store)
    assert {r[0] for r in con.execute("SELECT status FROM units")} == {"done"}
    per_unit = dict(
        con.execute(
            "SELECT unit_id, COUNT(*) FROM events WHERE event = 'done' GROUP BY unit_id"
        ).fetchall()
    )
    assert per_unit == {u.id: 1 for u in plan.units}
    n = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    assert n == sum(u.evals for u in plan.units) * 5  # no metric lost or written twice


def test_two_drivers_on_one_store_run_every_unit_exactly_once(tmp_path):
    toy = write_toy(tmp_path / "toy.csv")
    text = study_text(toy, pre="[4]", post="[3]")
    (tmp_path / "s.yaml").write_text(text)
    plan = make_plan(parse_study(text, "tiny.yaml"))
    store = tmp_path / "s.sqlite"
    args = cli_args(
        "study",
        "run",
        str(tmp_path / "s.yaml"),
        "--store",
        str(store),
        "--workers",
        "1",
        "--no-progress",
    )
    procs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    _every_unit_done_once(store, plan)
    drivers = {
        r[0] for r in db(store).execute("SELECT DISTINCT pid FROM events WHERE event = 'done'")
    }
    assert drivers <= {p.pid for p in procs}


MOMENTS = [
    ("add_plan", "inside the transaction that records the plan"),
    ("claimed", "a unit claimed, not yet handed to a worker"),
    ("submitted", "a unit running in a worker"),
    ("staged", "a unit's artifacts written, not yet in the store"),
    ("finishing", "inside the transaction that commits a unit"),
    ("finished", "right after a unit's commit"),
]


@pytest.mark.parametrize("moment,what", MOMENTS, ids=[m[0] for m in MOMENTS])
def test_a_driver_killed_at_any_moment_then_rerun_runs_every_unit_exactly_once(
    tmp_path, moment, what
):
    from peftport.module import load_module

    toy = write_toy(tmp_path / "toy.csv")
    text = study_text(toy, techniques=LORA, pre="[4]", post="[3]")
    (tmp_path / "s.yaml").write_text(text)
    plan = make_plan(parse_study(text, "tiny.yaml"))
    store = tmp_path / "s.sqlite"
    args = cli_args(
        "study",
        "run",
        str(tmp_path / "s.yaml"),
        "--store",
        str(store),
        "--workers",
        "1",
        "--no-progress",
    )
    res = subprocess.run(
        args,
        capture_output=True,
        text=True,
        timeout=600,
        env={**ENV, "PEFTPORT_TEST_KILL_DRIVER_AT": moment},
    )
    assert res.returncode == -9, res.stderr[-2000:]  # SIGKILLed at that moment
    res = subprocess.run(args, capture_output=True, text=True, timeout=600, env=ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    _every_unit_done_once(store, plan)
    for (path,) in db(store).execute("SELECT path FROM artifacts"):
        load_module(tmp_path / "s.artifacts" / path)  # complete and sha256-checked
    assert list((tmp_path / "s.artifacts" / ".tmp").glob("*")) == []
