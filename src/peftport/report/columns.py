"""Numbers as text and the report's tables as columns: what each table shows, cell by cell.

One formatting layer serves HTML and Markdown: a missing result reads "missing (1 failed)",
never 0. Used by `peftport.report.render.page`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

from peftport.report.blocks import Block, Bullets, Cell, note
from peftport.report.distance import CORRELATION_TABLE, NOT_ABOVE, NOT_PLANNED
from peftport.report.distance import TABLE as DISTANCE_TABLE
from peftport.report.model import Aggregates, Stat, Table, stat_from
from peftport.report.science import NOT_LEARNED
from peftport.report.uncertainty import MIN_RUNS, mean_interval

UNDEFINED = (NOT_ABOVE, NOT_PLANNED, NOT_LEARNED)  # retention without a missing result
Column = tuple[str, Callable[[dict[str, Any]], str | Cell]]


# --- numbers as text ---------------------------------------------------------------------------


def num(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}"


def signed(x: float | None, digits: int = 3) -> str:
    if x is None:
        return "–"
    text = f"{x:+.{digits}f}"
    return "+" + text[1:] if text.lstrip("-+").strip("0.") == "" else text  # no "-0.000"


def pval(p: float | None) -> str:
    if p is None:
        return "–"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def stat_text(st: Stat, digits: int = 3, pct: bool = False) -> str:
    """ "0.712 [0.650, 0.774]", with "(3 of 4; 1 failed)" when partial; "(2 runs: no
    interval)" below MIN_RUNS runs; "[one class]" when (nearly) every prediction is one class;
    "missing (...)" when nothing is there; "not learned" when its modules did not learn on
    their origin; "n/a" when the study has no such result."""
    if st.expected == 0:
        return "n/a"
    if st.mean is None:
        if st.missing and all(k == NOT_LEARNED for k, _ in st.missing):
            return f"{NOT_LEARNED} on its origin: not measured"
        return f"missing ({st.missing_text() or 'no result'})"
    f = (lambda x: f"{100 * x:.{max(digits - 2, 0)}f}%") if pct else (lambda x: num(x, digits))
    text = f(st.mean)
    if st.low is not None and st.high is not None:
        text += f" [{f(st.low)}, {f(st.high)}]"
    elif st.too_few:
        text += f" ({st.n} run{'s' if st.n > 1 else ''}: no interval)"
    if not st.complete:
        text += f" ({st.n} of {st.expected}; {st.missing_text()})"
    if st.one_class:
        text += " [one class]"
    return text


def _stat_cell(prefix: str, pct: bool = False) -> Callable[[dict[str, Any]], Cell]:
    def cell(row: dict[str, Any]) -> Cell:
        st = stat_from(row, prefix)
        text = stat_text(st, pct=pct)
        cls = "missing" if st.mean is None and st.expected else (
            "partial" if not st.complete and st.expected else ""
        )  # fmt: skip
        return text, (cls + " degenerate").strip() if st.one_class else cls

    return cell


def diff_text(row: dict[str, Any]) -> str:
    if row["n_pairs"] == 0:
        return f"missing ({row['missing_pairs'] or 'no pair'})"
    text = signed(row["mean_diff"])
    if row["ci_low"] is not None:
        text += f" [{signed(row['ci_low'])}, {signed(row['ci_high'])}]"
    elif 0 < row.get("n_units", 0) < MIN_RUNS:
        text += f" ({row['n_units']} unit{'s' if row['n_units'] > 1 else ''}: no interval)"
    if row["n_pairs"] < row["expected_pairs"]:
        text += f" ({row['n_pairs']} of {row['expected_pairs']} pairs; {row['missing_pairs']})"
    return text


def _diff_cell(row: dict[str, Any]) -> Cell:
    cls = (
        "missing"
        if row["n_pairs"] == 0
        else ("partial" if row["n_pairs"] < row["expected_pairs"] else "")
    )
    if row["p_holm"] is not None and row["p_holm"] < 0.05:
        cls = (cls + " sig").strip()
    return diff_text(row), cls


def saved_text(row: dict[str, Any]) -> str:
    if row["runs"] == 0:
        return "missing (no complete run)"
    if row.get("not_measured"):
        return row["not_measured"]
    if not row["reached"]:
        return f"not reached (> {row['random_last_step'] - row['checkpoint']:g})"
    return signed(row["saved"], 1)


def saved_ci_text(row: dict[str, Any]) -> str:
    if row["saved_ci_low"] is None:
        return "–"
    low = "not reached" if math.isinf(row["saved_ci_low"]) else signed(row["saved_ci_low"], 1)
    high = "not reached" if math.isinf(row["saved_ci_high"]) else signed(row["saved_ci_high"], 1)
    return f"[{low}, {high}]"


def needs_text(row: dict[str, Any]) -> str:
    if row["runs"] == 0:
        return "missing"
    if row.get("not_measured"):
        return "not measured"
    if not row["reached"]:
        return f"not reached by {row['random_last_step']}"
    return f"{row['random_needs']:.1f}"


# --- display specs -------------------------------------------------------------------------------


def _direction(agg: Aggregates) -> Callable[[dict[str, Any]], str]:
    return lambda r: agg.axes.direction(r["origin"], r["receiver"])


def _data(agg: Aggregates) -> Callable[[dict[str, Any]], str]:
    return lambda r: agg.axes.data_combo(r["pre_data"], r["post_data"])


def zero_shot_columns(agg: Aggregates, by_direction: bool) -> list[Column]:
    cols: list[Column] = [("technique", lambda r: r["technique"])]
    if by_direction:
        cols += [("direction", _direction(agg)), ("data", _data(agg))]
    cols += [
        ("pre-porting steps", lambda r: str(r["pre_steps"])),
        ("origin (own host)", _stat_cell("origin_")),
        ("ported, zero-shot", _stat_cell("ported_")),
        ("retained (ported / origin)", _stat_cell("retained_", pct=True)),
        ("origin learned", lambda r: r.get("origin_learned", "unknown")),
    ]
    cols += [
        (f"{c}, zero-shot", _stat_cell(f"{c}_"))
        for c in ("sampled", "random")
        if c in agg.axes.conditions
    ]
    return cols


def diff_columns(agg: Aggregates, by_direction: bool) -> list[Column]:
    cols: list[Column] = [
        ("comparison", lambda r: r["comparison"]),
        ("technique", lambda r: r["technique"]),
    ]
    if by_direction:
        cols += [("direction", _direction(agg)), ("data", _data(agg))]
    return cols + [
        ("pre", lambda r: str(r["pre_steps"])),
        ("post", lambda r: str(r["post_steps"])),
        ("difference [95% CI]", _diff_cell),
        ("pairs", lambda r: str(r["n_pairs"])),
        ("independent units", lambda r: str(r["n_units"])),
        ("p (t)", lambda r: pval(r["p_t"])),
        ("p (Holm)", lambda r: pval(r["p_holm"])),
        ("p (Wilcoxon)", lambda r: pval(r["p_wilcoxon"])),
        ("g_z", lambda r: num(r["g_z"], 2)),
        ("origin learned", lambda r: r["origin_learned"]),
    ]


def saved_columns(agg: Aggregates, by_direction: bool) -> list[Column]:
    cols: list[Column] = [("technique", lambda r: r["technique"])]
    if by_direction:
        cols += [("direction", _direction(agg)), ("data", _data(agg))]

    def saved_cell(r: dict[str, Any]) -> Cell:
        cls = "missing" if r["runs"] == 0 else ("partial" if r["runs"] < r["expected_runs"] else "")
        return saved_text(r), cls

    return cols + [
        ("pre", lambda r: str(r["pre_steps"])),
        ("ported at step", lambda r: str(r["checkpoint"])),
        (f"ported {agg.metric}", lambda r: num(r["ported_mean"])),
        ("random needs (steps)", needs_text),
        ("steps saved", saved_cell),
        ("95% CI (bootstrap)", saved_ci_text),
        ("runs", lambda r: f"{r['runs']} of {r['expected_runs']}"),
        ("runs reached", lambda r: str(r["runs_reached"])),
    ]


def distance_columns(agg: Aggregates) -> list[Column]:
    def cka(r: dict[str, Any]) -> Cell:
        if r["cka_distance"] is None:
            return "n/a (see notes)", "missing"
        return num(r["cka_distance"]), ""

    def retention(r: dict[str, Any]) -> Cell:
        st = stat_from(r, "retention_")
        if st.mean is None and st.missing and all(k in UNDEFINED for k, _ in st.missing):
            # no result is missing: the ratio is undefined (or has no random to compare with)
            return f"undefined ({st.missing_text()})", ""
        return _stat_cell("retention_", pct=True)(r)

    def weight(r: dict[str, Any]) -> str:
        if r["weight_distance"] is None:
            return f"n/a: {r['weight_note']}"
        return num(r["weight_distance"])

    cols: list[Column] = [
        ("technique", lambda r: r["technique"]),
        ("data", _data(agg)),
        ("pre", lambda r: str(r["pre_steps"])),
        ("direction", _direction(agg)),
        ("layer map", lambda r: r["strategy"]),
        ("CKA distance", cka),
        ("weight distance", weight),
        ("retention, zero-shot [95% CI]", retention),
        ("origin learned", lambda r: r.get("origin_learned", "unknown")),
        ("ported, zero-shot", _stat_cell("ported_")),
    ]
    if "sampled" in agg.axes.conditions:
        cols.append(("sampled, zero-shot (reference)", _stat_cell("sampled_")))
    return cols + [
        ("random, zero-shot", _stat_cell("random_")),
        ("origin (own host)", _stat_cell("origin_")),
    ]


def correlation_columns(agg: Aggregates) -> list[Column]:
    return [
        ("technique", lambda r: r["technique"]),
        ("data", _data(agg)),
        ("pre", lambda r: str(r["pre_steps"])),
        ("distance", lambda r: "CKA" if r["distance"] == "cka" else "weight"),
        ("pairs", lambda r: str(r["pairs"])),
        ("Spearman rho", lambda r: signed(r["spearman_rho"], 2)),
        ("p", lambda r: pval(r["p_value"])),
        ("p from", lambda r: r["p_method"]),
    ]


def distance_blocks(
    agg: Aggregates,
) -> list[tuple[Any, list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per study of the section: (DistanceStudy, its table rows, its correlation rows)."""
    sec = agg.distance
    if sec is None or sec.omitted:
        return []
    out = []
    for st in sec.studies:
        rows = [r for r in agg.tables[DISTANCE_TABLE].rows if r["study_id"] == st.study_id]
        corr = [r for r in agg.tables[CORRELATION_TABLE].rows if r["study_id"] == st.study_id]
        out.append((st, rows, corr))
    return out


def distance_omitted(agg: Aggregates) -> str:
    """One line on why the section is left out ("" when it is there)."""
    if agg.distance is None:
        return "Left out: no host pair information was read."
    return agg.distance.omitted


def ranking_columns() -> list[Column]:
    def rank_iv(r: dict[str, Any]) -> str:
        return f"{r['rank_low']:g}–{r['rank_high']:g}"

    return [
        ("score", lambda r: r["score"]),
        ("rank", lambda r: f"{r['rank']:g}"),
        ("technique", lambda r: r["technique"]),
        (
            "mean score [95% CI]",
            lambda r: (
                f"{signed(r['mean'])} [{signed(r['ci_low'])}, {signed(r['ci_high'])}]"
                if r["ci_low"] is not None
                else f"{signed(r['mean'])} ({r['n']} runs: no interval)"
            ),
        ),
        ("rank 95% interval", rank_iv),
        ("P(best)", lambda r: f"{r['p_best']:.2f}"),
        ("runs", lambda r: str(r["n"])),
    ]


def pivot(agg: Aggregates, table: Table, by_direction: bool) -> tuple[list[str], list[list[Cell]]]:
    """Accuracy table as (setting rows) x (post-porting step columns)."""
    keys = (
        ["technique"]
        + (["origin", "receiver", "pre_data", "post_data"] if by_direction else [])
        + ["condition", "pre_steps"]
    )
    steps = agg.axes.steps
    header = (
        ["technique"]
        + (["direction", "data"] if by_direction else [])
        + ["condition", "pre-porting steps"]
    )
    header += [("0 (zero-shot)" if s == 0 else f"{s} steps") for s in steps]
    rows: dict[tuple, dict[int, dict[str, Any]]] = {}
    for r in table.rows:
        rows.setdefault(tuple(r[k] for k in keys), {})[r["post_steps"]] = r
    out = []
    for by_step in rows.values():
        first = next(iter(by_step.values()))
        cells: list[Cell] = [(first["technique"], "")]
        if by_direction:
            cells += [(_direction(agg)(first), ""), (_data(agg)(first), "")]
        cells += [
            (first["condition"], f"cond-{first['condition']}"),
            ("–" if first["condition"] == "random" else str(first["pre_steps"]), ""),
        ]
        for s in steps:
            cells.append(_stat_cell("")(by_step[s]) if s in by_step else ("n/a", ""))
        out.append(cells)
    return header, out


def _auc_cell(g: dict[str, Any]) -> Cell:
    vals = g.get("auc") or []
    if not vals:
        return "n/a", ""
    mean, low, high, n, _ = mean_interval(vals)
    text = num(mean)
    if low is not None:
        text += f" [{num(low)}, {num(high)}]"
    else:
        text += f" ({n} run{'s' if n > 1 else ''}: no interval)"
    return text, ""


def _saved_with_ci(row: dict[str, Any]) -> str:
    """Steps saved and its bootstrap interval (a lower bound when the random curve does not
    reach the ported module's accuracy within the horizon in every resample)."""
    text = saved_text(row)
    low = row["saved_ci_low"]  # None: no bootstrap (no or too few runs, or not measured)
    if low is None or math.isinf(low):  # inf: not reached in any resample, nothing to add
        return text
    return f"{text} {saved_ci_text(row)}"


def glance_rows(agg: Aggregates) -> tuple[list[str], list[list[Cell]]]:
    header = [
        "technique",
        "learned on its origin",
        "ported, zero-shot [95% CI]",
        "ported AUC, zero-shot",
        "retained of origin",
        "ported − random, zero-shot",
        "p (Holm)",
        "independent units",
        "random steps to match zero-shot",
        "steps saved at zero-shot [95% CI]",
        "rank over all checkpoints",
    ]
    out = []
    for g in agg.glance:
        zs, d, s, rk = g["zero_shot"], g["vs_random"], g["saved"], g["rank"]
        cells: list[Cell] = [(g["technique"], ""), (g["learned"], "")]
        cells.append(_stat_cell("ported_")(zs) if zs else ("n/a", ""))
        cells.append(_auc_cell(g))
        if not g["measured"]:
            # nothing to port: every cell on portability says so instead of a number
            why = "not measured (did not learn on its origin)"
            out.append(cells + [(why, "missing")] * (len(header) - len(cells)))
            continue
        cells.append(_stat_cell("retained_", pct=True)(zs) if zs else ("n/a", ""))
        cells.append(_diff_cell(d) if d else ("n/a", ""))
        cells.append((pval(d["p_holm"]), "") if d else ("n/a", ""))
        cells.append((str(d["n_units"]), "") if d else ("n/a", ""))
        cells.append((needs_text(s), "") if s else ("n/a", ""))
        cells.append((_saved_with_ci(s), "") if s else ("n/a", ""))
        cells.append(
            (f"{rk['rank']:g} (95%: {rk['rank_low']:g}–{rk['rank_high']:g})", "")
            if rk
            else ("n/a", "")
        )
        out.append(cells)
    return header, out


def findings_blocks(agg: Aggregates) -> list[Block]:
    """The paper's findings with this study's verdicts (computed: report.findings)."""
    if not agg.findings:
        return []
    items = [f"{f.claim}: {f.verdict.upper()}. {f.detail}" for f in agg.findings]
    return [
        note("The paper's findings, checked by this study's statistics (zero-shot, each "
             "technique's largest pre-porting step count, techniques that learned on their "
             "origin; p < 0.05 after Holm's correction):"),
        Bullets(items),
    ]  # fmt: skip


def apply(
    columns: Sequence[Column], rows: list[dict[str, Any]]
) -> tuple[list[str], list[list[Cell]]]:
    out = []
    for r in rows:
        cells = []
        for _, f in columns:
            v = f(r)
            cells.append(v if isinstance(v, tuple) else (v, ""))
        out.append(cells)
    return [h for h, _ in columns], out
