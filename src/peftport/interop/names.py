"""The names of interop: folder files, host facts both libraries name, and tensor-name
templates (AdapterHub = peftport pattern -> PEFT pattern) with their parse and fill.

Per-family facts (the class a host loads as, its position table) are on the host's Layout.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from peftport.hosts.spec import DECODER_LM, ENCODER_CLASSIFIER, LAYOUTS, TEXT_TO_TEXT

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
LORA_NAMES: dict[str, tuple[str, str]] = {
    "A": ("{path}.loras.{name}.lora_A", "base_model.model.{path}.lora_A.weight"),
    "B": ("{path}.loras.{name}.lora_B", "base_model.model.{path}.lora_B.weight"),
}
IA3_NAMES: dict[str, tuple[str, str]] = {
    "l": ("{path}.loras.{name}.lora_B", "base_model.model.{path}.ia3_l"),
}
# Head tensors: PEFT's tuner models (LoRA, IA3) wrap the task model once more than its prompt
# learning models (prefix tuning) do.
TUNER_HEAD_NAMES = ("{head}", "base_model.model.{head}")
PROMPT_LEARNING_HEAD_NAMES = ("{head}", "base_model.{head}")
# Prefix tuning: AdapterHub's pool (MLP or flat) -> PEFT's eval-time prefix, plus the shifted
# position table (see peftport.interop's docstring).
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


def family_position_table(family: str) -> str:
    """The family's absolute position table ("" if it has none, or is unknown)."""
    return LAYOUTS[family].position_table if family in LAYOUTS else ""


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


# --- tensor-name templates ----------------------------------------------------------------


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


def parse_name(template: str, key: str, name: str = "") -> dict[str, str] | None:
    """The template's fields in `key` ({name} must be the literal module name), or None."""
    m = _pattern(template, name).match(key)
    return m.groupdict() if m else None


def fill_name(template: str, name: str = "", **fields_: str) -> str:
    return template.format(name=name, **fields_)


def rename_part(key: str, old: str, new: str) -> str:
    return ".".join(new if p == old else p for p in key.split("."))


def listing(items: Sequence[str], limit: int = 8) -> str:
    more = f" ... and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more
