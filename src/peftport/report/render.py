"""The report as text: one self-contained HTML page, Markdown, and CSV of every table.

Pure: tables and figure bytes in, strings out (writing files is `build_report`'s job). The HTML
has no script, no external reference (figures are embedded as base64 PNG; links go to the
report's own CSV and SVG files beside it) and its style inline, so it opens anywhere, offline.
One formatting layer serves HTML and Markdown: a missing result reads "missing (1 failed)",
never 0.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from peftport.report.distance import CORRELATION_TABLE, NOT_ABOVE, NOT_PLANNED
from peftport.report.distance import TABLE as DISTANCE_TABLE
from peftport.report.load import StoreData
from peftport.report.model import Aggregates, Stat, Table, stat_from

Cell = tuple[str, str]  # (text, css class)
UNDEFINED = (NOT_ABOVE, NOT_PLANNED)  # retention without a missing result
Column = tuple[str, Callable[[dict[str, Any]], str | Cell]]


@dataclass
class RenderedFigure:
    stem: str
    title: str
    caption: str
    png: bytes
    svg: bytes
    notes: list[str]
    technique: str = ""


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
    """ "0.712 [0.650, 0.774]", with "(3 of 4; 1 failed)" when partial; "missing (...)" when
    nothing is there; "n/a" when the study has no such result."""
    if st.expected == 0:
        return "n/a"
    if st.mean is None:
        return f"missing ({st.missing_text() or 'no result'})"
    f = (lambda x: f"{100 * x:.{max(digits - 2, 0)}f}%") if pct else (lambda x: num(x, digits))
    text = f(st.mean)
    if st.low is not None and st.high is not None:
        text += f" [{f(st.low)}, {f(st.high)}]"
    if not st.complete:
        text += f" ({st.n} of {st.expected}; {st.missing_text()})"
    return text


def _stat_cell(prefix: str, pct: bool = False) -> Callable[[dict[str, Any]], Cell]:
    def cell(row: dict[str, Any]) -> Cell:
        st = stat_from(row, prefix)
        text = stat_text(st, pct=pct)
        return text, "missing" if st.mean is None and st.expected else (
            "partial" if not st.complete and st.expected else ""
        )

    return cell


def diff_text(row: dict[str, Any]) -> str:
    if row["n_pairs"] == 0:
        return f"missing ({row['missing_pairs'] or 'no pair'})"
    text = signed(row["mean_diff"])
    if row["ci_low"] is not None:
        text += f" [{signed(row['ci_low'])}, {signed(row['ci_high'])}]"
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
        ("p (t)", lambda r: pval(r["p_t"])),
        ("p (Holm)", lambda r: pval(r["p_holm"])),
        ("p (Wilcoxon)", lambda r: pval(r["p_wilcoxon"])),
        ("g_z", lambda r: num(r["g_z"], 2)),
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
            lambda r: f"{signed(r['mean'])} [{signed(r['ci_low'])}, {signed(r['ci_high'])}]",
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


def glance_rows(agg: Aggregates) -> tuple[list[str], list[list[Cell]]]:
    header = [
        "technique",
        "ported, zero-shot [95% CI]",
        "retained of origin",
        "ported − random, zero-shot",
        "p (Holm)",
        "random steps to match zero-shot",
        "steps saved at zero-shot",
        "portability rank",
    ]
    out = []
    for g in agg.glance:
        zs, d, s, rk = g["zero_shot"], g["vs_random"], g["saved"], g["rank"]
        cells: list[Cell] = [(g["technique"], "")]
        cells.append(_stat_cell("ported_")(zs) if zs else ("n/a", ""))
        cells.append(_stat_cell("retained_", pct=True)(zs) if zs else ("n/a", ""))
        cells.append(_diff_cell(d) if d else ("n/a", ""))
        cells.append((pval(d["p_holm"]), "") if d else ("n/a", ""))
        cells.append((needs_text(s), "") if s else ("n/a", ""))
        cells.append((saved_text(s), "") if s else ("n/a", ""))
        cells.append(
            (f"{rk['rank']:g} (95%: {rk['rank_low']:g}–{rk['rank_high']:g})", "")
            if rk
            else ("n/a", "")
        )
        out.append(cells)
    return header, out


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


# --- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font:15px/1.5 -apple-system,'Segoe UI',Roboto,'DejaVu Sans',Arial,sans-serif;color:#1d1d1f;
max-width:1180px;margin:0 auto;padding:24px 28px 60px;background:#fff}
h1{font-size:26px;margin:0 0 4px}h2{font-size:20px;margin:36px 0 8px;border-bottom:1px solid #ddd;
padding-bottom:4px}h3{font-size:16px;margin:22px 0 6px}
.meta{color:#555;font-size:13px}.meta code{font-size:12px}
.warn{background:#fff4e5;border-left:4px solid #e69f00;padding:10px 14px;margin:14px 0}
.ok{background:#eef7ee;border-left:4px solid #3a9a3a;padding:10px 14px;margin:14px 0}
table{border-collapse:collapse;margin:8px 0 6px;font-size:13px;font-variant-numeric:tabular-nums}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 9px;text-align:left;vertical-align:top}
th{background:#f5f5f7;font-weight:600}tr:hover td{background:#fafafa}
td.missing{color:#b00020;font-style:italic}td.partial{color:#8a5a00}td.sig{font-weight:700}
td.cond-ported{color:#0072b2;font-weight:600}td.cond-sampled{color:#a86f00}td.cond-random{color:#666}
.note{color:#555;font-size:13px;margin:2px 0 8px}
figure{margin:16px 0 26px}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:13px;color:#444;margin-top:4px}
details{margin:8px 0}summary{cursor:pointer;color:#0b5cad}
nav ul{columns:2;font-size:14px}pre{background:#f6f8fa;padding:10px;overflow:auto;font-size:12px}
.tablewrap{overflow-x:auto}
"""


def _e(x: Any) -> str:
    return html.escape(str(x), quote=True)


def html_table(header: list[str], rows: list[list[Cell]]) -> str:
    if not rows:
        return '<p class="note">(no rows: the study has no such results)</p>'
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f'<td class="{_e(c)}">{_e(t)}</td>' if c else f"<td>{_e(t)}</td>" for t, c in r)
        + "</tr>"
        for r in rows
    )
    return f'<div class="tablewrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _notes_html(notes: list[str]) -> str:
    return "".join(f'<p class="note">{_e(n)}</p>' for n in notes)


def _csv_link(name: str) -> str:
    return f'<p class="note">CSV: <a href="tables/{_e(name)}.csv">tables/{_e(name)}.csv</a></p>'


def _figure_html(f: RenderedFigure) -> str:
    b64 = base64.b64encode(f.png).decode("ascii")
    notes = ""
    if f.notes:
        notes = '<p class="note"><b>Missing results:</b> ' + _e("; ".join(f.notes)) + "</p>"
    return (
        f'<figure id="{_e(f.stem)}"><img src="data:image/png;base64,{b64}" alt="{_e(f.title)}">'
        f"<figcaption>{_e(f.caption)} "
        f'(<a href="figures/{_e(f.stem)}.svg">SVG</a>, <a href="figures/{_e(f.stem)}.png">PNG</a>)'
        f"</figcaption>{notes}</figure>"
    )


def _status_html(data: StoreData, agg: Aggregates) -> str:
    st = data.unit_status
    missing = [o for o in data.observations if o.value is None]
    if not missing:
        return f'<div class="ok">Complete: all {st["done"]} units are done; every result is in the tables.</div>'
    by = {}
    for o in missing:
        by[o.missing] = by.get(o.missing, 0) + 1
    parts = ", ".join(f"{v} {k}" for k, v in sorted(by.items()))
    return (
        f'<div class="warn"><b>Incomplete study:</b> {len(missing)} of {len(data.observations)} '
        f"results are missing ({_e(parts)}); units: {st['done']} done, {st['running']} running, "
        f"{st['pending']} pending, {st['failed']} failed. Missing results are shown as "
        '"missing", never as zero; means use the results that exist and say how many. '
        '<a href="#missing">Details</a>.</div>'
    )


METHODS = [
    "Means: over seeds (by-direction tables, figures) or over seeds, porting directions and data "
    "combinations (pooled tables, overview); each unit result counted once. 95% confidence "
    "intervals: Student t, mean ± t(0.975, n−1)·sd/√n (none for n = 1).",
    "Retained: per seed, ported zero-shot accuracy on the receiver divided by the same module's "
    "accuracy on its origin after the pre-porting steps; mean and t interval of those ratios.",
    "Differences: pairs share technique, origin, receiver, data sets, seed, pre-porting steps "
    "(random has none: it pairs with every pre-porting step count) and post-porting steps. "
    "Paired t-test and Wilcoxon signed-rank test (exact up to 25 pairs), two-sided; Holm "
    "correction over all rows of a table (the p_t values); effect sizes d_z = mean/sd of the "
    "differences and g_z = J(n−1)·d_z (Hedges). Bold: Holm-adjusted p < 0.05.",
    "Retention against host distance: per seed, (ported − random) / (origin − random) at "
    "zero-shot, mean and t interval over seeds; CKA distance of a pair = 1 − mean over receiver "
    "layers of the CKA with the origin layer each receives (the pair's layer map); Spearman's "
    "rho of distance and mean retention over the pairs (3 or more), p exact up to 8 pairs.",
    "Steps saved: on the mean curves over complete runs, the first post-porting step at which "
    "random reaches what ported has at checkpoint k (linear interpolation between checkpoints), "
    "minus k; 'not reached' when random never gets there by its last checkpoint. Interval: 95% "
    "percentile bootstrap over runs.",
    "Ranking: per run, the score ported − random (averaged over checkpoints, or at step 0); "
    "techniques ranked by mean score, rank intervals and P(best) from a bootstrap over runs "
    "(paired when every technique has the same runs).",
]


def render_html(
    data: StoreData,
    agg: Aggregates,
    figs: list[RenderedFigure],
    overview: RenderedFigure | None,
    generated_at: str,
    version: str,
    distance_figs: Sequence[RenderedFigure] = (),
) -> str:
    names = ", ".join(s["name"] for s in data.studies)
    t = agg.tables
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>peftport report: {_e(names)}</title><style>{CSS}</style></head><body>",
        f"<h1>Portability report: {_e(names)}</h1>",
        f'<p class="meta">Store <code>{_e(data.path)}</code> · metric: <b>{_e(agg.metric)}</b> · '
        f"generated {_e(generated_at)} by peftport {_e(version)} · git "
        + ", ".join(
            f"<code>{_e(g)}</code>" for g in data.provenance.get("git", {}) or {"unknown": 0}
        )
        + "</p>",
        _status_html(data, agg),
        "<nav><ul>"
        + "".join(
            f'<li><a href="#{a}">{_e(b)}</a></li>'
            for a, b in [
                ("glance", "At a glance"),
                ("figures", "Figures"),
                ("zero-shot", "Zero-shot portability"),
                ("distance", "Retention against host distance"),
                ("accuracy", "Accuracy by condition and steps"),
                ("differences", "Ported minus controls"),
                ("steps-saved", "Steps saved"),
                ("ranking", "Ranking"),
                ("missing", "Missing results"),
                ("methods", "Statistics"),
                ("provenance", "Provenance"),
            ]
        )
        + "</ul></nav>",
        '<h2 id="glance">At a glance</h2>',
        f'<p class="note">Per technique, modules trained {max(agg.axes.pre_steps) if agg.axes.pre_steps else "–"} '
        "steps before porting, pooled over porting directions, data combinations and seeds.</p>",
        html_table(*glance_rows(agg)),
        '<h2 id="figures">Figures</h2>',
    ]
    if overview is not None:
        parts.append(_figure_html(overview))
    current = None
    for f in figs:
        if f.technique != current:
            current = f.technique
            parts.append(f"<h3>{_e(current)}</h3>")
        parts.append(_figure_html(f))
    parts += [
        '<h2 id="zero-shot">Zero-shot portability</h2>',
        html_table(*apply(zero_shot_columns(agg, False), t["zero_shot_by_technique"].rows)),
        _notes_html(t["zero_shot_by_technique"].notes + t["zero_shot"].notes),
        _csv_link("zero_shot_by_technique"),
        "<details><summary>By direction and data combination</summary>",
        html_table(*apply(zero_shot_columns(agg, True), t["zero_shot"].rows)),
        _csv_link("zero_shot"),
        "</details>",
        *_distance_html(agg, distance_figs),
        '<h2 id="accuracy">Accuracy by technique, condition and post-porting steps</h2>',
        html_table(*pivot(agg, t["accuracy"], False)),
        _notes_html(t["accuracy"].notes),
        _csv_link("accuracy"),
        "<details><summary>By direction and data combination</summary>",
        html_table(*pivot(agg, t["accuracy_by_direction"], True)),
        _csv_link("accuracy_by_direction"),
        "</details>",
        '<h2 id="differences">Ported minus sampled and ported minus random</h2>',
        html_table(*apply(diff_columns(agg, False), t["differences"].rows)),
        _notes_html(t["differences"].notes),
        _csv_link("differences"),
        "<details><summary>By direction and data combination</summary>",
        html_table(*apply(diff_columns(agg, True), t["differences_by_direction"].rows)),
        _notes_html(t["differences_by_direction"].notes),
        _csv_link("differences_by_direction"),
        "</details>",
        '<h2 id="steps-saved">Steps saved: the training porting saves</h2>',
        html_table(*apply(saved_columns(agg, False), t["steps_saved"].rows)),
        _notes_html(t["steps_saved"].notes),
        _csv_link("steps_saved"),
        "<details><summary>By direction and data combination</summary>",
        html_table(*apply(saved_columns(agg, True), t["steps_saved_by_direction"].rows)),
        _csv_link("steps_saved_by_direction"),
        "</details>",
        '<h2 id="ranking">Techniques ranked by portability</h2>',
        html_table(*apply(ranking_columns(), t["ranking"].rows)),
        _notes_html(t["ranking"].notes),
        _csv_link("ranking"),
        '<h2 id="missing">Missing results</h2>',
        _missing_html(data),
        '<h2 id="methods">Statistics</h2>',
        "<ul>" + "".join(f"<li>{_e(m)}</li>" for m in METHODS) + "</ul>",
        '<p class="note">Exact definitions: docs/report.md in the peftport repository. Every '
        'result the tables use: <a href="tables/results.csv">tables/results.csv</a>.</p>',
        '<h2 id="provenance">Provenance</h2>',
        _provenance_html(data, generated_at, version),
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"


def _distance_html(agg: Aggregates, figs: Sequence[RenderedFigure]) -> list[str]:
    parts = ['<h2 id="distance">Zero-shot retention against host distance</h2>']
    omitted = distance_omitted(agg)
    if omitted:
        return parts + [f'<p class="note">{_e(omitted)}</p>']
    by_stem = {f.stem: f for f in figs}
    blocks = distance_blocks(agg)
    parts.append(_notes_html(agg.tables[DISTANCE_TABLE].notes))  # what the numbers are, first
    for st, rows, corr in blocks:
        if len(blocks) > 1:
            parts.append(f"<h3>Study {_e(st.name)}</h3>")
        parts.append(html_table(*apply(distance_columns(agg), rows)))
        if corr:
            parts.append(html_table(*apply(correlation_columns(agg), corr)))
        parts.append(_notes_html(st.notes))
        parts += [_figure_html(by_stem[f.stem]) for f in st.figures if f.stem in by_stem]
    if agg.distance.skipped:
        parts.append(_notes_html(["Not shown: " + "; ".join(agg.distance.skipped)]))
    return parts + [
        _notes_html(agg.tables[CORRELATION_TABLE].notes),
        _csv_link(DISTANCE_TABLE),
        _csv_link(CORRELATION_TABLE),
    ]


def _missing_html(data: StoreData) -> str:
    missing = [o for o in data.observations if o.value is None]
    if not missing:
        return '<p class="note">None: every planned result is in the store.</p>'
    out = [
        f'<p class="note">{len(missing)} result(s) missing. Failed units (rerun them with '
        "<code>peftport study run --retry-failed</code>):</p>"
    ]
    if data.failed_units:
        out.append(
            html_table(
                ["unit", "what", "error"],
                [
                    [(f["id"], ""), (f["label"], ""), (f["error"], "missing")]
                    for f in data.failed_units
                ],
            )
        )
    else:
        out.append('<p class="note">(none failed)</p>')
    by_status: dict[str, int] = {}
    for o in missing:
        by_status[o.missing or ""] = by_status.get(o.missing or "", 0) + 1
    out.append(
        '<p class="note">Missing results by reason: '
        + _e(", ".join(f"{v} {k}" for k, v in sorted(by_status.items())))
        + ". The list is in tables/missing.csv.</p>"
    )
    return "".join(out)


def _provenance_html(data: StoreData, generated_at: str, version: str) -> str:
    p = data.provenance
    rows = [
        ("store", str(data.path)),
        ("store created", data.created_at),
        ("read at", data.read_at),
        ("report generated", f"{generated_at} (peftport {version})"),
        ("units", ", ".join(f"{v} {k}" for k, v in data.unit_status.items())),
        (
            "compute",
            f"{p.get('unit_seconds', 0):,.0f} s in done units; first started "
            f"{p.get('first_started') or '–'}, last finished {p.get('last_finished') or '–'}",
        ),
        (
            "git revision(s)",
            "; ".join(f"{g} ({n} units)" for g, n in p.get("git", {}).items()) or "–",
        ),
    ]
    for name, versions in p.get("versions", {}).items():
        txt = "; ".join(f"{v} ({n} units)" for v, n in versions.items())
        if len(versions) > 1:
            txt += "  — MIXED VERSIONS"
        rows.append((f"version: {name}", txt))
    for h, fps in p.get("host_fingerprints", {}).items():
        rows.append((f"host {h}", ", ".join(f[:16] for f in fps)))
    for d, fps in p.get("data_fingerprints", {}).items():
        rows.append((f"data {d}", ", ".join(f[:16] for f in fps)))
    out = [html_table(["what", "value"], [[(a, ""), (b, "")] for a, b in rows])]
    for s in data.studies:
        out.append(
            f"<details><summary>study {_e(s['name'])} ({_e(s['id'])}), {_e(s['source'] or '')}: "
            f"{s['runs']} runs, {s['units']} units</summary><pre>{_e(json.dumps(s.get('spec', {}), indent=2))}</pre></details>"
        )
    return "".join(out)


# --- Markdown --------------------------------------------------------------------------------------


def md_table(header: list[str], rows: list[list[Cell]]) -> str:
    if not rows:
        return "_(no rows: the study has no such results)_\n"

    def esc(x: str) -> str:
        return str(x).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(esc(t) for t, _ in r) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def _md_figure(f: RenderedFigure, notes_label: str) -> list[str]:
    """A figure in Markdown: the PNG, its caption with a link to the SVG, then its notes."""
    out = [
        f"![{f.title}](figures/{f.stem}.png)",
        "",
        f"_{f.caption}_ ([SVG](figures/{f.stem}.svg))",
        "",
    ]
    if f.notes:
        out += [f"{notes_label}: " + "; ".join(f.notes), ""]
    return out


def render_markdown(
    data: StoreData,
    agg: Aggregates,
    figs: list[RenderedFigure],
    overview: RenderedFigure | None,
    generated_at: str,
    version: str,
    distance_figs: Sequence[RenderedFigure] = (),
) -> str:
    t = agg.tables
    names = ", ".join(s["name"] for s in data.studies)
    missing = sum(1 for o in data.observations if o.value is None)
    out = [
        f"# Portability report: {names}",
        "",
        f"Store `{data.path}`; metric **{agg.metric}**; generated {generated_at} by peftport {version}; "
        f"git {', '.join(data.provenance.get('git', {})) or 'unknown'}.",
        "",
        (
            f"**Incomplete study:** {missing} of {len(data.observations)} results are missing (shown as "
            "missing, never as zero)."
            if missing
            else "Complete: every planned result is in the store."
        ),
        "",
        "## At a glance",
        "",
        md_table(*glance_rows(agg)),
        "## Figures",
        "",
    ]
    for f in ([overview] if overview else []) + figs:
        out += _md_figure(f, "Missing results")
    sections = [
        ("Zero-shot portability", zero_shot_columns(agg, False), "zero_shot_by_technique"),
        ("Zero-shot portability by direction and data", zero_shot_columns(agg, True), "zero_shot"),
        ("Ported minus controls", diff_columns(agg, False), "differences"),
        (
            "Ported minus controls by direction and data",
            diff_columns(agg, True),
            "differences_by_direction",
        ),
        ("Steps saved", saved_columns(agg, False), "steps_saved"),
        ("Steps saved by direction and data", saved_columns(agg, True), "steps_saved_by_direction"),
        ("Ranking", ranking_columns(), "ranking"),
    ]
    out += [
        "## Accuracy by technique, condition and post-porting steps",
        "",
        md_table(*pivot(agg, t["accuracy"], False)),
    ]
    out += [f"_{n}_" for n in t["accuracy"].notes] + [""]
    out += [
        "## Accuracy by direction and data",
        "",
        md_table(*pivot(agg, t["accuracy_by_direction"], True)),
    ]
    for title, cols, name in sections:
        out += [f"## {title}", "", md_table(*apply(cols, t[name].rows))]
        out += [f"_{n}_" for n in t[name].notes] + ["", f"CSV: `tables/{name}.csv`", ""]
        if name == "zero_shot":  # then how zero-shot portability falls with host distance
            out += _distance_markdown(agg, distance_figs)
    out += ["## Missing results", ""]
    if data.failed_units:
        out.append(
            md_table(
                ["unit", "what", "error"],
                [[(f["id"], ""), (f["label"], ""), (f["error"], "")] for f in data.failed_units],
            )
        )
    out += [f"{missing} result(s) missing." if missing else "None.", ""]
    out += ["## Statistics", ""] + [f"- {m}" for m in METHODS] + [""]
    p = data.provenance
    out += [
        "## Provenance",
        "",
        f"- store: `{data.path}` (created {data.created_at}, read {data.read_at})",
        "- studies: "
        + "; ".join(f"{s['name']} ({s['id']}, {s['source'] or ''})" for s in data.studies),
        "- units: " + ", ".join(f"{v} {k}" for k, v in data.unit_status.items()),
        "- git: " + "; ".join(f"{g} ({n} units)" for g, n in p.get("git", {}).items()),
    ]
    for name, versions in p.get("versions", {}).items():
        out.append(f"- {name}: " + "; ".join(f"{v} ({n} units)" for v, n in versions.items()))
    return "\n".join(out) + "\n"


def _distance_markdown(agg: Aggregates, figs: Sequence[RenderedFigure]) -> list[str]:
    out = ["## Zero-shot retention against host distance", ""]
    omitted = distance_omitted(agg)
    if omitted:
        return out + [omitted, ""]
    by_stem = {f.stem: f for f in figs}
    blocks = distance_blocks(agg)
    out += [f"_{n}_\n" for n in agg.tables[DISTANCE_TABLE].notes]  # what the numbers are, first
    for st, rows, corr in blocks:
        if len(blocks) > 1:
            out += [f"### Study {st.name}", ""]
        out.append(md_table(*apply(distance_columns(agg), rows)))
        if corr:
            out.append(md_table(*apply(correlation_columns(agg), corr)))
        out += [f"_{n}_" for n in st.notes] + ([""] if st.notes else [])
        for spec in st.figures:
            f = by_stem.get(spec.stem)
            if f is None:
                continue
            out += _md_figure(f, "Notes")
    if agg.distance.skipped:
        out += ["Not shown: " + "; ".join(agg.distance.skipped), ""]
    notes = agg.tables[CORRELATION_TABLE].notes
    return (
        out
        + [f"_{n}_" for n in notes]
        + [
            "",
            f"CSV: `tables/{DISTANCE_TABLE}.csv`, `tables/{CORRELATION_TABLE}.csv`",
            "",
        ]
    )


# --- CSV -----------------------------------------------------------------------------------------


def _csv_value(x: Any) -> Any:
    if x is None:
        return ""
    if isinstance(x, float):
        if math.isnan(x):
            return ""
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return repr(x)
    return x


def render_csv(table: Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for r in table.rows:
        w.writerow([_csv_value(r.get(c)) for c in table.columns])
    return buf.getvalue()
