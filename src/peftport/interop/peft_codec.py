"""What a PEFT conversion is made of: a codec per PEFT type (export and import functions),
and the pieces every codec shares (the config's common fields, target regexes, the head).

A technique names its PEFT counterpart (`Technique.peft_type`); peftport.interop.peft finds the
codec for that type in its table. A codec module defines its codecs with these types.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.hosts.spec import ENCODER_CLASSIFIER, LAYOUTS
from peftport.interop.folders import ModuleHost, base_model_name
from peftport.interop.names import PEFT_TASK_TYPES, fill_name, parse_name

Tensors = Mapping[str, torch.Tensor]
Converted = tuple[dict[str, Any], dict[str, torch.Tensor]]  # (a config, tensors by name)


@dataclass(frozen=True)
class HostFacts:
    """What an export needs from the loaded host beyond the module file (prefix tuning: the
    position table and the number of attention heads); empty for most codecs."""

    position_table: torch.Tensor | None = None
    num_heads: int | None = None


@dataclass(frozen=True)
class PeftFolder:
    """A PEFT folder on its way in: its config and tensors, and what the importer knows."""

    technique: str
    config: Mapping[str, Any]
    config_path: Path
    tensors: Tensors
    used: frozenset[str]  # tensors already taken (the head)
    hint: Mapping[str, Any]  # the technique config of peftport's sidecar; {} for a foreign one
    # drop modules at sites this host's AdapterHub technique cannot adapt (with a warning),
    # rather than refuse the folder; what was dropped is recorded in `dropped`
    drop_unsupported: bool = False
    dropped: dict[str, int] = field(default_factory=dict)  # module path -> its parameters


def can_export_anywhere(family: str) -> str:
    """The family check of a codec that works on every family: no reason to refuse."""
    return ""


@dataclass(frozen=True)
class PeftCodec:
    """The conversion of one PEFT type, both ways.

    - `to_peft(tensors, meta, where, facts)` -> (adapter_config.json contents, PEFT tensors);
    - `from_peft(folder, host, name, where)` -> (peftport config fields, module tensors in
      AdapterHub names), before the module is attached (the importer fills the sites the
      folder leaves out with the technique's neutral value, if it has one);
    - `refuse_family(family)` -> why PEFT computes another function on that family, or "";
    - `host_facts(host, family, where)`: what an export needs from the loaded host, if anything;
    - `head_names`: the head's (peftport, PEFT) name templates.
    """

    peft_type: str
    head_names: tuple[str, str]
    to_peft: Callable[[Tensors, Mapping[str, Any], str, HostFacts], Converted]
    from_peft: Callable[[PeftFolder, Any, str, str], Converted]
    refuse_family: Callable[[str], str] = can_export_anywhere
    host_facts: Callable[[Any, str, str], HostFacts] | None = None


def target_regex(paths: Sequence[str], dims: Mapping[str, Any], family: str) -> str:
    """A PEFT target_modules regex (re.fullmatch) matching exactly `paths`: a layer index is
    written as \\d+ only where every layer of that stack is present, else spelled out."""
    stacks = LAYOUTS[family].layer_stacks
    depth = dict(dims.get("layers") or {})
    groups: dict[tuple[str, str], set[int]] = {}
    literal = []
    for path in paths:
        for stack in stacks:
            m = re.match(rf"^{re.escape(stack)}\.(\d+)\.(.+)$", path)
            if m:
                groups.setdefault((stack, m.group(2)), set()).add(int(m.group(1)))
                break
        else:
            literal.append(re.escape(path))
    alternatives = []
    for (stack, rest), layers in sorted(groups.items()):
        if depth.get(stack) and layers == set(range(depth[stack])):
            alternatives.append(rf"{re.escape(stack)}\.\d+\.{re.escape(rest)}")
        else:
            alternatives += [rf"{re.escape(stack)}\.{i}\.{re.escape(rest)}" for i in sorted(layers)]
    regex = "|".join(sorted(alternatives) + sorted(literal))
    regex = f"(?:{regex})" if "|" in regex else regex
    wanted = set(paths)
    assert all(re.fullmatch(regex, p) for p in wanted), "target regex misses a module"
    return regex


def peft_common(meta: Mapping[str, Any], peft_type: str) -> dict[str, Any]:
    target = ModuleHost.of(meta)
    return {
        "peft_type": peft_type,
        "task_type": PEFT_TASK_TYPES[meta["host_kind"]],
        "base_model_name_or_path": base_model_name(target.host_id),
        "inference_mode": True,
        "revision": None,
    }


def export_head(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    head_names: tuple[str, str],
    where: str,
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The head in PEFT names, and modules_to_save. Encoder classifiers need their head: PEFT
    would otherwise keep the base model's own (freshly initialised) classifier."""
    heads = list(meta.get("head_keys") or [])
    if meta["host_kind"] != ENCODER_CLASSIFIER:
        return {}, []
    if not heads:
        raise PeftportError(
            f"{where}: the module carries no classification head (field "
            "'head_keys' is empty); PEFT would use the host's untrained "
            "classifier, so the export would not give the module's outputs"
        )
    ours, theirs = head_names
    out = {}
    for key in heads:
        head = parse_name(ours, key)["head"]  # type: ignore[index]
        out[fill_name(theirs, head=head)] = tensors[key]
    return out, sorted({k.split(".")[0] for k in heads})


def import_head(
    tensors: Mapping[str, torch.Tensor], head_names: tuple[str, str]
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Head tensors in PEFT names -> host names (PEFT's wrapper names stripped)."""
    _ours, theirs = head_names
    found, used = {}, set()
    for key, value in tensors.items():
        got = parse_name(theirs, key)
        if got is None:
            continue
        head = got["head"].replace(".modules_to_save.default", "").replace(".modules_to_save", "")
        if head.split(".")[0] in ("classifier", "score"):
            found[head] = value
            used.add(key)
    return found, used
