"""Agreement and negative flips: does a ported module predict what it predicted on its origin?

For a result (ported, sampled or random, at any post-porting step) and the module it is
compared with (the same technique, origin host, pre-porting data set, seed and pre-porting step
count: the snapshot that was ported, on its origin host), both evaluated on the SAME test
examples (equal `examples_sha256`):

- agreement = the share of examples on which the result predicts the class the origin module
  predicted;
- negative flips = the share of examples the origin module got right and the result gets wrong.

The same definition for every condition: for sampled and random it is the agreement a control
reaches with a module it does not carry (its baseline), so ported's agreement is read against
theirs. A random result has no pre-porting step count: it is compared with the origin module of
each of its technique's pre-porting step counts (one row each).

The origin module's predictions on the post-porting data set's examples come from the pretrain
unit's own evaluation when the two data sets are the same, and from the post unit's evaluation
of its starting snapshot on its origin host (`predictions.evaluated = 'origin'`) when they
differ. Derived here from the stored predictions (not stored twice); intervals by the two-level
bootstrap over runs and examples (report.uncertainty). A store without per-example predictions
has no agreement: the section says so.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

from peftport.report.blocks import Section, TableBlock, note
from peftport.report.columns import apply, stat_text
from peftport.report.load import Observation, StoreData
from peftport.report.model import (
    CONDITIONS,
    CONFIDENCE,
    Stat,
    Table,
    number,
    stat_columns,
    stat_from,
)
from peftport.report.uncertainty import per_example_interval

NO_PREDICTIONS = "no per-example predictions in the store"
NO_ORIGIN = "no origin predictions"
DIFFERENT = "different test examples"


def _origin_key(o: Observation, pre_steps: int) -> tuple:
    return (o.technique, o.origin, o.pre_data, o.post_data, o.seed, pre_steps)


def origin_predictions(data: StoreData) -> dict[tuple, Any]:
    """(technique, origin, pre data, post data, seed, pre steps) -> the origin module's
    Predictions on the post data set's evaluation examples."""
    out: dict[tuple, Any] = {}
    for o in data.observations:
        if o.condition == "origin" and o.predictions is not None:  # pre data == post data
            out[_origin_key(o, o.pre_steps)] = o.predictions
    for o in data.observations:
        if o.condition in CONDITIONS and o.pre_data != o.post_data:
            p = data.origin_predictions.get((o.unit_id, o.pre_steps))
            if p is not None:
                out.setdefault(_origin_key(o, o.pre_steps), p)
    return out


def compare(result: Any, origin: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per example: (agrees with the origin's prediction, negative flip: the origin right and
    the result wrong), as 1.0 / 0.0. Both must be on the same examples."""
    if result.examples_sha256 != origin.examples_sha256 or result.n != origin.n:
        raise ValueError("agreement needs both evaluations on the same examples")
    agree = (result.predicted == origin.predicted).astype(np.float64)
    flip = (origin.predicted == origin.labels) & (result.predicted != result.labels)
    return agree, flip.astype(np.float64)


def _label(o: Observation) -> str:
    """The condition, with a porting method other than the default when results carry one."""
    method = getattr(o, "method", "") or ""
    return f"{o.condition} ({method})" if method and method != "copy" else o.condition


def agreement_table(data: StoreData) -> Table:
    """Per technique x condition x pre-porting steps x post-porting steps, pooled over
    directions, data combinations and seeds: mean agreement and negative-flip share with their
    intervals, and how many results could not be compared (and why)."""
    origins = origin_predictions(data)
    # a random result is compared with the origin module of each of its technique's own
    # pre-porting step counts (techniques may have their own: study spec `pre_steps`)
    pre_of: dict[str, set[int]] = defaultdict(set)
    for o in data.observations:
        if o.condition == "origin":
            pre_of[o.technique].add(o.pre_steps)
    pre_all = sorted(set().union(*pre_of.values()))
    groups: dict[tuple, dict[tuple, tuple]] = defaultdict(dict)  # row -> comparison -> arrays
    expected: Counter = Counter()
    why: dict[tuple, Counter] = defaultdict(Counter)
    seen: set[tuple] = set()
    # with a `methods:` axis, the ported results of the other porting methods too
    extra = getattr(data, "method_observations", None) or []
    for o in [*data.observations, *extra]:
        if o.condition not in CONDITIONS or o.value is None:
            continue
        counts = sorted(pre_of.get(o.technique) or pre_all)
        for p in counts if o.condition == "random" else [o.pre_steps]:
            row = (o.technique, _label(o), p, o.post_steps)
            ident = (o.unit_id, o.step, _origin_key(o, p))  # each comparison counted once
            if (row, ident) in seen:
                continue
            seen.add((row, ident))
            expected[row] += 1
            origin = origins.get(_origin_key(o, p))
            if o.predictions is None:
                why[row][NO_PREDICTIONS] += 1
            elif origin is None:
                why[row][NO_ORIGIN] += 1
            elif origin.examples_sha256 != o.predictions.examples_sha256:
                why[row][DIFFERENT] += 1
            else:
                groups[row][ident] = (
                    *compare(o.predictions, origin),
                    o.predictions.examples_sha256,
                )
    rows = []
    for row in sorted(expected, key=lambda r: (r[0], _order(r[1]), r[2], r[3])):
        comps = list(groups[row].values())
        keys = [c[2] for c in comps]
        out: dict[str, Any] = dict(
            zip(("technique", "condition", "pre_steps", "post_steps"), row, strict=True)
        )
        for prefix, i in (("agreement_", 0), ("negative_flips_", 1)):
            mean, low, high, n, method = per_example_interval(
                [c[i] for c in comps], keys, confidence=CONFIDENCE
            )
            st = Stat(
                number(mean),
                number(low),
                number(high),
                n,
                expected[row],
                tuple(sorted(why[row].items())),
                None,
                method if low is not None else "",
            )
            out.update(st.fields(prefix))
        rows.append(out)
    cols = [
        "technique",
        "condition",
        "pre_steps",
        "post_steps",
        *stat_columns("agreement_"),
        *stat_columns("negative_flips_"),
    ]
    return Table("agreement", "Agreement with the origin module and negative flips", cols, rows, [])


def _order(condition: str) -> tuple[int, str]:
    base = condition.split(" ")[0]
    return (CONDITIONS.index(base) if base in CONDITIONS else len(CONDITIONS), condition)


def section(data: StoreData, table: Table) -> Section:
    """The report's section: the table, what it means, and why results are not compared."""
    blocks: list[Any] = []
    if not data.has_predictions:
        blocks.append(
            note(
                "Not measured: this store was written before peftport stored "
                "per-example predictions, and agreement compares predictions "
                "example by example. A study run with this peftport stores them."
            )
        )
        return Section("agreement", "Agreement", "Agreement with the origin module", blocks)
    cols = [
        ("technique", lambda r: r["technique"]),
        ("condition", lambda r: r["condition"]),
        ("pre steps", lambda r: str(r["pre_steps"])),
        ("post steps", lambda r: str(r["post_steps"])),
        ("agreement", lambda r: stat_text(stat_from(r, "agreement_"))),
        ("negative flips", lambda r: stat_text(stat_from(r, "negative_flips_"))),
    ]
    if table.rows:
        blocks.append(TableBlock(*apply(cols, table.rows)))
    blocks.append(
        note(
            "Agreement: the share of test examples on which a result predicts what the origin "
            "module (the snapshot that was ported, on its origin host) predicted on the same "
            "examples; negative flips: the share the origin got right and the result gets wrong. "
            "Sampled and random are compared with the same origin module: their agreement is what "
            "a control reaches without carrying the module. Means over runs with 95% intervals "
            "from the two-level bootstrap over runs and test examples."
        )
    )
    reasons = Counter()
    for r in table.rows:
        for part in (r["agreement_missing"] or "").split(", "):
            if part:
                count, reason = part.split(" ", 1)
                reasons[reason] += int(count)
    if reasons.get(DIFFERENT):
        blocks.append(
            note(
                f"Not measured for {reasons[DIFFERENT]} comparison(s): different "
                "test examples (the origin's evaluation sample is not the result's)."
            )
        )
    if reasons.get(NO_ORIGIN):
        blocks.append(
            note(
                f"Not measured for {reasons[NO_ORIGIN]} comparison(s): the origin "
                "module has no predictions on these examples (a cross-data unit "
                "run before peftport evaluated its snapshot on its origin)."
            )
        )
    if reasons.get(NO_PREDICTIONS):
        blocks.append(
            note(
                f"Not measured for {reasons[NO_PREDICTIONS]} comparison(s): the "
                "result has no stored per-example predictions (an older unit)."
            )
        )
    return Section("agreement", "Agreement", "Agreement with the origin module", blocks)


def interval_methods(data: StoreData) -> str:
    """One line: which method gave the accuracy intervals (per-example or binomial), read off
    which results have stored predictions."""
    done = [o for o in data.observations if o.value is not None]
    have = sum(1 for o in done if o.predictions is not None)
    if not done:
        return ""
    if have == len(done):
        return (
            "Intervals of accuracy (and AUC) in this report: two-level bootstrap over runs "
            "and the stored per-example predictions (column `*ci_method` in the CSV)."
        )
    if have == 0:
        return (
            "Intervals of accuracy in this report: two-level bootstrap over runs and "
            "binomial draws of each run's accuracy, since this store has no per-example "
            "predictions (it was written before peftport stored them); AUC and macro-F1: "
            "over runs (column `*ci_method` in the CSV)."
        )
    return (
        f"{have} of {len(done)} results have stored per-example predictions: a group whose "
        "results all have them gets the two-level bootstrap over runs and examples, the "
        "others binomial draws (accuracy) or a bootstrap over runs; column `*ci_method` in "
        "the CSV names each interval's method."
    )
