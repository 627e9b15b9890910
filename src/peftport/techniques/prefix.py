"""Prefix tuning: trainable key/value vectors prepended in every attention layer
(Li and Liang 2021).

Training goes through the reparameterising MLP (`flat=False`, as in the paper): a
`prefix_length x hidden` embedding passes through `hidden -> bottleneck_size -> n_layers * 2 *
hidden` (tanh), which gives every layer's keys and values at once.

Porting decision: the MLP-reparameterised prefix is ported AS IS (embedding plus MLP). Both
hosts get this same config, so the tensors match by name and shape; nothing is ejected. Reasons:
`eject_prefix_tuning` fails on Llama with grouped-query attention, and an ejected module saved
by adapters still says `flat: false` and is silently re-randomised on loading. A consequence:
the MLP's last layer holds all layers in one tensor, so a layer map cannot be applied to a
prefix (porting refuses a non-identity map for it), and hosts of different depth never match.

On decoders (GPT-2, Llama) prefix tuning needs eager attention: with `sdpa`, a padded batch masks
the prefix out and its gradients are exactly zero. `attach` switches such hosts to eager.
On T5 there are three prefixes: encoder self-attention, decoder self-attention and
cross-attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from peftport.errors import PeftportError
from peftport.hosts.spec import DECODER_LM, TEXT_TO_TEXT
from peftport.techniques.base import Technique, TechniqueConfig, doc, everywhere


@dataclass(frozen=True)
class PrefixConfig(TechniqueConfig):
    technique = "prefix"

    prefix_length: int = doc(30, "prefix vectors per attention layer")
    flat: bool = doc(
        False,
        "train the prefix directly (true) or through the reparameterising "
        "MLP (false, the default; the MLP travels with the module when ported)",
    )
    bottleneck_size: int = doc(512, "hidden width of the reparameterising MLP")
    non_linearity: str = doc("tanh", "activation of the reparameterising MLP")
    dropout: float = doc(0.0, "dropout on the prefix")
    encoder_prefix: bool = doc(True, "encoder-decoder hosts: prefix the encoder self-attention")
    cross_prefix: bool = doc(True, "encoder-decoder hosts: prefix the cross-attention")

    adapters_class = "PrefixTuningConfig"
    adapters_fields = (
        "prefix_length flat bottleneck_size non_linearity dropout encoder_prefix cross_prefix"
    )

    def validate(self) -> None:
        for name in ("prefix_length", "bottleneck_size"):
            if getattr(self, name) < 1:
                raise PeftportError(
                    f"prefix config: {name} must be >= 1, got {getattr(self, name)}"
                )
        if not 0.0 <= self.dropout < 1.0:
            raise PeftportError(f"prefix config: dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        if c.get("architecture") != "prefix_tuning":
            return None
        return {k: c[k] for k in (f.name for f in fields(cls)) if k in c}


TECHNIQUE = Technique(
    config_cls=PrefixConfig,
    summary="trainable attention prefixes, reparameterised by an MLP during training",
    reference="Li and Liang 2021 (arXiv 2101.00190)",
    support=everywhere(
        {
            TEXT_TO_TEXT: "encoder, decoder and cross-attention prefixes",
            DECODER_LM: "eager attention: attach switches the host to it",
        }
    ),
    order=3,
    peft_type="PREFIX_TUNING",
    layer_mappable=False,  # the MLP's last layer holds every layer's prefix (docstring)
    # with sdpa a padded batch masks the prefix out and its gradients are zero
    eager_attention=frozenset({DECODER_LM}),
)
