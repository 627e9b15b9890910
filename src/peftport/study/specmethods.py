"""The study file's `methods:` axis: how the `ported` condition carries a module
(`peftport.methods`), one post unit per method.

    methods: [copy, scaled:0.5, subspace, align]

Default `[copy]`, the paper's port: a study without the key, or with `methods: [copy]`, plans
exactly the units (and ids) it always did. Sampled and random are method-free controls: they are
planned once whatever the methods. Every entry is checked before anything runs: its syntax
(`methods.parse_method`), duplicates, and whether each technique of the study can take it on
each host family of the study's pairs (`methods.align_problem` for align; a weight update for
subspace; a scaling rule for scaled).
"""

from __future__ import annotations

from typing import Any

from peftport.errors import PeftportError
from peftport.study.source import Path_
from peftport.study.validate import Problems

DEFAULT_METHODS = ("copy",)
CHOICES = "copy, scaled:F (a finite factor), subspace[:rank], align[:procrustes|lstsq]"


def method_text(parsed: Any) -> str:
    """A method's canonical text: "copy", "scaled:0.5", "subspace", "subspace:4", "align",
    "align:lstsq" (a default parameter is left out, so `align` and `align:procrustes` are one
    method and one unit id)."""
    p = parsed.params
    if parsed.name == "scaled":
        factor = repr(float(p["factor"]))
        return "scaled:" + (factor[:-2] if factor.endswith(".0") else factor)
    if parsed.name == "subspace":
        return "subspace" if p.get("rank") is None else f"subspace:{p['rank']}"
    if parsed.name == "align":
        return "align" if p.get("fit", "procrustes") == "procrustes" else f"align:{p['fit']}"
    return parsed.name


def technique_problem(parsed: Any, technique: str, family: str, stacks: int) -> str | None:
    """Why `parsed` cannot carry `technique` modules on `family` hosts (None: it can)."""
    from peftport import methods as m

    if parsed.name == "align":
        return m.align_problem(technique, family, stacks)
    if parsed.name == "subspace" and not m.WEIGHT_UPDATE.get(technique, False):
        return (
            f"subspace projects a weight update onto the receiving weight's singular "
            f"subspaces; {technique} modules are not weight updates (LoRA only)"
        )
    if parsed.name == "scaled" and technique not in m.SCALE:
        return f"scaled cannot scale {technique} modules: " + m.NOT_SCALED.get(
            technique, "no rule says which of its tensors carry its output"
        )
    return None


def read_methods(
    data: dict,
    technique_names: list[str],
    families: dict[str, str],
    conditions: list[str],
    probs: Problems,
) -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """The `methods:` key -> (canonical method texts in the file's order, default `copy`;
    skips: (technique, method, why) for a technique the method cannot carry).

    A method is planned for the techniques it can carry and skipped, with a note, for the others
    (`methods: [copy, subspace]` with LoRA and an adapter: subspace for LoRA only); a method that
    can carry none of the study's techniques is an error at its entry. `families`: host ->
    family for the hosts of the study's pairs that could be described without building
    anything."""
    from peftport.hosts.spec import LAYOUTS
    from peftport.methods import parse_method

    if "methods" not in data:
        return DEFAULT_METHODS, ()
    raw = data["methods"]
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        probs.add(
            ("methods",),
            f"methods must be a non-empty list of porting methods ({CHOICES}), got {raw!r}",
        )
        return DEFAULT_METHODS, ()
    out: list[str] = []
    skips: list[tuple[str, str, str]] = []
    for i, entry in enumerate(raw):
        path: Path_ = ("methods", i)
        if not isinstance(entry, str):
            probs.add(path, f"a porting method is text ({CHOICES}), got {entry!r}")
            continue
        try:
            parsed = parse_method(entry)
        except PeftportError as e:
            probs.add(path, f"bad porting method {entry!r}: {e}; choose from {CHOICES}")
            continue
        text = method_text(parsed)
        if text in out:
            probs.add(path, f"porting method {text!r} is listed twice")
            continue
        out.append(text)
        why_not: dict[str, str] = {}
        for fam in dict.fromkeys(families.values()):
            stacks = len(LAYOUTS[fam].layer_stacks) if fam in LAYOUTS else 1
            for t in technique_names:
                why = technique_problem(parsed, t, fam, stacks)
                if why and t not in why_not:
                    why_not[t] = f"{why} ({fam} hosts)"
        if technique_names and len(why_not) == len(technique_names):
            probs.add(
                path,
                f"porting method {text!r} cannot port any technique of this study: "
                + "; ".join(f"{t}: {w}" for t, w in why_not.items()),
            )
        skips.extend((t, text, w) for t, w in why_not.items())
    if out and out != ["copy"] and "ported" not in conditions:
        probs.add(
            ("methods",),
            "methods say how the ported condition carries a module, and "
            "this study's conditions leave out ported: add it, or remove methods",
        )
    return (tuple(out) or DEFAULT_METHODS), tuple(skips)


def skip_notes(skips: tuple[tuple[str, str, str], ...]) -> list[str]:
    return [f"porting method {m} is not planned for {t}: {why}" for t, m, why in skips]


def primary_method(methods: tuple[str, ...]) -> str:
    """The method whose results are the study's `ported` in every other table: copy when the
    study runs it, else its first method."""
    return "copy" if "copy" in methods else methods[0]
