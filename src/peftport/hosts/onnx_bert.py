"""Convert an ONNX export of a BERT encoder into a Hugging Face `BertModel` checkpoint folder.

The ONNX initializers are the weights. Exporters keep some of their PyTorch names
(`...encoder.layer.0.attention.self.query.bias`) and fold others into anonymous constants
(`onnx::MatMul_470`, already transposed to (in, out)), so every tensor is found by walking the
graph, never by its name alone:

- embeddings: the `Gather` nodes that index a 2-D weight (word: indexed by `input_ids`;
  token type: by `token_type_ids`, else the smaller table; position: the other one);
- linear layers: `MatMul` (or `Gemm`) with a 2-D weight, plus the `Add` of a 1-D bias. In
  topological order a BERT layer is always q/k/v (in some order), attention output, intermediate,
  output; q, k and v are told apart by where they flow (q and k meet in the attention-score
  `MatMul`, q on the left; v is the right operand of the context `MatMul`);
- layer norms: `LayerNormalization` nodes (or the `Mul` weight / `Add` bias tail of a decomposed
  one), in order: embeddings, then per layer attention output and output.

Where an initializer or a node keeps a PyTorch name, it must agree with the graph walk. Every
`BertModel` parameter must get a tensor of the right shape and every weight in the graph must be
used; otherwise a `PeftportError` names what is missing or left over.

The config comes from the tensors' shapes (vocabulary, width, depth, FFN size, positions, token
types), the number of heads from the attention `Reshape` targets, layer-norm epsilon and the
activation from the graph, and the rest from BERT's defaults (the same as all-MiniLM-L6-v2's
config.json).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from peftport.errors import PeftportError

__all__ = ["convert_onnx_bert", "read_onnx_bert"]

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
_DEFAULT_HEADS = 12  # BERT-base and the MiniLM family; used only if the graph does not say

# Roles of the six linear layers of one BERT layer, as BertModel module paths.
_Q, _K, _V = "attention.self.query", "attention.self.key", "attention.self.value"
_O, _UP, _DOWN = "attention.output.dense", "intermediate.dense", "output.dense"

# A BertModel parameter name inside an initializer name (which may carry a prefix such as
# sentence-transformers' "model.0.auto_model." or "bert.").
_PARAM_IN_NAME = re.compile(
    r"(?:^|\.)((?:embeddings\.(?:word_embeddings|position_embeddings|token_type_embeddings|LayerNorm)"
    r"|encoder\.layer\.\d+\.(?:attention\.self\.(?:query|key|value)|attention\.output\.dense"
    r"|attention\.output\.LayerNorm|intermediate\.dense|output\.dense|output\.LayerNorm)"
    r"|pooler\.dense)\.(?:weight|bias))$"
)
# A linear module path inside a node name ("/encoder/layer.0/attention/self/query/MatMul").
_LINEAR_IN_NODE = re.compile(
    r"(?:^|\.)(encoder\.layer\.\d+\.(?:attention\.self\.(?:query|key|value)"
    r"|attention\.output\.dense|intermediate\.dense|output\.dense)|pooler\.dense)\.(?:MatMul|Gemm)"
)
_PASS_THROUGH = {"Reshape", "Transpose", "Mul", "Div", "Cast", "Identity", "Squeeze", "Unsqueeze"}


@dataclass
class _Linear:
    node_index: int
    node_name: str
    weight: str  # initializer name
    weight_array: np.ndarray  # nn.Linear layout: (out, in)
    bias: str | None
    bias_array: np.ndarray | None
    input: str  # the activation it reads
    output: str  # its output after the bias

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight_array.shape)  # type: ignore[return-value]


@dataclass
class OnnxBert:
    """What the graph walk found: BertModel parameter name -> (array, initializer name)."""

    tensors: dict[str, tuple[np.ndarray, str]] = field(default_factory=dict)
    config: dict[str, object] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)  # graph weights no parameter took
    notes: list[str] = field(default_factory=list)


class _Graph:
    def __init__(self, model) -> None:  # model: onnx.ModelProto
        from onnx import numpy_helper

        g = model.graph
        self.inputs = [i.name for i in g.input]
        self.consts: dict[str, np.ndarray] = {}
        for t in g.initializer:
            self.consts[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
                self.consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
        # Weights: float tensors with more than one element (scalars are the graph's own constants).
        self.weights = {
            k: v
            for k, v in self.consts.items()
            if np.issubdtype(v.dtype, np.floating) and v.ndim >= 1 and v.size > 1
        }
        self.nodes = _topological(list(g.node), set(self.consts) | set(self.inputs))
        self.index = {id(n): i for i, n in enumerate(self.nodes)}
        self.producer = {o: n for n in self.nodes for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.nodes:
            for name in n.input:
                self.consumers.setdefault(name, []).append(n)

    def is_const(self, name: str) -> bool:
        return name in self.consts

    def users(self, name: str) -> list:
        return self.consumers.get(name, [])


def _topological(nodes: list, available: set[str]) -> list:
    """Nodes in a topological order, keeping the file's order where it already is one."""
    produced = {o for n in nodes for o in n.output}
    ready = set(available) | {""}
    out, pending = [], list(nodes)
    while pending:
        rest = []
        for n in pending:
            if all(i in ready or i not in produced for i in n.input):
                out.append(n)
                ready.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise PeftportError(f"the ONNX graph has a cycle around node {rest[0].name!r}")
        pending = rest
    return out


def _attr(node, name: str, default=None):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


# ---------------------------------------------------------------------------------------------
# Finding the pieces


def _linear_weight(g: _Graph, node) -> tuple[str, np.ndarray] | None:
    """The initializer behind a MatMul/Gemm's B input, in nn.Linear's (out, in) layout."""
    if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
        return None
    src, flipped = node.input[1], False
    if src not in g.weights and src in g.producer:
        p = g.producer[src]
        if p.op_type == "Transpose" and list(_attr(p, "perm", [1, 0])) == [1, 0]:
            src, flipped = p.input[0], True
    if src not in g.weights or g.weights[src].ndim != 2:
        return None
    w = g.weights[src]
    # The matrix the node multiplies by, x @ M, has M in (in, out); nn.Linear stores M.T.
    # MatMul: M = B; Gemm: M = B, or B.T with transB=1; a Transpose node in between flips again.
    b_is_m = not (node.op_type == "Gemm" and _attr(node, "transB", 0))
    if flipped:
        b_is_m = not b_is_m  # B = W.T
    return src, (w.T if b_is_m else w)


def _find_linears(g: _Graph) -> list[_Linear]:
    out = []
    for i, n in enumerate(g.nodes):
        found = _linear_weight(g, n)
        if found is None:
            continue
        if n.op_type == "Gemm" and _attr(n, "transA", 0):
            raise PeftportError(f"ONNX node {n.name!r}: Gemm with transA=1 is not a linear layer")
        name, w = found
        bias = bias_arr = None
        result = n.output[0]
        if n.op_type == "Gemm" and len(n.input) > 2 and n.input[2]:
            bias = n.input[2]
        else:
            for u in g.users(n.output[0]):
                other = [x for x in u.input if x != n.output[0]]
                if (
                    u.op_type == "Add"
                    and len(other) == 1
                    and other[0] in g.weights
                    and g.weights[other[0]].ndim == 1
                ):
                    bias, result = other[0], u.output[0]
                    break
        if bias is not None:
            if bias not in g.weights:
                raise PeftportError(f"ONNX node {n.name!r}: bias {bias!r} is not a constant")
            bias_arr = g.weights[bias].reshape(-1)
        out.append(_Linear(i, n.name, name, w, bias, bias_arr, n.input[0], result))
    return out


def _layer_norms(g: _Graph) -> list[tuple[str, str, int]]:
    """(weight, bias, node index) of every layer norm, in topological order."""
    out = []
    for i, n in enumerate(g.nodes):
        if n.op_type == "LayerNormalization":
            if len(n.input) < 3 or n.input[1] not in g.weights or n.input[2] not in g.weights:
                raise PeftportError(
                    f"ONNX LayerNormalization {n.name!r} has no constant scale/bias"
                )
            out.append((n.input[1], n.input[2], i))
        elif n.op_type == "Mul":
            # A decomposed layer norm ends in  (x - mean) / std * weight + bias.
            w = [x for x in n.input if x in g.weights and g.weights[x].ndim == 1]
            x = [x for x in n.input if x not in g.consts]
            if (
                len(w) != 1
                or len(x) != 1
                or x[0] not in g.producer
                or g.producer[x[0]].op_type != "Div"
            ):
                continue
            for u in g.users(n.output[0]):
                b = [y for y in u.input if y in g.weights and g.weights[y].ndim == 1]
                if u.op_type == "Add" and len(b) == 1:
                    out.append((w[0], b[0], i))
                    break
    return out


def _layer_norm_eps(g: _Graph) -> float | None:
    for n in g.nodes:
        if n.op_type == "LayerNormalization":
            # Stored as float32 (1e-12 comes back as 9.99999996e-13): keep 6 significant digits.
            return float(f"{float(_attr(n, 'epsilon', 1e-5)):.6g}")
    return None


def _reaches_pair_matmul(g: _Graph, start: str) -> tuple[int, int] | None:
    """First activation x activation MatMul that `start` flows into: (node index, input slot)."""
    best: tuple[int, int] | None = None
    seen, queue = {start}, deque([start])
    while queue:
        t = queue.popleft()
        for u in g.users(t):
            if u.op_type == "MatMul" and not any(g.is_const(x) for x in u.input):
                hit = (g.index[id(u)], list(u.input).index(t))
                best = hit if best is None or hit < best else best
            elif u.op_type in _PASS_THROUGH and (u.op_type in ("Mul", "Div") or u.input[0] == t):
                for o in u.output:
                    if o not in seen:
                        seen.add(o)
                        queue.append(o)
    return best


def _qkv_roles(g: _Graph, three: list[_Linear], layer: int) -> dict[str, _Linear]:
    reach = {id(lin): _reaches_pair_matmul(g, lin.output) for lin in three}
    if any(r is None for r in reach.values()):
        raise PeftportError(
            f"ONNX graph, layer {layer}: cannot trace query/key/value "
            f"({', '.join(lin.weight for lin in three)}) into the attention MatMuls"
        )
    by_matmul: dict[int, list[_Linear]] = {}
    for lin in three:
        by_matmul.setdefault(reach[id(lin)][0], []).append(lin)  # type: ignore[index]
    pairs = [v for v in by_matmul.values() if len(v) == 2]
    singles = [v for v in by_matmul.values() if len(v) == 1]
    if len(pairs) != 1 or len(singles) != 1:
        raise PeftportError(
            f"ONNX graph, layer {layer}: the three projections "
            f"({', '.join(lin.weight for lin in three)}) do not form a query/key score and a "
            "value context"
        )
    qk = sorted(pairs[0], key=lambda lin: reach[id(lin)][1])  # type: ignore[index]
    return {_Q: qk[0], _K: qk[1], _V: singles[0][0]}


def _heads_from_reshape(g: _Graph, lin: _Linear, hidden: int) -> int | None:
    """Heads from the Reshape that splits a projection into (batch, seq, heads, head_dim)."""
    for u in g.users(lin.output):
        if u.op_type != "Reshape" or u.input[0] != lin.output:
            continue
        tail = _const_tail(g, u.input[1])
        if len(tail) >= 2 and tail[-2] > 0 and tail[-1] > 0 and tail[-2] * tail[-1] == hidden:
            return int(tail[-2])
    return None


def _const_tail(g: _Graph, name: str) -> list[int]:
    """The trailing constant entries of a shape tensor (a constant, or a Concat of parts)."""
    if name in g.consts:
        return [int(v) for v in g.consts[name].reshape(-1)]
    p = g.producer.get(name)
    if p is None or p.op_type != "Concat":
        return []
    tail: list[int] = []
    for part in reversed(p.input):
        if part not in g.consts:
            break
        tail = [int(v) for v in g.consts[part].reshape(-1)] + tail
    return tail


def _upstream_consts(g: _Graph, name: str, limit: int = 40) -> list[tuple[str, np.ndarray]]:
    """Integer constants (not shapes or scalars) that feed `name`, e.g. position-id buffers."""
    out, seen, queue = [], {name}, deque([name])
    while queue and len(seen) < limit:
        t = queue.popleft()
        if t in g.consts:
            a = g.consts[t]
            if np.issubdtype(a.dtype, np.integer) and a.ndim == 2:
                out.append((t, a))
            continue
        p = g.producer.get(t)
        if p is None:
            continue
        data_inputs = p.input[:1] if p.op_type in ("Slice", "Expand", "Reshape") else p.input
        for i in data_inputs:
            if i and i not in seen:
                seen.add(i)
                queue.append(i)
    return out


def _embeddings(g: _Graph) -> dict[str, tuple[str, int]]:
    """word / position / token_type -> (initializer, Gather node index)."""
    gathers = []
    for i, n in enumerate(g.nodes):
        if n.op_type == "Gather" and n.input[0] in g.weights and g.weights[n.input[0]].ndim == 2:
            if _attr(n, "axis", 0) != 0:
                raise PeftportError(f"ONNX Gather {n.name!r} indexes its table along axis != 0")
            gathers.append((n.input[0], n.input[1], i))
    ids = next((x for x in g.inputs if "input_ids" in x), g.inputs[0] if g.inputs else "")
    types = next((x for x in g.inputs if "token_type" in x), None)
    found: dict[str, tuple[str, int]] = {}
    rest = []
    for table, index, i in gathers:
        if index == ids:
            found["word"] = (table, i)
        elif types is not None and index == types:
            found["token_type"] = (table, i)
        else:
            rest.append((table, index, i))
    if "word" not in found:
        raise PeftportError(f"ONNX graph: no embedding table is indexed by the input {ids!r}")
    rest.sort(key=lambda r: g.weights[r[0]].shape[0])
    if "token_type" not in found and rest:
        table, index, i = rest.pop(0)
        found["token_type"] = (table, i)
        for cname, arr in _upstream_consts(g, index):
            if arr.any():
                raise PeftportError(
                    f"ONNX graph: the token-type ids ({cname}) are not all 0, but BertModel's "
                    "default token types are; the graph does not match BertModel"
                )
    if rest:
        table, index, i = rest.pop(0)
        found["position"] = (table, i)
        for cname, arr in _upstream_consts(g, index):
            if arr.size > 1 and not (arr.reshape(-1) == np.arange(arr.size)).all():
                raise PeftportError(
                    f"ONNX graph: the position ids ({cname}) are not 0, 1, 2, ...; BertModel's "
                    "absolute positions would not match"
                )
    return found  # any table left over shows up as an unused weight


# ---------------------------------------------------------------------------------------------
# The walk


def load_onnx(onnx_path: Path) -> Any:
    """The ONNX model at `onnx_path` (an onnx.ModelProto), or a PeftportError naming the file."""
    import onnx

    try:
        return onnx.load(str(onnx_path))
    except Exception as e:  # protobuf errors come in many types
        raise PeftportError(
            f"{onnx_path}: not a readable ONNX model ({type(e).__name__}: {e})"
        ) from e


def read_onnx_bert(onnx_path: Path, model: Any = None) -> OnnxBert:
    """Walk an ONNX BERT encoder graph: BertModel parameter names -> arrays, and the config.

    `model`: the graph already loaded (an onnx.ModelProto, e.g. with its int8 weights folded
    into float ones by `onnx_int8`); `onnx_path` then only names it in messages.
    """
    g = _Graph(model if model is not None else load_onnx(onnx_path))
    res = OnnxBert()
    taken: dict[str, str] = {}  # BertModel key -> initializer

    def put(key: str, init: str, arr: np.ndarray) -> None:
        if key in taken:
            raise PeftportError(
                f"ONNX graph: BertModel parameter {key} would get two tensors, {taken[key]!r} "
                f"and {init!r}"
            )
        taken[key] = init
        res.tensors[key] = (np.ascontiguousarray(arr, dtype=np.float32), init)

    # Embeddings.
    emb = _embeddings(g)
    for role in ("word", "position", "token_type"):
        if role in emb:
            put(f"embeddings.{role}_embeddings.weight", emb[role][0], g.weights[emb[role][0]])
    vocab, hidden = g.weights[emb["word"][0]].shape

    # Linear layers: an optional pooler (dense + tanh), then six per encoder layer.
    linears = _find_linears(g)
    pooler = [lin for lin in linears if any(u.op_type == "Tanh" for u in g.users(lin.output))]
    pooler = [lin for lin in pooler if lin.shape == (hidden, hidden)]
    if len(pooler) > 1:
        raise PeftportError(
            "ONNX graph: more than one dense+tanh (pooler?): " + ", ".join(p.weight for p in pooler)
        )
    encoder = [lin for lin in linears if lin not in pooler]
    if not encoder or len(encoder) % 6:
        raise PeftportError(
            f"ONNX graph: found {len(encoder)} linear layers outside the pooler; a BERT encoder "
            f"has 6 per layer ({', '.join(lin.weight for lin in encoder) or 'none'})"
        )
    num_layers = len(encoder) // 6
    ffn = encoder[4].shape[0]
    module_of: dict[int, str] = {}
    for layer in range(num_layers):
        six = encoder[6 * layer : 6 * layer + 6]
        if len({lin.input for lin in six[:3]}) != 1:
            raise PeftportError(
                f"ONNX graph, layer {layer}: the first three projections "
                f"({', '.join(lin.weight for lin in six[:3])}) do not read the same input"
            )
        roles = _qkv_roles(g, six[:3], layer)
        roles.update({_O: six[3], _UP: six[4], _DOWN: six[5]})
        want = {
            _Q: (hidden, hidden),
            _K: (hidden, hidden),
            _V: (hidden, hidden),
            _O: (hidden, hidden),
            _UP: (ffn, hidden),
            _DOWN: (hidden, ffn),
        }
        for role, lin in roles.items():
            if lin.shape != want[role]:
                raise PeftportError(
                    f"ONNX graph, layer {layer}: {lin.weight!r} ({role}) has shape "
                    f"{lin.shape} (as nn.Linear), expected {want[role]}"
                )
            module_of[id(lin)] = f"encoder.layer.{layer}.{role}"
    if pooler:
        module_of[id(pooler[0])] = "pooler.dense"
    else:
        res.notes.append("the graph has no pooler: BertModel's pooler keeps its initialisation")
    for lin in linears:
        module = module_of[id(lin)]
        hint = _LINEAR_IN_NODE.search(lin.node_name.replace("/", "."))
        if hint and hint.group(1) != module:
            raise PeftportError(
                f"ONNX graph: node {lin.node_name!r} is named like {hint.group(1)} but the graph "
                f"walk makes it {module}"
            )
        put(f"{module}.weight", lin.weight, lin.weight_array)
        if lin.bias is not None:
            put(f"{module}.bias", lin.bias, lin.bias_array)  # type: ignore[arg-type]

    # Layer norms: embeddings, then (attention output, output) per layer.
    norms = _layer_norms(g)
    if len(norms) != 1 + 2 * num_layers:
        raise PeftportError(
            f"ONNX graph: found {len(norms)} layer norms, expected {1 + 2 * num_layers} "
            f"(embeddings + 2 per layer for {num_layers} layers)"
        )
    names = ["embeddings.LayerNorm"] + [
        f"encoder.layer.{i}.{part}"
        for i in range(num_layers)
        for part in ("attention.output.LayerNorm", "output.LayerNorm")
    ]
    for name, (w, b, _) in zip(names, norms, strict=True):
        put(f"{name}.weight", w, g.weights[w].reshape(-1))
        put(f"{name}.bias", b, g.weights[b].reshape(-1))

    # Initializers that keep a PyTorch name must agree with the walk.
    for key, init in taken.items():
        m = _PARAM_IN_NAME.search(init)
        if m and m.group(1) != key:
            raise PeftportError(
                f"ONNX initializer {init!r} is named like {m.group(1)} but the graph walk "
                f"makes it {key}"
            )
    used = set(taken.values())
    res.unused = sorted(k for k in g.weights if k not in used)

    # Heads: from the attention Reshape targets, else the scale constant, else BERT's 12.
    q0 = next(lin for lin in encoder[:3] if module_of[id(lin)].endswith(_Q))
    heads = _heads_from_reshape(g, q0, hidden)
    if heads is None:
        # The graph does not spell it out; 12 is right for BERT-base and the MiniLM family.
        heads = _DEFAULT_HEADS
        res.notes.append(f"number of heads not found in the graph; using {heads}")
    act = (
        "gelu"
        if any(n.op_type == "Erf" for n in g.nodes)
        else ("relu" if any(n.op_type == "Relu" for n in g.nodes) else None)
    )
    if act is None:
        raise PeftportError("ONNX graph: no Erf (exact gelu) or Relu: unknown activation")
    pos = res.tensors.get("embeddings.position_embeddings.weight")
    types = res.tensors.get("embeddings.token_type_embeddings.weight")
    read = {
        "vocab_size": int(vocab),
        "hidden_size": int(hidden),
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "intermediate_size": int(ffn),
        "hidden_act": act,
        "max_position_embeddings": int(pos[0].shape[0]) if pos else 512,
        "type_vocab_size": int(types[0].shape[0]) if types else 2,
        "layer_norm_eps": _layer_norm_eps(g) or 1e-12,
    }
    res.config = {**read, **BERT_DEFAULTS}
    return res


# What an ONNX graph does not say: BERT's defaults, as in all-MiniLM-L6-v2's config.json.
BERT_DEFAULTS = {
    "hidden_dropout_prob": 0.1,
    "attention_probs_dropout_prob": 0.1,
    "initializer_range": 0.02,
    "pad_token_id": 0,
    "position_embedding_type": "absolute",
    "use_cache": True,
}


# ---------------------------------------------------------------------------------------------
# The checkpoint


def convert_onnx_bert(
    onnx_path: Path, tokenizer_dir: Path, out: Path, *, model: Any = None
) -> None:
    """Write a BertModel checkpoint (config.json, model.safetensors, tokenizer) to `out`.

    `model`: the graph of `onnx_path` already loaded (and perhaps edited), see `read_onnx_bert`.
    """
    import torch
    from transformers import BertConfig, BertModel

    onnx_path, tokenizer_dir, out = Path(onnx_path), Path(tokenizer_dir), Path(out)
    if model is None and not onnx_path.is_file():
        raise PeftportError(f"{onnx_path}: no such ONNX file")
    found = read_onnx_bert(onnx_path, model)
    config = BertConfig(**found.config)
    # The pooler is not in a sentence-embedding export. It keeps BertModel's documented
    # initialisation (normal(0, initializer_range) weight, zero bias), seeded so that the same
    # ONNX file always gives the same checkpoint; nothing here compares pooled outputs.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bert = BertModel(config, add_pooling_layer=True)
    params = dict(bert.named_parameters())
    optional = (
        set()
        if "pooler.dense.weight" in found.tensors
        else {"pooler.dense.weight", "pooler.dense.bias"}
    )
    missing = [k for k in params if k not in found.tensors and k not in optional]
    extra = [f"{k} (from {init})" for k, (_, init) in found.tensors.items() if k not in params]
    extra += [f"{w} (not used by any BertModel parameter)" for w in found.unused]
    wrong = [
        f"{k}: {tuple(arr.shape)} from {init}, BertModel wants {tuple(params[k].shape)}"
        for k, (arr, init) in found.tensors.items()
        if k in params and tuple(arr.shape) != tuple(params[k].shape)
    ]
    if missing or extra or wrong:
        parts = []
        if missing:
            parts.append("missing BertModel parameters: " + ", ".join(missing))
        if extra:
            parts.append("tensors with no place in BertModel: " + ", ".join(extra))
        if wrong:
            parts.append("wrong shapes: " + "; ".join(wrong))
        raise PeftportError(f"{onnx_path.name}: cannot convert to BertModel: " + " | ".join(parts))
    with torch.no_grad():
        for k, (arr, _) in found.tensors.items():
            params[k].copy_(torch.tensor(arr))
    for note in found.notes:
        log.info("%s: %s", onnx_path.name, note)

    copied = _copy_tokenizer(tokenizer_dir, out, config.vocab_size)
    bert.eval()
    bert.save_pretrained(out, safe_serialization=True)
    log.debug("converted %s -> %s (tokenizer files %s)", onnx_path, out, ", ".join(copied))


def _copy_tokenizer(tokenizer_dir: Path, out: Path, vocab_size: int) -> list[str]:
    present = [n for n in TOKENIZER_FILES if (tokenizer_dir / n).is_file()]
    if not {"tokenizer.json", "vocab.txt"} & set(present):
        raise PeftportError(
            f"{tokenizer_dir}: no tokenizer.json or vocab.txt to copy as the tokenizer"
        )
    if "vocab.txt" in present:
        with open(tokenizer_dir / "vocab.txt", encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n != vocab_size:
            raise PeftportError(
                f"{tokenizer_dir}/vocab.txt has {n} tokens but the ONNX model's embedding table "
                f"has {vocab_size} rows: not the same vocabulary"
            )
    out.mkdir(parents=True, exist_ok=True)
    for name in present:
        shutil.copyfile(tokenizer_dir / name, out / name)
    return present
