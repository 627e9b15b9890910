"""`peftport export` and `peftport import`: modules to and from Hugging Face PEFT adapter folders
and AdapterHub adapter folders (see docs/interop.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

FORMAT_HELP = (
    "peft: a Hugging Face PEFT adapter folder (lora, ia3, prefix); adapterhub: an AdapterHub "
    "adapter folder (every technique)."
)
# the longer help texts, so that each option reads on one line
HELP = {
    "export_host": "Check the module against this host first (default: the module's own host; "
    "prefix exports always load it).",
    "import_data": "Data set id or CSV/JSONL file: gives the task name and the label words (and "
    "so the head's number of labels).",
    "any_base": "PEFT: accept a base_model_name_or_path that names another model (tensor shapes "
    "are still checked).",
    "drop_unsupported": "PEFT: drop modules at sites peftport cannot adapt on this host (e.g. "
    "attention.output.dense, the pooler) with a warning naming them and their share of the "
    "module, instead of refusing the folder.",
}


def _files_table(title: str, files: dict[str, int]) -> Table:
    table = Table(title=title)
    table.add_column("file")
    table.add_column("bytes", justify="right")
    for name, size in files.items():
        table.add_row(name, f"{size:,}")
    return table


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export_cmd(
        module: Path = typer.Argument(..., help="A saved module folder."),
        fmt: str = typer.Option(..., "--format", help=FORMAT_HELP),
        out: Path = typer.Option(..., "--out", help="Folder to write."),
        host: str = typer.Option("", "--host", help=HELP["export_host"]),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Export a module as a PEFT or AdapterHub folder that loads with the same outputs."""
        from peftport.interop import export_module, folder_summary

        path = export_module(module, out, fmt, host=host or None, overwrite=force)
        summary = {"format": fmt, **folder_summary(path)}
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        Console().print(
            _files_table(
                f"{module} -> {fmt} ({summary['type']}, {summary['tensors']} tensors)",
                summary["files"],
            )
        )
        how = (
            "peft.PeftModel.from_pretrained(base_model, FOLDER)"
            if fmt == "peft"
            else "model.load_adapter(FOLDER, use_safetensors=True)"
        )
        typer.echo(f"written to {path}; load it with {how}")

    @app.command("import")
    def import_cmd(
        folder: Path = typer.Argument(..., help="A PEFT or AdapterHub adapter folder."),
        fmt: str = typer.Option(..., "--format", help=FORMAT_HELP),
        host: str = typer.Option(..., "--host", help="The host the module is for."),
        data: str = typer.Option(..., "--data", help=HELP["import_data"]),
        out: Path = typer.Option(..., "--out", help="Module folder to write."),
        any_base: bool = typer.Option(False, "--any-base", help=HELP["any_base"]),
        drop_unsupported: bool = typer.Option(
            False, "--drop-unsupported", help=HELP["drop_unsupported"]
        ),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Import a PEFT or AdapterHub folder as a peftport module for a host."""
        import warnings

        from peftport.data import get_dataset
        from peftport.interop import import_module
        from peftport.interop.peft import DroppedSitesWarning
        from peftport.module import read_meta

        spec = get_dataset(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", DroppedSitesWarning)
            path = import_module(
                folder,
                fmt,
                host=host,
                out_dir=out,
                task=spec.id,
                label_words=spec.label_words,
                any_base=any_base,
                overwrite=force,
                drop_unsupported=drop_unsupported,
            )
        for w in caught:  # one plain line each on stderr, not Python's warning format
            if issubclass(w.category, DroppedSitesWarning):
                typer.secho(f"warning: {w.message}", fg=typer.colors.YELLOW, err=True)
            else:
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        meta = read_meta(path)
        summary = {
            "module": str(path),
            "technique": meta["technique"],
            "config": meta["config"],
            "host": meta["origin_host"],
            "task": meta["task"],
            "tensors": meta["num_tensors"],
            "parameters": meta["num_parameters"],
        }
        if as_json:
            typer.echo(json.dumps(summary, indent=2))
            return
        table = Table(title=f"{folder} ({fmt}) -> {path}")
        table.add_column("field")
        table.add_column("value")
        for key, value in summary.items():
            shown = json.dumps(value) if isinstance(value, dict) else str(value)
            table.add_row(key, shown)
        Console().print(table)
