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


def register(app: typer.Typer) -> None:
    @app.command("port")
    def port_cmd(
        module: Path = typer.Argument(..., help="A saved module folder."),
        to: str = typer.Option(..., "--to", help="Receiving host: id, local folder or hub id."),
        condition: Condition = typer.Option(
            Condition.ported,
            "--condition",
            help="ported: the trained tensors; sampled: each tensor drawn from N(its mean, its "
            "std); random: the technique's fresh initialisation for --seed.",
        ),
        seed: int = typer.Option(0, "--seed", help="Seed for sampled and random."),
        out: Path = typer.Option(..., "--out", help="Folder to write the ported module to."),
        keep_receiver_head: bool = typer.Option(
            False,
            "--keep-receiver-head",
            help="Encoder classifiers: keep the receiver's own fresh head, not the module's.",
        ),
        head: str = typer.Option(
            "follow",
            "--head",
            help="Encoder classifiers (the head is part of the module): "
            "follow (the head follows the condition: sampled with the body, or the receiver's "
            "fresh head under random) or origin (the module's trained head in every condition, "
            "so a control differs from the port only in the body). Hosts without a head: "
            "either, nothing changes.",
        ),
        layer_map: str = typer.Option(
            "",
            "--layer-map",
            help="Which origin layer each receiver layer gets, for porting "
            "across depths: identity, first_k (the first layers), stride (spread evenly: "
            "6 -> 3 takes 1,3,5), cka (the most similar origin layer by linear CKA on "
            "unlabelled text; compares the hosts first), or explicit: origin layers per "
            "receiver layer (1,3,5) or RECEIVER:ORIGIN pairs (0:1,1:3,2:5). Default: identity.",
        ),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
        method: str = typer.Option(
            "copy",
            "--method",
            help="How the ported condition carries the module: copy (as "
            "trained), scaled:F (its contribution times F), subspace[:K] (LoRA: the update "
            "projected onto the receiving weights' top singular vectors), align[:lstsq] "
            "(through maps between the hosts' hidden spaces fitted on shared text; also "
            "between hidden widths). See docs/porting-methods.md.",
        ),
        align_texts: int = typer.Option(
            256, "--align-texts", help="align: texts of the unlabelled corpus to fit on."
        ),
    ) -> None:
        """Port a module into another host (checked tensor by tensor) and save the result."""
        from peftport.layermap import parse_layer_map
        from peftport.porting_io import port_module

        path, meta = port_module(
            module,
            to,
            condition.value,
            seed,
            out,
            keep_receiver_head=keep_receiver_head,
            layer_map=parse_layer_map(layer_map) if layer_map.strip() else None,
            force=force,
            progress=True,
            method=method,
            align_texts=align_texts,
            head=head,
        )
        info = meta["port"]
        if info.get("layer_map") is not None:
            typer.echo(
                f"layer map ({info['layer_map_strategy']}, receiver <- origin): "
                + _show_map(info["layer_map"])
            )
        if info.get("layer_map_comparison"):
            c = info["layer_map_comparison"]
            typer.echo(
                f"  CKA of the chosen pairs {[round(v, 3) for v in c['cka_of_map']]}, "
                f"distance {c['distance']:.3f} ({c['features']}, {c['texts']} texts of "
                f"{c['corpus']}, seed {c['seed']})"
            )
        if info.get("layer_map_note"):
            typer.echo(f"note: {info['layer_map_note']}")
        typer.echo(
            f"{meta['technique']} module from {meta['origin_host']} -> "
            f"{info['receiver_host']} ({condition.value}, "
            + (f"method {method}, " if info.get("method", "copy") != "copy" else "")
            + f"seed {seed}"
            + (f", head {head}" if info.get("head_applies") else "")
            + f"): {path}"
        )

    @app.command("techniques")
    def techniques_cmd(
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        counts: str = typer.Option(
            "",
            "--counts",
            help="Also attach each technique's defaults to this host and "
            "report its trainable parameters.",
        ),
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
            rows.append(
                {
                    "technique": t,
                    "summary": tech.summary,
                    "reference": tech.reference,
                    "defaults": tech.defaults(),
                    "support": {k: SUPPORT[t][k].cell() for k in KINDS},
                }
            )
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
                shown = (
                    f"module {c['module']:,}, head {c['head']:,}"
                    if "module" in c
                    else f"not applicable: {c['error']}"
                )
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


def _show_map(recorded: dict) -> str:
    """{"0": 1, "1": 3} -> "0<-1 1<-3"; per stack: "encoder.block: ...; decoder.block: ..."."""
    if all(isinstance(v, dict) for v in recorded.values()):
        return "; ".join(f"{stack}: {_show_map(m)}" for stack, m in recorded.items())
    return " ".join(f"{j}<-{o}" for j, o in recorded.items())
