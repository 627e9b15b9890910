"""The paper's findings, each checked against this study's statistics, with a verdict.

Nothing here is written by hand: every verdict is computed from the report's tables and
results, at each technique's largest pre-porting step count and at zero-shot (post-porting
step 0), over the techniques whose modules learned on their origin (science.learned_modules).
A verdict is "holds", "does not hold" or "not measured" (with why), and its detail gives the
numbers.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from peftport import stats
from peftport.report.model import Axes, Table
from peftport.report.science import Learned, ModuleKey
from peftport.report.uncertainty import MIN_RUNS

HOLDS, FAILS, NOT_MEASURED = "holds", "does not hold", "not measured"
ALPHA = 0.05


@dataclass(frozen=True)
class Finding:
    key: str
    claim: str
    verdict: str  # HOLDS | FAILS | NOT_MEASURED
    detail: str


def _pval(p: float | None) -> str:
    return "–" if p is None else ("<0.001" if p < 0.001 else f"{p:.3f}")


def measured_techniques(axes: Axes, learned: dict[ModuleKey, Learned]) -> list[str]:
    """Techniques with at least one module that learned on its origin at the technique's
    largest pre-porting step count (a technique without origin results counts as measured:
    nothing says it did not learn)."""
    out = []
    for t in axes.techniques:
        mods = [v for k, v in learned.items() if k[0] == t and k[3] == axes.top(t)]
        if not mods or any(m.learned for m in mods):
            out.append(t)
    return out


def _beats(
    claim: str, key: str, control: str, tables: dict[str, Table], techs: list[str], axes: Axes
) -> Finding:
    rows = {
        r["technique"]: r
        for r in tables["differences"].rows
        if r["comparison"] == f"ported - {control}"
        and r["pre_steps"] == axes.top(r["technique"])
        and r["post_steps"] == 0
        and r["technique"] in techs
    }
    tested = {t: r for t, r in rows.items() if r["n_units"] >= MIN_RUNS and r["p_holm"] is not None}
    if not tested:
        why = "no technique that learned has" if techs else "no technique learned on its origin;"
        return Finding(key, claim, NOT_MEASURED,
                       f"{why} {MIN_RUNS} or more independent units with both results")  # fmt: skip
    parts, ok = [], []
    for t, r in tested.items():
        good = r["mean_diff"] > 0 and r["p_holm"] < ALPHA
        ok.append(good)
        parts.append(
            f"{t} {r['mean_diff']:+.3f} (p Holm {_pval(r['p_holm'])}, {r['n_units']} units)"
        )
    untested = [t for t in techs if t not in tested]
    if untested:
        parts.append("not tested: " + ", ".join(untested))
    held = sum(ok)
    verdict = HOLDS if held == len(ok) else FAILS
    head = (
        f"not for every technique: it holds (p Holm < {ALPHA:g}) for {held} of {len(ok)}: "
        if 0 < held < len(ok)
        else ""
    )
    return Finding(key, claim, verdict, head + "; ".join(parts))


def _best(tables: dict[str, Table], techs: list[str]) -> Finding:
    claim = "One technique ports best (ported - random at zero-shot, ranked)"
    rows = [
        r for r in tables["ranking"].rows if r["score"] == "zero_shot" and r["technique"] in techs
    ]
    if len(rows) < 2:
        return Finding(
            "best", claim, NOT_MEASURED, "fewer than 2 techniques that learned are ranked"
        )
    rows.sort(key=lambda r: r["rank"])
    top, rest = rows[0], rows[1:]
    clear = all(top["rank_high"] < r["rank_low"] for r in rest)
    detail = (
        f"{top['technique']} leads (mean {top['mean']:+.3f}, rank interval "
        f"{top['rank_low']:g}–{top['rank_high']:g}, P(best) {top['p_best']:.2f})"
    )
    if not clear:
        over = [r["technique"] for r in rest if r["rank_low"] <= top["rank_high"]]
        detail += "; its rank interval overlaps " + ", ".join(over)
    return Finding("best", claim, HOLDS if clear else FAILS, detail)


def _gains(obs: list[Any], axes: Axes) -> dict[tuple, float]:
    """(technique, origin, receiver, pre data, post data, seed) -> ported - random at step 0,
    ported at the technique's largest pre-porting step count."""
    idx = {
        (o.technique, o.origin, o.receiver, o.pre_data, o.post_data, o.seed, o.condition): o.value
        for o in obs
        if o.post_steps == 0 and o.value is not None
        and ((o.condition == "ported" and o.pre_steps == axes.top(o.technique))
             or o.condition == "random")
    }  # fmt: skip
    out = {}
    for k, v in idx.items():
        if k[-1] == "ported" and (r := idx.get((*k[:-1], "random"))) is not None:
            out[k[:-1]] = v - r
    return out


def _contrast(
    key: str, claim: str, diffs: dict[str, dict[int, list[float]]], absent: str, two_sided: bool
) -> Finding:
    """Per technique: per-seed mean differences (a seed is the independent unit here), a
    t-test over seeds, Holm over techniques."""
    tested = {t: [float(np.mean(v)) for v in by_seed.values()] for t, by_seed in diffs.items()}
    tested = {t: d for t, d in tested.items() if len(d) >= MIN_RUNS}
    if not tested:
        why = absent if not diffs else f"fewer than {MIN_RUNS} seeds with both sides"
        return Finding(key, claim, NOT_MEASURED, why)
    res = {t: stats.paired_test(d, [0.0] * len(d)) for t, d in tested.items()}
    res = {t: r for t, r in res.items() if r.get("p_t") is not None and not np.isnan(r["p_t"])}
    if not res:  # every seed gives the same difference: no spread, no test
        return Finding(key, claim, NOT_MEASURED, "no test: the seeds' differences do not vary")
    ps = np.array([np.nan if r.get("p_t") is None else r["p_t"] for r in res.values()])
    holm = dict(zip(res, stats.holm(ps), strict=True))
    parts, hit = [], False
    for t, r in res.items():
        m, p = r["mean_diff"], holm[t]
        sig = p is not None and not np.isnan(p) and p < ALPHA and (two_sided or m > 0)
        hit = hit or sig
        parts.append(f"{t} {m:+.3f} (p Holm {_pval(None if np.isnan(p) else p)}, {r['n']} seeds)")
    return Finding(key, claim, HOLDS if hit else FAILS, "; ".join(parts))


def _direction(axes: Axes, gains: dict[tuple, float], techs: list[str]) -> Finding:
    claim = "The direction of porting matters (A -> B gains differ from B -> A)"
    diffs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (t, o, r, pre, post, seed), g in gains.items():
        back = gains.get((t, r, o, pre, post, seed))
        if t in techs and back is not None and (o, r) < (r, o):
            diffs[t][seed].append(g - back)
    return _contrast("direction", claim, diffs, "no host pair is ported in both directions", True)


def _cross_data(gains: dict[tuple, float], techs: list[str]) -> Finding:
    claim = "Porting to another data set costs more than porting on the same data set"
    same: dict[tuple, list[float]] = defaultdict(list)
    cross: dict[tuple, list[float]] = defaultdict(list)
    for (t, o, r, pre, post, seed), g in gains.items():
        if t in techs:
            (same if pre == post else cross)[(t, o, r, seed)].append(g)
    diffs: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for k in same.keys() & cross.keys():
        t, _, _, seed = k
        diffs[t][seed].append(float(np.mean(same[k]) - np.mean(cross[k])))
    return _contrast("cross_data", claim, diffs, "the study has no cross-data combination "
                     "beside a same-data one", False)  # fmt: skip


def findings(
    axes: Axes, tables: dict[str, Table], learned: dict[ModuleKey, Learned], obs: list[Any]
) -> list[Finding]:
    """The paper's findings, checked at each technique's largest pre-porting step count, at
    zero-shot."""
    if not axes.pre_steps:
        return []
    techs = measured_techniques(axes, learned)
    gains = _gains(obs, axes)
    return [
        _beats("Ported beats sampled (a module drawn from the same per-tensor distribution)",
               "beats_sampled", "sampled", tables, techs, axes),
        _beats("Ported beats random (a fresh module: training from scratch)",
               "beats_random", "random", tables, techs, axes),
        _best(tables, techs),
        _direction(axes, gains, techs),
        _cross_data(gains, techs),
    ]  # fmt: skip
