"""A study file expanded into work units that share what can be shared.

A *run* (in the paper's sense) is one cell of the grid: technique x (origin -> receiver) x
(pre, post data set) x seed x post-porting steps x condition (x pre-porting steps for ported and
sampled). Trained one by one from scratch, a ported or sampled run costs pre + post steps and a
random run post steps: that is the *naive* count. The plan executes far fewer steps:

- `pretrain` unit, one per (technique, origin, pre data set, seed): ONE training to the largest
  pre-porting step count, evaluated and snapshotted at every pre-porting step count (the
  snapshots are the modules that get ported; the evaluations are the origin's own accuracy);
- `post` unit, one per (technique, pair, data sets, seed, pre-steps, condition) for ported and
  sampled: port the snapshot, then ONE adaptation to the largest post-porting step count,
  evaluated at 0 (zero-shot) and at every post-porting step count. The learning-rate schedule's
  horizon is shared: the 500-step result is step 500 of a 3000-step schedule (TrainConfig.horizon);
- porting methods (`methods:`, default copy): a ported post unit per method the technique can
  take (study/specmethods.py), each porting the same snapshot; sampled and random are
  method-free. A method other than copy enters the unit's config (and id) and its cells'
  `method`; copy's configs and ids are those of before the axis;
- `random` unit, one per (technique, receiver, post data set, seed): the technique's fresh
  initialisation trained on the receiver. It depends neither on the origin, the pre-porting data
  set nor the pre-porting steps, so it runs once and serves every pair and combination with that
  receiver and post data set. It is also the from-scratch baseline on the receiver: the study
  does not run that twice.

Head policy (`head_policy: origin`, encoder-classifier receivers only; `peftport.porting`): a
sampled unit records `"head": "origin"` (the body drawn, the module's head copied), and a random
unit takes the origin module's trained head, so it becomes one per (technique, origin, pre data
set, receiver, post data set, seed) and starts from the snapshot of the LARGEST pre-porting step
count (its head is the origin's most trained one; for smaller step counts this favours the
control, so "ported beats random" stays conservative). Under the default `follow`, or on a
receiver without a head, nothing is added: configs and ids are those of before the setting.

Ids: a unit's id is a hash of its canonical config (everything that determines its result), so
planning the same study again gives the same ids and a store finds what is done. A post unit
names the module it starts from by a *snapshot key* (a hash of what determines that snapshot:
technique, config, origin, data, seed, training schedule and step), not by the pretrain unit, so
adding a pre-porting step count re-runs the pretraining (a new snapshot is needed) but not the
post units of the step counts that were there.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from peftport.study.spec import StudySpec

KINDS = ("pretrain", "post", "random")
# training settings that only change evaluation: not part of a snapshot's identity
EVAL_ONLY = ("steps", "eval_at", "eval_split", "max_eval_examples", "eval_batch_size")


def _hash(obj: Any, n: int = 20) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:n]


def train_dict(
    values: dict[str, Any], steps: int, eval_at: tuple[int, ...], seed: int
) -> dict[str, Any]:
    """A TrainConfig as canonical JSON: horizon made explicit, threads and device left out."""
    from peftport.engine import TrainConfig

    cfg = TrainConfig(steps=steps, eval_at=tuple(eval_at), seed=seed, **values)
    d = asdict(cfg)
    d.pop("threads")
    d.pop("device")  # like threads, the machine's: the same unit on CPU or a GPU
    # Settings added after studies were first stored enter only when set, so the ids of
    # existing studies (hashes of this dict) stay what they were.
    for name, default in (("precision", "auto"), ("deterministic", False), ("eval_mode", "rank")):
        if d[name] == default:
            d.pop(name)
    d["horizon"] = cfg.horizon or cfg.steps
    d["eval_at"] = sorted(d["eval_at"])
    return d


@dataclass(frozen=True)
class Unit:
    id: str
    kind: str  # pretrain | post | random
    label: str
    config: dict[str, Any]  # canonical: the id is its hash; the worker needs nothing else
    steps: int  # training steps it executes
    evals: int  # evaluations it runs
    runs: int  # study runs (paper sense) whose result it gives
    naive_steps: int  # training steps those runs would take, each trained from scratch
    needs: tuple[str, ...] = ()  # snapshot keys it starts from
    produces: tuple[tuple[int, str], ...] = ()  # (step, snapshot key) it writes
    technique: str = ""
    origin: str | None = None
    receiver: str | None = None
    pre_data: str | None = None
    post_data: str | None = None
    seed: int = 0
    condition: str | None = None
    pre_steps: int | None = None  # pretrain: the largest; post: the snapshot's step
    method: str = "copy"  # the porting method of a ported unit (study/specmethods.py)

    @property
    def horizon(self) -> int:
        return int(self.config["train"]["horizon"])


@dataclass(frozen=True)
class Cell:
    """One result of the study: which unit gives it, at which of that unit's steps.

    condition is ported / sampled / random (post_steps 0 = zero-shot), or `origin`: the module
    on its own origin host after pre_steps (receiver = origin, post_data = pre_data), which the
    report needs for the share of the origin's accuracy a port retains.
    """

    technique: str
    origin: str
    receiver: str
    pre_data: str
    post_data: str
    seed: int
    condition: str
    pre_steps: int  # 0 for random (nothing before porting)
    post_steps: int
    unit_id: str
    step: int  # the unit's checkpoint that holds the metrics
    # how a ported cell's module was carried (`methods:`); copy for every other condition.
    # Keyword-only and not in CELL_KEY: the report's tables read the study's primary method as
    # `ported` (report/load.py) and the methods section reads every method.
    method: str = field(default="copy", kw_only=True)


# the fields of a Cell that name one result of one method (the unit and step say where it is
# stored; the store's `cells` key adds `method`)
CELL_KEY = tuple(f.name for f in fields(Cell) if f.name not in ("unit_id", "step", "method"))
# where a run stands in the grid: the first fields of a Cell, and fields of its Unit too
RUN_AT = ("technique", "origin", "receiver", "pre_data", "post_data", "seed")


def _at(where: tuple[Any, ...], **but: Any) -> dict[str, Any]:
    """A unit's fields for the grid position `where` (values in the order of RUN_AT), `but`
    those it does not have."""
    return {**dict(zip(RUN_AT, where, strict=True)), **but}


@dataclass
class Plan:
    spec: StudySpec
    units: tuple[Unit, ...]
    cells: tuple[Cell, ...]
    deps: dict[str, tuple[str, ...]] = field(default_factory=dict)  # unit -> units it needs

    def by_id(self) -> dict[str, Unit]:
        return {u.id: u for u in self.units}

    def totals(self) -> dict[str, Any]:
        s = self.spec
        shared = sum(u.steps for u in self.units)
        naive = sum(u.naive_steps for u in self.units)
        runs = sum(u.runs for u in self.units)
        ps = [c for c in s.conditions if c != "random"]
        # a ported cell per method the technique takes (sampled is method-free)
        skipped = {(t, m) for t, m, _ in s.method_skips}
        n_ps = {
            t.name: sum(
                sum((t.name, m) not in skipped for m in s.methods) if c == "ported" else 1
                for c in ps
            )
            for t in s.techniques
        }
        rnd = "random" in s.conditions
        n_pre = {t.name: len(s.pre_steps_of(t.name)) for t in s.techniques}
        if len(set(n_ps.values())) == 1 and len(set(n_pre.values())) == 1:
            n = next(iter(n_ps.values()))
            what = (
                f"{len(ps)} conditions"
                if n == len(ps)
                else f"{n} conditions and methods ({len(s.methods)} methods of ported)"
            )
            factor = f"{len(s.techniques)} techniques x "
            inner = f"{what} x {next(iter(n_pre.values()))} pre-porting step counts"
        else:  # a method some technique cannot take, or a technique's own step counts
            factor = ""
            inner = " + ".join(f"{t} {k} x {n_pre[t]}" for t, k in n_ps.items()) + (
                " (conditions and methods x pre-porting step counts, per technique)"
            )
        formula = (
            f"{factor}{len(s.pairs)} origin->receiver x "
            f"{len(s.data)} data combinations x {len(s.seeds)} seeds x "
            f"{len(s.post_steps)} post-porting step counts x ({inner}"
            f"{(' + 1 random' + (' per technique' if not factor else '')) if rnd else ''})"
        )
        expected = (
            len(s.pairs)
            * len(s.data)
            * len(s.seeds)
            * len(s.post_steps)
            * sum(k * n_pre[t] + rnd for t, k in n_ps.items())
        )
        assert runs == expected, (runs, expected)
        zero_shot = sum(1 for c in self.cells if c.post_steps == 0 and c.condition != "origin")
        return {
            "study": s.name,
            "study_id": s.id,
            "source": s.source,
            "runs": runs,
            "runs_formula": f"{formula} = {expected}",
            "zero_shot_results": zero_shot,
            "units": {
                "total": len(self.units),
                **{k: sum(1 for u in self.units if u.kind == k) for k in KINDS},
            },
            "training_steps": {
                "shared": shared,
                "naive": naive,
                "ratio": round(naive / shared, 3) if shared else None,
            },
            "evaluations": sum(u.evals for u in self.units),
            "baseline": (
                "the random units (fresh initialisation trained on the receiver) are "
                "the from-scratch baseline"
                if "random" in s.conditions
                else "no from-scratch baseline: add `random` to conditions"
            ),
            "notes": list(s.notes),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "totals": self.totals(),
            "spec": self.spec.canonical(),
            "pairs": pair_maps(self.spec),
            "compare": self.spec.compare.as_dict() if self.spec.compare else None,
            "units": [
                {
                    "id": u.id,
                    "kind": u.kind,
                    "label": u.label,
                    "steps": u.steps,
                    "evals": u.evals,
                    "runs": u.runs,
                    "naive_steps": u.naive_steps,
                    "depends_on": list(self.deps.get(u.id, ())),
                    "config": u.config,
                }
                for u in self.units
            ],
        }


def snapshot_key(
    technique: str,
    technique_config: dict,
    origin: str,
    pre_data: str,
    max_examples: int | None,
    seed: int,
    train: dict,
    step: int,
) -> str:
    return _hash(
        {
            "what": "snapshot",
            "technique": technique,
            "technique_config": technique_config,
            "host": origin,
            "data": pre_data,
            "max_examples": max_examples,
            "seed": seed,
            "step": step,
            "train": {k: v for k, v in train.items() if k not in EVAL_ONLY},
        }
    )


def _keeps_origin_head(spec: StudySpec, host: str) -> bool:
    """Whether controls on `host` keep the origin's head: head_policy origin and a host with a
    head (an encoder classifier; a host that cannot be described is assumed to have one)."""
    if spec.head_policy != "origin":
        return False
    from peftport.errors import PeftportError
    from peftport.hosts import ENCODER_CLASSIFIER
    from peftport.study.derived import study_host

    try:
        return study_host(spec, host).kind == ENCODER_CLASSIFIER
    except PeftportError:
        return True


def make_plan(spec: StudySpec) -> Plan:
    units: dict[str, Unit] = {}
    cells: list[Cell] = []
    deps: dict[str, tuple[str, ...]] = {}
    post = spec.post_steps
    post_eval = (0, *post)
    post_top = max(post) if post else 0
    me = spec.max_examples
    ps_conditions = [c for c in spec.conditions if c != "random"]
    pre_datas = list(dict.fromkeys(d[0] for d in spec.data))
    origins = list(dict.fromkeys(p[0] for p in spec.pairs))
    origin_head = {r: _keeps_origin_head(spec, r) for _, r in spec.pairs}
    head_random = "random" in spec.conditions and any(origin_head.values())
    skipped = {(t, m) for t, m, _ in spec.method_skips}  # methods a technique cannot take

    for t in spec.techniques:
        t_pre = spec.pre_steps_of(t.name)
        for seed in spec.seeds:
            # pretrain: per (technique, origin, pre data, seed), only if something ports it
            pre_train = train_dict(t.pre, max(t_pre), t_pre, seed)
            snap: dict[tuple[str, str, int], str] = {}  # (origin, pre data, step) -> key
            producer: dict[str, str] = {}  # snapshot key -> pretrain unit id
            for origin in origins:
                for pre_data in pre_datas:
                    if not ps_conditions and not head_random:
                        continue
                    produces = []
                    for p in t_pre:
                        key = snapshot_key(
                            t.name, t.config, origin, pre_data, me, seed, pre_train, p
                        )
                        snap[(origin, pre_data, p)] = key
                        produces.append((p, key))
                    config = {
                        "kind": "pretrain",
                        "technique": t.name,
                        "technique_config": t.config,
                        "host": origin,
                        "data": pre_data,
                        "max_examples": me,
                        "seed": seed,
                        "train": pre_train,
                        "save_at": list(t_pre),
                    }
                    uid = _hash(config)
                    steps_txt = ",".join(map(str, t_pre))
                    where = (t.name, origin, origin, pre_data, pre_data, seed)
                    units[uid] = Unit(
                        id=uid,
                        kind="pretrain",
                        config=config,
                        steps=max(t_pre),
                        evals=len(t_pre),
                        runs=0,
                        naive_steps=0,
                        produces=tuple(produces),
                        **_at(where, receiver=None),
                        pre_steps=max(t_pre),
                        label=f"pretrain {t.name} on {origin} with {pre_data}, seed {seed}, "
                        f"snapshots at {steps_txt}",
                    )
                    for p, key in produces:
                        producer[key] = uid
                        cells.append(Cell(*where, "origin", p, 0, uid, p))

            post_train = train_dict(t.post, post_top, post_eval, seed)
            naive_post = sum(post)
            # every unit after porting trains to the last post step and evaluates at each
            after_port = functools.partial(Unit, steps=post_top, evals=len(post_eval))
            for origin, receiver in spec.pairs:
                pm = spec.layer_map(origin, receiver)
                # an identity map is what no map does: same config, same id as without one
                mapped = pm is not None and pm.strategy != "identity"
                via = f" (layer map {pm.describe()})" if mapped else ""
                for pre_data, post_data in spec.data:
                    for p in t_pre:
                        for cond, method in [
                            (c, m)
                            for c in ps_conditions
                            for m in (spec.methods if c == "ported" else ("copy",))
                            if (t.name, m) not in skipped
                        ]:
                            key = snap[(origin, pre_data, p)]
                            config = {
                                "kind": "post",
                                "condition": cond,
                                "technique": t.name,
                                "technique_config": t.config,
                                "origin": origin,
                                "receiver": receiver,
                                "pre_data": pre_data,
                                "data": post_data,
                                "max_examples": me,
                                "seed": seed,
                                "source": key,
                                "pre_steps": p,
                                "train": post_train,
                            }
                            if cond == "sampled":
                                # draws seeded by the module's identity, marked in the id:
                                # a store whose sampled units drew by seed and tensor name
                                # alone recomputes them instead of mixing the two kinds
                                config["draw"] = "module"
                                if origin_head[receiver]:
                                    config["head"] = "origin"
                            if method != "copy":  # copy's config and id are as they always were
                                config["method"] = method
                            if mapped:
                                # the strategy, not the resolved map: ids are known at plan
                                # time, before any host is on disk (a cka map also records the
                                # comparison settings it comes from)
                                config["layer_map"] = pm.as_config(spec.compare)
                            uid = _hash(config)
                            where = (t.name, origin, receiver, pre_data, post_data, seed)
                            units[uid] = after_port(
                                id=uid,
                                kind="post",
                                config=config,
                                runs=len(post),
                                naive_steps=len(post) * p + naive_post,
                                needs=(key,),
                                **_at(where),
                                condition=cond,
                                pre_steps=p,
                                method=method,
                                label=f"{cond}{'' if method == 'copy' else f' ({method})'} "
                                f"{t.name} {origin} -> {receiver}{via}, "
                                f"{pre_data} -> {post_data}, seed {seed}, after {p} steps",
                            )
                            deps[uid] = (producer[key],)
                            cells.extend(
                                Cell(*where, cond, p, q, uid, q, method=method) for q in post_eval
                            )
                    if "random" in spec.conditions:
                        config = {
                            "kind": "random",
                            "technique": t.name,
                            "technique_config": t.config,
                            "receiver": receiver,
                            "data": post_data,
                            "max_examples": me,
                            "seed": seed,
                            "train": post_train,
                        }
                        needs: tuple[str, ...] = ()
                        head_txt = ""
                        if origin_head[receiver]:  # the head of the most trained snapshot
                            top = max(t_pre)
                            needs = (snap[(origin, pre_data, top)],)
                            config.update(
                                head="origin",
                                origin=origin,
                                pre_data=pre_data,
                                source=needs[0],
                                pre_steps=top,
                            )
                            head_txt = f", head of {origin}'s module ({pre_data}, {top} steps)"
                        uid = _hash(config)
                        old = units.get(uid)
                        where = (t.name, origin, receiver, pre_data, post_data, seed)
                        units[uid] = after_port(
                            id=uid,
                            kind="random",
                            config=config,
                            runs=(old.runs if old else 0) + len(post),
                            naive_steps=(old.naive_steps if old else 0) + naive_post,
                            needs=needs,
                            condition="random",
                            pre_steps=0,
                            **_at(
                                where,
                                origin=origin if needs else None,
                                pre_data=pre_data if needs else None,
                            ),
                            label=f"random {t.name} on {receiver} with {post_data}, seed {seed}"
                            f"{head_txt} (also the from-scratch baseline)",
                        )
                        if needs:
                            deps[uid] = (producer[needs[0]],)
                        cells.extend(Cell(*where, "random", 0, q, uid, q) for q in post_eval)
    order = {k: i for i, k in enumerate(KINDS)}
    ordered = tuple(sorted(units.values(), key=lambda u: order[u.kind]))
    return Plan(spec=spec, units=ordered, cells=tuple(cells), deps=deps)


def pair_maps(spec: StudySpec) -> list[dict[str, Any]]:
    """Each directed pair's layer map as planned: the strategy, and the map itself when the
    hosts' depths are known without building anything (a cka map only at run time)."""
    from peftport.errors import PeftportError
    from peftport.study.pairchecks import cheap_host_config, host_layers, resolve_pair_map
    from peftport.study.spec import study_host

    depth: dict[str, int | None] = {}
    for h in spec.hosts:
        try:
            hs = study_host(spec, h)
        except PeftportError:  # the spec was checked; a host gone since shows no map here
            depth[h] = None
            continue
        cfg = cheap_host_config(hs) if hs.family else None
        depth[h] = host_layers(hs.family, cfg) if cfg else None
    out = []
    for o, r in spec.pairs:
        pm = spec.layer_map(o, r)
        layers = None
        if depth[o] and depth[r] and (pm is None or pm.strategy != "cka"):
            try:
                layers = resolve_pair_map(pm, depth[o], depth[r])
            except PeftportError:  # `study run` reports it, with the line
                layers = None
        out.append(
            {
                "origin": o,
                "receiver": r,
                "strategy": pm.strategy if pm else "identity",
                "explicit": list(pm.layers) if pm and pm.layers is not None else None,
                "layer_map": layers,
                "origin_layers": depth[o],
                "receiver_layers": depth[r],
            }
        )
    return out


def pre_steps_text(s: StudySpec) -> str:
    """The pre-porting step counts as text: one list, or one per technique when some
    technique has its own counts."""
    own = {t.name: s.pre_steps_of(t.name) for t in s.techniques}
    if len(set(own.values())) <= 1:
        return ", ".join(map(str, next(iter(own.values()), s.pre_steps)))
    return "; ".join(f"{t} {', '.join(map(str, v))}" for t, v in own.items())


def describe(plan: Plan, *, units: bool = True) -> str:
    """The plan as text: what is shared, the counts, then one line per unit."""
    t = plan.totals()
    s = plan.spec
    maps = pair_maps(s)
    lines = [
        f"study {s.name} ({s.source}), id {s.id}",
        f"  techniques: {', '.join(x.name for x in s.techniques)}",
        f"  origin -> receiver: {', '.join(f'{o} -> {r}' for o, r in s.pairs)}",
        f"  data (pre -> post): {', '.join(f'{a} -> {b}' for a, b in s.data)}",
        f"  pre-porting steps: {pre_steps_text(s)}; post-porting steps: "
        f"{', '.join(map(str, s.post_steps)) or 'none'} (+ zero-shot)",
        f"  conditions: {', '.join(s.conditions)}; seeds: {', '.join(map(str, s.seeds))}",
        *(
            [
                f"  porting methods of ported: {', '.join(s.methods)} (one post unit each; sampled "
                "and random are method-free)"
            ]
            if s.methods != ("copy",)
            else []
        ),
        f"  head policy (encoder classifiers): {s.head_policy}"
        + (
            " (the origin's trained head in every condition)"
            if s.head_policy == "origin"
            else " (the head follows the condition)"
        ),
    ]
    if s.layer_maps:
        lines.append("  layer maps (receiver layer -> origin layer):")
        for m in maps:
            shown = (
                m["layer_map"]
                if m["layer_map"] is not None
                else (
                    "(from the host comparison, at run time)"
                    if m["strategy"] == "cka"
                    else "(resolved when the hosts are on disk)"
                )
            )
            lines.append(f"    {m['origin']} -> {m['receiver']}: {m['strategy']} {shown}")
    if s.compare is None:
        lines.append("  host comparisons: off (compare: false)")
    else:
        c = s.compare
        lines.append(
            f"  host comparisons: {c.texts} texts of {c.corpus}, {c.max_length} tokens, "
            f"seed {c.seed} (once per directed pair, before any unit; kept in the store)"
        )
    if s.derived_hosts:
        lines.append(
            "  derived by the study (before any unit; cached): "
            + "; ".join(
                f"{d.name} from {d.parent} ({', '.join(f'{k} {v}' for k, v in d.settings)})"
                for d in s.derived_hosts
            )
        )
    lines += [
        "",
        f"runs (paper sense): {t['runs']:,} = {t['runs_formula'].split(' = ')[0]}",
        f"  plus {t['zero_shot_results']:,} zero-shot results (step 0 of the post-porting units)",
        f"work units: {t['units']['total']:,} = {t['units']['pretrain']:,} pretrain + "
        f"{t['units']['post']:,} post (ported/sampled) + {t['units']['random']:,} random",
        "  pretrain: one per (technique, origin, pre data set, seed), snapshotted at every "
        "pre-porting step count",
        "  post: one per (technique, pair, data sets, seed, pre-steps, condition), evaluated at "
        "0 and every post-porting step count (shared schedule horizon)",
        "  random: one per (technique, receiver, post data set, seed): "
        + (
            "a fresh body with the head of the origin's most trained snapshot (head_policy "
            "origin), the same for every pre-porting step count; "
            if plan.spec.head_policy == "origin"
            else "independent of the origin and the pre-porting steps; "
        )
        + t["baseline"],
        f"training steps: {t['training_steps']['shared']:,} shared vs "
        f"{t['training_steps']['naive']:,} naive (every run trained from scratch): "
        f"{t['training_steps']['ratio']}x fewer",
        f"evaluations: {t['evaluations']:,}",
    ]
    from peftport.study.compute import describe_estimate

    lines += describe_estimate(plan)
    for note in t["notes"]:
        lines.append(f"note: {note}")
    if units:
        lines.append("")
        lines.append(f"{'unit':<20} {'kind':<8} {'steps':>6} {'runs':>5}  after     what")
        for u in plan.units:
            after = ",".join(d[:8] for d in plan.deps.get(u.id, ())) or "-"
            lines.append(f"{u.id:<20} {u.kind:<8} {u.steps:>6} {u.runs:>5}  {after:<9} {u.label}")
    return "\n".join(lines)
