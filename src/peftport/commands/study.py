"""`peftport study`: plan, run, status and export a study (docs/study.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer

from peftport.errors import PeftportError

FILE_ARG = typer.Argument(
    None, help="Study file (.yaml or .toml). Default: the quick preset.", show_default=False
)
PRESET_OPT = typer.Option(
    None,
    "--preset",
    help="A study shipped with peftport, e.g. quick, standard, methods or paper "
    "(`peftport study presets` lists them all).",
)
STORE_OPT = typer.Option(
    None,
    "--store",
    help="Study store (SQLite file). Default: peftport-<study name>.sqlite in the current folder.",
)


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


def _quoted(path: str) -> str:
    import shlex

    return shlex.quote(path)


def _store_path(store: Path | None, spec) -> Path:
    if store is not None:
        return store
    if spec is None:
        raise PeftportError("give --store (or a study file / --preset to find its default store)")
    return Path(f"peftport-{spec.name}.sqlite")


def _check_device(spec, device: str, executor: str) -> str:
    """One PeftportError line if `device`, with each technique's precision, cannot work here;
    else the line saying what they resolve to here (`device.precision_line`)."""
    from peftport.device import precision_line, resolve

    if device != "auto" and executor == "ray":
        raise PeftportError(
            "--device is for the local executor: Ray workers resolve auto on "
            "their own node (the GPU Ray gives them, else CPU)"
        )
    for t in spec.techniques:
        for values in (t.pre, t.post):
            resolve(
                device,
                values.get("precision", "auto"),
                bf16=values.get("bf16", False),
                deterministic=values.get("deterministic", False),
            )
    line = precision_line(device, _precisions(spec))
    return line + ("; Ray workers resolve auto on their own node" if executor == "ray" else "")


def _precisions(spec) -> set[str]:
    """The precisions a study's techniques ask for (the older bf16 switch is bf16)."""
    return {
        "bf16" if v.get("bf16") else v.get("precision", "auto")
        for t in spec.techniques
        for v in (t.pre, t.post)
    }


def _print_status(info: dict[str, Any]) -> None:
    typer.echo(f"store {info['store']} (artifacts in {info['artifacts']})")
    if not info["studies"]:
        typer.echo("  no study planned into this store yet")
    for s in info["studies"]:
        c = s["status"]
        pct = 100 * s["training_steps"]["done"] / max(1, s["training_steps"]["total"])
        parts = [
            f"{c['done']}/{s['units']} units done",
            f"{c['running']} running",
            f"{c['pending']} pending",
            f"{c['failed']} failed",
        ]
        if s["blocked"]:
            parts[2] += f" ({s['blocked']} blocked by a failed unit)"
        if c["not in store"]:
            parts.append(f"{c['not in store']} not in the store yet")
        typer.echo(f"study {s['name']} ({s['id']}): " + ", ".join(parts))
        typer.echo(
            f"  training steps: {s['training_steps']['done']:,} of "
            f"{s['training_steps']['total']:,} ({pct:.0f}%)"
        )
        for kind, ks in sorted(s["by_kind"].items()):
            typer.echo(f"  {kind:<9} " + ", ".join(f"{k} {v}" for k, v in sorted(ks.items())))
        for r in s["running"]:
            since = time.strftime("%H:%M:%S", time.localtime(r["since"])) if r["since"] else "?"
            typer.echo(
                f"  running {r['id']} since {since} (driver pid {r['pid']} on "
                f"{r['hostname']}): {r['label']}"
            )
        for r in s["failed"]:
            first = (r["error"] or "").strip().splitlines()
            typer.echo(f"  FAILED {r['id']} {r['label']}: {first[-1] if first else ''}")
        if s["failed"]:
            typer.echo("  (rerun with --retry-failed; full errors: study status --json)")
        for d in s.get("damaged_artifacts", []):
            typer.echo(
                f"  DAMAGED {d['kind']} {d['path']} (unit {d['unit_id']}, step "
                f"{d['step']}): {d['problem']}"
            )
        if s.get("damaged_artifacts"):
            typer.echo(
                "  (`peftport study run` with this study recomputes them: their units run again)"
            )


def register(app: typer.Typer) -> None:
    study = typer.Typer(
        help="Studies: plan, run, status and export the grid of ported / sampled / random runs.",
        no_args_is_help=True,
    )
    app.add_typer(study, name="study")

    @study.command("plan")
    def plan_cmd(
        file: Path = FILE_ARG,
        preset: str = PRESET_OPT,
        as_json: bool = typer.Option(False, "--json", help="Print JSON (totals and units)."),
        units: bool = typer.Option(True, "--units/--no-units", help="List every unit."),
    ) -> None:
        """Expand a study into shared work units and count runs and training steps."""
        from peftport.device import precision_line
        from peftport.study.plan import describe, make_plan

        spec = _spec(file, preset)
        plan = make_plan(spec)
        if as_json:
            typer.echo(json.dumps(plan.to_json() if units else {"totals": plan.totals()}, indent=2))
        else:
            typer.echo(describe(plan, units=units))
            typer.echo(f"on this machine: {precision_line('auto', _precisions(spec))}")

    @study.command("run")
    def run_cmd(
        file: Path = FILE_ARG,
        preset: str = PRESET_OPT,
        store: Path = STORE_OPT,
        executor: str = typer.Option("local", help="local (worker processes) or ray."),
        workers: int = typer.Option(
            None,
            help="Units at a time. local: worker processes "
            "(default: one per visible GPU x --units-per-gpu, else "
            "cores / threads; 0 = in this process); ray: tasks "
            "(default: the cluster's GPUs / --gpus-per-unit, else its "
            "CPUs / threads).",
        ),
        units_per_gpu: int = typer.Option(
            None,
            "--units-per-gpu",
            help="local: worker "
            "processes per visible GPU (default 1), each pinned "
            "to its GPU by CUDA_VISIBLE_DEVICES.",
        ),
        gpus_per_unit: float = typer.Option(
            None,
            "--gpus-per-unit",
            help="ray: GPUs each "
            "unit asks for, a fraction such as 0.5 packs two "
            "on a GPU (default 1 when the cluster has GPUs, "
            "else CPUs only).",
        ),
        threads: int = typer.Option(1, help="Torch threads per unit (1 is fastest per core)."),
        device: str = typer.Option(
            "auto",
            help="Device of every unit: auto (CUDA, else MPS, "
            "else CPU), cpu, cuda, cuda:N or mps (local executor).",
        ),
        address: str = typer.Option(
            None,
            "--address",
            "--ray-address",
            help="ray: the cluster to join, e.g. HEAD:6379 (default: a local Ray instance).",
        ),
        retry_failed: bool = typer.Option(False, "--retry-failed", help="Run failed units again."),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Progress bar."),
        as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
        verify: bool = typer.Option(
            True,
            "--verify/--no-verify",
            help="Check every artifact "
            "of the study against its sha256 first and recompute a "
            "damaged one (--no-verify: only the snapshots that units "
            "still to run need; the rest by size).",
        ),
    ) -> None:
        """Run every unit of a study that is not done yet (resumable; shared stores are fine;
        a damaged or missing artifact is recomputed by the unit that made it)."""
        from peftport.device import default_device
        from peftport.study.driver import run_study, summary_line

        if file is None and preset is None:
            typer.echo("no study file given: running the quick preset", err=True)
        spec = _spec(file, preset)
        # checked before any host loads or the store is made; what auto chose here is said
        # once the executor's options are checked too (a refused option stays the one line)
        announce = _check_device(spec, device, executor)
        with default_device(device):  # the worker processes started in it inherit it
            out = run_study(
                spec,
                _store_path(store, spec),
                executor=executor,
                workers=workers,
                threads=threads,
                address=address,
                retry_failed=retry_failed,
                progress=progress,
                echo=lambda s: typer.echo(s, err=True),
                verify=verify,
                units_per_gpu=units_per_gpu,
                gpus_per_unit=gpus_per_unit,
                announce=announce,
            )
        typer.echo(json.dumps(out, indent=2) if as_json else summary_line(out))
        if not as_json:
            typer.echo(f"next: peftport report {_quoted(out['store'])}")
        if out["failed"]:
            raise typer.Exit(1)

    @study.command("status")
    def status_cmd(
        file: Path = FILE_ARG,
        preset: str = PRESET_OPT,
        store: Path = STORE_OPT,
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        verify: bool = typer.Option(
            True,
            "--verify/--no-verify",
            help="Check every artifact's "
            "tensors against its sha256 (--no-verify: only that its "
            "folder is there with its size; faster on a large store).",
        ),
    ) -> None:
        """Progress of a study (or of every study in a store). Reads the store only; exits 1
        when an artifact is damaged or missing."""
        from peftport.study.plan import make_plan
        from peftport.study.status import study_status

        spec = _spec(file, preset, default_quick=store is None)
        info = study_status(
            _store_path(store, spec), make_plan(spec) if spec else None, verify=verify
        )
        if as_json:
            typer.echo(json.dumps(info, indent=2))
        else:
            _print_status(info)
        if any(s["damaged_artifacts"] for s in info["studies"]):
            raise typer.Exit(1)

    @study.command("export")
    def export_cmd(
        file: Path = FILE_ARG,
        preset: str = PRESET_OPT,
        store: Path = STORE_OPT,
        csv_path: Path = typer.Option(None, "--csv", help="Write the results as CSV here."),
        parquet_path: Path = typer.Option(
            None, "--parquet", help="Write the results as Parquet here (needs pandas and pyarrow)."
        ),
    ) -> None:
        """Write the results (one row per study run, zero-shot and origin result) to a file."""
        from peftport.study.export import export_results

        spec = _spec(file, preset, default_quick=store is None)
        n = export_results(
            _store_path(store, spec),
            spec.id if spec else None,
            csv_path=csv_path,
            parquet_path=parquet_path,
        )
        out = parquet_path or csv_path
        typer.echo(f"wrote {n} rows to {out}")

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
