"""The training engine: determinism, checkpoints inside one run, clear errors, real learning."""

import json

import pytest
import torch
from typer.testing import CliRunner

from peftport.cli import app
from peftport.data import load_dataset
from peftport.engine import TrainConfig, batches
from peftport.errors import PeftportError
from peftport.runs import adapt_run, evaluate_run, train_run

runner = CliRunner()


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def small_rt():
    return load_dataset("rotten_tomatoes", max_examples=64)


def _cfg(**kw):
    base = dict(
        steps=6,
        batch_size=4,
        max_length=32,
        lr=5e-3,
        eval_at=(0, 3, 6),
        max_eval_examples=24,
        eval_batch_size=8,
        seed=1,
    )
    base.update(kw)
    return TrainConfig(**base)


TINY = [
    ("tiny-bert", "lora", None),
    ("tiny-t5", "adapter", None),
    ("tiny-gpt2", "lora", None),
    ("tiny-llama", "ia3", None),
]


@pytest.mark.parametrize("host,technique,config", TINY)
def test_same_seed_same_metrics(host, technique, config, small_rt):
    a = train_run(host, technique, small_rt, _cfg(), technique_config=config, progress=False)
    b = train_run(host, technique, small_rt, _cfg(), technique_config=config, progress=False)
    assert a.result.metrics == b.result.metrics
    assert a.result.losses == b.result.losses
    for k in a.tensors:
        assert torch.equal(a.tensors[k], b.tensors[k]), k
    c = train_run(host, technique, small_rt, _cfg(seed=2), technique_config=config, progress=False)
    assert c.result.losses != a.result.losses  # the seed matters (the test can fail)
    assert set(a.result.metrics) == {0, 3, 6}
    assert 0 <= a.result.metrics[6]["accuracy"] <= 1


@pytest.mark.parametrize("host,technique,config", TINY[:2])
def test_checkpoints_in_one_run_equal_separate_runs(host, technique, config, small_rt):
    full = train_run(host, technique, small_rt, _cfg(), technique_config=config, progress=False)
    for stop in (3, 6):
        part = train_run(
            host,
            technique,
            small_rt,
            _cfg(steps=stop, eval_at=(stop,), horizon=6),
            technique_config=config,
            progress=False,
        )
        assert part.result.metrics[stop] == full.result.metrics[stop]


def test_snapshots_at_save_steps(small_rt):
    out = train_run("tiny-bert", "lora", small_rt, _cfg(), progress=False, save_at=(3,))
    assert set(out.snapshots) == {3}
    assert set(out.snapshots[3]) == set(out.tensors)
    assert any(not torch.equal(out.snapshots[3][k], out.tensors[k]) for k in out.tensors)


def test_schedule_warmup_then_linear_decay():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(55) == pytest.approx(0.5)
    assert cfg.lr_at(99) == pytest.approx(1 / 90)
    shared = TrainConfig(steps=50, lr=1.0, warmup_ratio=0.1, horizon=100)
    assert shared.lr_at(30) == cfg.lr_at(30)


def test_length_bucketed_batches_are_deterministic_and_cover_everything():
    lengths = [5, 50, 7, 49, 6, 48, 8, 47] * 10
    a = [next(g) for g in [batches(lengths, 4, 0)] for _ in range(20)]
    g = batches(lengths, 4, 0)
    b = [next(g) for _ in range(20)]
    assert a == b
    assert sorted(i for batch in b for i in batch) == list(range(80))  # one epoch, no repeats
    spread = [max(lengths[i] for i in x) - min(lengths[i] for i in x) for x in b]
    assert sum(spread) / len(spread) < 10  # similar lengths share a batch


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=-1), "steps must be >= 0"),
        (dict(steps=5, eval_at=(7,)), r"eval step\(s\) \[7\] outside the run"),
        (dict(steps=5, batch_size=0), "batch_size must be positive"),
        (dict(steps=5, lr=0), "lr must be positive"),
        (dict(steps=5, horizon=3), "horizon 3 is shorter than the run"),
        (dict(steps=5, eval_split="dev"), "eval_split must be"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(PeftportError, match=match):
        TrainConfig(**kwargs)


def test_every_trainconfig_field_is_a_train_and_adapt_option(monkeypatch):
    """The options come from TrainConfig's field descriptions: a field needs no CLI edit."""
    import dataclasses

    import peftport.runs as runs

    seen = []
    monkeypatch.setattr(runs, "train_run", lambda *a, **k: seen.append(a[3]) or _stop())
    monkeypatch.setattr(runs, "adapt_run", lambda *a, **k: seen.append(a[3]) or _stop())
    for cmd, head in (("train", ["--technique", "lora"]), ("adapt", ["m"])):
        out = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "200"}).output  # no "…"
        for f in dataclasses.fields(TrainConfig):
            assert f"--{f.name.replace('_', '-')}" in out, (cmd, f.name)
        args = [
            cmd,
            *head,
            "--host",
            "tiny-bert",
            "--data",
            "d",
            "--steps",
            "8",
            "--warmup-ratio",
            "0.25",
            "--horizon",
            "12",
            "--weight-decay",
            "0.01",
            "--max-grad-norm",
            "0.5",
            "--eval-batch-size",
            "8",
            "--split",
            "validation",
            "--max-eval",
            "5",
            "--eval-at",
            "0,4",
            "--lr",
            "0.01",
        ]
        res = runner.invoke(app, args)
        assert isinstance(res.exception, _Stop), res.output
    for cfg in seen:
        assert cfg == TrainConfig(
            steps=8,
            lr=0.01,
            warmup_ratio=0.25,
            horizon=12,
            weight_decay=0.01,
            max_grad_norm=0.5,
            eval_batch_size=8,
            eval_split="validation",
            max_eval_examples=5,
            eval_at=(0, 4),
        )
    res = runner.invoke(
        app,
        [
            "train",
            "--technique",
            "lora",
            "--host",
            "h",
            "--data",
            "d",
            "--steps",
            "3",
            "--warmup-ratio",
            "-1",
        ],
    )
    assert "warmup_ratio must be >= 0, got -1.0" in str(res.exception)


class _Stop(Exception):
    pass


def _stop():
    raise _Stop


def test_bad_input_fails_before_training(small_rt, monkeypatch):
    import peftport.runs as runs

    def no_training(*a, **k):
        raise AssertionError("training started")

    monkeypatch.setattr(runs, "train", no_training)
    with pytest.raises(PeftportError, match="unknown technique 'lorra'.*Did you mean 'lora'"):
        train_run("tiny-bert", "lorra", small_rt, _cfg())
    with pytest.raises(PeftportError, match="unknown data set"):
        train_run("tiny-bert", "lora", "rotten_tomatos", _cfg())
    with pytest.raises(PeftportError, match="prompt"):
        train_run("tiny-t5", "prompt", small_rt, _cfg())


def test_label_mismatch_between_module_and_data(tmp_path, small_rt):
    from dataclasses import replace

    out = train_run("tiny-bert", "lora", small_rt, _cfg(steps=2, eval_at=()), progress=False)
    other = replace(
        small_rt,
        id="three-way",
        label_names=("neg", "neu", "pos"),
        label_words=("neg", "neu", "pos"),
    )
    with pytest.raises(PeftportError, match="label sets must match"):
        adapt_run((out.tensors, out.meta), "tiny-bert", other, _cfg())


def test_module_trained_elsewhere_must_be_ported_first(small_rt):
    out = train_run("tiny-bert", "lora", small_rt, _cfg(steps=2, eval_at=()), progress=False)
    meta = dict(out.meta, origin_fingerprint="0" * 64)
    with pytest.raises(PeftportError, match="port it first"):
        evaluate_run((out.tensors, meta), "tiny-bert", small_rt)


def test_adapt_continues_from_the_module(small_rt):
    out = train_run("tiny-bert", "lora", small_rt, _cfg(steps=6, eval_at=(6,)), progress=False)
    ad = adapt_run(
        (out.tensors, out.meta),
        "tiny-bert",
        small_rt,
        _cfg(steps=2, eval_at=(0, 2)),
        progress=False,
    )
    # step 0 of adaptation is the module as trained: the same metrics as its last checkpoint
    assert ad.result.metrics[0] == out.result.metrics[6]
    assert ad.meta["steps"] == 8
    direct = evaluate_run(
        (out.tensors, out.meta), "tiny-bert", small_rt, max_examples=24, max_length=32
    )
    assert direct == out.result.metrics[6]


def test_cli_train_adapt_evaluate(tmp_path):
    data = tmp_path / "d.jsonl"
    rows = [
        {"text": f"{w} movie number {i}", "label": int(w == "great")}
        for i in range(40)
        for w in ("great", "terrible")
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows))
    common = ["--max-length", "16", "--batch-size", "4", "--lr", "0.01"]
    res = runner.invoke(
        app,
        [
            "train",
            "--host",
            "tiny-bert",
            "--technique",
            "lora",
            "--data",
            str(data),
            "--steps",
            "4",
            "--eval-at",
            "0,4",
            "--out",
            str(tmp_path / "m"),
            "--json",
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert set(summary["metrics"]) == {"0", "4"}
    res = runner.invoke(
        app,
        [
            "adapt",
            str(tmp_path / "m"),
            "--host",
            "tiny-bert",
            "--data",
            str(data),
            "--steps",
            "2",
            "--eval-at",
            "0,2",
            "--json",
            *common,
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["metrics"]["0"] == summary["metrics"]["4"]
    res = runner.invoke(
        app,
        [
            "evaluate",
            str(tmp_path / "m"),
            "--host",
            "tiny-bert",
            "--data",
            str(data),
            "--json",
            "--max-length",
            "16",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.output) == summary["metrics"]["4"]
    res = runner.invoke(
        app,
        [
            "train",
            "--host",
            "tiny-bert",
            "--technique",
            "lora",
            "--data",
            str(data),
            "--steps",
            "0",
        ],
    )
    assert res.exit_code != 0 and "--steps must be positive" in str(res.exception)
    res = runner.invoke(
        app,
        [
            "train",
            "--host",
            "tiny-bert",
            "--technique",
            "lora",
            "--data",
            str(data),
            "--steps",
            "3",
            "--eval-at",
            "1,x",
        ],
    )
    assert "whole numbers" in str(res.exception)


@pytest.mark.slow
def test_real_training_beats_chance():
    """minilm-l6 + LoRA on Rotten Tomatoes: 150 steps must beat the majority class clearly."""
    torch.set_num_threads(2)
    data = load_dataset("rotten_tomatoes")
    cfg = TrainConfig(steps=150, eval_at=(150,), max_eval_examples=400, seed=0)
    out = train_run("minilm-l6", "lora", data, cfg, progress=False)
    m = out.result.metrics[150]
    majority = max(
        sum(e.label for e in data.test[:400]), 400 - sum(e.label for e in data.test[:400])
    )
    assert m["accuracy"] > majority / 400 + 0.1, m
    assert m["auc"] > 0.75, m


def test_threads_are_restored_after_training(small_rt):
    """cfg.threads applies to the training only, also when it fails."""
    train_run("tiny-bert", "lora", small_rt, _cfg(steps=1, eval_at=(), threads=2), progress=False)
    assert torch.get_num_threads() == 1
    with pytest.raises(PeftportError, match="fewer than one batch"):
        train_run("tiny-bert", "lora", small_rt, _cfg(batch_size=1000, threads=2), progress=False)
    assert torch.get_num_threads() == 1


def test_encoding_cache_is_exact_and_bounded(small_rt):
    """tiny-bert's and tiny-t5's tokenizers share class, vocabulary and size but frame text
    differently: a key from a sample of the vocabulary took one for the other."""
    from peftport import tasks
    from peftport.hosts import load_host

    bert, t5 = load_host("tiny-bert").tokenizer, load_host("tiny-t5").tokenizer
    assert bert.get_vocab() == t5.get_vocab() and type(bert) is type(t5)
    assert tasks._tokenizer_key(bert) != tasks._tokenizer_key(t5)
    framing = tasks.Framing.for_host("encoder-classifier", small_rt.label_words, 32)
    rows = small_rt.split("train")
    a = tasks.encode(bert, rows, framing, "k")
    assert tasks.encode(bert, rows, framing, "k") is a  # cached
    assert a.input_ids[0][0] == bert.cls_token_id
    assert tasks.encode(t5, rows, framing, "k").input_ids[0][-1] == t5.eos_token_id
    for i in range(tasks.ENCODING_CACHE_SIZE + 3):
        tasks.encode(bert, rows[:4], framing, f"small-{i}")
    assert len(tasks._CACHE) == tasks.ENCODING_CACHE_SIZE
