"""From a store's observations to the report's numbers: pure functions, no I/O.

Every statistic comes from `peftport.stats`; this module only decides what is grouped and
paired with what (docs/report.md gives the exact definitions):

- a *run* is (technique, origin, receiver, pre data, post data, seed, pre-porting steps) under
  one condition; its observations are its results at 0 (zero-shot) and every post-porting step;
- a *setting* is a run without its seed: the figures' bars and the tables' rows average over
  seeds (`by direction` tables) or over seeds, directions and data combinations (`pooled`);
- pairs for paired tests share (technique, origin, receiver, pre data, post data, seed,
  pre-porting steps, post-porting steps); `random` has no pre-porting steps, so one random
  result pairs with the ported result of every pre-porting step count.

A result whose unit is not done is *missing*: it is counted (expected, and why it is missing)
but never enters a mean as a number.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from peftport import stats
from peftport.report.distance import distance_section
from peftport.report.findings import findings
from peftport.report.load import CELL_KEY, Observation, StoreData
from peftport.report.model import (
    CONDITIONS,
    CONFIDENCE,
    CONTROLS,
    N_BOOT,
    SEED,
    SETTING_COLUMNS,
    Aggregates,
    Axes,
    FigureSpec,
    Panel,
    Stat,
    Table,
    cell_index,
    group,
    number,
    ordered_reasons,
    setting_of,
    slug,
    stat_columns,
    summarize,
)
from peftport.report.paired import difference_tables
from peftport.report.portmethods import method_tables
from peftport.report.saved import curves as complete_curves
from peftport.report.saved import steps_saved_tables
from peftport.report.science import (
    NOT_LEARNED,
    Learned,
    ModuleKey,
    base_rates,
    is_learned,
    learned_modules,
)
from peftport.report.uncertainty import mean_interval, ratio_interval

CHANCE_TEXT = {
    "accuracy": "the test split's majority-class rate (always predicting its most frequent "
    "class), where the store shows it.",
    "auc": "0.5 (no ranking skill).",
    "macro_f1": "none drawn (macro-F1 has no single no-skill value).",
}


_LEARNED = Learned(None, None, None, True, "")


def _not_learned_note(learned: dict[ModuleKey, Learned], t: str, p: int) -> str:
    """ " (not learned on its origin)" when no module of `t` at `p` steps learned."""
    mods = [v for k, v in learned.items() if k[0] == t and k[3] == p]
    return f" ({NOT_LEARNED} on its origin)" if mods and not any(m.learned for m in mods) else ""


def _learned_of(sel: list[Observation], learned: dict[ModuleKey, Learned]) -> str:
    """One word on whether the modules behind `sel` learned on their origin, with why not."""
    keys = dict.fromkeys((o.technique, o.origin, o.pre_data, o.pre_steps) for o in sel)
    known = [learned[k] for k in keys if k in learned]  # one per module, not per result
    if not known:
        return "unknown"
    bad = [g for g in known if not g.learned]
    if not bad:
        return "yes"
    if len(bad) == 1:  # one module: its numbers
        why = bad[0].why
    else:
        why = f"{len(bad)} of {len(known)} origins: " + "; ".join(
            dict.fromkeys(g.short for g in bad)
        )
    return f"{NOT_LEARNED} ({why})" if len(bad) == len(known) else f"partly ({why})"


# --- small pieces ------------------------------------------------------------------------------


def ratio_stat(pairs: Sequence[tuple[Observation, Observation]], not_learned: int = 0) -> Stat:
    """Mean and interval of a / b over pairs (b > 0); a pair with a side missing is missing.
    The interval is a percentile bootstrap over the pairs (within their own ratios), none below
    3 pairs. `not_learned`: further planned pairs left out because their origin did not learn."""
    values, missing = [], []
    for a, b in pairs:
        if a.value is None or b.value is None or b.value <= 0:
            missing.append(a if a.value is None else b)
        else:
            values.append(a.value / b.value)
    mean, low, high, n = ratio_interval(values, confidence=CONFIDENCE)
    why = Counter(o.missing for o in missing if o.missing is not None)
    if not_learned:
        why[NOT_LEARNED] = not_learned
    return Stat(number(mean), number(low), number(high), n, len(pairs) + not_learned,
                ordered_reasons(why))  # fmt: skip


def _ordered(values: Iterable[Any], preferred: Sequence[Any] = ()) -> tuple[Any, ...]:
    vals = list(dict.fromkeys(values))
    pref = [v for v in dict.fromkeys(preferred) if v in vals]
    rest = [v for v in vals if v not in pref]
    try:
        rest.sort()
    except TypeError:
        rest.sort(key=str)
    return tuple(pref + rest)


def _short_names(ids: Iterable[str]) -> dict[str, str]:
    """Paths and hub ids shown by their last component, when that stays unambiguous."""
    ids = list(dict.fromkeys(ids))
    short = {i: i.rstrip("/").rsplit("/", 1)[-1] if "/" in i else i for i in ids}
    counts = Counter(short.values())
    return {i: (s if counts[s] == 1 and s else i) for i, s in short.items()}


def axes_of(data: StoreData) -> Axes:
    specs = [s.get("spec") or {} for s in data.studies]
    pref_t = [t["name"] for s in specs for t in s.get("techniques", [])]
    pref_p = [tuple(p) for s in specs for p in s.get("pairs", [])]
    pref_d = [tuple(d) for s in specs for d in s.get("data", [])]
    obs = data.observations
    runs = [o for o in obs if o.condition in CONDITIONS]
    hosts = {h for o in obs for h in (o.origin, o.receiver)}
    datasets = {d for o in obs for d in (o.pre_data, o.post_data)}
    pre_by_technique: dict[str, set[int]] = {}
    for o in runs:
        if o.condition != "random":
            pre_by_technique.setdefault(o.technique, set()).add(o.pre_steps)
    return Axes(
        techniques=_ordered((o.technique for o in obs), pref_t),
        directions=_ordered(((o.origin, o.receiver) for o in runs), pref_p),
        data=_ordered(((o.pre_data, o.post_data) for o in runs), pref_d),
        pre_steps=_ordered(o.pre_steps for o in runs if o.condition != "random"),
        steps=_ordered(o.post_steps for o in runs),
        conditions=tuple(c for c in CONDITIONS if any(o.condition == c for o in runs)),
        seeds=_ordered(o.seed for o in obs),
        names=_short_names(sorted(hosts)) | _short_names(sorted(datasets)),
        pre_by_technique={t: tuple(sorted(v)) for t, v in pre_by_technique.items()},
    )


# --- the report's content ----------------------------------------------------------------------


def cell_stats(obs: list[Observation]) -> dict[tuple, Stat]:
    """(technique, origin, receiver, pre data, post data, condition, pre steps, step) -> Stat
    over seeds (random: pre steps 0)."""
    g = group(
        (o for o in obs if o.condition in CONDITIONS),
        lambda o: (*setting_of(o), o.condition, o.pre_steps, o.post_steps),
    )
    return {k: summarize(v) for k, v in g.items()}


def chance_of(obs: list[Observation], metric: str) -> dict[str, float]:
    """Evaluation data set -> the line a figure of `metric` draws for "no skill": the
    majority-class rate for accuracy (science.base_rates), 0.5 for AUC; none for macro-F1."""
    if metric == "auc":
        return {d: 0.5 for o in obs for d in (o.pre_data, o.post_data)}
    if metric != "accuracy":
        return {}
    return {d: b.share for d, b in base_rates(obs).items()}


def figures(axes: Axes, obs: list[Observation], metric: str) -> list[FigureSpec]:
    """One figure per technique x direction x pre-porting steps; one panel per data combination."""
    cells = cell_stats(obs)
    chance = chance_of(obs, metric)
    learned = learned_modules(obs)
    origin = {
        k: summarize(v)
        for k, v in group(
            (o for o in obs if o.condition == "origin"),
            lambda o: (o.technique, o.origin, o.pre_data, o.pre_steps),
        ).items()
    }
    out = []
    for t in axes.techniques:
        for o, r in axes.directions:
            # the counts the technique's ported or sampled runs have: random bars (pre-porting
            # steps 0) alone are no figure
            for p in axes.pre_by_technique.get(t, ()):
                panels = []
                for pre, post in axes.data:
                    bars = {}
                    for c in axes.conditions:
                        ps = 0 if c == "random" else p
                        bars[c] = [
                            cells.get((t, o, r, pre, post, c, ps, s), Stat(None, None, None, 0, 0))
                            for s in axes.steps
                        ]
                    if all(s.expected == 0 for b in bars.values() for s in b):
                        continue  # this combination is not in the study for this direction
                    panels.append(
                        Panel(
                            title=f"data: {axes.data_combo(pre, post)}"
                            + (
                                ""
                                if learned.get((t, o, pre, p), _LEARNED).learned
                                else f" ({NOT_LEARNED} on its origin)"
                            ),  # fmt: skip
                            steps=axes.steps,
                            bars=bars,
                            origin=origin.get((t, o, pre, p)),
                            origin_label=f"on {axes.name(o)} ({axes.name(pre)})",
                            chance=chance.get(post),
                        )
                    )
                if not panels:
                    continue
                d = axes.direction(o, r)
                out.append(
                    FigureSpec(
                        stem=slug("fig", t, axes.name(o), "to", axes.name(r), f"pre{p}"),
                        title=f"{t}: {d}, {p} pre-porting steps",
                        panels=panels,
                        caption=(
                            f"{t} trained {p} steps on {axes.name(o)}, ported into "
                            f"{axes.name(r)}, then adapted: {metric} after each number of "
                            "post-porting steps (0 = zero-shot). Bars: mean over seeds; error "
                            "bars: 95% interval (none below 3 seeds); dashed line: the module "
                            "on its origin host, on the pre-porting data; dotted line: "
                            + CHANCE_TEXT[metric]
                        ),
                        technique=t,
                        direction=d,
                        pre_steps=p,
                    )
                )
    return out


def overview_figure(axes: Axes, obs: list[Observation], metric: str) -> FigureSpec | None:
    """Per technique, pooled over directions, data combinations and seeds, at the largest
    pre-porting step count."""
    if not axes.pre_steps or not axes.techniques:
        return None
    chance = chance_of(obs, metric)
    learned = learned_modules(obs)
    g = group(
        (o for o in obs if o.condition in CONDITIONS and o.pre_steps in (0, axes.top(o.technique))),
        lambda o: (o.technique, o.condition, o.post_steps),
    )
    panels = []
    for t in axes.techniques:
        p = axes.top(t)
        bars = {c: [summarize(g.get((t, c, s), [])) for s in axes.steps] for c in axes.conditions}
        org = summarize(
            o for o in obs if o.condition == "origin" and o.technique == t and o.pre_steps == p
        )
        posts = [post for _, post in axes.data]
        rate = [chance[d] for d in posts if d in chance]
        panels.append(
            Panel(t + _not_learned_note(learned, t, p), axes.steps, bars,
                  org if org.expected else None, "on its origin",
                  sum(rate) / len(rate) if rate and len(rate) == len(posts) else None)
        )  # fmt: skip
    return FigureSpec(
        stem="fig-overview",
        title=(
            f"All techniques: {axes.top_text()} pre-porting steps, pooled over directions and data"
        ),
        panels=panels,
        caption=(
            f"{metric} of ported, sampled and random modules after each number of post-porting "
            f"steps, pooled over porting directions, data combinations and seeds (modules "
            f"trained {axes.top_text()} steps before porting); error bars: 95% interval over "
            "those runs; dashed line: the modules on their origins; dotted line: "
            + CHANCE_TEXT[metric]
        ),
    )


def accuracy_tables(axes: Axes, obs: list[Observation]) -> tuple[Table, Table]:
    """Pooled (technique x condition x pre steps x step) and by direction and data set."""
    cols = ["technique", "condition", "pre_steps", "post_steps", *stat_columns("")]
    pooled = group(
        (o for o in obs if o.condition in CONDITIONS),
        lambda o: (o.technique, o.condition, o.pre_steps, o.post_steps),
    )
    rows = []
    for t in axes.techniques:
        for c in axes.conditions:
            for p in [0] if c == "random" else axes.pre_steps:
                for s in axes.steps:
                    if (t, c, p, s) in pooled:
                        rows.append(
                            {
                                "technique": t,
                                "condition": c,
                                "pre_steps": p,
                                "post_steps": s,
                                **summarize(pooled[(t, c, p, s)]).fields(""),
                            }
                        )
    a = Table(
        "accuracy",
        "Accuracy by technique, condition and post-porting steps (pooled)",
        cols,
        rows,
        [
            "Mean over seeds, porting directions and data combinations; 95% interval over "
            "those runs and their test examples (ci_method; none below 3). random has no pre-porting steps ('–' in the table, 0 in "
            "the CSV). majority_share: mean share of the most predicted class; 0.95 or more is "
            "flagged 'one class'."
        ],
    )
    cells = cell_stats(obs)
    cols2 = [*SETTING_COLUMNS, "condition", "pre_steps", "post_steps", *stat_columns("")]
    rows2 = []
    for t in axes.techniques:
        for key, cols in axes.settings(t):
            for c in axes.conditions:
                for p in [0] if c == "random" else axes.pre_steps:
                    for s in axes.steps:
                        st = cells.get((*key, c, p, s))
                        if st is not None:
                            rows2.append(
                                {**cols, "condition": c, "pre_steps": p, "post_steps": s}
                                | st.fields("")
                            )
    b = Table(
        "accuracy_by_direction",
        "Accuracy by technique, direction, data combination, condition and steps",
        cols2,
        rows2,
        ["Mean over seeds; 95% interval over seeds and test examples (ci_method)."],
    )
    return a, b


def zero_shot_tables(
    axes: Axes, obs: list[Observation], learned: dict[ModuleKey, Learned]
) -> tuple[Table, Table]:
    """Right after porting: ported (and the controls) beside the module on its origin; no
    retained share for a module that did not learn on its origin."""
    idx = cell_index(obs)
    origin = {
        (o.technique, o.origin, o.pre_data, o.seed, o.pre_steps): o
        for o in obs
        if o.condition == "origin"
    }
    ported0 = [o for o in obs if o.condition == "ported" and o.post_steps == 0]

    def row(sel: list[Observation]) -> dict[str, Any]:
        pairs = [
            (o, origin[k])
            for o in sel
            if (k := (o.technique, o.origin, o.pre_data, o.seed, o.pre_steps)) in origin
        ]
        org = [b for _, b in pairs]
        out = {**summarize(org).fields("origin_"), **summarize(sel).fields("ported_")}
        for c in CONTROLS:
            ctrl = [
                idx[k]
                for o in sel
                if (k := (*setting_of(o), o.seed, c, 0 if c == "random" else o.pre_steps, 0)) in idx
            ]
            out.update(summarize(ctrl).fields(f"{c}_"))
        ok = [(a, b) for a, b in pairs if is_learned(learned, a)]
        out.update(ratio_stat(ok, len(pairs) - len(ok)).fields("retained_"))
        out["origin_learned"] = _learned_of(sel, learned)
        return out

    stat_cols = [
        c
        for p in ("origin_", "ported_", "retained_", "sampled_", "random_")
        for c in stat_columns(p)
    ]
    by_setting = group(ported0, lambda o: (*setting_of(o), o.pre_steps))
    rows = []
    for t in axes.techniques:
        for key, cols in axes.settings(t):
            for p in axes.pre_steps:
                sel = by_setting.get((*key, p))
                if sel:
                    rows.append({**cols, "pre_steps": p, **row(sel)})
    by_dir = Table(
        "zero_shot",
        "Zero-shot portability: accuracy right after porting, beside the origin's own",
        [*SETTING_COLUMNS, "pre_steps", *stat_cols, "origin_learned"],
        rows,
        [
            "origin: the module on its origin host after the pre-porting steps, evaluated on the "
            "pre-porting data set; ported/sampled/random: on the receiver at step 0, evaluated "
            "on the post-porting data set. retained: mean over seeds of ported / origin.",
        ],
    )
    by_t = group(ported0, lambda o: (o.technique, o.pre_steps))
    rows_t = [
        {"technique": t, "pre_steps": p, **row(by_t[(t, p)])}
        for t in axes.techniques
        for p in axes.pre_steps
        if (t, p) in by_t
    ]
    pooled = Table(
        "zero_shot_by_technique",
        "Zero-shot portability by technique (pooled over directions and data)",
        ["technique", "pre_steps", *stat_cols, "origin_learned"],
        rows_t,
        ["Pooled over porting directions, data combinations and seeds."],
    )
    return by_dir, pooled


# --- ranking -------------------------------------------------------------------------------------


RANK_COLS = [
    "score",
    "rank",
    "technique",
    "n",
    "mean",
    "ci_low",
    "ci_high",
    "mean_rank",
    "rank_low",
    "rank_high",
    "p_best",
    "paired",
]
SCORES = {
    "advantage": "ported - random, mean over checkpoints (0 and every post-porting step)",
    "zero_shot": "ported - random at step 0 (zero-shot)",
}


def ranking_table(axes: Axes, obs: list[Observation]) -> Table:
    """Techniques ranked by how much better a ported module does than a fresh one."""
    title = "Techniques ranked by portability"
    if "random" not in axes.conditions or "ported" not in axes.conditions:
        return Table("ranking", title, RANK_COLS, [], ["The study has no ported and random runs."])
    curves = complete_curves(obs, axes.steps)
    rows = []
    notes = []
    for score in SCORES:
        by_t: dict[str, dict[tuple, float]] = defaultdict(dict)
        for key, pc, rc, *_ in curves:
            if key[-1] != axes.top(key[0]):  # each technique at its largest pre-porting count
                continue
            d = pc - rc
            by_t[key[0]][key[1:-1]] = float(d.mean() if score == "advantage" else d[0])
        techs = [t for t in axes.techniques if by_t.get(t)]
        if not techs:
            continue
        keys = sorted({k for t in techs for k in by_t[t]}, key=str)
        paired = all(set(by_t[t]) == set(keys) for t in techs)
        lists = (
            {t: [by_t[t].get(k, math.nan) for k in keys] for t in techs}
            if paired
            else {t: list(by_t[t].values()) for t in techs}
        )
        ranked = stats.rank_with_uncertainty(
            lists, n_boot=N_BOOT * 2, seed=SEED, paired=paired, confidence=CONFIDENCE
        )
        for r in ranked:
            # a difference of two metrics in [0, 1]: its interval stays in [-1, 1]
            m, lo, hi, _, _ = mean_interval(lists[r["name"]], bounds=(-1.0, 1.0))
            rows.append(
                {
                    "score": score,
                    "rank": r["rank"],
                    "technique": r["name"],
                    "n": r["n"],
                    "mean": number(m),
                    "ci_low": number(lo),
                    "ci_high": number(hi),
                    "mean_rank": r["mean_rank"],
                    "rank_low": r["rank_low"],
                    "rank_high": r["rank_high"],
                    "p_best": r["p_best"],
                    "paired": paired,
                }
            )
        left = [t for t in axes.techniques if t not in techs]
        if left:
            notes.append(f"{score}: not ranked (no complete run): {', '.join(left)}")
    notes.insert(
        0,
        "Scores per run (technique, direction, data combination, seed), each technique at its "
        f"largest pre-porting step count ({axes.top_text()}; runs with a missing result left "
        "out): "
        + "; ".join(f"{k} = {v}" for k, v in SCORES.items())
        + f". Rank interval: 95% bootstrap ({N_BOOT * 2} resamples of runs, the same runs for "
        "every technique when all have them: paired); p_best: share of resamples in which the "
        "technique ranks first.",
    )
    return Table("ranking", title, RANK_COLS, rows, notes)


# --- results and missing -------------------------------------------------------------------------

OBS_COLS = [
    *CELL_KEY,  # the columns that name one result, as the store's `cells` table has them
    "value",
    "majority_share",
    "status",
    "missing",
    "unit_id",
    "step",
]


def results_table(obs: list[Observation], metric: str) -> Table:
    rows = [
        {
            "technique": o.technique,
            "origin": o.origin,
            "receiver": o.receiver,
            "pre_data": o.pre_data,
            "post_data": o.post_data,
            "seed": o.seed,
            "condition": o.condition,
            "pre_steps": o.pre_steps,
            "post_steps": o.post_steps,
            "value": o.value,
            "majority_share": o.majority_share,
            "status": o.status,
            "missing": o.missing or "",
            "unit_id": o.unit_id,
            "step": o.step,
        }
        for o in obs
    ]
    return Table(
        "results",
        f"Every result the tables are computed from ({metric})",
        OBS_COLS,
        rows,
        ["One row per study cell; value is empty when its unit is not done (see missing)."],
    )


def glance(
    axes: Axes,
    tables: dict[str, Table],
    obs: list[Observation],
    learned: dict[ModuleKey, Learned],
) -> list[dict[str, Any]]:
    """Per technique at the largest pre-porting steps: zero-shot accuracy and AUC, ported -
    random at step 0, the steps it saves there, its rank, and whether its modules learned on
    their origin (if none did, its portability is not measured)."""
    if not axes.pre_steps:
        return []
    top = {t: axes.top(t) for t in axes.techniques}
    zs = {
        r["technique"]: r
        for r in tables["zero_shot_by_technique"].rows
        if r["pre_steps"] == top.get(r["technique"])
    }
    diff = {
        r["technique"]: r
        for r in tables["differences"].rows
        if r["comparison"] == "ported - random"
        and r["pre_steps"] == top.get(r["technique"])
        and r["post_steps"] == 0
    }
    saved = {
        r["technique"]: r
        for r in tables["steps_saved"].rows
        if r["pre_steps"] == top.get(r["technique"]) and r["checkpoint"] == 0
    }
    rank = {r["technique"]: r for r in tables["ranking"].rows if r["score"] == "advantage"}
    auc: dict[str, list[float]] = defaultdict(list)
    for o in obs:
        if (
            o.condition == "ported"
            and o.post_steps == 0
            and o.pre_steps == top.get(o.technique)
            and o.auc is not None
        ):
            auc[o.technique].append(o.auc)
    out = []
    for t in axes.techniques:
        p = top[t]
        mods = [v for k, v in learned.items() if k[0] == t and k[3] == p]
        a = auc.get(t, [])
        out.append(
            {
                "technique": t,
                "pre_steps": p,
                "zero_shot": zs.get(t),
                "auc": a,  # the ported zero-shot AUCs (the glance shows their mean)
                "vs_random": diff.get(t),
                "saved": saved.get(t),
                "rank": rank.get(t),
                "learned": (zs.get(t) or {}).get("origin_learned", "unknown"),
                "measured": not mods or any(m.learned for m in mods),
            }
        )
    return out


def aggregate(data: StoreData) -> Aggregates:
    axes = axes_of(data)
    obs = data.observations
    learned = learned_modules(obs)
    acc, acc_d = accuracy_tables(axes, obs)
    zs, zs_t = zero_shot_tables(axes, obs, learned)
    diff, diff_d = difference_tables(axes, obs, learned)
    saved, saved_d = steps_saved_tables(axes, obs)
    results = results_table(obs, data.metric)
    missing = Table(
        "missing",
        "Results that are missing (their unit is not done)",
        OBS_COLS,
        [r for r in results.rows if r["missing"]],
        ["A failed unit's error is in the store (peftport study status --json)."],
    )
    tables = {
        t.name: t
        for t in (
            zs_t,
            zs,
            acc,
            acc_d,
            diff,
            diff_d,
            saved,
            saved_d,
            ranking_table(axes, obs),
            results,
            missing,
        )
    }
    distance = distance_section(data, axes, learned)
    tables.update((t.name, t) for t in distance.tables)
    tables.update((t.name, t) for t in method_tables(data, learned))  # `methods:` > 1
    return Aggregates(
        axes=axes,
        metric=data.metric,
        tables=tables,
        figures=figures(axes, obs, data.metric),
        overview=overview_figure(axes, obs, data.metric),
        glance=glance(axes, tables, obs, learned),
        complete=all(o.value is not None for o in obs),
        distance=distance,
        findings=findings(axes, tables, learned, obs),
        base_rates=base_rates(obs),
    )
