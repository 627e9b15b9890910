"""Can a pair port? Families, shapes and depths of a study's host pairs, and their layer maps.

Read at plan time from the hosts' config.json when it is on disk (`cheap_host_config`: never
builds or downloads anything), and again at run time once every host is resolved
(`check_resolved_pairs`). `peftport.study.spec` calls `check_pair` for each listed pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peftport.configs import CompareSettings
from peftport.errors import PeftportError
from peftport.layermap import IDENTITY, LayerMap
from peftport.study.source import Path_, StudyFileError
from peftport.study.validate import Problems

if TYPE_CHECKING:
    from peftport.study.spec import StudySpec


@dataclass(frozen=True)
class PairMap(LayerMap):
    """A directed pair's layer map as the study file gives it (resolved at run time)."""

    def as_config(self, compare: CompareSettings | None) -> dict[str, Any]:
        """What a post unit's id hashes: the stored form of the map, and for cka the
        comparison settings the map is computed from (so changing them makes new units)."""
        out = self.as_dict()
        if self.strategy == "cka" and compare is not None:
            out["compare"] = compare.as_dict()
        return out


def pair_problem(
    origin: str,
    o_family: str,
    o_config: dict | None,
    receiver: str,
    r_family: str,
    r_config: dict | None,
    *,
    mapped: bool = False,
) -> str | None:
    """Why a module cannot port from origin to receiver, or None (None too when unknown).

    `mapped`: the pair carries a layer map, so the depths may differ (`map_problem` checks the
    map against them)."""
    from peftport.hosts.spec import LAYOUTS

    if o_family and r_family and o_family != r_family:
        ok, rk = LAYOUTS[o_family].kind, LAYOUTS[r_family].kind
        kinds = f" ({ok} vs {rk})" if ok != rk else ""
        return (
            f"cannot port {origin} -> {receiver}: {origin} is a {o_family} host and "
            f"{receiver} a {r_family} host{kinds}; a module ports only between hosts of one "
            "family"
        )
    if o_config is None or r_config is None or not (o_family or r_family):
        return None
    layout = LAYOUTS.get(o_family or r_family)
    if layout is None:  # not a family peftport loads: the host's loading says so
        return None
    a, b = layout.shape(o_config), layout.shape(r_config)
    depth = layout.depth_keys
    diff = [f"{k} {a[k]} vs {b[k]}" for k in a if a[k] != b.get(k) and not (mapped and k in depth)]
    if diff and all(k in depth for k in a if a[k] != b.get(k)):
        return (
            f"cannot port {origin} -> {receiver}: their depths differ ({', '.join(diff)}); "
            "add `layer_map: stride` (or `cka`) to the pair to give each receiver layer "
            f"an origin layer, e.g. {{origin: {origin}, receiver: {receiver}, layer_map: "
            "stride}"
        )
    if diff:
        return (
            f"cannot port {origin} -> {receiver}: their shapes differ ({', '.join(diff)}); "
            "module tensors must have the same shapes on both hosts"
            + ("" if mapped else " (a layer map pairs different depths, not widths)")
        )
    return None


def host_layers(family: str, config: dict[str, Any]) -> int | None:
    """A host's depth as a layer map counts it (T5: its encoder's), or None if unknown."""
    from peftport.hosts.spec import LAYOUTS

    return LAYOUTS[family].depth(config) if family in LAYOUTS else None


def map_problem(
    origin: str,
    receiver: str,
    family: str,
    o_config: dict | None,
    r_config: dict | None,
    pm: PairMap | None,
) -> str | None:
    """Why a directed pair's layer map cannot pair the hosts' layers, or None (None too when a
    depth is unknown, or the map is cka: that one is resolved from the host comparison)."""
    if pm is None or o_config is None or r_config is None:
        return None
    from peftport.hosts.spec import LAYOUTS

    layout = LAYOUTS.get(family)
    if layout is None:
        return None
    keys = layout.depth_keys
    if len(keys) > 1 and pm.strategy != "identity":  # T5: one map for both stacks
        for h, cfg in ((origin, o_config), (receiver, r_config)):
            sig = layout.shape(cfg)
            if len({sig[k] for k in keys}) > 1:
                return (
                    f"layer map for {origin} -> {receiver}: {h} has "
                    + " and ".join(f"{k} {sig[k]}" for k in keys)
                    + "; a study's layer map applies to every layer stack, so each host "
                    "needs one depth"
                )
    n_o, n_r = host_layers(family, o_config), host_layers(family, r_config)
    if n_o is None or n_r is None:
        return None
    return pm.problem(n_o, n_r, subject=f"{origin} -> {receiver}", name="layer_map")


def resolve_pair_map(
    pm: PairMap | None, n_origin: int, n_receiver: int, comparison: Any = None
) -> list[int]:
    """A directed pair's resolved map (receiver layer -> origin layer): identity when it has
    none; cka needs the pair's `HostComparison`. Plain ints (the payload goes to Ray too)."""
    return list((pm or IDENTITY).resolve(n_origin, n_receiver, comparison))


def cheap_host_folder(spec: Any) -> Path | None:
    """A host's checkpoint folder (config.json, tokenizer files) if it is already on disk;
    never builds or downloads (None then).

    Derived hosts have their parent's shapes and tokenizer, so the parent's folder stands in for
    theirs until they are built.
    """
    from peftport.assets import HubSnapshot, LocalPath, PackageMember, SourceUnavailable
    from peftport.hosts.spec import Built

    for src in spec.sources:
        folder: Path | None = None
        try:
            if isinstance(src, LocalPath):
                folder = src.resolve()
            elif isinstance(src, Built | PackageMember):
                folder = src.cached()  # peeked at: never built or extracted here
            elif isinstance(src, HubSnapshot):
                from huggingface_hub import try_to_load_from_cache

                hit = try_to_load_from_cache(src.repo_id, "config.json", revision=src.revision)
                folder = Path(hit).parent if isinstance(hit, str) else None
        except (SourceUnavailable, OSError, ValueError, ImportError):
            continue
        if folder is not None and (folder / "config.json").is_file():
            return folder
    if getattr(spec, "parent", None):
        from peftport.hosts import get_host

        try:
            return cheap_host_folder(get_host(spec.parent))
        except PeftportError:
            return None
    return None


def cheap_host_config(spec: Any) -> dict[str, Any] | None:
    """A host's config.json if it is already on disk (`cheap_host_folder`), else None."""
    folder = cheap_host_folder(spec)
    if folder is None:
        return None
    try:
        return json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return None


def check_pair(
    o: Any,
    r: Any,
    path: Path_,
    probs: Problems,
    pm: PairMap | None = None,
    mpath: Path_ = (),
    both: bool = False,
    mapped: bool = False,
) -> None:
    """Families and shapes of a listed pair (depths aside when it has a map), and its map in
    each direction it is used (first_k, say, is fine one way and not the other)."""
    problem = pair_problem(o.id, o.family, None, r.id, r.family, None)
    if problem is None and o.family and r.family:
        oc, rc = cheap_host_config(o), cheap_host_config(r)
        problem = pair_problem(
            o.id, o.family, oc, r.id, r.family, rc, mapped=mapped or pm is not None
        )
        if problem is None:
            for a, b, ac, bc, rev in ((o, r, oc, rc, False), (r, o, rc, oc, True))[: 1 + both]:
                mp = map_problem(a.id, b.id, o.family, ac, bc, pm)
                if mp:
                    probs.add(
                        mpath,
                        mp
                        + (
                            " (the reverse direction: both_directions applies the strategy to each)"
                            if rev
                            else ""
                        ),
                    )
    if problem:
        probs.add(path, problem)


def unchecked_notes(pairs: list[tuple[str, str]], cache: dict) -> list[str]:
    out = []
    for o, r in pairs:
        so, sr = cache.get(o), cache.get(r)
        if so is None or sr is None:
            continue
        if (
            not (so.family and sr.family)
            or cheap_host_config(so) is None
            or cheap_host_config(sr) is None
        ):
            out.append(
                f"shapes of {o} -> {r} not compared yet (a host is not on disk); "
                "`study run` compares them before any unit starts"
            )
    return out


def check_resolved_pairs(spec: StudySpec) -> dict[str, int]:
    """After the hosts are resolved (built or fetched): compare every pair's shapes and check
    every layer map against the depths. Returns each host's depth (layers, as maps count)."""
    from peftport.hostlimits import max_length_problem
    from peftport.hosts import get_host, host_folder

    configs: dict[str, tuple[str, dict]] = {}
    for h in spec.hosts:
        folder = host_folder(get_host(h))
        cfg = json.loads((folder / "config.json").read_text())
        configs[h] = (get_host(h).family or cfg.get("model_type", ""), cfg)
    problems = []
    for t in spec.techniques:
        for values, hosts in (
            (t.pre, {o for o, _ in spec.pairs}),
            (t.post, {r for _, r in spec.pairs}),
        ):
            ml = values.get("max_length")
            for h in sorted(hosts):
                p = max_length_problem(h, configs[h][1], ml) if ml is not None else None
                if p:
                    problems.append(f"{spec.source}: technique {t.name}: {p}")
    for o, r in spec.pairs:
        pm = spec.layer_map(o, r)
        p = pair_problem(
            o, configs[o][0], configs[o][1], r, configs[r][0], configs[r][1], mapped=pm is not None
        ) or map_problem(o, r, configs[o][0], configs[o][1], configs[r][1], pm)
        if p:
            problems.append(f"{spec.where(o, r)}: {p}")
    if problems:
        raise StudyFileError(
            problems[0]
            if len(problems) == 1
            else f"{len(problems)} problems in {spec.source}:\n  - " + "\n  - ".join(problems)
        )
    return {h: host_layers(fam, cfg) or 0 for h, (fam, cfg) in configs.items()}
