"""`peftport report STORE --out DIR`: the paper's figures and tables from a study store."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from peftport.errors import PeftportError


def register(app: typer.Typer) -> None:
    @app.command("report")
    def report(
        store: Path = typer.Argument(
            ..., help="Study store (the .sqlite file `peftport study run --store` writes)."
        ),
        out: Path = typer.Option(
            None,
            "--out",
            help="Folder for the report (index.html, report.md, figures/, tables/). Default: "
            "<store name>-report beside the store.",
        ),
        metric: str = typer.Option(
            "accuracy", "--metric", help="accuracy (the paper's), macro_f1 or auc."
        ),
        study: str = typer.Option(
            None, "--study", help="Report one study of the store (name or id); default: all."
        ),
        open_hint: bool = typer.Option(
            True, "--open-hint/--no-open-hint", help="Say how to open the page."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the written paths as JSON."),
    ) -> None:
        """Write the report of a study: figures (PNG, SVG), tables (Markdown, CSV) and one
        self-contained HTML page. Reads the store only; a running study is reported as it is,
        its missing results shown as missing."""
        from peftport.report import build_report

        if out is None:
            stem = store.name.rsplit(".", 1)[0] if "." in store.name else store.name
            out = store.with_name(f"{stem}-report")
        if out.resolve() == store.resolve():
            raise PeftportError("--out is the store itself; give a folder for the report")
        paths = build_report(store, out, metric=metric, study=study)
        if as_json:
            typer.echo(
                json.dumps(
                    {
                        "html": str(paths.html),
                        "markdown": str(paths.markdown),
                        "json": str(paths.json),
                        "csv": {k: str(v) for k, v in paths.csv.items()},
                        "figures": [[str(a), str(b)] for a, b in paths.figures],
                        "complete": paths.complete,
                    },
                    indent=2,
                )
            )
            return
        _note_damaged(store)
        if not paths.complete:
            typer.echo(
                "note: the study is not complete; missing results are shown as missing "
                "(`peftport study status` says which units)",
                err=True,
            )
        typer.echo(
            f"report of {store} in {paths.out_dir}: {len(paths.figures)} figures (PNG + SVG), "
            f"{len(paths.csv)} CSV tables, {paths.markdown.name}, {paths.html.name}"
        )
        if open_hint:
            typer.echo(f"open it in a browser: {paths.html.resolve().as_uri()}")


def _note_damaged(store: Path) -> None:
    """The report is made from stored metrics, but a missing or resized artifact means the
    store is damaged: say so (a cheap check, folder and size; `study status` checks in full)."""
    from peftport.study.store import Store

    try:
        st = Store(store, readonly=True)
    except PeftportError:
        return
    try:
        bad = st.damaged_artifacts(st.artifact_rows(), full=False)
    finally:
        st.close()
    if bad:
        typer.echo(
            f"note: {len(bad)} artifact(s) of this store are missing or damaged (first: "
            f"{bad[0]['path']}: {bad[0]['problem']}); `peftport study status --store {store}` "
            "lists them and `peftport study run` with the study recomputes them",
            err=True,
        )
