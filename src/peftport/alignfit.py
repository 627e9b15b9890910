"""The edge of the `align` porting method: run two hosts on a shared unlabelled corpus and fit
the linear maps between their hidden spaces (`peftport.methods.fit_map`), for every pair of an
origin and a receiver hidden state of the main layer stack.

The hidden states are streamed as `peftport.hostcompare` streams them for CKA (the same seeded
sample of texts, the same block-output hooks); only their second moments are kept. Rows are
tokens when both hosts tokenize the sample alike, else one mean-pooled row per text.
"""

from __future__ import annotations

from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.methods import FIT_KINDS, Alignment, fit_map

__all__ = ["ALIGN_CORPUS", "fit_alignment"]

ALIGN_CORPUS = "rt_plots"
_BATCH = 16


def _rows(states: list[torch.Tensor], mask: torch.Tensor, pooled: bool) -> list[torch.Tensor]:
    keep = mask.bool()
    if pooled:
        m = mask.unsqueeze(-1).to(states[0].dtype)
        return [(h * m).sum(1) / m.sum(1) for h in states]
    return [h[keep] for h in states]


def fit_alignment(
    origin: Any,
    receiver: Any,
    *,
    fit: str = "procrustes",
    corpus: str = ALIGN_CORPUS,
    texts: int = 256,
    max_length: int = 64,
    seed: int = 0,
) -> Alignment:
    """Maps between every origin and receiver hidden state (embedding output, block outputs),
    fitted on `texts` texts of `corpus`, plus both hosts' weights. `origin`/`receiver`: loaded
    hosts (`peftport.hosts.load_host`) WITHOUT a module attached."""
    from peftport.hostcompare import _encode, _Hidden, _Moments, _pad, sample_texts

    if fit not in FIT_KINDS:
        raise PeftportError(f"align: fit must be one of {', '.join(FIT_KINDS)}, got {fit!r}")
    if isinstance(texts, bool) or not isinstance(texts, int) or texts < 2:
        raise PeftportError(f"align: texts must be an integer >= 2, got {texts!r}")
    sample = sample_texts(corpus, texts, seed)
    for h in (origin, receiver):
        h.model.float().eval()
    o_run, r_run = _Hidden(origin), _Hidden(receiver)
    o_ids = _encode(origin.tokenizer, sample, max_length)
    r_ids = _encode(receiver.tokenizer, sample, max_length)
    pooled = o_ids != r_ids
    moments = _Moments()
    for s in range(0, len(sample), _BATCH):
        idx = range(s, min(s + _BATCH, len(sample)))
        oi, om = _pad([o_ids[k] for k in idx], o_run.pad_id)
        ri, rm = _pad([r_ids[k] for k in idx], r_run.pad_id)
        moments.add(_rows(o_run(oi, om), om, pooled), _rows(r_run(ri, rm), rm, pooled))
    maps = {}
    for i, aa in enumerate(moments.aa):
        for j, bb in enumerate(moments.bb):
            maps[(i, j)] = fit_map(moments.ab[i][j], aa, bb, fit)
    info = {
        "fit": fit,
        "corpus": corpus,
        "texts": len(sample),
        "max_length": max_length,
        "seed": seed,
        "rows": "mean-pooled texts" if pooled else "tokens",
        "origin_hidden_size": int(moments.aa[0].shape[0]),
        "receiver_hidden_size": int(moments.bb[0].shape[0]),
    }
    return Alignment(
        kind=fit,
        maps=maps,
        origin_weights=_weights(origin.model),
        receiver_weights=_weights(receiver.model),
        info=info,
    )


def _weights(model: Any) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in model.state_dict().items()}
