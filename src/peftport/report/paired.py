"""Ported minus controls, paired, tested at the level of the independent unit.

A pair is a ported result and the control result with the same technique, origin, receiver,
data sets, seed, pre-porting steps (random has none) and post-porting steps. Pairs are not
independent: the data combinations of one seed port the same pretrained snapshot when they share
a pre-porting data set, and one random unit of a receiver serves every direction (and every
pre-porting step count) that ports into it. So the pairs are grouped into independent units, the
connected groups of pairs that share a pretrained snapshot (technique, origin, pre data, seed,
pre steps) or a control unit; each unit's differences are averaged, and the tests, the interval
and the effect sizes are computed over those units (`n_units`, shown next to every p).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from peftport import stats
from peftport.report.load import Observation
from peftport.report.model import (
    CONFIDENCE,
    CONTROLS,
    SETTING_COLUMNS,
    Axes,
    Table,
    cell_index,
    group,
    number,
    setting_of,
)
from peftport.report.science import Learned, ModuleKey
from peftport.report.uncertainty import mean_interval

DIFF_COLS = [
    "n_pairs",
    "expected_pairs",
    "missing_pairs",
    "n_units",
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
    "origin_learned",
    "test_notes",
]

Pair = tuple[Observation, Observation | None]


def pairs_of(sel: list[Observation], control: str, idx: dict[tuple, Observation]) -> list[Pair]:
    out = []
    for o in sel:
        ps = 0 if control == "random" else o.pre_steps
        out.append((o, idx.get((*setting_of(o), o.seed, control, ps, o.post_steps))))
    return out


def snapshot_of(o: Observation) -> tuple:
    """The pretrained snapshot a ported (or sampled) result comes from."""
    return ("snapshot", o.technique, o.origin, o.pre_data, o.seed, o.pre_steps)


def independent_units(pairs: list[tuple[Observation, Observation]]) -> list[list[int]]:
    """Indices of `pairs` grouped into independent units: pairs are joined when they share a
    pretrained snapshot or a control unit (union-find over both), in first-seen order."""
    parent: dict[Any, Any] = {}

    def find(x: Any) -> Any:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for p, c in pairs:
        a, b = find(snapshot_of(p)), find(("unit", c.unit_id, c.step))
        if a != b:
            parent[b] = a
    groups: dict[Any, list[int]] = {}
    for i, (p, _) in enumerate(pairs):
        groups.setdefault(find(snapshot_of(p)), []).append(i)
    return list(groups.values())


def _learned_text(sel: list[Observation], learned: dict[ModuleKey, Learned]) -> str:
    got = [learned.get((o.technique, o.origin, o.pre_data, o.pre_steps)) for o in sel]
    flags = {g.learned for g in got if g is not None}
    if not flags:
        return "unknown"
    return "yes" if flags == {True} else ("no" if flags == {False} else "partly")


def diff_row(pairs: list[Pair], learned: dict[ModuleKey, Learned]) -> dict[str, Any]:
    complete = [
        (p, c) for p, c in pairs if p.value is not None and c is not None and c.value is not None
    ]
    missing = [p if p.value is None else c for p, c in pairs if (p, c) not in complete]
    miss = Counter("not planned" if m is None else m.missing for m in missing)
    units = independent_units(complete)
    a = [float(np.mean([complete[i][0].value for i in u])) for u in units]
    b = [float(np.mean([complete[i][1].value for i in u])) for u in units]
    res = stats.paired_test(a, b, CONFIDENCE) if a else {"n": 0, "notes": ["no complete pair"]}
    # the interval: a bootstrap over units, within [-1, 1]; none below MIN_RUNS units
    _, low, high, _, _ = mean_interval([x - y for x, y in zip(a, b, strict=True)],
                                       bounds=(-1.0, 1.0))  # fmt: skip
    return {
        "n_pairs": len(complete),
        "expected_pairs": len(pairs),
        "missing_pairs": ", ".join(f"{v} {k}" for k, v in sorted(miss.items())),
        "n_units": res["n"],
        "mean_ported": number(res.get("mean_a")),
        "mean_control": number(res.get("mean_b")),
        "mean_diff": number(res.get("mean_diff")),
        "ci_low": number(low),
        "ci_high": number(high),
        "sd_diff": number(res.get("sd_diff")),
        "t": number(res.get("t")),
        "df": number(res.get("df")),
        "p_t": number(res.get("p_t")),
        "p_holm": None,
        "p_wilcoxon": number(res.get("p_wilcoxon")),
        "wilcoxon_method": res.get("wilcoxon_method", "undefined"),
        "d_z": number(res.get("d_z")),
        "g_z": number(res.get("g_z")),
        "origin_learned": _learned_text([p for p, _ in pairs], learned),
        "test_notes": "; ".join(res.get("notes", [])),
    }


def apply_holm(rows: list[dict[str, Any]]) -> None:
    p = np.array([np.nan if r["p_t"] is None else r["p_t"] for r in rows], dtype=float)
    if p.size:
        for r, q in zip(rows, stats.holm(p), strict=True):
            r["p_holm"] = number(q)


NOTE = (
    "Paired over seeds{}, tested over independent units (n_units: groups of pairs that share "
    "a pretrained snapshot or a control unit, their differences averaged): mean difference, "
    "95% bootstrap interval over units (none below 3 units), paired t-test (p_t), "
    "Holm-adjusted over every row of this table (p_holm), Wilcoxon signed-rank test "
    "(p_wilcoxon), effect size d_z = mean / sd of the unit differences and g_z "
    "(Hedges-corrected). origin_learned: whether the ported modules learned on their origin."
)


def difference_tables(
    axes: Axes, obs: list[Observation], learned: dict[ModuleKey, Learned]
) -> tuple[Table, Table]:
    """ported - sampled and ported - random: paired over seeds (and directions, data)."""
    idx = cell_index(obs)
    ported = [o for o in obs if o.condition == "ported"]
    controls = [c for c in CONTROLS if c in axes.conditions]
    pooled_g = group(ported, lambda o: (o.technique, o.pre_steps, o.post_steps))
    dir_g = group(ported, lambda o: (*setting_of(o), o.pre_steps, o.post_steps))
    rows, rows_d = [], []
    for c in controls:
        for t in axes.techniques:
            for p in axes.pre_steps:
                for s in axes.steps:
                    head = {"comparison": f"ported - {c}"}
                    sel = pooled_g.get((t, p, s))
                    if sel:
                        rows.append(
                            {**head, "technique": t, "pre_steps": p, "post_steps": s}
                            | diff_row(pairs_of(sel, c, idx), learned)
                        )
                    for key, cols in axes.settings(t):
                        sel = dir_g.get((*key, p, s))
                        if sel:
                            rows_d.append(
                                {**head, **cols, "pre_steps": p, "post_steps": s}
                                | diff_row(pairs_of(sel, c, idx), learned)
                            )
    apply_holm(rows)
    apply_holm(rows_d)
    return (
        Table(
            "differences",
            "Ported minus controls, paired (pooled over directions and data)",
            ["comparison", "technique", "pre_steps", "post_steps", *DIFF_COLS],
            rows,
            [NOTE.format(", porting directions and data combinations")],
        ),
        Table(
            "differences_by_direction",
            "Ported minus controls, paired, by direction and data combination",
            ["comparison", *SETTING_COLUMNS, "pre_steps", "post_steps", *DIFF_COLS],
            rows_d,
            [NOTE.format("")],
        ),
    )
