"""The report's data model: the records every layer of the report passes on, and the small
helpers that make them.

`aggregate` and `distance` (pure: observations -> tables, figure specs) build these records;
`figures` draws the figure specs; `render` turns tables and sections into text. Nothing here
imports another report module but `load`, so no report module needs to import another one
in a function to dodge a circle.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from peftport.report.load import Observation
from peftport.report.uncertainty import (
    MIN_RUNS,
    auc_interval,
    mean_interval,
    per_example_interval,
)

CONFIDENCE = 0.95
N_BOOT = 1000  # resamples of the report's bootstraps over runs
SEED = 0  # bootstrap seed: the same store gives the same report
ONE_CLASS = 0.95  # a cell whose predictions are this share one class or more is degenerate
SETTING_COLUMNS = ("technique", "origin", "receiver", "pre_data", "post_data")


@dataclass(frozen=True)
class Stat:
    """A mean over the observations of a group, with its 95% interval (report.uncertainty).

    `n` values were used out of `expected` (the group's planned results); `missing` counts the
    others by reason (pending, running, failed, no metric). n = 0: mean is None (missing, never
    0); n < MIN_RUNS: no interval (low and high None). `majority_share`: the mean share of the
    most predicted class over the group's results (None when not stored).
    """

    mean: float | None
    low: float | None
    high: float | None
    n: int
    expected: int
    missing: tuple[tuple[str, int], ...] = ()
    majority_share: float | None = None
    method: str = ""  # what gave the interval (report.uncertainty); "" when there is none

    @property
    def complete(self) -> bool:
        return self.n == self.expected and self.n > 0

    @property
    def one_class(self) -> bool:
        """Nearly every prediction is one class (majority share >= ONE_CLASS): degenerate."""
        return self.majority_share is not None and self.majority_share >= ONE_CLASS

    @property
    def too_few(self) -> bool:
        """Has a mean but too few runs for an interval."""
        return self.mean is not None and 0 < self.n < MIN_RUNS

    def missing_text(self) -> str:
        return ", ".join(f"{v} {k}" for k, v in self.missing)

    def fields(self, prefix: str) -> dict[str, Any]:
        return {
            f"{prefix}mean": self.mean,
            f"{prefix}ci_low": self.low,
            f"{prefix}ci_high": self.high,
            f"{prefix}n": self.n,
            f"{prefix}expected": self.expected,
            f"{prefix}missing": self.missing_text(),
            f"{prefix}majority_share": self.majority_share,
            f"{prefix}ci_method": self.method,
        }


def stat_columns(prefix: str) -> list[str]:
    return [
        f"{prefix}{k}"
        for k in (
            "mean",
            "ci_low",
            "ci_high",
            "n",
            "expected",
            "missing",
            "majority_share",
            "ci_method",
        )
    ]


def stat_from(row: dict[str, Any], prefix: str) -> Stat:
    miss = row.get(f"{prefix}missing") or ""
    parts = [p.split(" ", 1) for p in miss.split(", ") if p]
    return Stat(
        row[f"{prefix}mean"],
        row[f"{prefix}ci_low"],
        row[f"{prefix}ci_high"],
        row[f"{prefix}n"],
        row[f"{prefix}expected"],
        tuple((k, int(v)) for v, k in parts),
        row.get(f"{prefix}majority_share"),
        row.get(f"{prefix}ci_method") or "",
    )


def number(x: Any) -> float | None:
    """A float, or None for NaN/None (CSV and tables show None as empty, never as 0)."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def ordered_reasons(c: Counter) -> tuple[tuple[str, int], ...]:
    """(reason, count) in a fixed order: the unit states first, then any other reason."""
    order = ("failed", "running", "pending", "no metric")
    return tuple(
        (k, c[k]) for k in sorted(c, key=lambda k: (order.index(k) if k in order else 9, k))
    )


def reasons(obs: Iterable[Observation]) -> tuple[tuple[str, int], ...]:
    return ordered_reasons(Counter(o.missing for o in obs if o.missing is not None))


def summarize(obs: Iterable[Observation]) -> Stat:
    """Mean and 95% interval of the values of `obs` (each unit checkpoint counted once): a
    two-level bootstrap for accuracies (runs, then test examples: the stored per-example
    predictions when every run has them, else binomial draws), and for a binary AUC with
    per-example predictions; else over runs; none for fewer than MIN_RUNS runs. The interval
    stays in [0, 1]; the mean is the mean of the stored values either way."""
    unique = list({(o.unit_id, o.step): o for o in obs}.values())
    have = [o for o in unique if o.value is not None]
    values = [o.value for o in have]
    mean, low, high, n, method = _per_example(have)
    if not method:
        binomial = all(o.metric == "accuracy" and o.examples for o in have)
        mean, low, high, n, method = mean_interval(
            values, [o.examples for o in have] if binomial else None, confidence=CONFIDENCE
        )
    elif values:
        mean = sum(values) / len(values)  # the stored metrics' mean, as without predictions
    shares = [o.majority_share for o in have if o.majority_share is not None]
    share = sum(shares) / len(shares) if shares else None
    return Stat(
        number(mean),
        number(low),
        number(high),
        n,
        len(unique),
        reasons(unique),
        share,
        method if low is not None else "",
    )


def _per_example(have: list[Observation]) -> tuple:
    """The two-level bootstrap over runs and stored per-example predictions, when every run
    of the group has them and the metric is an accuracy or a binary AUC; else method ""."""
    preds = [o.predictions for o in have]
    if len(have) < MIN_RUNS or any(p is None for p in preds):
        return None, None, None, len(have), ""
    keys = [p.examples_sha256 or f"unknown {i}" for i, p in enumerate(preds)]
    metric = have[0].metric
    if metric == "accuracy":
        return per_example_interval([p.correct() for p in preds], keys, confidence=CONFIDENCE)
    if metric == "auc" and all(p.n_classes == 2 for p in preds):
        return auc_interval(
            [p.labels for p in preds], [p.scores for p in preds], keys, confidence=CONFIDENCE
        )
    return None, None, None, len(have), ""


CONDITIONS = ("ported", "sampled", "random")
CONTROLS = ("sampled", "random")


def group(
    obs: Iterable[Observation], key: Callable[[Observation], Any]
) -> dict[Any, list[Observation]]:
    out: dict[Any, list[Observation]] = defaultdict(list)
    for o in obs:
        out[key(o)].append(o)
    return out


def setting_of(o: Observation) -> tuple:
    """(technique, origin, receiver, pre data, post data): a run without seed and steps."""
    return (o.technique, o.origin, o.receiver, o.pre_data, o.post_data)


def cell_index(obs: Iterable[Observation]) -> dict[tuple, Observation]:
    """(setting, seed, condition, pre steps, post steps) -> the result, for the conditions."""
    return {
        (*setting_of(o), o.seed, o.condition, o.pre_steps, o.post_steps): o
        for o in obs
        if o.condition in CONDITIONS
    }


@dataclass(frozen=True)
class Axes:
    """The study's axes, in the study file's order (techniques, directions, data sets)."""

    techniques: tuple[str, ...]
    directions: tuple[tuple[str, str], ...]
    data: tuple[tuple[str, str], ...]
    pre_steps: tuple[int, ...]
    steps: tuple[int, ...]  # 0 (zero-shot) and every post-porting step count
    conditions: tuple[str, ...]  # of ported, sampled, random: those in the study
    seeds: tuple[int, ...]
    names: dict[str, str] = field(default_factory=dict)  # host / data id -> short display name
    # technique -> its pre-porting step counts, sorted (a study may give a technique its own);
    # the at-a-glance table and the findings read each technique at its largest
    pre_by_technique: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def pre_of(self, technique: str) -> tuple[int, ...]:
        """The technique's pre-porting step counts (the study's, if it has no ported runs)."""
        return self.pre_by_technique.get(technique, self.pre_steps)

    def top(self, technique: str) -> int | None:
        """The technique's largest pre-porting step count (None: the study has none)."""
        counts = self.pre_of(technique)
        return max(counts) if counts else None

    def top_text(self) -> str:
        """The largest counts as text: "200", or "adapter 100, prefix 200" when techniques
        differ."""
        tops = {t: p for t in self.techniques if (p := self.top(t)) is not None}
        if len(set(tops.values())) <= 1:
            return str(next(iter(tops.values()), "–"))
        return ", ".join(f"{t} {p}" for t, p in tops.items())

    def direction(self, origin: str, receiver: str) -> str:
        return f"{self.name(origin)} -> {self.name(receiver)}"

    def data_combo(self, pre: str, post: str) -> str:
        return self.name(pre) if pre == post else f"{self.name(pre)} -> {self.name(post)}"

    def name(self, x: str) -> str:
        return self.names.get(x, x)

    def settings(self, technique: str) -> Iterator[tuple[tuple, dict[str, str]]]:
        """Every direction x data combination of `technique`, in the study's order, as (key
        (technique, origin, receiver, pre data, post data), the row's columns of that key)."""
        for o, r in self.directions:
            for pre, post in self.data:
                key = (technique, o, r, pre, post)
                yield key, dict(zip(SETTING_COLUMNS, key, strict=True))


@dataclass
class Table:
    name: str  # file stem of its CSV
    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: list[str] = field(default_factory=list)


@dataclass
class Panel:
    """One bar chart: a data combination's bars per condition at every step."""

    title: str
    steps: tuple[int, ...]
    bars: dict[str, list[Stat]]  # condition -> one Stat per step
    origin: Stat | None = None  # the module on its origin (on the pre-porting data)
    origin_label: str = ""
    chance: float | None = None  # no-skill line (accuracy: the majority-class rate), if known


@dataclass
class FigureSpec:
    stem: str  # file name without extension
    title: str
    panels: list[Panel]
    caption: str
    technique: str = ""
    direction: str = ""
    pre_steps: int | None = None


def slug(*parts: Any) -> str:
    text = "-".join(str(p) for p in parts)
    keep = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in text)
    while "--" in keep:
        keep = keep.replace("--", "-")
    return keep.strip("-").lower()


@dataclass(frozen=True)
class PairDistance:
    """A recorded host pair of a study and how far apart its hosts are."""

    study_id: str
    origin: str
    receiver: str
    strategy: str
    comparison_key: str | None
    cka_distance: float | None
    cka_note: str  # why cka_distance is None ("" when it is there)
    weight_distance: float | None
    weight_layers: int  # layers averaged into weight_distance
    weight_note: str  # why weight_distance is None
    about: str = ""  # what the comparison was made from (stack, texts, corpus, ...)


@dataclass
class DistancePoint:
    x: float  # CKA distance of the pair
    stat: Stat  # retention over seeds
    label: str  # the pair, "a -> b"
    series: str = ""  # the origin host: lines join only points of one series


@dataclass
class DistancePanel:
    title: str  # the data combination
    series: dict[str, list[DistancePoint]]  # technique -> points in distance order
    pairs: list[tuple[float, str]]  # (distance, "a -> b") of the pairs drawn
    rho: dict[str, tuple[float | None, int]] = field(default_factory=dict)  # technique -> (rho, n)


@dataclass
class DistanceFigureSpec:
    stem: str
    title: str
    panels: list[DistancePanel]
    caption: str
    notes: list[str] = field(default_factory=list)  # known before drawing (one pair only)
    technique: str = ""  # figures of this kind are not per technique


@dataclass
class DistanceStudy:
    study_id: str
    name: str
    pairs: list[PairDistance]  # in distance order
    notes: list[str]
    figures: list[DistanceFigureSpec]


@dataclass
class DistanceSection:
    """The section, or why it is left out (`omitted`, one line)."""

    studies: list[DistanceStudy]
    tables: list[Table]
    omitted: str = ""
    skipped: list[str] = field(default_factory=list)  # studies reported without a pair


@dataclass
class Aggregates:
    axes: Axes
    metric: str
    tables: dict[str, Table]
    figures: list[FigureSpec]
    overview: FigureSpec | None
    glance: list[dict[str, Any]]  # one line per technique for the page's summary
    complete: bool
    distance: DistanceSection | None = None  # zero-shot retention against host distance
    findings: list[Any] = field(default_factory=list)  # report.findings.Finding, computed
    base_rates: dict[str, Any] = field(default_factory=dict)  # data set -> science.BaseRate
