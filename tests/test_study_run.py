"""Running studies: results, resumption, failures, crash safety (SIGKILL), status and export."""

import csv
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
import typer
from typer.testing import CliRunner

from peftport.errors import PeftportError
from peftport.study import make_plan
from peftport.study.driver import run_plan
from peftport.study.executors import InlineExecutor
from peftport.study.spec import parse_study
from peftport.study.store import Store

runner = CliRunner()


def write_toy(path, n=240):
    """A learnable toy task in tiny-bert's vocabulary (its tokenizer knows these words)."""
    pos, neg, fill = (
        ["great", "good", "positive"],
        ["terrible", "bad", "negative"],
        ["the", "movie", "film", "a"],
    )
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["text", "label"])
        for i in range(n):
            label = i % 2
            words = [(pos if label else neg)[i % 3]] + [
                fill[(i * 7 + k) % 4] for k in range(2 + i % 4)
            ]
            w.writerow([" ".join(words[i % 3 :] + words[: i % 3]) + f" {i}", label])
    return path


def study_text(data, *, seeds="[0]", techniques=None, pre="[4, 8]", post="[3, 6]"):
    techniques = techniques or "{lora: {config: {r: 2}}, adapter: {config: {reduction_factor: 4}}}"
    return (
        f"name: tiny\ntechniques: {techniques}\npairs: [[tiny-bert, tiny-bert]]\n"
        f"data: [[{data}, {data}]]\npre_steps: {pre}\npost_steps: {post}\nseeds: {seeds}\n"
        "train: {lr: 1.0e-2, batch_size: 8, max_length: 32, max_eval_examples: 40}\n"
        # host comparisons stay on (the default path) but small: a tiny host is compared in
        # a fraction of a second on 16 texts, against seconds on the default 256
        "compare: {texts: 16, max_length: 16}\n"
    )


@pytest.fixture
def toy(tmp_path):
    return write_toy(tmp_path / "toy.csv")


def run_inline(store_path, text, **kw):
    plan = make_plan(parse_study(text, "tiny.yaml"))
    store = Store(store_path)
    try:
        out = run_plan(
            store, plan, InlineExecutor(), progress=False, **{"echo": lambda s: None, **kw}
        )
    finally:
        store.close()
    return plan, out


def db(path):
    con = sqlite3.connect(path)
    con.row_factory = sqlite3.Row
    return con


def cli_args(*args):
    """`peftport ...` as a subprocess (before `study` is wired into the CLI: its commands)."""
    from peftport import cli

    if "study" in cli.COMMAND_MODULES:
        return [sys.executable, "-m", "peftport", *args]
    code = (
        "import typer; from peftport.commands import study; app = typer.Typer(); "
        "study.register(app); app.callback()(lambda: None); app()"
    )
    return [sys.executable, "-c", code, *args]


def study_app():
    from peftport import cli
    from peftport.commands import study

    if "study" in cli.COMMAND_MODULES:
        return cli.app
    app = typer.Typer()
    study.register(app)
    app.callback()(lambda: None)
    return app


def test_run_records_results_provenance_and_artifacts(tmp_path, toy):
    from peftport.module import load_module

    plan, out = run_inline(tmp_path / "s.sqlite", study_text(toy))
    assert out["done"] == len(plan.units) == 12 and out["failed"] == 0
    con = db(tmp_path / "s.sqlite")
    for u in plan.units:
        steps = {
            r["step"] for r in con.execute("SELECT step FROM metrics WHERE unit_id = ?", (u.id,))
        }
        assert steps == set(u.config["train"]["eval_at"])
        row = con.execute("SELECT * FROM units WHERE id = ?", (u.id,)).fetchone()
        assert row["status"] == "done" and row["seconds"] > 0 and row["git"]
        assert json.loads(row["versions"])["torch"]
        assert json.loads(row["host_fingerprints"])["tiny-bert"]
        assert len(json.loads(row["data_fingerprints"])[str(toy)]) == 64
        assert len(json.loads(row["result"])["losses"]) == u.steps
    results = [dict(r) for r in con.execute("SELECT * FROM results")]
    assert len(results) == len(plan.cells) and all(r["accuracy"] is not None for r in results)
    # the pair, its (identity) layer map and its host comparison, for the report
    (pair,) = con.execute("SELECT * FROM host_pairs").fetchall()
    assert (
        pair["study_id"],
        pair["origin"],
        pair["receiver"],
        pair["strategy"],
        pair["layer_map"],
    ) == (plan.spec.id, "tiny-bert", "tiny-bert", "identity", "[0, 1]")
    comp = con.execute(
        "SELECT * FROM comparisons WHERE key = ?", (pair["comparison_key"],)
    ).fetchone()
    assert json.loads(comp["comparison"])["cka"][0][0] == pytest.approx(1.0)  # a host is itself
    # the snapshots are on disk, content-addressed, and load as modules
    arts = con.execute("SELECT * FROM artifacts").fetchall()
    assert len(arts) == 2 * 2  # two techniques x two pre-porting step counts
    for a in arts:
        assert a["path"] == f"{a['sha256'][:2]}/{a['sha256']}"
        tensors, meta = load_module(tmp_path / "s.artifacts" / a["path"])
        assert meta["steps"] == a["step"] and meta["origin_host"] == "tiny-bert"
    # an identity port (tiny-bert -> tiny-bert) is the origin's module exactly: its zero-shot
    # result equals the origin's own evaluation (same host, same evaluation examples)
    origin = {(r["technique"], r["pre_steps"]): r for r in results if r["condition"] == "origin"}
    for r in results:
        if r["condition"] == "ported" and r["post_steps"] == 0:
            o = origin[(r["technique"], r["pre_steps"])]
            assert (r["accuracy"], r["auc"]) == (o["accuracy"], o["auc"])


def test_rerun_does_nothing_and_a_new_value_runs_only_new_units(tmp_path, toy):
    plan, _ = run_inline(tmp_path / "s.sqlite", study_text(toy))

    def claims() -> list:
        sql = "SELECT unit_id FROM events WHERE event = 'claimed'"
        return db(tmp_path / "s.sqlite").execute(sql).fetchall()

    before = len(claims())
    _, out = run_inline(tmp_path / "s.sqlite", study_text(toy))
    assert out["ran"] == 0 and out["done"] == 12 and len(claims()) == before
    bigger, out = run_inline(tmp_path / "s.sqlite", study_text(toy, seeds="[0, 1]"))
    new = {u.id for u in bigger.units} - {u.id for u in plan.units}
    assert out["ran"] == len(new) == 12 and out["new_units"] == 12
    assert {r[0] for r in claims()[before:]} == new


def test_a_failed_unit_is_recorded_and_the_others_go_on(tmp_path, toy, monkeypatch):
    import peftport.study.units as units

    real = units.execute

    def flaky(payload):
        c = payload["config"]
        if c["kind"] == "pretrain" and c["technique"] == "lora":
            raise RuntimeError("boom in the lora pretraining")
        return real(payload)

    monkeypatch.setattr(units, "execute", flaky)
    plan, out = run_inline(tmp_path / "s.sqlite", study_text(toy))
    assert out["failed"] == 1 and out["blocked"] == 4  # lora's ported/sampled units wait
    assert out["done"] == len(plan.units) - 5
    row = (
        db(tmp_path / "s.sqlite")
        .execute("SELECT error FROM units WHERE status = 'failed'")
        .fetchone()
    )
    assert "boom in the lora pretraining" in row[0] and "Traceback" in row[0]
    res = runner.invoke(
        study_app(), ["study", "status", "--store", str(tmp_path / "s.sqlite"), "--json"]
    )
    info = json.loads(res.output)["studies"][0]
    assert info["status"]["failed"] == 1 and info["blocked"] == 4
    assert "boom" in info["failed"][0]["error"]
    # without --retry-failed nothing changes; with it, everything runs
    monkeypatch.setattr(units, "execute", real)
    _, out = run_inline(tmp_path / "s.sqlite", study_text(toy))
    assert out["ran"] == 0 and out["failed"] == 1
    _, out = run_inline(tmp_path / "s.sqlite", study_text(toy), retry_failed=True)
    assert out["done"] == len(plan.units) and out["failed"] == 0 and out["ran"] == 5


def test_status_and_export(tmp_path, toy):
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(study_text(toy))
    store = tmp_path / "s.sqlite"
    app = study_app()
    res = runner.invoke(app, ["study", "status", str(study_file), "--store", str(store)])
    assert res.exit_code != 0 and "no study store" in str(res.exception)
    plan, _ = run_inline(store, study_text(toy))
    res = runner.invoke(app, ["study", "status", str(study_file), "--store", str(store)])
    assert res.exit_code == 0, res.output
    assert "12/12 units done" in res.output
    res = runner.invoke(
        app, ["study", "export", "--store", str(store), "--csv", str(tmp_path / "r.csv")]
    )
    assert res.exit_code == 0, res.output
    with open(tmp_path / "r.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(plan.cells)
    assert {r["condition"] for r in rows} == {"origin", "ported", "sampled", "random"}
    assert all(0 <= float(r["accuracy"]) <= 1 for r in rows)
    try:
        import pandas  # noqa: F401
        import pyarrow  # noqa: F401
    except ImportError:
        res = runner.invoke(
            app,
            ["study", "export", "--store", str(store), "--parquet", str(tmp_path / "r.parquet")],
        )
        assert "pip install pandas pyarrow" in str(res.exception)
    else:
        res = runner.invoke(
            app,
            ["study", "export", "--store", str(store), "--parquet", str(tmp_path / "r.parquet")],
        )
        assert res.exit_code == 0, res.output
        assert len(pandas.read_parquet(tmp_path / "r.parquet")) == len(plan.cells)
    res = runner.invoke(app, ["study", "export", "--store", str(store)])
    assert "exactly one of --csv" in str(res.exception)


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    from peftport.study.export import write_parquet

    real_import = builtins.__import__

    def no_pyarrow(name, *a, **kw):
        if name == "pyarrow":
            raise ImportError("no pyarrow here")
        return real_import(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(PeftportError, match="pip install pandas pyarrow"):
        write_parquet([], tmp_path / "r.parquet")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_recover_resets_dead_drivers_units_and_drops_half_written_artifacts(tmp_path, toy):
    plan = make_plan(parse_study(study_text(toy), "tiny.yaml"))
    store = Store(tmp_path / "s.sqlite")
    store.add_plan(plan)
    unit = plan.units[0]
    token = store.claim(unit.id)
    assert token is not None and store.claim(unit.id) is None  # a claim is exclusive
    dead = _dead_pid()
    store.db.execute("UPDATE units SET pid = ? WHERE id = ?", (dead, unit.id))
    half = tmp_path / "s.artifacts" / ".tmp" / f"{store.hostname}-{dead}-abc"
    half.mkdir(parents=True)
    (half / "module.safetensors").write_bytes(b"half a module")
    assert store.recover() == [unit.id]
    assert store.statuses([unit.id]) == {unit.id: "pending"} and not half.exists()
    # the dead driver's claim can no longer commit anything
    assert not store.finish(unit.id, token, {"metrics": {0: {"accuracy": 1.0}}}, [])
    assert not store.fail(unit.id, token, "late")
    assert store.metrics(unit.id) == {}
    store.close()


def test_store_errors(tmp_path):
    with pytest.raises(PeftportError, match="is a folder"):
        Store(tmp_path)
    (tmp_path / "junk.sqlite").write_bytes(b"this is not a database, just some bytes" * 100)
    with pytest.raises(PeftportError, match="is not a SQLite database"):
        Store(tmp_path / "junk.sqlite")


def test_sigkill_in_the_middle_then_rerun(tmp_path):
    """A study killed with SIGKILL, run again, ends with every unit done exactly once."""
    from peftport.module import load_module

    toy = write_toy(tmp_path / "toy.csv")
    study_file = tmp_path / "tiny.yaml"
    study_file.write_text(study_text(toy, seeds="[0, 1]", pre="[10, 20]", post="[10, 20]"))
    plan = make_plan(parse_study(study_file.read_text(), "tiny.yaml"))
    store = tmp_path / "s.sqlite"
    args = cli_args(
        "study", "run", str(study_file), "--store", str(store), "--workers", "2", "--no-progress"
    )
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        if store.exists():
            try:
                done = (
                    db(store)
                    .execute("SELECT COUNT(*) FROM units WHERE status = 'done'")
                    .fetchone()[0]
                )
            except sqlite3.OperationalError:
                done = 0  # the schema is being created
            if done >= 3:
                break
        time.sleep(0.05)
    assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    con = db(store)
    running = con.execute("SELECT COUNT(*) FROM units WHERE status = 'running'").fetchone()[0]
    finished = con.execute("SELECT COUNT(*) FROM units WHERE status = 'done'").fetchone()[0]
    assert running >= 1 and finished < len(plan.units)
    time.sleep(0.5)  # the workers die with the driver (PR_SET_PDEATHSIG)

    res = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    assert "back to pending" in res.stderr
    con = db(store)
    assert {r[0] for r in con.execute("SELECT status FROM units")} == {"done"}
    per_unit = dict(
        con.execute(
            "SELECT unit_id, COUNT(*) FROM events WHERE event = 'done' GROUP BY unit_id"
        ).fetchall()
    )
    assert per_unit == {u.id: 1 for u in plan.units}  # done exactly once
    resets = con.execute("SELECT COUNT(*) FROM events WHERE event = 'reset'").fetchone()[0]
    assert resets == running
    n_metrics = con.execute("SELECT COUNT(*) FROM metrics").fetchone()[0]
    assert n_metrics == sum(u.evals for u in plan.units) * 5  # nothing lost or duplicated
    for a in con.execute("SELECT path FROM artifacts"):
        load_module(tmp_path / "s.artifacts" / a[0])  # complete and sha256-checked
    leftovers = list((tmp_path / "s.artifacts" / ".tmp").iterdir())
    assert leftovers == []


@pytest.mark.ray
def test_local_and_ray_executors_give_the_same_results(tmp_path):
    """One code path: the same tiny study on local worker processes and on Ray tasks."""
    ray = pytest.importorskip("ray")
    from peftport.study.executors import LocalExecutor, RayExecutor

    toy = write_toy(tmp_path / "toy.csv")
    plan = make_plan(parse_study(study_text(toy), "tiny.yaml"))
    got = {}
    for name in ("local", "ray"):
        store = Store(tmp_path / f"{name}.sqlite")
        if name == "ray":
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            executor = RayExecutor(workers=2) if name == "ray" else LocalExecutor(2)
            out = run_plan(store, plan, executor, progress=False, echo=lambda s: None)
        finally:
            if name == "ray":
                ray.shutdown()
        assert out["done"] == len(plan.units), out
        got[name] = (
            store.db.execute(
                "SELECT unit_id, step, name, value FROM metrics ORDER BY 1, 2, 3"
            ).fetchall(),
            store.db.execute("SELECT key, sha256 FROM artifacts ORDER BY key").fetchall(),
            store.db.execute("SELECT COUNT(DISTINCT worker) FROM units").fetchone()[0],
        )
        store.close()
    assert [tuple(r) for r in got["local"][0]] == [tuple(r) for r in got["ray"][0]]
    assert [tuple(r) for r in got["local"][1]] == [tuple(r) for r in got["ray"][1]]
    assert got["ray"][2] >= 1


def test_units_give_what_the_cli_path_gives(tmp_path, toy):
    """pretrain == `train_run`; a post unit == `peftport port` then `peftport adapt`; random ==
    `train_run` on the receiver: the study and the CLI run one pipeline, to the last bit."""
    from peftport.data import load_dataset
    from peftport.module import load_module, save_module
    from peftport.porting_io import port_module
    from peftport.runs import adapt_run, train_run
    from peftport.study.units import _train_config, execute

    plan = make_plan(
        parse_study(
            study_text(toy, techniques="{lora: {config: {r: 2}}}", pre="[4]", post="[3]"),
            "tiny.yaml",
        )
    )
    units = {(u.kind, u.condition): u for u in plan.units}
    pre, post, rnd = units["pretrain", None], units["post", "sampled"], units["random", "random"]

    def run(unit, snapshot=None):
        return execute(
            {
                "unit_id": unit.id,
                "config": unit.config,
                "threads": 1,
                "snapshot": snapshot,
                "keep_adapted": False,
                "layer_map": None,
            }
        )

    c = pre.config
    data = load_dataset(c["data"], max_examples=c["max_examples"])
    cli = train_run(
        "tiny-bert",
        "lora",
        data,
        _train_config(c["train"], 1),
        technique_config=c["technique_config"],
        progress=False,
        save_at=(4,),
    )
    got = run(pre)
    assert got["metrics"] == cli.result.metrics
    ((step, (tensors, meta)),) = got["snapshots"].items()
    assert step == 4 and tensors.keys() == cli.snapshots[4].keys()
    assert all(torch.equal(tensors[k], cli.snapshots[4][k]) for k in tensors)

    snap = save_module(tmp_path / "snap", tensors, meta)
    ported, _ = port_module(snap, "tiny-bert", "sampled", post.seed, tmp_path / "ported")
    cfg = _train_config(post.config["train"], 1)
    assert (
        run(post, load_module(snap))["metrics"]
        == adapt_run(ported, "tiny-bert", data, cfg, progress=False).result.metrics
    )
    assert (
        run(rnd)["metrics"]
        == train_run(
            "tiny-bert", "lora", data, cfg, technique_config=c["technique_config"], progress=False
        ).result.metrics
    )
