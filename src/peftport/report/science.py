"""Is a result evidence of anything? The majority-class rate of each test split, modules that
did not learn on their origin, and cells whose predictions are (nearly) all one class.

Everything comes from what the store holds per result (accuracy, AUC, macro-F1, the share of
the most predicted class, the number of test examples): the store has no label counts, so the
majority-class rate of a test split is read off the results that predict a single class.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from peftport.report.load import Observation

# A module whose accuracy on its origin (mean over seeds) is within this of the majority-class
# rate of its test split has not learned the task: it is not shown as "ported" anything.
NOT_LEARNED_MARGIN = 0.02
# ... nor is one whose mean AUC on its origin is below this (0.5 = no ranking at all).
NOT_LEARNED_AUC = 0.60
SINGLE_CLASS = 0.999  # a result predicting one class for every example (majority share 1)
NOT_LEARNED = "not learned"

ModuleKey = tuple[str, str, str, int]  # technique, origin host, pre-porting data, pre steps


@dataclass(frozen=True)
class BaseRate:
    """The accuracy of always predicting the test split's most frequent class."""

    share: float
    exact: bool  # False: a lower bound (only a minority class, or a task of > 2 classes, seen)
    results: int  # single-class results it was read from


def eval_data(o: Observation) -> str:
    """The data set `o` is evaluated on: the origin's own on the pre-porting data."""
    return o.pre_data if o.condition == "origin" else o.post_data


def base_rates(obs: Iterable[Observation]) -> dict[str, BaseRate]:
    """Data set -> its majority-class rate, from results that predict one class only.

    Such a result's accuracy p is the share of the class it predicts; its macro-F1 is
    (2p / (1 + p)) / K (that class's F1 over K classes, the others 0), which gives K. With K = 2
    the majority rate is max(p, 1 - p) exactly; otherwise the largest such p is a lower bound."""
    found: dict[str, list[tuple[float, bool]]] = {}
    for o in obs:
        if o.accuracy is None or o.majority_share is None or o.majority_share < SINGLE_CLASS:
            continue
        p = o.accuracy
        if p <= 0:
            continue
        classes = None
        if o.macro_f1:
            classes = round((2 * p / (1 + p)) / o.macro_f1)
        if classes == 2:
            found.setdefault(eval_data(o), []).append((max(p, 1 - p), True))
        else:
            found.setdefault(eval_data(o), []).append((p, False))
    out = {}
    for d, vals in found.items():
        exact = [v for v, e in vals if e]
        share = max(v for v, _ in vals)
        out[d] = BaseRate(share, bool(exact) and share == max(exact), len(vals))
    return out


@dataclass(frozen=True)
class Learned:
    """How a module did on its origin (mean over seeds), and whether that is learning."""

    accuracy: float | None
    auc: float | None
    base: float | None  # the majority-class rate of its test split (None: unknown)
    learned: bool
    why: str  # "" when learned; else what failed, with the numbers
    short: str = ""  # "" when learned; else what failed, in words without numbers

    def text(self) -> str:
        if self.learned:
            return "learned"
        return f"{NOT_LEARNED} ({self.why})"


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def learned_modules(obs: Iterable[Observation]) -> dict[ModuleKey, Learned]:
    """(technique, origin, pre data, pre steps) -> Learned, for every origin result group."""
    obs = list(obs)
    base = base_rates(obs)
    groups: dict[ModuleKey, list[Observation]] = {}
    for o in obs:
        if o.condition == "origin":
            groups.setdefault((o.technique, o.origin, o.pre_data, o.pre_steps), []).append(o)
    out = {}
    for key, sel in groups.items():
        acc = _mean([o.accuracy for o in sel if o.accuracy is not None])
        auc = _mean([o.auc for o in sel if o.auc is not None])
        br = base.get(key[2])
        why, short = [], []
        if acc is not None and br is not None and acc <= br.share + NOT_LEARNED_MARGIN:
            why.append(f"accuracy {acc:.3f}, majority class {br.share:.3f}")
            short.append("accuracy at the majority class")
        if auc is not None and auc < NOT_LEARNED_AUC:
            why.append(f"AUC {auc:.3f} < {NOT_LEARNED_AUC:.2f}")
            short.append(f"AUC < {NOT_LEARNED_AUC:.2f}")
        out[key] = Learned(
            acc, auc, br.share if br else None, not why, "; ".join(why), ", ".join(short)
        )
    return out


def is_learned(learned: dict[ModuleKey, Learned], o: Observation) -> bool:
    """Whether the module behind `o` learned on its origin (unknown modules count as learned:
    nothing says otherwise)."""
    got = learned.get((o.technique, o.origin, o.pre_data, o.pre_steps))
    return got is None or got.learned
