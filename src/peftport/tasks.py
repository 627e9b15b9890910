"""How a classification task is put to each kind of host, and how its answers are scored.

- encoder-classifier: the text goes in, a classification head gives one logit per label;
- text-to-text (T5): "<prefix>: <text>" goes in, the decoder generates a label word; evaluation
  ranks the label words by their summed log-probability, or (`eval_mode: generate`) lets the
  decoder generate greedily and counts an answer that is no label word as wrong
  (`generated_labels`; docs/engine.md says where the two differ);
- decoder-lm (GPT-2, Llama): "<prompt with the text>" goes in, the label word is the continuation;
  evaluation ranks the label words the same way.

Tokenisation happens once per (tokenizer, data set split, framing) and is cached in memory.
Batches are padded dynamically to their longest row.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import torch
from adapters.context import ForwardContext

from peftport.errors import PeftportError
from peftport.hosts import DECODER_LM, ENCODER_CLASSIFIER, TEXT_TO_TEXT
from peftport.lru import LRU

TEMPLATES = {
    ENCODER_CLASSIFIER: "{text}",
    TEXT_TO_TEXT: "sentiment: {text}",
    DECODER_LM: "Review: {text}\nSentiment:",
}


@dataclass(frozen=True)
class Framing:
    kind: str
    label_words: tuple[str, ...]
    template: str
    max_length: int = 64

    @staticmethod
    def for_host(kind: str, label_words: tuple[str, ...], max_length: int = 64) -> Framing:
        return Framing(
            kind=kind,
            label_words=tuple(label_words),
            template=TEMPLATES[kind],
            max_length=max_length,
        )


@dataclass
class Encoded:
    """One split, tokenised. `candidates[c]` are the token ids of label word c (LM kinds)."""

    input_ids: list[list[int]]
    labels: list[int]
    candidates: list[list[int]]
    pad_id: int

    def __len__(self) -> int:
        return len(self.labels)

    def lengths(self) -> list[int]:
        return [len(x) for x in self.input_ids]


# Encodings of the last few (tokenizer, framing, split) combinations: a study unit encodes the
# same splits for the same hosts again and again; bounded, since a long-lived process meets many.
ENCODING_CACHE_SIZE = 8
_CACHE: LRU[Encoded] = LRU(ENCODING_CACHE_SIZE)


def _tokenizer_key(tokenizer) -> str:
    """A digest of everything tokenising depends on, exactly: a fast tokenizer's whole
    serialised form (vocabulary, normaliser, pre-tokeniser, post-processor), a slow one's whole
    vocabulary, and the class, special tokens and truncation side (two tokenizers that share a
    vocabulary but frame text differently get different keys)."""
    h = hashlib.sha256()
    h.update(
        repr(
            (
                type(tokenizer).__name__,
                sorted(tokenizer.special_tokens_map.items()),
                getattr(tokenizer, "truncation_side", None),
            )
        ).encode()
    )
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        state = json.loads(backend.to_str())
        for call_state in ("truncation", "padding"):  # set by each call, not the tokenizer's own
            state.pop(call_state, None)
        h.update(json.dumps(state, sort_keys=True).encode())
    else:
        h.update(repr(sorted(tokenizer.get_vocab().items())).encode())
    return h.hexdigest()


def candidate_ids(tokenizer, framing: Framing) -> list[list[int]]:
    if framing.kind == ENCODER_CLASSIFIER:
        return []
    out = []
    for word in framing.label_words:
        if framing.kind == TEXT_TO_TEXT:
            ids = tokenizer(word, add_special_tokens=True)["input_ids"]  # ends with </s>
        else:
            ids = tokenizer(" " + word, add_special_tokens=False)["input_ids"]
        if not ids:
            raise PeftportError(f"label word {word!r} tokenises to nothing on this host")
        out.append(ids)
    if len({tuple(c) for c in out}) != len(out):
        raise PeftportError(f"label words {framing.label_words} tokenise identically on this host")
    return out


def encode(tokenizer, examples, framing: Framing, key: str) -> Encoded:
    """Tokenise `examples` (objects with .text and .label) once; `key` names the split's content."""
    cache_key = (_tokenizer_key(tokenizer), framing, key)
    return _CACHE.get(cache_key, lambda: _encode(tokenizer, examples, framing))


def _encode(tokenizer, examples, framing: Framing) -> Encoded:
    texts = [framing.template.format(text=e.text) for e in examples]
    labels = [int(e.label) for e in examples]
    if framing.kind == ENCODER_CLASSIFIER:
        ids = tokenizer(texts, truncation=True, max_length=framing.max_length)["input_ids"]
    else:
        # the prompt's end must survive truncation: truncate the text, then add the frame
        cands = candidate_ids(tokenizer, framing)
        room = framing.max_length - max(len(c) for c in cands) - 8
        pre, post = framing.template.split("{text}")
        pre_ids = tokenizer(pre, add_special_tokens=False)["input_ids"] if pre else []
        post_ids = tokenizer(post, add_special_tokens=False)["input_ids"] if post else []
        body = tokenizer(
            [e.text for e in examples],
            add_special_tokens=False,
            truncation=True,
            max_length=max(8, room - len(pre_ids) - len(post_ids)),
        )["input_ids"]
        ids = []
        for b in body:
            row = pre_ids + b + post_ids
            if framing.kind == TEXT_TO_TEXT and tokenizer.eos_token_id is not None:
                row = row + [tokenizer.eos_token_id]
            elif framing.kind == DECODER_LM and tokenizer.bos_token_id is not None:
                row = [tokenizer.bos_token_id] + row
            ids.append(row)
    pad = tokenizer.pad_token_id
    if pad is None:
        pad = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    return Encoded(
        input_ids=ids, labels=labels, candidates=candidate_ids(tokenizer, framing), pad_id=pad
    )


def _pad(
    rows: list[list[int]], pad: int, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and mask, built on the host and sent to `device` in one copy each."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, : len(r)] = 1
    if device is not None and device.type != "cpu":
        ids, mask = ids.to(device, non_blocking=True), mask.to(device, non_blocking=True)
    return ids, mask


def _device(model) -> torch.device:
    """Where the model's parameters are: its batches go there."""
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def training_loss(model, kind: str, enc: Encoded, idx: list[int]) -> torch.Tensor:
    """Mean loss of one batch: cross-entropy on the head, or on the gold label word's tokens."""
    labels = [enc.labels[i] for i in idx]
    dev = _device(model)
    if kind == ENCODER_CLASSIFIER:
        ids, mask = _pad([enc.input_ids[i] for i in idx], enc.pad_id, dev)
        logits = model(input_ids=ids, attention_mask=mask).logits  # (B, C)
        return torch.nn.functional.cross_entropy(logits, torch.tensor(labels, device=dev))
    if kind == TEXT_TO_TEXT:
        ids, mask = _pad([enc.input_ids[i] for i in idx], enc.pad_id, dev)
        tgt, tmask = _pad([enc.candidates[y] for y in labels], enc.pad_id, dev)
        tgt = tgt.masked_fill(tmask == 0, -100)
        return model(input_ids=ids, attention_mask=mask, labels=tgt).loss
    # decoder: prompt + gold word; loss on the word's tokens only (right padding)
    rows = [enc.input_ids[i] + enc.candidates[y] for i, y in zip(idx, labels, strict=True)]
    ids, mask = _pad(rows, enc.pad_id)
    tgt = torch.full_like(ids, -100)
    for r, (i, y) in enumerate(zip(idx, labels, strict=True)):
        start = len(enc.input_ids[i])
        tgt[r, start : start + len(enc.candidates[y])] = torch.tensor(enc.candidates[y])
    if dev.type != "cpu":  # built on the host, sent in one copy each
        ids, mask, tgt = ids.to(dev), mask.to(dev), tgt.to(dev)
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]  # predicts position t+1
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), tgt[:, 1:].reshape(-1), ignore_index=-100
    )


@torch.no_grad()
def scores(model, kind: str, enc: Encoded, idx: list[int]) -> torch.Tensor:
    """(B, C) scores: logits of the head, or the summed log-probability of each label word."""
    dev = _device(model)
    if kind == ENCODER_CLASSIFIER:
        ids, mask = _pad([enc.input_ids[i] for i in idx], enc.pad_id, dev)
        return model(input_ids=ids, attention_mask=mask).logits.float()
    out = torch.empty(len(idx), len(enc.candidates), device=dev)
    if kind == TEXT_TO_TEXT:
        ids, mask = _pad([enc.input_ids[i] for i in idx], enc.pad_id, dev)
        # The encoder runs once for all candidates. Called on its own it is outside the
        # ForwardContext that adapters opens in the model's forward, and Compacter's shared
        # parameters and the prefix states live in that context: open it here.
        with ForwardContext(model, input_ids=ids, attention_mask=mask):
            encoder_outputs = model.get_encoder()(input_ids=ids, attention_mask=mask)
        for c, cand in enumerate(enc.candidates):
            tgt = torch.tensor([cand] * len(idx), device=dev)
            logits = model(
                encoder_outputs=encoder_outputs, attention_mask=mask, labels=tgt
            ).logits.float()  # (B, Lc, V)
            logp = logits.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1)
            out[:, c] = logp.sum(-1)
        return out
    for c, cand in enumerate(enc.candidates):
        rows = [enc.input_ids[i] + cand for i in idx]
        ids, mask = _pad(rows, enc.pad_id, dev)
        logp = model(input_ids=ids, attention_mask=mask).logits.float().log_softmax(-1)
        token = torch.tensor(cand, device=dev)
        for r, i in enumerate(idx):
            start = len(enc.input_ids[i])
            pos = torch.arange(start - 1, start - 1 + len(cand), device=dev)
            out[r, c] = logp[r, pos, token].sum()
    return out


NO_LABEL = -1  # what `generated_labels` gives for an answer that is no label word


@torch.no_grad()
def generated_labels(model, kind: str, enc: Encoded, idx: list[int]) -> list[int]:
    """The label each example's greedy generation spells, or NO_LABEL: T5 as the paper frames
    it, generating the label (unrestricted: any token of the vocabulary may come out).

    The decoder generates as many tokens as the longest label word has (its </s> included);
    an answer is label c when its tokens up to and including the first </s> are exactly label
    word c's. Ranking (`scores`) picks among the label words only, so the two agree only where
    generation's answer is a label word and the same one (tests/test_generation.py)."""
    if kind != TEXT_TO_TEXT:
        raise PeftportError(
            f"generation-based evaluation is for text-to-text hosts, not {kind} (an encoder "
            "classifier has a head; a decoder LM's label word is scored as its continuation)"
        )
    ids, mask = _pad([enc.input_ids[i] for i in idx], enc.pad_id, _device(model))
    steps = max(len(c) for c in enc.candidates)
    with ForwardContext(model, input_ids=ids, attention_mask=mask):
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=steps,
            min_new_tokens=0,
            do_sample=False,
            num_beams=1,
        )
    eos = enc.candidates[0][-1]  # every candidate ends with </s> (candidate_ids)
    words = {tuple(c): label for label, c in enumerate(enc.candidates)}
    labels = []
    for row in out[:, 1:].tolist():  # after the decoder start token
        answer = row[: row.index(eos) + 1] if eos in row else row
        labels.append(words.get(tuple(answer), NO_LABEL))
    return labels
