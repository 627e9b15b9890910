"""Label-word scoring on text-to-text hosts equals the model's own full forward pass.

`tasks.scores` runs T5's encoder once for all label words; the techniques whose state lives in
adapters' ForwardContext (Compacter's shared parameters, prefix states) must see it there too.
"""

from types import SimpleNamespace

import pytest
import torch

from peftport import tasks
from peftport.hosts import TEXT_TO_TEXT, load_host
from peftport.techniques import attach

TEXTS = ["great movie", "terrible film", "a good film", "bad", "the movie", "positive a film"]
CONFIGS = {
    "adapter": {"reduction_factor": 4},
    "lora": {"r": 2},
    "prefix": {"prefix_length": 4},
    "compacter": {"reduction_factor": 4},
    "ia3": {},
}


@pytest.mark.parametrize("technique", sorted(CONFIGS))
def test_t5_scores_equal_full_forward(technique):
    h = load_host("tiny-t5")
    attach(h.model, h.spec.family, technique, CONFIGS[technique], seed=0)
    for p in h.model.parameters():  # move the module off its no-op initialisation
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.5, generator=torch.Generator().manual_seed(1))
    h.model.eval()
    framing = tasks.Framing.for_host(TEXT_TO_TEXT, ("negative", "positive"), 32)
    rows = [SimpleNamespace(text=t, label=i % 2) for i, t in enumerate(TEXTS)]
    enc = tasks.encode(h.tokenizer, rows, framing, f"scoring-{technique}")
    idx = list(range(len(rows)))
    got = tasks.scores(h.model, TEXT_TO_TEXT, enc, idx)

    ids, mask = tasks._pad([enc.input_ids[i] for i in idx], enc.pad_id)
    want = torch.empty_like(got)
    with torch.no_grad():
        for c, cand in enumerate(enc.candidates):
            tgt = torch.tensor([cand] * len(idx))
            logits = h.model(input_ids=ids, attention_mask=mask, labels=tgt).logits.float()
            want[:, c] = logits.log_softmax(-1).gather(-1, tgt.unsqueeze(-1)).squeeze(-1).sum(-1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
