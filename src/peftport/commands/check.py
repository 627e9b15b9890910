"""`peftport check`: before porting, what a module needs against what a host has."""

from __future__ import annotations

import json
from pathlib import Path

import typer

MARK = {"ok": "ok  ", "fixable": "FIX ", "blocking": "NO  ", "note": "note"}


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check_cmd(
        module: Path = typer.Argument(..., help="A saved module folder."),
        to: str = typer.Option(..., "--to", help="Receiving host: id, local folder or hub id."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        store: list[Path] = typer.Option(
            [],
            "--store",
            help="Study store(s) whose retention-against-distance points predict "
            "this port's zero-shot retention (repeatable). Compares the hosts unless a store "
            "holds their comparison.",
        ),
    ) -> None:
        """Say, from configs alone, whether a module ports into a host and what it would take
        (a layer map, --method align) or why nothing can. Loads no weights, trains nothing."""
        from peftport.errors import PeftportError
        from peftport.module import read_meta
        from peftport.precheck import check_port, host_facts, module_is_per_layer, prediction

        meta = read_meta(module)
        words = list(meta.get("label_words") or [])
        host = host_facts(to, words)
        try:  # the origin's heads, vocabulary and label ids, when its config is at hand
            origin = host_facts(meta["origin_host"], words)
        except PeftportError:
            origin = None
        result = check_port(
            meta, host, origin, module=str(module), per_layer=module_is_per_layer(module, meta)
        )
        predicted = prediction(meta, host.id, list(store)) if store and result.portable else None
        if as_json:
            typer.echo(
                json.dumps({**result.to_dict(), "prediction": predicted}, indent=2, default=str)
            )
            if not result.portable:
                raise typer.Exit(1)
            return
        typer.echo(f"{meta['technique']} module from {meta['origin_host']} -> {host.id}")
        for f in result.findings:
            shown = f"{f.module} -> {f.host}" if f.module is not None or f.host is not None else ""
            typer.echo(
                f"  {MARK[f.status]} {f.aspect}: {shown}" + (f"  ({f.say})" if f.say else "")
            )
        typer.echo(result.verdict())
        if predicted is not None:
            typer.echo(_show_prediction(predicted))
        if not result.portable:
            raise typer.Exit(1)


def _show_prediction(p: dict) -> str:
    if p.get("predicted") is None:
        return p["why"]
    extra = " (outside the stored distances: extrapolated)" if p["extrapolated"] else ""
    return (
        f"predicted zero-shot retention {p['predicted']:.2f} (95% prediction interval "
        f"{p['low']:.2f} to {p['high']:.2f}) at CKA distance {p['distance']:.3f}"
        f"{extra}, from {p['pairs']} host pairs; distance: {p['distance_source']}"
    )
