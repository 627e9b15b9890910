"""Moving modules out of peftport and back in: Hugging Face PEFT adapter folders and AdapterHub
adapter folders.

    export_peft(MODULE, OUT)                    # adapter_config.json + adapter_model.safetensors
    import_peft(FOLDER, host=H, out_dir=OUT, task=T, label_words=W)
    export_adapterhub(MODULE, OUT)              # adapter_config.json + adapter.safetensors (+ head)
    import_adapterhub(FOLDER, host=H, out_dir=OUT, task=T, label_words=W)

An exported folder loads with `peft.PeftModel.from_pretrained(base_model, OUT)` (or with
`model.load_adapter(OUT, use_safetensors=True)` in AdapterHub `adapters`) on a fresh copy of the
module's host and gives the outputs peftport's own model gives (the tests check `allclose`).
Where the two libraries compute different functions and no setting of PEFT reproduces
AdapterHub's, export refuses with the step that differs (`PEFT_REFUSED`, `PREFIX_REFUSED`)
instead of writing a file that gives other outputs. docs/interop.md has the tables and reasons.

What maps to what (AdapterHub `adapters` 1.3.0 -> PEFT 0.21.2):
- LoRA: the same `nn.Linear` (same module path) in both libraries; A is (r, in) and B (out, r)
  in both, on Linear and on GPT-2's Conv1D alike, so nothing is transposed; the scaling is
  alpha / r in both (`use_rslora` off). GPT-2's fused q/k/v projection `c_attn`: AdapterHub
  keeps one (r, in) A and one (H, r) B per enabled matrix (a grouped product); PEFT has one LoRA
  on all of `c_attn`. The export is exact at rank n*r (n enabled matrices): A stacked, B block
  diagonal, alpha * n; the other LoRAs are padded to that rank with zeros (an exact no-op).
- (IA)^3: AdapterHub implements it as a LoRA with composition_mode "scale" that multiplies a
  module's OUTPUT (bias included) by alpha * vector, also on the feed-forward path (there it scales
  the up-projection's output, before the activation; on Llama adapters' "intermediate" site is
  `down_proj`). PEFT's `feedforward_modules` scale the INPUT of a module instead (after the
  activation): another function. So every target is exported as a non-feed-forward PEFT target,
  which scales outputs exactly like AdapterHub; PEFT's (out, 1) `ia3_l` equals AdapterHub's
  (out, 1) `lora_B` times alpha.
- Prefix tuning: both libraries lay the prefix out as (prefix, layers * 2, heads, head_dim) and
  prepend it to every layer's keys and values. The MLP reparameterisation is evaluated away (PEFT
  stores the eval-time prefix). One step differs: PEFT hands the prefix to the model as a KV
  cache, so the text's position ids start at prefix_length; AdapterHub's text keeps positions 0...
  On hosts with an absolute position table (BERT, GPT-2) the export carries a copy of that table
  shifted down by prefix_length (`modules_to_save`), which makes the two identical for inputs of up
  to max_positions - prefix_length tokens. Llama (rotary positions) and T5 are refused.
- The classification head (encoder hosts) goes into `modules_to_save` ("classifier"); PEFT
  saves it as `base_model.model.classifier.*` (LoRA, IA3) or `base_model.classifier.*` (prefix).
- Prompt tuning, bottleneck adapters and Compacter have no PEFT export (see PEFT_REFUSED); all six
  techniques export as AdapterHub folders.

Reading is safetensors only: `adapter_model.bin` / `pytorch_adapter.bin` are refused with a
message that says how to convert them; nothing is ever unpickled. Folders are written to a
temporary folder beside the target and renamed into place. Each exported folder also holds
`peftport_export.json` (provenance: the module's technique, config, host, sha256), which the two
libraries ignore and an import uses when it finds it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from peftport.atomic import write_folder
from peftport.errors import PeftportError
from peftport.hosts.spec import DECODER_LM, ENCODER_CLASSIFIER, LAYOUTS, TEXT_TO_TEXT

__all__ = [
    "FORMATS",
    "PEFT_REFUSED",
    "PREFIX_REFUSED",
    "ModuleHost",
    "Site",
    "export_peft",
    "import_peft",
    "export_adapterhub",
    "import_adapterhub",
    "export_module",
    "import_module",
    "peft_export",
    "adapterhub_export",
    "adapterhub_config_to_peftport",
    "check_peft_exportable",
    "effective_prefix",
    "shift_positions",
    "fuse_qkv_lora",
    "split_qkv_lora",
    "lora_sites",
    "base_model_name",
    "folder_summary",
]

FORMATS = ("peft", "adapterhub")

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_PICKLE = "adapter_model.bin"
AH_CONFIG = "adapter_config.json"
AH_WEIGHTS = (
    "adapter.safetensors"  # what adapters 1.3.0 reads with load_adapter(use_safetensors=True)
)
AH_PICKLE = "pytorch_adapter.bin"
AH_HEAD_CONFIG = "head_config.json"
AH_HEAD_WEIGHTS = "model_head.safetensors"
AH_HEAD_PICKLE = "pytorch_model_head.bin"
SIDECAR = "peftport_export.json"
SIDECAR_FORMAT = "peftport-export"
ADAPTERS_VERSION = "adapters.1.3.0"

# Which PeftModel class `PeftModel.from_pretrained` builds for each host kind.
PEFT_TASK_TYPES = {
    ENCODER_CLASSIFIER: "SEQ_CLS",
    TEXT_TO_TEXT: "SEQ_2_SEQ_LM",
    DECODER_LM: "CAUSAL_LM",
}
# Tensor names, AdapterHub (= peftport) pattern -> PEFT pattern, in the manner of torchtune's
# _FROM_HF tables. {path}: the adapted module's path in the task model (the same module in both
# libraries); {name}: the peftport module name; {head}: a head tensor's name.
PEFT_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "lora": {
        "A": ("{path}.loras.{name}.lora_A", "base_model.model.{path}.lora_A.weight"),
        "B": ("{path}.loras.{name}.lora_B", "base_model.model.{path}.lora_B.weight"),
    },
    "ia3": {"l": ("{path}.loras.{name}.lora_B", "base_model.model.{path}.ia3_l")},
}
# Head tensors: PEFT's tuner models wrap the task model once more than prompt learning does.
PEFT_HEAD_NAMES = {
    "lora": ("{head}", "base_model.model.{head}"),
    "ia3": ("{head}", "base_model.model.{head}"),
    "prefix": ("{head}", "base_model.{head}"),
}
# Prefix tuning: AdapterHub's pool (MLP or flat) -> PEFT's eval-time prefix, plus the shifted
# position table (see the module docstring).
PREFIX_POOL = "{base}.prefix_tuning.prefix_tunings.{name}.self_prefix.{part}"
PREFIX_MLP_PARTS = (
    "wte.weight",
    "control_trans.0.weight",
    "control_trans.0.bias",
    "control_trans.2.weight",
    "control_trans.2.bias",
)
PREFIX_FLAT_PART = "control_trans"
PEFT_PREFIX = "prompt_embeddings"
PEFT_POSITION_TABLE = "base_model.{table}.weight"


def _position_table(family: str) -> str:
    """The family's absolute position table ("" if it has none, or is unknown)."""
    return LAYOUTS[family].position_table if family in LAYOUTS else ""


# technique -> why PEFT has no faithful counterpart (export refuses with this).
PEFT_REFUSED = {
    "adapter": "PEFT 0.21.2 has no bottleneck (Houlsby / Pfeiffer) adapters; export it as an "
    "AdapterHub folder (--format adapterhub)",
    "compacter": "PEFT 0.21.2 has no Compacter (PHM bottleneck adapters); export it as an "
    "AdapterHub folder (--format adapterhub)",
    "prompt": "the two libraries put the soft tokens in different places: AdapterHub appends "
    "them to the OUTPUT of the embedding layer (after the position and token-type embeddings "
    "and LayerNorm; the text keeps positions 0..n-1), PEFT prepends them to the word embeddings "
    "BEFORE that layer (they go through LayerNorm and the text moves to positions "
    "prompt_length..), and no PEFT prompt passes LayerNorm unchanged. Export it as an AdapterHub "
    "folder (--format adapterhub)",
}
# family -> why a prefix cannot be exported to PEFT there.
PREFIX_REFUSED = {
    "t5": "PEFT's T5 prefix reaches only the decoder (its self- and cross-attention, built "
    "from one tensor repeated) and leaves the encoder's self-attention unprefixed; AdapterHub "
    "trains three separate prefixes (encoder, decoder, cross-attention)",
    "llama": "PEFT hands the prefix over as a KV cache, which moves the text's rotary positions "
    "to prefix_length.. while AdapterHub's text keeps positions 0..; unlike an absolute position "
    "table (BERT, GPT-2), rotary positions cannot be shifted back through modules_to_save",
}

# adapters config fields that only choose an initialisation: ignored when a folder's config is
# matched to a peftport config (the trained tensors replace whatever they initialised).
INIT_ONLY = frozenset(
    {
        "init_weights",
        "init_weights_seed",
        "prompt_init",
        "prompt_init_text",
        "random_uniform_scale",
        "phm_init_range",
        "phm_c_init",
        "hypercomplex_nonlinearity",
        "learn_phm",
    }
)

# PEFT LoRA / IA3 fields peftport cannot reproduce: field -> (value that is fine, why not).
PEFT_UNSUPPORTED: dict[str, tuple[Any, str]] = {
    "use_dora": (
        False,
        "DoRA rescales each weight column by a learnt magnitude; AdapterHub's "
        "LoRA has no magnitude vector in peftport",
    ),
    "use_rslora": (False, "rsLoRA scales by alpha / sqrt(r); AdapterHub scales by alpha / r"),
    "bias": ("none", "AdapterHub's LoRA trains no biases"),
    "lora_bias": (False, "AdapterHub's LoRA B has no bias"),
    "rank_pattern": ({}, "AdapterHub's LoRA has one rank for every module"),
    "alpha_pattern": ({}, "AdapterHub's LoRA has one alpha for every module"),
    "layer_replication": (None, "it changes the host's layer stack"),
    "target_parameters": (None, "it adapts raw parameters, not modules"),
    "trainable_token_indices": (None, "it trains embedding rows of the host"),
    "alora_invocation_tokens": (None, "activated LoRA switches on mid-sequence"),
    "use_qalora": (False, "QA-LoRA pools its input groups"),
    "megatron_config": (None, "Megatron-parallel layers"),
}


# PEFT initialisations that rewrite the base weights (the adapter is relative to those).
BASE_CHANGING_INITS = ("pissa", "olora", "corda", "loftq")


# --- naming tables ------------------------------------------------------------------------


def _pattern(template: str, name: str) -> re.Pattern[str]:
    """A template like "{path}.loras.{name}.lora_A" as an anchored regex with named groups;
    {name} is the literal module name."""
    parts, pos = [], 0
    for m in re.finditer(r"\{(\w+)\}", template):
        parts.append(re.escape(template[pos : m.start()]))
        field_ = m.group(1)
        parts.append(re.escape(name) if field_ == "name" else f"(?P<{field_}>.+?)")
        pos = m.end()
    parts.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(parts) + "$")


def _parse(template: str, key: str, name: str = "") -> dict[str, str] | None:
    m = _pattern(template, name).match(key)
    return m.groupdict() if m else None


def _fill(template: str, name: str = "", **fields_: str) -> str:
    return template.format(name=name, **fields_)


def _rename_part(key: str, old: str, new: str) -> str:
    return ".".join(new if p == old else p for p in key.split("."))


def _listing(items: Sequence[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


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


def _host_names(host: Any) -> set[str]:
    """Every name under which a loaded host may appear in a folder's config."""
    from peftport.assets import HubSnapshot

    names = {host.spec.id, str(host.folder), str(Path(host.folder).resolve())}
    names |= {s.repo_id for s in host.spec.sources if isinstance(s, HubSnapshot)}
    names.add(getattr(host.model.config, "_name_or_path", "") or host.spec.id)
    return names


# --- PEFT export (pure) -----------------------------------------------------------------------


def _fused_site(family: str) -> str | None:
    """The fused q/k/v projection of a family (GPT-2's attn.c_attn), from the host layout."""
    return LAYOUTS[family].attention.get("qkv")


def _is_fused(path: str, family: str) -> bool:
    site = _fused_site(family)
    return bool(site) and (path == site or path.endswith("." + site))


def _modules_by_path(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    parts: Mapping[str, tuple[str, str]],
    heads: Sequence[str],
    where: str,
) -> dict[str, dict[str, torch.Tensor]]:
    """path -> {part: tensor} for the module tensors named by `parts`' AdapterHub templates;
    any other non-head tensor is an error (it would be silently lost)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    stray = []
    for key, value in sorted(tensors.items()):
        if key in heads:
            continue
        for part, (ours, _theirs) in parts.items():
            got = _parse(ours, key, name)
            if got is not None:
                out.setdefault(got["path"], {})[part] = value
                break
        else:
            stray.append(key)
    if stray:
        raise PeftportError(
            f"{where}: tensors that do not fit the table of names: {_listing(stray)}"
        )
    incomplete = [p for p, got in out.items() if set(got) != set(parts)]
    if incomplete:
        raise PeftportError(
            f"{where}: modules missing one of {sorted(parts)}: {_listing(incomplete)}"
        )
    return out


def fuse_qkv_lora(
    a: torch.Tensor, b: torch.Tensor, enabled: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor]:
    """AdapterHub's grouped LoRA on a fused q/k/v projection -> one plain LoRA of rank n*r.

    a: (n*r, in), group g = rows g*r..; b: (n*H, r), group g = rows g*H..; groups follow the
    enabled matrices in q, k, v order. Returns A = a and B (3H, n*r), block g placed at the rows
    of its matrix and the columns of its group (zeros elsewhere), so B @ A = the grouped update.
    """
    n = len(enabled)
    r, width = a.shape[0] // n, b.shape[0] // n
    fused = b.new_zeros(3 * width, n * r)
    for g, matrix in enumerate(enabled):
        m = "qkv".index(matrix)
        fused[m * width : (m + 1) * width, g * r : (g + 1) * r] = b[g * width : (g + 1) * width]
    return a, fused


def split_qkv_lora(
    a: torch.Tensor, b: torch.Tensor, enabled: Sequence[str]
) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """The inverse of `fuse_qkv_lora` when `b` has its block structure (rows of disabled
    matrices zero, each enabled block only in its own column group): (a, b_grouped, r); None
    otherwise."""
    n = len(enabled)
    rank, width = a.shape[0], b.shape[0] // 3
    if n == 0 or rank % n:
        return None
    r = rank // n
    blocks = []
    for m, matrix in enumerate("qkv"):
        rows = b[m * width : (m + 1) * width]
        if matrix not in enabled:
            if rows.any():
                return None
            continue
        g = list(enabled).index(matrix)
        outside = torch.cat([rows[:, : g * r], rows[:, (g + 1) * r :]], dim=1)
        if outside.any():
            return None
        blocks.append(rows[:, g * r : (g + 1) * r])
    return a, torch.cat(blocks), r


def _pad_rank(a: torch.Tensor, b: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A LoRA padded to a higher rank with zero rows of A and zero columns of B: same update."""
    extra = rank - a.shape[0]
    return (
        torch.cat([a, a.new_zeros(extra, a.shape[1])]),
        torch.cat([b, b.new_zeros(b.shape[0], extra)], dim=1),
    )


def _target_regex(paths: Sequence[str], dims: Mapping[str, Any], family: str) -> str:
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


def _peft_common(meta: Mapping[str, Any], peft_type: str) -> dict[str, Any]:
    target = ModuleHost.of(meta)
    return {
        "peft_type": peft_type,
        "task_type": PEFT_TASK_TYPES[meta["host_kind"]],
        "base_model_name_or_path": base_model_name(target.host_id),
        "inference_mode": True,
        "revision": None,
    }


def _head_tensors(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], technique: str, where: str
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
    ours, theirs = PEFT_HEAD_NAMES[technique]
    out = {}
    for key in heads:
        head = _parse(ours, key)["head"]  # type: ignore[index]
        out[_fill(theirs, head=head)] = tensors[key]
    return out, sorted({k.split(".")[0] for k in heads})


def _lora_to_peft(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from peftport.techniques import make_config

    cfg = make_config("lora", meta["config"])
    family, name = meta["host_family"], meta.get("adapter_name", "peftport")
    heads = list(meta.get("head_keys") or [])
    mods = _modules_by_path(tensors, name, PEFT_NAMES["lora"], heads, where)
    enabled = [m for m in "qkv" if m in cfg.targets]
    # a fused q/k/v LoRA becomes rank n*r (see fuse_qkv_lora); the others are padded to match
    widen = len(enabled) if any(_is_fused(p, family) for p in mods) else 1
    rank = cfg.r * widen
    out: dict[str, torch.Tensor] = {}
    for path, ab in mods.items():
        a, b = ab["A"], ab["B"]
        if _is_fused(path, family):
            a, b = fuse_qkv_lora(a, b, enabled)
        elif widen > 1:
            a, b = _pad_rank(a, b, rank)
        out[_fill(PEFT_NAMES["lora"]["A"][1], path=path)] = a
        out[_fill(PEFT_NAMES["lora"]["B"][1], path=path)] = b
    head, save = _head_tensors(tensors, meta, "lora", where)
    out.update(head)
    config = _peft_common(meta, "LORA")
    config.update(
        r=rank,
        lora_alpha=cfg.alpha * widen,
        lora_dropout=cfg.dropout,
        target_modules=_target_regex(sorted(mods), ModuleHost.of(meta).dims, family),
        fan_in_fan_out=family == "gpt2",  # GPT-2's Conv1D stores weights (in, out)
        bias="none",
        use_rslora=False,
        use_dora=False,
        init_lora_weights=True,
        modules_to_save=save or None,
        layers_to_transform=None,
        layers_pattern=None,
        rank_pattern={},
        alpha_pattern={},
    )
    return config, out


def _ia3_to_peft(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from peftport.techniques import make_config

    cfg = make_config("ia3", meta["config"])
    alpha = cfg.to_adapters().alpha  # AdapterHub multiplies the vector by alpha (1 by default)
    family, name = meta["host_family"], meta.get("adapter_name", "peftport")
    heads = list(meta.get("head_keys") or [])
    mods = _modules_by_path(tensors, name, PEFT_NAMES["ia3"], heads, where)
    enabled = [m for m in "qkv" if m in cfg.targets]
    out: dict[str, torch.Tensor] = {}
    for path, got in mods.items():
        vec = got["l"] if alpha == 1 else got["l"] * alpha  # (out, 1)
        if _is_fused(path, family):  # (n*H, 1) -> (3H, 1), disabled matrices scaled by one
            width = vec.shape[0] // len(enabled)
            full = vec.new_ones(3 * width, 1)
            for g, matrix in enumerate(enabled):
                m = "qkv".index(matrix)
                full[m * width : (m + 1) * width] = vec[g * width : (g + 1) * width]
            vec = full
        out[_fill(PEFT_NAMES["ia3"]["l"][1], path=path)] = vec
    head, save = _head_tensors(tensors, meta, "ia3", where)
    out.update(head)
    config = _peft_common(meta, "IA3")
    config.update(
        target_modules=_target_regex(sorted(mods), ModuleHost.of(meta).dims, family),
        feedforward_modules=[],  # output scaling everywhere, as AdapterHub does (docstring)
        fan_in_fan_out=family == "gpt2",
        init_ia3_weights=True,
        modules_to_save=save or None,
    )
    return config, out


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
        got = _parse(PREFIX_POOL, key, name)
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


def _prefix_to_peft(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    where: str,
    position_table: torch.Tensor | None,
    num_heads: int | None,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    from peftport.techniques import make_config

    family = meta["host_family"]
    cfg = make_config("prefix", meta["config"])
    if position_table is None or num_heads is None:
        raise PeftportError(
            f"{where}: a prefix export needs the host's position table and "
            "number of attention heads (give the host)"
        )
    dims = ModuleHost.of(meta).dims
    layers = sum((dims.get("layers") or {}).values())
    name = meta.get("adapter_name", "peftport")
    heads = set(meta.get("head_keys") or [])
    stray = sorted(k for k in tensors if k not in heads and _parse(PREFIX_POOL, k, name) is None)
    if stray:
        raise PeftportError(
            f"{where}: tensors outside the self-attention prefix: {_listing(stray)}"
        )
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
    table = _position_table(family)
    out = {
        PEFT_PREFIX: prefix.contiguous(),
        _fill(PEFT_POSITION_TABLE, table=table): shift_positions(position_table, p),
    }
    head, save = _head_tensors(tensors, meta, "prefix", where)
    out.update(head)
    config = _peft_common(meta, "PREFIX_TUNING")
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


def check_peft_exportable(technique: str, family: str) -> None:
    """Raise (with the step that differs) if PEFT cannot reproduce this technique here."""
    if technique in PEFT_REFUSED:
        raise PeftportError(f"no faithful PEFT export for {technique!r}: {PEFT_REFUSED[technique]}")
    if technique == "prefix" and not _position_table(family):
        why = PREFIX_REFUSED.get(family, f"no position table is known for {family!r}")
        raise PeftportError(f"no faithful PEFT export for 'prefix' on {family}: {why}")


def peft_export(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    *,
    position_table: torch.Tensor | None = None,
    num_heads: int | None = None,
    where: str = "module",
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json contents, tensors in PEFT names) for a module. Pure: prefix modules
    need the host's position table and head count passed in."""
    technique = meta["technique"]
    check_peft_exportable(technique, meta["host_family"])
    if technique == "lora":
        return _lora_to_peft(tensors, meta, where)
    if technique == "ia3":
        return _ia3_to_peft(tensors, meta, where)
    return _prefix_to_peft(tensors, meta, where, position_table, num_heads)


# --- AdapterHub export (pure) -----------------------------------------------------------------


def adapterhub_export(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> dict[str, tuple[dict[str, Any], dict[str, torch.Tensor]] | None]:
    """{"adapter": (config, tensors), "head": (config, tensors) or None} as adapters 1.3.0's
    save_adapter would write them, but complete: every module tensor under its state-dict name
    (so T5 Compacter's phm_rule, which save_adapter drops, is there) and the config's `flat`
    as trained. The head is written only for encoder classifiers: on LM hosts adapters would save
    the LM head (tied to the embeddings) and overwrite the host with it on loading."""
    from peftport.techniques import make_config

    cfg = make_config(meta["technique"], meta["config"])
    target = ModuleHost.of(meta)
    hidden = target.dims.get("hidden_size")
    common = {
        "hidden_size": hidden,
        "model_class": LAYOUTS[meta["host_family"]].model_class,
        "model_name": base_model_name(target.host_id),
        "model_type": meta["host_family"],
        "version": ADAPTERS_VERSION,
    }
    heads = list(meta.get("head_keys") or [])
    name = meta.get("adapter_name", "peftport")
    adapter_cfg = {**common, "config": cfg.to_adapters().to_dict(), "name": name}
    module = {k: v for k, v in tensors.items() if k not in heads}
    head = None
    if meta["host_kind"] == ENCODER_CLASSIFIER and heads:
        words = list(meta["label_words"])
        head_cfg = {
            **common,
            "config": None,
            "name": None,
            "num_labels": len(words),
            "label2id": {w: i for i, w in enumerate(words)},
        }
        head = (head_cfg, {k: tensors[k] for k in heads})
    return {"adapter": (adapter_cfg, module), "head": head}


# --- files ------------------------------------------------------------------------------------


def _safetensors_bytes(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in sorted(tensors.items())}
    # one key ("pt", which transformers checks): with more, safetensors writes them in hash order
    return save(flat, metadata={"format": "pt"})


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def _sidecar(
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


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PeftportError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(value, dict):
        raise PeftportError(f"{path}: expected a JSON object")
    return value


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise PeftportError(f"{path}: not a readable safetensors file ({e})") from None


def _weights_file(folder: Path, safe: str, pickled: str, convert: str) -> Path:
    """The safetensors file of a folder; a pickle-only folder is refused (never unpickled)."""
    if (folder / safe).is_file():
        return folder / safe
    if (folder / pickled).is_file():
        raise PeftportError(
            f"{folder} holds {pickled} (a pickle) and no {safe}; peftport reads safetensors only "
            f"and never unpickles files. Convert it once where you trust it: {convert}"
        )
    raise PeftportError(f"{folder}: no {safe} (the weights)")


def _folder(path: str | Path, config: str) -> Path:
    p = Path(path)
    if not p.is_dir():
        raise PeftportError(f"{p}: no such folder")
    if not (p / config).is_file():
        raise PeftportError(f"{p}: no {config}; not an adapter folder")
    return p


def _read_sidecar(folder: Path) -> dict[str, Any]:
    path = folder / SIDECAR
    if not path.is_file():
        return {}
    side = _read_json(path)
    return side if side.get("format") == SIDECAR_FORMAT else {}


# --- hosts at the edges -----------------------------------------------------------------------


def _load_host(host: Any, num_labels: int) -> Any:
    from peftport.hosts import LoadedHost, load_host

    if isinstance(host, LoadedHost):
        return host
    return load_host(str(host), num_labels=max(num_labels, 1))


def _module_host_loaded(meta: Mapping[str, Any], host: Any, where: str) -> Any:
    """Load the module's own host (or `host`) and check it has the weights the module was made
    for: an export for other weights would describe a module that does not exist."""
    target = ModuleHost.of(meta)
    n = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
    h = _load_host(host if host is not None else target.host_id, n)
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


# --- export edges -----------------------------------------------------------------------------


def export_peft(
    module_dir: str | Path, out_dir: str | Path, *, host: Any = None, overwrite: bool = False
) -> Path:
    """Write a PEFT adapter folder for a lora, ia3 or prefix module; returns its path.

    `host` (id or LoadedHost) is checked against the module's host when given; prefix modules
    load it anyway (the export carries its shifted position table). PeftportError, before
    anything is written, for techniques and hosts PEFT cannot reproduce (see PEFT_REFUSED).
    """
    from peftport.module import load_module

    tensors, meta = load_module(module_dir)
    where = f"module {module_dir}"
    check_peft_exportable(meta["technique"], meta["host_family"])
    position_table = num_heads = None
    if host is not None or meta["technique"] == "prefix":
        h = _module_host_loaded(meta, host, where)
        if meta["technique"] == "prefix":
            cfg = h.model.config
            if getattr(cfg, "position_embedding_type", "absolute") != "absolute":
                raise PeftportError(
                    f"{where}: the host uses {cfg.position_embedding_type} "
                    "positions; only an absolute position table can be "
                    "shifted for PEFT's prefix"
                )
            table = h.model.get_submodule(_position_table(meta["host_family"]))
            position_table = table.weight.detach().clone()
            num_heads = int(getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads)
    config, out = peft_export(
        tensors, meta, position_table=position_table, num_heads=num_heads, where=where
    )
    layout = {"r": config.get("r"), "peft_type": config["peft_type"]}
    files = {
        PEFT_CONFIG: _json_bytes(config),
        PEFT_WEIGHTS: _safetensors_bytes(out),
        SIDECAR: _json_bytes(_sidecar(meta, "peft", layout)),
    }
    return write_folder(Path(out_dir), files, overwrite=overwrite)


def export_adapterhub(
    module_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False
) -> Path:
    """Write an AdapterHub adapter folder (any technique) that `model.load_adapter(folder,
    use_safetensors=True)` loads into a fresh, `adapters.init`-ed copy of the host."""
    from peftport.module import load_module

    tensors, meta = load_module(module_dir)
    parts = adapterhub_export(tensors, meta)
    adapter_cfg, module = parts["adapter"]  # type: ignore[misc]
    files = {
        AH_CONFIG: _json_bytes(adapter_cfg),
        AH_WEIGHTS: _safetensors_bytes(module),
        SIDECAR: _json_bytes(_sidecar(meta, "adapterhub")),
    }
    if parts["head"] is not None:
        head_cfg, head = parts["head"]
        files[AH_HEAD_CONFIG] = _json_bytes(head_cfg)
        files[AH_HEAD_WEIGHTS] = _safetensors_bytes(head)
    return write_folder(Path(out_dir), files, overwrite=overwrite)


# --- import: shared -----------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """One module AdapterHub's LoRA / (IA)^3 can adapt on a host (found by `adapters.init`)."""

    path: str
    location: str  # selfattn | intermediate | output (the config flag that switches it on)
    matrices: tuple[str, ...]  # ("q",), ("k",), ("v",); ("q", "k", "v") if fused; () FFN
    in_features: int
    out_features: int


def lora_sites(model: Any) -> dict[str, Site]:
    """path -> Site for every module adapters 1.3.0 wraps for LoRA on this model."""
    import adapters
    from adapters.methods.lora import LoRALinear, LoRAMergedLinear

    with torch.random.fork_rng(devices=[]):  # adapters.init may draw random numbers
        adapters.init(model)
    sites = {}
    for path, mod in model.named_modules():
        if isinstance(mod, LoRAMergedLinear):
            sites[path] = Site(path, "selfattn", ("q", "k", "v"), mod.in_features, mod.out_features)
        elif isinstance(mod, LoRALinear):
            where = mod.location_key.removesuffix("_lora")
            matrices = (mod.attn_key,) if mod.attn_key else ()
            sites[path] = Site(path, where, matrices, mod.in_features, mod.out_features)
    return sites


def _site_listing(sites: Mapping[str, Site]) -> str:
    shapes = sorted({re.sub(r"\.\d+\.", ".N.", p) for p in sites})
    return _listing(shapes, 12)


def _attach(h: Any, technique: str, config: Any, name: str, seed: int) -> Any:
    from peftport.techniques import attach

    return attach(h.model, h.spec.family, technique, config, name=name, seed=seed)


def _save_import(
    h: Any,
    att: Any,
    state: Mapping[str, torch.Tensor],
    *,
    task: str,
    label_words: Sequence[str],
    hint: Mapping[str, Any],
    extra: dict[str, Any],
    out_dir: str | Path,
    overwrite: bool,
    where: str,
) -> Path:
    """Load `state` into the attached module strictly (every tensor, every shape), save it.
    `hint`: peftport's own sidecar of an export (steps, seed; {} for a foreign folder)."""
    from peftport.module import module_meta, save_module
    from peftport.techniques import load_module_state, module_state

    try:
        load_module_state(h.model, state, att.name)
    except PeftportError as e:
        raise PeftportError(f"{where}: {e}") from None
    steps = int(hint.get("steps", 0) or 0)
    extra = {**extra, "peftport_export": dict(hint) or None}
    meta = module_meta(
        att, h, task=task, label_words=label_words, steps=steps, extra={"imported": extra}
    )
    return save_module(out_dir, module_state(h.model, att.name), meta, overwrite=overwrite)


def _check_labels(h: Any, label_words: Sequence[str], where: str) -> None:
    if not label_words or not all(isinstance(w, str) and w for w in label_words):
        raise PeftportError(f"{where}: label_words must be a non-empty list of words")
    if h.kind == ENCODER_CLASSIFIER and h.model.config.num_labels != len(label_words):
        raise PeftportError(
            f"{where}: host {h.spec.id!r} was loaded with "
            f"{h.model.config.num_labels} labels, the data set has "
            f"{len(label_words)}"
        )


def _check_out(out_dir: str | Path, overwrite: bool) -> None:
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise PeftportError(
            f"{out} already exists; choose another folder or overwrite it explicitly (--force)"
        )


def _head_state(
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
            f"{where}: no classification head ({_listing(missing)}) in "
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
            f"{where}: head shapes do not fit the host and data set: {_listing(wrong)}"
        )
    return {k: found[k] for k in wanted}


# --- PEFT import -------------------------------------------------------------------------


def _peft_head(
    tensors: Mapping[str, torch.Tensor], technique: str
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Head tensors in PEFT names -> host names (PEFT's wrapper names stripped)."""
    _ours, theirs = PEFT_HEAD_NAMES[technique]
    found, used = {}, set()
    for key, value in tensors.items():
        got = _parse(theirs, key)
        if got is None:
            continue
        head = got["head"].replace(".modules_to_save.default", "").replace(".modules_to_save", "")
        if head.split(".")[0] in ("classifier", "score"):
            found[head] = value
            used.add(key)
    return found, used


def _check_peft_fields(config: Mapping[str, Any], path: Path) -> None:
    for field_, (fine, why) in PEFT_UNSUPPORTED.items():
        value = config.get(field_)
        if value is None or value == fine or (not value and not fine):
            continue
        raise PeftportError(
            f"{path}: field {field_!r} is {value!r}; peftport cannot import it: {why}"
        )
    init = config.get("init_lora_weights")
    if (
        isinstance(init, str)
        and init.lower().startswith(BASE_CHANGING_INITS)
        or config.get("loftq_config")
    ):
        raise PeftportError(
            f"{path}: field 'init_lora_weights' is {init!r}: that initialisation changes the "
            "base model's weights, so the adapter only fits the changed model; convert it first "
            "(peft: save_pretrained(..., path_initial_model_for_weight_conversion=...))"
        )
    save = [
        m
        for m in (config.get("modules_to_save") or [])
        if m not in ("classifier", "score", *(lay.position_table for lay in LAYOUTS.values() if lay.position_table))
    ]
    if save:
        raise PeftportError(
            f"{path}: field 'modules_to_save' lists {save}; a peftport module "
            "carries no host weights besides the classification head"
        )


def _scale_fold(alpha: float, r: int) -> tuple[int, float]:
    """(integer alpha for AdapterHub, factor to fold into B) giving the scaling alpha / r."""
    if float(alpha).is_integer() and alpha > 0:
        return int(alpha), 1.0
    return r, float(alpha) / r  # scaling 1, the rest folded into B


def _resolve_site(path: str, sites: Mapping[str, Site], prefix: str) -> Site | None:
    """A PEFT module path on this host's task model; a LoRA saved on the bare encoder
    (e.g. BertModel) names its modules without the base-model prefix."""
    return sites.get(path) or sites.get(f"{prefix}.{path}")


def _peft_tuner_modules(
    tensors: Mapping[str, torch.Tensor],
    technique: str,
    sites: Mapping[str, Site],
    prefix: str,
    used: set[str],
    config_path: Path,
) -> dict[str, tuple[Site, dict[str, torch.Tensor]]]:
    out: dict[str, tuple[Site, dict[str, torch.Tensor]]] = {}
    stray, unsited = [], []
    for key, value in sorted(tensors.items()):
        if key in used:
            continue
        for part, (_ours, theirs) in PEFT_NAMES[technique].items():
            got = _parse(theirs, key)
            if got is not None:
                site = _resolve_site(got["path"], sites, prefix)
                if site is None:
                    unsited.append(got["path"])
                else:
                    out.setdefault(site.path, (site, {}))[1][part] = value
                break
        else:
            stray.append(key)
    if unsited:
        raise PeftportError(
            f"{config_path}: field 'target_modules' adapts {_listing(sorted(set(unsited)))}, "
            f"which AdapterHub cannot adapt on this host (it adapts: {_site_listing(sites)})"
        )
    if stray:
        raise PeftportError(
            f"{config_path.parent / PEFT_WEIGHTS}: tensors that are neither "
            f"{technique} weights nor the head: {_listing(stray)}"
        )
    if not out:
        raise PeftportError(f"{config_path.parent / PEFT_WEIGHTS}: no {technique} weights")
    return out


def _peft_lora_state(
    config: Mapping[str, Any],
    mods: Mapping[str, tuple[Site, dict]],
    name: str,
    hint: Mapping[str, Any],
    where: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """PEFT LoRA modules -> (peftport lora config, module tensors by AdapterHub name)."""
    rank = int(config.get("r", 8))
    alpha = float(config.get("lora_alpha", 8))
    for path, (site, ab) in mods.items():
        if set(ab) != {"A", "B"}:
            raise PeftportError(f"{where}: module {path} lacks lora_A or lora_B")
        a, b = ab["A"], ab["B"]
        if a.shape != (rank, site.in_features) or b.shape != (site.out_features, rank):
            raise PeftportError(
                f"{where}: module {path}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do "
                f"not fit r={rank} on this host (lora_A must be ({rank}, {site.in_features}), "
                f"lora_B ({site.out_features}, {rank}))"
            )
    hinted = [m for m in "qkv" if m in (hint.get("targets") or ())]
    fused = {p: s for p, (s, _) in mods.items() if len(s.matrices) == 3}
    # a fused q/k/v LoRA exported by peftport has rank n*r in block form; undo that if it fits
    enabled = hinted or sorted(
        {m for p in fused for m in "qkv" if _block(mods[p][1]["B"], m).any()}, key="qkv".index
    )
    split: dict[str, tuple[torch.Tensor, torch.Tensor, int]] = {}
    for p in fused:
        got = split_qkv_lora(mods[p][1]["A"], mods[p][1]["B"], enabled)
        if got is None:
            split = {}
            break
        split[p] = got
    r = rank // len(enabled) if split and enabled else rank
    if split and r != rank:
        for p, (_s, ab) in mods.items():  # the others must be zero-padded to rank n*r
            if p not in split and (ab["A"][r:].any() or ab["B"][:, r:].any()):
                split, r = {}, rank
                break
    widen = rank // r
    alpha_ah, fold = _scale_fold(alpha / widen, r)
    state: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    flags = {"intermediate": False, "output": False}
    for path, (site, ab) in mods.items():
        if path in split:
            a, b, _ = split[path]
            targets |= set(enabled)
        elif site.matrices == ("q", "k", "v"):  # general fused LoRA: one group per matrix
            used = enabled or ["q", "k", "v"]
            beyond = [m for m in "qkv" if m not in used and _block(ab["B"], m).any()]
            if beyond:
                raise PeftportError(
                    f"{where}: module {path} adapts {beyond} too, beyond the "
                    f"matrices {used} of the other layers"
                )
            a = torch.cat([ab["A"]] * len(used))
            b = torch.cat([_block(ab["B"], m) for m in used])
            targets |= set(used)
        else:
            a, b = ab["A"][:r], ab["B"][:, :r]
            targets |= set(site.matrices)
            if site.location in flags:
                flags[site.location] = True
        state[_fill(PEFT_NAMES["lora"]["A"][0], name, path=path)] = a
        state[_fill(PEFT_NAMES["lora"]["B"][0], name, path=path)] = b if fold == 1.0 else b * fold
    cfg = {
        "r": r,
        "alpha": alpha_ah,
        "targets": [m for m in "qkv" if m in targets],
        "dropout": float(config.get("lora_dropout", 0.0) or 0.0),
        **flags,
    }
    return cfg, state


def _block(b: torch.Tensor, matrix: str) -> torch.Tensor:
    """Rows of a fused (3H, ...) tensor that belong to q, k or v."""
    width = b.shape[0] // 3
    m = "qkv".index(matrix)
    return b[m * width : (m + 1) * width]


def _peft_ia3_state(
    config: Mapping[str, Any],
    mods: Mapping[str, tuple[Site, dict]],
    name: str,
    hint: Mapping[str, Any],
    where: str,
) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    ff = config.get("feedforward_modules") or []
    for path, (site, got) in mods.items():
        vec = got["l"]
        if vec.shape == (1, site.in_features) and vec.shape != (site.out_features, 1):
            raise PeftportError(
                f"{where}: field 'feedforward_modules' ({ff!r}) makes PEFT scale the INPUT of "
                f"{path}; AdapterHub's (IA)^3 scales module outputs only (on the feed-forward "
                "path: the up-projection's output, before the activation), a different function"
            )
        if vec.shape != (site.out_features, 1):
            raise PeftportError(
                f"{where}: module {path}: ia3_l is {tuple(vec.shape)}, this host "
                f"needs ({site.out_features}, 1)"
            )
    hinted = [m for m in "qkv" if m in (hint.get("targets") or ())]
    targets: set[str] = set()
    flags = {"intermediate": False, "output": False}
    fused_enabled = (
        hinted
        or sorted(
            {
                m
                for p, (s, got) in mods.items()
                if len(s.matrices) == 3
                for m in "qkv"
                if not torch.equal(_block(got["l"], m), torch.ones_like(_block(got["l"], m)))
            },
            key="qkv".index,
        )
        or ["k", "v"]
    )
    state = {}
    for path, (site, got) in mods.items():
        vec = got["l"]
        if len(site.matrices) == 3:
            rest = [m for m in "qkv" if m not in fused_enabled]
            if any(not torch.equal(_block(vec, m), torch.ones_like(_block(vec, m))) for m in rest):
                raise PeftportError(
                    f"{where}: module {path} scales {rest} too, beyond the "
                    f"matrices {fused_enabled} of the other layers"
                )
            vec = torch.cat([_block(vec, m) for m in fused_enabled])
            targets |= set(fused_enabled)
        else:
            targets |= set(site.matrices)
            if site.location == "output":
                raise PeftportError(
                    f"{where}: module {path} is AdapterHub's 'output' site, "
                    "which peftport's (IA)^3 config does not switch on"
                )
            if site.location in flags:
                flags[site.location] = True
        state[_fill(PEFT_NAMES["ia3"]["l"][0], name, path=path)] = vec
    cfg = {"targets": [m for m in "qkv" if m in targets], "intermediate": flags["intermediate"]}
    return cfg, state


def _fill_unused(
    model: Any, technique: str, name: str, state: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """AdapterHub switches a site on everywhere (all layers; on T5 self- and cross-attention):
    sites PEFT did not adapt get the identity (LoRA B = 0, IA3 vector = 1), which computes
    exactly what the un-adapted module computes. `model` carries the attached module."""
    from peftport.techniques import module_state

    out = dict(state)
    for key, value in module_state(model, name, include_head=False).items():
        if key not in out:
            out[key] = torch.zeros_like(value) if technique == "lora" else torch.ones_like(value)
    return out


def _check_base(config: Mapping[str, Any], h: Any, any_base: bool, path: Path) -> None:
    base = config.get("base_model_name_or_path")
    if not base or any_base:
        return
    names = _host_names(h)
    if base not in names and str(Path(str(base)).expanduser().resolve()) not in names:
        raise PeftportError(
            f"{path}: field 'base_model_name_or_path' is {base!r}, but host {h.spec.id!r} is "
            f"{_listing(sorted(names - {str(h.folder)}), 3)}; if that is the same model under "
            "another name, pass --any-base (every tensor's shape is still checked)"
        )


def _peft_prefix_state(
    config: Mapping[str, Any], tensors: Mapping[str, torch.Tensor], h: Any, name: str, where: str
) -> tuple[dict[str, Any], dict[str, torch.Tensor], set[str]]:
    family = h.spec.family
    if not _position_table(family):
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
    table_name = _fill(PEFT_POSITION_TABLE, table=_position_table(family))
    own = h.model.get_submodule(_position_table(family)).weight.detach()
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
        _fill(
            PREFIX_POOL, name, base=h.model.base_model_prefix, part=PREFIX_FLAT_PART
        ): prefix.reshape(-1)
    }
    return cfg, state, {PEFT_PREFIX, table_name}


def import_peft(
    peft_dir: str | Path,
    *,
    host: Any,
    out_dir: str | Path,
    task: str,
    label_words: Sequence[str],
    any_base: bool = False,
    overwrite: bool = False,
) -> Path:
    """Read a PEFT adapter folder (LORA, IA3 or PREFIX_TUNING; safetensors only) and write the
    peftport module that computes the same function on `host`; returns its path."""
    folder = _folder(peft_dir, PEFT_CONFIG)
    config_path = folder / PEFT_CONFIG
    config = _read_json(config_path)
    weights = _weights_file(
        folder,
        PEFT_WEIGHTS,
        PEFT_PICKLE,
        "load it with peft and save_pretrained(..., safe_serialization=True)",
    )
    _check_out(out_dir, overwrite)
    peft_type = str(config.get("peft_type", "")).upper()
    techniques = {"LORA": "lora", "IA3": "ia3", "PREFIX_TUNING": "prefix"}
    if peft_type == "PROMPT_TUNING":
        raise PeftportError(
            f"{config_path}: PEFT prompt tuning computes another function than "
            f"AdapterHub's: {PEFT_REFUSED['prompt']}"
        )
    if peft_type not in techniques:
        raise PeftportError(
            f"{config_path}: field 'peft_type' is {peft_type or None!r}; "
            "peftport imports LORA, IA3 and PREFIX_TUNING"
        )
    technique = techniques[peft_type]
    tensors = _read_safetensors(weights)
    h = _load_host(host, len(label_words))
    where = str(weights)
    task_type = config.get("task_type")
    if task_type and task_type != PEFT_TASK_TYPES[h.kind] and task_type != "FEATURE_EXTRACTION":
        raise PeftportError(
            f"{config_path}: field 'task_type' is {task_type!r}, which does not "
            f"fit host {h.spec.id!r} ({h.kind}: {PEFT_TASK_TYPES[h.kind]})"
        )
    _check_base(config, h, any_base, config_path)
    _check_labels(h, label_words, where)
    hint = _read_sidecar(folder)
    hint_cfg = hint.get("config", {}) if hint.get("technique") == technique else {}
    name = hint.get("adapter_name") or "peftport"
    if not name.isidentifier():
        name = "peftport"
    head_found, used = _peft_head(tensors, technique)
    if head_found and h.kind != ENCODER_CLASSIFIER:
        raise PeftportError(
            f"{where}: holds a classification head ({_listing(sorted(head_found))})"
            f" but host {h.spec.id!r} is a {h.kind} host, which scores label "
            "words with its own LM head"
        )
    head = _head_state(head_found, h, where, str(weights))
    if technique == "prefix":
        cfg, state, more = _peft_prefix_state(config, tensors, h, name, where)
        used |= more
        stray = sorted(set(tensors) - used)
        if stray:
            raise PeftportError(
                f"{where}: tensors that are neither the prefix, the position "
                f"table nor the head: {_listing(stray)}"
            )
    else:
        _check_peft_fields(config, config_path)
        sites = lora_sites(h.model)
        mods = _peft_tuner_modules(
            tensors, technique, sites, h.model.base_model_prefix, used, config_path
        )
        if technique == "lora":
            cfg, state = _peft_lora_state(config, mods, name, hint_cfg, where)
        else:
            cfg, state = _peft_ia3_state(config, mods, name, hint_cfg, where)
    att = _attach(h, technique, cfg, name, int(hint.get("seed", 0) or 0))
    if technique != "prefix":
        state = _fill_unused(h.model, technique, name, state)
    extra = {
        "format": "peft",
        "folder": str(folder),
        "peft_type": peft_type,
        "base_model_name_or_path": config.get("base_model_name_or_path"),
    }
    return _save_import(
        h,
        att,
        {**state, **head},
        task=task,
        label_words=label_words,
        hint=hint,
        extra=extra,
        out_dir=out_dir,
        overwrite=overwrite,
        where=where,
    )


# --- AdapterHub import --------------------------------------------------------------------


def _plain(obj: Any) -> Any:
    return json.loads(json.dumps(obj))  # tuples -> lists, for comparing configs


def _candidates(c: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """peftport (technique, config) candidates for an adapters config dict (checked later by
    mapping them back and comparing)."""
    arch = c.get("architecture")
    attn = list(c.get("attn_matrices") or []) if c.get("selfattn_lora") else []
    if arch == "lora":
        if c.get("composition_mode") == "scale":
            return [("ia3", {"targets": attn, "intermediate": bool(c.get("intermediate_lora"))})]
        return [
            (
                "lora",
                {
                    "r": c.get("r"),
                    "alpha": c.get("alpha"),
                    "targets": attn,
                    "dropout": c.get("dropout", 0.0),
                    "intermediate": bool(c.get("intermediate_lora")),
                    "output": bool(c.get("output_lora")),
                },
            )
        ]
    if arch == "prefix_tuning":
        keys = (
            "prefix_length",
            "flat",
            "bottleneck_size",
            "non_linearity",
            "dropout",
            "encoder_prefix",
            "cross_prefix",
        )
        return [("prefix", {k: c[k] for k in keys if k in c})]
    if arch == "prompt_tuning":
        return [("prompt", {k: c[k] for k in ("prompt_length", "combine") if k in c})]
    if "reduction_factor" in c:
        rf = c["reduction_factor"]
        rf = int(rf) if isinstance(rf, float) and rf.is_integer() else rf
        variant = "houlsby" if c.get("mh_adapter") else "pfeiffer"
        common = {
            "variant": variant,
            "reduction_factor": rf,
            "non_linearity": c.get("non_linearity", ""),
        }
        if c.get("phm_layer"):
            return [
                (
                    "compacter",
                    {
                        **common,
                        **{k: c[k] for k in ("phm_dim", "phm_rank", "shared_phm_rule") if k in c},
                    },
                )
            ]
        return [("adapter", {**common, "dropout": c.get("dropout", 0.0)})]
    return []


def adapterhub_config_to_peftport(c: Mapping[str, Any], where: str) -> tuple[str, Any]:
    """(technique, TechniqueConfig) whose adapters config equals `c` (init-only fields aside);
    PeftportError naming the first field that has no peftport equivalent."""
    from peftport.techniques import make_config

    theirs = {k: v for k, v in _plain(dict(c)).items() if k not in INIT_ONLY}
    best: tuple[str, list[str]] | None = None
    for technique, fields_ in _candidates(c):
        try:
            cfg = make_config(technique, fields_)
        except PeftportError as e:
            raise PeftportError(
                f"{where}: field 'config' has no peftport equivalent: {e}"
            ) from None
        ours = {k: v for k, v in _plain(cfg.to_adapters().to_dict()).items() if k not in INIT_ONLY}
        diff = [
            f"config.{k} is {theirs.get(k)!r} (peftport's {technique} gives {ours.get(k)!r})"
            for k in sorted(set(ours) | set(theirs))
            if ours.get(k) != theirs.get(k)
        ]
        if not diff:
            return technique, cfg
        best = best or (technique, diff)
    if best is None:
        raise PeftportError(
            f"{where}: field 'config' (architecture "
            f"{c.get('architecture')!r}) is none of peftport's techniques"
        )
    raise PeftportError(
        f"{where}: an AdapterHub {best[0]} that peftport cannot reproduce: {_listing(best[1], 4)}"
    )


def _canonical_state(
    h: Any, name: str, weights: Mapping[str, torch.Tensor], where: str
) -> dict[str, torch.Tensor]:
    """File keys (state-dict names, any alias of a shared tensor) -> peftport's canonical names
    on the attached host. Unknown keys and disagreeing aliases are errors."""
    from peftport.techniques import _module_tensors

    live = h.model.state_dict(keep_vars=True)
    canon = {id(t): k for k, t in _module_tensors(h.model, name).items()}
    out: dict[str, torch.Tensor] = {}
    stray = []
    for key, value in sorted(weights.items()):
        t = live.get(key)
        if t is None or id(t) not in canon:
            stray.append(key)
            continue
        k = canon[id(t)]
        if k in out and not torch.equal(out[k], value):
            raise PeftportError(
                f"{where}: {key} and another name of the same tensor ({k}) hold different values"
            )
        out[k] = value
    if stray:
        raise PeftportError(
            f"{where}: tensors that are not part of this module on host "
            f"{h.spec.id!r}: {_listing(stray)}"
        )
    return out


def _adapterhub_head(folder: Path, h: Any, where: str) -> dict[str, torch.Tensor]:
    cfg_path = folder / AH_HEAD_CONFIG
    if h.kind != ENCODER_CLASSIFIER:
        # LM hosts: adapters' with_head=True saves the host's own LM head; accept it only if it
        # IS the host's (loading a different one would change the host, not add a module)
        if (folder / AH_HEAD_WEIGHTS).is_file() or (folder / AH_HEAD_PICKLE).is_file():
            head = _read_safetensors(
                _weights_file(
                    folder,
                    AH_HEAD_WEIGHTS,
                    AH_HEAD_PICKLE,
                    "or delete the head files: on LM hosts they hold the host's own LM head",
                )
            )
            own = h.model.state_dict()
            differ = sorted(
                k for k, v in head.items() if k not in own or not torch.equal(own[k], v)
            )
            if differ:
                raise PeftportError(
                    f"{where}: head tensors {_listing(differ)} differ from host "
                    f"{h.spec.id!r}'s own; loading them would change the host"
                )
        return {}
    if not cfg_path.is_file():
        raise PeftportError(
            f"{folder}: no {AH_HEAD_CONFIG}; a module for an encoder classifier "
            "needs its trained head (save the adapter with with_head=True)"
        )
    head_cfg = _read_json(cfg_path)
    cls = head_cfg.get("model_class")
    if cls != h.spec.layout.model_class:
        raise PeftportError(
            f"{cfg_path}: field 'model_class' is {cls!r}; peftport's head is the static head of "
            f"{h.spec.layout.model_class} (a flexible AdapterHub head replaces the host's "
            "pooler with layers of its own, which a peftport module cannot carry)"
        )
    head = _read_safetensors(
        _weights_file(
            folder, AH_HEAD_WEIGHTS, AH_HEAD_PICKLE, "model.save_adapter(..., use_safetensors=True)"
        )
    )
    return _head_state(head, h, where, str(folder / AH_HEAD_WEIGHTS))


def import_adapterhub(
    folder: str | Path,
    *,
    host: Any,
    out_dir: str | Path,
    task: str,
    label_words: Sequence[str],
    overwrite: bool = False,
) -> Path:
    """Read an AdapterHub adapter folder (safetensors only) and write the equivalent peftport
    module for `host`; returns its path."""
    src = _folder(folder, AH_CONFIG)
    config_path = src / AH_CONFIG
    full = _read_json(config_path)
    weights_path = _weights_file(
        src,
        AH_WEIGHTS,
        AH_PICKLE,
        "load it with adapters and save_adapter(..., use_safetensors=True)",
    )
    _check_out(out_dir, overwrite)
    if not isinstance(full.get("config"), dict) or not isinstance(full.get("name"), str):
        raise PeftportError(
            f"{config_path}: fields 'config' (an object) and 'name' (a string) are required"
        )
    technique, cfg = adapterhub_config_to_peftport(full["config"], str(config_path))
    h = _load_host(host, len(label_words))
    where = str(weights_path)
    if full.get("model_type") and full["model_type"] != h.spec.family:
        raise PeftportError(
            f"{config_path}: field 'model_type' is {full['model_type']!r}, host "
            f"{h.spec.id!r} is {h.spec.family}"
        )
    hidden = int(getattr(h.model.config, LAYOUTS[h.spec.family].hidden_key))
    if full.get("hidden_size") not in (None, hidden):
        raise PeftportError(
            f"{config_path}: field 'hidden_size' is {full['hidden_size']}, host "
            f"{h.spec.id!r} has {hidden}"
        )
    _check_labels(h, label_words, where)
    old = full["name"]
    name = old if old.isidentifier() else "peftport"
    weights = {_rename_part(k, old, name): v for k, v in _read_safetensors(weights_path).items()}
    head = _adapterhub_head(src, h, where)
    hint = _read_sidecar(src)

    att = _attach(h, technique, cfg, name, int(hint.get("seed", 0) or 0))
    state = _canonical_state(h, name, weights, where)
    extra = {
        "format": "adapterhub",
        "folder": str(src),
        "name": old,
        "version": full.get("version"),
        "model_name": full.get("model_name"),
    }
    try:
        return _save_import(
            h,
            att,
            {**state, **head},
            task=task,
            label_words=label_words,
            hint=hint,
            extra=extra,
            out_dir=out_dir,
            overwrite=overwrite,
            where=where,
        )
    except PeftportError as e:
        if technique == "compacter" and "phm_rule" in str(e):
            raise PeftportError(
                f"{e}\n(adapters 1.3.0's save_adapter does not save T5 "
                "Compacter's shared phm_rule; export such modules with "
                "peftport)"
            ) from None
        raise


# --- by format ----------------------------------------------------------------------------


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise PeftportError(f"unknown format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    return fmt


def export_module(
    module_dir: str | Path,
    out_dir: str | Path,
    fmt: str,
    *,
    host: Any = None,
    overwrite: bool = False,
) -> Path:
    """Export a module folder in format `fmt` ("peft" or "adapterhub")."""
    if _check_format(fmt) == "peft":
        return export_peft(module_dir, out_dir, host=host, overwrite=overwrite)
    if host is not None:
        from peftport.module import load_module

        tensors, meta = load_module(module_dir)
        _module_host_loaded(meta, host, f"module {module_dir}")
    return export_adapterhub(module_dir, out_dir, overwrite=overwrite)


def import_module(
    folder: str | Path,
    fmt: str,
    *,
    host: Any,
    out_dir: str | Path,
    task: str,
    label_words: Sequence[str],
    any_base: bool = False,
    overwrite: bool = False,
) -> Path:
    """Import a folder of format `fmt` ("peft" or "adapterhub") as a peftport module."""
    if _check_format(fmt) == "peft":
        return import_peft(
            folder,
            host=host,
            out_dir=out_dir,
            task=task,
            label_words=label_words,
            any_base=any_base,
            overwrite=overwrite,
        )
    return import_adapterhub(
        folder, host=host, out_dir=out_dir, task=task, label_words=label_words, overwrite=overwrite
    )


def folder_summary(folder: str | Path) -> dict[str, Any]:
    """What an exported folder holds: its files and sizes, its config's type, tensor count."""
    from safetensors import safe_open

    p = Path(folder)
    files = {f.name: f.stat().st_size for f in sorted(p.iterdir()) if f.is_file()}
    config = _read_json(p / PEFT_CONFIG) if (p / PEFT_CONFIG).is_file() else {}
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
