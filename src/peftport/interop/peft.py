"""Hugging Face PEFT adapter folders, both ways: the edges (`export_peft`, `import_peft`) and
the codec table that turns a technique's `peft_type` into its conversion functions.

A technique says what PEFT calls it (`Technique.peft_type`) or why PEFT cannot compute what it
computes (`Technique.peft_refused`); the conversions themselves live in one codec module per
PEFT type family (peft_tuners: LORA, IA3; peft_prefix: PREFIX_TUNING).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from peftport.atomic import write_folder
from peftport.errors import PeftportError
from peftport.hosts.spec import ENCODER_CLASSIFIER
from peftport.interop import folders
from peftport.interop.names import (
    PEFT_CONFIG,
    PEFT_PICKLE,
    PEFT_TASK_TYPES,
    PEFT_WEIGHTS,
    SIDECAR,
    listing,
)
from peftport.interop.peft_codec import Converted, HostFacts, PeftCodec, PeftFolder, import_head
from peftport.interop.peft_prefix import PREFIX_TUNING
from peftport.interop.peft_tuners import IA3, LORA

# PEFT type -> its codec. A technique whose peft_type is here and that PEFT does not refuse
# exports and imports (a test checks every such technique has its codec).
CODECS: dict[str, PeftCodec] = {c.peft_type: c for c in (LORA, IA3, PREFIX_TUNING)}


def _codec(technique: Any) -> PeftCodec:
    codec = CODECS.get(technique.peft_type)
    if codec is None:  # a technique file that names a PEFT type nobody converts yet
        raise PeftportError(
            f"technique {technique.name!r} names PEFT type "
            f"{technique.peft_type!r}, which has no codec in peftport.interop"
        )
    return codec


def check_peft_exportable(technique: str, family: str) -> PeftCodec:
    """The codec for this technique on this family; PeftportError with the step that differs if
    PEFT cannot reproduce it there."""
    from peftport.techniques import get_technique

    tech = get_technique(technique)
    if tech.peft_refused:
        raise PeftportError(f"no faithful PEFT export for {technique!r}: {tech.peft_refused}")
    codec = _codec(tech)
    why = codec.refuse_family(family)
    if why:
        raise PeftportError(f"no faithful PEFT export for {technique!r} on {family}: {why}")
    return codec


def peft_export(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    position_table: torch.Tensor | None = None,
    num_heads: int | None = None,
    where: str = "module",
) -> Converted:
    """(adapter_config.json contents, tensors in PEFT names) for a module. Pure: prefix modules
    need the host's position table and head count passed in."""
    codec = check_peft_exportable(meta["technique"], meta["host_family"])
    facts = HostFacts(position_table=position_table, num_heads=num_heads)
    return codec.to_peft(tensors, meta, where, facts)


def export_peft(
    module_dir: str | Path, out_dir: str | Path, *, host: Any = None, overwrite: bool = False
) -> Path:
    """Write a PEFT adapter folder for a module PEFT can reproduce (lora, ia3, prefix); returns
    its path.

    `host` (id or LoadedHost) is checked against the module's host when given; a codec that
    needs the host (prefix: the export carries its shifted position table) loads it anyway.
    PeftportError, before anything is written, for techniques and hosts PEFT cannot reproduce
    (see `Technique.peft_refused`).
    """
    from peftport.module import load_module

    tensors, meta = load_module(module_dir)
    where = f"module {module_dir}"
    codec = check_peft_exportable(meta["technique"], meta["host_family"])
    facts = HostFacts()
    if host is not None or codec.host_facts is not None:
        h = folders.module_host_loaded(meta, host, where)
        if codec.host_facts is not None:
            facts = codec.host_facts(h, meta["host_family"], where)
    config, out = codec.to_peft(tensors, meta, where, facts)
    layout = {"r": config.get("r"), "peft_type": config["peft_type"]}
    files = {
        PEFT_CONFIG: folders.json_bytes(config),
        PEFT_WEIGHTS: folders.safetensors_bytes(out),
        SIDECAR: folders.json_bytes(folders.sidecar(meta, "peft", layout)),
    }
    return write_folder(Path(out_dir), files, overwrite=overwrite)


def _check_base(config: Mapping[str, Any], h: Any, any_base: bool, path: Path) -> None:
    base = config.get("base_model_name_or_path")
    if not base or any_base:
        return
    names = folders.host_names(h)
    if base not in names and str(Path(str(base)).expanduser().resolve()) not in names:
        raise PeftportError(
            f"{path}: field 'base_model_name_or_path' is {base!r}, but host {h.spec.id!r} is "
            f"{listing(sorted(names - {str(h.folder)}), 3)}; if that is the same model under "
            "another name, pass --any-base (every tensor's shape is still checked)"
        )


def _technique_of(peft_type: str, config_path: Path) -> Any:
    """The registered technique PEFT's `peft_type` stands for; refused with the reason if PEFT
    computes another function, or with the types peftport imports."""
    from peftport.techniques import ordered

    for tech in ordered():
        if tech.peft_type == peft_type:
            if tech.peft_refused:
                raise PeftportError(
                    f"{config_path}: PEFT's {peft_type} computes another function than "
                    f"AdapterHub's {tech.name}: {tech.peft_refused}"
                )
            return tech
    known = [t.peft_type for t in ordered() if t.peft_exportable]
    raise PeftportError(
        f"{config_path}: field 'peft_type' is {peft_type or None!r}; "
        f"peftport imports {', '.join(known[:-1])} and {known[-1]}"
    )


class DroppedSitesWarning(UserWarning):
    """An import dropped modules at sites peftport cannot adapt (`--drop-unsupported`)."""


def _warn_dropped(
    dropped: Mapping[str, int], tensors: Mapping[str, torch.Tensor], head: Any, config_path: Path
) -> dict[str, Any]:
    """Warn about the dropped sites and their share of the module; the record for metadata."""
    total = sum(v.numel() for k, v in tensors.items() if k not in head)
    n = sum(dropped.values())
    share = n / total if total else 0.0
    warnings.warn(
        f"{config_path}: dropped {len(dropped)} module(s) at sites peftport cannot adapt on "
        f"this host: {listing(sorted(dropped), 8)} ({n:,} of {total:,} parameters, "
        f"{share:.1%} of the module); the imported module computes a different function",
        DroppedSitesWarning,
        stacklevel=3,
    )
    return {"sites": sorted(dropped), "parameters": n, "share": round(share, 6)}


def fill_unused(
    model: Any, name: str, state: Mapping[str, torch.Tensor], neutral: float | None
) -> dict[str, torch.Tensor]:
    """AdapterHub switches a site on everywhere (all layers; on T5 self- and cross-attention):
    sites PEFT did not adapt get the technique's neutral value (LoRA 0, IA3 1), which computes
    exactly what the un-adapted module computes. `model` carries the attached module."""
    from peftport.techniques import module_state

    out = dict(state)
    if neutral is None:
        return out
    for key, value in module_state(model, name, include_head=False).items():
        if key not in out:
            out[key] = torch.full_like(value, neutral)
    return out


def import_peft(
    peft_dir: str | Path,
    *,
    host: Any,
    out_dir: str | Path,
    task: str,
    label_words: Sequence[str],
    any_base: bool = False,
    overwrite: bool = False,
    drop_unsupported: bool = False,
) -> Path:
    """Read a PEFT adapter folder (LORA, IA3 or PREFIX_TUNING; safetensors only) and write the
    peftport module that computes the same function on `host`; returns its path.

    drop_unsupported: modules at sites AdapterHub cannot adapt on this host (a LoRA on
    `attention.output.dense` or the pooler) are dropped with a `DroppedSitesWarning` naming them
    and their share of the module's parameters, instead of refusing the folder; the module then
    computes another function than the PEFT folder (recorded in its metadata, `dropped`)."""
    folder = folders.open_folder(peft_dir, PEFT_CONFIG)
    config_path = folder / PEFT_CONFIG
    config = folders.read_json(config_path)
    weights = folders.weights_file(
        folder,
        PEFT_WEIGHTS,
        PEFT_PICKLE,
        "load it with peft and save_pretrained(..., safe_serialization=True)",
    )
    folders.check_out(out_dir, overwrite)
    peft_type = str(config.get("peft_type", "")).upper()
    tech = _technique_of(peft_type, config_path)
    codec = _codec(tech)
    tensors = folders.read_safetensors(weights)
    h = folders.loaded_host(host, len(label_words))
    where = str(weights)
    task_type = config.get("task_type")
    if task_type and task_type != PEFT_TASK_TYPES[h.kind] and task_type != "FEATURE_EXTRACTION":
        raise PeftportError(
            f"{config_path}: field 'task_type' is {task_type!r}, which does not "
            f"fit host {h.spec.id!r} ({h.kind}: {PEFT_TASK_TYPES[h.kind]})"
        )
    _check_base(config, h, any_base, config_path)
    folders.check_labels(h, label_words, where)
    hint = folders.read_sidecar(folder)
    hint_cfg = hint.get("config", {}) if hint.get("technique") == tech.name else {}
    name = hint.get("adapter_name") or "peftport"
    if not name.isidentifier():
        name = "peftport"
    head_found, used = import_head(tensors, codec.head_names)
    if head_found and h.kind != ENCODER_CLASSIFIER:
        raise PeftportError(
            f"{where}: holds a classification head ({listing(sorted(head_found))})"
            f" but host {h.spec.id!r} is a {h.kind} host, which scores label "
            "words with its own LM head"
        )
    head = folders.head_state(head_found, h, where, str(weights))
    source = PeftFolder(
        tech.name,
        config,
        config_path,
        tensors,
        frozenset(used),
        hint_cfg,
        drop_unsupported=drop_unsupported,
    )
    cfg, state = codec.from_peft(source, h, name, where)
    extra = {
        "format": "peft",
        "folder": str(folder),
        "peft_type": peft_type,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }
    if source.dropped:
        extra["dropped"] = _warn_dropped(source.dropped, tensors, used, config_path)
    target = folders.ImportTarget(out_dir, task, label_words, overwrite)
    return folders.finish_import(
        h,
        tech.name,
        cfg,
        name,
        lambda model: fill_unused(model, name, state, tech.neutral_fill),
        head,
        hint=hint,
        extra=extra,
        target=target,
        where=where,
    )
