"""Porting methods compared (a study's `methods:` axis): each method's metric, and paired
differences of every method against copy and against the sampled and random controls.

Only for studies with more than one method: otherwise both tables are empty and the report has
no such section. The pairs are those of the report's ported-minus-controls table
(`report.paired`): same technique, origin, receiver, data sets, seed, pre-porting steps
(random has none) and post-porting steps; a method and copy pair on the same pretrained
snapshot. The tests run over independent units (pairs sharing a snapshot or a control unit are
one unit) with the same statistics, Holm-adjusted over every row of the table.
"""

from __future__ import annotations

from typing import Any

from peftport.report.load import Observation, StoreData
from peftport.report.model import (
    CONTROLS,
    Aggregates,
    Table,
    group,
    setting_of,
    stat_columns,
    summarize,
)
from peftport.report.paired import DIFF_COLS, Pair, apply_holm, diff_row, pairs_of
from peftport.report.science import Learned, ModuleKey

ACCURACY = "methods_accuracy"
DIFFERENCES = "methods_differences"


def study_methods(data: StoreData) -> tuple[str, ...]:
    """The porting methods of the studies reported, in their files' order (copy first when
    a study runs it)."""
    out: list[str] = []
    for s in data.studies:
        out.extend((s.get("spec") or {}).get("methods") or ["copy"])
    out.extend(o.method for o in data.method_observations)
    ordered = list(dict.fromkeys(out))
    return tuple(sorted(ordered, key=lambda m: m != "copy"))


def _copy_pairs(sel: list[Observation], copies: dict[tuple, Observation]) -> list[Pair]:
    return [(o, copies.get((*setting_of(o), o.seed, o.pre_steps, o.post_steps))) for o in sel]


def method_tables(data: StoreData, learned: dict[ModuleKey, Learned]) -> list[Table]:
    """The methods section's two tables; none when the studies have a single method."""
    methods = study_methods(data)
    if len(methods) < 2:
        return []
    mobs = data.method_observations
    by = group(mobs, lambda o: (o.technique, o.method, o.pre_steps, o.post_steps))
    controls = [c for c in CONTROLS if any(o.condition == c for o in data.observations)]
    ctrl = group(
        (o for o in data.observations if o.condition in controls),
        lambda o: (o.technique, o.condition, o.pre_steps, o.post_steps),
    )
    idx = {
        (*setting_of(o), o.seed, o.condition, o.pre_steps, o.post_steps): o
        for o in data.observations
        if o.condition in controls
    }
    copies = {
        (*setting_of(o), o.seed, o.pre_steps, o.post_steps): o for o in mobs if o.method == "copy"
    }
    techniques = list(dict.fromkeys(o.technique for o in mobs))
    pre = sorted({o.pre_steps for o in mobs})
    steps = sorted({o.post_steps for o in mobs})
    acc_rows: list[dict[str, Any]] = []
    diff_rows: list[dict[str, Any]] = []
    for t in techniques:
        for p in pre:
            for s in steps:
                head = {"technique": t, "pre_steps": p, "post_steps": s}
                for m in methods:
                    sel = by.get((t, m, p, s))
                    if sel:
                        acc_rows.append(
                            {**head, "condition": "ported", "method": m} | summarize(sel).fields("")
                        )
                for c in controls:  # random has no pre-porting steps: it serves every p
                    sel = ctrl.get((t, c, 0 if c == "random" else p, s))
                    if sel:
                        acc_rows.append(
                            {**head, "condition": c, "method": ""} | summarize(sel).fields("")
                        )
                for m in methods:
                    sel = by.get((t, m, p, s))
                    if not sel:
                        continue
                    against: list[tuple[str, list[Pair]]] = []
                    if m != "copy" and "copy" in methods:
                        against.append(("copy", _copy_pairs(sel, copies)))
                    against += [(c, pairs_of(sel, c, idx)) for c in controls]
                    for what, pairs in against:
                        diff_rows.append(
                            {"comparison": f"{m} - {what}", **head} | diff_row(pairs, learned)
                        )
    apply_holm(diff_rows)
    return [
        Table(
            ACCURACY,
            "Porting methods: metric by method and control",
            ["technique", "pre_steps", "post_steps", "condition", "method", *stat_columns("")],
            acc_rows,
            [
                "Mean over seeds (pooled over porting directions and data combinations) with "
                "its 95% interval, as in the accuracy table; `method` is the porting method of "
                "the ported rows (sampled and random are method-free controls)."
            ],
        ),
        Table(
            DIFFERENCES,
            "Porting methods: paired differences",
            ["comparison", "technique", "pre_steps", "post_steps", *DIFF_COLS],
            diff_rows,
            [
                "A method minus copy pairs the two ports of one pretrained snapshot; a method "
                "minus sampled or random pairs as the ported-minus-controls table does. "
                "mean_ported is the method's mean, mean_control the other side's. Tested over "
                "independent units (groups of pairs sharing a snapshot or a control unit): "
                "paired t-test, Holm-adjusted over every row of this table (p_holm), Wilcoxon "
                "signed-rank, bootstrap interval over units (none below 3), g_z."
            ],
        ),
    ]


def methods_sections(agg: Aggregates) -> list[Any]:
    """The report's "Porting methods" section, or nothing for a single-method study."""
    from peftport.report import blocks as b
    from peftport.report import columns as c

    if ACCURACY not in agg.tables or not agg.tables[ACCURACY].rows:
        return []
    acc, diff = agg.tables[ACCURACY], agg.tables[DIFFERENCES]

    def what(row: dict[str, Any]) -> str:
        return f"ported ({row['method']})" if row["condition"] == "ported" else row["condition"]

    acc_cols: list[Any] = [
        ("technique", lambda row: row["technique"]),
        ("pre", lambda row: str(row["pre_steps"])),
        ("post", lambda row: "0 (zero-shot)" if row["post_steps"] == 0 else str(row["post_steps"])),
        ("method / control", what),
        (f"{agg.metric} [95% CI]", c._stat_cell("")),
        ("runs", lambda row: f"{row['n']}/{row['expected']}"),
    ]
    diff_cols = c.diff_columns(agg, False)
    return [
        b.Section(
            "porting-methods",
            "Porting methods",
            "Porting methods against copy and the controls",
            [
                b.TableBlock(*c.apply(acc_cols, acc.rows)),
                *b.notes(acc.notes),
                b.TableBlock(*c.apply(diff_cols, diff.rows)),
                *b.notes(diff.notes),
                b.CsvLinks((ACCURACY, DIFFERENCES)),
            ],
        )
    ]
