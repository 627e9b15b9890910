"""Compacter: bottleneck adapters whose projections are parameterised hypercomplex
multiplication (PHM) layers: sums of Kronecker products of small shared "rule" matrices and
low-rank per-layer factors (Karimi Mahabadi et al. 2021).

The rule matrices (`phm_dim x phm_dim x phm_dim`) are shared by all layers and live outside
them (`shared_parameters.<name>.phm_rule`); they are part of the module's state (adapters'
own `save_adapter` forgets them on T5; moving the state dict does not).

The bottleneck width `hidden_size // reduction_factor` and the hidden size must both be
multiples of `phm_dim`: reduction 32 and phm_dim 4 give 12 on minilm-l6 (384), 24 on T5-base
(768) and 32 on T5-large (1024). Narrow test hosts need a smaller reduction factor (width 16:
reduction_factor 4).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.techniques.adapter import bottleneck_fields, is_bottleneck
from peftport.techniques.base import USE_ADAPTERHUB, Technique, TechniqueConfig, doc

# variant -> adapters config class
VARIANTS = {"houlsby": "CompacterConfig", "pfeiffer": "CompacterPlusPlusConfig"}


@dataclass(frozen=True)
class CompacterConfig(TechniqueConfig):
    technique = "compacter"

    phm_dim: int = doc(4, "number of Kronecker summands (n in the paper)")
    reduction_factor: int = doc(
        32, "hidden size / bottleneck width; the width must be a multiple of phm_dim"
    )
    variant: str = doc(
        "houlsby",
        "houlsby: Compacter, two adapters per layer; pfeiffer: "
        "Compacter++, one after the feed-forward block",
    )
    non_linearity: str = doc("gelu", "activation inside the bottleneck")
    phm_rank: int = doc(1, "rank of the low-rank per-layer factors")
    shared_phm_rule: bool = doc(True, "share the rule matrices across layers")

    adapters_fields = "phm_dim reduction_factor non_linearity phm_rank shared_phm_rule"

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise PeftportError(
                f"compacter config: variant must be one of {sorted(VARIANTS)}, got {self.variant!r}"
            )
        for name in ("phm_dim", "reduction_factor", "phm_rank"):
            if getattr(self, name) < 1:
                raise PeftportError(
                    f"compacter config: {name} must be >= 1, got {getattr(self, name)}"
                )

    def check_host(self, hidden_size: int, host: str = "this host") -> None:
        width = hidden_size // self.reduction_factor
        if hidden_size % self.phm_dim == 0 and width >= self.phm_dim and width % self.phm_dim == 0:
            return
        ok = [
            r
            for r in range(1, hidden_size + 1)
            if hidden_size // r >= self.phm_dim and (hidden_size // r) % self.phm_dim == 0
        ]
        hint = (
            f"reduction factors that work there: {', '.join(map(str, ok[-6:]))}"
            if ok and hidden_size % self.phm_dim == 0
            else "choose another phm_dim"
        )
        raise PeftportError(
            f"compacter: bottleneck width {width} (hidden size {hidden_size} of {host} // "
            f"reduction_factor {self.reduction_factor}) and the hidden size must be multiples "
            f"of phm_dim {self.phm_dim}; {hint}"
        )

    def adapters_class_name(self) -> str:
        return VARIANTS[self.variant]

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        if not is_bottleneck(c) or not c.get("phm_layer"):
            return None
        return {
            **bottleneck_fields(c),
            **{k: c[k] for k in ("phm_dim", "phm_rank", "shared_phm_rule") if k in c},
        }


TECHNIQUE = Technique(
    config_cls=CompacterConfig,
    summary="bottleneck adapters built from shared Kronecker-product (PHM) layers",
    reference="Karimi Mahabadi et al. 2021 (arXiv 2106.04647)",
    order=4,
    adapterhub_hints={
        "phm_rule": "adapters 1.3.0's save_adapter does not save T5 Compacter's "
        "shared phm_rule; export such modules with peftport"
    },
    peft_refused=f"PEFT 0.21.2 has no Compacter (PHM bottleneck adapters); {USE_ADAPTERHUB}",
)
