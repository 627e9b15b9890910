"""`peftport port`: move a saved module into another host; `peftport techniques`: what exists."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path

import typer

from peftport.errors import PeftportError
from peftport.hostcompare import LAYER_MAP_STRATEGIES


class Condition(StrEnum):
    ported = "ported"
    sampled = "sampled"
    random = "random"


def origin_layers(meta: dict, tensors: dict, stacks: tuple[str, ...]) -> dict[str, int]:
    """Layers per stack of the host a module was trained on: its recorded `host_dims`, else
    one more than the highest layer index among its tensors (a lower bound for a module that
    skips top layers, which no technique here does by default)."""
    from peftport.porting import _split_layer

    recorded = (meta.get("host_dims") or {}).get("layers") or {}
    seen: dict[str, int] = {}
    for key in tensors:
        if (split := _split_layer(key, stacks)) is not None:
            seen[split[0]] = max(seen.get(split[0], 0), split[1] + 1)
    out = {}
    for stack in stacks:
        n = recorded.get(stack) or seen.get(stack)
        if n:
            out[stack] = int(n)
    return out


def choose_layer_map(spec: str, meta: dict, tensors: dict, receiver_id: str,
                     receiver_layers: dict[str, int], stacks: tuple[str, ...], *,
                     progress: bool = False) -> tuple[dict | None, dict]:
    """`--layer-map` -> (the map `porting.port` takes or None, what to record about it).

    `spec`: "" (identity, porting's default), a strategy (identity, first_k, stride, cka) or an
    explicit map ("1,3,5" or "0:1,1:3,2:5"), resolved per layer stack with each stack's depths.
    "cka" compares the origin and receiver hosts (`compare_hosts`) and maps the main stack by
    it; further stacks (T5's decoder) get the stride map. Prompt modules have no per-layer
    tensors: they port whole and any map is left unused (recorded as such).
    """
    from peftport.hostcompare import compare_hosts, resolve_layer_map
    from peftport.porting import _split_layer
    from peftport.techniques import get_technique

    info: dict = {"layer_map": None}
    if not spec.strip():
        return None, info
    name = spec.strip().lower().replace("-", "_")
    info["layer_map_strategy"] = name if name in LAYER_MAP_STRATEGIES else "explicit"
    per_layer = not get_technique(meta["technique"]).layer_mappable or any(
        _split_layer(k, stacks) is not None for k in tensors)
    if not per_layer:  # its depth-free tensors fit any depth of the same width
        info["layer_map_note"] = (f"a {meta['technique']} module has no per-layer tensors: "
                                  "ported whole, layer map not used")
        return None, info
    orig = origin_layers(meta, tensors, stacks)
    comparison = None
    if name == "cka":
        comparison = compare_hosts(meta["origin_host"], receiver_id, progress=progress)
    maps: dict[str, list[int]] = {}
    for k, stack in enumerate(stacks):
        n_o, n_r = orig.get(stack), receiver_layers.get(stack)
        if not n_o or not n_r:
            continue  # a stack the module does not touch (no tensors, no recorded depth)
        try:
            if name == "cka" and k > 0:
                maps[stack] = resolve_layer_map("stride", n_o, n_r)
                info["layer_map_note"] = (f"cka maps {stacks[0]} (the compared stack); "
                                          f"{', '.join(stacks[1:])} mapped by stride")
            else:
                maps[stack] = resolve_layer_map(spec, n_o, n_r, comparison)
        except PeftportError as e:
            raise PeftportError(f"--layer-map {spec!r} for {stack} ({n_o} origin -> {n_r} "
                                f"receiver layers): {e}") from None
    if not maps:
        return None, info
    if comparison is not None:
        main = maps.get(stacks[0])
        info["layer_map_comparison"] = {
            "corpus": comparison.corpus, "texts": comparison.texts,
            "max_length": comparison.max_length, "seed": comparison.seed,
            "features": comparison.features, "embedding_cka": comparison.embedding_cka,
            "cka_of_map": [comparison.cka[o][j] for j, o in enumerate(main)] if main else None,
            "distance": comparison.distance(main) if main else None,
        }
    values = list(maps.values())
    if len(maps) == len(stacks) and all(v == values[0] for v in values):
        info["layer_map"] = {str(j): o for j, o in enumerate(values[0])}
        return dict(enumerate(values[0])), info
    info["layer_map"] = {s: {str(j): o for j, o in enumerate(m)} for s, m in maps.items()}
    return {s: dict(enumerate(m)) for s, m in maps.items()}, info


def port_module(module: Path, to: str, condition: str, seed: int, out: Path, *,
                keep_receiver_head: bool = False, layer_map: str = "", force: bool = False,
                progress: bool = False) -> tuple[Path, dict]:
    """The `port` command without the CLI: load, check, choose the layer map, port, verify by
    loading, save."""
    from peftport.hosts import ENCODER_CLASSIFIER, get_host, load_host
    from peftport.module import FILLED, load_module, save_module
    from peftport.porting import PortingError, ReceiverSpec, port
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

    num_labels = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
    host = load_host(spec, num_labels=max(num_labels, 1))
    name = meta.get("adapter_name", "peftport")
    att = attach(host.model, host.spec.family, meta["technique"], meta["config"], name=name,
                 seed=seed)
    receiver = ReceiverSpec.from_attached(att, host.spec.id, host.fingerprint)
    lmap, map_info = choose_layer_map(layer_map, meta, tensors, to,
                                      dict(receiver.dims.get("layers") or {}),
                                      receiver.layer_stacks, progress=progress)
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
        **map_info,
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
            "", "--layer-map", help="Which origin layer each receiver layer gets, for porting "
            "across depths: identity, first_k (the first layers), stride (spread evenly: "
            "6 -> 3 takes 1,3,5), cka (the most similar origin layer by linear CKA on "
            "unlabelled text; compares the hosts first), or explicit: origin layers per "
            "receiver layer (1,3,5) or RECEIVER:ORIGIN pairs (0:1,1:3,2:5). Default: identity."),
        force: bool = typer.Option(False, "--force", help="Replace --out if it exists."),
    ) -> None:
        """Port a module into another host (checked tensor by tensor) and save the result."""
        path, meta = port_module(module, to, condition.value, seed, out,
                                 keep_receiver_head=keep_receiver_head, layer_map=layer_map,
                                 force=force, progress=True)
        info = meta["port"]
        if info.get("layer_map") is not None:
            typer.echo(f"layer map ({info['layer_map_strategy']}, receiver <- origin): "
                       + _show_map(info["layer_map"]))
        if info.get("layer_map_comparison"):
            c = info["layer_map_comparison"]
            typer.echo(f"  CKA of the chosen pairs {[round(v, 3) for v in c['cka_of_map']]}, "
                       f"distance {c['distance']:.3f} ({c['features']}, {c['texts']} texts of "
                       f"{c['corpus']}, seed {c['seed']})")
        if info.get("layer_map_note"):
            typer.echo(f"note: {info['layer_map_note']}")
        typer.echo(f"{meta['technique']} module from {meta['origin_host']} -> "
                   f"{info['receiver_host']} ({condition.value}, seed {seed}): {path}")

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


def _show_map(recorded: dict) -> str:
    """{"0": 1, "1": 3} -> "0<-1 1<-3"; per stack: "encoder.block: ...; decoder.block: ..."."""
    if all(isinstance(v, dict) for v in recorded.values()):
        return "; ".join(f"{stack}: {_show_map(m)}" for stack, m in recorded.items())
    return " ".join(f"{j}<-{o}" for j, o in recorded.items())
