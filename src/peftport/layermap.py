"""Layer maps: which origin layer each receiver layer takes when a module ports between hosts.

One value, `LayerMap`: a strategy (`identity`, `first_k`, `stride`, `cka`) or `explicit` with
the origin layer of every receiver layer. It comes from one parser, `parse_layer_map`, whatever
the source:

- the CLI's `--layer-map` and a study file's `layer_map:` text: a strategy name ("stride",
  "First-K"), origin layers per receiver layer ("1,3,5", "[1, 3, 5]") or RECEIVER:ORIGIN pairs
  ("0:1,1:3,2:5", every receiver layer from 0 up once);
- a study file's list ([1, 3, 5]) or mapping ({0: 1, 1: 3});
- the stored form `LayerMap.as_dict()` ({"strategy": "stride"}, {"strategy": "explicit",
  "layers": [1, 3]}; a post unit's config carries it).

One resolver, `LayerMap.resolve(n_origin, n_receiver, comparison)`: the tuple of origin layers
indexed by receiver layer (the maps themselves are `peftport.diagnostics`' identity_map,
first_k_map, stride_map and cka_layer_map). `LayerMap.problem` says, without raising, why a map
does not fit two depths (the study file checks maps before any host is loaded).

A resolved map is what `porting.port` takes: a list indexed by receiver layer, a mapping
{receiver layer: origin layer}, or either per layer stack ({stack: map}, T5's encoder and
decoder). `normalise_layer_map` normalises it, `resolve_stacks` resolves a `LayerMap` for every stack of
a host, and `provenance` / `resolved_json` / `load_resolved` are the forms a ported module's
metadata and the study store keep.
"""

from __future__ import annotations

import difflib
import json
import operator
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftport import diagnostics as dg
from peftport.errors import PeftportError

__all__ = [
    "EXPLICIT",
    "IDENTITY",
    "STRATEGIES",
    "LayerMap",
    "ResolvedMap",
    "load_resolved",
    "parse_layer_map",
    "normalise_layer_map",
    "provenance",
    "resolve_stacks",
    "resolved_json",
    "split_layer",
]

STRATEGIES = ("identity", "first_k", "stride", "cka")
EXPLICIT = "explicit"
FORMS = (
    f"a layer map is one of {', '.join(STRATEGIES)}, or the origin layer of every receiver "
    "layer as a list ([1, 3, 5]) or text ('1,3,5' or '0:1,1:3,2:5')"
)

# receiver layer -> origin layer, as a mapping or as a list indexed by receiver layer; or per
# layer stack: {stack path: one of those}
ResolvedMap = Mapping[int, int] | Sequence[int] | Mapping[str, Mapping[int, int] | Sequence[int]]


def _whole(v: Any) -> bool:
    """An integer (numpy's too), not a bool."""
    return isinstance(v, int | np.integer) and not isinstance(v, bool)


@dataclass(frozen=True)
class LayerMap:
    """A layer map as given, before the depths are known (see the module docstring)."""

    strategy: str  # identity | first_k | stride | cka | explicit
    layers: tuple[int, ...] | None = None  # explicit: origin layer per receiver layer

    def __post_init__(self) -> None:
        if self.strategy == EXPLICIT:
            layers = tuple(self.layers or ())
            if not layers or not all(_whole(v) and v >= 0 for v in layers):
                raise PeftportError(
                    f"an explicit layer map needs the origin layer (0 or more) of every "
                    f"receiver layer, got {self.layers!r}"
                )
            object.__setattr__(self, "layers", tuple(int(v) for v in layers))
        elif self.strategy not in STRATEGIES:
            raise PeftportError(
                f"unknown layer map strategy {self.strategy!r}: choose one of "
                f"{', '.join(STRATEGIES)} or {EXPLICIT}"
            )
        elif self.layers is not None:
            raise PeftportError(f"layer map {self.strategy} takes no layers, got {self.layers!r}")

    def describe(self) -> str:
        """The map in a message: "stride", or "explicit [1, 3]"."""
        if self.strategy == EXPLICIT:
            return f"{EXPLICIT} {list(self.layers or ())}"
        return self.strategy

    def as_dict(self) -> dict[str, Any]:
        """The stored form (part of a post unit's config, hence of its id: keep it stable)."""
        out: dict[str, Any] = {"strategy": self.strategy}
        if self.strategy == EXPLICIT:
            out["layers"] = list(self.layers or ())
        return out

    def problem(
        self, n_origin: int, n_receiver: int, *, subject: str = "it", name: str = "layer map"
    ) -> str | None:
        """Why this map cannot pair these depths, or None. `cka` is None here: it needs the
        host comparison, which `resolve` checks. `subject` names what ports (e.g. "a -> b"),
        `name` the value as the user wrote its key ("layer_map", "layer map")."""
        n_o, n_r = _depth(n_origin, "n_origin"), _depth(n_receiver, "n_receiver")
        ports = f"{subject} ports {n_o} origin layers into {n_r} receiver layers"
        if self.strategy == "identity" and n_o != n_r:
            return (
                f"{name} identity gives receiver layer i origin layer i, but {ports}: use "
                "stride or cka"
            )
        if self.strategy == "first_k" and n_r > n_o:
            return (
                f"{name} first_k gives receiver layer i origin layer i, but {ports} (the "
                "receiver is deeper): use stride (which repeats origin layers) or cka"
            )
        if self.strategy == EXPLICIT:
            layers = list(self.layers or ())
            if len(layers) != n_r:
                which = (
                    f"receiver layer(s) {list(range(len(layers), n_r))} have none"
                    if len(layers) < n_r
                    else f"the receiver has no layer(s) {list(range(n_r, len(layers)))}"
                )
                return (
                    f"{name} {layers} has {len(layers)} entries, but {ports}: give one "
                    f"origin layer per receiver layer ({which})"
                )
            bad = [v for v in layers if v >= n_o]
            if bad:
                return (
                    f"{name} {layers} names origin layer(s) {bad}, but {ports} (origin "
                    f"layers 0..{n_o - 1})"
                )
        return None

    def resolve(
        self, n_origin: int, n_receiver: int, comparison: Any = None, *, subject: str = "it"
    ) -> tuple[int, ...]:
        """The origin layer of every receiver layer (plain ints), or an error saying why the
        map does not fit. `comparison`: for `cka`, the hosts' `HostComparison` or a CKA
        matrix (origin layers x receiver layers)."""
        problem = self.problem(n_origin, n_receiver, subject=subject)
        if problem:
            raise PeftportError(problem)
        n_o, n_r = int(n_origin), int(n_receiver)
        if self.strategy == "identity":
            layers = dg.identity_map(n_r, n_o)
        elif self.strategy == "first_k":
            layers = dg.first_k_map(n_r, n_o)
        elif self.strategy == "stride":
            layers = dg.stride_map(n_r, n_o)
        elif self.strategy == "cka":
            layers = dg.cka_layer_map(_cka_matrix(comparison, n_o, n_r))
        else:
            layers = list(self.layers or ())
        return tuple(int(v) for v in layers)


IDENTITY = LayerMap("identity")


def _depth(n: Any, what: str) -> int:
    if not _whole(n) or n < 1:
        raise PeftportError(f"layer map: {what} must be a whole number of layers >= 1, got {n!r}")
    return int(n)


def _cka_matrix(comparison: Any, n_origin: int, n_receiver: int) -> Any:
    """The (origin x receiver) CKA matrix of a `HostComparison` or of a matrix, checked
    against the depths the map is wanted for."""
    if comparison is None:
        raise PeftportError(
            "the cka layer map needs a host comparison (compare_hosts(origin, receiver)): it "
            "pairs each receiver layer with the most similar origin layer"
        )
    if hasattr(comparison, "origin_layers") and hasattr(comparison, "cka"):  # HostComparison
        c = comparison
        if (c.origin_layers, c.receiver_layers) != (n_origin, n_receiver):
            raise PeftportError(
                f"the host comparison is of {c.origin} ({c.origin_layers} layers) and "
                f"{c.receiver} ({c.receiver_layers} layers), but the layer map is wanted for "
                f"{n_origin} -> {n_receiver} layers"
            )
        return np.asarray(c.cka, dtype=np.float64)
    m = np.asarray(comparison, dtype=np.float64)
    if m.shape != (n_origin, n_receiver):
        raise PeftportError(
            f"the CKA matrix has shape {m.shape}, but the layer map is wanted for {n_origin} -> "
            f"{n_receiver} layers (origin layers x receiver layers)"
        )
    return m


# --- the parser ---------------------------------------------------------------------------


def parse_layer_map(value: Any) -> LayerMap:
    """A `LayerMap` from any form the module docstring lists; errors name the value and say
    what was expected."""
    if isinstance(value, LayerMap):
        return value
    if isinstance(value, str):
        return _from_text(value)
    if isinstance(value, Mapping):
        if "strategy" in value:
            return _from_stored(value)
        return _from_pairs(value, repr(dict(value)))
    if isinstance(value, Sequence | np.ndarray) and not isinstance(value, bytes):
        return _from_list(list(value), repr(list(value)))
    raise PeftportError(
        f"layer map must be a strategy name, a list or a mapping, got {type(value).__name__} "
        f"{value!r}: {FORMS}"
    )


def _unknown(raw: str, name: str) -> PeftportError:
    close = difflib.get_close_matches(name, STRATEGIES, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return PeftportError(f"unknown layer map {raw!r}.{hint} {FORMS[0].upper()}{FORMS[1:]}")


def _from_text(text: str) -> LayerMap:
    raw = text.strip()
    name = raw.lower().replace("-", "_")
    if name in STRATEGIES:
        return LayerMap(name)
    body = raw.removeprefix("[").removesuffix("]").strip()
    if not body:
        raise PeftportError(f"layer map is empty: {FORMS}")
    if name.isidentifier():
        raise _unknown(raw, name)
    parts = [p.strip() for p in body.split(",") if p.strip()]
    if ":" in body or "=" in body:
        pairs: dict[int, int] = {}
        for part in parts:
            m = re.fullmatch(r"(\d+)\s*[:=]\s*(\d+)", part)
            if not m:
                raise PeftportError(
                    f"layer map {raw!r}: entry {part!r} is not RECEIVER:ORIGIN (e.g. 0:1,1:3,2:5)"
                )
            r, o = int(m.group(1)), int(m.group(2))
            if r in pairs:
                raise PeftportError(f"layer map {raw!r} gives receiver layer {r} twice")
            pairs[r] = o
        return _from_pairs(pairs, repr(raw))
    for part in parts:
        if not part.isdigit():
            raise PeftportError(
                f"layer map {raw!r}: {part!r} is neither a strategy ({', '.join(STRATEGIES)}) "
                "nor an origin layer number; write a strategy name, origin layers per receiver "
                "layer ('1,3,5') or RECEIVER:ORIGIN pairs ('0:1,1:3,2:5')"
            )
    return LayerMap(EXPLICIT, tuple(int(p) for p in parts))


def _from_list(values: list[Any], shown: str) -> LayerMap:
    if not values:
        raise PeftportError(f"layer map is empty: {FORMS}")
    for i, v in enumerate(values):
        if not _whole(v) or v < 0:
            raise PeftportError(
                f"layer map {shown}: entry {i} is {v!r}: must be an origin "
                "layer (a whole number, 0 or more)"
            )
    return LayerMap(EXPLICIT, tuple(int(v) for v in values))


def _from_pairs(pairs: Mapping[Any, Any], shown: str) -> LayerMap:
    """{receiver layer: origin layer}, every receiver layer from 0 to the highest named."""
    for k in pairs:
        if not _whole(k) or k < 0:
            raise PeftportError(
                f"layer map {shown}: receiver layer {k!r} is not a whole number (0 or more)"
            )
    if not pairs:
        raise PeftportError(f"layer map is empty: {FORMS}")
    by_index = {int(k): v for k, v in pairs.items()}
    top = max(by_index)
    missing = [j for j in range(top) if j not in by_index]
    if missing:
        raise PeftportError(
            f"layer map {shown} gives no origin layer for receiver layer(s) "
            f"{missing}: every receiver layer from 0 to {top} needs one"
        )
    return _from_list([by_index[j] for j in range(top + 1)], shown)


def _from_stored(d: Mapping[str, Any]) -> LayerMap:
    """`as_dict()`'s form; a unit config's may also carry the cka comparison settings."""
    unknown = sorted(set(d) - {"strategy", "layers", "compare"})
    strategy = d.get("strategy")
    if unknown or not isinstance(strategy, str):
        raise PeftportError(
            f"stored layer map {dict(d)!r}: expected {{'strategy': one of "
            f"{', '.join((*STRATEGIES, EXPLICIT))}, 'layers': [...] for "
            f"{EXPLICIT}}}"
        )
    if strategy == EXPLICIT:
        layers = d.get("layers")
        if not isinstance(layers, list | tuple):
            raise PeftportError(
                f"stored layer map {dict(d)!r}: an explicit map needs its 'layers' list"
            )
        return _from_list(list(layers), repr(list(layers)))
    if "layers" in d:
        raise PeftportError(f"stored layer map {dict(d)!r}: only an explicit map has 'layers'")
    if strategy not in STRATEGIES:
        raise _unknown(strategy, strategy)
    return LayerMap(strategy)


# --- resolved maps: per layer stack, in tensor names, stored --------------------------------


def split_layer(key: str, stacks: Sequence[str]) -> tuple[str, int, str] | None:
    """'bert.encoder.layer.3.output...' -> ('bert.encoder.layer', 3, 'output...')."""
    for stack in stacks:
        if key.startswith(stack + "."):
            idx, _, rest = key[len(stack) + 1 :].partition(".")
            if idx.isdigit():
                return stack, int(idx), rest
    return None


def normalise_layer_map(
    layer_map: ResolvedMap | None, stacks: Sequence[str]
) -> dict[str, dict[int, int]] | None:
    """A resolved map as {stack: {receiver index: origin index}} for every stack; None for
    identity (no map). A plain map applies to every stack."""
    if layer_map is None:
        return None

    def as_dict(m: Any) -> dict[int, int]:
        if isinstance(m, Mapping):
            return dict(m)
        if isinstance(m, Sequence) and not isinstance(m, str):
            return dict(enumerate(m))  # index = receiver layer
        raise PeftportError(f"layer map must be a mapping or a list, got {type(m).__name__}")

    if isinstance(layer_map, Mapping) and layer_map and all(isinstance(k, str) for k in layer_map):
        unknown = sorted(set(layer_map) - set(stacks))
        if unknown:
            raise PeftportError(
                f"layer map names unknown layer stacks {unknown}; this host has {list(stacks)}"
            )
        per_stack_maps = {s: as_dict(layer_map.get(s, {})) for s in stacks}
    else:
        per_stack_maps = {s: as_dict(layer_map) for s in stacks}
    out: dict[str, dict[int, int]] = {}
    for s, m in per_stack_maps.items():
        out[s] = {}
        for r, o in m.items():
            try:  # numpy integers are fine, floats and strings are not
                ri, oi = operator.index(r), operator.index(o)
            except TypeError:
                ri = oi = -1
            if ri < 0 or oi < 0 or isinstance(r, bool) or isinstance(o, bool):
                raise PeftportError(
                    f"layer map for {s}: entries must be non-negative "
                    f"integers (receiver -> origin), got {r!r}: {o!r}"
                )
            out[s][ri] = oi
    return out


def resolve_stacks(
    layer_map: LayerMap,
    origin_layers: Mapping[str, int],
    receiver_layers: Mapping[str, int],
    stacks: Sequence[str],
    comparison: Any = None,
    *,
    subject: str = "it",
) -> tuple[dict[str, tuple[int, ...]], str]:
    """`layer_map` resolved for every stack whose depths are known on both sides (the others
    are stacks a module does not touch), and a note ("" if none). A cka map comes from the
    comparison of the main stack (the first); further stacks (T5's decoder) get stride."""
    maps: dict[str, tuple[int, ...]] = {}
    note = ""
    for k, stack in enumerate(stacks):
        n_o, n_r = origin_layers.get(stack), receiver_layers.get(stack)
        if not n_o or not n_r:
            continue
        who = f"{subject} ({stack})" if subject != "it" else stack
        if layer_map.strategy == "cka" and k > 0:
            maps[stack] = LayerMap("stride").resolve(n_o, n_r, subject=who)
            note = (
                f"cka maps {stacks[0]} (the compared stack); {', '.join(stacks[1:])} "
                "mapped by stride"
            )
        else:
            maps[stack] = layer_map.resolve(n_o, n_r, comparison, subject=who)
    return maps, note


def provenance(
    maps: Mapping[str, Sequence[int]], stacks: Sequence[str]
) -> tuple[ResolvedMap, dict[str, Any]]:
    """Stacks' resolved maps -> (the map `porting.port` takes, the form a ported module's
    metadata records: {"0": 1, ...}, or per stack {stack: {"0": 1, ...}} when they differ)."""
    values = [list(m) for m in maps.values()]
    if len(maps) == len(stacks) and all(v == values[0] for v in values):
        return dict(enumerate(values[0])), {str(j): o for j, o in enumerate(values[0])}
    return (
        {s: dict(enumerate(m)) for s, m in maps.items()},
        {s: {str(j): o for j, o in enumerate(m)} for s, m in maps.items()},
    )


def resolved_json(layers: Sequence[int]) -> str:
    """The study store's form of a resolved map: a JSON list of origin layers."""
    return json.dumps([int(x) for x in layers])


def load_resolved(text: str | None, stack: Any = None) -> list[Any]:
    """`resolved_json`'s inverse, also for a map stored per stack ({stack: list}); entries are
    returned as stored (the caller checks them against its depths)."""
    try:
        value = json.loads(text) if text is not None else None
    except (TypeError, ValueError):
        raise PeftportError(f"its layer_map is not JSON: {str(text)[:60]!r}") from None
    if isinstance(value, dict) and stack in value:  # one list per stack (encoder-decoder hosts)
        value = value[stack]
    if not isinstance(value, list) or not value:
        raise PeftportError(f"its layer_map is not a list of origin layers: {str(text)[:60]!r}")
    return value
