"""The study store's SQLite schema: its tables, its version, and whether a file is a store.

Schema (version 1; `meta.schema_version`), which the report reads:

- `meta(key, value)`: schema_version, created_at.
- `studies(id, name, source, spec, runs, units, added_at)`: every study planned into the store;
  `spec` is the canonical study (JSON).
- `units(id, kind, label, config, technique, origin, receiver, pre_data, post_data, seed,
  condition, pre_steps, steps, horizon, status, attempts, error, claimed_by, hostname, pid,
  lease_until, created_at, started_at, finished_at, seconds, train_seconds,
  examples_per_second, trainable_parameters, worker, versions, git, host_fingerprints,
  data_fingerprints, result)`: one row per work unit; `id` is the hash of `config` (canonical
  JSON); status is pending | running | done | failed (with `error`); kind is pretrain | post |
  random; `steps` are the training steps it executes; `pre_steps` is the snapshot's step (post),
  the largest pre-porting step count (pretrain) or 0 (random); `versions`, `host_fingerprints`,
  `data_fingerprints` are JSON; `result` is JSON (losses per step, trainable parameters, threads,
  and for a post unit ported through a layer map, `layer_map`: the resolved map it used).
- `study_units(study_id, unit_id)`: which units a study needs.
- `edges(unit_id, depends_on, snapshot_key, step)`: a post unit needs the snapshot that
  `depends_on` (a pretrain unit) writes at `step`.
- `metrics(unit_id, step, name, value)`: evaluations at each checkpoint step of a unit (names:
  accuracy, macro_f1, auc, majority_share, n); primary key (unit_id, step, name).
- `artifacts(key, kind, unit_id, step, sha256, path, bytes, created_at)`: `key` is a snapshot key
  (kind snapshot) or a unit id (kind adapted); `sha256` is the content address
  (`tensor_digest`: names, dtypes, shapes and bytes of the tensors); `path` is relative to
  STORE.artifacts/ (`ab/<sha256>`, a module folder that `peftport.module.load_module` reads).
- `cells(study_id, technique, origin, receiver, pre_data, post_data, seed, condition, pre_steps,
  post_steps, unit_id, step, method)`: every result of a study (the runs in the paper's sense,
  their zero-shot step 0, and the `origin` accuracy of each snapshot) and the unit step that
  holds it; `method` is the porting method of a ported cell (`methods:`; copy otherwise) and part
  of the key. A store made before the column is migrated when opened for writing
  (`migrate_cells`: its cells become copy, which is what they were); read-only readers take a
  missing column as copy (`cells_have_method`).
- `events(id, unit_id, event, at, pid, hostname, detail)`: an append-only log (claimed, done,
  failed, released, reset, retry, recompute: a done unit's artifact was damaged or missing and
  it runs again): "done exactly once" can be checked.
- view `results`: cells joined with units and metrics, one row per cell, metrics as columns.
- `comparisons(key, origin, receiver, comparison, seconds, versions, created_at)`: one host
  comparison (`peftport.hostcompare.compare_hosts`) per directed pair and settings; `key` is a
  hash of origin, receiver, both hosts' weight fingerprints and the settings (corpus, texts,
  max_length, seed), so it is computed once and reused by every study and rerun; `comparison`
  is `HostComparison.to_dict()` as JSON (linear CKA of block outputs, layers x layers, the
  embeddings' CKA, weight distances); `versions` JSON.
- `host_pairs(study_id, origin, receiver, strategy, layer_map, comparison_key)`: every directed
  pair of a study with its layer map: `strategy` identity | first_k | stride | cka | explicit
  (identity also when the file gives none), `layer_map` the resolved map as a JSON list
  (receiver layer -> origin layer), `comparison_key` -> comparisons.key (NULL when the study
  sets `compare: false`, or its comparison failed and no cka map needed it).

- `predictions(unit_id, step, evaluated, n, n_classes, labels, predicted, scores,
  examples_sha256, dtype)`: the per-example record of every evaluation
  (`peftport.predictions.Predictions`): `evaluated` is '' for the unit's own evaluation at
  `step` (the one `metrics` holds), or 'origin' for the module a cross-data post unit starts
  from, evaluated on its origin host on the unit's (post) data at the snapshot's `step`;
  `labels`, `predicted` (int16) and `scores` (float32: the margin score[1] - score[0] for two
  classes, else n x n_classes) are little-endian numpy bytes, `dtype` names them ("<i2,<f4");
  `examples_sha256` fingerprints the evaluated examples in order (the first n of the split).

The last three tables came after the others, with CREATE TABLE IF NOT EXISTS and no change to the
existing ones: a store made before them opens (still version 1) and gets them, empty until a
`study run` fills them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from peftport.errors import PeftportError

SCHEMA_VERSION = 1
METRIC_NAMES = ("accuracy", "macro_f1", "auc", "majority_share", "n")

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS studies (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, source TEXT, spec TEXT NOT NULL,
    runs INTEGER NOT NULL, units INTEGER NOT NULL, added_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS units (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('pretrain', 'post', 'random')),
    label TEXT NOT NULL, config TEXT NOT NULL,
    technique TEXT NOT NULL, origin TEXT, receiver TEXT, pre_data TEXT, post_data TEXT,
    seed INTEGER NOT NULL, condition TEXT, pre_steps INTEGER, steps INTEGER NOT NULL,
    horizon INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'failed')),
    attempts INTEGER NOT NULL DEFAULT 0, error TEXT,
    claimed_by TEXT, hostname TEXT, pid INTEGER, lease_until REAL,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL,
    seconds REAL, train_seconds REAL, examples_per_second REAL, trainable_parameters INTEGER,
    worker TEXT, versions TEXT, git TEXT, host_fingerprints TEXT, data_fingerprints TEXT,
    result TEXT);
CREATE INDEX IF NOT EXISTS units_status ON units(status);
CREATE TABLE IF NOT EXISTS study_units (
    study_id TEXT NOT NULL, unit_id TEXT NOT NULL, PRIMARY KEY (study_id, unit_id));
CREATE TABLE IF NOT EXISTS edges (
    unit_id TEXT NOT NULL, depends_on TEXT NOT NULL, snapshot_key TEXT NOT NULL,
    step INTEGER NOT NULL, PRIMARY KEY (unit_id, snapshot_key));
CREATE TABLE IF NOT EXISTS metrics (
    unit_id TEXT NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, value REAL,
    PRIMARY KEY (unit_id, step, name));
CREATE TABLE IF NOT EXISTS artifacts (
    key TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('snapshot', 'adapted')),
    unit_id TEXT NOT NULL, step INTEGER NOT NULL, sha256 TEXT NOT NULL, path TEXT NOT NULL,
    bytes INTEGER NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    study_id TEXT NOT NULL, technique TEXT NOT NULL, origin TEXT NOT NULL,
    receiver TEXT NOT NULL, pre_data TEXT NOT NULL, post_data TEXT NOT NULL,
    seed INTEGER NOT NULL, condition TEXT NOT NULL, pre_steps INTEGER NOT NULL,
    post_steps INTEGER NOT NULL, unit_id TEXT NOT NULL, step INTEGER NOT NULL,
    method TEXT NOT NULL DEFAULT 'copy',
    PRIMARY KEY (study_id, technique, origin, receiver, pre_data, post_data, seed, condition,
                 pre_steps, post_steps, method));
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, unit_id TEXT NOT NULL, event TEXT NOT NULL,
    at REAL NOT NULL, pid INTEGER, hostname TEXT, detail TEXT);
CREATE TABLE IF NOT EXISTS comparisons (
    key TEXT PRIMARY KEY, origin TEXT NOT NULL, receiver TEXT NOT NULL,
    comparison TEXT NOT NULL,
    seconds REAL, versions TEXT, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS host_pairs (
    study_id TEXT NOT NULL, origin TEXT NOT NULL, receiver TEXT NOT NULL,
    strategy TEXT NOT NULL,
    layer_map TEXT NOT NULL,
    comparison_key TEXT,
    PRIMARY KEY (study_id, origin, receiver));
CREATE TABLE IF NOT EXISTS predictions (
    unit_id TEXT NOT NULL, step INTEGER NOT NULL, evaluated TEXT NOT NULL DEFAULT '',
    n INTEGER NOT NULL, n_classes INTEGER NOT NULL, labels BLOB NOT NULL,
    predicted BLOB NOT NULL, scores BLOB NOT NULL, examples_sha256 TEXT NOT NULL,
    dtype TEXT NOT NULL,
    PRIMARY KEY (unit_id, step, evaluated));
CREATE VIEW IF NOT EXISTS results AS
SELECT c.study_id, c.technique, c.origin, c.receiver, c.pre_data, c.post_data, c.seed,
       c.condition, c.pre_steps, c.post_steps, c.unit_id, c.step, c.method, u.kind, u.status,
       MAX(CASE WHEN m.name = 'accuracy' THEN m.value END) AS accuracy,
       MAX(CASE WHEN m.name = 'macro_f1' THEN m.value END) AS macro_f1,
       MAX(CASE WHEN m.name = 'auc' THEN m.value END) AS auc,
       MAX(CASE WHEN m.name = 'majority_share' THEN m.value END) AS majority_share,
       MAX(CASE WHEN m.name = 'n' THEN m.value END) AS n,
       u.horizon, u.seconds, u.git
FROM cells c JOIN units u ON u.id = c.unit_id
LEFT JOIN metrics m ON m.unit_id = c.unit_id AND m.step = c.step
GROUP BY c.study_id, c.technique, c.origin, c.receiver, c.pre_data, c.post_data, c.seed,
         c.condition, c.pre_steps, c.post_steps, c.method;
"""


PEFTPORT_TABLES = frozenset(
    {
        "meta",
        "studies",
        "units",
        "study_units",
        "edges",
        "metrics",
        "artifacts",
        "cells",
        "events",
        "comparisons",
        "host_pairs",
        "results",
        "sqlite_sequence",
        "predictions",
    }
)


def foreign_store(path: Path) -> str | None:
    """Why the existing, non-empty file `path` must not be turned into a store (read without
    writing: SQLite's `mode=ro`), or None when it is a peftport store (or one being created by
    another driver: only peftport's tables, or none yet)."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head != b"SQLite format 3\x00":
        return f"{path} is not a SQLite database, so not a peftport study store"
    try:
        con = sqlite3.connect(f"file:{path.resolve().as_posix()}?mode=ro", uri=True, timeout=60.0)
        try:
            names = {
                r[0]
                for r in con.execute(
                    "SELECT name FROM sqlite_master WHERE type IN ('table', 'view')"
                )
            }
            version = None
            if "meta" in names:
                row = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                version = row[0] if row else None
        finally:
            con.close()
    except sqlite3.DatabaseError as e:
        return f"{path}: cannot read it as a SQLite database ({e})"
    other = sorted(names - PEFTPORT_TABLES)
    if other:
        return (
            f"{path} is a SQLite database of another application, not a peftport study "
            f"store (its tables: {', '.join(other[:8])}); give a new file to --store"
        )
    if version is not None and str(version) != str(SCHEMA_VERSION):
        return (
            f"{path}: study store schema version {version}; this peftport reads version "
            f"{SCHEMA_VERSION} (a newer peftport made it)"
        )
    return None


# The `cells` table as it was before `method` (same columns in the same order, without it).
_CELLS_COLUMNS = (
    "study_id, technique, origin, receiver, pre_data, post_data, seed, condition, "
    "pre_steps, post_steps, unit_id, step"
)


def cells_have_method(con: sqlite3.Connection) -> bool:
    """Whether this store's `cells` table has the `method` column (stores made before it do
    not: every one of their cells is a copy)."""
    return any(r[1] == "method" for r in con.execute("PRAGMA table_info(cells)"))


def migrate_cells(con: sqlite3.Connection) -> bool:
    """Give an older store's `cells` the `method` column (inside the caller's write
    transaction). The key changes too, which ALTER TABLE cannot do: the table is rebuilt, its
    rows kept as copy, and the `results` view made again over it. True if it migrated."""
    if cells_have_method(con):
        return False
    con.execute("DROP VIEW IF EXISTS results")
    con.execute("ALTER TABLE cells RENAME TO cells_before_method")
    create = SCHEMA.split("CREATE TABLE IF NOT EXISTS cells (")[1].split(";")[0]
    con.execute("CREATE TABLE cells (" + create)
    con.execute(
        f"INSERT INTO cells ({_CELLS_COLUMNS}, method) SELECT {_CELLS_COLUMNS}, 'copy' "
        "FROM cells_before_method"
    )
    con.execute("DROP TABLE cells_before_method")
    con.execute(
        "CREATE VIEW results AS"
        + SCHEMA.split("CREATE VIEW IF NOT EXISTS results AS")[1].split(";")[0]
    )
    return True


def check_store_file(path: Path) -> None:
    """Refuse a --store that exists and is not a peftport store (read-only check)."""
    path = path.expanduser()
    if path.is_dir():
        raise PeftportError(f"{path} is a folder; --store takes a .sqlite file")
    if path.exists() and path.stat().st_size > 0:
        why = foreign_store(path)
        if why:
            raise PeftportError(why)
