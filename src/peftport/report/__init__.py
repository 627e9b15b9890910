"""The report: the paper's figures and tables from a study store, with the statistics it lacked.

    build_report("peftport-quick.sqlite", "report/")  ->  ReportPaths

reads the store only (never trains) and writes

    report/index.html      one self-contained page (figures embedded, no script, no network)
    report/report.md       the same in Markdown (figures linked from figures/)
    report/report.json     what the report was made from: store, studies, git, versions, time
    report/figures/*.png, *.svg
    report/tables/*.csv    every aggregated number, and every result they come from

with, when the store records host pairs and their comparisons, zero-shot retention against host
distance (`distance`: how portability falls as hosts drift apart).

Layers: `load` (the store, read-only, validated), `aggregate` and `distance` (pure:
observations -> tables, figure specs; statistics from `peftport.stats`), `figures` (matplotlib),
`render` (the page's sections, rendered through templates/ as HTML and Markdown; CSV),
`model` (the records they pass on). docs/report.md defines every number.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftport.atomic import write_bytes
from peftport.errors import PeftportError

if TYPE_CHECKING:
    from peftport.report.model import DistanceSection

__all__ = ["ReportPaths", "build_report"]


@dataclass(frozen=True)
class ReportPaths:
    out_dir: Path
    html: Path
    markdown: Path
    json: Path
    csv: dict[str, Path] = field(default_factory=dict)  # table name -> file
    figures: list[tuple[Path, Path]] = field(default_factory=list)  # (png, svg)
    complete: bool = True  # every planned result was in the store


def _write(path: Path, data: bytes | str) -> None:
    """Atomically: readers never see half a file."""
    write_bytes(path, data.encode("utf-8") if isinstance(data, str) else data)


def _previous_files(out: Path) -> set[str]:
    try:
        return set(json.loads((out / "report.json").read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def _distance_summary(distance: DistanceSection | None) -> dict[str, Any]:
    """For report.json: the host pairs the distance section used, or why it was left out."""
    if distance is None or distance.omitted:
        return {"omitted": distance.omitted if distance else "not computed"}
    return {
        "studies": [
            {
                "id": st.study_id,
                "name": st.name,
                "pairs": [
                    {
                        "origin": p.origin,
                        "receiver": p.receiver,
                        "strategy": p.strategy,
                        "comparison_key": p.comparison_key,
                        "cka_distance": p.cka_distance,
                        "cka_note": p.cka_note,
                        "weight_distance": p.weight_distance,
                        "weight_note": p.weight_note,
                    }
                    for p in st.pairs
                ],
                "notes": st.notes,
            }
            for st in distance.studies
        ],
        "skipped": distance.skipped,
    }


def build_report(
    store_path: str | Path,
    out_dir: str | Path,
    *,
    metric: str = "accuracy",
    study: str | None = None,
) -> ReportPaths:
    """Read the store at `store_path` and write the report into `out_dir` (created; files of an
    earlier report there are replaced, and its figures that no longer exist removed).

    `metric`: accuracy (the paper's), macro_f1 or auc. `study`: a study name or id to report on
    (default: every study in the store). Raises PeftportError for a path that is not a peftport
    study store (missing, empty, not SQLite, another SQLite database).
    """
    from peftport import __version__
    from peftport.report import agreement
    from peftport.report import figures as figmod
    from peftport.report.aggregate import aggregate
    from peftport.report.blocks import RenderedFigure
    from peftport.report.load import load_store
    from peftport.report.render import page, render_csv, render_html, render_markdown

    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise PeftportError(f"--out {out} is a file; give a folder for the report")
    data = load_store(store_path, metric=metric, study=study)
    agg = aggregate(data)
    agg.tables["agreement"] = agreement.agreement_table(data)  # from the stored predictions
    generated_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def rendered(spec) -> RenderedFigure:
        png, svg, notes = figmod.render(spec, metric)
        return RenderedFigure(spec.stem, spec.title, spec.caption, png, svg, notes, spec.technique)

    figs = [rendered(s) for s in agg.figures]
    overview = rendered(agg.overview) if agg.overview is not None else None
    distance = agg.distance
    distance_figs = [
        rendered(s) for st in (distance.studies if distance else []) for s in st.figures
    ]

    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fig_paths = []
    for f in ([overview] if overview else []) + figs + distance_figs:
        png, svg = out / "figures" / f"{f.stem}.png", out / "figures" / f"{f.stem}.svg"
        _write(png, f.png)
        _write(svg, f.svg)
        fig_paths.append((png, svg))
        written += [png, svg]
    csvs = {}
    for name, table in agg.tables.items():
        p = out / "tables" / f"{name}.csv"
        _write(p, render_csv(table))
        csvs[name] = p
        written.append(p)
    html_path, md_path, json_path = out / "index.html", out / "report.md", out / "report.json"
    the_page = page(
        data,
        agg,
        figs,
        overview,
        generated_at,
        __version__,
        distance_figs,
        [agreement.section(data, agg.tables["agreement"])],
        [agreement.interval_methods(data)],
    )
    _write(md_path, render_markdown(the_page))
    _write(html_path, render_html(the_page))
    written += [html_path, md_path]
    files = sorted(str(p.relative_to(out)) for p in written + [json_path])
    for stale in _previous_files(out) - set(files):  # an earlier report's figures, gone now
        target = out / stale
        if target.is_file() and target.resolve().is_relative_to(out.resolve()):
            target.unlink()
    meta = {
        "peftport_version": __version__,
        "generated_at": generated_at,
        "store": str(data.path),
        "store_created_at": data.created_at,
        "read_at": data.read_at,
        "metric": metric,
        "studies": [{k: v for k, v in s.items() if k != "spec"} for s in data.studies],
        "unit_status": data.unit_status,
        "complete": agg.complete,
        "missing_results": sum(1 for o in data.observations if o.value is None),
        "results": len(data.observations),
        "provenance": data.provenance,
        "host_distance": _distance_summary(distance),
        # computed, never written by hand (report.findings); majority-class rates as read off
        # the results that predict one class (report.science)
        "findings": [asdict(f) for f in agg.findings],
        "majority_class": {d: asdict(b) for d, b in agg.base_rates.items()},
        "files": files,
    }
    _write(json_path, json.dumps(meta, indent=2) + "\n")  # last: its presence means done
    return ReportPaths(out, html_path, md_path, json_path, csvs, fig_paths, agg.complete)
