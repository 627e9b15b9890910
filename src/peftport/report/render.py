"""The report as text: one self-contained HTML page, Markdown, and CSV of every table.

Pure: tables and figure bytes in, strings out (writing files is `build_report`'s job). The HTML
has no script, no external reference (figures are embedded as base64 PNG; links go to the
report's own CSV and SVG files beside it) and its style inline, so it opens anywhere, offline.
Numbers as text and the tables' columns are in `report.columns`, the page's blocks in
`report.blocks`. `page` lists the sections in order, as blocks (tables, notes, figures, ...); the
jinja2 templates in templates/ render that one list as HTML (autoescaped) and as Markdown.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import jinja2

from peftport.report.blocks import (
    Block,
    Bullets,
    Cell,
    Code,
    CsvLinks,
    Details,
    Figure,
    Heading,
    Page,
    RenderedFigure,
    Section,
    Span,
    TableBlock,
    note,
    notes,
)
from peftport.report.columns import (
    Column,
    apply,
    correlation_columns,
    diff_columns,
    distance_blocks,
    distance_columns,
    distance_omitted,
    findings_blocks,
    glance_rows,
    pivot,
    ranking_columns,
    saved_columns,
    zero_shot_columns,
)
from peftport.report.distance import CORRELATION_TABLE
from peftport.report.distance import TABLE as DISTANCE_TABLE
from peftport.report.load import StoreData, precision_summary, precision_warning
from peftport.report.methods import METHODS
from peftport.report.model import ONE_CLASS, Aggregates, Table
from peftport.report.portmethods import methods_sections
from peftport.report.science import NOT_LEARNED_AUC, NOT_LEARNED_MARGIN

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
    rows.append(("precision", precision_summary(p)))
    rows.append(
        (
            "head policy (encoder classifiers)",
            "; ".join(
                f"{st['name']}: "
                + HEAD_POLICY_TEXT[(st.get("spec") or {}).get("head_policy", "follow")]
                for st in data.studies
            )
            or "–",
        )
    )
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
    pre = agg.axes.top_text()
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
        *methods_sections(agg),  # only for a study with more than one porting method
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
        status=" ".join(filter(None, (_status(data), precision_warning(data.provenance)))),
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
