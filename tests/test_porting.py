"""Porting: identity ports reproduce the origin, the controls are what they claim, every
mismatch is a clear error, layer maps rename layers, and the `port` command writes nothing when
it fails."""

from __future__ import annotations

import json
import re

import pytest
import torch
import typer
from transformers import BertConfig, BertForSequenceClassification
from typer.testing import CliRunner

from peftport.commands import port as port_command
from peftport.errors import PeftportError
from peftport.hosts import load_host
from peftport.module import load_module, module_meta, save_module
from peftport.porting import (
    PortingError,
    ReceiverSpec,
    port,
    sample_like,
)
from peftport.techniques import attach, load_module_state, module_state, set_module_active
from test_techniques import (  # noqa: F401 - one_thread: an autouse fixture
    CASE_IDS,
    CASES,
    forward,
    load,
    one_thread,
    perturb,
    small_config,
)


def trained(family: str, technique: str, config: dict | None = None, seed: int = 0, host=None):
    """An origin host carrying a 'trained' (perturbed) module: (host, tensors, meta)."""
    host = host or load(family)
    att = attach(
        host.model,
        family,
        technique,
        small_config(technique) if config is None else config,
        seed=seed,
    )
    perturb(host.model, seed=seed + 1)
    meta = module_meta(att, host, task="sst2", label_words=["negative", "positive"], steps=10)
    return host, module_state(host.model), meta


def receiver(family: str, technique: str, config: dict | None = None, seed: int = 5, model=None):
    """A receiving host (or a given model of that family) with the technique attached."""
    if model is None:
        host = load(family)
        model, host_id, fp = host.model, host.spec.id, host.fingerprint
    else:
        host_id, fp = "custom", ""
    att = attach(
        model, family, technique, small_config(technique) if config is None else config, seed=seed
    )
    return model, ReceiverSpec.from_attached(att, host_id, fp)


def small_bert(hidden: int = 16, layers: int = 2) -> BertForSequenceClassification:
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=80,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=128,
    )
    return BertForSequenceClassification(cfg).eval()


# --- identity ports ---------------------------------------------------------------------------


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_identity_port_reproduces_the_origin_and_switching_off_changes_it(technique, family):
    origin, tensors, meta = trained(family, technique)
    want = forward(origin.model, family)
    model, spec = receiver(family, technique)
    before = forward(model, family)
    assert not torch.allclose(before, want, atol=1e-5), "the receiver starts elsewhere"
    state = port(tensors, meta, spec, "ported", seed=5)
    load_module_state(model, state)
    torch.testing.assert_close(forward(model, family), want, rtol=1e-5, atol=1e-6)
    set_module_active(model, False)
    assert not torch.allclose(forward(model, family), want, atol=1e-4), (
        "switching the module off must change the outputs"
    )


def test_port_is_pure():
    _, tensors, meta = trained("bert", "lora")
    copy = {k: v.clone() for k, v in tensors.items()}
    meta_copy = dict(meta)
    _, spec = receiver("bert", "lora")
    out = port(tensors, meta, spec, "ported", seed=5)
    assert meta == meta_copy and all(torch.equal(copy[k], tensors[k]) for k in tensors)
    k = next(iter(out))
    out[k].add_(1)
    assert torch.equal(copy[k], tensors[k]), "ported tensors are copies"


def test_port_under_another_module_name():
    _, tensors, meta = trained("gpt2", "lora")
    model = load("gpt2").model
    att = attach(model, "gpt2", "lora", name="moved", seed=5)
    spec = ReceiverSpec.from_attached(att)
    state = port(tensors, meta, spec, "ported", seed=5)
    assert all("moved" in k.split(".") for k in state)
    load_module_state(model, state, name="moved")


def test_keep_receiver_head():
    _, tensors, meta = trained("bert", "adapter")
    _, spec = receiver("bert", "adapter")
    state = port(tensors, meta, spec, "ported", seed=5, keep_receiver_head=True)
    for k in spec.head_keys:
        assert torch.equal(state[k], spec.fresh[k])
        assert not torch.equal(state[k], tensors[k])
    headless = {k: v for k, v in tensors.items() if not k.startswith("classifier")}
    with pytest.raises(PortingError, match="carries no classification head"):
        port(headless, meta, spec, "ported", seed=5)
    state = port(headless, meta, spec, "ported", seed=5, keep_receiver_head=True)
    assert set(state) == set(spec.shapes)


# --- the controls ---------------------------------------------------------------------------


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_sampled_matches_each_tensors_mean_and_std(technique, family):
    _, tensors, meta = trained(family, technique)
    _, spec = receiver(family, technique)
    a = port(tensors, meta, spec, "sampled", seed=3)
    b = port(tensors, meta, spec, "sampled", seed=3)
    c = port(tensors, meta, spec, "sampled", seed=4)
    assert a.keys() == tensors.keys()
    for k, src in tensors.items():
        x, s = a[k].double(), src.double()
        assert a[k].shape == src.shape and a[k].dtype == src.dtype
        assert torch.equal(a[k], b[k]), "same seed, same draw"
        if src.numel() == 1:  # one value: std 0, the draw is the value (documented)
            assert torch.equal(a[k], src)
            continue
        assert not torch.equal(a[k], src), f"{k} was not resampled"
        assert not torch.equal(a[k], c[k]), "another seed, another draw"
        n, std = src.numel(), float(s.std(correction=0))
        if n >= 32:  # five standard errors
            assert abs(float(x.mean() - s.mean())) <= 5 * std / n**0.5 + 1e-6, k
            assert abs(float(x.std(correction=0)) - std) <= 5 * std / (2 * n) ** 0.5 + 1e-6, k


def test_sample_like_is_tight_on_a_large_tensor_and_keeps_constants():
    t = torch.randn(200, 100) * 0.3 + 1.5
    s = sample_like(t, seed=0, name="x", module="m")
    assert abs(float(s.mean() - t.mean())) < 0.01
    assert abs(float(s.std(correction=0) / t.std(correction=0)) - 1) < 0.02
    assert torch.equal(sample_like(torch.full((4, 4), 2.0), 0, "c", "m"), torch.full((4, 4), 2.0))
    assert not torch.equal(sample_like(t, 0, "x", "m"), sample_like(t, 0, "y", "m")), "per name"


@pytest.mark.parametrize("technique,family", CASES, ids=CASE_IDS)
def test_random_is_the_fresh_initialisation_for_the_seed(technique, family):
    _, tensors, meta = trained(family, technique)
    _, spec = receiver(family, technique, seed=7)
    a = port(tensors, meta, spec, "random", seed=7)
    b = port(tensors, meta, spec, "random", seed=7)
    fresh_model = load(family).model
    attach(fresh_model, family, technique, small_config(technique), seed=7)
    fresh = module_state(fresh_model)
    assert a.keys() == fresh.keys() == tensors.keys()
    assert all(torch.equal(a[k], fresh[k]) and torch.equal(a[k], b[k]) for k in a)
    _, other = receiver(family, technique, seed=8)
    c = port(tensors, meta, other, "random", seed=8)
    # IA3 starts at exactly one: without a head, every seed gives the same fresh module
    assert any(not torch.equal(a[k], c[k]) for k in a) == (technique != "ia3" or family == "bert")
    with pytest.raises(PeftportError, match="attached with seed 7"):
        port(tensors, meta, spec, "random", seed=8)


def test_unknown_condition():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora")
    with pytest.raises(PeftportError, match="ported, sampled, random"):
        port(tensors, meta, spec, "shuffled", seed=0)


# --- mismatches ------------------------------------------------------------------------------


def test_wrong_host_kind():
    _, tensors, meta = trained("t5", "lora")
    _, spec = receiver("bert", "lora")
    with pytest.raises(PortingError, match="wrong host kind: .*text-to-text.*encoder-classifier"):
        port(tensors, meta, spec, "ported", seed=5)


def test_wrong_family_same_kind():
    _, tensors, meta = trained("gpt2", "lora")
    _, spec = receiver("llama", "lora")
    with pytest.raises(PortingError, match="family gpt2 .* family llama"):
        port(tensors, meta, spec, "ported", seed=5)


def test_other_technique_or_config():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "ia3")
    with pytest.raises(PortingError, match="'lora' but the receiver .* 'ia3'"):
        port(tensors, meta, spec, "ported", seed=5)
    _, spec = receiver("bert", "lora", config={"r": 4})
    with pytest.raises(PortingError, match=r"differing fields: r \(module 8, receiver 4\)"):
        port(tensors, meta, spec, "random", seed=5)


def test_shape_mismatch_lists_every_tensor_and_says_why():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora", model=small_bert(hidden=32))
    with pytest.raises(PortingError) as err:
        port(tensors, meta, spec, "ported", seed=5)
    msg = str(err.value)
    lines = [line for line in msg.splitlines() if re.match(r"\s+\S+: origin ", line)]
    # 2 layers x (q, v) x (A, B), and the head's weight; the head's bias (2,) fits
    assert len(lines) == len(tensors) - 1 == 9
    assert (
        "bert.encoder.layer.0.attention.self.query.loras.peftport.lora_A: "
        "origin (8, 16), receiver (8, 32)" in msg
    )
    assert "classifier.weight: origin (2, 16), receiver (2, 32)" in msg
    assert "hidden sizes differ (origin 16, receiver 32)" in msg
    for condition in ("sampled", "random"):  # the check runs before any condition
        with pytest.raises(PortingError):
            port(tensors, meta, spec, condition, seed=5)


def test_depth_mismatch_names_missing_and_surplus_layers():
    _, tensors, meta = trained("bert", "adapter")
    _, spec = receiver("bert", "adapter", model=small_bert(layers=1))
    with pytest.raises(PortingError) as err:
        port(tensors, meta, spec, "ported", seed=5)
    msg = str(err.value)
    assert (
        "bert.encoder.layer.1.output.adapters.peftport.adapter_up.weight: origin (16, 1), "
        "receiver absent" in msg
    )
    assert "has 2 layers on the origin and 1 on the receiver (a layer map can pair them)" in msg


# --- layer maps -------------------------------------------------------------------------------


def test_layer_map_swaps_layers():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora")
    out = port(tensors, meta, spec, "ported", seed=5, layer_map={0: 1, 1: 0})
    key = "bert.encoder.layer.{}.attention.self.value.loras.peftport.lora_B"
    assert torch.equal(out[key.format(0)], tensors[key.format(1)])
    assert torch.equal(out[key.format(1)], tensors[key.format(0)])
    assert torch.equal(out["classifier.weight"], tensors["classifier.weight"])
    as_list = port(tensors, meta, spec, "ported", seed=5, layer_map=[1, 0])  # diagnostics' form
    assert all(torch.equal(as_list[k], out[k]) for k in out)


def test_layer_map_into_a_shallower_host():
    origin, tensors, meta = trained("bert", "adapter")
    model, spec = receiver("bert", "adapter", model=small_bert(layers=1))
    out = port(tensors, meta, spec, "ported", seed=5, layer_map={0: 1})
    load_module_state(model, out)
    key = "bert.encoder.layer.{}.output.adapters.peftport.adapter_down.0.weight"
    assert torch.equal(out[key.format(0)], tensors[key.format(1)])


def test_layer_map_errors():
    _, tensors, meta = trained("bert", "lora")
    _, spec = receiver("bert", "lora")
    with pytest.raises(PortingError, match="does not cover this receiver layer"):
        port(tensors, meta, spec, "ported", seed=5, layer_map={0: 0})
    with pytest.raises(PortingError, match=r"<- bert.encoder.layer.5.*origin absent"):
        port(tensors, meta, spec, "ported", seed=5, layer_map={0: 0, 1: 5})
    with pytest.raises(PeftportError, match="non-negative integers"):
        port(tensors, meta, spec, "ported", seed=5, layer_map={0: 0, 1: 0.5})
    with pytest.raises(PeftportError, match="unknown layer stacks"):
        port(tensors, meta, spec, "ported", seed=5, layer_map={"decoder.block": {0: 0}})
    _, ptensors, pmeta = trained("bert", "prefix")
    _, pspec = receiver("bert", "prefix")
    with pytest.raises(PortingError, match="prefix tuning keeps every layer"):
        port(ptensors, pmeta, pspec, "ported", seed=5, layer_map={0: 1, 1: 0})
    port(ptensors, pmeta, pspec, "ported", seed=5, layer_map={0: 0, 1: 1})  # identity is fine


def test_layer_map_per_stack_on_t5():
    _, tensors, meta = trained("t5", "lora")
    _, spec = receiver("t5", "lora")
    out = port(
        tensors,
        meta,
        spec,
        "ported",
        seed=5,
        layer_map={"encoder.block": {0: 1, 1: 0}, "decoder.block": {0: 0, 1: 1}},
    )
    enc = "encoder.block.{}.layer.0.SelfAttention.q.loras.peftport.lora_A"
    dec = "decoder.block.{}.layer.0.SelfAttention.q.loras.peftport.lora_A"
    assert torch.equal(out[enc.format(0)], tensors[enc.format(1)])
    assert torch.equal(out[dec.format(0)], tensors[dec.format(0)])


# --- the port command ------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    port_command.register(app)
    return app


def saved(tmp_path, family="bert", technique="lora"):
    _, tensors, meta = trained(family, technique)
    return save_module(tmp_path / f"{family}-{technique}", tensors, meta), tensors


def test_port_command_writes_a_checked_module(tmp_path):
    src, tensors = saved(tmp_path)
    out = tmp_path / "ported"
    result = CliRunner().invoke(
        cli(),
        [
            "port",
            str(src),
            "--to",
            "tiny-bert",
            "--condition",
            "sampled",
            "--seed",
            "3",
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "sampled, seed 3" in result.output
    got, meta = load_module(out)
    assert got.keys() == tensors.keys()
    assert meta["port"]["condition"] == "sampled" and meta["port"]["seed"] == 3
    assert meta["port"]["receiver_host"] == "tiny-bert"
    assert meta["port"]["source_sha256"] == load_module(src)[1]["sha256"]
    assert meta["origin_host"] == "tiny-bert" and meta["steps"] == 10
    assert "metrics" not in meta
    # the same command again refuses to overwrite, and --force replaces
    args = ["port", str(src), "--to", "tiny-bert", "--out", str(out)]
    result = CliRunner().invoke(cli(), args)
    assert isinstance(result.exception, PeftportError) and "already exists" in str(result.exception)
    assert CliRunner().invoke(cli(), [*args, "--force"]).exit_code == 0
    assert load_module(out)[1]["port"]["condition"] == "ported"


def test_port_command_ported_equals_the_library(tmp_path):
    src, tensors = saved(tmp_path, "t5", "prefix")
    out = tmp_path / "p"
    result = CliRunner().invoke(cli(), ["port", str(src), "--to", "tiny-t5", "--out", str(out)])
    assert result.exit_code == 0, result.output
    got, _ = load_module(out)
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


@pytest.mark.parametrize(
    "to,expect",
    [
        ("tiny-t5", "wrong host kind"),
        ("tiny-bret", "Did you mean 'tiny-bert'"),
    ],
)
def test_port_command_errors_write_nothing(tmp_path, to, expect):
    src, _ = saved(tmp_path)
    out = tmp_path / "never"
    result = CliRunner().invoke(cli(), ["port", str(src), "--to", to, "--out", str(out)])
    assert isinstance(result.exception, PeftportError), result.output
    assert expect in str(result.exception)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert-lora"], "no temp folders left"


def test_port_command_shape_mismatch_writes_nothing(tmp_path):
    model = small_bert(hidden=32)
    model.save_pretrained(tmp_path / "wide-bert", safe_serialization=True)
    load_host("tiny-bert").tokenizer.save_pretrained(tmp_path / "wide-bert")
    src, _ = saved(tmp_path)
    out = tmp_path / "never"
    result = CliRunner().invoke(
        cli(), ["port", str(src), "--to", str(tmp_path / "wide-bert"), "--out", str(out)]
    )
    assert isinstance(result.exception, PortingError), result.output
    assert "origin (8, 16), receiver (8, 32)" in str(result.exception)
    assert not out.exists()


def test_port_command_refuses_a_corrupted_module(tmp_path):
    src, _ = saved(tmp_path)
    data = bytearray((src / "module.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (src / "module.safetensors").write_bytes(bytes(data))
    out = tmp_path / "never"
    result = CliRunner().invoke(cli(), ["port", str(src), "--to", "tiny-bert", "--out", str(out)])
    assert isinstance(result.exception, PeftportError) and "sha256" in str(result.exception)
    assert not out.exists()


def test_port_command_layer_map_option(tmp_path):
    src, tensors = saved(tmp_path)
    out = tmp_path / "swapped"
    result = CliRunner().invoke(
        cli(), ["port", str(src), "--to", "tiny-bert", "--out", str(out), "--layer-map", "0:1,1:0"]
    )
    assert result.exit_code == 0, result.output
    got, meta = load_module(out)
    key = "bert.encoder.layer.{}.attention.self.query.loras.peftport.lora_A"
    assert torch.equal(got[key.format(0)], tensors[key.format(1)])
    assert meta["port"]["layer_map"] == {"0": 1, "1": 0}


def test_techniques_command_lists_the_support_table():
    result = CliRunner().invoke(cli(), ["techniques"])
    assert result.exit_code == 0, result.output
    assert "| `prompt` | yes | no (adapters 1.3.0 refuses prompt tuning here)" in result.output
    result = CliRunner().invoke(cli(), ["techniques", "--json", "--counts", "tiny-gpt2"])
    assert result.exit_code == 0, result.output
    rows = {r["technique"]: r["trainable_on_tiny-gpt2"] for r in json.loads(result.output)}
    assert rows["lora"] == {"module": 1024, "head": 0}
    assert "not supported" in rows["prompt"]["error"]
    assert "phm_dim" in rows["compacter"]["error"]


# --- real hosts -------------------------------------------------------------------------------

REAL = ["adapter", "lora", "prefix", "compacter", "prompt", "ia3"]


@pytest.mark.slow
@pytest.mark.parametrize("technique", REAL)
def test_minilm_identity_port(technique):
    origin, tensors, meta = trained("bert", technique, config={}, host=load_host("minilm-l6"))
    want = forward(origin.model, "bert")
    host = load_host("minilm-l6")
    att = attach(host.model, "bert", technique, seed=5)
    spec = ReceiverSpec.from_attached(att, host.spec.id, host.fingerprint)
    load_module_state(host.model, port(tensors, meta, spec, "ported", seed=5))
    torch.testing.assert_close(forward(host.model, "bert"), want, rtol=1e-5, atol=1e-5)
    set_module_active(host.model, False)
    assert not torch.allclose(forward(host.model, "bert"), want, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("technique", REAL)
def test_minilm_into_tuned_loads_every_tensor(technique):
    _, tensors, meta = trained("bert", technique, config={}, host=load_host("minilm-l6"))
    host = load_host("minilm-l6-tuned")
    assert host.fingerprint != meta["origin_fingerprint"]
    att = attach(host.model, "bert", technique, seed=5)
    spec = ReceiverSpec.from_attached(att, host.spec.id, host.fingerprint)
    state = port(tensors, meta, spec, "ported", seed=5)
    assert state.keys() == tensors.keys()
    load_module_state(host.model, state)  # strict: raises on any missing or unexpected key
    # cross-check with torch's own bookkeeping: every module key is loaded, nothing unexpected
    missing, unexpected = host.model.load_state_dict(state, strict=False)
    assert not unexpected
    assert not [k for k in missing if "peftport" in k.split(".") and k in state]
    now = module_state(host.model)
    assert all(torch.equal(now[k], tensors[k]) for k in tensors)


@pytest.mark.slow
def test_port_command_minilm_into_tuned(tmp_path):
    _, tensors, meta = trained("bert", "lora", config={}, host=load_host("minilm-l6"))
    src = save_module(tmp_path / "m", tensors, meta)
    out = tmp_path / "ported"
    result = CliRunner().invoke(
        cli(),
        ["port", str(src), "--to", "minilm-l6-tuned", "--condition", "ported", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    got, pmeta = load_module(out)
    assert pmeta["port"]["receiver_host"] == "minilm-l6-tuned"
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
