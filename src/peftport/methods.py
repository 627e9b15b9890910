"""Porting methods: how the `ported` condition turns a module's trained tensors into the
receiver's. Each method is a pure function (tensors in, tensors out; no I/O, inputs never
modified), registered by name in `METHODS` beside the conditions of `peftport.porting`.

- `copy`: the trained tensors as they are (the paper's port; what `port(..., "ported")` gives).
- `scaled:<f>`: copy, with the module's contribution scaled by f: LoRA's B (so the update
  B @ A) times f; a bottleneck adapter's or Compacter's up projection (weights and bias) times f,
  so the adapter adds f times its output to the residual; IA3's vectors moved towards one,
  l -> 1 + f (l - 1). Prefix and prompt tuning have no neutral value to scale towards (a zero
  key still takes attention, a zero soft token is still a token), so they are refused.
- `subspace[:k]`: LoRA only (the other techniques' tensors are not an update of a weight). The
  update B @ A of each adapted weight W of the receiver is projected onto W's own top-k
  singular subspaces (LoRA-X / ProLoRA style): B -> U_k U_k^T B, A -> A V_k V_k^T, with
  W = U S V^T. Without k, every singular vector: for a square weight of full rank the projection
  is the identity and the result is the copy.
- `align`: the module is carried through linear maps between the two hosts' hidden spaces,
  fitted on the activations of a shared unlabelled corpus (`Alignment`, fitted at the edge by
  `peftport.alignfit`), per layer through the layer map. This also ports between hosts of
  different hidden width. What moves: LoRA A (input side) and B (output side, through a map of
  the adapted projection's output space fitted from the two hosts' weights), a bottleneck
  adapter's down and up projections (a wider receiver bottleneck is padded with zeros),
  BERT-family prefixes (each layer's key and value parts through the maps of that layer's key and
  value projections), prompts (the embedding map) and an encoder classifier's head. Compacter
  (its Kronecker structure cannot absorb a general linear map) and IA3 (a diagonal scaling stays
  diagonal only under a permutation) are refused.

Hidden-space maps act on row vectors: `h_r ~ h_o @ forward` and `h_o ~ h_r @ backward`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.layermap import ResolvedMap, normalise_layer_map, split_layer
from peftport.porting import PortingError, ReceiverSpec, check_compatible, port
from peftport.registry import Registry

__all__ = [
    "METHODS",
    "Alignment",
    "HiddenMap",
    "Method",
    "MethodInputs",
    "ParsedMethod",
    "fit_map",
    "method_record",
    "parse_method",
    "port_with_method",
]

FIT_KINDS = ("procrustes", "lstsq")


@dataclass(frozen=True)
class HiddenMap:
    """A linear map between one origin and one receiver hidden space (row vectors)."""

    forward: torch.Tensor  # (d_origin, d_receiver): h_r ~ h_o @ forward
    backward: torch.Tensor  # (d_receiver, d_origin): h_o ~ h_r @ backward

    @classmethod
    def identity(cls, d: int) -> HiddenMap:
        eye = torch.eye(d, dtype=torch.float64)
        return cls(eye, eye.clone())


@dataclass(frozen=True)
class Alignment:
    """What `align` needs: hidden-space maps of the main layer stack and both hosts' weights.

    `maps[(i, j)]` maps the origin's hidden state i to the receiver's hidden state j, where
    hidden state 0 is the embedding output and k + 1 the output of block k (so the input of
    block k is hidden state k). `origin_weights`/`receiver_weights`: the hosts' own (frozen)
    parameters by name, for the maps of spaces that are not the residual stream (a projection's
    output), fitted from the weights given the residual maps.
    """

    kind: str
    maps: Mapping[tuple[int, int], HiddenMap]
    origin_weights: Mapping[str, torch.Tensor] = field(repr=False)
    receiver_weights: Mapping[str, torch.Tensor] = field(repr=False)
    info: Mapping[str, Any] = field(default_factory=dict)  # recorded in the provenance

    def get(self, i: int, j: int) -> HiddenMap:
        try:
            return self.maps[(i, j)]
        except KeyError:
            raise PortingError(
                f"align: no fitted map between origin hidden state {i} and "
                f"receiver hidden state {j}"
            ) from None


@dataclass(frozen=True)
class MethodInputs:
    """What a method may use beyond the module: the receiver's weights (subspace) and the
    fitted alignment (align)."""

    receiver_weights: Mapping[str, torch.Tensor] | None = None
    alignment: Alignment | None = None


@dataclass(frozen=True)
class ParsedMethod:
    name: str
    params: dict[str, Any]

    def __str__(self) -> str:
        return ":".join([self.name, *map(str, self.params.values())])


@dataclass(frozen=True)
class Method:
    name: str
    summary: str
    parse: Callable[[str | None], dict[str, Any]]  # the text after "name:" -> params
    needs_alignment: bool = False
    needs_receiver_weights: bool = False


METHODS: Registry[Method] = Registry("porting method")


def _no_param(name: str) -> Callable[[str | None], dict[str, Any]]:
    def parse(arg: str | None) -> dict[str, Any]:
        if arg is not None:
            raise PeftportError(f"porting method {name!r} takes no parameter, got {arg!r}")
        return {}

    return parse


def _parse_factor(arg: str | None) -> dict[str, Any]:
    try:
        factor = float(arg) if arg is not None else None
    except ValueError:
        factor = None
    if factor is None or factor != factor or factor in (float("inf"), float("-inf")):
        raise PeftportError(
            f"porting method 'scaled' needs a finite factor, as in scaled:0.5; got {arg!r}"
        )
    return {"factor": factor}


def _parse_rank(arg: str | None) -> dict[str, Any]:
    if arg is None:
        return {"rank": None}
    if not arg.isdigit() or int(arg) < 1:
        raise PeftportError(
            f"porting method 'subspace' takes a rank >= 1, as in subspace:4; got {arg!r}"
        )
    return {"rank": int(arg)}


def _parse_fit(arg: str | None) -> dict[str, Any]:
    fit = arg or "procrustes"
    if fit not in FIT_KINDS:
        raise PeftportError(f"porting method 'align' fits by {' or '.join(FIT_KINDS)}; got {arg!r}")
    return {"fit": fit}


METHODS.add("copy", Method("copy", "the trained tensors as they are", _no_param("copy")))
METHODS.add(
    "scaled",
    Method("scaled", "copy with the module's contribution scaled by a factor", _parse_factor),
)
METHODS.add(
    "subspace",
    Method(
        "subspace",
        "LoRA: the update projected onto the receiving weight's top singular subspaces",
        _parse_rank,
        needs_receiver_weights=True,
    ),
)
METHODS.add(
    "align",
    Method(
        "align",
        "carried through linear maps between the hosts' hidden spaces fitted on shared text",
        _parse_fit,
        needs_alignment=True,
    ),
)


def method_for(method: str | ParsedMethod, condition: str) -> ParsedMethod:
    """The parsed `method` for porting under `condition`: a method other than copy applies to
    the ported condition only (the controls are drawn as they are)."""
    parsed = parse_method(method)
    if parsed.name != "copy" and condition != "ported":
        shown = method if isinstance(method, str) else parsed.name
        raise PeftportError(
            f"--method {shown} applies to the ported condition; {condition} is "
            "a control and is drawn as it is (use --method copy)"
        )
    return parsed


def parse_method(text: str | ParsedMethod) -> ParsedMethod:
    """Parse a method's text: "copy", "scaled:0.5", "subspace", "subspace:4", "align",
    "align:lstsq"."""
    if isinstance(text, ParsedMethod):
        return text
    name, _, arg = str(text).strip().partition(":")
    method = METHODS.get(name.strip().lower())
    return ParsedMethod(method.name, method.parse(arg.strip() if _ else None))


def method_record(method: ParsedMethod, alignment: Alignment | None = None) -> dict[str, Any]:
    """What a ported module's provenance keeps about the method: {"method": ..., params}."""
    out: dict[str, Any] = {"method": method.name, **method.params}
    if method.name == "align" and alignment is not None:
        out.update(alignment.info)
    return out


# --- the pure step -----------------------------------------------------------------------------


def port_with_method(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    receiver: ReceiverSpec,
    method: str | ParsedMethod,
    layer_map: ResolvedMap | None = None,
    *,
    keep_receiver_head: bool = False,
    inputs: MethodInputs | None = None,
) -> dict[str, torch.Tensor]:
    """The `ported` condition under a porting method: the tensors to load into the receiver."""
    m = parse_method(method)
    inputs = inputs or MethodInputs()
    if m.name == "align":
        if inputs.alignment is None:
            raise PeftportError(
                "porting method 'align' needs a fitted Alignment (peftport.alignfit.fit_alignment)"
            )
        return _align(inputs.alignment, tensors, meta, receiver, layer_map, keep_receiver_head)
    out = port(
        tensors,
        meta,
        receiver,
        "ported",
        seed=receiver.fresh_seed,
        layer_map=layer_map,
        keep_receiver_head=keep_receiver_head,
    )
    if m.name == "copy":
        return out
    if m.name == "scaled":
        return _scaled(out, receiver, m.params["factor"])
    if m.name == "subspace":
        if inputs.receiver_weights is None:
            raise PeftportError("porting method 'subspace' needs the receiver's weights")
        return _subspace(out, receiver, m.params["rank"], inputs.receiver_weights)
    raise AssertionError(m.name)  # every registered method is handled above


def _module_part(key: str, receiver: ReceiverSpec) -> bool:
    return key not in receiver.head_keys


# technique -> how `scaled` treats one module tensor: (tensor name, tensor, factor) -> the scaled
# tensor, or None to leave it as it is. A technique missing here is refused with NOT_SCALED's
# reason: which tensors carry "the module's output" is a per-technique fact.
def _scale_b(key: str, v: torch.Tensor, f: float) -> torch.Tensor | None:
    return v * f if key.endswith(".lora_B") else None  # the update B @ A, times f


def _scale_towards_one(key: str, v: torch.Tensor, f: float) -> torch.Tensor | None:
    return 1 + f * (v - 1) if key.endswith(".lora_B") else None  # IA3 keeps its vectors in B


def _scale_up(key: str, v: torch.Tensor, f: float) -> torch.Tensor | None:
    return v * f if ".adapter_up." in key else None  # the adapter's output: up(...), times f


def _scale_phm_up(key: str, v: torch.Tensor, f: float) -> torch.Tensor | None:
    # the up PHM layer is (sum_i rule_i x W_left_i W_right_i) + b: W_left and b carry f once
    return v * f if re.search(r"\.adapter_up\.(W_left|b)$", key) else None


SCALE: dict[str, Callable[[str, torch.Tensor, float], torch.Tensor | None]] = {
    "lora": _scale_b,
    "ia3": _scale_towards_one,
    "adapter": _scale_up,
    "compacter": _scale_phm_up,
}
NOT_SCALED = {
    "prefix": "a prefix has no neutral value to scale towards (a zero key still takes attention)",
    "prompt": "a prompt has no neutral value to scale towards (a zero soft token is a token)",
}


def _scaled(
    state: dict[str, torch.Tensor], receiver: ReceiverSpec, f: float
) -> dict[str, torch.Tensor]:
    t = receiver.technique
    rule = SCALE.get(t)
    if rule is None:
        raise PortingError(
            f"scaled cannot scale {t} modules: "
            + NOT_SCALED.get(t, "no rule says which of its tensors carry its output")
            + "; port it with copy"
        )
    out = dict(state)
    for key, v in state.items():
        if not _module_part(key, receiver):
            continue  # the head reads the output; the module's contribution is what is scaled
        if (scaled := rule(key, v, f)) is not None:
            out[key] = scaled
    return out


def _base_weight(key: str) -> str:
    """A LoRA tensor's name -> its adapted weight's name (`X.loras.<name>.lora_A` -> X.weight)."""
    return key.split(".loras.")[0] + ".weight"


def _lora_pairs(state: Mapping[str, Any], what: str) -> list[tuple[str, str]]:
    """(A name, B name) of every adapted weight; a fused LoRA is refused."""
    pairs = []
    for key in state:
        if key.endswith(".lora_A"):
            b = key[: -len("lora_A")] + "lora_B"
            a_shape, b_shape = tuple(state[key].shape), tuple(state[b].shape)
            if a_shape[0] != b_shape[1]:
                raise PortingError(
                    f"{what}: {key} is a fused LoRA (A {a_shape}, B {b_shape}, as on GPT-2's "
                    "c_attn); {what} needs one A (r x in) and one B (out x r) per weight"
                )
            pairs.append((key, b))
    return pairs


# technique -> whether its module is a low-rank update B @ A of host weights (subspace)
WEIGHT_UPDATE = {"lora": True, "ia3": False}


def _subspace(
    state: dict[str, torch.Tensor],
    receiver: ReceiverSpec,
    rank: int | None,
    weights: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    if not WEIGHT_UPDATE.get(receiver.technique, False):
        raise PortingError(
            f"subspace projects a weight update onto the receiving weight's singular subspaces; "
            f"{receiver.technique} modules are not weight updates (LoRA only)"
        )
    out = dict(state)
    for a_key, b_key in _lora_pairs(state, "subspace"):
        w = weights.get(_base_weight(a_key))
        a, b = state[a_key], state[b_key]
        if w is None or w.dim() != 2 or tuple(w.shape) != (b.shape[0], a.shape[1]):
            raise PortingError(
                f"subspace: no receiver weight {_base_weight(a_key)} of shape "
                f"({b.shape[0]}, {a.shape[1]}) for {a_key}"
            )
        u, _, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
        k = min(rank or u.shape[1], u.shape[1])
        uk, vk = u[:, :k], vh[:k].T
        out[b_key] = (uk @ (uk.T @ b.to(torch.float64))).to(b.dtype)
        out[a_key] = ((a.to(torch.float64) @ vk) @ vk.T).to(a.dtype)
    return out


# --- align ---------------------------------------------------------------------------------


def fit_map(
    xo_xr: torch.Tensor,
    xo_xo: torch.Tensor | None = None,
    xr_xr: torch.Tensor | None = None,
    kind: str = "procrustes",
) -> HiddenMap:
    """A hidden-space map from second moments of paired rows (X_o (n x d_o), X_r (n x d_r)):
    `xo_xr` = X_o^T X_r; `xo_xo`, `xr_xr` (least squares only) = X_o^T X_o, X_r^T X_r.

    procrustes: the (semi-)orthogonal Q minimising ||X_o Q - X_r|| (Q = U V^T from the SVD of
    X_o^T X_r); backward = Q^T. lstsq: forward = argmin ||X_o F - X_r||, backward = argmin
    ||X_r G - X_o||, each solved from the normal equations.

    Directions the rows never visit (layer norm centres every hidden state, so the all-ones
    direction carries nothing) leave a map undetermined there; a tiny pull (1e-9 of the
    moments' scale) towards the identity (zero-padded across widths) decides them: a coordinate
    the data say nothing about stays where it is.
    """
    c = xo_xr.to(torch.float64)
    eye = torch.eye(*c.shape, dtype=torch.float64)
    if kind == "procrustes":
        eps = 1e-9 * float(torch.linalg.matrix_norm(c))
        u, _, vh = torch.linalg.svd(c + eps * eye, full_matrices=False)
        q = u @ vh
        return HiddenMap(q, q.T.clone())
    if kind == "lstsq":
        if xo_xo is None or xr_xr is None:
            raise PeftportError("align: least squares needs X_o^T X_o and X_r^T X_r")
        a, b = xo_xo.to(torch.float64), xr_xr.to(torch.float64)
        ea = 1e-9 * float(torch.linalg.matrix_norm(a))
        eb = 1e-9 * float(torch.linalg.matrix_norm(b))
        f = torch.linalg.solve(a + ea * torch.eye(len(a), dtype=torch.float64), c + ea * eye)
        g = torch.linalg.solve(b + eb * torch.eye(len(b), dtype=torch.float64), c.T + eb * eye.T)
        return HiddenMap(f, g)
    raise PeftportError(f"align: unknown fit {kind!r}; choose {' or '.join(FIT_KINDS)}")


def _pinv(x: torch.Tensor) -> torch.Tensor:
    return torch.linalg.pinv(x.to(torch.float64))


def _out_map(p: torch.Tensor, w_o: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    """(out_o x out_r) Q with y_r ~ y_o Q for a linear layer y = x W^T whose input moves by
    x_o ~ x_r P: the least-squares fit of P W_o^T Q = W_r^T."""
    return _pinv(p @ w_o.to(torch.float64).T) @ w_r.to(torch.float64).T


def _back_out_map(p: torch.Tensor, w_o: torch.Tensor, w_r: torch.Tensor) -> torch.Tensor:
    """(out_r x out_o) Q' with y_o ~ y_r Q' (same layer, the other direction)."""
    return _pinv(w_r.to(torch.float64).T) @ (p @ w_o.to(torch.float64).T)


def _weight(weights: Mapping[str, torch.Tensor], name: str, side: str) -> torch.Tensor:
    w = weights.get(name)
    if w is None:
        raise PortingError(f"align: the {side} host has no weight {name}")
    return w


# family -> (key, value) projection weights inside one layer (the spaces of a prefix's parts)
PREFIX_KV = {"bert": ("attention.self.key.weight", "attention.self.value.weight")}
# family -> (the head's input layer: pooler dense), for an encoder classifier's head
HEAD_INPUT = {"bert": "bert.pooler.dense.weight"}


@dataclass(frozen=True)
class _Carry:
    """What a technique's align rule sees: the module's tensors by receiver name, the layer
    pairing and the fitted maps."""

    src: Callable[[str], torch.Tensor]  # receiver tensor name -> the module's tensor (float64)
    origin_name: Callable[[str], str]  # receiver tensor name -> its origin tensor name
    origin_layer: Callable[[int], int]  # receiver layer -> origin layer (the layer map)
    receiver: ReceiverSpec
    al: Alignment
    stack: str
    n_layers: int


def _carry_lora(key: str, split: tuple[str, int, str] | None, c: _Carry) -> dict:
    if split is None or not key.endswith((".lora_A", ".lora_B")):
        raise PortingError(f"align: {key} is not a per-layer LoRA factor")
    a_key = key[: -len("lora_B")] + "lora_A" if key.endswith("lora_B") else key
    b_key = a_key[: -len("lora_A")] + "lora_B"
    a, b = c.src(a_key), c.src(b_key)
    if a.shape[0] != b.shape[1]:
        raise PortingError(
            f"align: {a_key} is a fused LoRA (A {tuple(a.shape)}, B {tuple(b.shape)}, as on "
            "GPT-2's c_attn); align needs one A (r x in) and one B (out x r) per weight"
        )
    j = split[1]
    o = c.origin_layer(j)
    w_o = _weight(c.al.origin_weights, _base_weight(c.origin_name(a_key)), "origin")
    w_r = _weight(c.al.receiver_weights, _base_weight(a_key), "receiver")
    d_o, d_r = c.al.get(o, j).forward.shape
    if w_o.shape[1] == d_o and w_r.shape[1] == d_r:  # reads the residual stream
        p = c.al.get(o, j).backward
        q = _out_map(p, w_o, w_r)
        return {a_key: a @ p.T, b_key: q.T @ b}
    if w_o.shape[0] == d_o and w_r.shape[0] == d_r:  # writes the residual stream
        m = c.al.get(o + 1, j + 1).forward
        p_in = (_pinv(m.T @ w_o.to(torch.float64)) @ w_r.to(torch.float64)).T
        return {a_key: a @ p_in.T, b_key: m.T @ b}
    raise PortingError(f"align: {_base_weight(a_key)} neither reads nor writes the hidden space")


def _carry_adapter(key: str, split: tuple[str, int, str] | None, c: _Carry) -> dict:
    if split is None or ".adapter_" not in key:
        raise PortingError(f"align: {key} is not a per-layer bottleneck adapter tensor")
    j = split[1]
    o = c.origin_layer(j)
    # an adapter after attention reads the block's middle: the block input's map is the
    # nearest fitted one; after the feed-forward block it reads the block output
    hm = c.al.get(o, j) if "attention" in key else c.al.get(o + 1, j + 1)
    base = key.split(".adapter_")[0]
    dwn, dbn, uwn, ubn = (
        f"{base}.{s}"
        for s in (
            "adapter_down.0.weight",
            "adapter_down.0.bias",
            "adapter_up.weight",
            "adapter_up.bias",
        )
    )
    dw, db, uw, ub = c.src(dwn), c.src(dbn), c.src(uwn), c.src(ubn)
    width_r = c.receiver.shapes[dwn][0]
    if width_r < dw.shape[0]:
        raise PortingError(
            f"align: the receiver's adapter bottleneck ({width_r}) is narrower than the "
            f"module's ({dw.shape[0]}); a bottleneck cannot shrink without loss"
        )
    pad = width_r - dw.shape[0]  # a wider bottleneck: extra units read nothing, write nothing
    dw_r = dw @ hm.backward.T
    uw_r = hm.forward.T @ uw
    return {
        dwn: torch.cat([dw_r, dw.new_zeros(pad, dw_r.shape[1])]),
        dbn: torch.cat([db, db.new_zeros(pad)]),
        uwn: torch.cat([uw_r, uw.new_zeros(uw_r.shape[0], pad)], dim=1),
        ubn: ub @ hm.forward,
    }


def _carry_prompt(key: str, split: tuple[str, int, str] | None, c: _Carry) -> dict:
    if not key.endswith("prompt_embedding.weight"):
        raise PortingError(f"align: {key} is not a prompt embedding")
    return {key: c.src(key) @ c.al.get(0, 0).forward}  # soft tokens live in embedding space


# technique -> (its align rule, the families it is implemented for). Compacter and IA3: ALIGN_REFUSES.
ALIGN: dict[str, tuple[Callable[[str, Any, _Carry], dict], tuple[str, ...]]] = {
    "lora": (_carry_lora, ("bert", "llama")),  # GPT-2: a fused c_attn LoRA in a Conv1D
    "adapter": (_carry_adapter, ("bert", "gpt2", "llama")),
    "prompt": (_carry_prompt, ("bert",)),
    "prefix": (lambda key, split, c: _carry_prefix(key, c), ("bert",)),  # PREFIX_KV's families
}
ALIGN_REFUSES = {
    "compacter": "its projections are sums of Kronecker products that a general linear map "
    "does not keep",
    "ia3": "its vectors rescale coordinates, and a rescaling stays one only under a permutation "
    "of the coordinates",
}


def align_problem(technique: str, family: str, stacks: int = 1) -> str | None:
    """Why align cannot carry this technique on this family (None: it can)."""
    if technique in ALIGN_REFUSES:
        return f"align cannot carry {technique} modules: {ALIGN_REFUSES[technique]}"
    rule = ALIGN.get(technique)
    if rule is None:
        return f"align has no rule for {technique} modules"
    if family not in rule[1]:
        return (
            f"align carries {technique} modules on {', '.join(rule[1])} hosts only, not on {family}"
        )
    if stacks != 1:
        return f"align is implemented for hosts with one layer stack; {family} has {stacks}"
    return None


def _align(
    al: Alignment,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    receiver: ReceiverSpec,
    layer_map: ResolvedMap | None,
    keep_receiver_head: bool,
) -> dict[str, torch.Tensor]:
    """The ported condition through the alignment `al` between the hosts' hidden spaces."""
    from peftport.porting import check_header, origin_names

    check_header(meta, receiver, layer_map)
    t = receiver.technique
    stacks = receiver.layer_stacks
    problem = align_problem(t, receiver.family, len(stacks))
    if problem:
        raise PortingError(problem + "; port it with copy or scaled between hosts of one width")
    stack = stacks[0]
    origin_module = meta.get("adapter_name", receiver.name)
    renamed = {_rename(k, origin_module, receiver.name): k for k in tensors}
    exclude = set(receiver.head_keys) if keep_receiver_head else set()
    wanted, unmapped = origin_names(receiver, layer_map, exclude)
    if unmapped:
        raise PortingError(
            f"align: the layer map leaves receiver tensors without a source: "
            f"{', '.join(unmapped[:5])}"
        )
    per_stack = normalise_layer_map(layer_map, stacks)
    lmap = per_stack[stack] if per_stack is not None else None

    def src(key: str) -> torch.Tensor:
        name = wanted[key]
        if name not in renamed:
            raise PortingError(f"align: the module has no tensor {name} for receiver {key}")
        return tensors[renamed[name]].detach().to(torch.float64)

    carry = _Carry(
        src=src,
        origin_name=lambda key: wanted[key],
        origin_layer=lambda j: lmap[j] if lmap is not None else j,
        receiver=receiver,
        al=al,
        stack=stack,
        n_layers=int((receiver.dims.get("layers") or {}).get(stack) or 0),
    )
    rule = ALIGN[t][0]
    out: dict[str, torch.Tensor] = {}
    for key in wanted:
        if key in out:
            continue
        if key in receiver.head_keys:
            out[key] = _align_head(key, src(key), carry)
        else:
            out.update(rule(key, split_layer(key, stacks), carry))
    for key, v in out.items():
        if tuple(v.shape) != receiver.shapes.get(key):
            raise PortingError(
                f"align: {key} came out {tuple(v.shape)}, the receiver has "
                f"{receiver.shapes.get(key)}"
            )
    aligned = {k: v.to(receiver.fresh[k].dtype) for k, v in out.items()}
    # the shape-by-shape check of the result (same names as the receiver, identity map)
    check_compatible(
        aligned, {**meta, "adapter_name": receiver.name}, receiver, None, keep_receiver_head
    )
    for key in receiver.head_keys:
        if key not in aligned and key in receiver.fresh:  # keep_receiver_head
            aligned[key] = receiver.fresh[key].clone()
    return dict(sorted(aligned.items()))


def _rename(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


def _semi_orthogonal(m: torch.Tensor) -> torch.Tensor:
    """The nearest (semi-)orthogonal matrix: U V^T of m = U S V^T (rows orthonormal when
    d_o <= d_r, so x @ E @ E^T = x)."""
    u, _, vh = torch.linalg.svd(m, full_matrices=False)
    return u @ vh


def _carry_prefix(key: str, c: _Carry) -> dict:
    if ".control_trans." not in key and not key.endswith(".wte.weight"):
        raise PortingError(f"align: {key} is not part of a prefix pool")
    family = c.receiver.family
    if family not in PREFIX_KV:
        raise PortingError(
            f"align carries prefixes on {', '.join(PREFIX_KV)} hosts only; "
            f"{family} keeps its keys and values in another layout"
        )
    k_name, v_name = PREFIX_KV[family]
    pool = (
        key.split(".control_trans.")[0] if ".control_trans." in key else key[: -len(".wte.weight")]
    )
    names = [
        f"{pool}.wte.weight",
        f"{pool}.control_trans.0.weight",
        f"{pool}.control_trans.0.bias",
        f"{pool}.control_trans.2.weight",
        f"{pool}.control_trans.2.bias",
    ]
    wte, w0, b0, w2, b2 = (c.src(n) for n in names)
    # the MLP's input space is the prefix's own: any map with E E^T = I leaves it unchanged
    e = _semi_orthogonal(c.al.get(0, 0).forward)
    chunks_w, chunks_b = [], []
    n = c.n_layers
    d_o = w2.shape[0] // (2 * n)
    for part in range(2 * n):  # layer j's key part is 2j, its value part 2j + 1 (adapters)
        j = part // 2
        wname = f"{c.stack}.{j}.{k_name if part % 2 == 0 else v_name}"
        q = _out_map(
            c.al.get(j, j).backward,
            _weight(c.al.origin_weights, wname, "origin"),
            _weight(c.al.receiver_weights, wname, "receiver"),
        )
        chunks_w.append(q.T @ w2[part * d_o : (part + 1) * d_o])
        chunks_b.append(b2[part * d_o : (part + 1) * d_o] @ q)
    return {
        names[0]: wte @ e,
        names[1]: w0 @ e,
        names[2]: b0,
        names[3]: torch.cat(chunks_w),
        names[4]: torch.cat(chunks_b),
    }


def _align_head(key: str, t: torch.Tensor, c: _Carry) -> torch.Tensor:
    family = c.receiver.family
    if family not in HEAD_INPUT or not c.n_layers:
        raise PortingError(
            f"align: no rule for the head {key} on {family} hosts; "
            "keep the receiver's own head (--keep-receiver-head)"
        )
    if key.endswith(".bias"):
        return t  # the labels do not move
    wname = HEAD_INPUT[family]
    last = c.n_layers - 1
    p = c.al.get(c.origin_layer(last) + 1, last + 1).backward
    qb = _back_out_map(
        p,
        _weight(c.al.origin_weights, wname, "origin"),
        _weight(c.al.receiver_weights, wname, "receiver"),
    )
    return t @ qb.T
