"""The study store: one SQLite file (WAL mode) and a folder of content-addressed module artifacts.

    STORE.sqlite        units, their status, metrics per checkpoint, provenance (see schema.py)
    STORE.artifacts/    ab/abcdef.../{module.safetensors,module.json}: snapshots (and, with
                        keep_adapted, adapted modules), addressed by a sha256 of their tensors

The tables (schema version 1) are described in `peftport.study.schema`, which the report reads.

Crash safety: the store is written by the driver only (workers return results). A unit's
metrics, artifacts rows and status change are committed in ONE transaction, and only by the
claim that is still current; artifacts are written to a temporary folder and renamed into place
before that transaction references them. A claim records the driver's host name and pid and a
lease the driver renews; `recover()` returns to pending every running unit whose driver is gone
(same host, pid dead) or whose lease ran out.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sqlite3
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.study.schema import (
    METRIC_NAMES,
    SCHEMA,
    SCHEMA_VERSION,
    cells_have_method,
    foreign_store,
    migrate_cells,
)

LEASE_SECONDS = 120.0


KILL_AT = "PEFTPORT_TEST_KILL_DRIVER_AT"  # tests: SIGKILL the driver at this crash point


def crash_point(moment: str) -> None:
    """A moment where a crash must leave a store the next run recovers (tests kill the driver
    here, `$PEFTPORT_TEST_KILL_DRIVER_AT`; otherwise nothing happens)."""
    if os.environ.get(KILL_AT) == moment:
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (killed, not yet reaped) is gone for our purposes
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def artifacts_root(store_path: str | Path) -> Path:
    p = Path(store_path)
    return (
        p.with_name(p.name.rsplit(".", 1)[0] + ".artifacts")
        if "." in p.name
        else p.with_name(p.name + ".artifacts")
    )


class Store:
    """A study store. One connection per process; the driver is the only writer.

    `readonly=True` (status, export): opened with SQLite's `mode=ro`, never created, changed or
    switched to WAL; a file that is not a peftport store (another application's database, an
    empty file, a newer schema) is refused with what it is. For writing, an existing non-empty
    file must be a peftport store (checked read-only first); a new or empty file becomes one.
    """

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path).expanduser()
        self.readonly = readonly
        if self.path.exists() and self.path.is_dir():
            raise PeftportError(f"{self.path} is a folder; --store takes a .sqlite file")
        self.root = artifacts_root(self.path)
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        if readonly:
            from peftport.report.load import connect_readonly

            self.db = connect_readonly(self.path)  # exists, SQLite, peftport tables, version
            return
        if self.path.exists() and self.path.stat().st_size > 0:
            why = foreign_store(self.path)
            if why:
                raise PeftportError(why)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.row_factory = sqlite3.Row
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA foreign_keys=ON")
            # one transaction: another driver sees all of the schema or none of it
            self.db.executescript("BEGIN IMMEDIATE;\n" + SCHEMA + "\nCOMMIT;")
            if not cells_have_method(self.db):  # a store made before `methods:`
                with self.tx() as db:
                    migrate_cells(db)
        except sqlite3.DatabaseError as e:
            raise PeftportError(f"{self.path}: not a usable study store ({e})") from None
        self._check_schema()

    # --- basics ------------------------------------------------------------------------
    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction (takes the write lock at once; committed or rolled back)."""
        if self.db.in_transaction:  # one an interrupt (a signal's exception) left open
            self.db.execute("ROLLBACK")
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield self.db
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def _check_schema(self) -> None:
        row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            with self.tx() as db:
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
                db.execute(
                    "INSERT OR IGNORE INTO meta VALUES ('created_at', ?)",
                    (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),),
                )
        elif int(row[0]) != SCHEMA_VERSION:
            raise PeftportError(
                f"{self.path}: store schema version {row[0]}; this peftport "
                f"reads version {SCHEMA_VERSION}"
            )

    def close(self) -> None:
        self.db.close()

    def _event(self, db: sqlite3.Connection, unit_id: str, event: str, detail: str = "") -> None:
        db.execute(
            "INSERT INTO events (unit_id, event, at, pid, hostname, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (unit_id, event, time.time(), self.pid, self.hostname, detail[:2000]),
        )

    # --- planning ----------------------------------------------------------------------
    def add_plan(self, plan: Any) -> dict[str, int]:
        """Record a plan's study, units, edges and cells; existing units are left as they are.
        Returns how many units were new and how many of the plan's units are done already."""
        spec = plan.spec
        totals = plan.totals()
        now = time.time()
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO studies VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    spec.id,
                    spec.name,
                    spec.source,
                    json.dumps(spec.canonical()),
                    totals["runs"],
                    len(plan.units),
                    now,
                ),
            )
            before = db.execute("SELECT COUNT(*) FROM units").fetchone()[0]
            db.executemany(
                "INSERT OR IGNORE INTO units (id, kind, label, config, technique, origin, "
                "receiver, pre_data, post_data, seed, condition, pre_steps, steps, horizon, "
                "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        u.id,
                        u.kind,
                        u.label,
                        json.dumps(u.config, sort_keys=True),
                        u.technique,
                        u.origin,
                        u.receiver,
                        u.pre_data,
                        u.post_data,
                        u.seed,
                        u.condition,
                        u.pre_steps,
                        u.steps,
                        u.horizon,
                        now,
                    )
                    for u in plan.units
                ],
            )
            new = db.execute("SELECT COUNT(*) FROM units").fetchone()[0] - before
            db.executemany(
                "INSERT OR IGNORE INTO study_units VALUES (?, ?)",
                [(spec.id, u.id) for u in plan.units],
            )
            producers = {key: (u.id, step) for u in plan.units for step, key in u.produces}
            db.executemany(
                "INSERT OR IGNORE INTO edges VALUES (?, ?, ?, ?)",
                [(u.id, producers[k][0], k, producers[k][1]) for u in plan.units for k in u.needs],
            )
            db.executemany(
                "INSERT OR IGNORE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        spec.id,
                        c.technique,
                        c.origin,
                        c.receiver,
                        c.pre_data,
                        c.post_data,
                        c.seed,
                        c.condition,
                        c.pre_steps,
                        c.post_steps,
                        c.unit_id,
                        c.step,
                        c.method,
                    )
                    for c in plan.cells
                ],
            )
            crash_point("add_plan")  # inside the transaction: none of it is kept
        done = self.count(plan_ids(plan), "done")
        return {"new": new, "done": done, "total": len(plan.units)}

    # --- queries -------------------------------------------------------------------------
    def count(self, ids: list[str] | None, status: str) -> int:
        return sum(1 for r in self.statuses(ids).values() if r == status)

    def statuses(self, ids: list[str] | None = None) -> dict[str, str]:
        rows = self.db.execute("SELECT id, status FROM units").fetchall()
        want = set(ids) if ids is not None else None
        return {r["id"]: r["status"] for r in rows if want is None or r["id"] in want}

    def unit_rows(self, ids: Iterable[str] | None = None) -> list[sqlite3.Row]:
        return self._rows("SELECT * FROM units ORDER BY created_at, id", "id", ids)

    def _rows(self, sql: str, column: str, among: Iterable[str] | None) -> list[sqlite3.Row]:
        """The rows `sql` selects, only those whose `column` is `among` the given values."""
        rows = self.db.execute(sql).fetchall()
        if among is None:
            return rows
        want = set(among)
        return [r for r in rows if r[column] in want]

    def snapshots(self) -> dict[str, sqlite3.Row]:
        return {
            r["key"]: r
            for r in self.db.execute("SELECT * FROM artifacts WHERE kind = 'snapshot'").fetchall()
        }

    def runnable(self, plan: Any, exclude: set[str] = frozenset()) -> list[Any]:
        """Pending units of the plan whose snapshots exist; pretrain units first (they unlock
        others), then the longest."""
        status = self.statuses(plan_ids(plan))
        have = set(self.snapshots())
        ready = [
            u
            for u in plan.units
            if status.get(u.id) == "pending"
            and u.id not in exclude
            and all(k in have for k in u.needs)
        ]
        order = {"pretrain": 0, "post": 1, "random": 2}
        return sorted(ready, key=lambda u: (order[u.kind], -u.steps, u.id))

    def blocked(self, plan: Any) -> list[str]:
        """Pending units whose snapshot can never come: its producer failed (and is not done
        elsewhere)."""
        status = self.statuses(plan_ids(plan))
        have = set(self.snapshots())
        producers = {key: u.id for u in plan.units for _, key in u.produces}
        out = []
        for u in plan.units:
            if status.get(u.id) != "pending":
                continue
            for k in u.needs:
                if k not in have and status.get(producers.get(k, ""), "failed") == "failed":
                    out.append(u.id)
                    break
        return out

    def blocked_among(self, ids: list[str]) -> int:
        """How many of the pending units `ids` wait for a snapshot that can never come (its
        producer failed): `blocked` without the plan, from the store's edges."""
        want = set(ids)
        rows = self.db.execute(
            "SELECT e.unit_id FROM edges e JOIN units p ON p.id = e.depends_on "
            "JOIN units u ON u.id = e.unit_id WHERE p.status = 'failed' AND u.status = 'pending' "
            "AND e.snapshot_key NOT IN (SELECT key FROM artifacts)"
        ).fetchall()
        return len({r[0] for r in rows if r[0] in want})

    def metrics(self, unit_id: str) -> dict[int, dict[str, float]]:
        out: dict[int, dict[str, float]] = {}
        for r in self.db.execute(
            "SELECT step, name, value FROM metrics WHERE unit_id = ? ORDER BY step, name",
            (unit_id,),
        ):
            out.setdefault(r["step"], {})[r["name"]] = r["value"]
        return out

    # --- claims --------------------------------------------------------------------------
    def claim(self, unit_id: str) -> str | None:
        """pending -> running for this driver; returns the claim token, or None if taken."""
        token = uuid.uuid4().hex
        now = time.time()
        with self.tx() as db:
            cur = db.execute(
                "UPDATE units SET status = 'running', claimed_by = ?, hostname = ?, pid = ?, "
                "lease_until = ?, started_at = ?, attempts = attempts + 1, error = NULL "
                "WHERE id = ? AND status = 'pending'",
                (token, self.hostname, self.pid, now + LEASE_SECONDS, now, unit_id),
            )
            if cur.rowcount != 1:
                return None
            self._event(db, unit_id, "claimed", token)
        return token

    def release(
        self, unit_id: str, token: str, why: str, max_attempts: int = 3, charge: bool = True
    ) -> str:
        """Give a claimed unit back (interrupted, or its worker died): pending, or failed when
        it has been tried max_attempts times. `charge=False`: the unit is not to blame (another
        unit's worker died, its input is being recomputed): its claim's attempt is taken back
        and it goes back to pending. Returns the new status."""
        with self.tx() as db:
            row = db.execute(
                "SELECT attempts FROM units WHERE id = ? AND claimed_by = ? AND status = 'running'",
                (unit_id, token),
            ).fetchone()
            if row is None:
                return "gone"
            attempts = row["attempts"] if charge else max(0, row["attempts"] - 1)
            status = "failed" if charge and attempts >= max_attempts else "pending"
            db.execute(
                "UPDATE units SET status = ?, claimed_by = NULL, lease_until = NULL, "
                "error = ?, attempts = ? WHERE id = ?",
                (status, why if status == "failed" else None, attempts, unit_id),
            )
            self._event(db, unit_id, "released" if status == "pending" else "failed", why)
        return status

    def release_mine(self, why: str) -> int:
        """Every unit this process still holds as running goes back to pending, uncharged (a
        driver's last act when it is interrupted: also a claim it had no time to note)."""
        rows = self.db.execute(
            "SELECT id, claimed_by FROM units WHERE status = 'running' AND "
            "hostname = ? AND pid = ?",
            (self.hostname, self.pid),
        ).fetchall()
        return sum(
            self.release(r["id"], r["claimed_by"], why, charge=False) == "pending" for r in rows
        )

    def recover(self) -> list[str]:
        """Running units whose driver is gone (dead pid on this host, or lease run out) go back
        to pending. Returns their ids."""
        now = time.time()
        rows = self.db.execute(
            "SELECT id, hostname, pid, lease_until, claimed_by FROM units WHERE status = 'running'"
        ).fetchall()
        stale = []
        for r in rows:
            mine = r["hostname"] == self.hostname
            if (mine and r["pid"] != self.pid and not pid_alive(r["pid"])) or (
                r["lease_until"] or 0
            ) < now:
                stale.append((r["id"], r["claimed_by"], r["pid"]))
        if stale:
            with self.tx() as db:
                for uid, token, pid in stale:
                    cur = db.execute(
                        "UPDATE units SET status = 'pending', claimed_by = NULL, "
                        "lease_until = NULL WHERE id = ? AND claimed_by = ? AND "
                        "status = 'running'",
                        (uid, token),
                    )
                    if cur.rowcount:
                        self._event(db, uid, "reset", f"driver pid {pid} gone or lease expired")
        self.clean_temporary()
        return [s[0] for s in stale]

    def reset_failed(self, ids: list[str]) -> int:
        with self.tx() as db:
            n = 0
            for uid in ids:
                cur = db.execute(
                    "UPDATE units SET status = 'pending', error = NULL, "
                    "attempts = 0 WHERE id = ? AND status = 'failed'",
                    (uid,),
                )
                if cur.rowcount:
                    n += 1
                    self._event(db, uid, "retry")
        return n

    # --- results -------------------------------------------------------------------------
    def stage_artifact(self, tensors: dict, meta: dict) -> tuple[str, str, int]:
        """Write a module under STORE.artifacts/ab/<digest>/ (a temporary folder, then a rename)
        and return (digest, relative path, bytes). The digest is `tensor_digest` of the tensors
        (the address: the same tensors twice are stored once, the first folder is kept). A
        folder already there is reused only when its content has this digest: a damaged one
        is moved aside and written again."""
        from peftport.atomic import staged_folder
        from peftport.module import save_module

        digest = tensor_digest(tensors)
        rel = f"{digest[:2]}/{digest}"
        final = self.root / rel
        if final.exists() and artifact_problem(final, digest) is not None:
            self._quarantine(final)
        if not (final / "module.json").exists():
            # staged under .tmp/HOST-PID-UUID, which clean_temporary knows when the driver dies;
            # a folder already at `final` is another driver's copy of the same tensors: kept
            stage = self.root / ".tmp" / f"{self.hostname}-{self.pid}-{uuid.uuid4().hex}"
            with staged_folder(final, stage=stage):
                save_module(stage, tensors, meta)
            problem = artifact_problem(final, digest)
            if problem is not None:  # another writer's folder won the rename and is bad
                raise PeftportError(f"artifact {rel}: {problem}")
        size = sum(f.stat().st_size for f in final.iterdir())
        return digest, rel, size

    def _quarantine(self, folder: Path) -> None:
        """Move a damaged artifact folder out of its address (then remove it): the address is
        free for a good copy; a concurrent quarantine by another driver is fine."""
        trash = self.root / ".tmp" / f"{self.hostname}-{self.pid}-{uuid.uuid4().hex}"
        trash.parent.mkdir(parents=True, exist_ok=True)
        try:
            folder.rename(trash)
        except OSError:
            return
        shutil.rmtree(trash, ignore_errors=True)

    # --- damaged artifacts -----------------------------------------------------------------
    def artifact_rows(self, unit_ids: Iterable[str] | None = None) -> list[sqlite3.Row]:
        return self._rows("SELECT * FROM artifacts ORDER BY key", "unit_id", unit_ids)

    def damaged_artifacts(
        self, rows: Iterable[sqlite3.Row], full: bool = True
    ) -> list[dict[str, Any]]:
        """The artifacts among `rows` whose folder is missing or whose content is not what the
        row says (`full`: load it and compare the tensors' sha256; else only that the folder
        is there with the recorded size). One dict per damaged row: key, kind, unit_id,
        step, path, problem."""
        out = []
        for r in rows:
            folder = self.root / r["path"]
            problem = (
                artifact_problem(folder, r["sha256"]) if full else _size_problem(folder, r["bytes"])
            )
            if problem is not None:
                out.append(
                    {
                        "key": r["key"],
                        "kind": r["kind"],
                        "unit_id": r["unit_id"],
                        "step": r["step"],
                        "path": r["path"],
                        "sha256": r["sha256"],
                        "problem": problem,
                    }
                )
        return out

    def needed_snapshots(self, ids: list[str]) -> list[sqlite3.Row]:
        """The snapshot rows that a unit of `ids` still needs (it is not done)."""
        want = set(ids)
        rows = self.db.execute(
            "SELECT DISTINCT a.*, e.unit_id AS needed_by FROM artifacts a JOIN edges e ON "
            "e.snapshot_key = a.key JOIN units u ON u.id = e.unit_id WHERE a.kind = 'snapshot' "
            "AND u.status != 'done'"
        ).fetchall()
        seen: dict[str, sqlite3.Row] = {}
        for r in rows:
            if r["needed_by"] in want:
                seen.setdefault(r["key"], r)
        return list(seen.values())

    def recompute(self, damaged: dict[str, Any]) -> tuple[str, int] | None:
        """Make a damaged artifact recomputable: the done unit that produced it goes back to
        pending (its metrics and artifact rows go: its rerun writes them again, the same bits),
        the folder is moved aside, and units that failed because they could not load it go back
        to pending too. Returns (producer id, units reset besides it), or None when the
        producer is not done (nothing to reset: it is running or will run)."""
        uid = damaged["unit_id"]
        why = f"artifact {damaged['key']} at {damaged['path']}: {damaged['problem']}"
        with self.tx() as db:
            cur = db.execute(
                "UPDATE units SET status = 'pending', attempts = 0, error = NULL, "
                "claimed_by = NULL, lease_until = NULL, finished_at = NULL "
                "WHERE id = ? AND status = 'done'",
                (uid,),
            )
            if cur.rowcount != 1:
                return None
            db.execute("DELETE FROM metrics WHERE unit_id = ?", (uid,))
            db.execute("DELETE FROM predictions WHERE unit_id = ?", (uid,))
            db.execute("DELETE FROM artifacts WHERE unit_id = ?", (uid,))
            self._event(db, uid, "recompute", why)
            dependents = [
                r[0]
                for r in db.execute(
                    "SELECT DISTINCT e.unit_id FROM edges e JOIN units u ON u.id = e.unit_id "
                    "WHERE e.depends_on = ? AND u.status = 'failed' AND "
                    "u.error LIKE 'could not load its input%'",
                    (uid,),
                )
            ]
            for dep in dependents:
                db.execute(
                    "UPDATE units SET status = 'pending', attempts = 0, error = NULL WHERE id = ?",
                    (dep,),
                )
                self._event(db, dep, "retry", f"its input is recomputed ({why})")
        folder = self.root / damaged["path"]
        if folder.exists() and artifact_problem(folder, damaged["sha256"]):
            self._quarantine(folder)
        return uid, len(dependents)

    def clean_temporary(self) -> None:
        """Remove staging folders of drivers that are gone (a killed run's half-written
        artifacts: never referenced, so never used)."""
        tmp_root = self.root / ".tmp"
        if not tmp_root.is_dir():
            return
        for d in tmp_root.iterdir():
            # HOST-PID-UUID, or save_module's own .HOST-PID-UUID.tmp-XXXX beside it
            name = d.name.lstrip(".").split(".tmp-")[0]
            host, _, pid = name.rpartition("-")[0].rpartition("-")
            if (
                host == self.hostname
                and pid.isdigit()
                and int(pid) != self.pid
                and not pid_alive(int(pid))
            ):
                shutil.rmtree(d, ignore_errors=True)

    def finish(
        self,
        unit_id: str,
        token: str,
        result: dict[str, Any],
        artifacts: list[tuple[str, str, int, str, str, int]],
    ) -> bool:
        """Commit a unit's result in one transaction, if the claim is still ours: metrics, the
        artifact rows (key, kind, step, sha256, path, bytes), provenance, status done."""
        now = time.time()
        with self.tx() as db:
            row = db.execute(
                "SELECT started_at FROM units WHERE id = ? AND claimed_by = ? AND "
                "status = 'running'",
                (unit_id, token),
            ).fetchone()
            if row is None:
                return False  # our claim was reset (lease) and someone else has it now
            db.executemany(
                "INSERT INTO metrics VALUES (?, ?, ?, ?)",
                [
                    (unit_id, int(step), name, float(value))
                    for step, m in result["metrics"].items()
                    for name, value in m.items()
                    if name in METRIC_NAMES
                ],
            )
            db.executemany(_PREDICTIONS_SQL, _prediction_rows(unit_id, result))
            db.executemany(
                "INSERT OR IGNORE INTO artifacts VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (key, kind, unit_id, step, sha, rel, size, now)
                    for key, kind, step, sha, rel, size in artifacts
                ],
            )
            extra = {
                k: result.get(k)
                for k in (
                    "losses",
                    "trainable_parameters",
                    "threads",
                    "module_parameters",
                    "environment",
                    "placement",
                )
            }
            if result.get("layer_map") is not None:  # post units ported through a layer map
                extra["layer_map"] = result["layer_map"]
            if result.get("method") is not None:  # a ported unit's method other than copy
                extra["method"] = result["method"]
            db.execute(
                "UPDATE units SET status = 'done', finished_at = ?, seconds = ?, "
                "train_seconds = ?, examples_per_second = ?, trainable_parameters = ?, "
                "worker = ?, versions = ?, git = ?, host_fingerprints = ?, "
                "data_fingerprints = ?, result = ?, lease_until = NULL, error = NULL "
                "WHERE id = ?",
                (
                    now,
                    result.get("seconds"),
                    result.get("train_seconds"),
                    result.get("examples_per_second"),
                    result.get("trainable_parameters"),
                    result.get("worker"),
                    json.dumps(result.get("versions", {})),
                    result.get("git"),
                    json.dumps(result.get("host_fingerprints", {})),
                    json.dumps(result.get("data_fingerprints", {})),
                    json.dumps(extra),
                    unit_id,
                ),
            )
            self._event(db, unit_id, "done", token)
            crash_point("finishing")  # before the commit: the unit runs again
        crash_point("finished")
        return True

    def fail(self, unit_id: str, token: str, error: str) -> bool:
        with self.tx() as db:
            cur = db.execute(
                "UPDATE units SET status = 'failed', error = ?, finished_at = ?, "
                "lease_until = NULL WHERE id = ? AND claimed_by = ? AND "
                "status = 'running'",
                (error, time.time(), unit_id, token),
            )
            if cur.rowcount != 1:
                return False
            self._event(db, unit_id, "failed", error)
        return True

    def artifact_path(self, rel: str) -> Path:
        return self.root / rel

    # --- host comparisons and the pairs' layer maps ---------------------------------------
    def comparison(self, key: str) -> dict[str, Any] | None:
        """A stored comparison (`HostComparison.to_dict()`), or None."""
        row = self.db.execute("SELECT comparison FROM comparisons WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def add_comparison(
        self,
        key: str,
        origin: str,
        receiver: str,
        comparison: dict[str, Any],
        seconds: float | None,
        versions: dict[str, Any],
    ) -> None:
        """Store a comparison (the first one stored under a key stays: they are the same)."""
        with self.tx() as db:
            db.execute(
                "INSERT OR IGNORE INTO comparisons VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    origin,
                    receiver,
                    json.dumps(comparison, sort_keys=True),
                    seconds,
                    json.dumps(versions, sort_keys=True),
                    time.time(),
                ),
            )

    def set_host_pairs(
        self, study_id: str, rows: list[tuple[str, str, str, list[int], str | None]]
    ) -> None:
        """A study's directed pairs: (origin, receiver, strategy, resolved map, comparison key).
        Replaces what an earlier run wrote (a comparison that failed then may exist now)."""
        with self.tx() as db:
            db.executemany(
                "INSERT OR REPLACE INTO host_pairs VALUES (?, ?, ?, ?, ?, ?)",
                [
                    (study_id, o, r, strategy, json.dumps([int(x) for x in layers]), key)
                    for o, r, strategy, layers, key in rows
                ],
            )

    def host_pairs(self, study_id: str) -> list[dict[str, Any]]:
        rows = self.db.execute(
            "SELECT * FROM host_pairs WHERE study_id = ? ORDER BY origin, receiver", (study_id,)
        ).fetchall()
        return [{**dict(r), "layer_map": json.loads(r["layer_map"])} for r in rows]

    # --- reading for status and export -----------------------------------------------------
    def studies(self) -> list[sqlite3.Row]:
        return self.db.execute("SELECT * FROM studies ORDER BY added_at").fetchall()

    def study_unit_ids(self, study_id: str) -> list[str]:
        return [
            r[0]
            for r in self.db.execute(
                "SELECT unit_id FROM study_units WHERE study_id = ?", (study_id,)
            )
        ]

    def results(self, study_id: str | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM results"
        args: tuple = ()
        if study_id is not None:
            sql += " WHERE study_id = ?"
            args = (study_id,)
        sql += (
            " ORDER BY technique, origin, receiver, pre_data, post_data, seed, condition, "
            "pre_steps, post_steps" + (", method" if cells_have_method(self.db) else "")
        )
        return [dict(r) for r in self.db.execute(sql, args).fetchall()]


_PREDICTIONS_SQL = (
    "INSERT OR REPLACE INTO predictions (unit_id, step, evaluated, n, n_classes, "
    "labels, predicted, scores, examples_sha256, dtype) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _prediction_rows(unit_id: str, result: dict[str, Any]) -> list[tuple]:
    """The `predictions` rows of a unit's result: its own evaluations ('') and, for a
    cross-data post unit, its origin module's on the same examples ('origin')."""
    recs = [(int(step), "", r) for step, r in (result.get("predictions") or {}).items()]
    if result.get("origin_predictions"):
        r = result["origin_predictions"]
        recs.append((int(r["step"]), "origin", r))
    return [
        (
            unit_id,
            step,
            what,
            int(r["n"]),
            int(r["n_classes"]),
            r["labels"],
            r["predicted"],
            r["scores"],
            r["examples_sha256"],
            r["dtype"],
        )
        for step, what, r in recs
    ]


def _size_problem(folder: Path, size: int) -> str | None:
    try:
        have = sum(f.stat().st_size for f in folder.iterdir())
    except OSError:
        return "no such module folder"
    return None if have == size else f"{have} bytes on disk, {size} recorded"


def artifact_problem(folder: Path, digest: str) -> str | None:
    """None when `folder` is a module whose tensors have `tensor_digest` `digest`; else what is
    wrong with it (missing, unreadable, failing its own sha256, other tensors)."""
    from peftport.module import load_module

    if not folder.is_dir():
        return "no such module folder"
    try:
        tensors, _ = load_module(folder)
    except Exception as e:  # noqa: BLE001 - any way of being unreadable is damage
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    have = tensor_digest(tensors)
    if have != digest:
        return f"its tensors' sha256 is {have[:12]}..., its address says {digest[:12]}..."
    return None


def tensor_digest(tensors: dict) -> str:
    """sha256 over the tensors' names, dtypes, shapes and bytes, in name order.

    Not the module file's sha256: safetensors writes its metadata in varying order, so equal
    tensors can give different files.
    """
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def plan_ids(plan: Any) -> list[str]:
    return [u.id for u in plan.units]
