"""LoRA: a low-rank update B @ A, scaled by alpha / r, added to chosen weight matrices
(Hu et al. 2021). A starts random, B at zero, so a fresh LoRA leaves the host unchanged.

On T5 adapters puts LoRA on the decoder's cross-attention q/v as well as on self-attention; on
GPT-2 the fused `c_attn` matrix carries the q/v parts.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.hosts.spec import TEXT_TO_TEXT
from peftport.techniques.base import (
    ATTENTION_MATRICES,
    Technique,
    TechniqueConfig,
    attention_targets,
    doc,
    everywhere,
)


@dataclass(frozen=True)
class LoraConfig(TechniqueConfig):
    technique = "lora"

    r: int = doc(8, "rank of the update")
    alpha: int = doc(16, "scaling numerator: the update is multiplied by alpha / r")
    targets: tuple[str, ...] = doc(("q", "v"), "attention matrices to adapt (of q, k, v)")
    dropout: float = doc(0.0, "dropout on the LoRA input")
    intermediate: bool = doc(
        False,
        "also adapt the feed-forward up-projection (on Llama, adapters 1.3.0 "
        "puts this one on down_proj)",
    )
    output: bool = doc(False, "also adapt the feed-forward down-projection (on Llama: up_proj)")

    adapters_class = "LoRAConfig"
    adapters_fields = "r alpha dropout intermediate:intermediate_lora output:output_lora"

    def validate(self) -> None:
        if self.r < 1:
            raise PeftportError(f"lora config: r must be >= 1, got {self.r}")
        if self.alpha <= 0:
            raise PeftportError(f"lora config: alpha must be positive, got {self.alpha}")
        bad = [t for t in self.targets if t not in ATTENTION_MATRICES]
        if bad or len(set(self.targets)) != len(self.targets):
            raise PeftportError(
                f"lora config: targets must be distinct names among "
                f"{list(ATTENTION_MATRICES)}, got {list(self.targets)}"
            )
        if not (self.targets or self.intermediate or self.output):
            raise PeftportError(
                "lora config: nothing to adapt (no targets, intermediate and output both off)"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise PeftportError(f"lora config: dropout must be in [0, 1), got {self.dropout}")

    def adapters_extra(self) -> dict[str, Any]:
        return attention_targets(self.targets, "q")

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        if c.get("architecture") != "lora" or c.get("composition_mode") == "scale":
            return None
        return {
            "r": c.get("r"),
            "alpha": c.get("alpha"),
            "targets": list(c.get("attn_matrices") or []) if c.get("selfattn_lora") else [],
            "dropout": c.get("dropout", 0.0),
            "intermediate": bool(c.get("intermediate_lora")),
            "output": bool(c.get("output_lora")),
        }


TECHNIQUE = Technique(
    config_cls=LoraConfig,
    summary="low-rank update of the attention query and value matrices",
    reference="Hu et al. 2021 (arXiv 2106.09685)",
    support=everywhere({TEXT_TO_TEXT: "also cross-attention q, v"}),
    order=2,
    peft_type="LORA",
    neutral_fill=0.0,  # B = 0: no update (A = 0 too, so nothing of the site is left)
)
