"""Prompt tuning: trainable soft-token embeddings prepended to the input (Lester et al. 2021).

adapters 1.3.0 implements it for encoder models only: it refuses T5, GPT-2 and Llama ("not
supported by this model"). peftport refuses those cells too, with the support table in the
message, rather than mixing in another library's implementation: the study compares techniques
that differ only in themselves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.hosts.spec import DECODER_LM, ENCODER_CLASSIFIER, TEXT_TO_TEXT
from peftport.techniques.base import YES, Support, Technique, TechniqueConfig, doc

COMBINE = ("prefix", "prefix_after_bos")
_REFUSED = Support(False, "adapters 1.3.0 refuses prompt tuning here")


@dataclass(frozen=True)
class PromptConfig(TechniqueConfig):
    technique = "prompt"

    prompt_length: int = doc(10, "soft tokens prepended to the input")
    combine: str = doc(
        "prefix",
        "where the soft tokens go: prefix (before everything) or "
        "prefix_after_bos (after the first token)",
    )

    adapters_class = "PromptTuningConfig"
    adapters_fields = "prompt_length combine"

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise PeftportError(
                f"prompt config: prompt_length must be >= 1, got {self.prompt_length}"
            )
        if self.combine not in COMBINE:
            raise PeftportError(
                f"prompt config: combine must be one of {list(COMBINE)}, got {self.combine!r}"
            )

    def adapters_extra(self) -> dict[str, Any]:
        # random_uniform init (scale 0.5, as in the paper); "from_string" would need a text
        return {"prompt_init": "random_uniform"}

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        if c.get("architecture") != "prompt_tuning":
            return None
        return {k: c[k] for k in ("prompt_length", "combine") if k in c}


TECHNIQUE = Technique(
    config_cls=PromptConfig,
    summary="trainable soft-token embeddings prepended to the input",
    reference="Lester et al. 2021 (arXiv 2104.08691)",
    support={ENCODER_CLASSIFIER: YES, TEXT_TO_TEXT: _REFUSED, DECODER_LM: _REFUSED},
    order=5,
    peft_type="PROMPT_TUNING",
    peft_refused="the two libraries put the soft tokens in different places: AdapterHub appends "
    "them to the OUTPUT of the embedding layer (after the position and token-type embeddings "
    "and LayerNorm; the text keeps positions 0..n-1), PEFT prepends them to the word embeddings "
    "BEFORE that layer (they go through LayerNorm and the text moves to positions "
    "prompt_length..), and no PEFT prompt passes LayerNorm unchanged. Export it as an AdapterHub "
    "folder (--format adapterhub)",
)
