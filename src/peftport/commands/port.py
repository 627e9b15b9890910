"""`peftport port`: move a saved module into another host; `peftport techniques`: what exists."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from peftport.errors import PeftportError


class Condition(StrEnum):
    ported = "ported"
    sampled = "sampled"
    random = "random"


def port_module(module: Path, to: str, condition: str, seed: int, out: Path, *,
                keep_receiver_head: bool = False, layer_map: str = "", force: bool = False
                ) -> tuple[Path, dict]:
    """The `port` command without the CLI: load, check, port, verify by loading, save."""
    from peftport.hosts import ENCODER_CLASSIFIER, get_host, load_host
    from peftport.module import FILLED, load_module, save_module
    from peftport.porting import PortingError, ReceiverSpec, parse_layer_map, port
    from peftport.techniques import attach, check_supported, load_module_state

    tensors, meta = load_module(module)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise PeftportError(f"{out} already exists; choose another --out or pass --force")
    spec = get_host(to)
    if spec.family and spec.kind != meta["host_kind"]:  # before loading anything
        raise PortingError(
            f"wrong host kind: the module was trained on {meta['origin_host']} (kind "
            f"{meta['host_kind']}) and {spec.id} is of kind {spec.kind}; a module only "
            "ports between hosts of one kind")
    if spec.family:
        check_supported(meta["technique"], spec.kind)
    lmap = parse_layer_map(layer_map) if layer_map else None

    num_labels = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
    host = load_host(spec, num_labels=max(num_labels, 1))
    name = meta.get("adapter_name", "peftport")
    att = attach(host.model, host.spec.family, meta["technique"], meta["config"], name=name,
                 seed=seed)
    receiver = ReceiverSpec.from_attached(att, host.spec.id, host.fingerprint)
    state = port(tensors, meta, receiver, condition, seed, lmap,
                 keep_receiver_head=keep_receiver_head)
    load_module_state(host.model, state, name)  # proves the result loads, strictly

    new_meta = {k: v for k, v in meta.items() if k not in FILLED}
    source_metrics = new_meta.pop("metrics", None)
    new_meta["port"] = {
        "condition": condition, "seed": seed,
        "receiver_host": host.spec.id, "receiver_fingerprint": host.fingerprint,
        "receiver_dims": receiver.dims,
        "source_sha256": meta["sha256"], "source_port": meta.get("port"),
        "source_metrics": source_metrics,
        "layer_map": {str(k): v for k, v in lmap.items()} if lmap else None,
        "keep_receiver_head": keep_receiver_head,
    }
    path = save_module(out, state, new_meta, overwrite=force)
    return path, new_meta


def register(app: typer.Typer) -> None:
    @app.command("port")
    def port_cmd(
        module: Path = typer.Argument(..., help="A saved module folder."),
        to: str = typer.Option(..., "--to", help="Receiving host: id, local folder or hub id."),
        condition: Condition = typer.Option(
            Condition.ported, "--condition",
            help="ported: the trained tensors; sampled: each tensor drawn from N(its mean, its "
            "std); random: the technique's fresh initialisation for --seed."),
        seed: int = typer.Option(0, "--seed", help="Seed for sampled and random."),
        out: Path = typer.Option(..., "--out", help="Folder to write the ported module to."),
        keep_receiver_head: bool = typer.Option(
            False, "--keep-receiver-head",
            help="Encoder classifiers: keep the receiver's own fresh head, not the module's."),
        layer_map: str = typer.Option(
            "", "--layer-map", help="RECEIVER:ORIGIN layer pairs, e.g. 0:0,1:2 (default: "
            "identity)."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    ) -> None:
        """Port a module into another host (checked tensor by tensor) and save the result."""
        path, meta = port_module(module, to, condition.value, seed, out,
                                 keep_receiver_head=keep_receiver_head, layer_map=layer_map,
                                 force=force)
        typer.echo(f"{meta['technique']} module from {meta['origin_host']} -> "
                   f"{meta['port']['receiver_host']} ({condition.value}, seed {seed}): {path}")

    @app.command("techniques")
    def techniques_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        counts: str = typer.Option(
            "", "--counts", help="Also attach each technique's defaults to this host and "
            "report its trainable parameters."),
    ) -> None:
        """List the techniques, their defaults and the support table (technique x host kind)."""
        from peftport.techniques import (
            KINDS,
            ORDER,
            SUPPORT,
            TECHNIQUES,
            defaults_markdown,
            support_table_markdown,
        )

        rows = []
        for t in ORDER:
            tech = TECHNIQUES.get(t)
            rows.append({"technique": t, "summary": tech.summary, "reference": tech.reference,
                         "defaults": tech.defaults(),
                         "support": {k: SUPPORT[t][k].cell() for k in KINDS}})
        if counts:
            found = trainable_counts(counts)
            for r in rows:
                r["trainable_on_" + counts] = found.get(r["technique"])
        if as_json:
            typer.echo(json.dumps(rows, indent=2))
            return
        for r in rows:
            typer.echo(f"{r['technique']}: {r['summary']} ({r['reference']})")
        typer.echo("\n" + support_table_markdown() + "\n\n" + defaults_markdown())
        if counts:
            typer.echo(f"\ntrainable parameters on {counts} with the defaults:")
            for r in rows:
                c = r["trainable_on_" + counts]
                shown = (f"module {c['module']:,}, head {c['head']:,}" if "module" in c
                         else f"not applicable: {c['error']}")
                typer.echo(f"  {r['technique']}: {shown}")


def trainable_counts(host_id: str) -> dict[str, dict[str, int | str]]:
    """technique -> {"module": n, "head": n} with default configs, each on a fresh copy of the
    host; {"error": why} where the technique or its defaults do not fit the host."""
    from peftport.hosts import get_host, load_host
    from peftport.techniques import ORDER, attach

    spec = get_host(host_id)
    out: dict[str, dict[str, int | str]] = {}
    for t in ORDER:
        host = load_host(spec)
        try:
            att = attach(host.model, host.spec.family, t, seed=0)
        except PeftportError as e:
            out[t] = {"error": str(e)}
            continue
        module = att.module_parameters
        out[t] = {"module": module, "head": att.trainable - module}
    return out
