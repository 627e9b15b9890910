"""Tiny randomly initialised hosts (2 layers, width 16) for fast unit tests: no download at all.

Their tokenizer is a small WordPiece vocabulary made here (characters plus a few whole words,
the label words among them), so the same ids come out on every machine.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "</s>", "<s>"]
WORDS = ["positive", "negative", "great", "terrible", "good", "bad", "the", "movie", "film", "a"]


def _vocab() -> list[str]:
    chars = string.ascii_lowercase + string.digits + string.punctuation
    tokens = SPECIALS + WORDS + list(chars) + ["##" + c for c in chars]
    return list(dict.fromkeys(tokens))  # "a" is a word and a character: keep its first id


def write_tokenizer(out: Path, family: str) -> None:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(_vocab())}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    if family == "bert":
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
        )
        extra = dict(cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    elif family == "t5":
        tok.post_processor = processors.TemplateProcessing(
            single="$A </s>", special_tokens=[("</s>", vocab["</s>"])]
        )
        extra = dict(eos_token="</s>")
    else:  # decoders: no special tokens around the text
        extra = dict(eos_token="</s>", bos_token="<s>")
    inputs = (
        ["input_ids", "token_type_ids", "attention_mask"]
        if family == "bert"
        else ["input_ids", "attention_mask"]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        model_input_names=inputs,
        **extra,
    )
    fast.save_pretrained(out)


@dataclass(frozen=True)
class TinyVariant:
    """A further tiny host of a family, as data: its layout's `tiny_config` with `config`
    overrides (a wider, deeper "large"), and optionally `drift`: the same random weights (same
    seed, same shape) with every tensor moved by `drift` x its own standard deviation of seeded
    noise, the tiny stand-in for a raw -> tuned pair (T5 v1.1 -> Flan-T5)."""

    family: str
    description: str
    config: dict[str, Any] = field(default_factory=dict)
    drift: float = 0.0
    parent: str | None = None  # the host a drifted variant is the twin of

    def recipe(self, name: str) -> tuple[tuple[str, str], ...]:
        r = {"family": self.family, "how": "tiny random", "name": name, "seed": "0", "version": "3"}
        if self.config:
            r["config"] = json.dumps(self.config, sort_keys=True)
        if self.drift:
            r["drift"] = repr(self.drift)
            r["drift_seed"] = "1"
        return tuple(sorted(r.items()))


# T5 at two widths, each with a drifted twin: the paper's two same-shape text-to-text pairs
# (T5 v1.1 base/large <-> Flan-T5 base/large) in miniature, for `--preset paper-tiny`.
# 0.05 of each tensor's spread moves the hosts apart visibly without making them strangers.
_LARGE_T5 = dict(d_model=32, d_kv=8, d_ff=64, num_layers=4, num_decoder_layers=4, num_heads=4)
TINY_VARIANTS: dict[str, TinyVariant] = {
    "tiny-t5-tuned": TinyVariant(
        "t5",
        "tiny-t5 with every weight drifted by 5% of its spread (its raw -> tuned twin)",
        drift=0.05,
        parent="tiny-t5",
    ),
    "tiny-t5-large": TinyVariant(
        "t5", 'tiny random t5, "large" (4 layers, width 32) for unit tests', config=_LARGE_T5
    ),
    "tiny-t5-large-tuned": TinyVariant(
        "t5",
        "tiny-t5-large with every weight drifted by 5% of its spread (its tuned twin)",
        config=_LARGE_T5,
        drift=0.05,
        parent="tiny-t5-large",
    ),
}


def build_tiny(out: Path, recipe: dict[str, str]) -> None:
    """A tiny random host of `recipe["family"]`: its layout's `tiny_class` and `tiny_config`
    (with the recipe's `config` overrides), initialised under `recipe["seed"]`, then drifted by
    `recipe["drift"]` (seeded by `drift_seed`) if the recipe says so."""
    import torch
    import transformers

    from peftport.hosts.spec import LAYOUTS

    family, seed = recipe["family"], int(recipe["seed"])
    layout = LAYOUTS.get(family)
    if layout is None or not layout.tiny_class:
        raise ValueError(f"no tiny host for family {family!r}")
    torch.manual_seed(seed)
    config = {**layout.tiny_config, **json.loads(recipe.get("config", "{}"))}
    cfg = transformers.AutoConfig.for_model(family, vocab_size=len(_vocab()), **config)
    model = getattr(transformers, layout.tiny_class)(cfg)
    drift = float(recipe.get("drift", 0))
    if drift:
        gen = torch.Generator().manual_seed(int(recipe["drift_seed"]))
        with torch.no_grad():
            for _, p in sorted(model.named_parameters()):  # tied tensors appear once
                if p.numel() > 1:
                    p.add_(torch.randn(p.shape, generator=gen) * (drift * float(p.std())))
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, family)
