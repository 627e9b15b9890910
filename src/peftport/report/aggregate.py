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
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from peftport import stats
from peftport.report.distance import distance_section
from peftport.report.load import CELL_KEY, Observation, StoreData
from peftport.report.model import (
    CONFIDENCE,
    SETTING_COLUMNS,
    Aggregates,
    Axes,
    FigureSpec,
    Panel,
    Stat,
    Table,
    number,
    reasons,
    slug,
    stat_columns,
    summarize,
)

CONDITIONS = ("ported", "sampled", "random")
CONTROLS = ("sampled", "random")
N_BOOT = 1000
SEED = 0  # bootstrap seed: the same store gives the same report


# --- small pieces ------------------------------------------------------------------------------


def ratio_stat(pairs: Sequence[tuple[Observation, Observation]]) -> Stat:
    """Mean and interval of a / b over pairs (b > 0); a pair with a side missing is missing."""
    values, missing = [], []
    for a, b in pairs:
        if a.value is None or b.value is None or b.value <= 0:
            missing.append(a if a.value is None else b)
        else:
            values.append(a.value / b.value)
    mean, low, high, n = stats.mean_ci(values, CONFIDENCE) if values else (None, None, None, 0)
    return Stat(number(mean), number(low), number(high), n, len(pairs), reasons(missing))


def group(
    obs: Iterable[Observation], key: Callable[[Observation], Any]
) -> dict[Any, list[Observation]]:
    out: dict[Any, list[Observation]] = defaultdict(list)
    for o in obs:
        out[key(o)].append(o)
    return out


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
    return Axes(
        techniques=_ordered((o.technique for o in obs), pref_t),
        directions=_ordered(((o.origin, o.receiver) for o in runs), pref_p),
        data=_ordered(((o.pre_data, o.post_data) for o in runs), pref_d),
        pre_steps=_ordered(o.pre_steps for o in runs if o.condition != "random"),
        steps=_ordered(o.post_steps for o in runs),
        conditions=tuple(c for c in CONDITIONS if any(o.condition == c for o in runs)),
        seeds=_ordered(o.seed for o in obs),
        names=_short_names(sorted(hosts)) | _short_names(sorted(datasets)),
    )


# --- the report's content ----------------------------------------------------------------------


def _setting(o: Observation) -> tuple:
    return (o.technique, o.origin, o.receiver, o.pre_data, o.post_data)


def cell_stats(obs: list[Observation]) -> dict[tuple, Stat]:
    """(technique, origin, receiver, pre data, post data, condition, pre steps, step) -> Stat
    over seeds (random: pre steps 0)."""
    g = group(
        (o for o in obs if o.condition in CONDITIONS),
        lambda o: (*_setting(o), o.condition, o.pre_steps, o.post_steps),
    )
    return {k: summarize(v) for k, v in g.items()}


def figures(axes: Axes, obs: list[Observation], metric: str) -> list[FigureSpec]:
    """One figure per technique x direction x pre-porting steps; one panel per data combination."""
    cells = cell_stats(obs)
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
            for p in axes.pre_steps:
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
                            title=f"data: {axes.data_combo(pre, post)}",
                            steps=axes.steps,
                            bars=bars,
                            origin=origin.get((t, o, pre, p)),
                            origin_label=f"on {axes.name(o)} ({axes.name(pre)})",
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
                            "bars: 95% t interval (cut at the axes); dashed line: the module on "
                            "its origin host, on the pre-porting data."
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
    p = max(axes.pre_steps)
    g = group(
        (o for o in obs if o.condition in CONDITIONS and o.pre_steps in (0, p)),
        lambda o: (o.technique, o.condition, o.post_steps),
    )
    panels = []
    for t in axes.techniques:
        bars = {c: [summarize(g.get((t, c, s), [])) for s in axes.steps] for c in axes.conditions}
        org = summarize(
            o for o in obs if o.condition == "origin" and o.technique == t and o.pre_steps == p
        )
        panels.append(Panel(t, axes.steps, bars, org if org.expected else None, "on its origin"))
    return FigureSpec(
        stem="fig-overview",
        title=f"All techniques: {p} pre-porting steps, pooled over directions and data",
        panels=panels,
        caption=(
            f"{metric} of ported, sampled and random modules after each number of post-porting "
            f"steps, pooled over porting directions, data combinations and seeds (modules "
            f"trained {p} steps before porting); error bars: 95% t interval over those runs (cut "
            "at the axes); "
            "dashed line: the modules on their origins."
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
            "Mean over seeds, porting directions and data combinations; 95% t interval over "
            "those runs. random has no pre-porting steps (shown as 0)."
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
        ["Mean over seeds; 95% t interval over seeds."],
    )
    return a, b


def _index(obs: list[Observation]) -> dict[tuple, Observation]:
    return {
        (*_setting(o), o.seed, o.condition, o.pre_steps, o.post_steps): o
        for o in obs
        if o.condition in CONDITIONS
    }


def zero_shot_tables(axes: Axes, obs: list[Observation]) -> tuple[Table, Table]:
    """Right after porting: ported (and the controls) beside the module on its origin."""
    idx = _index(obs)
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
                if (k := (*_setting(o), o.seed, c, 0 if c == "random" else o.pre_steps, 0)) in idx
            ]
            out.update(summarize(ctrl).fields(f"{c}_"))
        out.update(ratio_stat(pairs).fields("retained_"))
        return out

    stat_cols = [
        c
        for p in ("origin_", "ported_", "retained_", "sampled_", "random_")
        for c in stat_columns(p)
    ]
    by_setting = group(ported0, lambda o: (*_setting(o), o.pre_steps))
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
        [*SETTING_COLUMNS, "pre_steps", *stat_cols],
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
        ["technique", "pre_steps", *stat_cols],
        rows_t,
        ["Pooled over porting directions, data combinations and seeds."],
    )
    return by_dir, pooled


DIFF_COLS = [
    "n_pairs",
    "expected_pairs",
    "missing_pairs",
    "mean_ported",
    "mean_control",
    "mean_diff",
    "ci_low",
    "ci_high",
    "sd_diff",
    "t",
    "df",
    "p_t",
    "p_holm",
    "p_wilcoxon",
    "wilcoxon_method",
    "d_z",
    "g_z",
    "test_notes",
]


def _pairs(
    sel: list[Observation], control: str, idx: dict[tuple, Observation]
) -> list[tuple[Observation, Observation | None]]:
    out = []
    for o in sel:
        ps = 0 if control == "random" else o.pre_steps
        out.append((o, idx.get((*_setting(o), o.seed, control, ps, o.post_steps))))
    return out


def _diff_row(pairs: list[tuple[Observation, Observation | None]]) -> dict[str, Any]:
    complete = [
        (p, c) for p, c in pairs if p.value is not None and c is not None and c.value is not None
    ]
    a = [p.value for p, _ in complete]
    b = [c.value for _, c in complete]
    missing = [p if p.value is None else c for p, c in pairs if (p, c) not in complete]
    miss = Counter("not planned" if m is None else m.missing for m in missing)
    res = stats.paired_test(a, b, CONFIDENCE) if a else {"n": 0, "notes": ["no complete pair"]}
    return {
        "n_pairs": res["n"],
        "expected_pairs": len(pairs),
        "missing_pairs": ", ".join(f"{v} {k}" for k, v in sorted(miss.items())),
        "mean_ported": number(res.get("mean_a")),
        "mean_control": number(res.get("mean_b")),
        "mean_diff": number(res.get("mean_diff")),
        "ci_low": number(res.get("ci_low")),
        "ci_high": number(res.get("ci_high")),
        "sd_diff": number(res.get("sd_diff")),
        "t": number(res.get("t")),
        "df": number(res.get("df")),
        "p_t": number(res.get("p_t")),
        "p_holm": None,
        "p_wilcoxon": number(res.get("p_wilcoxon")),
        "wilcoxon_method": res.get("wilcoxon_method", "undefined"),
        "d_z": number(res.get("d_z")),
        "g_z": number(res.get("g_z")),
        "test_notes": "; ".join(res.get("notes", [])),
    }


def _apply_holm(rows: list[dict[str, Any]]) -> None:
    p = np.array([np.nan if r["p_t"] is None else r["p_t"] for r in rows], dtype=float)
    if p.size:
        for r, q in zip(rows, stats.holm(p), strict=True):
            r["p_holm"] = number(q)


def difference_tables(axes: Axes, obs: list[Observation]) -> tuple[Table, Table]:
    """ported - sampled and ported - random: paired over seeds (and directions, data)."""
    idx = _index(obs)
    ported = [o for o in obs if o.condition == "ported"]
    controls = [c for c in CONTROLS if c in axes.conditions]
    pooled_g = group(ported, lambda o: (o.technique, o.pre_steps, o.post_steps))
    dir_g = group(ported, lambda o: (*_setting(o), o.pre_steps, o.post_steps))
    rows, rows_d = [], []
    for c in controls:
        for t in axes.techniques:
            for p in axes.pre_steps:
                for s in axes.steps:
                    sel = pooled_g.get((t, p, s))
                    if sel:
                        rows.append(
                            {
                                "comparison": f"ported - {c}",
                                "technique": t,
                                "pre_steps": p,
                                "post_steps": s,
                                **_diff_row(_pairs(sel, c, idx)),
                            }
                        )
                    for key, cols in axes.settings(t):
                        sel = dir_g.get((*key, p, s))
                        if sel:
                            diff = _diff_row(_pairs(sel, c, idx))
                            comparison = f"ported - {c}"
                            rows_d.append(
                                {"comparison": comparison, **cols, "pre_steps": p, "post_steps": s}
                                | diff
                            )
    _apply_holm(rows)
    _apply_holm(rows_d)
    note = (
        "Paired over seeds{}: mean difference with its 95% t interval, paired t-test (p_t), "
        "Holm-adjusted over every row of this table (p_holm), Wilcoxon signed-rank test "
        "(p_wilcoxon), effect size d_z = mean / sd of the differences and g_z (Hedges-corrected)."
    )
    return (
        Table(
            "differences",
            "Ported minus controls, paired (pooled over directions and data)",
            ["comparison", "technique", "pre_steps", "post_steps", *DIFF_COLS],
            rows,
            [note.format(", porting directions and data combinations")],
        ),
        Table(
            "differences_by_direction",
            "Ported minus controls, paired, by direction and data combination",
            ["comparison", *SETTING_COLUMNS, "pre_steps", "post_steps", *DIFF_COLS],
            rows_d,
            [note.format("")],
        ),
    )


# --- steps saved -------------------------------------------------------------------------------


def _curves(
    obs: list[Observation], steps: tuple[int, ...]
) -> list[tuple[tuple, np.ndarray, np.ndarray]]:
    """Complete (ported, random) curve pairs, one per ported run: (run key, ported, random)."""
    idx = _index(obs)
    runs = group(
        (o for o in obs if o.condition == "ported"),
        lambda o: (*_setting(o), o.seed, o.pre_steps),
    )
    out = []
    for key, sel in sorted(runs.items(), key=lambda kv: str(kv[0])):
        *setting, seed, p = key
        by_step = {o.post_steps: o.value for o in sel}
        rnd = [idx.get((*setting, seed, "random", 0, s)) for s in steps]
        pv = [by_step.get(s) for s in steps]
        rv = [None if x is None else x.value for x in rnd]
        if any(v is None for v in pv + rv):
            continue
        out.append((key, np.array(pv, dtype=float), np.array(rv, dtype=float)))
    return out


def _reach(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
    r = stats.steps_to_reach(steps, curve, target)
    return math.inf if r is None else r


def steps_saved_rows(
    steps: tuple[int, ...], curves: list[tuple[tuple, np.ndarray, np.ndarray]], expected: int
) -> list[dict[str, Any]]:
    """Per checkpoint k: what the mean ported curve has at k, the (interpolated) step at which the
    mean random curve first reaches it, and the steps saved = that step - k; bootstrap interval
    over runs."""
    s = np.array(steps, dtype=float)
    if not curves:
        return [
            {
                "checkpoint": k,
                "runs": 0,
                "expected_runs": expected,
                "ported_mean": None,
                "random_needs": None,
                "reached": None,
                "saved": None,
                "saved_ci_low": None,
                "saved_ci_high": None,
                "runs_reached": 0,
                "random_last_step": int(s[-1]),
            }
            for k in steps
        ]
    P = np.stack([c[1] for c in curves])  # (runs, steps)
    R = np.stack([c[2] for c in curves])
    pm, rm = P.mean(axis=0), R.mean(axis=0)
    rng = np.random.default_rng(SEED)
    boot_idx = rng.integers(0, len(curves), size=(N_BOOT, len(curves))) if len(curves) > 1 else None
    rows = []
    for j, k in enumerate(steps):
        need = _reach(s, rm, float(pm[j]))
        per_run = [_reach(s, R[i], float(P[i, j])) for i in range(len(curves))]
        low = high = None
        if boot_idx is not None:
            # a resample is a multiset of runs: equal multisets give equal answers (few runs
            # have few distinct multisets), so each is computed once
            seen: dict[bytes, float] = {}
            saved_b = np.empty(len(boot_idx))
            for i, b in enumerate(boot_idx):
                key = np.bincount(b, minlength=len(curves)).tobytes()
                if key not in seen:
                    seen[key] = _reach(s, R[b].mean(axis=0), float(P[b, j].mean())) - k
                saved_b[i] = seen[key]
            low = float(np.quantile(saved_b, (1 - CONFIDENCE) / 2, method="lower"))
            high = float(np.quantile(saved_b, (1 + CONFIDENCE) / 2, method="higher"))
        rows.append(
            {
                "checkpoint": k,
                "runs": len(curves),
                "expected_runs": expected,
                "ported_mean": float(pm[j]),
                "random_needs": None if math.isinf(need) else need,
                "reached": not math.isinf(need),
                "saved": None if math.isinf(need) else need - k,
                "saved_ci_low": low,
                "saved_ci_high": high,
                "runs_reached": sum(1 for x in per_run if not math.isinf(x)),
                "random_last_step": int(s[-1]),
            }
        )
    return rows


SAVED_COLS = [
    "checkpoint",
    "ported_mean",
    "random_needs",
    "reached",
    "saved",
    "saved_ci_low",
    "saved_ci_high",
    "runs",
    "expected_runs",
    "runs_reached",
    "random_last_step",
]


def steps_saved_tables(axes: Axes, obs: list[Observation]) -> tuple[Table, Table]:
    if "random" not in axes.conditions or "ported" not in axes.conditions:
        note = ["The study has no ported and random runs to compare."]
        return (
            Table("steps_saved", "Steps saved", ["technique", "pre_steps", *SAVED_COLS], [], note),
            Table(
                "steps_saved_by_direction",
                "Steps saved by direction",
                [*SETTING_COLUMNS, "pre_steps", *SAVED_COLS],
                [],
                note,
            ),
        )
    curves = _curves(obs, axes.steps)
    planned = group(
        (o for o in obs if o.condition == "ported" and o.post_steps == 0),
        lambda o: (*_setting(o), o.pre_steps),
    )
    rows, rows_d = [], []
    for t in axes.techniques:
        for p in axes.pre_steps:
            sel = [c for c in curves if c[0][0] == t and c[0][-1] == p]
            exp = sum(len(v) for k, v in planned.items() if k[0] == t and k[-1] == p)
            if exp:
                for r in steps_saved_rows(axes.steps, sel, exp):
                    rows.append({"technique": t, "pre_steps": p, **r})
            for key, cols in axes.settings(t):
                exp = len(planned.get((*key, p), []))
                if not exp:
                    continue
                sel_d = [c for c in sel if c[0][:5] == key]
                for r in steps_saved_rows(axes.steps, sel_d, exp):
                    rows_d.append({**cols, "pre_steps": p, **r})
    notes = [
        "For each checkpoint k: the mean ported curve's value at k, the post-porting step at "
        "which the mean random curve (the same runs' random modules) first reaches it, linearly "
        "interpolated between checkpoints (random_needs), and saved = random_needs - k. Not "
        "reached: random never gets there by its last checkpoint (the saving is then more than "
        "random_last_step - k). Runs with a missing result are left out (runs of expected_runs); "
        "interval: 95% percentile bootstrap over runs; runs_reached: runs whose own random curve "
        "reaches their own ported value. An interval bound of inf: not reached in that share of the "
        "resamples."
    ]
    return (
        Table(
            "steps_saved",
            "Steps saved by porting (pooled over directions and data)",
            ["technique", "pre_steps", *SAVED_COLS],
            rows,
            notes,
        ),
        Table(
            "steps_saved_by_direction",
            "Steps saved by porting, by direction and data combination",
            ["technique", "origin", "receiver", "pre_data", "post_data", "pre_steps", *SAVED_COLS],
            rows_d,
            notes,
        ),
    )


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
    curves = _curves(obs, axes.steps)
    rows = []
    notes = []
    for score in SCORES:
        by_t: dict[str, dict[tuple, float]] = defaultdict(dict)
        for key, pc, rc in curves:
            d = pc - rc
            by_t[key[0]][key[1:]] = float(d.mean() if score == "advantage" else d[0])
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
            m, lo, hi, _ = stats.mean_ci(lists[r["name"]], CONFIDENCE)
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
        "Scores per run (technique, direction, data combination, seed, pre-porting steps; runs "
        "with a missing result left out): "
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


def glance(axes: Axes, tables: dict[str, Table]) -> list[dict[str, Any]]:
    """Per technique at the largest pre-porting steps: zero-shot, ported - random at step 0,
    the steps it saves there, and its rank."""
    if not axes.pre_steps:
        return []
    p = max(axes.pre_steps)
    zs = {r["technique"]: r for r in tables["zero_shot_by_technique"].rows if r["pre_steps"] == p}
    diff = {
        r["technique"]: r
        for r in tables["differences"].rows
        if r["comparison"] == "ported - random" and r["pre_steps"] == p and r["post_steps"] == 0
    }
    saved = {
        r["technique"]: r
        for r in tables["steps_saved"].rows
        if r["pre_steps"] == p and r["checkpoint"] == 0
    }
    rank = {r["technique"]: r for r in tables["ranking"].rows if r["score"] == "advantage"}
    return [
        {
            "technique": t,
            "pre_steps": p,
            "zero_shot": zs.get(t),
            "vs_random": diff.get(t),
            "saved": saved.get(t),
            "rank": rank.get(t),
        }
        for t in axes.techniques
    ]


def aggregate(data: StoreData) -> Aggregates:
    axes = axes_of(data)
    obs = data.observations
    acc, acc_d = accuracy_tables(axes, obs)
    zs, zs_t = zero_shot_tables(axes, obs)
    diff, diff_d = difference_tables(axes, obs)
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
    distance = distance_section(data, axes)
    tables.update((t.name, t) for t in distance.tables)
    return Aggregates(
        axes=axes,
        metric=data.metric,
        tables=tables,
        figures=figures(axes, obs, data.metric),
        overview=overview_figure(axes, obs, data.metric),
        glance=glance(axes, tables),
        complete=all(o.value is not None for o in obs),
        distance=distance,
    )
