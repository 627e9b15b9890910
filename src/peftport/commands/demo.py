"""`peftport demo`: the main job on the embedded offline default — the quick study, then its
report. Resumable: run it again after an interruption and only the missing units run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        out: Path = typer.Option(Path("runs/quick"), help="Folder for the store and the report."),
        workers: int = typer.Option(None, help="Worker processes (default: one per core)."),
        preset: str = typer.Option("quick", help="Study preset to run."),
    ) -> None:
        """Run the quick offline study (minilm-l6 <-> minilm-l6-tuned) and write its report."""
        from peftport.report import build_report
        from peftport.study.executors import run_study, summary_line
        from peftport.study.plan import make_plan
        from peftport.study.spec import load_preset

        out.mkdir(parents=True, exist_ok=True)
        spec = load_preset(preset)
        typer.echo(f"study {spec.name}: {make_plan(spec).totals()}", err=True)
        summary = run_study(spec, out / "store.sqlite", workers=workers,
                            echo=lambda s: typer.echo(s, err=True))
        typer.echo(summary_line(summary), err=True)
        paths = build_report(out / "store.sqlite", out / "report")
        typer.echo(f"report written: open {paths.html}")
        if summary["failed"]:
            raise typer.Exit(1)
