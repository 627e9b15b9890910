"""Before porting: what a module needs against what a host has, from configs alone.

`check_port(meta, host)` compares a saved module's metadata with a host's description
(`HostFacts`, read from its config.json and tokenizer by `host_facts`; no weights are loaded)
aspect by aspect: host kind, family, technique support, the technique config against the host,
depth, hidden width, attention heads, vocabulary and label words. Each finding says whether it
is fine, what would make it work (a layer map for a depth change, the `align` porting method for
a width change) or why nothing here can.

Which techniques `align` can carry, and on which families, is `peftport.methods`' rule
(`align_problem`); whether a module has per-layer tensors is read from its tensor file's header.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError

__all__ = ["Finding", "HostFacts", "PortCheck", "check_port", "host_facts", "module_is_per_layer"]

OK, FIX, BLOCK, NOTE = "ok", "fixable", "blocking", "note"
HEADS_KEYS = ("num_attention_heads", "num_heads", "n_head")


@dataclass(frozen=True)
class HostFacts:
    """What a host is, from its config: enough to say whether a module fits."""

    id: str
    family: str
    kind: str
    hidden_size: int | None
    layers: dict[str, int]
    heads: int | None = None
    vocab_size: int | None = None
    label_ids: list[list[int]] | None = None  # label words' candidate token ids (LM kinds)
    label_problem: str | None = None  # why the label words do not work on this host


@dataclass(frozen=True)
class Finding:
    aspect: str
    status: str  # ok | fixable | blocking | note
    module: Any
    host: Any
    say: str = ""


@dataclass(frozen=True)
class PortCheck:
    module: str
    host: str
    findings: list[Finding] = field(default_factory=list)

    @property
    def portable(self) -> bool:
        return not any(f.status == BLOCK for f in self.findings)

    @property
    def needs(self) -> list[str]:
        """The options that make the port work (empty: a plain copy fits)."""
        out = []
        for f in self.findings:
            if f.status == FIX and f.aspect == "depth":
                out.append("--layer-map stride (or first_k, cka, explicit)")
            if f.status == FIX and f.aspect == "width":
                out.append("--method align")
        return out

    def verdict(self) -> str:
        if not self.portable:
            why = "; ".join(f"{f.aspect}: {f.say}" for f in self.findings if f.status == BLOCK)
            return f"cannot port into {self.host}: {why}"
        if self.needs:
            return f"ports into {self.host} with " + " and ".join(self.needs)
        return f"ports into {self.host} as it is (--method copy)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "module": self.module,
            "host": self.host,
            "portable": self.portable,
            "needs": self.needs,
            "verdict": self.verdict(),
            "findings": [asdict(f) for f in self.findings],
        }


def _same(aspect: str, module: Any, host: Any, why_not: str) -> Finding:
    """ok when the module's value equals the host's; else blocking, saying why."""
    return (
        Finding(aspect, OK, module, host)
        if module == host
        else Finding(aspect, BLOCK, module, host, why_not)
    )


def _stack_layers(cfg: Mapping[str, Any], family: str) -> dict[str, int]:
    from peftport.hosts.spec import LAYOUTS

    layout = LAYOUTS[family]
    first = cfg.get(layout.num_layers_key)
    out = {}
    for k, stack in enumerate(layout.layer_stacks):
        n = first if k == 0 else cfg.get("num_decoder_layers") or first
        if n is not None:
            out[stack] = int(n)
    return out


def host_facts(host: str, label_words: list[str] | None = None) -> HostFacts:
    """Read a host's config.json (and, for the label words, its tokenizer): no weights."""
    from peftport.hosts import ENCODER_CLASSIFIER, get_host, host_folder
    from peftport.hosts.spec import LAYOUTS

    spec = get_host(host)
    folder = host_folder(spec)
    cfg = json.loads((folder / "config.json").read_text())
    family = spec.family or cfg.get("model_type", "")
    if family not in LAYOUTS:
        raise PeftportError(
            f"{host}: model_type {family!r} is not a supported family "
            f"(supported: {', '.join(sorted(LAYOUTS))})"
        )
    layout = LAYOUTS[family]
    hidden = cfg.get(layout.hidden_key)
    heads = next((cfg[k] for k in HEADS_KEYS if k in cfg), None)
    label_ids, problem = None, None
    if label_words and layout.kind != ENCODER_CLASSIFIER:
        from transformers import AutoTokenizer

        from peftport.tasks import Framing, candidate_ids

        tok = AutoTokenizer.from_pretrained(str(folder))
        try:
            label_ids = candidate_ids(tok, Framing.for_host(layout.kind, tuple(label_words)))
        except PeftportError as e:
            problem = str(e)
    return HostFacts(
        id=spec.id,
        family=family,
        kind=layout.kind,
        hidden_size=int(hidden) if hidden is not None else None,
        layers=_stack_layers(cfg, family),
        heads=heads,
        vocab_size=cfg.get("vocab_size"),
        label_ids=label_ids,
        label_problem=problem,
    )


def check_port(
    meta: Mapping[str, Any],
    host: HostFacts,
    origin: HostFacts | None = None,
    module: str = "module",
    per_layer: bool = True,
) -> PortCheck:
    """Every aspect of porting this module into this host (pure: metadata and facts in).
    `per_layer`: the module has tensors inside the layer stacks (`module_is_per_layer`)."""
    from peftport.methods import align_problem
    from peftport.techniques import (
        TECHNIQUES,
        get_technique,
        make_config,
        supports,
        unsupported_message,
    )

    technique = meta.get("technique")
    out: list[Finding] = []
    kind, family = meta.get("host_kind"), meta.get("host_family")
    out.append(
        _same(
            "kind",
            kind,
            host.kind,
            "a module only ports between hosts of one kind (the task framing and the head differ)",
        )
    )
    out.append(
        _same(
            "family",
            family,
            host.family,
            "tensor names and layouts differ between families; no porting method maps "
            "one family onto another",
        )
    )
    if supports(technique, host.kind):
        out.append(Finding("technique", OK, technique, "supported"))
    else:
        out.append(
            Finding(
                "technique",
                BLOCK,
                technique,
                "unsupported",
                unsupported_message(technique, host.kind),
            )
        )
    try:
        if host.hidden_size is not None:
            make_config(technique, meta.get("config") or {}).check_host(host.hidden_size, host.id)
        out.append(Finding("config", OK, meta.get("config"), "fits"))
    except PeftportError as e:
        out.append(Finding("config", BLOCK, meta.get("config"), "does not fit", str(e)))

    dims = meta.get("host_dims") or {}
    o_layers, o_hidden = dims.get("layers") or {}, dims.get("hidden_size")
    if origin is not None:
        o_layers, o_hidden = o_layers or origin.layers, o_hidden or origin.hidden_size
    depth_differs = [s for s in host.layers if s in o_layers and o_layers[s] != host.layers[s]]
    mappable = get_technique(technique).layer_mappable if technique in TECHNIQUES else True
    if not o_layers:
        out.append(
            Finding(
                "depth",
                NOTE,
                None,
                host.layers,
                "the module records no host_dims; the port itself checks every tensor",
            )
        )
    elif not depth_differs:
        out.append(Finding("depth", OK, o_layers, host.layers))
    elif not mappable:
        out.append(
            Finding(
                "depth",
                BLOCK,
                o_layers,
                host.layers,
                f"{technique} modules keep every layer in shared tensors: no layer map applies",
            )
        )
    elif not per_layer:
        out.append(
            Finding(
                "depth",
                OK,
                o_layers,
                host.layers,
                f"{technique} modules have no per-layer tensors: they port whole",
            )
        )
    else:
        out.append(
            Finding(
                "depth",
                FIX,
                o_layers,
                host.layers,
                "a layer map pairs the layers: "
                "--layer-map stride (spread evenly), first_k, cka or explicit",
            )
        )

    problem = align_problem(technique, host.family, len(host.layers))
    if o_hidden is None or host.hidden_size is None:
        out.append(Finding("width", NOTE, o_hidden, host.hidden_size, "unknown on one side"))
    elif o_hidden == host.hidden_size:
        out.append(Finding("width", OK, o_hidden, host.hidden_size))
    else:
        if problem:
            blocked = f"the module's tensors are {o_hidden} wide and {problem}"
        elif depth_differs and not mappable:
            blocked = f"{technique} modules port between widths only at the same depth"
        elif _bottleneck(meta, host.hidden_size) < _bottleneck(meta, o_hidden):
            blocked = "the receiver's bottleneck would be narrower than the module's"
        else:
            blocked = ""
        out.append(
            Finding(
                "width",
                BLOCK if blocked else FIX,
                o_hidden,
                host.hidden_size,
                blocked
                or "the porting method align (--method align) maps the "
                "module between the two hidden spaces, fitted on shared unlabelled "
                "text",
            )
        )

    # facts that differ without blocking anything: what the difference means for the module
    for what, mine, theirs, means in (
        (
            "heads",
            origin.heads if origin is not None else None,
            host.heads,
            "attention is split into other heads: shapes may still match, what a head attends to "
            "does not",
        ),
        (
            "vocabulary",
            origin.vocab_size if origin is not None else None,
            host.vocab_size,
            "the hosts tokenize differently: the module sees other token ids (no tensor depends "
            "on the vocabulary; prompts and prefixes were trained on other inputs)",
        ),
    ):
        if mine is not None and theirs is not None and mine != theirs:
            out.append(Finding(what, NOTE, mine, theirs, means))
        else:
            out.append(Finding(what, OK if mine else NOTE, mine, theirs))

    words = list(meta.get("label_words") or [])
    if host.label_problem:
        out.append(Finding("label words", BLOCK, words, None, host.label_problem))
    elif (
        host.label_ids is not None
        and origin is not None
        and origin.label_ids is not None
        and origin.label_ids != host.label_ids
    ):
        out.append(
            Finding(
                "label words",
                NOTE,
                origin.label_ids,
                host.label_ids,
                "the label words are other token ids on this host",
            )
        )
    else:
        out.append(Finding("label words", OK, words, host.label_ids or "head"))
    return PortCheck(module=module, host=host.id, findings=out)


def _bottleneck(meta: Mapping[str, Any], hidden: int) -> int:
    """The bottleneck width a reduction-factor config gives on a host (0: no bottleneck)."""
    factor = (meta.get("config") or {}).get("reduction_factor")
    return hidden // int(factor) if factor else 0


def module_is_per_layer(folder: str | Path, meta: Mapping[str, Any]) -> bool:
    """Whether the module has tensors inside the layer stacks, from its tensor file's header
    (no tensor is read)."""
    from safetensors import safe_open

    from peftport.hosts.spec import LAYOUTS
    from peftport.layermap import split_layer

    stacks = LAYOUTS[meta["host_family"]].layer_stacks
    path = Path(folder) / meta.get("tensor_file", "module.safetensors")
    with safe_open(str(path), "pt") as f:
        names = f.keys()  # the header only
    return any(split_layer(k, stacks) is not None for k in names)


# --- predicted zero-shot retention --------------------------------------------------------------


@dataclass(frozen=True)
class RetentionPoint:
    """One host pair of a stored study: its CKA distance and the technique's zero-shot retention
    there (mean over seeds, pre-porting steps and data of (ported - random) / (origin - random))."""

    store: str
    origin: str
    receiver: str
    distance: float
    retention: float
    seeds: int


def retention_points(store: str | Path, technique: str) -> tuple[list[RetentionPoint], list[str]]:
    """A store's (distance, retention) points for one technique, read-only through the report's
    loader; and notes on what could not be used."""
    from peftport.report.distance import pair_distance, retention_stat
    from peftport.report.load import load_store

    data = load_store(store)
    if data.host_pairs is None:
        return [], [f"{store}: {data.host_pairs_problem or 'no host pairs recorded'}"]
    obs = [o for o in data.observations if o.technique == technique]
    by_key = {
        (o.origin, o.receiver, o.pre_data, o.post_data, o.seed, o.condition, o.pre_steps,
         o.post_steps): o
        for o in obs
    }  # fmt: skip
    origin_runs = {
        (o.origin, o.pre_data, o.seed, o.pre_steps): o for o in obs if o.condition == "origin"
    }
    points, notes, seen = [], [], set()
    for rec in data.host_pairs:
        if (rec.origin, rec.receiver) in seen:
            continue
        seen.add((rec.origin, rec.receiver))
        pair = pair_distance(rec)
        ported = [
            o for o in obs
            if (o.origin, o.receiver) == (rec.origin, rec.receiver)
            and o.condition == "ported" and o.post_steps == 0
        ]  # fmt: skip
        if not ported:
            continue
        if pair.cka_distance is None:
            notes.append(f"{rec.origin} -> {rec.receiver}: {pair.cka_note or 'no CKA distance'}")
            continue
        triples = [
            (
                o,
                by_key.get((o.origin, o.receiver, o.pre_data, o.post_data, o.seed, "random", 0, 0)),
                origin_runs.get((o.origin, o.pre_data, o.seed, o.pre_steps)),
            )
            for o in ported
        ]
        stat = retention_stat(triples)
        if stat.mean is None:
            notes.append(f"{rec.origin} -> {rec.receiver}: no retention ({stat.missing_text()})")
            continue
        points.append(
            RetentionPoint(str(store), rec.origin, rec.receiver, pair.cka_distance, stat.mean,
                           stat.n)
        )  # fmt: skip
    return points, notes


def predict_retention(points: list[RetentionPoint], distance: float) -> dict[str, Any]:
    """Least-squares line of retention on CKA distance over host pairs, evaluated at `distance`
    with its 95% prediction interval (a new pair, not the mean line); or why not."""
    from scipy import stats as sstats

    n = len(points)
    xs = [p.distance for p in points]
    if n < 3 or len(set(xs)) < 2:
        return {
            "predicted": None,
            "pairs": n,
            "why": f"not enough data to predict: {n} host pair(s) with a retention and a CKA "
            "distance; a line with an interval needs 3 or more at 2 or more distances",
        }
    ys = [p.retention for p in points]
    fit = sstats.linregress(xs, ys)
    xbar = sum(xs) / n
    sxx = sum((x - xbar) ** 2 for x in xs)
    resid = sum((y - (fit.intercept + fit.slope * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    s = (resid / (n - 2)) ** 0.5
    half = sstats.t.ppf(0.975, n - 2) * s * (1 + 1 / n + (distance - xbar) ** 2 / sxx) ** 0.5
    predicted = fit.intercept + fit.slope * distance
    return {
        "predicted": predicted,
        "low": predicted - half,
        "high": predicted + half,
        "distance": distance,
        "pairs": n,
        "slope": fit.slope,
        "intercept": fit.intercept,
        "extrapolated": not min(xs) <= distance <= max(xs),
    }


def pair_cka_distance(origin: str, receiver: str, stores: list[str | Path]) -> tuple[float, str]:
    """The CKA distance of a host pair: a stored comparison of that pair when a store has one,
    else a fresh `compare_hosts` (stride map, as the report's default). -> (distance, source)."""
    from peftport.report.distance import pair_distance
    from peftport.report.load import load_store

    for store in stores:
        for rec in load_store(store).host_pairs or []:
            if (rec.origin, rec.receiver) == (origin, receiver):
                d = pair_distance(rec).cka_distance
                if d is not None:
                    return d, f"stored comparison in {store}"
    from peftport.hostcompare import compare_hosts

    return compare_hosts(origin, receiver).distance(), "compared now (256 texts of rt_plots)"


def prediction(meta: Mapping[str, Any], receiver: str, stores: list[str | Path]) -> dict[str, Any]:
    """Predicted zero-shot retention of this module's technique on origin -> receiver from the
    retention-against-distance points of the stores' studies."""
    points, notes = [], []
    for store in stores:
        p, n = retention_points(store, meta["technique"])
        points += p
        notes += n
    if len(points) < 3:
        out = predict_retention(points, 0.0)
        return {**out, "notes": notes}
    distance, source = pair_cka_distance(meta["origin_host"], receiver, stores)
    return {**predict_retention(points, distance), "distance_source": source, "notes": notes}
