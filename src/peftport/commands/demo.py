"""`peftport demo`: the main job on the embedded offline default — the quick study, then its
report. Resumable: run it again after an interruption and only the missing units run."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import typer

# measured over the whole quick study on a 2-core Xeon (docs/study.md): 29 min 25 s x 2 workers
# for 10,800 training steps, so evaluation, unit start-up and store writes are included
SECONDS_PER_STEP = 0.33


def plan_summary(totals: dict[str, Any], workers: int) -> str:
    """One line for a person: units, steps, evaluations and a rough time."""
    from peftport.progress import format_duration

    u = totals["units"]
    steps = totals["training_steps"]["shared"]
    kinds = ", ".join(f"{u[k]} {k}" for k in ("pretrain", "post", "random") if u.get(k))
    guess = format_duration(steps * SECONDS_PER_STEP / max(1, workers))
    return (
        f"study {totals['study']}: {u['total']} units ({kinds}), {steps:,} training steps, "
        f"{totals['evaluations']:,} evaluations, {totals['runs']:,} runs; about {guess} with "
        f"{workers} worker(s) at ~{SECONDS_PER_STEP} CPU-seconds per training step, evaluation "
        "included (a first run also builds its hosts and data: more)"
    )


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/quick"), help="Folder for the store and the report."),
        workers: int = typer.Option(None, help="Worker processes (default: one per core)."),
        preset: str = typer.Option("quick", help="Study preset to run."),
        as_json: bool = typer.Option(
            False,
            "--json",
            help="Print the plan's totals, the run's "
            "summary and the report's path as one JSON object.",
        ),
    ) -> None:
        """Run the quick offline study (minilm-l6 <-> minilm-l6-tuned) and write its report."""
        from peftport.report import build_report
        from peftport.study.driver import run_study, summary_line
        from peftport.study.plan import make_plan
        from peftport.study.spec import load_preset

        out.mkdir(parents=True, exist_ok=True)
        spec = load_preset(preset)
        totals = make_plan(spec).totals()
        typer.echo(plan_summary(totals, workers or max(1, os.cpu_count() or 1)), err=True)
        summary = run_study(
            spec, out / "store.sqlite", workers=workers, echo=lambda s: typer.echo(s, err=True)
        )
        typer.echo(summary_line(summary), err=True)
        paths = build_report(out / "store.sqlite", out / "report")
        if as_json:
            typer.echo(
                json.dumps(
                    {"plan": totals, "summary": summary, "report": str(paths.html)}, indent=2
                )
            )
        else:
            typer.echo(f"report written: open {paths.html}")
        if summary["failed"]:
            raise typer.Exit(1)
