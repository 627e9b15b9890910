"""A PEFT module on disk: a folder with the tensors and what they are.

    MODULE/
      module.safetensors   the module's tensors (and the classification head, if any)
      module.json          metadata (below), including the sha256 of module.safetensors

Tensors are written and read with safetensors only (never pickle / torch.load). The folder is
written to a temporary folder beside it and renamed into place, so an interrupted save leaves
nothing that a later run would trust. Loading checks the schema version, every required field
and its type, the technique and its config, and the tensor file's sha256, which covers the
metadata that changes what the module computes (FUNCTION_FIELDS); any mismatch is a
PeftportError that names the file and the field.

Metadata (schema version 1). The caller gives:
    technique        registered technique name ("lora", ...)
    config           the technique config as a dict (all fields; see peftport.techniques)
    host_kind        encoder-classifier | text-to-text | decoder-lm
    host_family      bert | t5 | gpt2 | llama
    origin_host      id of the host the module was trained on
    origin_fingerprint  that host's weights fingerprint
    task             task / data set name
    label_words      the label words, in label order
    steps            optimizer steps trained (0 = untrained)
    seed             the training seed
  optional:
    adapter_name     the module's name inside tensor names (default "peftport")
    metrics          {name: number} if known
    trainable        trainable parameter count while training
    host_dims        {"hidden_size": int, "layers": {stack: int}} (better porting messages)
    port             how the module was ported (written by `peftport port`)
    extra            anything else JSON-able (any other top-level field is kept as given too)
save_module fills in: schema_version, format, sha256, tensor_file, num_tensors,
num_parameters, head_keys (tensors whose names lack adapter_name), versions (package versions),
created (UTC time).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from peftport.atomic import write_folder
from peftport.configfields import describe, of_type
from peftport.errors import PeftportError
from peftport.provenance import package_versions

SCHEMA_VERSION = 1
FORMAT = "peftport-module"
TENSOR_FILE = "module.safetensors"
META_FILE = "module.json"

# field -> its type, checked strictly (pydantic): a bool is not an integer, "8" is not 8
REQUIRED: dict[str, Any] = {
    "technique": str,
    "config": dict,
    "host_kind": str,
    "host_family": str,
    "origin_host": str,
    "origin_fingerprint": str,
    "task": str,
    "label_words": list[str],
    "steps": int,
    "seed": int,
}
OPTIONAL: dict[str, Any] = {
    "adapter_name": str,
    "metrics": dict,
    "trainable": int,
    "host_dims": dict,
    "port": dict | None,
    "extra": dict,
}
JSON_WORDS = {int: "an integer", dict: "an object"}  # module.json speaks JSON
FILLED = (
    "schema_version",
    "format",
    "sha256",
    "tensor_file",
    "num_tensors",
    "num_parameters",
    "head_keys",
    "versions",
    "created",
)


def module_meta(
    att: Any,
    host: Any,
    *,
    task: str,
    label_words: list[str] | tuple[str, ...],
    steps: int,
    seed: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Metadata for a module trained on `host` (a LoadedHost) as `att` (an Attached)."""
    meta: dict[str, Any] = {
        "technique": att.technique,
        "config": att.config.as_dict(),
        "adapter_name": att.name,
        "host_kind": att.kind,
        "host_family": att.family,
        "origin_host": host.spec.id,
        "origin_fingerprint": host.fingerprint,
        "host_dims": dict(att.dims),
        "task": task,
        "label_words": list(label_words),
        "steps": int(steps),
        "seed": att.seed if seed is None else int(seed),
        "trainable": int(att.trainable),
    }
    if metrics is not None:
        meta["metrics"] = dict(metrics)
    if extra is not None:
        meta["extra"] = dict(extra)
    return meta


# The metadata that changes what a module computes (not provenance: hosts' ids, metrics, time).
# save_module writes them, canonical JSON, into the tensor file's one metadata key, so the file's
# sha256 (field 'sha256') covers them and load_module checks module.json against them: a flipped
# bit in the LoRA alpha of module.json is a mismatch, not a module that runs with another alpha.
# Head shapes are the head tensors' own shapes, covered with the tensors.
FUNCTION_KEY = "peftport"
FUNCTION_FIELDS = ("technique", "config", "host_kind", "host_family", "label_words", "adapter_name")


def _function(meta: Mapping[str, Any]) -> dict[str, Any]:
    return {k: meta.get(k, "peftport" if k == "adapter_name" else None) for k in FUNCTION_FIELDS}


def _function_text(meta: Mapping[str, Any]) -> str:
    return json.dumps(
        {"format": f"{FORMAT}/{SCHEMA_VERSION}", "function": _function(meta)},
        sort_keys=True,
        separators=(",", ":"),
        allow_nan=False,
    )


def _stored_function(path: Path) -> dict[str, Any] | None:
    """The function fields a module's tensor file was written with; None for a file written
    before they were (its safetensors metadata is {"format": "peftport-module/1"})."""
    import struct

    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return None
        (n,) = struct.unpack("<Q", head)
        if n > 100_000_000:  # not a safetensors header; load_file reports the file
            return None
        try:
            header = json.loads(fh.read(n))
            text = header.get("__metadata__", {}).get(FUNCTION_KEY)
            return json.loads(text)["function"] if text is not None else None
        except (ValueError, TypeError, KeyError, AttributeError):
            raise PeftportError(
                f"{path}: its metadata key {FUNCTION_KEY!r} is not readable; "
                "the file was changed or corrupted"
            ) from None


def _check_function(meta: Mapping[str, Any], tensor_path: Path, meta_path: Path) -> None:
    """module.json's function fields against those the tensor file (and so its sha256) holds.
    A module written before they were covered is checked the old way (tensors only) with a
    warning, so old module folders stay readable."""
    stored = _stored_function(tensor_path)
    if stored is None:
        warnings.warn(
            f"{meta_path}: written by an older peftport, whose sha256 covers the tensors only, "
            "not the technique, config and labels in module.json; save the module again (e.g. "
            "`peftport port` or re-train) to have them covered",
            UserWarning,
            stacklevel=3,
        )
        return
    mine = _function(meta)
    diff = [k for k in FUNCTION_FIELDS if stored.get(k) != mine[k]]
    if diff:
        raise PeftportError(
            f"{meta_path}: field(s) {', '.join(repr(k) for k in diff)} differ from those the "
            f"module was saved with (in {tensor_path.name}, covered by its sha256): the file was "
            "changed or corrupted"
        )


def _sha256(path: Path) -> str:
    from peftport.assets import sha256_file

    return sha256_file(path)


def _check_fields(meta: Mapping[str, Any], where: str) -> None:
    """Required fields present with the right types; the technique, config, kind and family
    known and consistent. Raises PeftportError naming `where` and the field."""
    from peftport.hosts.spec import KINDS, LAYOUTS
    from peftport.techniques import TECHNIQUES, supports

    missing = [k for k in REQUIRED if k not in meta]
    if missing:
        raise PeftportError(f"{where}: missing required field(s) {', '.join(missing)}")
    for key, annotation in {**REQUIRED, **OPTIONAL}.items():
        if key in meta and not of_type(annotation, meta[key])[0]:
            raise PeftportError(
                f"{where}: field {key!r} must be "
                f"{describe(annotation, JSON_WORDS)}, got {meta[key]!r}"
            )
    if meta["steps"] < 0:
        raise PeftportError(f"{where}: field 'steps' must be >= 0, got {meta['steps']}")
    if meta["technique"] not in TECHNIQUES:
        raise PeftportError(
            f"{where}: field 'technique': " + TECHNIQUES.unknown_message(meta["technique"])
        )
    if meta["host_kind"] not in KINDS:
        raise PeftportError(
            f"{where}: field 'host_kind' must be one of {', '.join(KINDS)}, "
            f"got {meta['host_kind']!r}"
        )
    if meta["host_family"] not in LAYOUTS:
        raise PeftportError(
            f"{where}: field 'host_family' must be one of "
            f"{', '.join(sorted(LAYOUTS))}, got {meta['host_family']!r}"
        )
    if LAYOUTS[meta["host_family"]].kind != meta["host_kind"]:
        raise PeftportError(
            f"{where}: host_family {meta['host_family']!r} is a "
            f"{LAYOUTS[meta['host_family']].kind} family, not "
            f"{meta['host_kind']!r}"
        )
    if not supports(meta["technique"], meta["host_kind"]):
        raise PeftportError(
            f"{where}: technique {meta['technique']!r} is not supported on "
            f"{meta['host_kind']} hosts"
        )
    technique = TECHNIQUES.get(meta["technique"])
    try:
        technique.config_cls.from_dict(meta["config"])
    except PeftportError as e:
        raise PeftportError(f"{where}: field 'config': {e}") from None
    if "adapter_name" in meta and not meta["adapter_name"].isidentifier():
        raise PeftportError(
            f"{where}: field 'adapter_name' must be an identifier, got {meta['adapter_name']!r}"
        )


def _check_tensors(tensors: Mapping[str, torch.Tensor], name: str, where: str) -> None:
    if not isinstance(tensors, Mapping) or not tensors:
        raise PeftportError(f"{where}: a module needs at least one tensor")
    bad = [k for k, v in tensors.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if bad:
        raise PeftportError(f"{where}: not a str -> tensor mapping (bad entries: {bad[:5]})")
    if not any(name in k.split(".") for k in tensors):
        raise PeftportError(
            f"{where}: no tensor name contains the module name {name!r}; "
            "module tensors are named like '...loras.<name>.lora_A'"
        )


def save_module(
    out_dir: str | Path,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    overwrite: bool = False,
) -> Path:
    """Write a module folder atomically; returns its path. The metadata is validated first:
    an invalid module is never written. An existing non-empty folder is replaced only with
    `overwrite=True`."""
    from safetensors.torch import save

    out = Path(out_dir)
    where = f"module {out}"
    meta = dict(meta)
    for key in FILLED:
        meta.pop(key, None)  # always recomputed
    _check_fields(meta, where)  # other top-level fields are kept as given (provenance etc.)
    from peftport.techniques import make_config

    meta["config"] = make_config(meta["technique"], meta["config"]).as_dict()  # record defaults
    name = meta.get("adapter_name", "peftport")
    _check_tensors(tensors, name, where)
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise PeftportError(f"{where}: metadata is not JSON-able: {e}") from None
    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(tensors.items())}
    # ONE metadata key: safetensors writes its metadata map in hash order, so with two keys
    # identical modules could get different bytes, and so different sha256s. Its value holds
    # the fields that decide what the module computes, so the file's sha256 covers them too.
    data = save(flat, metadata={FUNCTION_KEY: _function_text(meta)})
    meta.update(
        schema_version=SCHEMA_VERSION,
        format=FORMAT,
        tensor_file=TENSOR_FILE,
        sha256=hashlib.sha256(data).hexdigest(),
        num_tensors=len(flat),
        num_parameters=sum(v.numel() for v in flat.values()),
        head_keys=[k for k in flat if name not in k.split(".")],
        versions=package_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    return write_folder(out, {TENSOR_FILE: data, META_FILE: text.encode()}, overwrite=overwrite)


def _module_folder(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (TENSOR_FILE, META_FILE):
        p = p.parent
    if not p.exists():
        raise PeftportError(f"{p}: no such module folder")
    if not p.is_dir():
        raise PeftportError(
            f"{p} is not a module folder (expected a folder with {META_FILE} and {TENSOR_FILE})"
        )
    return p


def read_meta(path: str | Path) -> dict[str, Any]:
    """The metadata alone, checked (schema, fields, technique, config); tensors not read."""
    folder = _module_folder(path)
    meta_path = folder / META_FILE
    if not meta_path.exists():
        raise PeftportError(f"{folder}: no {META_FILE}; not a peftport module")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PeftportError(f"{meta_path}: not valid JSON ({e})") from None
    if not isinstance(meta, dict):
        raise PeftportError(f"{meta_path}: expected a JSON object")
    if meta.get("format") != FORMAT:
        raise PeftportError(
            f"{meta_path}: field 'format' is {meta.get('format')!r}, not "
            f"{FORMAT!r}; not a peftport module"
        )
    version = meta.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PeftportError(
            f"{meta_path}: field 'schema_version' is {version!r}; this peftport "
            f"reads schema version {SCHEMA_VERSION}"
        )
    _check_fields(meta, str(meta_path))
    for key, kind in (
        ("sha256", str),
        ("tensor_file", str),
        ("num_tensors", int),
        ("head_keys", list),
    ):
        if not isinstance(meta.get(key), kind):
            raise PeftportError(f"{meta_path}: field {key!r} is missing or malformed")
    if meta["tensor_file"] != TENSOR_FILE:
        raise PeftportError(f"{meta_path}: field 'tensor_file' must be {TENSOR_FILE!r}")
    return meta


def load_module(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, meta) of a module folder, after checking it; PeftportError on any mismatch."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    meta = read_meta(path)
    folder = _module_folder(path)
    tensor_path = folder / TENSOR_FILE
    meta_path = folder / META_FILE
    if not tensor_path.exists():
        raise PeftportError(f"{tensor_path}: missing (the module's tensors)")
    digest = _sha256(tensor_path)
    if digest != meta["sha256"]:
        raise PeftportError(
            f"{tensor_path}: sha256 {digest[:16]}... does not match field "
            f"'sha256' {meta['sha256'][:16]}... in {meta_path}: the file was "
            "changed or corrupted"
        )
    _check_function(meta, tensor_path, meta_path)
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PeftportError(f"{tensor_path}: not a readable safetensors file ({e})") from None
    if len(tensors) != meta["num_tensors"]:
        raise PeftportError(
            f"{tensor_path}: holds {len(tensors)} tensors, field 'num_tensors' "
            f"in {meta_path} says {meta['num_tensors']}"
        )
    name = meta.get("adapter_name", "peftport")
    heads = sorted(k for k in tensors if name not in k.split("."))
    if heads != sorted(meta["head_keys"]):
        raise PeftportError(
            f"{tensor_path}: head tensors {heads} differ from field "
            f"'head_keys' {meta['head_keys']} in {meta_path}"
        )
    bad = [
        k for k, v in tensors.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())
    ]
    if bad:
        raise PeftportError(f"{tensor_path}: non-finite values in {bad[:5]}")
    _check_tensors(tensors, name, str(tensor_path))
    return tensors, meta
