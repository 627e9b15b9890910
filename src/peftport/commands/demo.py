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
        from peftport.study.executors import make_executor, run_plan
        from peftport.study.plan import make_plan
        from peftport.study.spec import load_preset
        from peftport.study.store import Store

        out.mkdir(parents=True, exist_ok=True)
        spec = load_preset(preset)
        plan = make_plan(spec)
        totals = plan.totals()
        typer.echo(f"study {spec.name}: {totals}", err=True)
        store_path = out / "store.sqlite"
        st = Store(store_path)
        try:
            summary = run_plan(st, plan, make_executor("local", workers, 1, None), threads=1)
        finally:
            st.close()
        typer.echo(f"study {summary['study']}: {summary['done']}/{summary['units']} units done, "
                   f"{summary['failed']} failed, in {summary['seconds']:.0f} s; store "
                   f"{store_path}", err=True)
        paths = build_report(store_path, out / "report")
        typer.echo(f"report written: open {paths.html}")
        if summary["failed"]:
            raise typer.Exit(1)
