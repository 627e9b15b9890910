"""A study's results as a file: one row per study run (and per zero-shot and origin result)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from peftport.atomic import staged_file
from peftport.errors import PeftportError
from peftport.study.plan import CELL_KEY

COLUMNS = (
    "study_id",
    *CELL_KEY,
    "method",  # the porting method of a ported row (copy for every other condition)
    *("accuracy", "macro_f1", "auc", "majority_share", "n"),
    *("unit_id", "step", "kind", "status", "horizon", "seconds", "git"),
)


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with staged_file(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 - pandas' Parquet engine
    except ImportError:
        raise PeftportError(
            "--parquet needs pandas and pyarrow (pip install pandas pyarrow); --csv needs nothing"
        ) from None
    with staged_file(path) as tmp:
        pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(tmp, index=False)


def export_results(
    store_path: Path,
    study_id: str | None,
    *,
    csv_path: Path | None = None,
    parquet_path: Path | None = None,
) -> int:
    """Write the results in the store (of one study, or all) to exactly one of `csv_path` and
    `parquet_path`; returns the number of rows."""
    from peftport.study.store import Store

    if (csv_path is None) == (parquet_path is None):
        raise PeftportError("give exactly one of --csv PATH or --parquet PATH")
    if not store_path.exists():
        raise PeftportError(f"no study store at {store_path}")
    st = Store(store_path, readonly=True)  # export reads: the store stays as it is
    try:
        rows = st.results(study_id)
    finally:
        st.close()
    for r in rows:  # a store made before the `method` column holds copies only
        r.setdefault("method", "copy")
    if parquet_path is not None:
        write_parquet(rows, parquet_path)
    else:
        write_csv(rows, csv_path)  # type: ignore[arg-type]
    return len(rows)
