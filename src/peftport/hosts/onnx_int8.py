"""Dequantize the int8 weights of an ONNX BERT export, then convert it like a float one.

A weight-only quantized export stores each weight as an integer initializer plus a scale (and
maybe a zero point) and turns it back into float32 inside the graph, before the MatMul or Gather
that uses it. Two spellings of that are folded here, both computing
``w = (q - zero_point) * scale`` with the scale (and zero point) broadcast per tensor, per
row or per column:

- ``DequantizeLinear(q, scale[, zero_point])`` (with its ``axis`` attribute);
- ``Cast(q, to=FLOAT)`` [``Sub(., zero_point)``] ``Mul(., scale)``, which is what the exporter of
  all-MiniLM-L6-v2's int8 copy wrote (symmetric: no zero point; per output column for the
  MatMul weights, per row for the embedding tables).

Each such chain becomes one float32 initializer under the chain's output name, computed in float32
exactly as the graph computes it, so the float graph and the int8 graph give the same numbers.
`onnx_bert` then walks the float graph as it walks minilm-l3's.

Graphs that also quantize the activations (``DynamicQuantizeLinear``, ``MatMulInteger``,
``QLinearMatMul``, ...) compute in integers, which a float32 ``BertModel`` cannot reproduce; they
are refused with a `PeftportError` naming the ops.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peftport.errors import PeftportError

__all__ = [
    "DequantizedWeight",
    "convert_onnx_int8_bert",
    "dequantize",
    "fold_quantized_weights",
]

log = logging.getLogger(__name__)

# Ops that compute on quantized activations: no float32 BertModel reproduces their rounding.
_INTEGER_COMPUTE = {
    "DynamicQuantizeLinear",
    "QuantizeLinear",
    "MatMulInteger",
    "QLinearMatMul",
    "ConvInteger",
    "QLinearConv",
    "QLinearAdd",
    "QLinearMul",
    "DynamicQuantizeMatMul",
    "QAttention",
    "QEmbedLayerNormalization",
    "QGemm",
    "MatMulIntegerToFloat",
    "MatMulNBits",
}
_INT_TYPES = (np.int8, np.uint8, np.int16, np.uint16, np.int32)


@dataclass(frozen=True)
class DequantizedWeight:
    """One folded chain: the float initializer it became and how it was quantized."""

    name: str  # the float32 initializer now in the graph
    quantized: str  # the integer initializer it came from
    shape: tuple[int, ...]
    dtype: str  # of the integer tensor
    scales: int  # number of distinct scale entries (1: per tensor; else per row or column)
    zero_point: bool  # False: symmetric quantization
    ops: str  # e.g. "Cast+Mul" or "DequantizeLinear"


def dequantize(
    q: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int | None = None
) -> np.ndarray:
    """float32 ``(q - zero_point) * scale``, as ONNX computes it.

    `scale` and `zero_point` broadcast against `q` (numpy rules, as ONNX's Mul and Sub); with
    `axis` (DequantizeLinear's per-axis form) they are 1-D along that axis of `q`.
    """
    q = np.asarray(q)
    if not np.issubdtype(q.dtype, np.integer):
        raise PeftportError(f"dequantize: the quantized tensor is {q.dtype}, not an integer type")
    scale = np.asarray(scale, dtype=np.float32)
    zp = None if zero_point is None else np.asarray(zero_point)
    if axis is not None and scale.ndim == 1 and scale.size > 1:
        axis = axis % q.ndim
        if scale.shape[0] != q.shape[axis]:
            raise PeftportError(
                f"dequantize: {scale.shape[0]} scales for axis {axis} of a tensor of shape "
                f"{q.shape}"
            )
        shape = [1] * q.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        if zp is not None:
            zp = zp.reshape(shape)
    try:
        np.broadcast_shapes(q.shape, scale.shape)
        if zp is not None:
            np.broadcast_shapes(q.shape, zp.shape)
    except ValueError as e:
        raise PeftportError(
            f"dequantize: scale {scale.shape} or zero point "
            f"{None if zp is None else zp.shape} does not broadcast to {q.shape}"
        ) from e
    # An integer zero point is subtracted before the float cast (DequantizeLinear's definition);
    # the difference is small enough for float32 to hold exactly.
    if zp is None:
        x = q.astype(np.float32)
    elif np.issubdtype(zp.dtype, np.integer):
        x = (q.astype(np.int32) - zp.astype(np.int32)).astype(np.float32)
    else:  # a float zero point (Cast, then Sub of a float constant): float32 as the graph does
        x = q.astype(np.float32) - zp.astype(np.float32)
    out = x * scale
    if out.shape != q.shape:  # a scale with more entries than q would widen it
        raise PeftportError(f"dequantize: scale {scale.shape} widens {q.shape} to {out.shape}")
    return out.astype(np.float32, copy=False)


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def fold_quantized_weights(model: Any) -> list[DequantizedWeight]:
    """Replace every weight dequantization chain of `model` (an onnx.ModelProto, edited in place)
    by a float32 initializer; return what was folded, in graph order."""
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    arrays: dict[str, np.ndarray] = {}

    def const(name: str) -> np.ndarray | None:
        if name not in inits:
            return None
        if name not in arrays:
            arrays[name] = numpy_helper.to_array(inits[name])
        return arrays[name]

    def is_int(name: str) -> bool:
        a = const(name)
        return a is not None and a.dtype in _INT_TYPES and a.ndim >= 1 and a.size > 1

    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def only_user(name: str, op: str) -> Any:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op else None

    folded: list[DequantizedWeight] = []
    drop_nodes: list[Any] = []
    new_inits: list[Any] = []
    for n in g.node:
        if n.op_type == "DequantizeLinear" and is_int(n.input[0]):
            scale = const(n.input[1])
            zp = const(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if scale is None or (len(n.input) > 2 and n.input[2] and zp is None):
                raise PeftportError(
                    f"ONNX DequantizeLinear {n.name!r}: scale or zero point is not a constant"
                )
            q = const(n.input[0])
            chain, out_name, ops = [n], n.output[0], "DequantizeLinear"
            w = dequantize(q, scale, zp, axis=_attr(n, "axis", 1))
        elif n.op_type == "Cast" and is_int(n.input[0]) and _attr(n, "to") == TensorProto.FLOAT:
            q, chain, cur, zp, ops = const(n.input[0]), [n], n.output[0], None, "Cast"
            sub = only_user(cur, "Sub")
            if sub is not None and sub.input[0] == cur and const(sub.input[1]) is not None:
                zp = const(sub.input[1])
                chain.append(sub)
                cur, ops = sub.output[0], ops + "+Sub"
            mul = only_user(cur, "Mul")
            other = [x for x in (mul.input if mul is not None else []) if x != cur]
            if mul is None or len(other) != 1 or const(other[0]) is None:
                raise PeftportError(
                    f"ONNX graph: integer weight {n.input[0]!r} is cast to float by {n.name!r} "
                    "but not then multiplied by a constant scale: not a dequantization this "
                    "converter knows"
                )
            scale = const(other[0])
            chain.append(mul)
            out_name, ops = mul.output[0], ops + "+Mul"
            # Cast then Sub runs in float32; with small integers that equals `dequantize`'s
            # integer subtraction, and a float zero point is subtracted in float32 there too.
            w = dequantize(q, scale, zp)
        else:
            continue
        drop_nodes.extend(chain)
        new_inits.append(numpy_helper.from_array(w, out_name))
        folded.append(
            DequantizedWeight(
                name=out_name,
                quantized=chain[0].input[0],
                shape=tuple(q.shape),
                dtype=str(q.dtype),
                scales=int(np.asarray(scale).size),
                zero_point=zp is not None,
                ops=ops,
            )
        )

    dropped = {id(x) for x in drop_nodes}
    kept = [x for x in g.node if id(x) not in dropped]
    integer_ops = sorted({x.op_type for x in kept if x.op_type in _INTEGER_COMPUTE})
    if integer_ops:
        raise PeftportError(
            "ONNX graph computes on quantized activations (" + ", ".join(integer_ops) + "): "
            "only weight-only quantization (integer weights dequantized in the graph) can become "
            "a float32 BertModel"
        )
    del g.node[:]
    g.node.extend(kept)
    # The integer weights, scales and zero points are now unused unless something else reads them.
    still_read = {i for x in kept for i in x.input} | {o.name for o in g.output}
    keep_inits = [t for t in g.initializer if t.name in still_read]
    leftover = [t.name for t in keep_inits if is_int(t.name)]
    if leftover:
        raise PeftportError(
            "ONNX graph: integer weights not dequantized by a DequantizeLinear or Cast+Mul chain: "
            + ", ".join(leftover)
        )
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    return folded


def convert_onnx_int8_bert(
    onnx_path: Path, tokenizer_dir: Path, out: Path, *, pooler_from: Path | None = None
) -> list[DequantizedWeight]:
    """Write a float32 BertModel checkpoint of a weight-only int8 ONNX BERT export to `out`.

    `pooler_from`: a BertModel checkpoint folder (the model that was quantized) whose pooler is
    copied when the graph has none. A sentence-embedding export drops the pooler because it does
    not use it, but a sequence classifier reads the pooled [CLS]; a fresh pooler there would make
    the quantized copy differ from its source by far more than quantization.
    """
    from peftport.hosts.onnx_bert import convert_onnx_bert, load_onnx

    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise PeftportError(f"{onnx_path}: no such ONNX file")
    model = load_onnx(onnx_path)
    folded = fold_quantized_weights(model)
    if not folded:
        raise PeftportError(
            f"{onnx_path.name}: no quantized weights found (no DequantizeLinear or Cast+Mul of an "
            "integer initializer); convert a float export with convert_onnx_bert instead"
        )
    log.info("%s: dequantized %d integer weights", onnx_path.name, len(folded))
    has_pooler = any(n.op_type == "Tanh" for n in model.graph.node)
    convert_onnx_bert(onnx_path, tokenizer_dir, out, model=model)
    if pooler_from is not None and not has_pooler:
        _copy_pooler(Path(pooler_from), Path(out))
    return folded


def _copy_pooler(source: Path, out: Path) -> None:
    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    keys = ("pooler.dense.weight", "pooler.dense.bias")
    src: dict[str, torch.Tensor] = {}
    for f in sorted(source.glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for name in h.keys():  # noqa: SIM118 - safe_open is not a mapping
                short = name.removeprefix("bert.")
                if short in keys:
                    src[short] = h.get_tensor(name)
    if set(src) != set(keys):
        raise PeftportError(f"{source}: no pooler.dense weight and bias to copy")
    target = out / "model.safetensors"
    with safe_open(str(target), framework="pt") as h:
        meta = h.metadata()
        tensors = {name: h.get_tensor(name) for name in h.keys()}  # noqa: SIM118
    for k in keys:
        if k not in tensors or tensors[k].shape != src[k].shape:
            raise PeftportError(
                f"{source}: pooler {k} {tuple(src[k].shape)} does not fit {target} "
                f"({tuple(tensors[k].shape) if k in tensors else 'absent'})"
            )
        tensors[k] = src[k].to(tensors[k].dtype).contiguous()
    save_file(tensors, str(target), metadata=meta)
    log.info("%s: pooler copied from %s (not in the ONNX graph)", out, source)
