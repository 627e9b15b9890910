"""(IA)^3: learnt vectors that rescale the attention keys and values and the feed-forward
intermediate activations (Liu et al. 2022). The vectors start at one, so a fresh module leaves
the host unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.techniques.base import (
    ATTENTION_MATRICES,
    Technique,
    TechniqueConfig,
    attention_targets,
    doc,
)


@dataclass(frozen=True)
class IA3Config(TechniqueConfig):
    technique = "ia3"

    targets: tuple[str, ...] = doc(("k", "v"), "attention matrices to rescale (of q, k, v)")
    intermediate: bool = doc(True, "rescale the feed-forward intermediate activations")

    adapters_class = "IA3Config"
    adapters_fields = "intermediate:intermediate_lora"

    def validate(self) -> None:
        bad = [t for t in self.targets if t not in ATTENTION_MATRICES]
        if bad or len(set(self.targets)) != len(self.targets):
            raise PeftportError(
                f"ia3 config: targets must be distinct names among "
                f"{list(ATTENTION_MATRICES)}, got {list(self.targets)}"
            )
        if not (self.targets or self.intermediate):
            raise PeftportError("ia3 config: nothing to rescale (no targets, intermediate off)")

    def adapters_extra(self) -> dict[str, Any]:
        return attention_targets(self.targets, "k")

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        # adapters implements (IA)^3 as a LoRA that scales instead of adding
        if c.get("architecture") != "lora" or c.get("composition_mode") != "scale":
            return None
        return {
            "targets": list(c.get("attn_matrices") or []) if c.get("selfattn_lora") else [],
            "intermediate": bool(c.get("intermediate_lora")),
        }


TECHNIQUE = Technique(
    config_cls=IA3Config,
    summary="learnt rescaling vectors on keys, values and feed-forward activations",
    reference="Liu et al. 2022 (arXiv 2205.05638)",
    order=6,
    peft_type="IA3",
    neutral_fill=1.0,  # a vector of ones scales nothing
)
