"""Port a saved module into a host and save the result: what `peftport port` does, without the
CLI. `porting.port` is the pure step in the middle; this module loads the module and the
receiving host, chooses the layer map for them (`choose_layer_map`), checks the result loads
and writes it with its provenance (the module's `port` field).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.layermap import LayerMap, ResolvedMap, provenance, resolve_stacks, split_layer

__all__ = ["choose_layer_map", "origin_layers", "port_module"]


def origin_layers(
    meta: Mapping[str, Any], tensors: Mapping[str, Any], stacks: tuple[str, ...]
) -> dict[str, int]:
    """Layers per stack of the host a module was trained on: its recorded `host_dims`, else
    one more than the highest layer index among its tensors (a lower bound for a module that
    skips top layers, which no technique here does by default)."""
    recorded = (meta.get("host_dims") or {}).get("layers") or {}
    seen: dict[str, int] = {}
    for key in tensors:
        if (split := split_layer(key, stacks)) is not None:
            seen[split[0]] = max(seen.get(split[0], 0), split[1] + 1)
    out = {}
    for stack in stacks:
        n = recorded.get(stack) or seen.get(stack)
        if n:
            out[stack] = int(n)
    return out


def choose_layer_map(
    layer_map: LayerMap | None,
    meta: Mapping[str, Any],
    tensors: Mapping[str, Any],
    receiver_id: str,
    receiver_layers: Mapping[str, int],
    stacks: tuple[str, ...],
    *,
    progress: bool = False,
) -> tuple[ResolvedMap | None, dict[str, Any]]:
    """A layer map for porting this module into this receiver -> (the map `porting.port` takes
    or None, what the ported module records about it).

    None: identity (porting's default), nothing recorded. Otherwise the map is resolved per
    layer stack with each stack's depths (`layermap.resolve_stacks`); "cka" first compares the
    origin and receiver hosts (`compare_hosts`). Prompt modules have no per-layer tensors:
    they port whole and any map is left unused (recorded as such).
    """
    info: dict[str, Any] = {"layer_map": None}
    if layer_map is None:
        return None, info
    info["layer_map_strategy"] = layer_map.strategy
    from peftport.techniques import get_technique

    per_layer = not get_technique(meta["technique"]).layer_mappable or any(
        split_layer(k, stacks) is not None for k in tensors
    )
    if not per_layer:  # its depth-free tensors fit any depth of the same width
        info["layer_map_note"] = (
            f"a {meta['technique']} module has no per-layer tensors: "
            "ported whole, layer map not used"
        )
        return None, info
    comparison = None
    if layer_map.strategy == "cka":
        from peftport.hostcompare import compare_hosts

        comparison = compare_hosts(meta["origin_host"], receiver_id, progress=progress)
    maps, note = resolve_stacks(
        layer_map,
        origin_layers(meta, tensors, stacks),
        receiver_layers,
        stacks,
        comparison,
        subject=f"{meta.get('origin_host', 'the origin')} -> {receiver_id}",
    )
    if note:
        info["layer_map_note"] = note
    if not maps:
        return None, info
    if comparison is not None:
        main = maps.get(stacks[0])
        info["layer_map_comparison"] = {
            "corpus": comparison.corpus,
            "texts": comparison.texts,
            "max_length": comparison.max_length,
            "seed": comparison.seed,
            "features": comparison.features,
            "embedding_cka": comparison.embedding_cka,
            "cka_of_map": [comparison.cka[o][j] for j, o in enumerate(main)] if main else None,
            "distance": comparison.distance(list(main)) if main else None,
        }
    lmap, info["layer_map"] = provenance(maps, stacks)
    return lmap, info


def port_module(
    module: Path,
    to: str,
    condition: str,
    seed: int,
    out: Path,
    *,
    keep_receiver_head: bool = False,
    layer_map: LayerMap | None = None,
    force: bool = False,
    progress: bool = False,
    method: str = "copy",
    align_texts: int = 256,
    head: str = "follow",
) -> tuple[Path, dict[str, Any]]:
    """Load the module, check it against the receiver, choose the layer map, port, verify by
    loading into the receiver, save to `out`. Returns the saved folder and its metadata.

    `method` (`peftport.methods`): how the `ported` condition carries the module; `align` first
    fits maps between the plain hosts' hidden spaces on `align_texts` texts. `head`: the head
    policy (`peftport.porting`), recorded with `head_applies` (false on a host without a head,
    where the policy changes nothing)."""
    from peftport.hosts import ENCODER_CLASSIFIER, get_host, load_host
    from peftport.methods import method_for, method_record
    from peftport.module import FILLED, load_module, save_module
    from peftport.porting import PortingError, check_head_policy
    from peftport.runs import port_into
    from peftport.techniques import check_supported

    check_head_policy(head)
    tensors, meta = load_module(module)
    parsed = method_for(method, condition)  # before loading anything
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not force:
        raise PeftportError(f"{out} already exists; choose another --out or pass --force")
    spec = get_host(to)
    if spec.family and spec.kind != meta["host_kind"]:  # before loading anything
        raise PortingError(
            f"wrong host kind: the module was trained on {meta['origin_host']} (kind "
            f"{meta['host_kind']}) and {spec.id} is of kind {spec.kind}; a module only "
            "ports between hosts of one kind"
        )
    if spec.family:
        check_supported(meta["technique"], spec.kind)

    num_labels = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
    host = load_host(spec, num_labels=max(num_labels, 1))
    map_info: dict[str, Any] = {}

    def choose(receiver: Any) -> ResolvedMap | None:
        lmap, info = choose_layer_map(
            layer_map,
            meta,
            tensors,
            to,
            dict(receiver.dims.get("layers") or {}),
            receiver.layer_stacks,
            progress=progress,
        )
        map_info.update(info)
        return lmap

    ported = port_into(
        host,
        tensors,
        meta,
        condition,
        seed,
        choose,
        head=head,
        keep_receiver_head=keep_receiver_head,
        method=parsed,
        align_texts=align_texts,
    )
    state, receiver = ported.state, ported.receiver

    new_meta = {k: v for k, v in meta.items() if k not in FILLED}
    source_metrics = new_meta.pop("metrics", None)
    new_meta["port"] = {
        "condition": condition,
        "seed": seed,
        "receiver_host": host.spec.id,
        "receiver_fingerprint": host.fingerprint,
        "receiver_dims": receiver.dims,
        "source_sha256": meta["sha256"],
        "source_port": meta.get("port"),
        "source_metrics": source_metrics,
        **map_info,
        "keep_receiver_head": keep_receiver_head,
        "head": head,
        "head_applies": bool(receiver.head_keys),
        **method_record(parsed, ported.alignment),
    }
    path = save_module(out, state, new_meta, overwrite=force)
    return path, new_meta
