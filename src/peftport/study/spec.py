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
    methods: [copy, scaled:0.5]              # how ported carries a module (default [copy])
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
hosts first and compares them again before any unit starts (`check_resolved_pairs`); those
checks are in `peftport.study.pairchecks`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from peftport.configfields import by_key
from peftport.configs import CompareSettings
from peftport.errors import PeftportError
from peftport.layermap import parse_layer_map
from peftport.study.derived import DerivedHost, derived_hosts
from peftport.study.derived import study_host as study_host  # where callers import it from
from peftport.study.pairchecks import (
    PairMap,
    cheap_host_config,
    check_pair,
    host_layers,
    unchecked_notes,
)
from peftport.study.source import (
    MAX_STUDY_BYTES,
    Path_,
    Source,
    StudyFileError,
    decode,
    parse_text,
)
from peftport.study.specmethods import read_methods, skip_notes
from peftport.study.validate import (
    MAX_INT,
    check_keys,
    config_section,
    did_you_mean,
    host_ok,
    int_list,
    read_data,
)
from peftport.study.validate import Problems as _Problems
from peftport.study.validate import is_int as _int

TOP_KEYS = {
    "name": "the study's name (default: the file name)",
    "description": "free text",
    "techniques": "techniques: a list of names, or name -> {config, train, pre, post, pre_steps}",
    "pairs": "host pairs: [origin, receiver] or {origin, receiver, both_directions}",
    "both_directions": "also port receiver -> origin for every pair (default false)",
    "data": "data-set combinations: [pre, post], {pre, post} or one name for both",
    "max_examples": "cut every split of every data set to its first N examples",
    "pre_steps": "pre-porting step counts (checkpoints of one training)",
    "post_steps": "post-porting step counts (zero-shot is always included)",
    "conditions": "porting conditions: ported, sampled, random",
    "methods": "porting methods of the ported condition (default [copy]): copy, scaled:F, "
    "subspace[:rank], align[:fit] (docs/porting-methods.md)",
    "seeds": "random seeds",
    "train": "training settings for both phases",
    "pre": "training settings before porting (over `train`)",
    "post": "training settings after porting (over `train`)",
    "keep_adapted": "also store every adapted module (default false: only pre-porting snapshots)",
    "head_policy": "encoder classifiers' head under sampled/random: follow (default: drawn with "
    "the condition) or origin (the origin's trained head in every condition)",
    "compare": "host comparisons per directed pair: {texts, corpus, max_length, seed} or false",
    "hosts": "hosts the study derives itself: name -> {derive: {from, steps, lr, ...}}",
}
TECHNIQUE_KEYS = ("config", "train", "pre", "post", "pre_steps")
PAIR_KEYS = ("origin", "receiver", "both_directions", "layer_map")
# Layer maps (receiver layer -> origin layer, per directed pair) are named by the strategies of
# `peftport.layermap`; an explicit list is strategy "explicit" (in the store's host_pairs table
# too).

CONDITIONS = ("ported", "sampled", "random")

# TrainConfig fields a study may not set (why not): the planner's (the study's step axes and
# seeds decide them; threads are the executor's). Every other field may be set, checked from its
# description on TrainConfig (`train_fields`).
PLANNER_FIELDS = {
    "steps": "the study's pre_steps / post_steps set it",
    "eval_at": "every step count of the study is evaluated",
    "seed": "the study's seeds set it",
    "threads": "the executor sets it (--threads)",
    "device": "the machine decides it (`peftport study run --device`), not the study",
}


@dataclass(frozen=True)
class TechniqueSetting:
    name: str
    config: dict[str, Any]  # the full technique config (defaults filled in): part of unit ids
    pre: dict[str, Any]  # TrainConfig fields before porting (study, then technique overrides)
    post: dict[str, Any]  # ... after porting
    # the technique's own pre-porting step counts (a technique that learns slower may train
    # longer before porting); () = the study's `pre_steps`
    pre_steps: tuple[int, ...] = ()


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
    head_policy: str = "follow"  # peftport.porting.HEAD_POLICIES
    methods: tuple[str, ...] = ("copy",)  # canonical texts (study/specmethods.py)
    # (technique, method, why) a method cannot carry: not planned (follows from the above)
    method_skips: tuple[tuple[str, str, str], ...] = field(default=(), compare=False)
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

    def pre_steps_of(self, name: str) -> tuple[int, ...]:
        """The pre-porting step counts of one technique: its own, else the study's."""
        return self.technique(name).pre_steps or self.pre_steps

    def layer_map(self, origin: str, receiver: str) -> PairMap | None:
        return next((m for o, r, m in self.layer_maps if (o, r) == (origin, receiver)), None)

    def where(self, origin: str, receiver: str) -> str:
        return next((w for o, r, w in self.pair_where if (o, r) == (origin, receiver)), self.source)

    def canonical(self) -> dict[str, Any]:
        """Everything that defines the study, JSON-able, in a fixed order."""
        out: dict[str, Any] = {
            "name": self.name,
            # a technique's own pre_steps only when it has them: other studies keep their ids
            "techniques": [
                {"name": t.name, "config": t.config, "pre": t.pre, "post": t.post}
                | ({"pre_steps": list(t.pre_steps)} if t.pre_steps else {})
                for t in self.techniques
            ],
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
        maps = [
            [o, r, m.as_config(self.compare)]
            for o, r, m in self.layer_maps
            if m.strategy != "identity"
        ]
        if maps:
            out["layer_maps"] = maps
        if self.compare != CompareSettings():
            out["compare"] = self.compare.as_dict() if self.compare is not None else False
        if self.head_policy != "follow":
            out["head_policy"] = self.head_policy
        if self.methods != ("copy",):
            out["methods"] = list(self.methods)
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


# --- validation ---------------------------------------------------------------------------


def _train_section(raw: Any, path: Path_, probs: _Problems) -> dict[str, tuple[Any, Path_]]:
    """A `train`/`pre`/`post` mapping -> {field: (value, path)}; bad keys and values reported."""
    from peftport.configs import TrainConfig

    if raw is None:
        return {}
    if not isinstance(raw, dict):
        probs.add(path, f"must be a mapping of training settings, got {raw!r}")
        return {}
    return config_section(
        TrainConfig, raw, path, probs, what="training setting", refused=PLANNER_FIELDS
    )


def _check_train(
    merged: dict[str, tuple[Any, Path_]],
    steps: tuple[int, ...],
    phase_path: Path_,
    probs: _Problems,
) -> dict[str, Any]:
    """Build the TrainConfig once to let it check ranges; report at the key that set a field."""
    from peftport.configs import TrainConfig

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
            msg = f"horizon {values['horizon']} is shorter than the longest step count ({top})"
        probs.add(culprit, msg)
    return values


def _parse(data: Any, src: Source, default_name: str) -> StudySpec:
    from peftport.techniques import check_supported, get_technique

    probs = _Problems(src)
    if not isinstance(data, dict):
        probs.add((), "a study file must be a mapping of keys (techniques, pairs, data, ...)")
        probs.raise_if_any()
    check_keys(data, TOP_KEYS, (), "key", probs)
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
    pre_steps = int_list(
        data.get("pre_steps", [1]), ("pre_steps",), probs, minimum=1, what="pre-porting step counts"
    )
    post_steps = int_list(
        data.get("post_steps", [0]),
        ("post_steps",),
        probs,
        minimum=0,
        what="post-porting step counts",
        allow_zero_drop=True,
    )

    # training settings: study level
    study_train = _train_section(data.get("train"), ("train",), probs)
    study_pre = _train_section(data.get("pre"), ("pre",), probs)
    study_post = _train_section(data.get("post"), ("post",), probs)

    techniques, t_paths = _techniques(
        data, pre_steps, post_steps, study_train, study_pre, study_post, probs
    )
    host_cache: dict[str, Any] = {}
    derived = derived_hosts(data, probs, host_cache)
    read = _pairs(data, src, probs, host_cache)
    pairs = read.pairs
    compare = _compare(data, probs)
    for pm, mpath in read.maps.values():
        if pm.strategy == "cka" and compare is None:  # once per pair, not per direction
            probs.add(
                mpath,
                "layer_map cka is computed from the host comparison, and this "
                "study sets `compare: false`: remove that, or choose stride",
            )
    for t in (t for t in techniques if not get_technique(t.name).layer_mappable):
        _check_prefix_maps(read, host_cache, t_paths[t.name], probs)
    for t in techniques:  # technique x host kind
        for h in dict.fromkeys(h for p in pairs for h in p):
            spec = host_cache.get(h)
            if spec is None or not spec.family:
                continue
            try:
                check_supported(t.name, spec.family)
                _check_width(t, spec)
            except PeftportError as e:
                probs.add(t_paths[t.name], f"{e} (host {h!r})")
    _check_max_lengths(data, techniques, t_paths, pairs, host_cache, probs)
    data_combos = read_data(data, src, probs)

    max_examples = data.get("max_examples")
    if max_examples is not None and (not _int(max_examples) or not 1 <= max_examples <= MAX_INT):
        probs.add(
            ("max_examples",),
            f"max_examples must be a whole number from 1 to {MAX_INT} or null, got "
            f"{max_examples!r}",
        )

    raw_c = data.get("conditions", list(CONDITIONS))
    conditions: list[str] = []
    if not isinstance(raw_c, list) or not raw_c:
        probs.add(
            ("conditions",),
            f"conditions must be a non-empty list of {', '.join(CONDITIONS)}, got {raw_c!r}",
        )
        raw_c = []
    for i, c in enumerate(raw_c):
        if c not in CONDITIONS:
            probs.add(
                ("conditions", i), f"unknown condition {c!r}; choose from {', '.join(CONDITIONS)}"
            )
        elif c in conditions:
            probs.add(("conditions", i), f"condition {c!r} is listed twice")
        else:
            conditions.append(c)
    conditions.sort(key=CONDITIONS.index)

    seeds = int_list(data.get("seeds", [0]), ("seeds",), probs, minimum=0, what="seeds")
    keep_adapted = data.get("keep_adapted", False)
    if not isinstance(keep_adapted, bool):
        probs.add(("keep_adapted",), "keep_adapted must be true or false")
    from peftport.porting import HEAD_POLICIES

    head_policy = data.get("head_policy", "follow")
    if head_policy not in HEAD_POLICIES:
        probs.add(
            ("head_policy",),
            f"head_policy must be one of {', '.join(HEAD_POLICIES)}, got {head_policy!r}",
        )

    methods, method_skips = read_methods(
        data,
        [t.name for t in techniques],
        {
            h: host_cache[h].family
            for p in pairs
            for h in p
            if host_cache.get(h) is not None and host_cache[h].family
        },
        conditions,
        probs,
    )

    probs.raise_if_any()
    notes = tuple(unchecked_notes(pairs, host_cache)) + tuple(skip_notes(method_skips))
    return StudySpec(
        name=name,
        description=description.strip(),
        techniques=tuple(techniques),
        pairs=tuple(pairs),
        data=tuple(data_combos),
        pre_steps=pre_steps,
        post_steps=post_steps,
        conditions=tuple(conditions),
        seeds=seeds,
        max_examples=max_examples,
        keep_adapted=keep_adapted,
        head_policy=head_policy,
        source=src.name,
        methods=methods,
        method_skips=method_skips,
        notes=notes,
        layer_maps=tuple((o, r, pm) for (o, r), (pm, _) in read.maps.items()),
        compare=compare,
        derived_hosts=derived,
        pair_where=tuple((o, r, w) for (o, r), w in read.where.items()),
    )


def _check_width(t: TechniqueSetting, spec: Any) -> None:
    """The technique's config against the host's hidden width (Compacter's reduction factor and
    PHM dimension must divide it), from config.json when it is on disk: refused here, before
    any unit, instead of by every unit at run time."""
    from peftport.hosts.spec import LAYOUTS
    from peftport.techniques import make_config

    cfg = cheap_host_config(spec)
    layout = LAYOUTS.get(spec.family)
    width = cfg.get(layout.hidden_key) if cfg and layout else None
    if isinstance(width, int) and not isinstance(width, bool):
        make_config(t.name, t.config).check_host(width, spec.id)


def _check_max_lengths(
    data: dict,
    techniques: list[TechniqueSetting],
    t_paths: dict,
    pairs: list[tuple[str, str]],
    host_cache: dict,
    probs: _Problems,
) -> None:
    """Each phase's max_length against the position table of the hosts it runs on (pre: the
    origins; post: the receivers), from config.json when it is on disk (`cheap_host_config`;
    `check_resolved_pairs` checks again once every host is)."""
    from peftport.configs import TrainConfig
    from peftport.hostlimits import max_length_problem

    default = TrainConfig(steps=0).max_length
    for t in techniques:
        tp = t_paths[t.name]
        for phase, values, hosts in (
            ("pre", t.pre, [o for o, _ in pairs]),
            ("post", t.post, [r for _, r in pairs]),
        ):
            ml = values.get("max_length", default)
            at = next(
                (
                    p
                    for p in (
                        tp + (phase, "max_length"),
                        tp + ("train", "max_length"),
                        (phase, "max_length"),
                        ("train", "max_length"),
                    )
                    if _has(data, p)
                ),
                tp,
            )
            for h in dict.fromkeys(hosts):
                spec = host_cache.get(h)
                cfg = cheap_host_config(spec) if spec is not None else None
                problem = max_length_problem(h, cfg, ml) if cfg else None
                if problem:
                    probs.add(at, problem)


def _has(data: Any, path: Path_) -> bool:
    for part in path:
        if isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return False
    return True


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
        moves = (
            pm.strategy == "explicit" and list(pm.layers or ()) != list(range(len(pm.layers or ())))
        ) or (n_o is not None and n_r is not None and n_o != n_r)
        if moves:
            probs.add(
                tpath,
                f"prefix tuning keeps the prefixes of all layers in one tensor, so "
                f"it cannot take the layer map {pm.describe()} of {o} -> {r}: leave prefix "
                "out of this study, or port it between hosts of one depth",
            )


def _techniques(
    data: dict,
    pre_steps: tuple[int, ...],
    post_steps: tuple[int, ...],
    study_train: dict,
    study_pre: dict,
    study_post: dict,
    probs: _Problems,
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
            probs.add(
                ("techniques",),
                f"techniques must be a list of names or a mapping name -> settings, got {raw_t!r}",
            )
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
            probs.add(
                tpath,
                f"technique settings must be a mapping with keys "
                f"{', '.join(TECHNIQUE_KEYS)}, got {settings!r}",
            )
            continue
        for key in settings:
            if key not in TECHNIQUE_KEYS:
                hint = (
                    " Technique settings (r, reduction_factor, ...) go under 'config'."
                    if key not in train_fields()
                    else " Training settings go under 'train', 'pre' or 'post'."
                )
                probs.add(
                    tpath + (str(key),),
                    f"unknown technique key {key!r}; known: {', '.join(TECHNIQUE_KEYS)}.{hint}",
                )
        config_raw = settings.get("config") or {}
        config: dict[str, Any] = {}
        if not isinstance(config_raw, dict):
            probs.add(tpath + ("config",), f"config must be a mapping, got {config_raw!r}")
        else:
            try:
                config = TECHNIQUES.get(tname).make_config(config_raw).as_dict()
            except PeftportError as e:
                bad = next(
                    (k for k in config_raw if re.search(rf"\b{re.escape(str(k))}\b", str(e))), None
                )
                probs.add(tpath + ("config",) + ((bad,) if bad else ()), str(e))
        t_train = _train_section(settings.get("train"), tpath + ("train",), probs)
        t_pre = _train_section(settings.get("pre"), tpath + ("pre",), probs)
        t_post = _train_section(settings.get("post"), tpath + ("post",), probs)
        own_pre: tuple[int, ...] = ()
        if "pre_steps" in settings:
            own_pre = int_list(
                settings["pre_steps"],
                tpath + ("pre_steps",),
                probs,
                minimum=1,
                what=f"{tname}'s pre-porting step counts",
            )
        pre_m = {**study_train, **study_pre, **t_train, **t_pre}
        post_m = {**study_train, **study_post, **t_train, **t_post}
        pre_path = tpath if t_pre or t_train or own_pre else ("pre",)
        pre_v = _check_train(pre_m, own_pre or pre_steps, pre_path, probs)
        post_v = _check_train(post_m, post_steps, tpath if t_post or t_train else ("post",), probs)
        techniques.append(TechniqueSetting(tname, config, pre_v, post_v, own_pre))
    techniques.sort(key=lambda t: ORDER.index(t.name) if t.name in ORDER else len(ORDER))

    return techniques, t_paths


@dataclass
class _Pairs:
    """What `_pairs` read: directed pairs, their layer maps, where the file lists them."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    maps: dict[tuple[str, str], tuple[PairMap, Path_]] = field(default_factory=dict)
    where: dict[tuple[str, str], str] = field(default_factory=dict)


ONE_MAP = (
    "a study has one layer map per directed pair; to compare maps, run one study per map "
    "into the same store"
)


def _pairs(data: dict, src: Source, probs: _Problems, host_cache: dict[str, Any]) -> _Pairs:
    """Directed (origin, receiver) pairs with their layer maps; each listed pair checked (ids,
    families, shapes, and each direction's map against the depths when they are known)."""
    both_default = data.get("both_directions", False)
    if not isinstance(both_default, bool):
        probs.add(
            ("both_directions",), f"both_directions must be true or false, got {both_default!r}"
        )
        both_default = False
    out = _Pairs()
    listed: set[tuple[str, str]] = set()
    raw_p = data.get("pairs")
    if "pairs" in data and (not isinstance(raw_p, list) or not raw_p):
        probs.add(
            ("pairs",), f"pairs must be a non-empty list of [origin, receiver], got {raw_p!r}"
        )
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
            check_keys(p, PAIR_KEYS, ppath, "pair key", probs)
            origin, receiver = p.get("origin"), p.get("receiver")
            opath, rpath = ppath + ("origin",), ppath + ("receiver",)
            both = p.get("both_directions", both_default)
            if not isinstance(both, bool):
                probs.add(ppath + ("both_directions",), "both_directions must be true or false")
                both = False
            if "layer_map" in p:
                pm = _layer_map_value(p["layer_map"], mpath, probs)
                if pm is not None and pm.strategy == "explicit" and both:
                    why = (
                        "both_directions: true"
                        if "both_directions" in p
                        else "the study's both_directions: true"
                    )
                    probs.add(
                        mpath,
                        f"an explicit layer map (a list indexed by receiver layer) "
                        f"is for one direction, but this pair also ports receiver -> "
                        f"origin ({why}): set both_directions: false on this pair and "
                        "list the reverse pair with its own map",
                    )
                    pm = None
        else:
            probs.add(
                ppath, f"a pair is [origin, receiver] or {{origin: ..., receiver: ...}}, got {p!r}"
            )
            continue
        o = host_ok(origin, opath, probs, host_cache, src.base)
        r = host_ok(receiver, rpath, probs, host_cache, src.base)
        if o is None or r is None:
            continue
        # a map that was refused above is reported there, not again as "depths differ"
        check_pair(
            o, r, ppath, probs, pm, mpath, both, mapped=isinstance(p, dict) and "layer_map" in p
        )
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
                    probs.add(
                        mpath if pm is not None else ppath,
                        f"pair {d[0]} -> {d[1]} is given twice with different layer maps "
                        f"({old.describe() if old else 'none'} and "
                        f"{pm.describe() if pm else 'none'}; {ONE_MAP})",
                    )
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
        probs.add(
            ("compare",),
            f"compare must be false, true or a mapping with keys "
            f"{', '.join(by_key(CompareSettings))}, got {raw!r}",
        )
        return CompareSettings()
    given = config_section(
        CompareSettings, raw, ("compare",), probs, what="compare key", prefix="compare."
    )
    values = {k: v for k, (v, _) in given.items()}
    if "corpus" in values:
        from peftport.data import UNLABELLED

        if values["corpus"] not in UNLABELLED:
            probs.add(("compare", "corpus"), UNLABELLED.unknown_message(values["corpus"]))
            values.pop("corpus")
    return CompareSettings(**values)


# --- public entry points ------------------------------------------------------------------


def parse_study(
    text: str,
    name: str = "<study>",
    fmt: str = "yaml",
    default_name: str = "study",
    base: Path | None = None,
) -> StudySpec:
    data, src = parse_text(text, name, fmt, base)
    return _parse(data, src, default_name)


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file (.yaml, .yml or .toml)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise StudyFileError(f"no such study file: {p}")
    fmt = {".yaml": "yaml", ".yml": "yaml", ".toml": "toml"}.get(p.suffix.lower())
    if fmt is None:
        raise StudyFileError(f"{p}: a study file ends in .yaml, .yml or .toml")
    size = p.stat().st_size
    if size > MAX_STUDY_BYTES:  # refused before reading it
        raise StudyFileError(
            f"{p}: {size:,} bytes; a study file is at most {MAX_STUDY_BYTES:,} bytes"
        )
    return parse_study(
        decode(p.read_bytes(), str(p)), str(p), fmt, default_name=p.stem, base=p.resolve().parent
    )


def preset_names() -> list[str]:
    folder = resources.files("peftport.study") / "presets"
    return sorted(
        f.name.rsplit(".", 1)[0] for f in folder.iterdir() if f.name.endswith((".yaml", ".toml"))
    )


def preset_text(name: str) -> tuple[str, str]:
    """(text, format) of a preset shipped inside the package."""
    folder = resources.files("peftport.study") / "presets"
    for suffix, fmt in ((".yaml", "yaml"), (".toml", "toml")):
        f = folder / f"{name}{suffix}"
        if f.is_file():
            return f.read_text(encoding="utf-8"), fmt
    raise StudyFileError(
        f"unknown preset {name!r}."
        + did_you_mean(name, preset_names()).replace("Known keys", "Presets")
    )


def load_preset(name: str) -> StudySpec:
    text, fmt = preset_text(name)
    return parse_study(text, f"preset {name}", fmt, default_name=name)


def train_fields() -> list[str]:
    """TrainConfig fields a study may set (for docs and tests)."""
    from peftport.configs import TrainConfig

    return [k for k in by_key(TrainConfig) if k not in PLANNER_FIELDS]
