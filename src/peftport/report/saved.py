"""Steps saved: the training porting saves, read off the mean ported and random curves.

A saving is only a number when it means something: a checkpoint where the ported modules
predict (nearly) one class, or where random "reaches" the ported value only by predicting one
class (the majority class of the split), says "not measured" and why, never a number.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from peftport import stats
from peftport.report.load import Observation
from peftport.report.model import (
    CONFIDENCE,
    N_BOOT,
    ONE_CLASS,
    SEED,
    SETTING_COLUMNS,
    Axes,
    Table,
    cell_index,
    group,
    setting_of,
)
from peftport.report.uncertainty import MIN_RUNS

PORTED_ONE_CLASS = "not measured: ported predicts one class here"
RANDOM_ONE_CLASS = "not measured: random reaches it only by predicting one class"

# (run key, ported curve, random curve, ported majority shares, random majority shares)
Curve = tuple[tuple, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _share(o: Observation | None) -> float:
    return math.nan if o is None or o.majority_share is None else float(o.majority_share)


def curves(obs: list[Observation], steps: tuple[int, ...]) -> list[Curve]:
    """Complete (ported, random) curve pairs, one per ported run, with their majority shares."""
    idx = cell_index(obs)
    runs = group(
        (o for o in obs if o.condition == "ported"),
        lambda o: (*setting_of(o), o.seed, o.pre_steps),
    )
    out = []
    for key, sel in sorted(runs.items(), key=lambda kv: str(kv[0])):
        *setting, seed, p = key
        by_step = {o.post_steps: o for o in sel}
        rnd = [idx.get((*setting, seed, "random", 0, s)) for s in steps]
        prt = [by_step.get(s) for s in steps]
        pv = [None if x is None else x.value for x in prt]
        rv = [None if x is None else x.value for x in rnd]
        if any(v is None for v in pv + rv):
            continue
        out.append(
            (
                key,
                np.array(pv, dtype=float),
                np.array(rv, dtype=float),
                np.array([_share(x) for x in prt]),
                np.array([_share(x) for x in rnd]),
            )
        )
    return out


def _reach(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
    r = stats.steps_to_reach(steps, curve, target)
    return math.inf if r is None else r


def _one_class(shares: np.ndarray) -> bool:
    """The mean majority share of the runs (where stored) is at least ONE_CLASS."""
    known = shares[~np.isnan(shares)]
    return bool(known.size) and float(known.mean()) >= ONE_CLASS


def _degenerate(s: np.ndarray, need: float, j: int, ps: np.ndarray, rs: np.ndarray) -> str:
    """Why the saving at checkpoint j is not measured ("" when it is): the ported modules
    predict one class at j, or the mean random curve reaches the target at a checkpoint where it
    predicts one class."""
    if _one_class(ps[:, j]):
        return PORTED_ONE_CLASS
    if not math.isinf(need):
        i = int(np.searchsorted(s, need, side="left"))  # the checkpoint where random gets there
        if _one_class(rs[:, min(i, len(s) - 1)]):
            return RANDOM_ONE_CLASS
    return ""


def steps_saved_rows(
    steps: tuple[int, ...], curves: list[Curve], expected: int
) -> list[dict[str, Any]]:
    """Per checkpoint k: what the mean ported curve has at k, the (interpolated) step at which the
    mean random curve first reaches it, and the steps saved = that step - k; bootstrap interval
    over runs (MIN_RUNS runs or more). Degenerate checkpoints: "not measured" and why."""
    s = np.array(steps, dtype=float)
    if not curves:
        return [
            {
                "checkpoint": k,
                "runs": 0,
                "expected_runs": expected,
                "ported_mean": None,
                "random_needs": None,
                "reached": None,
                "saved": None,
                "saved_ci_low": None,
                "saved_ci_high": None,
                "runs_reached": 0,
                "random_last_step": int(s[-1]),
                "not_measured": "",
            }
            for k in steps
        ]
    P = np.stack([c[1] for c in curves])  # (runs, steps)
    R = np.stack([c[2] for c in curves])
    PS = np.stack([c[3] for c in curves])
    RS = np.stack([c[4] for c in curves])
    pm, rm = P.mean(axis=0), R.mean(axis=0)
    rng = np.random.default_rng(SEED)
    boot_idx = (
        rng.integers(0, len(curves), size=(N_BOOT, len(curves)))
        if len(curves) >= MIN_RUNS
        else None
    )
    rows = []
    for j, k in enumerate(steps):
        need = _reach(s, rm, float(pm[j]))
        per_run = [_reach(s, R[i], float(P[i, j])) for i in range(len(curves))]
        low = high = None
        why = _degenerate(s, need, j, PS, RS)
        if boot_idx is not None and not why:
            # a resample is a multiset of runs: equal multisets give equal answers (few runs
            # have few distinct multisets), so each is computed once
            seen: dict[bytes, float] = {}
            saved_b = np.empty(len(boot_idx))
            for i, b in enumerate(boot_idx):
                key = np.bincount(b, minlength=len(curves)).tobytes()
                if key not in seen:
                    seen[key] = _reach(s, R[b].mean(axis=0), float(P[b, j].mean())) - k
                saved_b[i] = seen[key]
            low = float(np.quantile(saved_b, (1 - CONFIDENCE) / 2, method="lower"))
            high = float(np.quantile(saved_b, (1 + CONFIDENCE) / 2, method="higher"))
        rows.append(
            {
                "checkpoint": k,
                "runs": len(curves),
                "expected_runs": expected,
                "ported_mean": float(pm[j]),
                "random_needs": None if math.isinf(need) or why else need,
                "reached": None if why else not math.isinf(need),
                "saved": None if math.isinf(need) or why else need - k,
                "saved_ci_low": low,
                "saved_ci_high": high,
                "runs_reached": sum(1 for x in per_run if not math.isinf(x)),
                "random_last_step": int(s[-1]),
                "not_measured": why,
            }
        )
    return rows


SAVED_COLS = [
    "checkpoint",
    "ported_mean",
    "random_needs",
    "reached",
    "saved",
    "saved_ci_low",
    "saved_ci_high",
    "runs",
    "expected_runs",
    "runs_reached",
    "random_last_step",
    "not_measured",
]


def steps_saved_tables(axes: Axes, obs: list[Observation]) -> tuple[Table, Table]:
    if "random" not in axes.conditions or "ported" not in axes.conditions:
        note = ["The study has no ported and random runs to compare."]
        return (
            Table("steps_saved", "Steps saved", ["technique", "pre_steps", *SAVED_COLS], [], note),
            Table(
                "steps_saved_by_direction",
                "Steps saved by direction",
                [*SETTING_COLUMNS, "pre_steps", *SAVED_COLS],
                [],
                note,
            ),
        )
    runs = curves(obs, axes.steps)
    planned = group(
        (o for o in obs if o.condition == "ported" and o.post_steps == 0),
        lambda o: (*setting_of(o), o.pre_steps),
    )
    rows, rows_d = [], []
    for t in axes.techniques:
        for p in axes.pre_steps:
            sel = [c for c in runs if c[0][0] == t and c[0][-1] == p]
            exp = sum(len(v) for k, v in planned.items() if k[0] == t and k[-1] == p)
            if exp:
                for r in steps_saved_rows(axes.steps, sel, exp):
                    rows.append({"technique": t, "pre_steps": p, **r})
            for key, cols in axes.settings(t):
                exp = len(planned.get((*key, p), []))
                if not exp:
                    continue
                sel_d = [c for c in sel if c[0][:5] == key]
                for r in steps_saved_rows(axes.steps, sel_d, exp):
                    rows_d.append({**cols, "pre_steps": p, **r})
    notes = [
        "For each checkpoint k: the mean ported curve's value at k, the post-porting step at "
        "which the mean random curve (the same runs' random modules) first reaches it, linearly "
        "interpolated between checkpoints (random_needs), and saved = random_needs - k. Not "
        "reached: random never gets there by its last checkpoint (the saving is then more than "
        "random_last_step - k). Runs with a missing result are left out (runs of expected_runs); "
        "interval: 95% percentile bootstrap over runs (none below 3 runs); runs_reached: runs whose own random curve "
        "reaches their own ported value. An interval bound of inf: not reached in that share of the "
        "resamples. not_measured: the ported modules predict one class at k, or the mean random "
        f"curve reaches the target only where it predicts one class (majority share >= "
        f"{ONE_CLASS}): no saving is computed from a control that only found the majority class."
    ]
    return (
        Table(
            "steps_saved",
            "Steps saved by porting (pooled over directions and data)",
            ["technique", "pre_steps", *SAVED_COLS],
            rows,
            notes,
        ),
        Table(
            "steps_saved_by_direction",
            "Steps saved by porting, by direction and data combination",
            ["technique", *SETTING_COLUMNS[1:], "pre_steps", *SAVED_COLS],
            rows_d,
            notes,
        ),
    )
