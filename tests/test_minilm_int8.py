"""minilm-l6-int8: all-MiniLM-L6-v2's int8 ONNX copy, dequantized into a BertModel checkpoint.

Fast tests check the dequantization on hand-made quantized graphs (ONNX's reference evaluator is
the ground truth). Slow tests use the real archive (fetched once with pip into $PEFTPORT_HOME):
the converted model must reproduce onnxruntime running the int8 graph, and its weights must be
minilm-l6's up to the quantization error (at most half a quantization step per entry).
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from peftport.errors import PeftportError  # noqa: E402
from peftport.hosts.onnx_int8 import dequantize, fold_quantized_weights  # noqa: E402

SENTENCES = [
    "A man is playing a guitar.",
    "The quick brown fox jumps over the lazy dog near the riverbank this morning.",
    "hi",
    "Parameter-efficient modules, ported between hosts: does what they learned carry over?",
]
ATOL = 1e-4  # measured: 3.2e-5 at padded positions, 2.9e-6 at real tokens


# ---------------------------------------------------------------------------------------------
# Fast: hand-made quantized initializers

Q = np.array([[-127, 0, 5], [3, -2, 127]], dtype=np.int8)  # (in 2, out 3) as MatMul's B
COL_SCALE = np.array([[0.5, 0.25, 2.0]], dtype=np.float32)  # per output column


def test_dequantize_by_hand() -> None:
    want = np.array([[-63.5, 0.0, 10.0], [1.5, -0.5, 254.0]], dtype=np.float32)
    got = dequantize(Q, COL_SCALE)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want)
    # A per-tensor scale and an asymmetric uint8 zero point, along an axis (DequantizeLinear).
    u = np.array([[0, 128, 255], [10, 128, 130]], dtype=np.uint8)
    zp = np.array([128, 120], dtype=np.uint8)
    got = dequantize(u, np.array([0.1, 1.0], np.float32), zp, axis=0)
    want = np.array([[-12.8, 0.0, 12.7], [-110.0, 8.0, 10.0]], dtype=np.float32)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # uint8 - zero point must not wrap around (0 - 128 is -128, not 128).
    assert dequantize(np.array([0, 1], np.uint8), np.float32(1.0), np.uint8(128))[0] == -128.0


def test_dequantize_refuses_bad_inputs() -> None:
    with pytest.raises(PeftportError, match="not an integer type"):
        dequantize(Q.astype(np.float32), COL_SCALE)
    with pytest.raises(PeftportError, match="does not broadcast"):
        dequantize(Q, np.ones((1, 4), np.float32))
    with pytest.raises(PeftportError, match="2 scales for axis 1"):
        dequantize(Q, np.ones(2, np.float32), axis=1)


def _graph(nodes, inits, out_shape=(1, 3)):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [numpy_helper.from_array(v, k) for k, v in inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    onnx.checker.check_model(model)
    return model


def _run(model, x):
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, {"x": x})[0]


def _cast_mul_graph():
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["w_q"], ["w_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["w_f", "w_scale"], ["w"]),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    return _graph(nodes, {"w_q": Q, "w_scale": COL_SCALE})


def test_fold_cast_mul_matches_the_graph() -> None:
    """The exporter's pattern: Cast(int8) * per-column scale, feeding a MatMul."""
    model = _cast_mul_graph()
    x = np.array([[1.0, -2.0]], np.float32)
    before = _run(model, x)
    folded = fold_quantized_weights(model)
    assert [(f.name, f.quantized, f.ops, f.scales, f.zero_point) for f in folded] == [
        ("w", "w_q", "Cast+Mul", 3, False)
    ]
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    assert {t.name for t in model.graph.initializer} == {"w"}  # q and scale are gone
    from onnx import numpy_helper

    w = numpy_helper.to_array(model.graph.initializer[0])
    np.testing.assert_array_equal(w, Q.astype(np.float32) * COL_SCALE)
    np.testing.assert_array_equal(_run(model, x), before)


def test_fold_dequantize_linear_with_zero_point() -> None:
    from onnx import helper

    u = np.array([[0, 128, 255], [10, 128, 130]], dtype=np.uint8)
    scale = np.array([0.5, 0.25, 2.0], np.float32)
    zp = np.array([128, 100, 0], np.uint8)
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=1),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    model = _graph(nodes, {"w_q": u, "w_s": scale, "w_z": zp})
    x = np.array([[0.5, 3.0]], np.float32)
    before = _run(model, x)
    folded = fold_quantized_weights(model)
    assert [(f.ops, f.zero_point, f.dtype) for f in folded] == [("DequantizeLinear", True, "uint8")]
    assert [n.op_type for n in model.graph.node] == ["MatMul"]
    np.testing.assert_allclose(_run(model, x), before, rtol=1e-6)


def test_fold_refuses_integer_compute_and_strays() -> None:
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["x_q", "x_s", "x_z"]),
        helper.make_node("MatMulInteger", ["x_q", "w_q", "x_z"], ["y_i"]),
        helper.make_node("Cast", ["y_i"], ["y_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["y_f", "x_s"], ["y"]),
    ]
    model = _graph(nodes, {"w_q": Q})
    with pytest.raises(PeftportError, match="DynamicQuantizeLinear, MatMulInteger"):
        fold_quantized_weights(model)
    # An int8 weight cast to float and used as is: no scale, not a dequantization we know.
    nodes = [
        helper.make_node("Cast", ["w_q"], ["w"], to=TensorProto.FLOAT),
        helper.make_node("MatMul", ["x", "w"], ["y"]),
    ]
    with pytest.raises(PeftportError, match="not then multiplied by a constant scale"):
        fold_quantized_weights(_graph(nodes, {"w_q": Q}))


def test_convert_refuses_a_float_graph(tmp_path) -> None:
    import onnx
    from onnx import helper

    from peftport.hosts.onnx_int8 import convert_onnx_int8_bert

    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"])]
    path = tmp_path / "float.onnx"
    onnx.save(_graph(nodes, {"w": COL_SCALE.repeat(2, 0)}), str(path))
    with pytest.raises(PeftportError, match="no quantized weights found"):
        convert_onnx_int8_bert(path, tmp_path, tmp_path / "out")


def test_minilm_l6_int8_is_registered() -> None:
    from peftport.hosts import HOSTS, MINILM_INT8_WHEEL

    spec = HOSTS.get("minilm-l6-int8")
    assert spec.family == "bert" and spec.parent == "minilm-l6"
    assert MINILM_INT8_WHEEL.sha256 == (
        "ec69288383455a95c45a341d4e2f243333a4016b83b55a87fcfab235ae5e4f2e"
    )
    assert MINILM_INT8_WHEEL.size == 20_960_402


# ---------------------------------------------------------------------------------------------
# Slow: the real archive


@pytest.fixture(scope="module")
def onnx_path():
    from peftport.hosts import MINILM_INT8_MEMBER

    return MINILM_INT8_MEMBER.resolve()


@pytest.fixture(scope="module")
def l6_folder():
    from peftport.hosts import HOSTS, host_folder

    return host_folder(HOSTS.get("minilm-l6"))


@pytest.fixture(scope="module")
def converted(onnx_path, l6_folder, tmp_path_factory):
    """A fresh conversion (not the cached host), so the test always checks the current code."""
    from peftport.hosts.onnx_int8 import convert_onnx_int8_bert

    out = tmp_path_factory.mktemp("minilm-l6-int8") / "host"
    folded = convert_onnx_int8_bert(onnx_path, l6_folder, out, pooler_from=l6_folder)
    return out, folded


def _state(folder):
    from transformers import BertModel

    return {
        k: v.numpy()
        for k, v in BertModel.from_pretrained(folder, use_safetensors=True).state_dict().items()
    }


@pytest.mark.slow
def test_matches_onnxruntime_on_the_int8_graph(onnx_path, converted, l6_folder):
    import onnxruntime as ort
    import torch
    from transformers import AutoTokenizer, BertModel

    folder, folded = converted
    assert len(folded) == 38  # word + position tables, 6 x 6 linear weights
    assert {f.ops for f in folded} == {"Cast+Mul"} and not any(f.zero_point for f in folded)
    tok = AutoTokenizer.from_pretrained(folder)
    enc = tok(SENTENCES, padding=True, return_tensors="np")
    feeds = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    want = sess.run(["last_hidden_state"], feeds)[0]
    torch_feeds = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with torch.no_grad():
        got = (
            BertModel.from_pretrained(folder, use_safetensors=True)
            .eval()(**torch_feeds)
            .last_hidden_state.numpy()
        )
        ref = (
            BertModel.from_pretrained(l6_folder, use_safetensors=True)
            .eval()(**torch_feeds)
            .last_hidden_state.numpy()
        )
    mask = feeds["attention_mask"][..., None].astype(bool)
    print(
        f"max |onnxruntime - BertModel| = {np.abs(want - got).max():.3g} "
        f"(real tokens {np.abs(np.where(mask, want - got, 0)).max():.3g})"
    )
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

    # Against minilm-l6 in float: the quantization error, visible but small.
    def embed(h):
        m = mask.astype(np.float32)
        e = (h * m).sum(1) / m.sum(1)
        return e / np.linalg.norm(e, axis=1, keepdims=True)

    cos = (embed(got) * embed(ref)).sum(1)
    print("sentence-embedding cosine, int8 vs minilm-l6:", np.round(cos, 4))
    assert np.abs(got - ref).max() > 10 * ATOL  # really the quantized weights, not minilm-l6's
    assert cos.min() > 0.99


@pytest.mark.slow
def test_weights_are_minilm_l6_up_to_quantization(converted, l6_folder):
    folder, folded = converted
    a, b = _state(l6_folder), _state(folder)
    assert a.keys() == b.keys()
    groups: dict[str, list[float]] = {}
    for k in a:
        assert a[k].shape == b[k].shape, k
        if k.startswith("pooler."):
            np.testing.assert_array_equal(b[k], a[k])  # copied: not in the graph
            continue
        group = "embeddings" if k.startswith("embeddings.") else "layer." + k.split(".")[2]
        acc = groups.setdefault(group, [0.0, 0.0])  # sum of squared differences, of squares
        acc[0] += float(((b[k].astype(np.float64) - a[k]) ** 2).sum())
        acc[1] += float((a[k].astype(np.float64) ** 2).sum())
        if a[k].ndim == 1 or k.endswith("token_type_embeddings.weight"):
            # Biases, layer norms and the 2-row token-type table stayed float32 in the graph.
            np.testing.assert_array_equal(b[k], a[k], err_msg=k)
            continue
        # Symmetric per-row int8 (rows of nn.Linear = output columns of the ONNX MatMul; rows of
        # the embedding tables): the step is max|row| / 127, and rounding moves an entry by at
        # most half a step. A transposed or misapplied scale breaks this bound.
        step = np.abs(b[k]).max(axis=1, keepdims=True) / 127.0
        err = np.abs(b[k] - a[k])
        assert (err <= step / 2 * (1 + 1e-3) + 1e-8).all(), k
        assert err.max() > 0, k
    dist = {g: (n / d) ** 0.5 for g, (n, d) in groups.items()}
    print("relative Frobenius distance to minilm-l6:", {g: round(v, 4) for g, v in dist.items()})
    assert set(dist) == {"embeddings"} | {f"layer.{i}" for i in range(6)}
    for g, v in dist.items():
        assert 1e-3 < v < 0.02, (g, v)  # measured 0.0073 (embeddings), 0.008-0.011 (layers)


@pytest.mark.slow
def test_load_host_minilm_l6_int8(l6_folder):
    import json

    from transformers import AutoTokenizer

    from peftport.hosts import load_host

    host = load_host("minilm-l6-int8")
    assert host.spec.family == "bert"
    cfg = json.loads((host.folder / "config.json").read_text())
    l6 = json.loads((l6_folder / "config.json").read_text())
    for key in (
        "vocab_size",
        "hidden_size",
        "num_hidden_layers",
        "num_attention_heads",
        "intermediate_size",
        "max_position_embeddings",
        "type_vocab_size",
        "layer_norm_eps",
        "hidden_act",
        "pad_token_id",
    ):
        assert cfg[key] == l6[key], key
    l6_tok = AutoTokenizer.from_pretrained(l6_folder)
    assert host.tokenizer.get_vocab() == l6_tok.get_vocab()
    assert (host.folder / "vocab.txt").read_bytes() == (l6_folder / "vocab.txt").read_bytes()
