"""Read a study store for the report: read-only, one consistent snapshot, never a write.

The store is opened with SQLite's `mode=ro` URI, inside one read transaction, so a study that is
still running (WAL mode: the driver keeps writing) is read as it was at one instant. What comes
out is plain data: one `Observation` per study cell (a run's result at one post-porting step, a
zero-shot result or the origin's own accuracy) with the status of the unit that gives it, and the
provenance the units recorded (git revisions, package versions, fingerprints).

A cell whose unit is not done has no value: its `missing` says why (pending, running, failed),
and nothing downstream turns it into a number.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.study.plan import CELL_KEY, Cell  # CELL_KEY: the columns of `cells` naming a result
from peftport.study.schema import SCHEMA_VERSION, cells_have_method
from peftport.study.specmethods import primary_method

METRICS = ("accuracy", "macro_f1", "auc")  # the metrics a report can be made of
REQUIRED_TABLES = ("meta", "studies", "units", "cells", "metrics")
SQLITE_MAGIC = b"SQLite format 3\x00"


@dataclass(frozen=True)
class Observation(Cell):
    """One result of the study: a cell, its unit's status and (when done) its metric value."""

    status: str  # the unit's status: pending | running | done | failed
    value: float | None  # the metric; None unless the unit is done and the metric is stored
    majority_share: float | None = None  # share of the most predicted class (collapse check)
    # the unit's other evaluations at that checkpoint, whatever the report's metric (None when
    # not done or not stored): the report flags modules that did not learn and draws the
    # majority-class line from them
    accuracy: float | None = None
    auc: float | None = None
    macro_f1: float | None = None
    examples: int | None = None  # test examples evaluated (the metric `n`)
    metric: str = "accuracy"  # what `value` is (accuracy: a share of `examples` examples)
    # the evaluation's per-example record (peftport.predictions.Predictions), None when the
    # store has none (older stores): not part of the observation's identity
    predictions: Any = field(default=None, compare=False, repr=False)

    @property
    def missing(self) -> str | None:
        """None when there is a value; else why not (the unit's status, or "no metric")."""
        if self.value is not None:
            return None
        return "no metric" if self.status == "done" else self.status


@dataclass(frozen=True)
class HostPairRecord:
    """One row of `host_pairs`: how a study ported from `origin` into `receiver`, with the host
    comparison it names (a `comparisons` row), both as the store holds them. The JSON is parsed
    and checked by the report (`report.distance`), which says what is wrong with a bad row
    instead of failing the whole report."""

    study_id: str
    origin: str
    receiver: str
    strategy: str  # identity | first_k | stride | cka | explicit
    layer_map: str  # JSON list: receiver layer -> origin layer
    comparison_key: str | None  # None: the study ran without host comparisons
    comparison: str | None  # JSON (HostComparison.to_dict()); None: no such row in the store


@dataclass
class StoreData:
    path: Path
    metric: str
    schema_version: int
    created_at: str
    read_at: str
    studies: list[dict[str, Any]]
    observations: list[Observation]
    unit_status: dict[str, int]  # status -> units (of the studies reported)
    failed_units: list[dict[str, str]]  # id, label, last line of the error
    provenance: dict[str, Any] = field(default_factory=dict)
    # the host pairs of the studies reported; None: the store has no host_pairs table (older)
    host_pairs: list[HostPairRecord] | None = None
    host_pairs_problem: str = ""  # why host_pairs is None, when the table is there but unreadable
    # study id -> the keys (CELL_KEY order) of its cells: the studies' results are united in
    # `observations`, and a per-study section picks its own with this
    study_cells: dict[str, frozenset[tuple]] = field(default_factory=dict)
    # every ported observation of every porting method (`methods:`; `method` says which); the
    # tables above read each study's primary method (copy) as `ported`
    method_observations: list[Observation] = field(default_factory=list)
    # (unit id, step) -> the origin module's Predictions on a cross-data post unit's examples
    origin_predictions: dict[tuple[str, int], Any] = field(default_factory=dict)
    has_predictions: bool = False  # the store has a predictions table (newer stores)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise PeftportError(f"no study store at {path} (make one with `peftport study run`)")
    if path.is_dir():
        raise PeftportError(f"{path} is a folder; give the study store's .sqlite file")
    size = path.stat().st_size
    if size == 0:
        raise PeftportError(
            f"{path} is an empty file, not a peftport study store (make one with "
            "`peftport study run`)"
        )
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise PeftportError(
            f"{path} is not a SQLite database, so not a peftport study store "
            "(a store is the .sqlite file `peftport study run --store` writes)"
        )


def connect_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection that has checked `path` is a peftport study store."""
    path = Path(path).expanduser()
    _check_file(path)
    uri = f"file:{path.resolve().as_posix()}?mode=ro"
    try:
        con = sqlite3.connect(uri, uri=True, timeout=30.0, isolation_level=None)
        con.row_factory = sqlite3.Row
        tables = {
            r[0]
            for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")
        }
    except sqlite3.DatabaseError as e:
        raise PeftportError(f"{path}: cannot read it as a SQLite database ({e})") from None
    lacking = [t for t in REQUIRED_TABLES if t not in tables]
    if lacking:
        con.close()
        have = ", ".join(sorted(tables)) or "none"
        raise PeftportError(
            f"{path} is a SQLite database but not a peftport study store: it lacks the "
            f"table(s) {', '.join(lacking)} (its tables: {have})"
        )
    row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if row is None:
        con.close()
        raise PeftportError(f"{path} is not a peftport study store: no meta.schema_version")
    if str(row[0]) != str(SCHEMA_VERSION):
        con.close()
        raise PeftportError(
            f"{path}: study store schema version {row[0]}; this report reads version "
            f"{SCHEMA_VERSION}"
        )
    return con


def _pick_studies(rows: list[sqlite3.Row], study: str | None, path: Path) -> list[sqlite3.Row]:
    if not rows:
        raise PeftportError(
            f"{path} holds no study yet (nothing has been planned into it): run "
            "`peftport study run --store` first"
        )
    if study is None:
        return rows
    chosen = [r for r in rows if study in (r["id"], r["name"]) or r["id"].startswith(study)]
    if not chosen:
        known = ", ".join(f"{r['name']} ({r['id'][:12]})" for r in rows)
        raise PeftportError(f"no study {study!r} in {path}; it holds: {known}")
    return chosen


def _last_line(text: str | None) -> str:
    lines = [x for x in (text or "").strip().splitlines() if x.strip()]
    return lines[-1].strip()[:300] if lines else ""


def load_store(path: str | Path, metric: str = "accuracy", study: str | None = None) -> StoreData:
    """Everything the report needs from a store, read in one snapshot.

    `study`: a study name or id (prefix) to report on; default: every study in the store (their
    cells are united; two studies that give one cell different units are an error, since their
    settings differ and averaging them would mix two experiments).
    """
    if metric not in METRICS:
        raise PeftportError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    path = Path(path).expanduser()
    con = connect_readonly(path)
    try:
        con.execute("BEGIN")  # one snapshot, even while a driver writes
        meta = {r["key"]: r["value"] for r in con.execute("SELECT key, value FROM meta")}
        studies = _pick_studies(
            con.execute("SELECT * FROM studies ORDER BY added_at, id").fetchall(), study, path
        )
        ids = [s["id"] for s in studies]
        marks = ",".join("?" * len(ids))
        method_col = "method" if cells_have_method(con) else "'copy' AS method"  # older store
        cells = con.execute(
            f"SELECT study_id, {', '.join(CELL_KEY)}, unit_id, step, {method_col} FROM cells "
            f"WHERE study_id IN ({marks})",
            ids,
        ).fetchall()
        unit_ids = sorted(
            {
                r[0]
                for r in con.execute(
                    f"SELECT unit_id FROM study_units WHERE study_id IN ({marks})", ids
                )
            }
            | {c["unit_id"] for c in cells}
        )
        wanted = set(unit_ids)
        units = {r["id"]: r for r in con.execute("SELECT * FROM units") if r["id"] in wanted}
        values: dict[tuple[str, int], dict[str, float | None]] = {}
        for r in con.execute(
            "SELECT unit_id, step, name, value FROM metrics WHERE name IN "
            "(?, 'majority_share', 'accuracy', 'auc', 'macro_f1', 'n')",
            (metric,),
        ):
            values.setdefault((r["unit_id"], r["step"]), {})[r["name"]] = r["value"]
        host_pairs, host_pairs_problem = _host_pairs(con, ids)
        preds, origin_preds, has_preds = _predictions(con, wanted)
        con.execute("COMMIT")
    except sqlite3.DatabaseError as e:
        raise PeftportError(f"{path}: could not read the study store ({e})") from None
    finally:
        con.close()

    observations: dict[tuple, Observation] = {}
    by_method: dict[tuple, Observation] = {}
    primary = {
        s["id"]: primary_method(tuple(_json(s["spec"]).get("methods") or ["copy"])) for s in studies
    }
    for c in cells:
        key = tuple(c[k] for k in CELL_KEY)
        u = units.get(c["unit_id"])
        status = u["status"] if u is not None else "pending"  # planned, unit row not there
        m = values.get((c["unit_id"], c["step"]), {})
        done = status == "done"
        value = m.get(metric) if done else None
        obs = Observation(
            *key,
            unit_id=c["unit_id"],
            step=int(c["step"]),
            status=status,
            value=None if value is None else float(value),
            majority_share=m.get("majority_share") if done else None,
            accuracy=m.get("accuracy") if done else None,
            auc=m.get("auc") if done else None,
            macro_f1=m.get("macro_f1") if done else None,
            examples=int(m["n"]) if done and m.get("n") is not None else None,
            metric=metric,
            method=c["method"],
            predictions=preds.get((c["unit_id"], int(c["step"]))) if done else None,
        )
        if obs.condition == "ported":
            by_method[(*key, obs.method)] = obs
        if obs.method != primary[c["study_id"]]:
            continue  # another method's result: the methods section's
        old = observations.get(key)
        if old is not None and old.unit_id != obs.unit_id:
            names = {s["id"]: s["name"] for s in studies}
            raise PeftportError(
                f"the studies in {path} give one result ({', '.join(map(str, key))}) different "
                f"units: their settings differ; report one of them with --study "
                f"({', '.join(f'{n} ({i[:12]})' for i, n in names.items())})"
            )
        observations[key] = obs

    study_cells: dict[str, set[tuple]] = {}
    for c in cells:
        study_cells.setdefault(c["study_id"], set()).add(tuple(c[k] for k in CELL_KEY))

    status_counts = Counter(units[u]["status"] if u in units else "pending" for u in unit_ids)
    failed = [
        {"id": u["id"], "label": u["label"], "error": _last_line(u["error"])}
        for u in units.values()
        if u["status"] == "failed"
    ]
    return StoreData(
        path=path.resolve(),
        metric=metric,
        schema_version=int(meta.get("schema_version", SCHEMA_VERSION)),
        created_at=meta.get("created_at", ""),
        read_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        studies=[
            {
                "id": s["id"],
                "name": s["name"],
                "source": s["source"],
                "runs": s["runs"],
                "units": s["units"],
                "added_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(s["added_at"])),
                "spec": _json(s["spec"]),
            }
            for s in studies
        ],
        observations=sorted(observations.values(), key=_sort_key),
        unit_status={k: status_counts.get(k, 0) for k in ("done", "running", "pending", "failed")},
        failed_units=sorted(failed, key=lambda f: f["id"]),
        provenance=_provenance(list(units.values())),
        host_pairs=host_pairs,
        host_pairs_problem=host_pairs_problem,
        study_cells={k: frozenset(v) for k, v in study_cells.items()},
        method_observations=sorted(by_method.values(), key=lambda o: (_sort_key(o), o.method)),
        origin_predictions=origin_preds,
        has_predictions=has_preds,
    )


def _predictions(con: sqlite3.Connection, units: set[str]) -> tuple[dict, dict, bool]:
    """The per-example records of the units' evaluations: (own by (unit, step), origin's by
    (unit, step), whether the store has the table). A store made before the table: none."""
    from peftport.predictions import Predictions

    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "predictions" not in tables:
        return {}, {}, False
    own: dict[tuple[str, int], Any] = {}
    origin: dict[tuple[str, int], Any] = {}
    for r in con.execute("SELECT * FROM predictions"):
        if r["unit_id"] in units:
            (origin if r["evaluated"] == "origin" else own)[(r["unit_id"], r["step"])] = (
                Predictions.from_record(r)
            )
    return own, origin, True


def _host_pairs(
    con: sqlite3.Connection, study_ids: list[str]
) -> tuple[list[HostPairRecord] | None, str]:
    """The studies' `host_pairs` rows with their comparison JSON, and a problem ("" if none).

    (None, "") when the store predates the table (later peftports add `host_pairs` and
    `comparisons` with CREATE TABLE IF NOT EXISTS); a `comparisons` table that is not there reads
    as "no comparison row". A host_pairs table of another shape gives (None, why): that section
    of the report is then left out, the rest of the report is unaffected.
    """
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if "host_pairs" not in tables:
        return None, ""
    with_comparisons = "comparisons" in tables
    marks = ",".join("?" * len(study_ids))
    try:
        rows = con.execute(
            "SELECT p.study_id, p.origin, p.receiver, p.strategy, p.layer_map, "
            "p.comparison_key, "
            + ("c.comparison " if with_comparisons else "NULL AS comparison ")
            + "FROM host_pairs p "
            + ("LEFT JOIN comparisons c ON c.key = p.comparison_key " if with_comparisons else "")
            + f"WHERE p.study_id IN ({marks}) ORDER BY p.study_id, p.origin, p.receiver",
            study_ids,
        ).fetchall()
    except sqlite3.OperationalError as e:  # e.g. "no such column": a table of another shape
        return None, f"its host_pairs/comparisons tables cannot be read ({e})"
    names = [f.name for f in fields(HostPairRecord)]  # the query's columns, by name
    return [HostPairRecord(**{k: r[k] for k in names}) for r in rows], ""


def _sort_key(o: Observation) -> tuple:
    return (
        o.technique,
        o.origin,
        o.receiver,
        o.pre_data,
        o.post_data,
        o.condition,
        o.pre_steps,
        o.post_steps,
        o.seed,
    )


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def _provenance(units: list[sqlite3.Row]) -> dict[str, Any]:
    """What the done units recorded: git revisions, package versions, fingerprints, timings."""
    done = [u for u in units if u["status"] == "done"]
    git = Counter(u["git"] or "unknown" for u in done)
    versions: dict[str, Counter] = {}
    hosts: dict[str, set[str]] = {}
    data: dict[str, set[str]] = {}
    for u in done:
        for k, v in _json(u["versions"]).items():
            versions.setdefault(k, Counter())[str(v)] += 1
        for k, v in _json(u["host_fingerprints"]).items():
            hosts.setdefault(k, set()).add(str(v))
        for k, v in _json(u["data_fingerprints"]).items():
            data.setdefault(k, set()).add(str(v))
    # where each done unit computed (units stored before devices existed have no placement)
    precisions = Counter(
        str((_json(u["result"]).get("placement") or {}).get("precision", "not recorded"))
        for u in done
    )
    finished = [u["finished_at"] for u in done if u["finished_at"]]
    started = [u["started_at"] for u in done if u["started_at"]]
    stamp = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    return {
        "git": dict(sorted(git.items())),
        "versions": {k: dict(sorted(c.items())) for k, c in sorted(versions.items())},
        "host_fingerprints": {k: sorted(v) for k, v in sorted(hosts.items())},
        "data_fingerprints": {k: sorted(v) for k, v in sorted(data.items())},
        "unit_seconds": round(sum(u["seconds"] or 0.0 for u in done), 1),
        "first_started": stamp(min(started)) if started else None,
        "last_finished": stamp(max(finished)) if finished else None,
        "workers": len({u["worker"] for u in done if u["worker"]}),
        "precisions": dict(sorted(precisions.items())),
    }


def precision_summary(provenance: dict[str, Any]) -> str:
    """The provenance table's precision row: the warning when precisions mix, else the counts."""
    counts = provenance.get("precisions") or {}
    return precision_warning(provenance) or (
        ", ".join(f"{k} ({n} units)" for k, n in counts.items()) or "–"
    )


def precision_warning(provenance: dict[str, Any]) -> str | None:
    """One line when the done units computed in more than one precision (e.g. `precision: auto`
    on Ray nodes with and without native bf16: the same unit ids, different numbers), else
    None."""
    counts = {
        k: n for k, n in (provenance.get("precisions") or {}).items() if k != "not recorded"
    }  # units from before devices: fp32 or the bf16 switch
    if len(counts) < 2:
        return None
    parts = ", ".join(f"{p} ({n} units)" for p, n in counts.items())
    return (
        f"Warning: the results mix precisions: {parts}; their numbers are not comparable bit "
        "for bit. Pin `precision` in the study's train section and rerun for one precision."
    )
