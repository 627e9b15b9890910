"""What the driver does with a study's hosts and pairs before any unit starts.

- `install_derived_hosts`: the hosts a study derives (`hosts: {NAME: {derive: {...}}}`) are
  built by the recipe code of `peftport hosts derive` (`peftport.hosts.derived_recipe`, cached
  under a hash of the recipe) and installed as user-derived hosts under
  $PEFTPORT_HOME/hosts/derived/NAME, where `get_host(NAME)` finds them in any process: local
  workers, and Ray workers on nodes that share $PEFTPORT_HOME.
- `prepare_pairs`: every directed pair's host comparison (`peftport.hostcompare.compare_hosts`)
  computed once and stored in the store's `comparisons` table, keyed by a hash of the hosts, their
  weight fingerprints and the settings, so a rerun (or another study) reuses it; every pair's
  layer map resolved (a cka map from the stored comparison) and written to `host_pairs`. The
  resolved maps go into the post units' payloads.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.progress import format_duration
from peftport.study.pairchecks import resolve_pair_map
from peftport.study.spec import StudyFileError, StudySpec


def install_derived_hosts(spec: StudySpec, echo: Callable[[str], None] = print) -> list[Path]:
    """Build (or find cached) and install every host the study derives, in file order (a parent
    declared above its child is installed first). Returns their folders."""
    from peftport.hosts.derive import DerivedHostConflict, install_derived_host
    from peftport.study.spec import study_host

    out = []
    for d in spec.derived_hosts:
        try:
            out.append(install_derived_host(d.name, d.recipe(), study_host(spec, d.parent), echo))
        except DerivedHostConflict as e:
            raise StudyFileError(f"{spec.source}: {e}") from None
    return out


def comparison_key(
    origin: str,
    receiver: str,
    origin_fingerprint: str,
    receiver_fingerprint: str,
    settings: dict[str, Any],
) -> str:
    blob = json.dumps(
        {
            "what": "host comparison",
            "origin": origin,
            "receiver": receiver,
            "origin_fingerprint": origin_fingerprint,
            "receiver_fingerprint": receiver_fingerprint,
            "settings": settings,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def prepare_pairs(
    store: Any,
    spec: StudySpec,
    depths: dict[str, int],
    echo: Callable[[str], None] = print,
    progress: bool = True,
) -> dict[tuple[str, str], list[int] | None]:
    """Comparisons (computed or reused), resolved layer maps, host_pairs rows. Returns the map
    each directed pair's post units port through: None for identity (no map, as before)."""
    from peftport.hostcompare import HostComparison, compare_cached
    from peftport.hosts import host_folder, weights_fingerprint
    from peftport.provenance import package_versions
    from peftport.study.spec import study_host
    from peftport.techniques import TECHNIQUES

    keys: dict[tuple[str, str], str | None] = {o_r: None for o_r in spec.pairs}
    comparisons: dict[tuple[str, str], Any] = {}
    if spec.compare is not None:
        settings = spec.compare.as_dict()
        prints = {h: weights_fingerprint(host_folder(study_host(spec, h))) for h in spec.hosts}
        todo = []
        for o, r in spec.pairs:
            key = comparison_key(o, r, prints[o], prints[r], settings)
            stored = store.comparison(key)
            if stored is None:
                todo.append((o, r, key))
            else:
                keys[(o, r)] = key
                comparisons[(o, r)] = HostComparison.from_dict(stored)
        if spec.pairs:
            echo(
                f"host comparisons: {len(spec.pairs) - len(todo)} of {len(spec.pairs)} "
                f"directed pair(s) in the store already, {len(todo)} to compute "
                f"({settings['texts']} texts of {settings['corpus']}, {settings['max_length']} "
                "tokens)"
            )
        for i, (o, r, key) in enumerate(todo, 1):
            pm = spec.layer_map(o, r)
            echo(f"comparing hosts {o} -> {r} ({i} of {len(todo)})")
            t0 = time.perf_counter()
            try:  # through the cache `hosts compare` shares; the reverse of a pair derived
                comp, how = compare_cached(
                    o, r, spec.compare, progress=progress, fingerprints=(prints[o], prints[r])
                )
            except Exception as e:  # noqa: BLE001 - without a cka map, only the report needs it
                if pm is not None and pm.strategy == "cka":
                    if not isinstance(e, PeftportError):
                        raise
                    raise StudyFileError(
                        f"{spec.where(o, r)}: layer_map cka needs the host "
                        f"comparison of {o} -> {r}, which failed: {e}"
                    ) from None
                echo(
                    f"warning: comparing {o} -> {r} failed ({type(e).__name__}: {e}); its "
                    "host_pairs row gets no comparison"
                )
                continue
            seconds = time.perf_counter() - t0
            store.add_comparison(key, o, r, comp.to_dict(), seconds, package_versions())
            keys[(o, r)] = key
            comparisons[(o, r)] = comp
            why = {
                "cached": ", from the comparison cache",
                "reversed": f", derived from {r} -> {o}",
                "computed": "",
            }[how]
            echo(
                f"  {o} -> {r}: distance {comp.distance():.3f} (1 - mean CKA over the stride "
                f"map), {format_duration(seconds)}{why}"
            )

    rows = []
    payload: dict[tuple[str, str], list[int] | None] = {}
    for o, r in spec.pairs:
        pm = spec.layer_map(o, r)
        try:
            layers = resolve_pair_map(pm, depths[o], depths[r], comparisons.get((o, r)))
        except PeftportError as e:
            raise StudyFileError(f"{spec.where(o, r)}: layer map for {o} -> {r}: {e}") from None
        strategy = pm.strategy if pm is not None else "identity"
        rows.append((o, r, strategy, layers, keys[(o, r)]))
        payload[(o, r)] = None if strategy == "identity" else layers
    moved = [
        f"{o} -> {r} {m}"
        for (o, r), m in payload.items()
        if m is not None and m != list(range(len(m)))
    ]
    if moved and any(not TECHNIQUES.get(t.name).layer_mappable for t in spec.techniques):
        raise StudyFileError(
            f"{spec.source}: prefix tuning keeps the prefixes of all layers in one tensor, so it "
            f"cannot take a layer map that moves layers ({'; '.join(moved)}): leave prefix out of "
            "this study, or port it between hosts of one depth"
        )
    store.set_host_pairs(spec.id, rows)
    for o, r, strategy, layers, _ in rows:
        if strategy != "identity":
            echo(f"layer map {o} -> {r}: {strategy} {layers} (receiver layer -> origin layer)")
    return payload
