"""Folder I/O and hosts at the edges of interop: which host a module is for, reading and
writing folder files (safetensors only, never a pickle), loading and checking hosts, and the
end every importer shares (`finish_import`)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.hosts.spec import ENCODER_CLASSIFIER
from peftport.interop.names import (
    AH_HEAD_WEIGHTS,
    AH_WEIGHTS,
    PEFT_CONFIG,
    PEFT_WEIGHTS,
    SIDECAR,
    SIDECAR_FORMAT,
    listing,
)

# --- which host a module belongs to -----------------------------------------------------------


@dataclass(frozen=True)
class ModuleHost:
    """The host a module file is made for: its receiver once ported, else its origin."""

    host_id: str
    fingerprint: str
    dims: dict[str, Any]

    @staticmethod
    def of(meta: Mapping[str, Any]) -> ModuleHost:
        port = meta.get("port") or {}
        if port.get("receiver_host"):
            return ModuleHost(
                port["receiver_host"],
                port.get("receiver_fingerprint", ""),
                dict(port.get("receiver_dims") or meta.get("host_dims") or {}),
            )
        return ModuleHost(
            meta["origin_host"], meta["origin_fingerprint"], dict(meta.get("host_dims") or {})
        )


def base_model_name(host_id: str) -> str:
    """What to write as base_model_name_or_path / model_name: the host's hub id if it has one
    (so the folder means something outside peftport), else its peftport id."""
    from peftport.assets import HubSnapshot
    from peftport.hosts import get_host

    try:
        spec = get_host(host_id)
    except PeftportError:
        return host_id
    for source in spec.sources:
        if isinstance(source, HubSnapshot):
            return source.repo_id
    return spec.id


def host_names(host: Any) -> set[str]:
    """Every name under which a loaded host may appear in a folder's config."""
    from peftport.assets import HubSnapshot

    names = {host.spec.id, str(host.folder), str(Path(host.folder).resolve())}
    names |= {s.repo_id for s in host.spec.sources if isinstance(s, HubSnapshot)}
    names.add(getattr(host.model.config, "_name_or_path", "") or host.spec.id)
    return names


# --- files ------------------------------------------------------------------------------------


def safetensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(tensors.items())}
    # one key ("pt", which transformers checks): with more, safetensors writes them in hash order
    return save(flat, metadata={"format": "pt"})


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def sidecar(
    meta: Mapping[str, Any], fmt: str, layout: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    target = ModuleHost.of(meta)
    return {
        "format": SIDECAR_FORMAT,
        "schema_version": 1,
        "exported_as": fmt,
        "technique": meta["technique"],
        "config": meta["config"],
        "adapter_name": meta.get("adapter_name", "peftport"),
        "host": target.host_id,
        "host_fingerprint": target.fingerprint,
        "host_kind": meta["host_kind"],
        "host_family": meta["host_family"],
        "task": meta["task"],
        "label_words": list(meta["label_words"]),
        "steps": meta["steps"],
        "seed": meta["seed"],
        "source_sha256": meta.get("sha256"),
        "layout": dict(layout or {}),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeftportError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise PeftportError(f"{path}: expected a JSON object")
    return value


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PeftportError(f"{path}: not a readable safetensors file ({e})") from None


def weights_file(folder: Path, safe: str, pickled: str, convert: str) -> Path:
    """The safetensors file of a folder; a pickle-only folder is refused (never unpickled)."""
    if (folder / safe).is_file():
        return folder / safe
    if (folder / pickled).is_file():
        raise PeftportError(
            f"{folder} holds {pickled} (a pickle) and no {safe}; peftport reads safetensors only "
            f"and never unpickles files. Convert it once where you trust it: {convert}"
        )
    raise PeftportError(f"{folder}: no {safe} (the weights)")


def open_folder(path: str | Path, config: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise PeftportError(f"{p}: no such folder")
    if not (p / config).is_file():
        raise PeftportError(f"{p}: no {config}; not an adapter folder")
    return p


def read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    side = read_json(path)
    return side if side.get("format") == SIDECAR_FORMAT else {}


# --- hosts at the edges -----------------------------------------------------------------------


def loaded_host(host: Any, num_labels: int) -> Any:
    from peftport.hosts import LoadedHost, load_host

    if isinstance(host, LoadedHost):
        return host
    return load_host(str(host), num_labels=max(num_labels, 1))


def module_host_loaded(meta: Mapping[str, Any], host: Any, where: str) -> Any:
    """Load the module's own host (or `host`) and check it has the weights the module was made
    for: an export for other weights would describe a module that does not exist."""
    target = ModuleHost.of(meta)
    n = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
    h = loaded_host(host if host is not None else target.host_id, n)
    if h.kind != meta["host_kind"] or h.spec.family != meta["host_family"]:
        raise PeftportError(
            f"{where}: made for a {meta['host_family']} host, but {h.spec.id!r} is {h.spec.family}"
        )
    if target.fingerprint and h.fingerprint != target.fingerprint:
        raise PeftportError(
            f"{where}: made for host {target.host_id!r} (weights "
            f"{target.fingerprint[:12]}...), but {h.spec.id!r} has other weights "
            f"({h.fingerprint[:12]}...); port it first (`peftport port`)"
        )
    return h


# --- checks on what an import is given -----------------------------------------------------


def check_labels(h: Any, label_words: Sequence[str], where: str) -> None:
    if not label_words or not all(isinstance(w, str) and w for w in label_words):
        raise PeftportError(f"{where}: label_words must be a non-empty list of words")
    if h.kind == ENCODER_CLASSIFIER and h.model.config.num_labels != len(label_words):
        raise PeftportError(
            f"{where}: host {h.spec.id!r} was loaded with "
            f"{h.model.config.num_labels} labels, the data set has "
            f"{len(label_words)}"
        )


def check_out(out_dir: str | Path, overwrite: bool) -> None:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PeftportError(
            f"{out} already exists; choose another folder or overwrite it explicitly (--force)"
        )


def head_state(
    found: Mapping[str, torch.Tensor], h: Any, where: str, source: str
) -> dict[str, torch.Tensor]:
    """The classification head for an encoder classifier, checked against the host's head."""
    from peftport.techniques import head_keys

    if h.kind != ENCODER_CLASSIFIER:
        return {}
    wanted = {k: tuple(p.shape) for k, p in h.model.named_parameters() if k in head_keys(h.model)}
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise PeftportError(
            f"{where}: no classification head ({listing(missing)}) in "
            f"{source}; a module for an encoder classifier needs its trained "
            "head (PEFT: task_type SEQ_CLS; AdapterHub: save with with_head=True)"
        )
    wrong = [
        f"{k}: {tuple(found[k].shape)}, host needs {shape}"
        for k, shape in sorted(wanted.items())
        if tuple(found[k].shape) != shape
    ]
    if wrong:
        raise PeftportError(
            f"{where}: head shapes do not fit the host and data set: {listing(wrong)}"
        )
    return {k: found[k] for k in wanted}


# --- the end of every import ------------------------------------------------------------------


@dataclass(frozen=True)
class ImportTarget:
    """What the user asked an import for: the module folder to write and its data set."""

    out_dir: str | Path
    task: str
    label_words: Sequence[str]
    overwrite: bool = False


def finish_import(
    h: Any,
    technique: str,
    config: Any,
    name: str,
    state_on: Callable[[Any], Mapping[str, torch.Tensor]],
    head: Mapping[str, torch.Tensor],
    *,
    hint: Mapping[str, Any],
    extra: Mapping[str, Any],
    target: ImportTarget,
    where: str,
) -> Path:
    """Attach `technique` with `config` to host `h` as module `name`, take the module's tensors
    from `state_on(model)` (called on the attached model, so it can name the live tensors) and
    the head, load them strictly (every tensor, every shape) and save the module.
    `hint`: peftport's own sidecar of an export (steps, seed; {} for a foreign folder)."""
    from peftport.module import module_meta, save_module
    from peftport.techniques import attach, load_module_state, module_state

    seed = int(hint.get("seed", 0) or 0)
    att = attach(h.model, h.spec.family, technique, config, name=name, seed=seed)
    state = {**state_on(h.model), **head}
    try:
        load_module_state(h.model, state, att.name)
    except PeftportError as e:
        raise PeftportError(f"{where}: {e}") from None
    steps = int(hint.get("steps", 0) or 0)
    imported = {**extra, "peftport_export": dict(hint) or None}
    meta = module_meta(
        att,
        h,
        task=target.task,
        label_words=target.label_words,
        steps=steps,
        extra={"imported": imported},
    )
    return save_module(
        target.out_dir, module_state(h.model, att.name), meta, overwrite=target.overwrite
    )


# --- what a folder holds ------------------------------------------------------------------


def folder_summary(folder: str | Path) -> dict[str, Any]:
    """What an exported folder holds: its files and sizes, its config's type, tensor count."""
    from safetensors import safe_open

    p = Path(folder)
    files = {f.name: f.stat().st_size for f in sorted(p.iterdir()) if f.is_file()}
    config = read_json(p / PEFT_CONFIG) if (p / PEFT_CONFIG).is_file() else {}
    tensors = 0
    for fname in (PEFT_WEIGHTS, AH_WEIGHTS, AH_HEAD_WEIGHTS):
        if (p / fname).is_file():
            with safe_open(str(p / fname), framework="pt") as fh:
                tensors += len(list(fh.keys()))
    kind = (
        config.get("peft_type")
        or (config.get("config") or {}).get("architecture")
        or ("bottleneck" if "config" in config else None)
    )
    return {"folder": str(p), "files": files, "type": kind, "tensors": tensors}
