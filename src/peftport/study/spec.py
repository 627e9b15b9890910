"""The study file: the axes of a grid, read from YAML or TOML and validated before anything runs.

Every key is documented in docs/study.md. In short:

    name: quick
    techniques: {adapter: {}, lora: {config: {r: 8}, post: {lr: 5.0e-4}}}   # or a list of names
    pairs: [[minilm-l6, minilm-l6-tuned]]    # (origin, receiver); or {origin, receiver, ...}
    both_directions: true                    # also receiver -> origin (per pair too)
    # pairs of different depth: {origin: minilm-l6, receiver: minilm-l3, layer_map: stride}
    # (identity | first_k | stride | cka | [origin layer per receiver layer])
    compare: {texts: 256}                    # host comparisons per directed pair, or false
    hosts: {drift-a: {derive: {from: minilm-l6, steps: 50, lr: 1.0e-3}}}  # derived by the study
    data: [[rotten_tomatoes, rotten_tomatoes], [rotten_tomatoes, amazon_snippets]]  # (pre, post)
    pre_steps: [100]                         # pre-porting steps (checkpoints of one training)
    post_steps: [25, 50]                     # post-porting steps; zero-shot (0) always included
    conditions: [ported, sampled, random]
    seeds: [0, 1]
    train: {lr: 1.0e-3, batch_size: 16, max_length: 64, max_eval_examples: 200}
    pre: {}                                  # overrides of `train` before porting
    post: {}                                 # ... and after porting

Validation collects every problem it finds and raises one `StudyFileError` that lists them, each
with the file, the line (when the format keeps it) and the key: unknown keys (with "did you
mean"), unknown techniques, hosts and data sets, pairs that cannot port (host kinds or shapes
differ; depths may differ when the pair has a layer map, which is checked against them in each
direction), techniques a host kind does not support, bad step counts, bad training settings,
bad `compare` settings and bad derived hosts.
Host shapes are compared from the hosts' config.json when it is on disk without building or
downloading anything (`peftport study plan` stays offline and instant); `study run` resolves the
hosts first and compares them again before any unit starts (`check_resolved_pairs`).
"""

from __future__ import annotations

import hashlib
import json
import re
import tomllib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from peftport.errors import PeftportError
from peftport.layermap import IDENTITY, LayerMap, parse_layer_map

TOP_KEYS = {
    "name": "the study's name (default: the file name)",
    "description": "free text",
    "techniques": "techniques: a list of names, or name -> {config, train, pre, post}",
    "pairs": "host pairs: [origin, receiver] or {origin, receiver, both_directions}",
    "both_directions": "also port receiver -> origin for every pair (default false)",
    "data": "data-set combinations: [pre, post], {pre, post} or one name for both",
    "max_examples": "cut every split of every data set to its first N examples",
    "pre_steps": "pre-porting step counts (checkpoints of one training)",
    "post_steps": "post-porting step counts (zero-shot is always included)",
    "conditions": "porting conditions: ported, sampled, random",
    "seeds": "random seeds",
    "train": "training settings for both phases",
    "pre": "training settings before porting (over `train`)",
    "post": "training settings after porting (over `train`)",
    "keep_adapted": "also store every adapted module (default false: only pre-porting snapshots)",
    "compare": "host comparisons per directed pair: {texts, corpus, max_length, seed} or false",
    "hosts": "hosts the study derives itself: name -> {derive: {from, steps, lr, ...}}",
}
TECHNIQUE_KEYS = ("config", "train", "pre", "post")
PAIR_KEYS = ("origin", "receiver", "both_directions", "layer_map")
# Layer maps (receiver layer -> origin layer, per directed pair) are named by the strategies of
# `peftport.layermap`; an explicit list is strategy "explicit" (in the store's host_pairs table
# too).
COMPARE_KEYS: dict[str, tuple[type, int]] = {  # key -> (type, minimum)
    "texts": (int, 2),
    "corpus": (str, 0),
    "max_length": (int, 4),
    "seed": (int, 0),
}
# `peftport hosts derive` options a study's `hosts: {NAME: {derive: {...}}}` may set
DERIVE_KEYS: dict[str, tuple[type, ...]] = {
    "from": (str,),
    "steps": (int,),
    "lr": (float, int),
    "seed": (int,),
    "corpus": (str,),
    "batch_size": (int,),
    "max_length": (int,),
}
DATA_KEYS = ("pre", "post")
CONDITIONS = ("ported", "sampled", "random")

# TrainConfig fields a study may set; steps, horizon's default, eval_at, seed and threads are the
# planner's (the study's step axes and seeds decide them; threads are the executor's).
TRAIN_FIELDS: dict[str, tuple[type, ...]] = {
    "lr": (float, int),
    "batch_size": (int,),
    "eval_batch_size": (int,),
    "max_length": (int,),
    "warmup_ratio": (float, int),
    "horizon": (int, type(None)),
    "weight_decay": (float, int),
    "max_grad_norm": (float, int),
    "eval_split": (str,),
    "max_eval_examples": (int, type(None)),
    "bf16": (bool,),
}
PLANNER_FIELDS = {
    "steps": "the study's pre_steps / post_steps set it",
    "eval_at": "every step count of the study is evaluated",
    "seed": "the study's seeds set it",
    "threads": "the executor sets it (--threads)",
}

class StudyFileError(PeftportError):
    """One or more problems in a study file; the message lists each with its line and key."""


@dataclass(frozen=True)
class TechniqueSetting:
    name: str
    config: dict[str, Any]  # the full technique config (defaults filled in): part of unit ids
    pre: dict[str, Any]  # TrainConfig fields before porting (study, then technique overrides)
    post: dict[str, Any]  # ... after porting


@dataclass(frozen=True)
class CompareSettings:
    """How the driver compares the hosts of every directed pair (`peftport.hostcompare`)."""

    texts: int = 256
    corpus: str = "rt_plots"
    max_length: int = 64
    seed: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"corpus": self.corpus, "texts": self.texts, "max_length": self.max_length,
                "seed": self.seed}


@dataclass(frozen=True)
class PairMap(LayerMap):
    """A directed pair's layer map as the study file gives it (resolved at run time)."""

    def as_config(self, compare: CompareSettings | None) -> dict[str, Any]:
        """What a post unit's id hashes: the stored form of the map, and for cka the
        comparison settings the map is computed from (so changing them makes new units)."""
        out = self.as_dict()
        if self.strategy == "cka" and compare is not None:
            out["compare"] = compare.as_dict()
        return out


@dataclass(frozen=True)
class DerivedHost:
    """A host the study derives itself (`hosts: {NAME: {derive: {...}}}`), by the recipe code
    of `peftport hosts derive`, installed as a user-derived host under that name."""

    name: str
    parent: str
    settings: tuple[tuple[str, Any], ...]  # DeriveConfig fields given in the file

    def recipe(self) -> tuple[tuple[str, str], ...]:
        from peftport.hosts import derived_recipe

        return derived_recipe(self.name, self.parent, **dict(self.settings))


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    techniques: tuple[TechniqueSetting, ...]
    pairs: tuple[tuple[str, str], ...]  # directed (origin, receiver), reverse directions added
    data: tuple[tuple[str, str], ...]  # (pre-porting data set, post-porting data set)
    pre_steps: tuple[int, ...]  # sorted, each >= 1
    post_steps: tuple[int, ...]  # sorted, each >= 1 (zero-shot is always evaluated besides)
    conditions: tuple[str, ...]
    seeds: tuple[int, ...]
    max_examples: int | None = None
    keep_adapted: bool = False
    source: str = ""  # the file (or "preset NAME") it came from
    notes: tuple[str, ...] = field(default=(), compare=False)  # checks that had to wait
    # directed pairs that carry a layer map (the others port layer i into layer i)
    layer_maps: tuple[tuple[str, str, PairMap], ...] = ()
    compare: CompareSettings | None = CompareSettings()  # None: `compare: false`
    derived_hosts: tuple[DerivedHost, ...] = ()
    # directed pair -> where the file lists it ("s.yaml, line 7, key 'pairs[1]'"), for errors
    # found once the hosts are on disk
    pair_where: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)

    def technique(self, name: str) -> TechniqueSetting:
        return next(t for t in self.techniques if t.name == name)

    def layer_map(self, origin: str, receiver: str) -> PairMap | None:
        return next((m for o, r, m in self.layer_maps if (o, r) == (origin, receiver)), None)

    def where(self, origin: str, receiver: str) -> str:
        return next((w for o, r, w in self.pair_where if (o, r) == (origin, receiver)),
                    self.source)

    def canonical(self) -> dict[str, Any]:
        """Everything that defines the study, JSON-able, in a fixed order."""
        out: dict[str, Any] = {
            "name": self.name,
            "techniques": [{"name": t.name, "config": t.config, "pre": t.pre, "post": t.post}
                           for t in self.techniques],
            "pairs": [list(p) for p in self.pairs],
            "data": [list(d) for d in self.data],
            "pre_steps": list(self.pre_steps),
            "post_steps": list(self.post_steps),
            "conditions": list(self.conditions),
            "seeds": list(self.seeds),
            "max_examples": self.max_examples,
            "keep_adapted": self.keep_adapted,
        }
        # Added only when used, so that studies without them keep the ids they always had (and
        # their stores resume). An identity map is what no map does: not recorded either.
        maps = [[o, r, m.as_config(self.compare)] for o, r, m in self.layer_maps
                if m.strategy != "identity"]
        if maps:
            out["layer_maps"] = maps
        if self.compare != CompareSettings():
            out["compare"] = self.compare.as_dict() if self.compare is not None else False
        if self.derived_hosts:
            out["hosts"] = {d.name: dict(d.recipe()) for d in self.derived_hosts}
        return out

    @property
    def id(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    @property
    def hosts(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(h for p in self.pairs for h in p))

    @property
    def datasets(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(d for c in self.data for d in c))


# --- reading files, with line numbers -----------------------------------------------------


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; learning rates are written that way, so read it as a
    float (a number with an exponent and no dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

Path_ = tuple[str | int, ...]


def key_name(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class _Source:
    """The text of a study file and where each key sits in it."""

    def __init__(self, name: str, text: str, fmt: str, base: Path | None = None) -> None:
        self.name = name
        self.text = text
        self.fmt = fmt
        self.base = base  # the file's folder: relative paths in it are relative to it
        self.lines: dict[Path_, int] = {}
        self.duplicates: list[tuple[Path_, int, int]] = []

    def line(self, path: Path_) -> int | None:
        for n in range(len(path), 0, -1):  # the key itself, else its nearest parent
            if path[:n] in self.lines:
                return self.lines[path[:n]]
            if self.fmt == "toml":
                found = _toml_line(self.text, path[:n])
                if found:
                    return found
        return None

    def where(self, path: Path_) -> str:
        line = self.line(path)
        at = f", line {line}" if line else ""
        return f"{self.name}{at}, key {key_name(path)!r}" if path else self.name


def _toml_line(text: str, path: Path_) -> int | None:
    """TOML keeps no positions: find the line that names the key (a heuristic for messages)."""
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    key = re.escape(names[-1])
    pattern = re.compile(rf'(^|[\s.\[{{,])"?{key}"?\s*(=|\]|\.)')
    for i, line in enumerate(text.splitlines(), 1):
        if pattern.search(line.split("#", 1)[0]):
            return i
    return None


def _walk_yaml(node: yaml.Node, path: Path_, src: _Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            key = knode.value
            line = knode.start_mark.line + 1
            if key in seen:
                src.duplicates.append((path + (key,), seen[key], line))
            seen[key] = line
            src.lines[path + (key,)] = line
            _walk_yaml(vnode, path + (key,), src)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            src.lines[path + (i,)] = item.start_mark.line + 1
            _walk_yaml(item, path + (i,), src)


def _parse_text(text: str, name: str, fmt: str, base: Path | None = None
                ) -> tuple[Any, _Source]:
    src = _Source(name, text, fmt, base)
    if fmt == "toml":
        try:
            return tomllib.loads(text), src
        except tomllib.TOMLDecodeError as e:
            raise StudyFileError(f"{name}: not valid TOML: {e}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyFileError(f"{name}{at}: not valid YAML: {problem}") from None
    if node is not None:
        _walk_yaml(node, (), src)
    return data, src


# --- validation ---------------------------------------------------------------------------


class _Problems:
    def __init__(self, src: _Source) -> None:
        self.src = src
        self.items: list[tuple[int, str]] = []

    def add(self, path: Path_, message: str) -> None:
        line = self.src.line(path) or 0
        item = (line, f"{self.src.where(path)}: {message}")
        if item not in self.items:  # a study-level setting is checked once per technique
            self.items.append(item)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        msgs = [m for _, m in sorted(self.items, key=lambda x: x[0])]
        if len(msgs) == 1:
            raise StudyFileError(msgs[0])
        raise StudyFileError(f"{len(msgs)} problems in {self.src.name}:\n  - " + "\n  - ".join(msgs))


def _did_you_mean(name: str, known: list[str] | tuple[str, ...]) -> str:
    import difflib

    close = difflib.get_close_matches(name, list(known), n=2, cutoff=0.6)
    initials = "".join(w[:1] for w in name.split("_"))  # learning_rate -> lr
    if not close and "_" in name and initials in known:
        close = [initials]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Known keys: {', '.join(known)}."


def _check_keys(obj: dict, allowed, path: Path_, what: str, probs: _Problems) -> None:
    for key in obj:
        if key not in allowed:
            probs.add(path + (str(key),), f"unknown {what} {key!r}." + _did_you_mean(
                str(key), tuple(allowed)))


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _int_list(raw: Any, path: Path_, probs: _Problems, *, minimum: int, what: str,
              allow_zero_drop: bool = False) -> tuple[int, ...]:
    if not isinstance(raw, list) or not raw:
        probs.add(path, f"{what} must be a non-empty list of whole numbers, got {raw!r}")
        return ()
    out: list[int] = []
    for i, v in enumerate(raw):
        if not _int(v):
            probs.add(path + (i,), f"{what} must be whole numbers, got {v!r}")
        elif v < minimum:
            probs.add(path + (i,), f"{what} must be >= {minimum}, got {v}")
        elif v in out:
            probs.add(path + (i,), f"{v} is listed twice")
        else:
            out.append(v)
    if allow_zero_drop:
        out = [v for v in out if v != 0]
    return tuple(sorted(out))


def _train_section(raw: Any, path: Path_, probs: _Problems) -> dict[str, tuple[Any, Path_]]:
    """A `train`/`pre`/`post` mapping -> {field: (value, path)}; bad keys and types reported."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        probs.add(path, f"must be a mapping of training settings, got {raw!r}")
        return {}
    out: dict[str, tuple[Any, Path_]] = {}
    for key, value in raw.items():
        p = path + (str(key),)
        if key in PLANNER_FIELDS:
            probs.add(p, f"{key!r} cannot be set here: {PLANNER_FIELDS[key]}")
            continue
        if key not in TRAIN_FIELDS:
            probs.add(p, f"unknown training setting {key!r}." + _did_you_mean(
                str(key), tuple(TRAIN_FIELDS)))
            continue
        types = TRAIN_FIELDS[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join({float: "a number", int: "a whole number", str: "a string",
                                 bool: "true/false", type(None): "null"}[t] for t in types)
            probs.add(p, f"{key} must be {names}, got {value!r}")
            continue
        if float in types and not isinstance(value, bool) and value is not None:
            value = float(value)
        out[key] = (value, p)
    return out


def _check_train(merged: dict[str, tuple[Any, Path_]], steps: tuple[int, ...], phase_path: Path_,
                 probs: _Problems) -> dict[str, Any]:
    """Build the TrainConfig once to let it check ranges; report at the key that set a field."""
    from peftport.engine import TrainConfig

    values = {k: v for k, (v, _) in merged.items()}
    if not steps and "horizon" not in values:
        return values
    top = max(steps) if steps else 0
    try:
        TrainConfig(steps=top, eval_at=tuple(steps), seed=0, **values)
    except PeftportError as e:
        msg = str(e)
        culprit = next((p for k, (_, p) in merged.items() if k in msg), phase_path)
        if "horizon" in msg and "horizon" in merged:
            culprit = merged["horizon"][1]
            msg = (f"horizon {values['horizon']} is shorter than the longest step count "
                   f"({top})")
        probs.add(culprit, msg)
    return values


def _local(name: str, base: Path | None) -> str:
    """A relative path in a study file is relative to the file's folder."""
    if base is None or Path(name).is_absolute() or not (base / name).exists():
        return name
    return str((base / name).resolve())


def _hosts_ok(name: Any, path: Path_, probs: _Problems, cache: dict, base: Path | None) -> Any:
    from peftport.hosts import HOSTS, get_host

    if not isinstance(name, str) or not name:
        probs.add(path, f"a host must be a host id, a checkpoint folder or a hub id, got {name!r}")
        return None
    if name in cache:
        return cache[name]
    try:
        cache[name] = get_host(name if name in HOSTS else _local(name, base))
    except PeftportError as e:
        probs.add(path, str(e))
        cache[name] = None
    return cache[name]


def _parse(data: Any, src: _Source, default_name: str) -> StudySpec:
    from peftport.techniques import check_supported, get_technique

    probs = _Problems(src)
    if not isinstance(data, dict):
        probs.add((), "a study file must be a mapping of keys (techniques, pairs, data, ...)")
        probs.raise_if_any()
    _check_keys(data, TOP_KEYS, (), "key", probs)
    for dup_path, first, second in src.duplicates:
        probs.add(dup_path, f"given twice (lines {first} and {second})")
    for required in ("techniques", "pairs", "data", "pre_steps", "post_steps", "seeds"):
        if required not in data:
            probs.add((), f"missing required key {required!r} ({TOP_KEYS[required]})")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        probs.add(("name",), f"name must be letters, digits, '-', '_' or '.', got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        probs.add(("description",), "description must be text")
        description = ""

    # steps first: training settings are checked against them
    pre_steps = _int_list(data.get("pre_steps", [1]), ("pre_steps",), probs, minimum=1,
                          what="pre-porting step counts")
    post_steps = _int_list(data.get("post_steps", [0]), ("post_steps",), probs, minimum=0,
                           what="post-porting step counts", allow_zero_drop=True)

    # training settings: study level
    study_train = _train_section(data.get("train"), ("train",), probs)
    study_pre = _train_section(data.get("pre"), ("pre",), probs)
    study_post = _train_section(data.get("post"), ("post",), probs)

    techniques, t_paths = _techniques(data, pre_steps, post_steps, study_train, study_pre,
                                      study_post, probs)
    host_cache: dict[str, Any] = {}
    derived = _derived_hosts(data, probs, host_cache)
    read = _pairs(data, src, probs, host_cache)
    pairs = read.pairs
    compare = _compare(data, probs)
    for pm, mpath in read.maps.values():
        if pm.strategy == "cka" and compare is None:  # once per pair, not per direction
            probs.add(mpath, "layer_map cka is computed from the host comparison, and this "
                      "study sets `compare: false`: remove that, or choose stride")
    for t in (t for t in techniques if not get_technique(t.name).layer_mappable):
        _check_prefix_maps(read, host_cache, t_paths[t.name], probs)
    for t in techniques:  # technique x host kind
        for h in dict.fromkeys(h for p in pairs for h in p):
            spec = host_cache.get(h)
            if spec is None or not spec.family:
                continue
            try:
                check_supported(t.name, spec.family)
            except PeftportError as e:
                probs.add(t_paths[t.name], f"{e} (host {h!r})")
    data_combos = _data_combos(data, src, probs)

    max_examples = data.get("max_examples")
    if max_examples is not None and (not _int(max_examples) or max_examples < 1):
        probs.add(("max_examples",), f"max_examples must be a whole number >= 1 or null, got "
                  f"{max_examples!r}")

    raw_c = data.get("conditions", list(CONDITIONS))
    conditions: list[str] = []
    if not isinstance(raw_c, list) or not raw_c:
        probs.add(("conditions",), f"conditions must be a non-empty list of "
                  f"{', '.join(CONDITIONS)}, got {raw_c!r}")
        raw_c = []
    for i, c in enumerate(raw_c):
        if c not in CONDITIONS:
            probs.add(("conditions", i), f"unknown condition {c!r}; choose from "
                      f"{', '.join(CONDITIONS)}")
        elif c in conditions:
            probs.add(("conditions", i), f"condition {c!r} is listed twice")
        else:
            conditions.append(c)
    conditions.sort(key=CONDITIONS.index)

    seeds = _int_list(data.get("seeds", [0]), ("seeds",), probs, minimum=0, what="seeds")
    keep_adapted = data.get("keep_adapted", False)
    if not isinstance(keep_adapted, bool):
        probs.add(("keep_adapted",), "keep_adapted must be true or false")

    probs.raise_if_any()
    notes = tuple(_unchecked_notes(pairs, host_cache))
    return StudySpec(
        name=name, description=description.strip(), techniques=tuple(techniques),
        pairs=tuple(pairs), data=tuple(data_combos), pre_steps=pre_steps, post_steps=post_steps,
        conditions=tuple(conditions), seeds=seeds, max_examples=max_examples,
        keep_adapted=keep_adapted, source=src.name, notes=notes,
        layer_maps=tuple((o, r, pm) for (o, r), (pm, _) in read.maps.items()),
        compare=compare, derived_hosts=derived,
        pair_where=tuple((o, r, w) for (o, r), w in read.where.items()),
    )


def _check_prefix_maps(read: _Pairs, host_cache: dict, tpath: Path_, probs: _Problems) -> None:
    """Prefix tuning keeps every layer's prefix in one tensor (its MLP output), so no layer map
    that moves layers applies to it: refuse the ones known to move layers now (the driver
    checks the resolved cka maps before any unit starts)."""
    for (o, r), (pm, _) in read.maps.items():
        if pm.strategy in ("identity", "cka"):
            continue
        so, sr = host_cache.get(o), host_cache.get(r)
        oc = cheap_host_config(so) if so is not None else None
        rc = cheap_host_config(sr) if sr is not None else None
        fam = (so.family if so is not None else "") or "bert"
        n_o = host_layers(fam, oc) if oc else None
        n_r = host_layers(fam, rc) if rc else None
        moves = (pm.strategy == "explicit" and list(pm.layers or ()) != list(
            range(len(pm.layers or ())))) or (n_o is not None and n_r is not None and n_o != n_r)
        if moves:
            probs.add(tpath, f"prefix tuning keeps the prefixes of all layers in one tensor, so "
                      f"it cannot take the layer map {pm.describe()} of {o} -> {r}: leave prefix "
                      "out of this study, or port it between hosts of one depth")


def _techniques(data: dict, pre_steps: tuple[int, ...], post_steps: tuple[int, ...],
                study_train: dict, study_pre: dict, study_post: dict, probs: _Problems
                ) -> tuple[list[TechniqueSetting], dict[str, Path_]]:
    from peftport.techniques import ORDER, TECHNIQUES

    techniques: list[TechniqueSetting] = []
    raw_t = data.get("techniques")
    if isinstance(raw_t, list):
        raw_t_map: dict[str, Any] = {}
        for i, t in enumerate(raw_t):
            if not isinstance(t, str):
                probs.add(("techniques", i), f"a technique name, got {t!r}")
            elif t in raw_t_map:
                probs.add(("techniques", i), f"technique {t!r} is listed twice")
            else:
                raw_t_map[t] = None
        t_paths = {t: ("techniques", i) for i, t in enumerate(raw_t) if isinstance(t, str)}
    elif isinstance(raw_t, dict):
        raw_t_map = dict(raw_t)
        t_paths = {t: ("techniques", t) for t in raw_t}
    else:
        if "techniques" in data:
            probs.add(("techniques",), "techniques must be a list of names or a mapping "
                      f"name -> settings, got {raw_t!r}")
        raw_t_map, t_paths = {}, {}
    if isinstance(raw_t, (list, dict)) and not raw_t:
        probs.add(("techniques",), "list at least one technique")
    for tname, settings in raw_t_map.items():
        tpath = t_paths[tname]
        if tname not in TECHNIQUES:
            probs.add(tpath, TECHNIQUES.unknown_message(str(tname)))
            continue
        if settings is None:
            settings = {}
        if not isinstance(settings, dict):
            probs.add(tpath, f"technique settings must be a mapping with keys "
                      f"{', '.join(TECHNIQUE_KEYS)}, got {settings!r}")
            continue
        for key in settings:
            if key not in TECHNIQUE_KEYS:
                hint = (" Technique settings (r, reduction_factor, ...) go under 'config'."
                        if key not in TRAIN_FIELDS else
                        " Training settings go under 'train', 'pre' or 'post'.")
                probs.add(tpath + (str(key),), f"unknown technique key {key!r}; known: "
                          f"{', '.join(TECHNIQUE_KEYS)}.{hint}")
        config_raw = settings.get("config") or {}
        config: dict[str, Any] = {}
        if not isinstance(config_raw, dict):
            probs.add(tpath + ("config",), f"config must be a mapping, got {config_raw!r}")
        else:
            try:
                config = TECHNIQUES.get(tname).make_config(config_raw).as_dict()
            except PeftportError as e:
                bad = next((k for k in config_raw
                            if re.search(rf"\b{re.escape(str(k))}\b", str(e))), None)
                probs.add(tpath + ("config",) + ((bad,) if bad else ()), str(e))
        t_train = _train_section(settings.get("train"), tpath + ("train",), probs)
        t_pre = _train_section(settings.get("pre"), tpath + ("pre",), probs)
        t_post = _train_section(settings.get("post"), tpath + ("post",), probs)
        pre_m = {**study_train, **study_pre, **t_train, **t_pre}
        post_m = {**study_train, **study_post, **t_train, **t_post}
        pre_v = _check_train(pre_m, pre_steps, tpath if t_pre or t_train else ("pre",), probs)
        post_v = _check_train(post_m, post_steps, tpath if t_post or t_train else ("post",),
                              probs)
        techniques.append(TechniqueSetting(tname, config, pre_v, post_v))
    techniques.sort(key=lambda t: ORDER.index(t.name) if t.name in ORDER else len(ORDER))

    return techniques, t_paths


@dataclass
class _Pairs:
    """What `_pairs` read: directed pairs, their layer maps, where the file lists them."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    maps: dict[tuple[str, str], tuple[PairMap, Path_]] = field(default_factory=dict)
    where: dict[tuple[str, str], str] = field(default_factory=dict)


ONE_MAP = ("a study has one layer map per directed pair; to compare maps, run one study per map "
           "into the same store")


def _pairs(data: dict, src: _Source, probs: _Problems, host_cache: dict[str, Any]) -> _Pairs:
    """Directed (origin, receiver) pairs with their layer maps; each listed pair checked (ids,
    families, shapes, and each direction's map against the depths when they are known)."""
    both_default = data.get("both_directions", False)
    if not isinstance(both_default, bool):
        probs.add(("both_directions",), f"both_directions must be true or false, got "
                  f"{both_default!r}")
        both_default = False
    out = _Pairs()
    listed: set[tuple[str, str]] = set()
    raw_p = data.get("pairs")
    if "pairs" in data and (not isinstance(raw_p, list) or not raw_p):
        probs.add(("pairs",), f"pairs must be a non-empty list of [origin, receiver], got "
                  f"{raw_p!r}")
        raw_p = []
    for i, p in enumerate(raw_p or []):
        ppath: Path_ = ("pairs", i)
        both = both_default
        pm: PairMap | None = None
        mpath: Path_ = ppath + ("layer_map",)
        if isinstance(p, list) and len(p) == 2:
            origin, receiver = p
            opath, rpath = ppath + (0,), ppath + (1,)
        elif isinstance(p, dict):
            _check_keys(p, PAIR_KEYS, ppath, "pair key", probs)
            origin, receiver = p.get("origin"), p.get("receiver")
            opath, rpath = ppath + ("origin",), ppath + ("receiver",)
            both = p.get("both_directions", both_default)
            if not isinstance(both, bool):
                probs.add(ppath + ("both_directions",), "both_directions must be true or false")
                both = False
            if "layer_map" in p:
                pm = _layer_map_value(p["layer_map"], mpath, probs)
                if pm is not None and pm.strategy == "explicit" and both:
                    why = ("both_directions: true" if "both_directions" in p else
                           "the study's both_directions: true")
                    probs.add(mpath, f"an explicit layer map (a list indexed by receiver layer) "
                              f"is for one direction, but this pair also ports receiver -> "
                              f"origin ({why}): set both_directions: false on this pair and "
                              "list the reverse pair with its own map")
                    pm = None
        else:
            probs.add(ppath, f"a pair is [origin, receiver] or {{origin: ..., receiver: ...}}, "
                      f"got {p!r}")
            continue
        o = _hosts_ok(origin, opath, probs, host_cache, src.base)
        r = _hosts_ok(receiver, rpath, probs, host_cache, src.base)
        if o is None or r is None:
            continue
        # a map that was refused above is reported there, not again as "depths differ"
        _check_pair(o, r, ppath, probs, pm, mpath, both,
                    mapped=isinstance(p, dict) and "layer_map" in p)
        origin, receiver = o.id, r.id  # local folders: their absolute path
        host_cache.setdefault(origin, o)
        host_cache.setdefault(receiver, r)
        if (origin, receiver) in listed:
            probs.add(ppath, f"pair {origin} -> {receiver} is listed twice ({ONE_MAP})")
            continue
        listed.add((origin, receiver))
        for d in [(origin, receiver)] + ([(receiver, origin)] if both else []):
            if d in out.pairs:  # a reverse direction may also be listed on its own ...
                old = out.maps.get(d, (None, ppath))[0]
                if old != pm:  # ... with the same map
                    probs.add(mpath if pm is not None else ppath,
                              f"pair {d[0]} -> {d[1]} is given twice with different layer maps "
                              f"({old.describe() if old else 'none'} and "
                              f"{pm.describe() if pm else 'none'}; {ONE_MAP})")
                continue
            out.pairs.append(d)
            out.where[d] = src.where(ppath)
            if pm is not None:
                out.maps[d] = (pm, mpath)

    return out


def _layer_map_value(raw: Any, path: Path_, probs: _Problems) -> PairMap | None:
    """`layer_map:` any form `peftport.layermap.parse_layer_map` reads: a strategy name, a list
    of origin layers indexed by receiver layer, or that list as text ("1,3,5" or
    "0:1,1:3,2:5", receiver:origin)."""
    try:
        m = parse_layer_map(raw)
    except PeftportError as e:
        probs.add(path, str(e))
        return None
    return PairMap(m.strategy, m.layers)


def _compare(data: dict, probs: _Problems) -> CompareSettings | None:
    raw = data.get("compare", True)
    if raw is False:
        return None
    if raw is True or raw is None:
        return CompareSettings()
    if not isinstance(raw, dict):
        probs.add(("compare",), f"compare must be false, true or a mapping with keys "
                  f"{', '.join(COMPARE_KEYS)}, got {raw!r}")
        return CompareSettings()
    _check_keys(raw, COMPARE_KEYS, ("compare",), "compare key", probs)
    values: dict[str, Any] = {}
    for key, (typ, minimum) in COMPARE_KEYS.items():
        if key not in raw:
            continue
        v, path = raw[key], ("compare", key)
        if typ is int and (not _int(v) or v < minimum):
            probs.add(path, f"compare.{key} must be a whole number >= {minimum}, got {v!r}")
        elif typ is str and (not isinstance(v, str) or not v):
            probs.add(path, f"compare.{key} must be a name, got {v!r}")
        else:
            values[key] = v
    if "corpus" in values:
        from peftport.data import UNLABELLED

        if values["corpus"] not in UNLABELLED:
            probs.add(("compare", "corpus"), UNLABELLED.unknown_message(values["corpus"]))
            values.pop("corpus")
    return CompareSettings(**values)


def _derived_hosts(data: dict, probs: _Problems, host_cache: dict[str, Any]
                   ) -> tuple[DerivedHost, ...]:
    """`hosts: {NAME: {derive: {from, steps, lr, ...}}}`: checked here, built by `study run`.

    Each becomes a host named NAME (its spec goes into host_cache, so pairs can name it) made by
    the recipe code of `peftport hosts derive`; a parent may be a host declared above it."""
    from peftport.hosts import HOSTS, _derived_home

    raw = data.get("hosts")
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        probs.add(("hosts",), f"hosts must be a mapping name -> {{derive: {{from: PARENT, steps: "
                  f"N, lr: LR}}}}, got {raw!r}")
        return ()
    out: list[DerivedHost] = []
    for name, body in raw.items():
        hpath: Path_ = ("hosts", str(name))
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
            probs.add(hpath, f"a host name is letters, digits, '-', '_' or '.', got {name!r}")
            continue
        if name in HOSTS:
            probs.add(hpath, f"{name!r} is a built-in host; choose another name for a host the "
                      "study derives")
            continue
        if not isinstance(body, dict) or "derive" not in body:
            probs.add(hpath, f"a study host is {{derive: {{from: PARENT, steps: N, lr: LR, "
                      f"...}}}} (`peftport hosts derive` settings), got {body!r}")
            continue
        _check_keys(body, ("derive",), hpath, "host key", probs)
        dpath = hpath + ("derive",)
        settings = body["derive"]
        if not isinstance(settings, dict):
            probs.add(dpath, f"derive must be a mapping with keys {', '.join(DERIVE_KEYS)}, got "
                      f"{settings!r}")
            continue
        _check_keys(settings, DERIVE_KEYS, dpath, "derive key", probs)
        ok = True
        for key, types in DERIVE_KEYS.items():
            v = settings.get(key)
            if key in settings and (not isinstance(v, types) or isinstance(v, bool)):
                kind = "a number" if float in types else ("a whole number" if int in types
                                                          else "a name")
                probs.add(dpath + (key,), f"derive.{key} must be {kind}, got {v!r}")
                ok = False
        if "from" not in settings:
            probs.add(dpath, "derive needs 'from': the parent host (e.g. from: minilm-l6)")
            continue
        parent = _hosts_ok(settings["from"], dpath + ("from",), probs, host_cache, None)
        if parent is None or not ok:
            continue
        if parent.family != "bert":
            fam = parent.family or "unknown-family"
            probs.add(dpath + ("from",), f"derive: parent {parent.id!r} is a {fam} host; "
                      "masked-LM derivation is implemented for BERT-family hosts")
            continue
        kw = {k: (float(v) if k == "lr" else v) for k, v in settings.items()
              if k in DERIVE_KEYS and k != "from"}
        d = DerivedHost(name=name, parent=parent.id, settings=tuple(sorted(kw.items())))
        try:
            recipe = d.recipe()
        except PeftportError as e:  # DeriveConfig's own range checks
            bad = next((k for k in kw if re.search(rf"\b{re.escape(k)}\b", str(e))), None)
            probs.add(dpath + ((bad,) if bad else ()), str(e))
            continue
        installed = _derived_home() / name / "peftport-host.json"
        if installed.exists():
            try:
                old = json.loads(installed.read_text()).get("recipe")
            except (OSError, ValueError):
                old = None
            if old != dict(recipe):
                probs.add(hpath, f"a derived host named {name!r} exists with another recipe "
                          f"({installed.parent}); rename the study's host or delete that folder")
                continue
        host_cache[name] = _declared_spec(name, parent, recipe)
        out.append(d)
    return tuple(out)


def _declared_spec(name: str, parent: Any, recipe: tuple[tuple[str, str], ...]) -> Any:
    """The HostSpec of a host the study derives: installed (by `study run`, or by `peftport
    hosts derive` with the same recipe) or still to be built."""
    from peftport.assets import LocalPath
    from peftport.hosts import _build_derived, _derived_home
    from peftport.hosts.spec import Built, HostSpec

    r = dict(recipe)
    return HostSpec(id=name, family=parent.family, parent=parent.id,
                    description=f"derived from {parent.id} by the study: masked-LM on "
                                f"{r['corpus']}, {r['steps']} steps, lr {r['lr']}, seed {r['seed']}",
                    sources=(LocalPath("", str(_derived_home() / name)),
                             Built(recipe, _build_derived)))


def study_host(spec: StudySpec, name: str) -> Any:
    """The HostSpec of a host of the study: one it derives (installed or not), or `get_host`."""
    from peftport.hosts import get_host

    d = next((d for d in spec.derived_hosts if d.name == name), None)
    if d is None:
        return get_host(name)
    return _declared_spec(name, study_host(spec, d.parent), d.recipe())


def _data_combos(data: dict, src: _Source, probs: _Problems) -> list[tuple[str, str]]:
    data_combos: list[tuple[str, str]] = []
    raw_d = data.get("data")
    if "data" in data and (not isinstance(raw_d, list) or not raw_d):
        probs.add(("data",), f"data must be a non-empty list of [pre, post] data sets, got "
                  f"{raw_d!r}")
        raw_d = []
    ds_cache: dict[str, Any] = {}
    for i, d in enumerate(raw_d or []):
        dpath: Path_ = ("data", i)
        if isinstance(d, str):
            combo, paths = (d, d), (dpath, dpath)
        elif isinstance(d, list) and len(d) == 2:
            combo, paths = (d[0], d[1]), (dpath + (0,), dpath + (1,))
        elif isinstance(d, dict):
            _check_keys(d, DATA_KEYS, dpath, "data key", probs)
            combo, paths = (d.get("pre"), d.get("post")), (dpath + ("pre",), dpath + ("post",))
        else:
            probs.add(dpath, f"a data combination is [pre, post], {{pre: ..., post: ...}} or one "
                      f"data set for both, got {d!r}")
            continue
        specs = [_dataset_ok(n, p, probs, ds_cache, src.base)
                 for n, p in zip(combo, paths, strict=True)]
        if None in specs:
            continue
        combo = (specs[0].id, specs[1].id)  # local files: their absolute path
        if tuple(specs[0].label_words) != tuple(specs[1].label_words):
            probs.add(dpath, f"{combo[0]!r} has labels {list(specs[0].label_words)} and "
                      f"{combo[1]!r} has {list(specs[1].label_words)}: a module trained on one "
                      "cannot be evaluated on the other")
            continue
        if combo in data_combos:
            probs.add(dpath, f"data combination {combo[0]} -> {combo[1]} is listed twice")
            continue
        data_combos.append(combo)  # type: ignore[arg-type]

    return data_combos


def _dataset_ok(name: Any, path: Path_, probs: _Problems, cache: dict, base: Path | None
                ) -> Any:
    from peftport.data import DATASETS, get_dataset

    if not isinstance(name, str) or not name:
        probs.add(path, f"a data set id or a CSV/JSONL file, got {name!r}")
        return None
    if name not in cache:
        try:
            cache[name] = get_dataset(name if name in DATASETS else _local(name, base))
        except PeftportError as e:
            probs.add(path, str(e))
            cache[name] = None
    return cache[name]


# --- can a pair port? ---------------------------------------------------------------------


def pair_problem(origin: str, o_family: str, o_config: dict | None, receiver: str,
                 r_family: str, r_config: dict | None, *, mapped: bool = False) -> str | None:
    """Why a module cannot port from origin to receiver, or None (None too when unknown).

    `mapped`: the pair carries a layer map, so the depths may differ (`map_problem` checks the
    map against them)."""
    from peftport.hosts.spec import LAYOUTS

    if o_family and r_family and o_family != r_family:
        ok, rk = LAYOUTS[o_family].kind, LAYOUTS[r_family].kind
        kinds = f" ({ok} vs {rk})" if ok != rk else ""
        return (f"cannot port {origin} -> {receiver}: {origin} is a {o_family} host and "
                f"{receiver} a {r_family} host{kinds}; a module ports only between hosts of one "
                "family")
    if o_config is None or r_config is None or not (o_family or r_family):
        return None
    layout = LAYOUTS.get(o_family or r_family)
    if layout is None:  # not a family peftport loads: the host's loading says so
        return None
    a, b = layout.shape(o_config), layout.shape(r_config)
    depth = layout.depth_keys
    diff = [f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b.get(k)
            and not (mapped and k in depth)]
    if diff and all(k in depth for k in a if a[k] != b.get(k)):
        return (f"cannot port {origin} -> {receiver}: their depths differ ({', '.join(diff)}); "
                "add `layer_map: stride` (or `cka`) to the pair to give each receiver layer "
                f"an origin layer, e.g. {{origin: {origin}, receiver: {receiver}, layer_map: "
                "stride}")
    if diff:
        return (f"cannot port {origin} -> {receiver}: their shapes differ ({', '.join(diff)}); "
                "module tensors must have the same shapes on both hosts"
                + ("" if mapped else " (a layer map pairs different depths, not widths)"))
    return None


def host_layers(family: str, config: dict[str, Any]) -> int | None:
    """A host's depth as a layer map counts it (T5: its encoder's), or None if unknown."""
    from peftport.hosts.spec import LAYOUTS

    return LAYOUTS[family].depth(config) if family in LAYOUTS else None


def map_problem(origin: str, receiver: str, family: str, o_config: dict | None,
                r_config: dict | None, pm: PairMap | None) -> str | None:
    """Why a directed pair's layer map cannot pair the hosts' layers, or None (None too when a
    depth is unknown, or the map is cka: that one is resolved from the host comparison)."""
    if pm is None or o_config is None or r_config is None:
        return None
    from peftport.hosts.spec import LAYOUTS

    layout = LAYOUTS.get(family)
    if layout is None:
        return None
    keys = layout.depth_keys
    if len(keys) > 1 and pm.strategy != "identity":  # T5: one map for both stacks
        for h, cfg in ((origin, o_config), (receiver, r_config)):
            sig = layout.shape(cfg)
            if len({sig[k] for k in keys}) > 1:
                return (f"layer map for {origin} -> {receiver}: {h} has "
                        + " and ".join(f"{k} {sig[k]}" for k in keys)
                        + "; a study's layer map applies to every layer stack, so each host "
                        "needs one depth")
    n_o, n_r = host_layers(family, o_config), host_layers(family, r_config)
    if n_o is None or n_r is None:
        return None
    return pm.problem(n_o, n_r, subject=f"{origin} -> {receiver}", name="layer_map")


def resolve_pair_map(pm: PairMap | None, n_origin: int, n_receiver: int,
                     comparison: Any = None) -> list[int]:
    """A directed pair's resolved map (receiver layer -> origin layer): identity when it has
    none; cka needs the pair's `HostComparison`. Plain ints (the payload goes to Ray too)."""
    return list((pm or IDENTITY).resolve(n_origin, n_receiver, comparison))


def cheap_host_config(spec: Any) -> dict[str, Any] | None:
    """A host's config.json if it is already on disk; never builds or downloads (None then).

    Derived hosts have their parent's shapes, so the parent's config stands in for theirs.
    """
    from peftport.assets import HubSnapshot, LocalPath, PackageMember, SourceUnavailable
    from peftport.hosts.spec import Built

    for src in spec.sources:
        folder: Path | None = None
        try:
            if isinstance(src, LocalPath):
                folder = src.resolve()
            elif isinstance(src, Built | PackageMember):
                folder = src.cached()  # peeked at: never built or extracted here
            elif isinstance(src, HubSnapshot):
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(src.repo_id, "config.json", revision=src.revision)
                if isinstance(hit, str):
                    return json.loads(Path(hit).read_text())
        except (SourceUnavailable, OSError, ValueError, ImportError):
            continue
        if folder is not None and (folder / "config.json").is_file():
            try:
                return json.loads((folder / "config.json").read_text())
            except (OSError, ValueError):
                continue
    if getattr(spec, "parent", None):
        from peftport.hosts import get_host

        try:
            return cheap_host_config(get_host(spec.parent))
        except PeftportError:
            return None
    return None


def _check_pair(o: Any, r: Any, path: Path_, probs: _Problems, pm: PairMap | None = None,
                mpath: Path_ = (), both: bool = False, mapped: bool = False) -> None:
    """Families and shapes of a listed pair (depths aside when it has a map), and its map in
    each direction it is used (first_k, say, is fine one way and not the other)."""
    problem = pair_problem(o.id, o.family, None, r.id, r.family, None)
    if problem is None and o.family and r.family:
        oc, rc = cheap_host_config(o), cheap_host_config(r)
        problem = pair_problem(o.id, o.family, oc, r.id, r.family, rc,
                               mapped=mapped or pm is not None)
        if problem is None:
            for a, b, ac, bc, rev in ((o, r, oc, rc, False), (r, o, rc, oc, True))[:1 + both]:
                mp = map_problem(a.id, b.id, o.family, ac, bc, pm)
                if mp:
                    probs.add(mpath, mp + (" (the reverse direction: both_directions applies "
                                           "the strategy to each)" if rev else ""))
    if problem:
        probs.add(path, problem)


def _unchecked_notes(pairs: list[tuple[str, str]], cache: dict) -> list[str]:
    out = []
    for o, r in pairs:
        so, sr = cache.get(o), cache.get(r)
        if so is None or sr is None:
            continue
        if not (so.family and sr.family) or cheap_host_config(so) is None or \
                cheap_host_config(sr) is None:
            out.append(f"shapes of {o} -> {r} not compared yet (a host is not on disk); "
                       "`study run` compares them before any unit starts")
    return out


def check_resolved_pairs(spec: StudySpec) -> dict[str, int]:
    """After the hosts are resolved (built or fetched): compare every pair's shapes and check
    every layer map against the depths. Returns each host's depth (layers, as maps count)."""
    from peftport.hosts import get_host, host_folder

    configs: dict[str, tuple[str, dict]] = {}
    for h in spec.hosts:
        folder = host_folder(get_host(h))
        cfg = json.loads((folder / "config.json").read_text())
        configs[h] = (get_host(h).family or cfg.get("model_type", ""), cfg)
    problems = []
    for o, r in spec.pairs:
        pm = spec.layer_map(o, r)
        p = pair_problem(o, configs[o][0], configs[o][1], r, configs[r][0], configs[r][1],
                         mapped=pm is not None) or \
            map_problem(o, r, configs[o][0], configs[o][1], configs[r][1], pm)
        if p:
            problems.append(f"{spec.where(o, r)}: {p}")
    if problems:
        raise StudyFileError(problems[0] if len(problems) == 1 else
                             f"{len(problems)} problems in {spec.source}:\n  - "
                             + "\n  - ".join(problems))
    return {h: host_layers(fam, cfg) or 0 for h, (fam, cfg) in configs.items()}


# --- public entry points ------------------------------------------------------------------


def parse_study(text: str, name: str = "<study>", fmt: str = "yaml",
                default_name: str = "study", base: Path | None = None) -> StudySpec:
    data, src = _parse_text(text, name, fmt, base)
    return _parse(data, src, default_name)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file (.yaml, .yml or .toml)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise StudyFileError(f"no such study file: {p}")
    fmt = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}.get(p.suffix.lower())
    if fmt is None:
        raise StudyFileError(f"{p}: a study file ends in .yaml, .yml or .toml")
    return parse_study(p.read_text(encoding="utf-8"), str(p), fmt, default_name=p.stem,
                       base=p.resolve().parent)


def preset_names() -> list[str]:
    folder = resources.files("peftport.study") / "presets"
    return sorted(f.name.rsplit(".", 1)[0] for f in folder.iterdir()
                  if f.name.endswith((".yaml", ".toml")))


def preset_text(name: str) -> tuple[str, str]:
    """(text, format) of a preset shipped inside the package."""
    folder = resources.files("peftport.study") / "presets"
    for suffix, fmt in ((".yaml", "yaml"), (".toml", "toml")):
        f = folder / f"{name}{suffix}"
        if f.is_file():
            return f.read_text(encoding="utf-8"), fmt
    raise StudyFileError(f"unknown preset {name!r}." + _did_you_mean(name, preset_names())
                         .replace("Known keys", "Presets"))


def load_preset(name: str) -> StudySpec:
    text, fmt = preset_text(name)
    return parse_study(text, f"preset {name}", fmt, default_name=name)


def train_fields() -> list[str]:
    """TrainConfig fields a study may set (for docs and tests)."""
    from peftport.engine import TrainConfig

    known = {f.name for f in fields(TrainConfig)}
    assert set(TRAIN_FIELDS) <= known and set(PLANNER_FIELDS) <= known
    return list(TRAIN_FIELDS)
