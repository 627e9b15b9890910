"""Text-to-text as the paper frames it: T5 generates the label.

peftport's default evaluation ranks the label words by their summed log-probability (the word's
tokens and </s>); the paper's T5 generates its answer. On a tiny T5, every example:
- once a module answers in label words, greedy generation and ranking pick the same label;
- where they differ, it is for one of two reasons, and no other: the greedy answer is no label
  word at all (an untrained or broken module: generation scores it wrong, ranking still picks
  a label), or greedy decoding commits to the likelier first token while the likelier whole
  label word (its </s> included) is the other one.
So the two differ exactly where a module does not (yet) answer the task in its words, which is
what zero-shot porting measures: `eval_mode: generate` evaluates by generation.
"""

import warnings

import pytest
import torch

from peftport import tasks
from peftport.configs import TrainConfig
from peftport.data import load_dataset
from peftport.engine import evaluate
from peftport.errors import PeftportError
from peftport.hosts import TEXT_TO_TEXT, load_host
from peftport.runs import train_run


@pytest.fixture(scope="module")
def data():
    return load_dataset("tiny_sentiment")


def _encoded(host, data):
    framing = tasks.Framing.for_host(TEXT_TO_TEXT, data.label_words, 32)
    examples = data.test + data.validation
    return tasks.encode(host.tokenizer, examples, framing, f"gen-{data.fingerprint}")


def _first_step_logprobs(model, enc, idx):
    """log p(first answer token) over the whole vocabulary: what greedy decoding's first step
    takes the argmax of."""
    ids, mask = tasks._pad([enc.input_ids[i] for i in idx], enc.pad_id)
    start = torch.full((len(idx), 1), model.config.decoder_start_token_id)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, decoder_input_ids=start).logits
    return logits[:, 0].float().log_softmax(-1)


def _compare(host, data):
    enc = _encoded(host, data)
    idx = list(range(len(enc)))
    host.model.eval()
    ranked = tasks.scores(host.model, TEXT_TO_TEXT, enc, idx)
    generated = tasks.generated_labels(host.model, TEXT_TO_TEXT, enc, idx)
    first = _first_step_logprobs(host.model, enc, idx)
    return enc, ranked, generated, first


def _trained(technique, steps, lr, data, **config):
    host = load_host("tiny-t5")
    cfg = TrainConfig(steps=steps, lr=lr, batch_size=8, max_length=32, eval_at=(), seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train_run(host, technique, data, cfg, technique_config=config or None, progress=False)
    return host


@pytest.fixture(scope="module")
def states(data):
    """A tiny T5 untrained, under-trained and trained: (name, compared) each."""
    hosts = {
        "untrained": load_host("tiny-t5"),
        "lora 8 steps": _trained("lora", 8, 1e-2, data),
        "lora 30 steps": _trained("lora", 30, 1e-2, data),
        "lora 30 steps, lr 3e-2": _trained("lora", 30, 3e-2, data),
        "prefix 20 steps": _trained("prefix", 20, 1e-2, data),
    }
    return {name: _compare(h, data) for name, h in hosts.items()}


@pytest.mark.parametrize("state", ["prefix 20 steps", "lora 30 steps, lr 3e-2"])
def test_generation_picks_the_ranked_label_once_the_module_answers_in_label_words(state, states):
    enc, ranked, generated, _ = states[state]
    assert tasks.NO_LABEL not in generated  # it answers in label words
    assert generated == ranked.argmax(1).tolist()  # every example: the same label


def test_untrained_t5_generates_no_label_word_while_ranking_still_picks_one(states):
    enc, ranked, generated, first = states["untrained"]
    label_first = {c[0] for c in enc.candidates}
    greedy_first = first.argmax(-1).tolist()
    assert all(t not in label_first for t in greedy_first)  # its first token is no label word
    assert generated == [tasks.NO_LABEL] * len(enc)  # so generation has no answer, every time
    assert set(ranked.argmax(1).tolist()) <= {0, 1}  # ranking answers anyway


def test_every_disagreement_has_one_of_the_two_reasons(states):
    """Across model states (untrained, under-trained, trained), each example where generation
    and ranking differ is explained: no label word, or first token against whole word."""
    seen = {"agree": 0, "no label word": 0, "first token vs whole word": 0}
    for enc, ranked, generated, first in states.values():
        best = ranked.argmax(1).tolist()
        for r, (g, b) in enumerate(zip(generated, best, strict=True)):
            if g == b:
                seen["agree"] += 1
            elif g == tasks.NO_LABEL:
                seen["no label word"] += 1
            else:  # greedy's first token is label g's and likelier than label b's first token,
                # while b's whole word (with </s>) is likelier: the </s> step turns it
                assert first[r, enc.candidates[g][0]] > first[r, enc.candidates[b][0]]
                assert ranked[r, b] > ranked[r, g]
                seen["first token vs whole word"] += 1
    # measured: 87 agree, 64 no label word, 9 first token vs whole word (of 5 x 32)
    assert all(seen.values()), seen


def test_generate_mode_of_evaluate_counts_answers_that_are_no_label_word_as_wrong(data):
    host = load_host("tiny-t5")
    enc = _encoded(host, data)
    ranked = evaluate(host.model, TEXT_TO_TEXT, enc, eval_mode="rank")
    gen = evaluate(host.model, TEXT_TO_TEXT, enc, eval_mode="generate")
    assert gen["no_label_share"] == 1.0 and gen["accuracy"] == 0.0
    assert ranked["accuracy"] > 0 and "no_label_share" not in ranked
    assert gen["auc"] == ranked["auc"]  # the margin is the ranking's either way


def test_generate_mode_is_for_text_to_text_hosts_only(data):
    host = load_host("tiny-bert")
    framing = tasks.Framing.for_host(host.kind, data.label_words, 32)
    enc = tasks.encode(host.tokenizer, data.test, framing, "gen-bert")
    with pytest.raises(PeftportError, match="for text-to-text hosts"):
        evaluate(host.model, host.kind, enc, eval_mode="generate")
    with pytest.raises(PeftportError, match="eval_mode"):
        TrainConfig(steps=1, eval_mode="sample")


def test_evaluate_takes_the_eval_mode_on_the_command_line(tmp_path):
    import json

    from typer.testing import CliRunner

    from peftport.cli import app

    runner = CliRunner()
    module = tmp_path / "m"
    res = runner.invoke(
        app,
        [
            "train",
            "--host",
            "tiny-t5",
            "--technique",
            "lora",
            "--data",
            "tiny_sentiment",
            "--steps",
            "1",
            "--eval-at",
            "",
            "--max-length",
            "32",
            "--out",
            str(module),
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    got = {}
    for mode in ("rank", "generate"):
        res = runner.invoke(
            app,
            [
                "evaluate",
                str(module),
                "--host",
                "tiny-t5",
                "--data",
                "tiny_sentiment",
                "--max-length",
                "32",
                "--eval-mode",
                mode,
                "--json",
            ],
        )
        assert res.exit_code == 0, res.output
        got[mode] = json.loads(res.output)
    # an all but untrained module: generation answers no label word, ranking still picks one
    assert got["generate"]["no_label_share"] > 0.5 and "no_label_share" not in got["rank"]
    assert got["generate"]["auc"] == got["rank"]["auc"]
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(module),
            "--host",
            "tiny-t5",
            "--data",
            "tiny_sentiment",
            "--eval-mode",
            "sample",
        ],
    )
    assert "eval_mode must be one of rank, generate, got 'sample'" in str(res.exception)
