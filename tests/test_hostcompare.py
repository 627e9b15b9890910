"""Host comparison and layer maps: CKA from streamed moments equals diagnostics' CKA, a host
compared with itself is identical, the CKA map is deterministic and finds copied layers,
per-layer modules port across depths with every map (receiver layer j gets exactly origin layer
map[j]'s tensors), prompt modules port whole, every user mistake is a clear error, and the
`hosts compare` and `port --layer-map` commands work on tiny hosts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import typer
from transformers import BertConfig, BertModel
from typer.testing import CliRunner

from peftport.commands import hosts as hosts_command
from peftport.commands import port as port_command
from peftport.diagnostics import cka_matrix
from peftport.errors import PeftportError
from peftport.hostcompare import (
    LAYER_MAP_STRATEGIES,
    HostComparison,
    compare_hosts,
    host_depth,
    layer_group,
    render_comparison_png,
    sample_texts,
)
from peftport.hosts import LAYOUTS, load_host
from peftport.hosts.tiny import SPECIALS, _vocab, write_tokenizer
from peftport.layermap import LayerMap, parse_layer_map, split_layer
from peftport.module import load_module, module_meta, save_module
from peftport.porting import ReceiverSpec, port
from peftport.porting_io import choose_layer_map
from peftport.techniques import attach, load_module_state, module_state
from test_techniques import one_thread, perturb, small_config  # noqa: F401 - autouse fixture

STACK = "bert.encoder.layer"
PER_LAYER = ["lora", "adapter", "compacter", "ia3"]


# --- tiny BERT hosts of several depths ---------------------------------------------------------


def bert_host(out, layers: int, seed: int, source: BertModel | None = None):
    """A width-16 BERT checkpoint folder with the tiny tokenizer. `source`: copy its embeddings,
    pooler and first `layers` blocks (a truncated host, whose block j computes exactly what the
    source's block j does). A large init range makes blocks differ from one another (at BERT's
    0.02 the residual stream barely changes and every CKA is about 1)."""
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=len(_vocab()),
        hidden_size=16,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=128,
        initializer_range=0.3,
    )
    model = BertModel(cfg).eval()
    if source is not None:
        state = {
            k: v
            for k, v in source.state_dict().items()
            if (s := split_layer(k, ("encoder.layer",))) is None or s[1] < layers
        }
        model.load_state_dict(state)
    model.save_pretrained(out, safe_serialization=True)
    write_tokenizer(out, "bert")
    return model


def char_tokenizer(out) -> None:
    """A BERT tokenizer without the tiny vocabulary's whole words: other ids for the same text."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(v for v in _vocab() if v in SPECIALS or len(v) <= 3)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
    ).save_pretrained(out)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """deep: 6 layers; deep_b: another 6-layer host; shallow: deep's first 3 layers (truncated);
    other3: an unrelated 3-layer host; chars: deep with a character-level tokenizer."""
    root = tmp_path_factory.mktemp("hosts")
    deep = bert_host(root / "deep", 6, seed=1)
    bert_host(root / "deep_b", 6, seed=2)
    bert_host(root / "shallow", 3, seed=3, source=deep)
    bert_host(root / "other3", 3, seed=4)
    deep.save_pretrained(root / "chars", safe_serialization=True)
    char_tokenizer(root / "chars")
    return {name: str(root / name) for name in ("deep", "deep_b", "shallow", "other3", "chars")}


@pytest.fixture(scope="module")
def deep_vs_shallow(hosts):
    return compare_hosts(hosts["deep"], hosts["shallow"], texts=32, max_length=32)


# --- compare_hosts ---------------------------------------------------------------------------


def test_compare_with_itself_is_identical():
    c = compare_hosts("tiny-bert", "tiny-bert", texts=24, max_length=32)
    assert (c.origin_layers, c.receiver_layers, c.stack) == (2, 2, STACK)
    assert c.features == "tokens" and c.texts == 24 and c.corpus == "rt_plots"
    for i in range(2):
        assert c.cka[i][i] == pytest.approx(1.0, abs=1e-9)
    assert c.embedding_cka == pytest.approx(1.0, abs=1e-9)
    assert set(c.weight_distance) == {"embeddings", "layer.0", "layer.1", "other"}
    assert all(v == 0.0 for v in c.weight_distance.values())
    assert c.weight_compared > 0 and c.weight_skipped == 0
    assert c.layer_map("cka") == [0, 1] and c.distance() == pytest.approx(0.0, abs=1e-9)


def test_streamed_cka_equals_diagnostics_cka_matrix(hosts):
    """The moments CKA against diagnostics.cka_matrix on the stacked, unpadded hidden states
    (BERT's hidden_states[1:] are exactly its block outputs)."""
    c = compare_hosts(hosts["deep"], hosts["other3"], texts=20, max_length=24, seed=3)
    feats = []
    for h in (hosts["deep"], hosts["other3"]):
        host = load_host(h)
        enc = host.tokenizer(
            sample_texts("rt_plots", 20, 3),
            truncation=True,
            max_length=24,
            padding=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            hs = host.model.bert(**enc, output_hidden_states=True).hidden_states
        keep = enc["attention_mask"].bool()
        feats.append([x[keep] for x in hs])
    want = cka_matrix(*feats)
    np.testing.assert_allclose(np.asarray(c.cka_full), want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(np.asarray(c.cka), want[1:, 1:], rtol=1e-9, atol=1e-12)
    assert c.embedding_cka == pytest.approx(want[0, 0], rel=1e-9)
    assert 0.0 < c.cka[0][0] < 0.999, "unrelated hosts are not identical"


def test_cka_map_finds_the_copied_layers_and_weights_compare_where_shapes_match(deep_vs_shallow):
    c = deep_vs_shallow
    assert (c.origin_layers, c.receiver_layers) == (6, 3)
    assert len(c.cka) == 6 and all(len(r) == 3 for r in c.cka)
    for j in range(3):  # the truncated host's block j computes exactly the origin's block j
        assert c.cka[j][j] == pytest.approx(1.0, abs=1e-9)
    assert max(c.cka[i][j] for j in range(3) for i in range(6) if i != j) < 0.999
    assert c.layer_map("cka") == [0, 1, 2]
    assert c.layer_map("stride") == [1, 3, 5] and c.layer_map("first_k") == [0, 1, 2]
    assert c.distance(c.layer_map("cka")) == pytest.approx(0.0, abs=1e-9)
    assert c.distance() > 0.001  # stride pairs unlike layers
    # layers 0-2 and embeddings are the same tensors; layers 3-5 exist only on the origin
    assert c.weight_distance == {
        "embeddings": 0.0,
        "layer.0": 0.0,
        "layer.1": 0.0,
        "layer.2": 0.0,
        "other": 0.0,
    }
    assert c.weight_skipped == 3 * 16  # 16 tensors per BERT layer, 3 layers only in the origin


def test_cka_map_is_deterministic(hosts, deep_vs_shallow):
    a = compare_hosts(hosts["deep"], hosts["other3"], texts=32, max_length=32, seed=0)
    b = compare_hosts(hosts["deep"], hosts["other3"], texts=32, max_length=32, seed=0)
    assert a == b and a.to_dict() == b.to_dict()
    assert a.layer_map("cka") == b.layer_map("cka")
    assert HostComparison.from_dict(json.loads(json.dumps(a.to_dict()))).layer_map(
        "cka"
    ) == a.layer_map("cka")
    # another seed: another sample, so other numbers, but still one map per sample
    c = compare_hosts(hosts["deep"], hosts["other3"], texts=32, max_length=32, seed=1)
    d = compare_hosts(hosts["deep"], hosts["other3"], texts=32, max_length=32, seed=1)
    assert sample_texts("rt_plots", 32, 0) != sample_texts("rt_plots", 32, 1)
    assert c.cka != a.cka and c.seed == 1
    assert c.layer_map("cka") == d.layer_map("cka")
    assert all(0 <= o < 6 for o in c.layer_map("cka"))


def test_different_tokenisers_give_mean_pooled_features(hosts):
    c = compare_hosts(hosts["deep"], hosts["chars"], texts=16, max_length=32)
    assert c.features == "mean-pooled"
    assert all(v == 0.0 for v in c.weight_distance.values()), "same weights"
    assert c.cka[5][5] < 0.9999, "other tokens, other hidden states"
    same = compare_hosts(hosts["deep"], hosts["deep"], texts=16, max_length=32)
    assert same.features == "tokens"


def test_compare_other_families_t5_and_decoders():
    t5 = compare_hosts("tiny-t5", "tiny-t5", texts=8, max_length=16)
    assert t5.stack == "encoder.block" and t5.origin_layers == 2
    assert {"decoder.block.0", "decoder.block.1", "layer.0", "embeddings"} <= set(
        t5.weight_distance
    )
    for fam in ("gpt2", "llama"):
        c = compare_hosts(f"tiny-{fam}", f"tiny-{fam}", texts=8, max_length=16)
        assert c.stack == LAYOUTS[fam].layer_stacks[0]
        assert c.cka[1][1] == pytest.approx(1.0, abs=1e-9)


def test_compare_errors():
    with pytest.raises(PeftportError, match="different families"):
        compare_hosts("tiny-bert", "tiny-gpt2", texts=8)
    with pytest.raises(PeftportError, match="texts must be an integer >= 2"):
        compare_hosts("tiny-bert", "tiny-bert", texts=1)
    with pytest.raises(PeftportError, match="max_length"):
        compare_hosts("tiny-bert", "tiny-bert", max_length=0)
    with pytest.raises(PeftportError, match="rt_plot"):
        compare_hosts("tiny-bert", "tiny-bert", corpus="rt_plot")


# --- layer maps -------------------------------------------------------------------------------


def resolve_layer_map(value, n_origin, n_receiver, comparison=None) -> list[int]:
    return list(parse_layer_map(value).resolve(n_origin, n_receiver, comparison))


def test_layer_maps_from_a_comparison(deep_vs_shallow):
    """The strategy table and the errors are in test_layermap; here: cka from a real
    comparison, by the comparison or by its matrix, and the strategies it names."""
    assert resolve_layer_map("cka", 6, 3, deep_vs_shallow) == [0, 1, 2]
    assert resolve_layer_map("cka", 6, 3, deep_vs_shallow.cka) == [0, 1, 2]
    assert deep_vs_shallow.layer_map("Stride") == [1, 3, 5]
    assert LAYER_MAP_STRATEGIES == ("identity", "first_k", "stride", "cka")


def test_cka_map_needs_a_comparison_of_these_depths(deep_vs_shallow):
    with pytest.raises(
        PeftportError,
        match=r"\(6 layers\) .* \(3 layers\), but the layer map "
        r"is wanted for 6 -> 2",
    ):
        resolve_layer_map("cka", 6, 2, deep_vs_shallow)
    with pytest.raises(PeftportError, match="identity gives receiver layer i origin layer i"):
        deep_vs_shallow.layer_map("identity")


def test_comparison_round_trip_distance_and_validation(deep_vs_shallow):
    c = deep_vs_shallow
    d = c.to_dict()
    assert HostComparison.from_dict(json.loads(json.dumps(d))) == c
    assert c.distance([0, 1, 2]) == pytest.approx(1 - np.mean([c.cka[j][j] for j in range(3)]))
    with pytest.raises(PeftportError, match="3 layers"):
        c.distance([0, 1])
    # NaN (a constant layer) survives strict JSON as a string
    nan = HostComparison(
        origin="a",
        receiver="b",
        origin_layers=2,
        receiver_layers=2,
        stack=STACK,
        cka=((math.nan, 0.5), (0.3, 0.2)),
        embedding_cka=0.9,
        weight_distance={"layer.0": math.inf},
        features="tokens",
        corpus="rt_plots",
        texts=4,
        max_length=8,
        seed=0,
    )
    text = json.dumps(nan.to_dict(), allow_nan=False)
    back = HostComparison.from_dict(json.loads(text))
    assert math.isnan(back.cka[0][0]) and back.weight_distance["layer.0"] == math.inf
    assert back.layer_map("cka") == [1, 0], "NaN is never chosen"
    with pytest.raises(PeftportError, match=r"receiver layer\(s\) \[0\] have no finite CKA"):
        HostComparison(**{**nan.to_dict(), "origin_layers": 1, "cka": [[math.nan, 0.5]]}).layer_map(
            "cka"
        )
    with pytest.raises(PeftportError, match="cka must be 2 x 2"):
        HostComparison(**{**d, "origin_layers": 2, "receiver_layers": 2})
    with pytest.raises(PeftportError, match="features must be one of"):
        HostComparison(**{**d, "features": "pooled"})
    with pytest.raises(PeftportError, match=r"missing fields \['seed'\]"):
        HostComparison.from_dict({k: v for k, v in d.items() if k != "seed"})
    with pytest.raises(PeftportError, match=r"cka\[0\]\[1\] must be a number"):
        HostComparison.from_dict({**d, "cka": [[1.0, "x", 0.0]] + d["cka"][1:]})


def test_host_depth(hosts):
    assert host_depth("tiny-bert") == 2
    assert host_depth(hosts["deep"]) == 6 and host_depth(hosts["shallow"]) == 3
    loaded = load_host(hosts["other3"])
    assert host_depth(loaded) == 3 and host_depth(loaded.model) == 3
    assert host_depth("tiny-t5") == 2  # the encoder
    with pytest.raises(PeftportError, match="expected a host id"):
        host_depth(3)


def test_layer_group():
    bert, t5 = LAYOUTS["bert"], LAYOUTS["t5"]
    assert layer_group("bert.encoder.layer.4.output.dense.weight", bert) == "layer.4"
    assert layer_group("bert.embeddings.word_embeddings.weight", bert) == "embeddings"
    assert layer_group("bert.pooler.dense.weight", bert) == "other"
    assert layer_group("encoder.block.1.layer.0.SelfAttention.q.weight", t5) == "layer.1"
    assert layer_group("decoder.block.0.layer.0.SelfAttention.q.weight", t5) == "decoder.block.0"
    assert layer_group("encoder.embed_tokens.weight", t5) == "embeddings"
    assert layer_group("transformer.wpe.weight", LAYOUTS["gpt2"]) == "embeddings"


# --- porting across depths -------------------------------------------------------------------


def trained_on(path: str, technique: str):
    host = load_host(path)
    att = attach(host.model, "bert", technique, small_config(technique), seed=0)
    perturb(host.model, seed=1)  # every layer's tensors now differ from every other's
    meta = module_meta(att, host, task="sst2", label_words=["negative", "positive"], steps=10)
    return module_state(host.model), meta


def receiver_on(path: str, technique: str):
    host = load_host(path)
    att = attach(host.model, "bert", technique, small_config(technique), seed=5)
    return host.model, ReceiverSpec.from_attached(att, host.spec.id, host.fingerprint)


def assert_layers_taken(out: dict, tensors: dict, layer_map: list[int]) -> None:
    """Receiver layer j holds exactly origin layer layer_map[j]'s tensors; everything outside
    the layer stack (head, Compacter's shared rules) is as trained."""
    got: dict[int, int] = {}
    for key, t in out.items():
        split = split_layer(key, (STACK,))
        if split is None:
            assert torch.equal(t, tensors[key]), key
            continue
        _, j, rest = split
        src = f"{STACK}.{layer_map[j]}.{rest}"
        assert torch.equal(t, tensors[src]), f"{key} <- {src}"
        if any(
            f"{STACK}.{i}.{rest}" in tensors and not torch.equal(tensors[f"{STACK}.{i}.{rest}"], t)
            for i in range(6)
        ):
            got[j] = got.get(j, 0) + 1  # told apart from at least one other origin layer
    assert sorted(got) == list(range(len(layer_map))), "every receiver layer checked"


@pytest.mark.parametrize("technique", PER_LAYER)
@pytest.mark.parametrize("how", ["first_k", "stride", "cka", "explicit"])
def test_port_six_to_three_layers(hosts, deep_vs_shallow, technique, how):
    tensors, meta = trained_on(hosts["deep"], technique)
    model, spec = receiver_on(hosts["shallow"], technique)
    text = {"explicit": "0:5,1:0,2:3"}.get(how, how)
    layer_map = resolve_layer_map(text, 6, 3, deep_vs_shallow)
    assert (
        layer_map
        == {"first_k": [0, 1, 2], "stride": [1, 3, 5], "cka": [0, 1, 2], "explicit": [5, 0, 3]}[how]
    )
    out = port(tensors, meta, spec, "ported", seed=5, layer_map=layer_map)
    assert_layers_taken(out, tensors, layer_map)
    load_module_state(model, out)  # strict: every receiver tensor, nothing else


@pytest.mark.parametrize("technique", PER_LAYER)
def test_port_identity_on_equal_depths_and_stride_into_a_deeper_receiver(hosts, technique):
    tensors, meta = trained_on(hosts["deep"], technique)
    model, spec = receiver_on(hosts["deep_b"], technique)
    layer_map = resolve_layer_map("identity", 6, 6)
    assert_layers_taken(port(tensors, meta, spec, "ported", 5, layer_map), tensors, layer_map)

    tensors, meta = trained_on(hosts["other3"], technique)
    model, spec = receiver_on(hosts["deep_b"], technique)
    layer_map = resolve_layer_map("stride", 3, 6)
    assert layer_map == [0, 0, 1, 1, 2, 2]
    out = port(tensors, meta, spec, "ported", seed=5, layer_map=layer_map)
    load_module_state(model, out)
    for j in range(6):  # the repeats are copies of one origin layer
        for key in (k for k in out if k.startswith(f"{STACK}.{j}.")):
            rest = key[len(f"{STACK}.{j}.") :]
            assert torch.equal(out[key], tensors[f"{STACK}.{j // 2}.{rest}"])


def test_prompt_ports_whole_across_depths(hosts):
    tensors, meta = trained_on(hosts["deep"], "prompt")
    assert not any(split_layer(k, (STACK,)) for k in tensors), "no per-layer tensors"
    model, spec = receiver_on(hosts["other3"], "prompt")
    out = port(tensors, meta, spec, "ported", seed=5)
    assert out.keys() == tensors.keys()
    assert all(torch.equal(out[k], tensors[k]) for k in tensors)
    load_module_state(model, out)


def test_choose_layer_map_per_stack_for_t5():
    """T5's stacks can differ in depth: strategies resolve per stack; unequal maps are recorded
    per stack."""
    stacks = LAYOUTS["t5"].layer_stacks
    meta = {"technique": "lora", "host_dims": {"layers": {"encoder.block": 4, "decoder.block": 2}}}
    tensors = {
        f"{s}.{i}.layer.0.SelfAttention.q.loras.peftport.lora_A": torch.zeros(1)
        for s in stacks
        for i in range(2)
    }
    lmap, info = choose_layer_map(
        LayerMap("stride"), meta, tensors, "r", {"encoder.block": 2, "decoder.block": 2}, stacks
    )
    assert lmap == {"encoder.block": {0: 1, 1: 3}, "decoder.block": {0: 0, 1: 1}}
    assert info["layer_map"] == {
        "encoder.block": {"0": 1, "1": 3},
        "decoder.block": {"0": 0, "1": 1},
    }
    with pytest.raises(PeftportError, match=r"r \(encoder.block\) ports 4 origin layers into 2"):
        choose_layer_map(
            LayerMap("identity"),
            meta,
            tensors,
            "r",
            {"encoder.block": 2, "decoder.block": 2},
            stacks,
        )
    assert choose_layer_map(None, meta, tensors, "r", {}, stacks) == (
        None,
        {"layer_map": None},
    )


# --- the commands ----------------------------------------------------------------------------


def cli() -> typer.Typer:
    app = typer.Typer()
    hosts_command.register(app)
    port_command.register(app)
    return app


def test_hosts_compare_json_and_plot(hosts, tmp_path):
    png = tmp_path / "figs" / "cmp.png"
    result = CliRunner().invoke(
        cli(),
        [
            "hosts",
            "compare",
            hosts["deep"],
            hosts["shallow"],
            "--texts",
            "16",
            "--max-length",
            "24",
            "--seed",
            "2",
            "--json",
            "--plot",
            str(png),
        ],
    )
    assert result.exit_code == 0, result.output
    c = HostComparison.from_dict(json.loads(result.stdout))
    assert (c.origin_layers, c.receiver_layers, c.texts, c.seed) == (6, 3, 16, 2)
    assert c.layer_map("cka") == [0, 1, 2]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["cmp.png"], "no temporary file left"
    assert render_comparison_png(c)[:4] == b"\x89PNG"


def test_hosts_compare_table(hosts):
    result = CliRunner().invoke(
        cli(),
        ["hosts", "compare", hosts["other3"], hosts["deep"], "--texts", "12", "--max-length", "16"],
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "weight distance" in out and "linear CKA" in out and "layer maps" in out
    assert "stride" in out and "0<-0 1<-0 2<-1 3<-1 4<-2 5<-2" in out
    assert "identity" not in out and "first_k" not in out, "invalid for a deeper receiver"
    assert "summary distance (stride map)" in out


def test_hosts_compare_errors(tmp_path):
    result = CliRunner().invoke(
        cli(), ["hosts", "compare", "tiny-bert", "tiny-bert", "--plot", str(tmp_path / "x.jpg")]
    )
    assert isinstance(result.exception, PeftportError) and "*.png" in str(result.exception)
    result = CliRunner().invoke(cli(), ["hosts", "compare", "tiny-bert", "tiny-t5"])
    assert isinstance(result.exception, PeftportError)
    assert "different families" in str(result.exception)
    assert not list(tmp_path.iterdir())


def saved_on(tmp_path, path: str, technique: str):
    tensors, meta = trained_on(path, technique)
    return save_module(tmp_path / f"module-{technique}", tensors, meta), tensors


def test_port_command_layer_map_stride_across_depths(hosts, tmp_path):
    src, tensors = saved_on(tmp_path, hosts["deep"], "lora")
    out = tmp_path / "ported"
    result = CliRunner().invoke(
        cli(),
        ["port", str(src), "--to", hosts["shallow"], "--out", str(out), "--layer-map", "stride"],
    )
    assert result.exit_code == 0, result.output
    assert "layer map (stride, receiver <- origin): 0<-1 1<-3 2<-5" in result.output
    got, meta = load_module(out)
    assert meta["port"]["layer_map"] == {"0": 1, "1": 3, "2": 5}
    assert meta["port"]["layer_map_strategy"] == "stride"
    assert_layers_taken(got, tensors, [1, 3, 5])
    # a strategy that does not fit the depths writes nothing
    never = tmp_path / "never"
    result = CliRunner().invoke(
        cli(),
        [
            "port",
            str(src),
            "--to",
            hosts["shallow"],
            "--out",
            str(never),
            "--layer-map",
            "identity",
        ],
    )
    assert isinstance(result.exception, PeftportError)
    assert "(bert.encoder.layer) ports 6 origin layers into 3 receiver layers" in str(
        result.exception
    )
    assert not never.exists()


def test_port_command_layer_map_cka(hosts, tmp_path):
    src, tensors = saved_on(tmp_path, hosts["deep"], "adapter")
    out = tmp_path / "ported"
    result = CliRunner().invoke(
        cli(), ["port", str(src), "--to", hosts["shallow"], "--out", str(out), "--layer-map", "cka"]
    )
    assert result.exit_code == 0, result.output
    assert "layer map (cka, receiver <- origin): 0<-0 1<-1 2<-2" in result.output
    got, meta = load_module(out)
    assert meta["port"]["layer_map"] == {"0": 0, "1": 1, "2": 2}
    cmp = meta["port"]["layer_map_comparison"]
    assert cmp["texts"] == 256 and cmp["corpus"] == "rt_plots" and cmp["features"] == "tokens"
    assert cmp["distance"] == pytest.approx(0.0, abs=1e-9)
    assert_layers_taken(got, tensors, [0, 1, 2])


def test_port_command_prompt_ignores_the_layer_map(hosts, tmp_path):
    src, tensors = saved_on(tmp_path, hosts["deep"], "prompt")
    out = tmp_path / "ported"
    result = CliRunner().invoke(
        cli(),
        ["port", str(src), "--to", hosts["other3"], "--out", str(out), "--layer-map", "first_k"],
    )
    assert result.exit_code == 0, result.output
    assert "no per-layer tensors: ported whole, layer map not used" in result.output
    got, meta = load_module(out)
    assert meta["port"]["layer_map"] is None and meta["port"]["layer_map_strategy"] == "first_k"
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)


# --- real hosts --------------------------------------------------------------------------------


@pytest.mark.slow
def test_minilm_l6_vs_l3():
    torch.set_num_threads(2)
    c = compare_hosts("minilm-l6", "minilm-l3", texts=64)
    assert (c.origin_layers, c.receiver_layers, c.stack) == (6, 3, STACK)
    assert c.features == "tokens", "minilm-l3 uses minilm-l6's tokenizer"
    assert c.embedding_cka > 0.8, "the embeddings are related"
    assert len(c.cka) == 6 and all(len(r) == 3 for r in c.cka)
    assert all(0.0 <= v <= 1.0 for r in c.cka for v in r)
    m = c.layer_map("cka")
    assert len(m) == 3 and all(0 <= o < 6 for o in m)
    assert resolve_layer_map(m, 6, 3) == m
    # same widths: embeddings and layers 0-2 compare; layers 3-5 exist only on minilm-l6
    assert {"embeddings", "layer.0", "layer.1", "layer.2"} <= set(c.weight_distance)
    assert "layer.3" not in c.weight_distance and c.weight_skipped >= 3 * 16
    assert c.weight_distance["layer.0"] > 0.5, "unrelated encoder layers"
