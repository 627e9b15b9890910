"""PEFT's prefix tuning, both ways: AdapterHub's prefix evaluated to PEFT's eval-time prefix,
plus the host's position table shifted by the prefix length (PEFT hands the prefix over as a KV
cache). See peftport.interop's docstring for why, and where it is refused.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.hosts.spec import LAYOUTS
from peftport.interop import peft_codec as codec
from peftport.interop.folders import ModuleHost
from peftport.interop.names import (
    PEFT_POSITION_TABLE,
    PEFT_PREFIX,
    PREFIX_FLAT_PART,
    PREFIX_MLP_PARTS,
    PREFIX_POOL,
    PREFIX_REFUSED,
    PROMPT_LEARNING_HEAD_NAMES,
    family_position_table,
    fill_name,
    listing,
    parse_name,
)


def _activation(non_linearity: str) -> Any:
    from adapters.methods.modeling import Activation_Function_Class

    return Activation_Function_Class(non_linearity.lower())


def effective_prefix(
    tensors: Mapping[str, torch.Tensor], name: str, cfg: Any, where: str
) -> torch.Tensor:
    """The eval-time prefix (prefix_length, layers * 2 * heads * head_dim): the MLP evaluated on
    its embedding, or the flat vector reshaped. Only a self-attention prefix (encoder or
    decoder-only hosts) is looked for."""
    found: dict[str, torch.Tensor] = {}
    for key, value in tensors.items():
        got = parse_name(PREFIX_POOL, key, name)
        if got is not None:
            found[got["part"]] = value
    p = cfg.prefix_length
    if cfg.flat:
        if set(found) != {PREFIX_FLAT_PART}:
            raise PeftportError(
                f"{where}: a flat prefix needs exactly one tensor "
                f"'...self_prefix.{PREFIX_FLAT_PART}', found {sorted(found)}"
            )
        return found[PREFIX_FLAT_PART].reshape(p, -1)
    if set(found) != set(PREFIX_MLP_PARTS):
        raise PeftportError(
            f"{where}: an MLP prefix needs {list(PREFIX_MLP_PARTS)} under "
            f"'...self_prefix', found {sorted(found)}"
        )
    with torch.no_grad():
        hidden = torch.nn.functional.linear(
            found["wte.weight"], found["control_trans.0.weight"], found["control_trans.0.bias"]
        )
        hidden = _activation(cfg.non_linearity)(hidden)
        return torch.nn.functional.linear(
            hidden, found["control_trans.2.weight"], found["control_trans.2.bias"]
        )


def shift_positions(table: torch.Tensor, by: int) -> torch.Tensor:
    """A position table whose row by+j is row j of `table`: under PEFT's prefix (a KV cache of
    `by` entries) text token j looks up position by+j and so finds its own row j. Rows below
    `by` are never looked up and are zero."""
    out = torch.zeros_like(table)
    out[by:] = table[: table.shape[0] - by]
    return out


def prefix_to_peft(
    tensors: codec.Tensors, meta: Mapping[str, Any], where: str, facts: codec.HostFacts
) -> codec.Converted:
    from peftport.techniques import make_config

    family = meta["host_family"]
    cfg = make_config(meta["technique"], meta["config"])
    position_table, num_heads = facts.position_table, facts.num_heads
    if position_table is None or num_heads is None:
        raise PeftportError(
            f"{where}: a prefix export needs the host's position table and "
            "number of attention heads (give the host)"
        )
    dims = ModuleHost.of(meta).dims
    layers = sum((dims.get("layers") or {}).values())
    name = meta.get("adapter_name", "peftport")
    heads = set(meta.get("head_keys") or [])
    stray = sorted(
        k for k in tensors if k not in heads and parse_name(PREFIX_POOL, k, name) is None
    )
    if stray:
        raise PeftportError(f"{where}: tensors outside the self-attention prefix: {listing(stray)}")
    prefix = effective_prefix(tensors, name, cfg, where)
    width = prefix.shape[1] // (2 * max(layers, 1))
    if prefix.shape[1] != 2 * layers * width or width % num_heads:
        raise PeftportError(
            f"{where}: the prefix is {tuple(prefix.shape)}, which does not "
            f"split into {layers} layers x 2 x {num_heads} heads"
        )
    p = cfg.prefix_length
    if position_table.shape[0] <= p:
        raise PeftportError(
            f"{where}: prefix_length {p} leaves no room in a position table of "
            f"{position_table.shape[0]} rows"
        )
    table = family_position_table(family)
    out = {
        PEFT_PREFIX: prefix.contiguous(),
        fill_name(PEFT_POSITION_TABLE, table=table): shift_positions(position_table, p),
    }
    head, save = codec.export_head(tensors, meta, PROMPT_LEARNING_HEAD_NAMES, where)
    out.update(head)
    config = codec.peft_common(meta, "PREFIX_TUNING")
    config.update(
        num_virtual_tokens=p,
        token_dim=width,
        num_layers=layers,
        num_attention_heads=num_heads,
        num_transformer_submodules=1,
        encoder_hidden_size=width,
        prefix_projection=False,
        modules_to_save=[table, *save],
    )
    return config, out


def _peft_prefix_state(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], h: Any, name: str, where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], set[str]]:
    family = h.spec.family
    if not family_position_table(family):
        why = PREFIX_REFUSED.get(family, "no position table is known for it")
        raise PeftportError(
            f"{where}: a PEFT prefix on {family} computes another function than AdapterHub's: {why}"
        )
    if config.get("num_transformer_submodules", 1) != 1:
        raise PeftportError(f"{where}: field 'num_transformer_submodules' must be 1 here")
    p = int(config.get("num_virtual_tokens", 0))
    layers = sum(len(h.model.get_submodule(s)) for s in LAYOUTS[family].layer_stacks)
    hidden = int(getattr(h.model.config, LAYOUTS[family].hidden_key))
    if PEFT_PREFIX not in tensors:
        raise PeftportError(f"{where}: no '{PEFT_PREFIX}' tensor")
    prefix = tensors[PEFT_PREFIX]
    if tuple(prefix.shape) != (p, layers * 2 * hidden):
        raise PeftportError(
            f"{where}: '{PEFT_PREFIX}' is {tuple(prefix.shape)}; this host needs "
            f"({p}, {layers * 2 * hidden}) (num_virtual_tokens x layers * 2 * "
            "hidden)"
        )
    table_name = fill_name(PEFT_POSITION_TABLE, table=family_position_table(family))
    own = h.model.get_submodule(family_position_table(family)).weight.detach()
    given = tensors.get(table_name)
    if given is None or given.shape != own.shape or not torch.equal(given, shift_positions(own, p)):
        raise PeftportError(
            f"{where}: PEFT's prefix moves the text to positions {p}.. (the prefix is a KV cache) "
            "and AdapterHub's does not; the folder must carry the host's position table shifted "
            f"down by {p} in modules_to_save ('{table_name}'), as peftport's export writes it, "
            "for the two to compute the same function"
        )
    cfg = {"prefix_length": p, "flat": True}
    state = {
        fill_name(
            PREFIX_POOL, name, base=h.model.base_model_prefix, part=PREFIX_FLAT_PART
        ): prefix.reshape(-1)
    }
    return cfg, state, {PEFT_PREFIX, table_name}


def prefix_from_peft(folder: codec.PeftFolder, h: Any, name: str, where: str) -> codec.Converted:
    cfg, state, more = _peft_prefix_state(folder.config, folder.tensors, h, name, where)
    stray = sorted(set(folder.tensors) - folder.used - more)
    if stray:
        raise PeftportError(
            f"{where}: tensors that are neither the prefix, the position "
            f"table nor the head: {listing(stray)}"
        )
    return cfg, state


def prefix_refused(family: str) -> str:
    """Why a PEFT prefix computes another function than AdapterHub's on `family`, or ""."""
    if family_position_table(family):
        return ""
    return PREFIX_REFUSED.get(family, f"no position table is known for {family!r}")


def prefix_host_facts(h: Any, family: str, where: str) -> codec.HostFacts:
    """The host's position table (the export carries it shifted) and its attention heads."""
    cfg = h.model.config
    if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
        raise PeftportError(
            f"{where}: the host uses {cfg.position_embedding_type} "
            "positions; only an absolute position table can be "
            "shifted for PEFT's prefix"
        )
    table = h.model.get_submodule(family_position_table(family))
    return codec.HostFacts(
        position_table=table.weight.detach().clone(),
        num_heads=int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads),
    )


PREFIX_TUNING = codec.PeftCodec(
    "PREFIX_TUNING",
    PROMPT_LEARNING_HEAD_NAMES,
    prefix_to_peft,
    prefix_from_peft,
    refuse_family=prefix_refused,
    host_facts=prefix_host_facts,
)
