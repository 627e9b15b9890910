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
AdapterHub's, export refuses with the step that differs (`Technique.peft_refused`, `PREFIX_REFUSED`)
instead of writing a file that gives other outputs.
docs/interop.md has the tables and reasons.

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

Which technique converts how is declared by the technique (`Technique.peft_type`,
`peft_refused`, `TechniqueConfig.from_adapters`); this package holds the conversions:
`names` (file names and tensor-name templates), `folders` (folder I/O, hosts at the edges, the
end every import shares), `peft` with its codecs `peft_tuners` and `peft_prefix`, `adapterhub`.

Reading is safetensors only: `adapter_model.bin` / `pytorch_adapter.bin` are refused with a
message that says how to convert them; nothing is ever unpickled. Folders are written to a
temporary folder beside the target and renamed into place. Each exported folder also holds
`peftport_export.json` (provenance: the module's technique, config, host, sha256), which the two
libraries ignore and an import uses when it finds it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.interop.adapterhub import (
    adapterhub_config_to_peftport,
    adapterhub_export,
    export_adapterhub,
    import_adapterhub,
)
from peftport.interop.folders import (
    ModuleHost,
    base_model_name,
    folder_summary,
    module_host_loaded,
)
from peftport.interop.names import (
    AH_CONFIG,
    AH_HEAD_CONFIG,
    AH_HEAD_PICKLE,
    AH_HEAD_WEIGHTS,
    AH_PICKLE,
    AH_WEIGHTS,
    FORMATS,
    PEFT_CONFIG,
    PEFT_PICKLE,
    PEFT_WEIGHTS,
    PREFIX_REFUSED,
    SIDECAR,
)
from peftport.interop.peft import (
    CODECS,
    check_peft_exportable,
    export_peft,
    import_peft,
    peft_export,
)
from peftport.interop.peft_prefix import effective_prefix, shift_positions
from peftport.interop.peft_tuners import Site, fuse_qkv_lora, lora_sites, split_qkv_lora
from peftport.techniques import ordered

__all__ = [
    "FORMATS",
    "PEFT_REFUSED",
    "PREFIX_REFUSED",
    "CODECS",
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
    "PEFT_CONFIG",
    "PEFT_WEIGHTS",
    "PEFT_PICKLE",
    "AH_CONFIG",
    "AH_WEIGHTS",
    "AH_PICKLE",
    "AH_HEAD_CONFIG",
    "AH_HEAD_WEIGHTS",
    "AH_HEAD_PICKLE",
    "SIDECAR",
]

# technique -> why PEFT has no faithful counterpart (export refuses with this), as the
# techniques declare it.
PEFT_REFUSED: dict[str, str] = {t.name: t.peft_refused for t in ordered() if t.peft_refused}


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
        module_host_loaded(meta, host, f"module {module_dir}")
    return export_adapterhub(module_dir, out_dir, overwrite=overwrite)


def import_module(
    folder: str | Path,
    fmt: str,
    *,
    any_base: bool = False,
    drop_unsupported: bool = False,
    **request: Any,
) -> Path:
    """Import a folder of format `fmt` ("peft" or "adapterhub") as a peftport module.
    `request`: host, out_dir, task, label_words and overwrite, as both importers take them;
    `any_base` and `drop_unsupported` are for PEFT folders only (the AdapterHub import checks
    no base-model name, and its sites are AdapterHub's own)."""
    if _check_format(fmt) == "peft":
        return import_peft(folder, any_base=any_base, drop_unsupported=drop_unsupported, **request)
    if drop_unsupported:
        raise PeftportError(
            "--drop-unsupported is for --format peft (an AdapterHub folder "
            "adapts only sites AdapterHub supports)"
        )
    return import_adapterhub(folder, **request)
