"""`peftport data`: list the data sets and show one's splits, balance and fingerprints."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def register(app: typer.Typer) -> None:
    data = typer.Typer(help="Data sets: list, show.", no_args_is_help=True)
    app.add_typer(data, name="data")

    @data.command("list")
    def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """One line per data set: id, offline availability, description, sources in order."""
        from peftport.data import DATASETS, UNLABELLED

        rows = [
            dict(
                id=s.id,
                kind="labelled",
                offline=s.offline_available,
                description=s.description,
                sources=[src.short() for src in s.sources],
            )
            for _, s in DATASETS.items()
        ]
        rows += [
            dict(
                id=s.id,
                kind="unlabelled",
                offline=True,
                description=s.description,
                sources=[src.short() for src in s.sources],
            )
            for _, s in UNLABELLED.items()
        ]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        width = max(len(r["id"]) for r in rows)
        for r in rows:
            tag = " (unlabelled)" if r["kind"] == "unlabelled" else ""
            typer.echo(
                f"{r['id']:<{width}}  offline: {'yes' if r['offline'] else 'no ':<3}  "
                f"{r['description']}{tag}  [sources: {' > '.join(r['sources'])}]"
            )
        typer.echo("(a path to a CSV/TSV/JSONL file with columns text,label also works as an id)")

    @data.command("show")
    def show(
        dataset: str = typer.Argument(..., help="Data set id, or a CSV/JSONL file path."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        max_examples: int | None = typer.Option(
            None, "--max-examples", help="Keep at most N examples per split."
        ),
    ) -> None:
        """Load a data set and print its split sizes, balance, fingerprints and source."""
        from peftport.data import SPLITS, UNLABELLED, load_dataset, summary, unlabelled_texts

        if dataset in UNLABELLED:
            texts = unlabelled_texts(dataset)
            info = {
                "id": dataset,
                "kind": "unlabelled",
                "texts": len(texts),
                "words": sum(len(t.split()) for t in texts),
                "description": UNLABELLED.get(dataset).description,
            }
            if as_json:
                typer.echo(json.dumps(info, indent=2))
            else:
                console.print(
                    f"unlabelled corpus [bold]{dataset}[/bold]: {info['texts']:,} "
                    f"texts, {info['words']:,} words. {info['description']}"
                )
            return
        s = summary(load_dataset(dataset, max_examples=max_examples))
        if as_json:
            typer.echo(json.dumps(s, indent=2, ensure_ascii=False))
            return
        names = s["label_names"]
        table = Table(title=f"data set {s['id']}")
        table.add_column("split")
        table.add_column("examples", justify="right")
        for n in names:
            table.add_column(n, justify="right")
        table.add_column(f"% {names[-1]}", justify="right")
        table.add_column("fingerprint (sha256)", overflow="fold")
        for split in SPLITS:
            info = s["splits"][split]
            table.add_row(
                split,
                f"{info['size']:,}",
                *[f"{info['balance'][n]:,}" for n in names],
                f"{100 * info['fraction'][names[-1]]:.1f}",
                info["fingerprint"][:16],
            )
        console.print(table)
        console.print(f"source used: {s['source']}", highlight=False)
        for skipped in s["skipped_sources"]:
            console.print(f"  skipped: {skipped}", highlight=False)
        console.print(f"split: {s['split_method']}", highlight=False)
        console.print(f"label words: {', '.join(s['label_words'])}", highlight=False)
        console.print(f"fingerprint: {s['fingerprint']}", highlight=False)
        dropped = {k: v for k, v in s["stats"].items() if k.startswith("dropped")}
        if dropped:
            console.print(
                "rows read: "
                + f"{s['stats'].get('rows read', 0):,}; "
                + "; ".join(f"{k.removeprefix('dropped: ')}: {v:,}" for k, v in dropped.items())
                + " (dropped)",
                highlight=False,
            )
        if s["notes"]:
            console.print(s["notes"], highlight=False)
