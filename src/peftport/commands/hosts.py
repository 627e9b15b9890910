"""`peftport hosts`: list, show, derive and compare pretrained hosts."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from peftport.atomic import write_bytes
from peftport.errors import PeftportError

console = Console()


def _sources(spec) -> str:
    return "; ".join(s.describe() for s in spec.sources)


def register(app: typer.Typer) -> None:
    from peftport.configfields import typer_options
    from peftport.configs import CompareSettings
    from peftport.hosts.derive import DeriveConfig

    hosts = typer.Typer(help="Pretrained hosts: list, show, derive, compare.", no_args_is_help=True)
    app.add_typer(hosts, name="hosts")

    @hosts.command("list")
    def list_(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
        """List the built-in and user-derived hosts (any hub id or local folder works too)."""
        from peftport.hosts import HOSTS, user_derived_hosts

        specs = [spec for _, spec in HOSTS.items()] + user_derived_hosts()
        rows = [
            dict(
                id=s.id,
                family=s.family,
                kind=s.kind,
                parent=s.parent,
                description=s.description,
                sources=_sources(s),
            )
            for s in specs
        ]
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        table = Table(
            title="hosts (also: any local checkpoint folder, or a hub id owner/name); "
            "`peftport hosts show ID` gives sources and shapes"
        )
        for col in ("id", "kind", "description"):
            table.add_column(col, overflow="fold")
        for r in rows:
            table.add_row(r["id"], r["kind"], r["description"])
        console.print(table)

    @hosts.command("show")
    def show(
        host: str = typer.Argument(..., help="Host id, local folder or hub id."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Load a host and print its shape, parameter count, fingerprint and origin."""
        from peftport.hosts import load_host
        from peftport.hosts.derive import read_drift

        h = load_host(host)
        cfg = h.model.config
        lay = h.layout
        info = {
            "id": h.spec.id,
            "family": h.spec.family,
            "kind": h.kind,
            "description": h.spec.description,
            "layers": getattr(cfg, lay.num_layers_key),
            "hidden": getattr(cfg, lay.hidden_key),
            "parameters": h.num_parameters(),
            "vocab": cfg.vocab_size,
            "folder": str(h.folder),
            "fingerprint": h.fingerprint,
            "sources": [s.describe() for s in h.spec.sources],
            "parent": h.spec.parent,
        }
        drift = read_drift(h.folder)
        if drift:
            info["derivation"] = drift["config"]
            info["drift"] = drift["drift"]
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        table = Table(title=f"host {h.spec.id}", show_header=False)
        table.add_column("field")
        table.add_column("value", overflow="fold")
        for k, v in info.items():
            if k in ("drift", "derivation"):
                continue
            table.add_row(k, f"{v:,}" if isinstance(v, int) else str(v))
        console.print(table)
        if drift:
            console.print(
                f"derived from {drift['config']['parent']} by masked-LM on "
                f"{drift['config']['corpus']}: {drift['config']['steps']} steps at lr "
                f"{drift['config']['lr']}, seed {drift['config']['seed']}"
            )
            _print_drift(drift["drift"])

    @hosts.command("derive")
    @typer_options(DeriveConfig)
    def derive(
        name: str = typer.Option(..., "--name", help="Id for the new host."),
        *,
        settings: dict[str, Any],
    ) -> None:
        """Derive a same-shape receiving host by continued masked-LM training (cached)."""
        from peftport.hosts import derived_recipe, get_host
        from peftport.hosts.derive import install_derived_host, read_drift

        kw = dict(settings)
        parent_spec = get_host(kw.pop("parent"))
        recipe = derived_recipe(name, parent_spec.id, **kw)
        target = install_derived_host(
            name, recipe, parent_spec, echo=lambda s: console.print(s, markup=False)
        )
        drift = read_drift(target)
        console.print(f"host [bold]{name}[/bold] ready at {target}", highlight=False)
        if drift:
            _print_drift(drift["drift"])

    @hosts.command("compare")
    @typer_options(CompareSettings)
    def compare(
        origin: str = typer.Argument(..., help="Origin host: id, local folder or hub id."),
        receiver: str = typer.Argument(..., help="Receiving host (same family)."),
        plot: Path | None = typer.Option(
            None, "--plot", help="Also write a PNG: CKA heatmap and weight-distance bars."
        ),
        as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
        *,
        settings: dict[str, Any],
    ) -> None:
        """Compare two hosts layer by layer: weight distance where shapes match, linear CKA of
        hidden states on a text sample, and the layer maps for porting between them."""
        from peftport.hostcompare import compare_cached, render_comparison_png

        if plot is not None and plot.suffix.lower() != ".png":
            raise PeftportError(f"--plot {plot}: the figure is a PNG; name it *.png")
        c, _ = compare_cached(origin, receiver, CompareSettings(**settings), progress=True)
        if plot is not None:
            write_bytes(plot, render_comparison_png(c))
        if as_json:
            typer.echo(json.dumps(c.to_dict(), indent=2))
            if plot is not None:
                typer.echo(f"wrote {plot}", err=True)  # stdout stays pure JSON
            return
        _print_comparison(c)
        if plot is not None:
            console.print(f"wrote {plot}")


def _fmt(v: float, digits: int = 3) -> str:
    return f"{v:.{digits}f}" if math.isfinite(v) else "n/a"


def _print_comparison(c) -> None:
    from peftport.hostcompare import LAYER_MAP_STRATEGIES, ordered_groups

    console.print(
        f"[bold]{c.origin}[/bold] ({c.origin_layers} layers) -> [bold]{c.receiver}[/bold] "
        f"({c.receiver_layers} layers), stack {c.stack}; {c.texts} texts of {c.corpus}, "
        f"max length {c.max_length}, seed {c.seed}, features: {c.features}"
    )
    table = Table(title="weight distance (where shapes match)")
    table.add_column("part")
    table.add_column("distance", justify="right")
    for group in ordered_groups(c.weight_distance):
        table.add_row(group, _fmt(c.weight_distance[group], 4))
    if not c.weight_distance:
        table.add_row("(none)", "no tensor has the same name and shape on both")
    table.caption = (
        f"||receiver - origin|| / ||origin||; {c.weight_compared} tensors compared, "
        f"{c.weight_skipped} skipped (shape differs or only in one host)"
    )
    console.print(table)

    cka = Table(title="linear CKA (rows: origin layer, columns: receiver layer)")
    cka.add_column("origin \\ receiver")
    for col in ["emb"] + [str(j) for j in range(c.receiver_layers)]:
        cka.add_column(col, justify="right")
    nan = [math.nan]
    for i, name in enumerate(["emb"] + [str(k) for k in range(c.origin_layers)]):
        if c.cka_full:
            row = list(c.cka_full[i])
        elif i == 0:  # a comparison without its borders (older JSON): the corner alone
            row = [c.embedding_cka] + nan * c.receiver_layers
        else:
            row = nan + list(c.cka[i - 1])
        cka.add_row(name, *(_fmt(v) for v in row))
    console.print(cka)

    maps = Table(title="layer maps (receiver <- origin)")
    maps.add_column("strategy")
    maps.add_column("map")
    maps.add_column("distance", justify="right")
    for strategy in LAYER_MAP_STRATEGIES:
        try:
            m = c.layer_map(strategy)
        except PeftportError:
            continue  # identity / first_k do not fit these depths
        maps.add_row(strategy, " ".join(f"{j}<-{o}" for j, o in enumerate(m)), _fmt(c.distance(m)))
    maps.caption = "distance: 1 - mean CKA of the pairs"
    console.print(maps)
    console.print(
        f"summary distance (stride map): [bold]{_fmt(c.distance())}[/bold]; "
        f"embedding CKA {_fmt(c.embedding_cka)}"
    )


def _print_drift(drift: dict[str, float]) -> None:
    table = Table(
        title="drift from the parent: relative Frobenius distance ||child-parent||/||parent||"
    )
    table.add_column("part")
    table.add_column("drift", justify="right")
    for part, v in sorted(drift.items(), key=lambda kv: (not kv[0].startswith("emb"), kv[0])):
        table.add_row(part, f"{v:.4f}")
    console.print(table)
