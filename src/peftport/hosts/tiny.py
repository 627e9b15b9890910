"""Tiny randomly initialised hosts (2 layers, width 16) for fast unit tests: no download at all.

Their tokenizer is a small WordPiece vocabulary made here (characters plus a few whole words,
the label words among them), so the same ids come out on every machine.
"""

from __future__ import annotations

import string
from pathlib import Path

import torch

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


def build_tiny(out: Path, recipe: dict[str, str]) -> None:
    """A tiny random host of `recipe["family"]`: its layout's `tiny_class` and `tiny_config`,
    initialised under `recipe["seed"]`."""
    import transformers

    from peftport.hosts.spec import LAYOUTS

    family, seed = recipe["family"], int(recipe["seed"])
    layout = LAYOUTS.get(family)
    if layout is None or not layout.tiny_class:
        raise ValueError(f"no tiny host for family {family!r}")
    torch.manual_seed(seed)
    cfg = transformers.AutoConfig.for_model(family, vocab_size=len(_vocab()), **layout.tiny_config)
    model = getattr(transformers, layout.tiny_class)(cfg)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, family)
