"""Bottleneck adapters: a small down-project / non-linearity / up-project block with a residual,
inserted in every layer (Houlsby et al. 2019; Pfeiffer et al. 2021).

Variants (adapters' own configs):
- `pfeiffer`: one adapter after each layer's feed-forward block (`SeqBnConfig`, ReLU);
- `houlsby`: two, after the attention block and after the feed-forward block
  (`DoubleSeqBnConfig`, Swish).
The bottleneck width is `hidden_size // reduction_factor`: 24 on minilm-l6 (384 / 16), 48 on
T5-base (768 / 16).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError
from peftport.techniques.base import USE_ADAPTERHUB, Technique, TechniqueConfig, doc

# variant -> (adapters config class, its published non-linearity)
VARIANTS = {"pfeiffer": ("SeqBnConfig", "relu"), "houlsby": ("DoubleSeqBnConfig", "swish")}


@dataclass(frozen=True)
class BottleneckConfig(TechniqueConfig):
    technique = "adapter"

    variant: str = doc(
        "pfeiffer",
        "pfeiffer: one adapter per layer, after the feed-forward "
        "block; houlsby: two, after attention and after the feed-forward block",
    )
    reduction_factor: int = doc(
        16, "hidden size / bottleneck width (16 on a 384-wide host gives a 24-wide bottleneck)"
    )
    non_linearity: str = doc(
        "",
        "activation inside the bottleneck; empty = the variant's "
        "published one (relu for pfeiffer, swish for houlsby)",
    )
    dropout: float = doc(0.0, "dropout inside the adapter")

    adapters_fields = "reduction_factor non_linearity dropout"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.non_linearity:  # record the concrete default, not a placeholder
            object.__setattr__(self, "non_linearity", VARIANTS[self.variant][1])

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise PeftportError(
                f"adapter config: variant must be one of {sorted(VARIANTS)}, got {self.variant!r}"
            )
        if self.reduction_factor < 1:
            raise PeftportError(
                f"adapter config: reduction_factor must be >= 1, got {self.reduction_factor}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise PeftportError(f"adapter config: dropout must be in [0, 1), got {self.dropout}")

    def check_host(self, hidden_size: int, host: str = "this host") -> None:
        if hidden_size // self.reduction_factor < 1:
            raise PeftportError(
                f"adapter: reduction_factor {self.reduction_factor} leaves no bottleneck on "
                f"{host} (hidden size {hidden_size}); use at most {hidden_size}"
            )

    def adapters_class_name(self) -> str:
        return VARIANTS[self.variant][0]

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        if not is_bottleneck(c) or c.get("phm_layer"):
            return None
        return {**bottleneck_fields(c), "dropout": c.get("dropout", 0.0)}


def is_bottleneck(c: Mapping[str, Any]) -> bool:
    """An AdapterHub bottleneck config (plain or PHM): no architecture name, a reduction."""
    return c.get("architecture") is None and "reduction_factor" in c


def bottleneck_fields(c: Mapping[str, Any]) -> dict[str, Any]:
    """The fields bottleneck adapters and Compacter share, from an AdapterHub config dict."""
    rf = c["reduction_factor"]
    return {
        "variant": "houlsby" if c.get("mh_adapter") else "pfeiffer",
        "reduction_factor": int(rf) if isinstance(rf, float) and rf.is_integer() else rf,
        "non_linearity": c.get("non_linearity", ""),
    }


TECHNIQUE = Technique(
    config_cls=BottleneckConfig,
    summary="bottleneck adapter in every layer (Pfeiffer: one, Houlsby: two)",
    reference="Houlsby et al. 2019 (arXiv 1902.00751); Pfeiffer et al. 2021 (arXiv 2005.00247)",
    order=1,
    peft_refused=f"PEFT 0.21.2 has no bottleneck (Houlsby / Pfeiffer) adapters; {USE_ADAPTERHUB}",
)
