"""The report as text: one self-contained HTML page, Markdown, and CSV of every table.

Pure: tables and figure bytes in, strings out (writing files is `build_report`'s job). The HTML
has no script, no external reference (figures are embedded as base64 PNG; links go to the
report's own CSV and SVG files beside it) and its style inline, so it opens anywhere, offline.
One formatting layer serves HTML and Markdown: a missing result reads "missing (1 failed)",
never 0. `page` lists the sections in order, as blocks (tables, notes, figures, ...); the
jinja2 templates in templates/ render that one list as HTML (autoescaped) and as Markdown.
"""

from __future__ import annotations

import base64
import csv
import functools
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import jinja2

from peftport.report.distance import CORRELATION_TABLE, NOT_ABOVE, NOT_PLANNED
from peftport.report.distance import TABLE as DISTANCE_TABLE
from peftport.report.load import StoreData
from peftport.report.methods import METHODS
from peftport.report.model import ONE_CLASS, Aggregates, Stat, Table, stat_from
from peftport.report.science import NOT_LEARNED, NOT_LEARNED_AUC, NOT_LEARNED_MARGIN
from peftport.report.uncertainty import MIN_RUNS, mean_interval

Cell = tuple[str, str]  # (text, css class)
UNDEFINED = (NOT_ABOVE, NOT_PLANNED, NOT_LEARNED)  # retention without a missing result
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
            lambda r: f"{signed(r['mean'])} [{signed(r['ci_low'])}, {signed(r['ci_high'])}]"
            if r["ci_low"] is not None
            else f"{signed(r['mean'])} ({r['n']} runs: no interval)",
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
        "steps saved at zero-shot",
        "portability rank",
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
        cells.append((saved_text(s), "") if s else ("n/a", ""))
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
        note("The paper's findings, checked by this study's statistics (zero-shot, largest "
             "pre-porting step count, techniques that learned on their origin; p < 0.05 after "
             "Holm's correction):"),
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


# --- the page: one ordered list of sections ---------------------------------------------------
#
# `page` decides what the report says and in which order; the templates (templates/report.html,
# templates/report.md) only decide how each kind of block looks. So HTML and Markdown cannot
# drift apart: a section added to `page` appears in both, in the same place.


@dataclass(frozen=True)
class Span:
    """A run of a note's text: plain, `code`, `bold` or a `link` to `href`."""

    text: str
    kind: str = ""
    href: str = ""


@dataclass(frozen=True)
class Note:
    spans: tuple[Span, ...]
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class TableBlock:
    header: list[str]
    rows: list[list[Cell]]
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class CsvLinks:
    names: tuple[str, ...]  # table names: tables/<name>.csv
    kind: ClassVar[str] = "csv"


@dataclass(frozen=True)
class Heading:
    text: str
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Figure:
    figure: RenderedFigure
    notes_label: str  # what its notes are: "Missing results", "Notes"
    kind: ClassVar[str] = "figure"

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.figure.png).decode("ascii")


@dataclass(frozen=True)
class Details:
    """Blocks folded away under `summary` (HTML), a subsection (Markdown)."""

    summary: str
    blocks: list[Any]
    kind: ClassVar[str] = "details"


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass(frozen=True)
class Code:
    summary: str
    text: str
    kind: ClassVar[str] = "code"


Block = Note | TableBlock | CsvLinks | Heading | Figure | Details | Bullets | Code


@dataclass(frozen=True)
class Section:
    id: str  # the HTML anchor
    nav: str  # its entry in the page's contents
    title: str
    blocks: list[Block]


@dataclass(frozen=True)
class Page:
    title: str
    store: str
    metric: str
    generated_at: str
    version: str
    git: list[str]
    complete: bool
    status: str  # one line: what is complete, or how much is missing
    sections: list[Section]


def note(*parts: str | Span) -> Note:
    return Note(tuple(p if isinstance(p, Span) else Span(p) for p in parts))


def notes(texts: Sequence[str]) -> list[Block]:
    return [note(t) for t in texts]


BY_DIRECTION = "By direction and data combination"


def _pooled_and_by_direction(
    agg: Aggregates,
    names: tuple[str, str],
    render: Callable[[Table, bool], tuple[list[str], list[list[Cell]]]],
    *,
    pooled_notes: Sequence[str],
    direction_notes: bool = False,
) -> list[Block]:
    """A pooled table (names[0]), its notes and CSV, then its by-direction twin (names[1])
    folded away."""
    pooled, by_dir = agg.tables[names[0]], agg.tables[names[1]]
    folded: list[Block] = [TableBlock(*render(by_dir, True))]
    folded += notes(by_dir.notes) if direction_notes else []
    return [
        TableBlock(*render(pooled, False)),
        *notes(pooled_notes),
        CsvLinks((pooled.name,)),
        Details(BY_DIRECTION, [*folded, CsvLinks((by_dir.name,))]),
    ]


def _columns(
    spec: Callable[[Aggregates, bool], list[Column]], agg: Aggregates
) -> Callable[[Table, bool], tuple[list[str], list[list[Cell]]]]:
    return lambda table, by_direction: apply(spec(agg, by_direction), table.rows)


def _figure_blocks(overview: RenderedFigure | None, figs: Sequence[RenderedFigure]) -> list[Block]:
    out: list[Block] = [Figure(overview, "Notes")] if overview is not None else []
    current = None
    for f in figs:
        if f.technique != current:
            current = f.technique
            out.append(Heading(current))
        out.append(Figure(f, "Notes"))
    return out


def _distance_blocks(agg: Aggregates, figs: Sequence[RenderedFigure]) -> list[Block]:
    omitted = distance_omitted(agg)
    if omitted:
        return [note(omitted)]
    by_stem = {f.stem: f for f in figs}
    blocks = distance_blocks(agg)
    out = notes(agg.tables[DISTANCE_TABLE].notes)  # what the numbers are, first
    for st, rows, corr in blocks:
        if len(blocks) > 1:
            out.append(Heading(f"Study {st.name}"))
        out.append(TableBlock(*apply(distance_columns(agg), rows)))
        if corr:
            out.append(TableBlock(*apply(correlation_columns(agg), corr)))
        out += notes(st.notes)
        out += [Figure(by_stem[f.stem], "Notes") for f in st.figures if f.stem in by_stem]
    if agg.distance.skipped:
        out.append(note("Not shown: " + "; ".join(agg.distance.skipped)))
    return [
        *out,
        *notes(agg.tables[CORRELATION_TABLE].notes),
        CsvLinks((DISTANCE_TABLE, CORRELATION_TABLE)),
    ]


def _missing_blocks(data: StoreData) -> list[Block]:
    missing = [o for o in data.observations if o.value is None]
    if not missing:
        return [note("None: every planned result is in the store.")]
    out: list[Block] = [
        note(
            f"{len(missing)} result(s) missing. Failed units (rerun them with ",
            Span("peftport study run --retry-failed", "code"),
            "):",
        )
    ]
    if data.failed_units:
        rows = [
            [(f["id"], ""), (f["label"], ""), (f["error"], "missing")] for f in data.failed_units
        ]
        out.append(TableBlock(["unit", "what", "error"], rows))
    else:
        out.append(note("(none failed)"))
    by_status = Counter(o.missing or "" for o in missing)
    reasons = ", ".join(f"{v} {k}" for k, v in sorted(by_status.items()))
    out.append(note(f"Missing results by reason: {reasons}. The list is in tables/missing.csv."))
    return out


# what each head policy means for the controls (peftport.porting); studies that predate the
# setting stored no head_policy: follow, what they ran
HEAD_POLICY_TEXT = {
    "follow": "follow (sampled and random draw or re-initialise the head with the body)",
    "origin": "origin (the origin's trained head in every condition: controls differ in the "
              "body only)",
}


def _provenance_blocks(data: StoreData, generated_at: str, version: str) -> list[Block]:
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
    rows.append(("head policy (encoder classifiers)", "; ".join(
        f"{st['name']}: " + HEAD_POLICY_TEXT[(st.get("spec") or {}).get("head_policy", "follow")]
        for st in data.studies) or "–"))
    for name, versions in p.get("versions", {}).items():
        txt = "; ".join(f"{v} ({n} units)" for v, n in versions.items())
        if len(versions) > 1:
            txt += "  — MIXED VERSIONS"
        rows.append((f"version: {name}", txt))
    for h, fps in p.get("host_fingerprints", {}).items():
        rows.append((f"host {h}", ", ".join(f[:16] for f in fps)))
    for d, fps in p.get("data_fingerprints", {}).items():
        rows.append((f"data {d}", ", ".join(f[:16] for f in fps)))
    out: list[Block] = [TableBlock(["what", "value"], [[(a, ""), (b, "")] for a, b in rows])]
    for st in data.studies:
        out.append(
            Code(
                f"study {st['name']} ({st['id']}), {st['source'] or ''}: "
                f"{st['runs']} runs, {st['units']} units",
                json.dumps(st.get("spec", {}), indent=2),
            )
        )
    return out


def _status(data: StoreData) -> str:
    st = data.unit_status
    missing = Counter(o.missing for o in data.observations if o.value is None)
    if not missing:
        return f"Complete: all {st['done']} units are done; every result is in the tables."
    parts = ", ".join(f"{v} {k}" for k, v in sorted(missing.items()))
    return (
        f"{missing.total()} of {len(data.observations)} results are missing ({parts}); units: "
        f"{st['done']} done, {st['running']} running, {st['pending']} pending, "
        f'{st["failed"]} failed. Missing results are shown as "missing", never as zero; means '
        "use the results that exist and say how many."
    )


def page(
    data: StoreData,
    agg: Aggregates,
    figs: Sequence[RenderedFigure],
    overview: RenderedFigure | None,
    generated_at: str,
    version: str,
    distance_figs: Sequence[RenderedFigure] = (),
    extra: Sequence[Section] = (),
    statistics_notes: Sequence[str] = (),
) -> Page:
    """The report's sections, in the order both formats show them (`extra`: sections of other
    report modules, e.g. report.agreement's, before *Missing results*)."""
    t = agg.tables
    pre = max(agg.axes.pre_steps) if agg.axes.pre_steps else "–"
    sections = [
        Section(
            "glance",
            "At a glance",
            "At a glance",
            [
                *findings_blocks(agg),
                note(
                    f"Per technique, modules trained {pre} steps before porting, pooled over "
                    "porting directions, data combinations and seeds."
                ),
                TableBlock(*glance_rows(agg)),
                note(
                    f"A module has not learned when its mean accuracy on its origin is within "
                    f"{NOT_LEARNED_MARGIN:.2f} of the test split's majority-class rate or its mean "
                    f"AUC is below {NOT_LEARNED_AUC:.2f}; its portability is then not measured. "
                    f"[one class]: {ONE_CLASS:.0%} or more of the predictions are one class."
                ),
            ],
        ),
        Section("figures", "Figures", "Figures", _figure_blocks(overview, figs)),
        Section(
            "zero-shot",
            "Zero-shot portability",
            "Zero-shot portability",
            _pooled_and_by_direction(
                agg,
                ("zero_shot_by_technique", "zero_shot"),
                _columns(zero_shot_columns, agg),
                pooled_notes=t["zero_shot_by_technique"].notes + t["zero_shot"].notes,
            ),
        ),
        Section(
            "distance",
            "Retention against host distance",
            "Zero-shot retention against host distance",
            _distance_blocks(agg, distance_figs),
        ),
        Section(
            "accuracy",
            "Accuracy by condition and steps",
            "Accuracy by technique, condition and post-porting steps",
            _pooled_and_by_direction(
                agg,
                ("accuracy", "accuracy_by_direction"),
                lambda table, by_direction: pivot(agg, table, by_direction),
                pooled_notes=t["accuracy"].notes,
            ),
        ),
        Section(
            "differences",
            "Ported minus controls",
            "Ported minus sampled and ported minus random",
            _pooled_and_by_direction(
                agg,
                ("differences", "differences_by_direction"),
                _columns(diff_columns, agg),
                pooled_notes=t["differences"].notes,
                direction_notes=True,
            ),
        ),
        Section(
            "steps-saved",
            "Steps saved",
            "Steps saved: the training porting saves",
            _pooled_and_by_direction(
                agg,
                ("steps_saved", "steps_saved_by_direction"),
                _columns(saved_columns, agg),
                pooled_notes=t["steps_saved"].notes,
            ),
        ),
        Section(
            "ranking",
            "Ranking",
            "Techniques ranked by portability",
            [
                TableBlock(*apply(ranking_columns(), t["ranking"].rows)),
                *notes(t["ranking"].notes),
                CsvLinks(("ranking",)),
            ],
        ),
        *extra,
        Section("missing", "Missing results", "Missing results", _missing_blocks(data)),
        Section(
            "methods",
            "Statistics",
            "Statistics",
            [
                Bullets(METHODS),
                *notes(statistics_notes),
                note(
                    "Exact definitions: docs/report.md in the peftport repository. Every result "
                    "the tables use: ",
                    Span("tables/results.csv", "link", "tables/results.csv"),
                    ".",
                ),
            ],
        ),
        Section(
            "provenance",
            "Provenance",
            "Provenance",
            _provenance_blocks(data, generated_at, version),
        ),
    ]
    return Page(
        title=", ".join(s["name"] for s in data.studies),
        store=str(data.path),
        metric=agg.metric,
        generated_at=generated_at,
        version=version,
        git=list(data.provenance.get("git", {})),
        complete=all(o.value is not None for o in data.observations),
        status=_status(data),
        sections=sections,
    )


# --- HTML and Markdown: the templates ------------------------------------------------------------


def _md_text(x: Any) -> str:
    """A Markdown table cell: no column break, no line break."""
    return str(x).replace("|", "\\|").replace("\n", " ")


@functools.cache
def _templates(markdown: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("peftport.report", "templates"),
        autoescape=not markdown,  # HTML: every value escaped unless the template says otherwise
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["md_cell"] = _md_text
    return env


def render_html(report: Page) -> str:
    return _templates(False).get_template("report.html").render(page=report)


def render_markdown(report: Page) -> str:
    return _templates(True).get_template("report.md").render(page=report)


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
