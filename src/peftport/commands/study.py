"""`peftport study`: plan, run, status and export a study (docs/study.md)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Any

import typer

from peftport.errors import PeftportError

FILE_ARG = typer.Argument(None, help="Study file (.yaml or .toml). Default: the quick preset.",
                          show_default=False)
PRESET_OPT = typer.Option(None, "--preset", help="A study shipped with peftport: quick, paper, "
                          "crossdepth or drift (`peftport study presets`).")
STORE_OPT = typer.Option(None, "--store", help="Study store (SQLite file). Default: "
                         "peftport-<study name>.sqlite in the current folder.")


def _spec(file: Path | None, preset: str | None, *, default_quick: bool = True):
    from peftport.study.spec import load_preset, load_study

    if file is not None and preset is not None:
        raise PeftportError("give a study file or --preset, not both")
    if file is not None:
        return load_study(file)
    if preset is None:
        if not default_quick:
            return None
        preset = "quick"
    return load_preset(preset)


def _store_path(store: Path | None, spec) -> Path:
    if store is not None:
        return store
    if spec is None:
        raise PeftportError("give --store (or a study file / --preset to find its default "
                            "store)")
    return Path(f"peftport-{spec.name}.sqlite")


def _status(store_path: Path, plan=None) -> dict[str, Any]:
    from peftport.study.store import Store

    if not store_path.exists():
        raise PeftportError(f"no study store at {store_path} (run `peftport study run` first)")
    st = Store(store_path)
    try:
        studies = []
        wanted = [(plan.spec.id, plan.spec.name, [u.id for u in plan.units])] if plan else \
            [(r["id"], r["name"], st.study_unit_ids(r["id"])) for r in st.studies()]
        for sid, name, ids in wanted:
            rows = {r["id"]: r for r in st.unit_rows(ids)}
            counts = {s: 0 for s in ("done", "running", "pending", "failed")}
            counts["not in store"] = 0
            by_kind: dict[str, dict[str, int]] = {}
            steps_done = steps_total = 0
            for uid in ids:
                r = rows.get(uid)
                status = r["status"] if r else "not in store"
                counts[status] += 1
                if r:
                    k = by_kind.setdefault(r["kind"], {})
                    k[status] = k.get(status, 0) + 1
                    steps_total += r["steps"]
                    steps_done += r["steps"] if status == "done" else 0
            blocked = len(st.blocked(plan)) if plan else None
            if plan is None:
                blocked = _blocked_from_rows(st, ids)
            studies.append({
                "id": sid, "name": name, "units": len(ids), "status": counts,
                "by_kind": by_kind, "blocked": blocked,
                "training_steps": {"done": steps_done, "total": steps_total},
                "failed": [{"id": r["id"], "label": r["label"], "error": r["error"]}
                           for r in rows.values() if r["status"] == "failed"],
                "running": [{"id": r["id"], "label": r["label"], "hostname": r["hostname"],
                             "pid": r["pid"], "since": r["started_at"]}
                            for r in rows.values() if r["status"] == "running"],
            })
        return {"store": str(store_path), "artifacts": str(st.root), "studies": studies}
    finally:
        st.close()


def _blocked_from_rows(st, ids: list[str]) -> int:
    want = set(ids)
    rows = st.db.execute(
        "SELECT e.unit_id FROM edges e JOIN units p ON p.id = e.depends_on "
        "JOIN units u ON u.id = e.unit_id WHERE p.status = 'failed' AND u.status = 'pending' "
        "AND e.snapshot_key NOT IN (SELECT key FROM artifacts)").fetchall()
    return len({r[0] for r in rows if r[0] in want})


def _check_device(spec, device: str, executor: str) -> None:
    """One PeftportError line if `device`, with each technique's precision, cannot work here."""
    from peftport.device import resolve

    if device != "auto" and executor == "ray":
        raise PeftportError("--device is for the local executor: Ray workers resolve auto on "
                            "their own node (the GPU Ray gives them, else CPU)")
    for t in spec.techniques:
        for values in (t.pre, t.post):
            resolve(device, values.get("precision", "auto"), bf16=values.get("bf16", False),
                    deterministic=values.get("deterministic", False))


def _print_status(info: dict[str, Any]) -> None:
    typer.echo(f"store {info['store']} (artifacts in {info['artifacts']})")
    if not info["studies"]:
        typer.echo("  no study planned into this store yet")
    for s in info["studies"]:
        c = s["status"]
        pct = 100 * s["training_steps"]["done"] / max(1, s["training_steps"]["total"])
        parts = [f"{c['done']}/{s['units']} units done", f"{c['running']} running",
                 f"{c['pending']} pending", f"{c['failed']} failed"]
        if s["blocked"]:
            parts[2] += f" ({s['blocked']} blocked by a failed unit)"
        if c["not in store"]:
            parts.append(f"{c['not in store']} not in the store yet")
        typer.echo(f"study {s['name']} ({s['id']}): " + ", ".join(parts))
        typer.echo(f"  training steps: {s['training_steps']['done']:,} of "
                   f"{s['training_steps']['total']:,} ({pct:.0f}%)")
        for kind, ks in sorted(s["by_kind"].items()):
            typer.echo(f"  {kind:<9} " + ", ".join(f"{k} {v}" for k, v in sorted(ks.items())))
        for r in s["running"]:
            since = time.strftime("%H:%M:%S", time.localtime(r["since"])) if r["since"] else "?"
            typer.echo(f"  running {r['id']} since {since} (driver pid {r['pid']} on "
                       f"{r['hostname']}): {r['label']}")
        for r in s["failed"]:
            first = (r["error"] or "").strip().splitlines()
            typer.echo(f"  FAILED {r['id']} {r['label']}: {first[-1] if first else ''}")
        if s["failed"]:
            typer.echo("  (rerun with --retry-failed; full errors: study status --json)")


def register(app: typer.Typer) -> None:
    study = typer.Typer(help="Studies: plan, run, status and export the grid of ported / "
                        "sampled / random runs.", no_args_is_help=True)
    app.add_typer(study, name="study")

    @study.command("plan")
    def plan_cmd(
        file: Path = FILE_ARG, preset: str = PRESET_OPT,
        as_json: bool = typer.Option(False, "--json", help="Print JSON (totals and units)."),
        units: bool = typer.Option(True, "--units/--no-units", help="List every unit."),
    ) -> None:
        """Expand a study into shared work units and count runs and training steps."""
        from peftport.study.plan import describe, make_plan

        plan = make_plan(_spec(file, preset))
        if as_json:
            typer.echo(json.dumps(plan.to_json() if units else {"totals": plan.totals()},
                                  indent=2))
        else:
            typer.echo(describe(plan, units=units))

    @study.command("run")
    def run_cmd(
        file: Path = FILE_ARG, preset: str = PRESET_OPT, store: Path = STORE_OPT,
        executor: str = typer.Option("local", help="local (worker processes) or ray."),
        workers: int = typer.Option(None, help="Units at a time. local: worker processes "
                                    "(default: cores / threads; 0 = in this process); ray: "
                                    "tasks (default: the cluster's CPUs / threads)."),
        threads: int = typer.Option(1, help="Torch threads per unit (1 is fastest per core)."),
        device: str = typer.Option("auto", help="Device of every unit: auto (CUDA, else MPS, "
                                   "else CPU), cpu, cuda, cuda:N or mps (local executor)."),
        address: str = typer.Option(None, help="ray: the cluster to join (default: a local "
                                    "Ray instance)."),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed units "
                                          "again."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    ) -> None:
        """Run every unit of a study that is not done yet (resumable; shared stores are fine)."""
        from peftport.device import default_device
        from peftport.study.executors import make_executor, prepare, run_plan
        from peftport.study.plan import make_plan
        from peftport.study.store import Store

        if file is None and preset is None:
            typer.echo("no study file given: running the quick preset", err=True)
        spec = _spec(file, preset)
        _check_device(spec, device, executor)  # before any host loads or the store is made
        if threads < 1:
            raise PeftportError(f"--threads must be >= 1, got {threads}")
        if workers is not None and workers < 0:
            raise PeftportError(f"--workers must be >= 0, got {workers}")
        if address and executor != "ray":
            raise PeftportError("--address is for --executor ray")
        plan = make_plan(spec)
        prepare(plan, lambda s: typer.echo(s, err=True))  # hosts, shapes, data: before anything
        st = Store(_store_path(store, spec))
        try:
            with default_device(device):  # workers started here inherit it
                ex = make_executor(executor, workers, threads, address)
                out = run_plan(st, plan, ex, threads=threads, retry_failed=retry_failed,
                               progress=progress, check_first=False)
        finally:
            st.close()
        out["store"] = str(st.path)
        if as_json:
            typer.echo(json.dumps(out, indent=2))
        else:
            blocked = f" ({out['blocked']} blocked by a failed unit)" if out["blocked"] else ""
            typer.echo(f"study {out['study']}: {out['done']}/{out['units']} units done, "
                       f"{out['failed']} failed, {out['pending']} pending{blocked}; ran "
                       f"{out['ran']} unit(s) in {out['seconds']:.0f} s; store {st.path}")
        if out["failed"]:
            raise typer.Exit(1)

    @study.command("status")
    def status_cmd(
        file: Path = FILE_ARG, preset: str = PRESET_OPT, store: Path = STORE_OPT,
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Progress of a study (or of every study in a store)."""
        from peftport.study.plan import make_plan

        spec = _spec(file, preset, default_quick=store is None)
        info = _status(_store_path(store, spec), make_plan(spec) if spec else None)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            _print_status(info)

    @study.command("export")
    def export_cmd(
        file: Path = FILE_ARG, preset: str = PRESET_OPT, store: Path = STORE_OPT,
        csv_path: Path = typer.Option(None, "--csv", help="Write the results as CSV here."),
        parquet_path: Path = typer.Option(None, "--parquet", help="Write the results as "
                                          "Parquet here (needs pandas and pyarrow)."),
    ) -> None:
        """Write the results (one row per study run, zero-shot and origin result) to a file."""
        from peftport.study.store import Store

        if (csv_path is None) == (parquet_path is None):
            raise PeftportError("give exactly one of --csv PATH or --parquet PATH")
        spec = _spec(file, preset, default_quick=store is None)
        path = _store_path(store, spec)
        if not path.exists():
            raise PeftportError(f"no study store at {path}")
        st = Store(path)
        try:
            rows = st.results(spec.id if spec else None)
        finally:
            st.close()
        if parquet_path is not None:
            write_parquet(rows, parquet_path)
            out = parquet_path
        else:
            write_csv(rows, csv_path)
            out = csv_path
        typer.echo(f"wrote {len(rows)} rows to {out}")

    @study.command("presets")
    def presets_cmd(
        name: str = typer.Argument(None, help="Print this preset's study file."),
    ) -> None:
        """List the presets, or print one (a starting point for your own study file)."""
        from peftport.study.spec import load_preset, preset_names, preset_text

        if name:
            typer.echo(preset_text(name)[0], nl=False)
            return
        names = preset_names()
        width = max(len(n) for n in names)
        for n in names:
            spec = load_preset(n)
            first = spec.description.splitlines()[0] if spec.description else ""
            typer.echo(f"{n:<{width}} {first}")


COLUMNS = ("study_id", "technique", "origin", "receiver", "pre_data", "post_data", "seed",
           "condition", "pre_steps", "post_steps", "accuracy", "macro_f1", "auc",
           "majority_share", "n", "unit_id", "step", "kind", "status", "horizon", "seconds",
           "git")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)


def write_parquet(rows: list[dict[str, Any]], path: Path) -> None:
    try:
        import pandas as pd
        import pyarrow  # noqa: F401 - pandas' Parquet engine
    except ImportError:
        raise PeftportError("--parquet needs pandas and pyarrow (pip install pandas pyarrow); "
                            "--csv needs nothing") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    pd.DataFrame(rows, columns=list(COLUMNS)).to_parquet(tmp, index=False)
    tmp.replace(path)
