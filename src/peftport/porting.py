"""Porting: a module's tensors + a receiving host's description + a condition -> the tensors to
load into the receiver. A pure function: no I/O, no training, inputs never modified.

Conditions (the study's arms):
- `ported`: the module's tensors as trained;
- `sampled`: every tensor replaced by a draw from a normal distribution with THAT tensor's own
  mean and standard deviation (population std, i.e. divided by n; one mean and one std per
  whole tensor, not per row). The draw uses a generator seeded from
  sha256(f"{seed}:{module}:{name}"), where `module` is `module_identity(tensors)` (a digest of
  the module's tensor names, dtypes, shapes and bytes): different modules (an 80-step and a
  300-step snapshot, two data combinations' modules) get independent draws, and the same module
  with the same seed gets the same draw. A constant tensor (std 0) stays that constant;
- `random`: the technique's own fresh initialisation on the receiver for `seed` (training from
  scratch): the tensors the receiver had right after `attach(..., seed=seed)`.

Head policy (`head`, encoder classifiers only, where the classification head is part of the
module): `follow` (the default) treats the head like the rest of the module: sampled with it,
or the receiver's fresh head under `random`. `origin` keeps the module's trained head in every
condition (sampled: the body is drawn, the head copied; random: the receiver's fresh body plus
the module's head), so the comparison isolates the module's body, as in a headless
text-to-text host. Hosts without a head (text-to-text, decoders) accept either: nothing changes.

Before any of that, a compatibility check: the module must come from a host of the receiver's
kind and family, with the same technique and config; after the layer map, every receiver tensor
must find a module tensor of the same name and shape and every module tensor must be used. A
mismatch lists each offending tensor (name, origin shape, receiver shape) and says why.

Layer maps, resolved (`peftport.layermap` parses and resolves them): `{receiver layer index:
origin layer index}` (or a list indexed by receiver layer), applied by rewriting the layer index
in tensor names under the host layout's layer stacks (T5 has two: `encoder.block` and
`decoder.block`; a plain mapping applies to both, or give `{stack: {i: j}}`). Identity by
default. Tensors outside the layer stacks (the Compacter rule matrices, prefix pool, prompt,
head) are not renamed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from peftport.errors import PeftportError
from peftport.layermap import ResolvedMap, normalise_layer_map, split_layer

CONDITIONS = ("ported", "sampled", "random")
HEAD_POLICIES = ("follow", "origin")


def check_head_policy(head: str) -> str:
    """`head` if it is a head policy, else a PeftportError naming the choices."""
    if head not in HEAD_POLICIES:
        raise PeftportError(
            f"unknown head policy {head!r}; choose one of "
            f"{', '.join(HEAD_POLICIES)} (follow: the head follows the "
            "condition; origin: the module's trained head in every condition)"
        )
    return head


class PortingError(PeftportError):
    """The module cannot be ported into this receiver (the message says which tensors, why)."""


@dataclass(frozen=True)
class ReceiverSpec:
    """What porting needs to know about a receiving host with the technique attached.

    Build it with `ReceiverSpec.from_attached` right after `attach` (before any training or
    loading), so that `fresh` holds the technique's own fresh initialisation for `fresh_seed`.
    """

    host_id: str
    fingerprint: str
    kind: str
    family: str
    layer_stacks: tuple[str, ...]
    technique: str
    config: dict[str, Any]
    name: str  # the module's name on the receiver (part of every tensor name)
    shapes: dict[str, tuple[int, ...]]  # expected tensor name -> shape (module + head)
    head_keys: tuple[str, ...]
    fresh: dict[str, torch.Tensor] = field(repr=False)  # fresh init for fresh_seed
    fresh_seed: int
    dims: dict[str, Any] = field(default_factory=dict)  # hidden size, layers per stack

    @classmethod
    def from_attached(
        cls, att: Any, host_id: str = "receiver", fingerprint: str = ""
    ) -> ReceiverSpec:
        """From the `Attached` that `peftport.techniques.attach` returned."""
        from peftport.hosts.spec import LAYOUTS
        from peftport.techniques import module_state

        fresh = module_state(att.model, att.name, include_head=True)
        return cls(
            host_id=host_id,
            fingerprint=fingerprint,
            kind=att.kind,
            family=att.family,
            layer_stacks=LAYOUTS[att.family].layer_stacks,
            technique=att.technique,
            config=att.config.as_dict(),
            name=att.name,
            shapes={k: tuple(v.shape) for k, v in fresh.items()},
            head_keys=tuple(att.head_keys),
            fresh=fresh,
            fresh_seed=att.seed,
            dims=dict(att.dims),
        )


def _rename_part(key: str, old: str, new: str) -> str:
    return ".".join(new if part == old else part for part in key.split("."))


def origin_names(
    receiver: ReceiverSpec, layer_map: ResolvedMap | None, exclude: set[str]
) -> tuple[dict[str, str], list[str]]:
    """receiver tensor name -> the origin tensor name it takes (origin naming, receiver's module
    name); and the receiver tensors that the layer map leaves without a source."""
    per_stack = normalise_layer_map(layer_map, receiver.layer_stacks)
    mapping: dict[str, str] = {}
    unmapped: list[str] = []
    for key in receiver.shapes:
        if key in exclude:
            continue
        split = split_layer(key, receiver.layer_stacks) if per_stack is not None else None
        if split is None:
            mapping[key] = key
            continue
        stack, idx, rest = split
        if idx not in per_stack[stack]:
            unmapped.append(key)
            continue
        mapping[key] = f"{stack}.{per_stack[stack][idx]}.{rest}"
    return mapping, unmapped


def _fmt(shape: tuple[int, ...] | None) -> str:
    return "absent" if shape is None else "(" + ", ".join(map(str, shape)) + ")"


def _why(meta: Mapping[str, Any], receiver: ReceiverSpec) -> str:
    origin_dims = meta.get("host_dims") or {}
    reasons = []
    oh, rh = origin_dims.get("hidden_size"), receiver.dims.get("hidden_size")
    if oh is not None and rh is not None and oh != rh:
        reasons.append(
            f"the hosts' hidden sizes differ (origin {oh}, receiver {rh}) and only "
            "the porting method align (--method align) maps a module between widths"
        )
    ol, rl = origin_dims.get("layers") or {}, receiver.dims.get("layers") or {}
    for stack in receiver.layer_stacks:
        if stack in ol and stack in rl and ol[stack] != rl[stack]:
            reasons.append(
                f"{stack} has {ol[stack]} layers on the origin and {rl[stack]} on the "
                "receiver (a layer map can pair them)"
            )
    if not reasons:
        reasons.append(
            "the hosts differ in a dimension the module's tensors depend on (hidden "
            "size, heads, feed-forward width, depth or vocabulary)"
        )
    return (
        "Porting copies each trained tensor into the tensor of the same name and shape on the "
        "receiver; " + "; ".join(reasons) + ", so these tensors have no place to go."
    )


def check_header(
    meta: Mapping[str, Any], receiver: ReceiverSpec, layer_map: ResolvedMap | None = None
) -> None:
    """Raise PortingError unless the module's host kind, family, technique and config (and, for
    a prefix, the layer map) fit the receiver: everything but the tensors' shapes."""
    kind, family = meta.get("host_kind"), meta.get("host_family")
    if kind != receiver.kind:
        raise PortingError(
            f"wrong host kind: the module was trained on {meta.get('origin_host', '?')} (kind "
            f"{kind}) and the receiver {receiver.host_id} is of kind {receiver.kind}; a "
            "module only ports between hosts of one kind"
        )
    if family != receiver.family:
        raise PortingError(
            f"the module was trained on a host of family {family} and the receiver "
            f"{receiver.host_id} is of family {receiver.family}: tensor names and layouts "
            "differ between families"
        )
    if meta.get("technique") != receiver.technique:
        raise PortingError(
            f"the module is {meta.get('technique')!r} but the receiver was "
            f"prepared with {receiver.technique!r}"
        )
    from peftport.techniques import get_technique, make_config

    config = make_config(receiver.technique, meta.get("config") or {}).as_dict()  # + defaults
    if config != receiver.config:
        diff = sorted(
            k for k in set(config) | set(receiver.config) if config.get(k) != receiver.config.get(k)
        )
        raise PortingError(
            "the receiver must carry the same technique config as the module; differing fields: "
            + ", ".join(
                f"{k} (module {config.get(k)!r}, receiver {receiver.config.get(k)!r})" for k in diff
            )
        )
    if (
        layer_map is not None
        and not get_technique(receiver.technique).layer_mappable
        and any(
            r != o
            for m in (normalise_layer_map(layer_map, receiver.layer_stacks) or {}).values()
            for r, o in m.items()
        )
    ):
        raise PortingError(
            "prefix tuning keeps every layer's prefix in one MLP output tensor; a layer map that "
            "moves layers cannot be applied to it (port between hosts of the same depth)"
        )


def check_compatible(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    receiver: ReceiverSpec,
    layer_map: ResolvedMap | None = None,
    keep_receiver_head: bool = False,
) -> dict[str, str]:
    """Raise PortingError unless the module fits the receiver; return receiver name -> module
    tensor name (the module's own naming)."""
    check_header(meta, receiver, layer_map)
    origin_name = meta.get("adapter_name", receiver.name)
    # the module's tensors, renamed to the receiver's module name
    renamed = {_rename_part(k, origin_name, receiver.name): k for k in tensors}
    exclude = set(receiver.head_keys) if keep_receiver_head else set()
    if receiver.head_keys and not exclude and not set(receiver.head_keys) & set(renamed):
        raise PortingError(
            f"the module carries no classification head and the receiver {receiver.host_id} "
            "needs one: keep the receiver's own fresh head (keep_receiver_head=True, "
            "--keep-receiver-head)"
        )
    wanted, unmapped = origin_names(receiver, layer_map, exclude)

    problems: list[str] = []
    for key in unmapped:
        problems.append(
            f"{key}: receiver {_fmt(receiver.shapes[key])}, no origin layer (the "
            "layer map does not cover this receiver layer)"
        )
    for key, src in wanted.items():
        o = tuple(tensors[renamed[src]].shape) if src in renamed else None
        r = receiver.shapes[key]
        if o != r:
            shown = key if src == key else f"{key} <- {src}"
            problems.append(f"{shown}: origin {_fmt(o)}, receiver {_fmt(r)}")
    used = set(wanted.values()) | (exclude & set(renamed))
    leftover = sorted(
        k
        for k in set(renamed) - used
        if layer_map is None or split_layer(k, receiver.layer_stacks) is None
    )
    for key in leftover:
        problems.append(
            f"{key}: origin {_fmt(tuple(tensors[renamed[key]].shape))}, receiver absent"
        )
    if problems:
        shown = problems[:40] + (
            [f"... and {len(problems) - 40} more"] if len(problems) > 40 else []
        )
        raise PortingError(
            f"cannot port the {receiver.technique} module from {meta.get('origin_host', '?')} "
            f"into {receiver.host_id}: {len(problems)} tensor(s) do not match "
            "(name: origin shape, receiver shape):\n  "
            + "\n  ".join(shown)
            + "\n"
            + _why(meta, receiver)
        )
    return {key: renamed[src] for key, src in wanted.items()}


def module_identity(tensors: Mapping[str, torch.Tensor]) -> str:
    """A digest of a module's content (each tensor's name, dtype, shape and bytes, in name
    order): what makes a sampled draw specific to the module it imitates. Computed from the
    tensors, not from a file's sha256, so a module in memory and its saved copy agree."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _tensor_seed(seed: int, name: str, module: str) -> int:
    digest = hashlib.sha256(f"{seed}:{module}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def sample_like(t: torch.Tensor, seed: int, name: str, module: str) -> torch.Tensor:
    """A draw from N(mean(t), std(t)^2), shaped and typed like t (population std), seeded by
    the seed, the tensor's name and `module` (`module_identity` of the module it imitates)."""
    x = t.detach().to(torch.float64)
    mean = x.mean()
    std = x.std(correction=0) if x.numel() > 1 else torch.zeros((), dtype=torch.float64)
    g = torch.Generator().manual_seed(_tensor_seed(seed, name, module))
    z = torch.randn(t.shape, generator=g, dtype=torch.float64)
    return (mean + std * z).to(t.dtype)


def _module_head(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any], receiver: ReceiverSpec
) -> dict[str, torch.Tensor]:
    """The module's head, named as the receiver has it (random with head origin: the body is
    the receiver's own, so only the header and the head must fit)."""
    check_header(meta, receiver)
    origin_name = meta.get("adapter_name", receiver.name)
    renamed = {_rename_part(k, origin_name, receiver.name): k for k in tensors}
    out, problems = {}, []
    for key in receiver.head_keys:
        o = tuple(tensors[renamed[key]].shape) if key in renamed else None
        if o != receiver.shapes[key]:
            problems.append(f"{key}: origin {_fmt(o)}, receiver {_fmt(receiver.shapes[key])}")
        else:
            out[key] = tensors[renamed[key]].detach().clone()
    if problems:
        raise PortingError(
            f"head policy origin keeps the module's classification head, and the head of the "
            f"module from {meta.get('origin_host', '?')} does not fit {receiver.host_id} "
            "(name: origin shape, receiver shape):\n  " + "\n  ".join(problems)
        )
    return out


def port(
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    receiver: ReceiverSpec,
    condition: str,
    seed: int,
    layer_map: ResolvedMap | None = None,
    *,
    keep_receiver_head: bool = False,
    head: str = "follow",
) -> dict[str, torch.Tensor]:
    """The tensors to load into the receiver (names as the receiver has them).

    `tensors`/`meta`: a module as `peftport.module.load_module` returns it. `seed` drives
    `sampled` and must equal `receiver.fresh_seed` for `random`. `keep_receiver_head`: the
    receiver keeps its own fresh head instead of the module's (encoder classifiers). `head`:
    the head policy (module docstring); moot on a receiver without a head.
    """
    if condition not in CONDITIONS:
        raise PeftportError(
            f"unknown porting condition {condition!r}; choose one of {', '.join(CONDITIONS)}"
        )
    check_head_policy(head)
    keep_origin_head = head == "origin" and bool(receiver.head_keys)
    if keep_origin_head and keep_receiver_head:
        raise PeftportError(
            "head policy origin keeps the module's trained head, and "
            "keep_receiver_head (--keep-receiver-head) keeps the receiver's "
            "fresh one: choose one"
        )
    if condition == "random":
        if seed != receiver.fresh_seed:
            raise PeftportError(
                f"the random condition for seed {seed} needs a receiver initialised with that "
                f"seed; this one was attached with seed {receiver.fresh_seed}"
            )
        if keep_origin_head:  # the module's body is not used: no layer map, any depth
            return dict(
                sorted(
                    {
                        **{k: v.clone() for k, v in receiver.fresh.items()},
                        **_module_head(tensors, meta, receiver),
                    }.items()
                )
            )
        check_compatible(tensors, meta, receiver, layer_map, keep_receiver_head)
        return {k: v.clone() for k, v in receiver.fresh.items()}
    source_of = check_compatible(tensors, meta, receiver, layer_map, keep_receiver_head)
    module = module_identity(tensors) if condition == "sampled" else ""
    out: dict[str, torch.Tensor] = {}
    for key, src in source_of.items():
        t = tensors[src]
        copied = condition == "ported" or (keep_origin_head and key in receiver.head_keys)
        out[key] = t.detach().clone() if copied else sample_like(t, seed, key, module)
    for key in receiver.head_keys:
        if key not in out and key in receiver.fresh:  # keep_receiver_head
            out[key] = receiver.fresh[key].clone()
    return dict(sorted(out.items()))
