"""The paper's figures: bars of ported / sampled / random per post-porting step count; and
zero-shot retention against host distance (points with intervals, one line per technique).

matplotlib's object API (no pyplot, no global backend switch): a `Figure` saved as PNG (Agg)
and SVG, with the SVG's date left out and its ids salted, so the same store gives the same
files. A missing result draws no bar: the bar's place says "missing" and why, and a partial mean
(some seeds missing) is marked with how many results it has.
"""

from __future__ import annotations

import io
import math
from collections import Counter

from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from peftport.report.model import DistanceFigureSpec, DistancePanel, FigureSpec, Panel
from peftport.report.science import NOT_LEARNED

NOT_MISSING = ("origin not above random", "not planned", NOT_LEARNED)  # no result is missing

COLORS = {"ported": "#0072B2", "sampled": "#E69F00", "random": "#8C8C8C"}  # Okabe-Ito, grey
HATCH = {"ported": "", "sampled": "//", "random": ".."}
# one colour and marker per technique, in the study's order (Okabe-Ito, then greys)
SERIES_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000")
SERIES_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
DODGE = 0.012  # sideways offset between techniques, as a share of the x range
DPI = 120
RC = {
    "svg.hashsalt": "peftport-report",  # stable ids in the SVG
    "font.family": "DejaVu Sans",  # shipped with matplotlib: the same glyphs everywhere
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "hatch.linewidth": 0.6,
}


def _step_label(step: int) -> str:
    return "0\n(zero-shot)" if step == 0 else str(step)


def _flag(ax, x: float, y: float, text: str, **kw) -> None:
    """A small red note over a bar: what is missing, or how many of the planned results it has."""
    ax.text(x, y, text, ha="center", va="bottom", fontsize=6.5, color="#B00020", **kw)


def _draw_panel(
    ax, panel: Panel, metric: str, show_ylabel: bool, tally: dict[str, Counter]
) -> None:
    """Bars with 95% intervals; counts the bars it cannot draw, or draws from fewer results than
    planned, in `tally` (bars, and results by reason)."""
    conds = list(panel.bars)
    width = 0.8 / max(1, len(conds))
    for j, c in enumerate(conds):
        for i, st in enumerate(panel.bars[c]):
            x = i + (j - (len(conds) - 1) / 2) * width
            if st.expected == 0:
                continue  # not part of the study
            if st.mean is None:
                why = st.missing_text() or "no result"
                _flag(ax, x, 0.02, f"missing ({why})", rotation=90)
                tally["bars"]["missing"] += 1
                tally["missing"].update(dict(st.missing))
                continue
            ax.bar(
                x,
                st.mean,
                width * 0.92,
                color=COLORS.get(c, "#444444"),
                hatch=HATCH.get(c, ""),
                edgecolor="white",
                linewidth=0.4,
                zorder=2,
            )
            if st.low is not None and st.high is not None:
                ax.errorbar(
                    x,
                    st.mean,
                    yerr=[[st.mean - st.low], [st.high - st.mean]],
                    fmt="none",
                    ecolor="#222222",
                    elinewidth=0.9,
                    capsize=2.5,
                    zorder=3,
                )
            if not st.complete:
                top = st.high if st.high is not None else st.mean
                _flag(ax, x, min(top + 0.02, 1.0), f"{st.n}/{st.expected}")
                tally["bars"]["partial"] += 1
                tally["partial"].update(dict(st.missing))
            if st.one_class:  # degenerate: (nearly) every prediction is one class
                ax.text(x, st.mean / 2, "one class", ha="center", va="center", rotation=90,
                        fontsize=6.5, color="white", fontweight="bold", zorder=4)  # fmt: skip
                tally["bars"]["one class"] += 1
    if panel.chance is not None:
        ax.axhline(panel.chance, color="#B00020", linestyle=":", linewidth=1.1, zorder=1)
    if panel.origin is not None and panel.origin.mean is not None:
        ax.axhline(panel.origin.mean, color="#222222", linestyle="--", linewidth=1.0, zorder=1)
    ax.set_xticks(range(len(panel.steps)), [_step_label(s) for s in panel.steps])
    ax.set_xlim(-0.6, len(panel.steps) - 0.4)
    ax.set_ylim(0.0, 1.05)  # the metric's range (every interval lies within it)
    ax.set_xlabel("post-porting steps")
    if show_ylabel:
        ax.set_ylabel(f"{metric} (mean, 95% CI)")
    ax.set_title(panel.title, fontsize=9)
    ax.grid(axis="y", color="#E5E5E5", linewidth=0.6, zorder=0)


def _reasons(c: Counter) -> str:
    return ", ".join(f"{v} {k}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def _notes(tally: dict[str, Counter]) -> list[str]:
    out = []
    if tally["bars"]["missing"]:
        out.append(
            f"{tally['bars']['missing']} bar(s) not drawn: none of their results is there "
            f"({_reasons(tally['missing'])} results)"
        )
    if tally["bars"]["partial"]:
        out.append(
            f"{tally['bars']['partial']} bar(s), marked n/N, average fewer results than planned "
            f"({_reasons(tally['partial'])} results)"
        )
    if tally["bars"]["one class"]:
        out.append(
            f"{tally['bars']['one class']} bar(s), marked 'one class', predict one class for "
            "95% or more of the examples: degenerate, not evidence of skill"
        )
    return out


def draw(spec: FigureSpec, metric: str) -> tuple[Figure, list[str]]:
    """The figure, and notes on what it could not show (missing results)."""
    n = len(spec.panels)
    ncols = min(n, 4)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(1.0 + 3.6 * ncols, 0.9 + 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    tally: dict[str, Counter] = {"bars": Counter(), "missing": Counter(), "partial": Counter()}
    for k, panel in enumerate(spec.panels):
        _draw_panel(axes[k // ncols][k % ncols], panel, metric, k % ncols == 0, tally)
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    conds = list(spec.panels[0].bars) if spec.panels else []
    handles = [
        Patch(
            facecolor=COLORS.get(c, "#444444"), hatch=HATCH.get(c, ""), edgecolor="white", label=c
        )
        for c in conds
    ]
    if any(p.origin is not None and p.origin.mean is not None for p in spec.panels):
        handles.append(Line2D([], [], color="#222222", linestyle="--", label="origin (own host)"))
    if any(p.chance is not None for p in spec.panels):
        label = "majority class" if metric == "accuracy" else "chance"
        handles.append(Line2D([], [], color="#B00020", linestyle=":", label=label))
    elif metric == "accuracy":
        tally["bars"]["no chance"] += 1
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(spec.title, fontsize=10.5)
    notes = _notes(tally)
    if tally["bars"]["no chance"]:
        notes.append(
            "no majority-class line: no result in the store predicts a single class, so the "
            "test split's majority-class rate is not known"
        )
    return fig, notes


def _draw_distance_panel(
    ax, panel: DistancePanel, techniques: list[str], show_ylabel: bool, tally: Counter
) -> tuple[float, float]:
    """Retention against CKA distance, one line per technique; returns the y range of the
    means (the axes are set from all panels' means, so intervals of few seeds are cut)."""
    xs = [x for x, _ in panel.pairs]
    span = (max(xs) - min(xs)) or max(abs(xs[0]), 0.05)
    means = []
    for k, t in enumerate(techniques):
        pts = panel.series.get(t)
        if not pts:
            continue
        shift = (k - (len(techniques) - 1) / 2) * DODGE * span
        color = SERIES_COLORS[k % len(SERIES_COLORS)]
        drawn = [(p.x + shift, p.stat) for p in pts if p.stat.mean is not None]
        for p in pts:
            real = [k for k, _ in p.stat.missing if k not in NOT_MISSING]  # results missing
            if p.stat.mean is None:
                tally["missing" if real else "undefined"] += 1
            elif real:
                tally["partial"] += 1
            elif not p.stat.complete:
                tally["fewer ratios"] += 1
        if not drawn:
            continue
        x = [a for a, _ in drawn]
        y = [st.mean for _, st in drawn]
        means += y
        # a line only along a real series: receivers of one origin host, in distance order
        # (the two directions of one pair are two points, not a curve)
        series: dict[str, list[tuple[float, float]]] = {}
        for p in pts:
            if p.stat.mean is not None:
                series.setdefault(p.series or p.label, []).append((p.x + shift, p.stat.mean))
        for line in series.values():
            if len(line) > 1:
                ax.plot(*zip(*sorted(line), strict=True), color=color, linewidth=1.2, zorder=2)
        ax.plot(
            x,
            y,
            linestyle="none",
            marker=SERIES_MARKERS[k % len(SERIES_MARKERS)],
            markersize=5.5,
            color=color,
            markeredgecolor="white",
            markeredgewidth=0.6,
            zorder=4,
        )
        for a, st in drawn:
            if st.low is not None and st.high is not None:
                ax.errorbar(
                    a,
                    st.mean,
                    yerr=[[st.mean - st.low], [st.high - st.mean]],
                    fmt="none",
                    ecolor=color,
                    elinewidth=0.9,
                    capsize=2.5,
                    zorder=3,
                )
            if not st.complete:
                ax.annotate(
                    f"{st.n}/{st.expected}",
                    (a, st.mean),
                    xytext=(4, 4),
                    textcoords="offset points",
                    fontsize=6.5,
                    color="#B00020",
                )
    for ref in (0.0, 1.0):
        ax.axhline(ref, color="#222222", linestyle="--", linewidth=0.9, zorder=1)
    for x, _ in panel.pairs:
        ax.axvline(x, color="#E5E5E5", linewidth=0.6, zorder=0)
    ax.set_xlim(min(xs) - 0.12 * span, max(xs) + 0.12 * span)
    top = ax.secondary_xaxis("top")  # which pair sits where, above the panel
    at: dict[float, list[str]] = {}  # pairs at the same distance share one tick
    for x, label in panel.pairs:
        at.setdefault(x, []).append(label)
    top.set_xticks(list(at), ["\n".join(v) for v in at.values()])
    top.tick_params(labelsize=7, labelrotation=30, length=2)
    for label in top.get_xticklabels():
        label.set_horizontalalignment("left")
    title = panel.title
    rho = [f"{t} {r:+.2f}" for t, (r, _) in panel.rho.items() if r is not None]
    if rho:
        n = max(n for _, n in panel.rho.values())
        title += f"\nSpearman rho ({n} pairs): " + ", ".join(rho)
    ax.set_xlabel("CKA distance of the hosts")
    if show_ylabel:
        ax.set_ylabel("zero-shot retention (mean, 95% CI)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="y", color="#E5E5E5", linewidth=0.6, zorder=0)
    return (min(means), max(means)) if means else (0.0, 1.0)


def draw_distance(spec: DistanceFigureSpec) -> tuple[Figure, list[str]]:
    """The retention-against-distance figure, and notes on what it could not show."""
    n = len(spec.panels)
    ncols = min(n, 3)
    nrows = math.ceil(n / ncols)
    # wide enough for the title on one panel; the pair labels above each panel need height
    fig = Figure(figsize=(max(7.0, 1.0 + 4.4 * ncols), 1.6 + 3.8 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharey=True)
    techniques = list(dict.fromkeys(t for p in spec.panels for t in p.series))
    tally: Counter = Counter()
    lows, highs = [0.0], [1.0]  # 0 (nothing kept) and 1 (all kept) always in view
    for k, panel in enumerate(spec.panels):
        lo, hi = _draw_distance_panel(
            axes[k // ncols][k % ncols], panel, techniques, k % ncols == 0, tally
        )
        lows.append(lo)
        highs.append(hi)
    pad = 0.1 * (max(highs) - min(lows))
    axes[0][0].set_ylim(min(lows) - pad, max(highs) + pad)  # shared by every panel
    for k in range(n, nrows * ncols):
        axes[k // ncols][k % ncols].set_visible(False)
    handles = [
        Line2D(
            [],
            [],
            color=SERIES_COLORS[k % len(SERIES_COLORS)],
            marker=SERIES_MARKERS[k % len(SERIES_MARKERS)],
            label=t,
        )
        for k, t in enumerate(techniques)
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False)
    fig.suptitle(spec.title, fontsize=10.5)
    notes = list(spec.notes)
    if tally["missing"]:
        notes.append(
            f"{tally['missing']} point(s) not drawn: no seed has a retention (missing results)"
        )
    if tally["undefined"]:
        notes.append(
            f"{tally['undefined']} point(s) not drawn: the ratio is undefined (origin not above "
            "random, or the module did not learn on its origin); no result is missing"
        )
    if tally["partial"]:
        notes.append(
            f"{tally['partial']} point(s), marked n/N, average fewer seeds than planned "
            "(results missing)"
        )
    if tally["fewer ratios"]:
        notes.append(
            f"{tally['fewer ratios']} point(s), marked n/N, average the seeds that have a ratio "
            "(the others: origin not above random); no result is missing"
        )
    return fig, notes


def render(spec: FigureSpec | DistanceFigureSpec, metric: str) -> tuple[bytes, bytes, list[str]]:
    """PNG bytes, SVG bytes and the notes on missing results of one figure."""
    with rc_context(RC):
        if isinstance(spec, DistanceFigureSpec):
            fig, notes = draw_distance(spec)
        else:
            fig, notes = draw(spec, metric)
        png, svg = io.BytesIO(), io.BytesIO()
        fig.savefig(png, format="png", dpi=DPI, metadata={"Software": None})
        fig.savefig(svg, format="svg", metadata={"Date": None, "Creator": None})
    return png.getvalue(), svg.getvalue(), notes
