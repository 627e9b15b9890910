"""Prompt tuning: trainable soft-token embeddings prepended to the input (Lester et al. 2021).

adapters 1.3.0 implements it for encoder models only: it refuses T5, GPT-2 and Llama ("not
supported by this model"). peftport refuses those cells too, with the support table in the
message, rather than mixing in another library's implementation: the study compares techniques
that differ only in themselves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.techniques.base import Technique, TechniqueConfig, doc

COMBINE = ("prefix", "prefix_after_bos")


@dataclass(frozen=True)
class PromptConfig(TechniqueConfig):
    technique = "prompt"

    prompt_length: int = doc(10, "soft tokens prepended to the input")
    combine: str = doc("prefix", "where the soft tokens go: prefix (before everything) or "
                       "prefix_after_bos (after the first token)")

    def validate(self) -> None:
        if self.prompt_length < 1:
            raise PeftportError(f"prompt config: prompt_length must be >= 1, "
                                f"got {self.prompt_length}")
        if self.combine not in COMBINE:
            raise PeftportError(f"prompt config: combine must be one of {list(COMBINE)}, "
                                f"got {self.combine!r}")

    def to_adapters(self) -> Any:
        import adapters

        # random_uniform init (scale 0.5, as in the paper); "from_string" would need a text
        return adapters.PromptTuningConfig(prompt_length=self.prompt_length,
                                           prompt_init="random_uniform", combine=self.combine)


TECHNIQUE = Technique(
    name="prompt", config_cls=PromptConfig,
    summary="trainable soft-token embeddings prepended to the input",
    reference="Lester et al. 2021 (arXiv 2104.08691)",
)
