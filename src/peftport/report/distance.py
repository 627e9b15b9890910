"""Zero-shot retention against host distance: how portability falls as hosts drift apart.

Pure (no I/O). In: the host pairs the studies recorded (`StoreData.host_pairs`: the layer map
each direction was ported with, and the host comparison it names) and the studies' zero-shot
results. Out, per study with at least one recorded pair: a table (one row per pair x technique x
data combination x pre-porting steps), Spearman rank correlations of distance and retention, and
figure specs (retention against CKA distance). docs/report.md defines every number:

- CKA distance of a pair = 1 - mean over receiver layers j of cka[layer_map[j]][j], where `cka`
  (origin layers x receiver layers) is the comparison's linear CKA of block outputs on the same
  texts: how far each receiver layer is, in representation, from the origin layer whose module
  it receives. Defined for hosts of any depths, and for the layer map the study really used;
- weight distance = mean over the layer groups (`layer.N`) of the comparison's weight_distance,
  ||W_receiver - W_origin||_F / ||W_origin||_F per layer whose shapes match; none ("shapes
  differ") when no layer's shapes match;
- retention, per seed = (ported - random) / (origin - random), ported and random zero-shot on
  the receiver, origin the same module on its origin host: 1 when porting keeps all the module
  had over a fresh one, 0 when it keeps nothing; mean and 95% t interval over seeds, one ratio
  per seed (not the ratio of means), like `aggregate.ratio_stat`'s "retained". A seed with a side
  missing is missing (counted by reason); one whose origin is not above random (zero or negative
  denominator) is left out as "origin not above random", as ratio_stat leaves out b <= 0.

Host comparisons are read as JSON here, not through peftport.hostcompare: the report reads what
the store holds, and a row it cannot use becomes "n/a" with the reason in the table's notes
rather than an error that would cost the rest of the report.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from peftport import stats
from peftport.errors import PeftportError
from peftport.layermap import load_resolved
from peftport.report.load import CELL_KEY, HostPairRecord, Observation, StoreData
from peftport.report.model import (
    CONFIDENCE,
    Axes,
    DistanceFigureSpec,
    DistancePanel,
    DistancePoint,
    DistanceSection,
    DistanceStudy,
    PairDistance,
    Stat,
    Table,
    number,
    ordered_reasons,
    slug,
    stat_columns,
    stat_from,
    summarize,
)
from peftport.report.science import NOT_LEARNED, NOT_LEARNED_MARGIN, Learned, ModuleKey
from peftport.report.uncertainty import ratio_interval

TABLE = "retention_vs_distance"
CORRELATION_TABLE = "retention_distance_correlation"
NOT_ABOVE = "origin not above random"  # a seed whose retention has no denominator
NOT_PLANNED = "not planned"  # a seed whose random (or origin) result the study does not have
MIN_PAIRS_FOR_RHO = 3  # fewer pairs: a rank correlation says nothing
EXACT_MAX_N = 8  # exact permutation p-value up to 8! = 40,320 orderings; t approximation above
# hostcompare's group of a block of the compared (main) stack; "embeddings", "other" and other
# stacks' blocks ("decoder.block.3") are not layers the CKA distance speaks of
LAYER_GROUP = re.compile(r"^layer\.\d+$")
ONE_PAIR_NOTE = (
    "one host pair only: a curve of retention against distance needs several pairs at different "
    "distances (e.g. the drift preset)"
)


# --- distances ----------------------------------------------------------------------------------


def cka_distance(cka: Any, layer_map: Sequence[Any]) -> float:
    """1 - mean over receiver layers j of cka[layer_map[j]][j].

    `cka`: origin layers x receiver layers (a list of rows); `layer_map[j]`: the origin layer
    whose module receiver layer j receives. Raises PeftportError naming what does not fit (a
    ragged matrix, a layer map of another length or out of range, an undefined CKA entry).
    """
    if not isinstance(cka, list) or not cka or not all(isinstance(r, list) for r in cka):
        raise PeftportError("cka is not a list of rows (origin layers x receiver layers)")
    n_orig, n_recv = len(cka), len(cka[0])
    if n_recv == 0 or any(len(r) != n_recv for r in cka):
        raise PeftportError(
            f"cka rows have lengths {sorted({len(r) for r in cka})}: not an origin layers x "
            "receiver layers matrix"
        )
    if len(layer_map) != n_recv:
        raise PeftportError(
            f"the layer map has {len(layer_map)} entries but cka has {n_recv} receiver layers"
        )
    values = []
    for j, i in enumerate(layer_map):
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_orig:
            raise PeftportError(
                f"layer map entry {j} is {i!r}: not an origin layer in [0, {n_orig})"
            )
        v = cka[i][j]
        if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise PeftportError(
                f"the CKA of receiver layer {j} with origin layer {i} is {v!r}: undefined"
            )
        values.append(float(v))
    return 1.0 - sum(values) / len(values)


def layer_weight_distance(weight_distance: Any) -> tuple[float | None, int, str]:
    """(mean over the layer groups of a comparison's weight_distance, layers averaged, why None).

    Only the compared stack's `layer.N` groups count (not embeddings, "other" or another stack's
    blocks); non-finite values (hostcompare writes them as "nan" / "inf": an origin layer of
    zeros) are left out of the mean. No layer group at all: no layer's shapes match.
    """
    layers = (
        [v for k, v in weight_distance.items() if LAYER_GROUP.match(str(k))]
        if isinstance(weight_distance, dict)
        else []
    )
    if not layers:
        return None, 0, "shapes differ"
    finite = [
        float(v)
        for v in layers
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    ]
    if not finite:
        return None, 0, "undefined (origin layer weights are zero)"
    return sum(finite) / len(finite), len(finite), ""


def _about(comp: dict[str, Any]) -> str:
    """What a comparison was made from: "encoder stack, 64 texts of wiki, max_length 64, seed 0"."""
    texts = comp.get("texts")
    n = len(texts) if isinstance(texts, list) else texts
    corpus = f" of {comp['corpus']}" if comp.get("corpus") else ""
    parts = [
        f"{comp['stack']} stack" if comp.get("stack") else "",
        f"{n} texts{corpus}" if n is not None else corpus.strip(),
        f"max_length {comp['max_length']}" if comp.get("max_length") is not None else "",
        f"seed {comp['seed']}" if comp.get("seed") is not None else "",
    ]
    return ", ".join(p for p in parts if p)


def pair_distance(rec: HostPairRecord) -> PairDistance:
    """The distances of one recorded pair; what cannot be computed is None with its reason."""

    bare = PairDistance(  # no usable comparison: neither distance
        rec.study_id,
        rec.origin,
        rec.receiver,
        rec.strategy,
        rec.comparison_key,
        cka_distance=None,
        cka_note="",
        weight_distance=None,
        weight_layers=0,
        weight_note="no usable host comparison",
    )

    def na(why: str) -> PairDistance:
        return replace(bare, cka_note=why)

    if rec.comparison_key is None:
        return na("no host comparison recorded (the study ran with comparisons off)")
    key = rec.comparison_key[:12]
    if rec.comparison is None:
        return na(f"host comparison {key} is not in the store")
    try:
        comp = json.loads(rec.comparison)
    except (TypeError, ValueError):
        return na(f"host comparison {key} is not JSON")
    if not isinstance(comp, dict):
        return na(f"host comparison {key} is not a JSON object")
    cka = comp.get("cka")
    ends = (comp.get("origin", rec.origin), comp.get("receiver", rec.receiver))
    if ends == (rec.receiver, rec.origin) and rec.origin != rec.receiver:
        # stored for the reverse direction: linear CKA is symmetric, so its transpose is this
        # direction's origin x receiver matrix
        rows = isinstance(cka, list) and cka and all(isinstance(r, list) for r in cka)
        if rows and len({len(r) for r in cka}) == 1:
            cka = [list(col) for col in zip(*cka, strict=True)]
        n_orig, n_recv = comp.get("receiver_layers"), comp.get("origin_layers")
    elif ends == (rec.origin, rec.receiver):
        n_orig, n_recv = comp.get("origin_layers"), comp.get("receiver_layers")
    else:
        return na(f"host comparison {key} compares {ends[0]} -> {ends[1]}, not this pair")
    wd, n_layers, wd_note = layer_weight_distance(comp.get("weight_distance"))
    dist, note = None, ""
    try:
        layer_map = load_resolved(rec.layer_map, comp.get("stack"))
        if isinstance(cka, list) and isinstance(n_orig, int) and isinstance(n_recv, int):
            shape = (len(cka), len(cka[0]) if cka and isinstance(cka[0], list) else 0)
            if shape != (n_orig, n_recv):
                raise PeftportError(
                    f"its cka is {shape[0]} x {shape[1]} but it has {n_orig} origin and "
                    f"{n_recv} receiver layers"
                )
        dist = cka_distance(cka, layer_map)
    except PeftportError as e:
        note = f"host comparison {key}: {e}"
    return replace(
        bare,
        cka_distance=dist,
        cka_note=note,
        weight_distance=wd,
        weight_layers=n_layers,
        weight_note=wd_note,
        about=_about(comp),
    )


# --- retention ------------------------------------------------------------------------------------


Triple = tuple[Observation | None, Observation | None, Observation | None]  # ported, random, origin


def retention_stat(triples: Sequence[Triple], learned: bool = True) -> Stat:
    """Mean over seeds of (ported - random) / (origin - random), with a 95% percentile
    bootstrap interval over seeds (within the seeds' own ratios; none below 3 seeds).

    One triple per seed; None for a result the study did not plan ("not planned"). A triple with
    a result missing is missing (its reason counted); a seed whose origin is not at least
    NOT_LEARNED_MARGIN above its random (a denominator near or below 0, where the ratio is
    noise) is left out, counted as "origin not above random". `learned` False: the module did
    not learn on its origin, so no seed has a ratio ("not learned").
    """
    values, why = [], Counter()
    if not learned:
        return Stat(None, None, None, 0, len(triples), ((NOT_LEARNED, len(triples)),))
    for triple in triples:
        if any(x is None for x in triple):
            why[NOT_PLANNED] += 1
            continue
        ported, random, origin = triple
        gone = next((x for x in triple if x.value is None), None)
        if gone is not None:
            why[gone.missing] += 1
            continue
        den = origin.value - random.value
        if den < NOT_LEARNED_MARGIN:
            why[NOT_ABOVE] += 1
            continue
        values.append((ported.value - random.value) / den)
    mean, low, high, n = ratio_interval(values, confidence=CONFIDENCE)
    return Stat(number(mean), number(low), number(high), n, len(triples), ordered_reasons(why))


# --- rank correlation ---------------------------------------------------------------------------


def _pearson(a: np.ndarray, b: np.ndarray) -> float | None:
    da, db = a - a.mean(), b - b.mean()
    den = math.sqrt(float(da @ da) * float(db @ db))
    return None if den == 0 else float(da @ db) / den


def spearman(x: Sequence[float], y: Sequence[float]) -> tuple[float | None, float | None, str]:
    """Spearman's rank correlation (Pearson's r of the midranks) and its two-sided p-value.

    Returns (rho, p, method). p: exact for n <= 8 (every ordering of y's ranks against x's, the
    share with |rho| at least the observed; ties keep their midranks), else the t approximation
    t = rho sqrt((n - 2) / (1 - rho^2)), df = n - 2. rho is None when it is undefined (fewer than
    2 points, or x or y constant); with 3 points the smallest possible p is 1/3.
    """
    if len(x) != len(y):
        raise PeftportError(f"spearman needs paired values: {len(x)} x and {len(y)} y")
    n = len(x)
    if n < 2:
        return None, None, "undefined"
    rx, _ = stats.midranks(x)
    ry, _ = stats.midranks(y)
    rho = _pearson(rx, ry)
    if rho is None:
        return None, None, "undefined"
    rho = max(-1.0, min(1.0, rho))
    if n <= EXACT_MAX_N:
        perms = np.array(list(itertools.permutations(range(n))))
        ys = ry[perms]  # (n!, n): every ordering of y's ranks
        dx = rx - rx.mean()
        dy = ys - ys.mean(axis=1, keepdims=True)
        r = (dy @ dx) / np.sqrt(float(dx @ dx) * np.sum(dy * dy, axis=1))
        p = float(np.mean(np.abs(r) >= abs(rho) - 1e-12))
        return rho, p, "exact"
    if abs(rho) == 1.0:
        return rho, 0.0, "t approximation"
    t = rho * math.sqrt((n - 2) / (1.0 - rho * rho))
    return rho, min(1.0, 2.0 * stats.t_sf(abs(t), n - 2)), "t approximation"


# --- the section ----------------------------------------------------------------------------------


KEY_COLS = ["study", "study_id", "technique", "pre_data", "post_data", "pre_steps"]
RETENTION_COLS = [
    *KEY_COLS,
    "origin",
    "receiver",
    "strategy",
    "comparison_key",
    "cka_distance",
    "cka_note",
    "weight_distance",
    "weight_layers",
    "weight_note",
    *stat_columns("retention_"),
    *stat_columns("ported_"),
    *stat_columns("sampled_"),
    *stat_columns("random_"),
    *stat_columns("origin_"),
    "origin_learned",
]
CORRELATION_COLS = [
    *KEY_COLS,
    "distance",
    "pairs",
    "spearman_rho",
    "p_value",
    "p_method",
]
TABLE_NOTES = [
    "retention = (ported - random) / (origin - random), all zero-shot: ported and random on the "
    "receiver (post-porting data), origin the same module on its origin host after the "
    "pre-porting steps (pre-porting data). 1: the ported module keeps all it had over a fresh "
    "one; 0: it keeps nothing; below 0: worse than a fresh module; above 1: better on the "
    "receiver than on its origin (the ratio is not bounded). One ratio per seed; mean and 95% "
    "percentile bootstrap interval over seeds (within the seeds' own ratios; none below 3 "
    f"seeds). A seed whose origin is not at least {NOT_LEARNED_MARGIN:.2f} above random has no "
    f"ratio (counted as '{NOT_ABOVE}'); a module that did not learn on its origin has none "
    f"('{NOT_LEARNED}').",
    "CKA distance = 1 - mean over receiver layers of the linear CKA between a receiver layer's "
    "block output and that of the origin layer whose module it receives (the pair's layer map). "
    "weight distance = mean over layers whose shapes match of ||W_receiver - W_origin|| / "
    "||W_origin||.",
    "sampled is shown for reference (a module drawn from the ported module's per-tensor "
    "distribution); it does not enter retention.",
]


def _key(o: Observation) -> tuple:
    return tuple(getattr(o, k) for k in CELL_KEY)


def _zero_shot(o: Observation, condition: str, pre_steps: int) -> tuple:
    """The key of `o`'s control cell at step 0 (random has no pre-porting steps: 0)."""
    return (o.technique, o.origin, o.receiver, o.pre_data, o.post_data, o.seed, condition,
            pre_steps, 0)  # fmt: skip


def _distance_order(p: PairDistance) -> tuple:
    return (p.cka_distance is None, p.cka_distance or 0.0, p.origin, p.receiver)


def _study_rows(
    axes: Axes,
    study: dict[str, Any],
    pairs: list[PairDistance],
    obs: list[Observation],
    learned: dict[ModuleKey, Learned],
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows of one study (technique, data, pre steps, then pairs in distance order) and notes
    on the pairs and directions it cannot show."""
    idx = {
        (o.technique, o.origin, o.receiver, o.pre_data, o.post_data, o.seed, o.condition,
         o.pre_steps, o.post_steps): o
        for o in obs
    }  # fmt: skip
    origin = {
        (o.technique, o.origin, o.pre_data, o.seed, o.pre_steps): o
        for o in obs
        if o.condition == "origin"
    }
    ported0: dict[tuple, list[Observation]] = {}
    for o in obs:
        if o.condition == "ported" and o.post_steps == 0:
            k = (o.technique, o.origin, o.receiver, o.pre_data, o.post_data, o.pre_steps)
            ported0.setdefault(k, []).append(o)
    rows, notes = [], []
    for t in axes.techniques:
        for pre, post in axes.data:
            for p in axes.pre_steps:
                for pair in pairs:
                    sel = sorted(
                        ported0.get((t, pair.origin, pair.receiver, pre, post, p), []),
                        key=lambda o: o.seed,
                    )
                    if not sel:
                        continue

                    org = [origin.get((t, o.origin, pre, o.seed, p)) for o in sel]
                    rnd = [idx.get(_zero_shot(o, "random", 0)) for o in sel]
                    smp = [idx.get(_zero_shot(o, "sampled", p)) for o in sel]
                    mod = learned.get((t, pair.origin, pre, p))
                    rows.append(
                        {
                            "study": study["name"],
                            "study_id": study["id"],
                            "technique": t,
                            "pre_data": pre,
                            "post_data": post,
                            "pre_steps": p,
                            "origin": pair.origin,
                            "receiver": pair.receiver,
                            "strategy": pair.strategy,
                            "comparison_key": pair.comparison_key,
                            "cka_distance": pair.cka_distance,
                            "cka_note": pair.cka_note,
                            "weight_distance": pair.weight_distance,
                            "weight_layers": pair.weight_layers,
                            "weight_note": pair.weight_note,
                            **retention_stat(
                                list(zip(sel, rnd, org, strict=True)), mod is None or mod.learned
                            ).fields("retention_"),
                            "origin_learned": "unknown"
                            if mod is None
                            else ("yes" if mod.learned else f"{NOT_LEARNED} ({mod.why})"),
                            **summarize(sel).fields("ported_"),
                            **summarize(x for x in smp if x is not None).fields("sampled_"),
                            **summarize(x for x in rnd if x is not None).fields("random_"),
                            **summarize(x for x in org if x is not None).fields("origin_"),
                        }
                    )
    shown = {(r["origin"], r["receiver"]) for r in rows}
    about: dict[str, list[str]] = {}  # what the CKA was computed on -> pairs
    for pair in pairs:
        d = axes.direction(pair.origin, pair.receiver)
        if (pair.origin, pair.receiver) not in shown:
            notes.append(f"{d}: recorded as a host pair, but the study has no ported result for it")
        elif pair.cka_distance is None:
            notes.append(f"{d}: no CKA distance ({pair.cka_note}); not in the figure")
        elif pair.about:
            about.setdefault(pair.about, []).append(d)
    for what, ds in about.items():
        who = "every pair" if len(about) == 1 and len(ds) > 1 else ", ".join(ds)
        notes.append(f"CKA on {what} ({who})")
    if rows and "random" not in axes.conditions:
        notes.append("the study has no random condition: retention needs random zero-shot results")
    recorded = {(p.origin, p.receiver) for p in pairs}
    lacking = sorted({(k[1], k[2]) for k in ported0} - recorded, key=lambda d: axes.direction(*d))
    if lacking:
        notes.append(
            "no host pair recorded for "
            + ", ".join(axes.direction(*d) for d in lacking)
            + ": not in this table"
        )
    return rows, notes


def _correlations(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Spearman's rho of distance and mean retention over a setting's pairs (>= 3 pairs)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        k = (r["study"], r["study_id"], r["technique"], r["pre_data"], r["post_data"],
             r["pre_steps"])  # fmt: skip
        groups.setdefault(k, []).append(r)
    out = []
    for k, sel in groups.items():
        for measure, col in (("cka", "cka_distance"), ("weight", "weight_distance")):
            pts = [
                (r[col], r["retention_mean"])
                for r in sel
                if r[col] is not None and r["retention_mean"] is not None
            ]
            if len(pts) < MIN_PAIRS_FOR_RHO:
                continue
            rho, p, method = spearman([a for a, _ in pts], [b for _, b in pts])
            out.append(
                dict(
                    zip(CORRELATION_COLS[:6], k, strict=True),
                    distance=measure,
                    pairs=len(pts),
                    spearman_rho=rho,
                    p_value=p,
                    p_method=method,
                )
            )
    return out


def _figures(
    axes: Axes, study: dict[str, Any], stem_name: str, rows: list[dict[str, Any]], metric: str
) -> tuple[list[DistanceFigureSpec], list[str]]:
    rho = {
        (r["technique"], r["pre_data"], r["post_data"], r["pre_steps"]): (
            r["spearman_rho"],
            r["pairs"],
        )
        for r in _correlations(rows)
        if r["distance"] == "cka"
    }
    out, notes = [], []
    for p in axes.pre_steps:
        panels = []
        for pre, post in axes.data:
            sel = [
                r
                for r in rows
                if (r["pre_data"], r["post_data"], r["pre_steps"]) == (pre, post, p)
                and r["cka_distance"] is not None
            ]
            if not sel:
                continue
            series: dict[str, list[DistancePoint]] = {}
            for t in axes.techniques:
                pts = [
                    DistancePoint(
                        r["cka_distance"],
                        stat_from(r, "retention_"),
                        axes.direction(r["origin"], r["receiver"]),
                        r["origin"],
                    )
                    for r in sel
                    if r["technique"] == t
                ]
                if pts:
                    series[t] = sorted(pts, key=lambda d: d.x)
            pairs = sorted({(r["cka_distance"], axes.direction(r["origin"], r["receiver"]))
                            for r in sel})  # fmt: skip
            panels.append(
                DistancePanel(
                    f"data: {axes.data_combo(pre, post)}",
                    series,
                    pairs,
                    {t: rho[(t, pre, post, p)] for t in series if (t, pre, post, p) in rho},
                )
            )
        if not panels:
            continue
        n_pairs = len({lbl for pnl in panels for _, lbl in pnl.pairs})
        out.append(
            DistanceFigureSpec(
                stem=slug("fig-distance", stem_name, f"pre{p}"),
                title=(
                    f"Zero-shot retention against host distance: {study['name']}, {p} "
                    "pre-porting steps"
                ),
                panels=panels,
                caption=(
                    f"Zero-shot retention, (ported - random) / (origin - random) in {metric}, "
                    "against the CKA distance of the hosts (1 - mean CKA of each receiver layer "
                    f"with the origin layer it receives), modules trained {p} steps before "
                    "porting. Points: mean over seeds, one per direction; error bars: 95% "
                    "bootstrap interval over seeds (none below 3); lines join a technique's "
                    "pairs from one origin host in distance order (a series of receivers, never "
                    "the two directions of one pair); dashed lines: 1 "
                    "(all the origin's gain over a fresh module kept) and 0 (none). Points of "
                    "different techniques are set slightly apart sideways; Spearman's rho per "
                    "technique with 3 pairs or more."
                ),
                notes=[ONE_PAIR_NOTE] if n_pairs == 1 else [],
            )
        )
    if not out and rows:
        notes.append("no figure: no pair of the study has a CKA distance")
    return out, notes


def distance_section(
    data: StoreData, axes: Axes, learned: dict[ModuleKey, Learned] | None = None
) -> DistanceSection:
    """The retention-against-host-distance section of the report (see the module docstring)."""
    if data.host_pairs is None:
        why = data.host_pairs_problem or (
            "the store has no host_pairs table (it was written before peftport recorded host "
            "pairs and their comparisons)"
        )
        return DistanceSection([], [], omitted=f"Left out: {why}.")
    by_study: dict[str, list[HostPairRecord]] = {}
    for rec in data.host_pairs:
        by_study.setdefault(rec.study_id, []).append(rec)
    names = Counter(s["name"] for s in data.studies)
    studies, skipped, rows_all, corr_all = [], [], [], []
    for s in data.studies:
        recs = by_study.get(s["id"], [])
        if not recs:
            skipped.append(f"{s['name']}: no host pair recorded")
            continue
        pairs = sorted((pair_distance(r) for r in recs), key=_distance_order)
        keys = data.study_cells.get(s["id"])
        obs = [o for o in data.observations if keys is None or _key(o) in keys]
        rows, notes = _study_rows(axes, s, pairs, obs, learned or {})
        stem_name = s["name"] if names[s["name"]] == 1 else f"{s['name']}-{s['id'][:8]}"
        figs, fig_notes = _figures(axes, s, stem_name, rows, data.metric)
        with_distance = [p for p in pairs if p.cka_distance is not None]
        if len(with_distance) == 1:
            notes.insert(0, ONE_PAIR_NOTE)
        elif len(with_distance) < MIN_PAIRS_FOR_RHO:
            notes.insert(
                0,
                f"{len(with_distance)} pairs with a CKA distance: Spearman's rho needs "
                f"{MIN_PAIRS_FOR_RHO} or more",
            )
        rows_all += rows
        corr_all += _correlations(rows)
        studies.append(DistanceStudy(s["id"], s["name"], pairs, notes + fig_notes, figs))
    if not studies:
        return DistanceSection(
            [],
            [],
            omitted="Left out: no host pair is recorded for "
            + ("the studies reported" if len(data.studies) != 1 else "this study")
            + " (pairs are recorded when a study runs).",
            skipped=skipped,
        )
    tables = [
        Table(
            TABLE,
            "Zero-shot retention against host distance",
            RETENTION_COLS,
            rows_all,
            list(TABLE_NOTES),
        ),
        Table(
            CORRELATION_TABLE,
            "Spearman rank correlation of host distance and zero-shot retention",
            CORRELATION_COLS,
            corr_all,
            [
                "Per study, technique, data combination and pre-porting steps, over the pairs "
                f"with a distance and a mean retention ({MIN_PAIRS_FOR_RHO} or more): Spearman's "
                "rho of the distance (cka or weight) and the mean retention over seeds; "
                f"two-sided p, exact (every ordering) up to {EXACT_MAX_N} pairs. Few pairs give "
                "weak evidence: with 3, the smallest possible p is 1/3."
            ],
        ),
    ]
    return DistanceSection(studies, tables, skipped=skipped)
