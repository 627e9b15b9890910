"""Hosts a study derives itself: `hosts: {NAME: {derive: {from: PARENT, steps: N, ...}}}`.

Checked when the file is read (the keys are `DeriveConfig`'s fields, from their descriptions);
built and installed by `study run` through `peftport.hosts.derive.install_derived_host`, the
function `peftport hosts derive` uses too, so either finds the other's host.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from peftport.errors import PeftportError
from peftport.study.source import Path_
from peftport.study.validate import Problems, check_keys, config_section, host_ok

if TYPE_CHECKING:
    from peftport.study.spec import StudySpec

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
FORM = "{derive: {from: PARENT, steps: N, lr: LR, ...}}"


@dataclass(frozen=True)
class DerivedHost:
    """A host the study derives itself (`hosts: {NAME: {derive: {...}}}`), by the recipe code
    of `peftport hosts derive`, installed as a user-derived host under that name."""

    name: str
    parent: str
    settings: tuple[tuple[str, Any], ...]  # DeriveConfig fields given in the file

    def recipe(self) -> tuple[tuple[str, str], ...]:
        from peftport.hosts import derived_recipe

        return derived_recipe(self.name, self.parent, **dict(self.settings))


def derived_hosts(
    data: dict, probs: Problems, host_cache: dict[str, Any]
) -> tuple[DerivedHost, ...]:
    """`hosts: {NAME: {derive: {from, steps, lr, ...}}}`: checked here, built by `study run`.

    Each becomes a host named NAME (its spec goes into host_cache, so pairs can name it) made by
    the recipe code of `peftport hosts derive`; a parent may be a host declared above it."""
    raw = data.get("hosts")
    if raw is None:
        return ()
    if not isinstance(raw, dict) or not raw:
        probs.add(("hosts",), f"hosts must be a mapping name -> {FORM}, got {raw!r}")
        return ()
    out = []
    for name, body in raw.items():
        d = _derived_host(name, body, ("hosts", str(name)), probs, host_cache)
        if d is not None:
            out.append(d)
    return tuple(out)


def _derived_host(
    name: Any, body: Any, hpath: Path_, probs: Problems, host_cache: dict[str, Any]
) -> DerivedHost | None:
    from peftport.hosts import HOSTS, _derived_home
    from peftport.hosts.derive import DeriveConfig

    if not isinstance(name, str) or not NAME.fullmatch(name):
        probs.add(hpath, f"a host name is letters, digits, '-', '_' or '.', got {name!r}")
        return None
    if name in HOSTS:
        probs.add(
            hpath, f"{name!r} is a built-in host; choose another name for a host the study derives"
        )
        return None
    if not isinstance(body, dict) or "derive" not in body:
        probs.add(hpath, f"a study host is {FORM} (`peftport hosts derive` settings), got {body!r}")
        return None
    check_keys(body, ("derive",), hpath, "host key", probs)
    dpath = hpath + ("derive",)
    raw = body["derive"]
    if not isinstance(raw, dict):
        probs.add(dpath, f"derive must be a mapping with keys {', '.join(_keys())}, got {raw!r}")
        return None
    given = config_section(DeriveConfig, raw, dpath, probs, what="derive key", prefix="derive.")
    keys = _keys()
    ok = all(k in given for k in (keys[k].name for k in raw if k in keys))  # no bad value
    if "from" not in raw:
        probs.add(dpath, "derive needs 'from': the parent host (e.g. from: minilm-l6)")
        return None
    parent = host_ok(raw["from"], dpath + ("from",), probs, host_cache, None)
    if parent is None or not ok:
        return None
    if parent.family != "bert":
        fam = parent.family or "unknown-family"
        probs.add(
            dpath + ("from",),
            f"derive: parent {parent.id!r} is a {fam} host; "
            "masked-LM derivation is implemented for BERT-family hosts",
        )
        return None
    kw = {k: v for k, (v, _) in given.items() if k != "parent"}
    d = DerivedHost(name=name, parent=parent.id, settings=tuple(sorted(kw.items())))
    try:
        recipe = d.recipe()
    except PeftportError as e:  # DeriveConfig's own checks
        bad = next((k for k in kw if re.search(rf"\b{re.escape(k)}\b", str(e))), None)
        probs.add(dpath + ((bad,) if bad else ()), str(e))
        return None
    installed = _derived_home() / name / "peftport-host.json"
    if installed.exists():
        try:
            old = json.loads(installed.read_text()).get("recipe")
        except (OSError, ValueError):
            old = None
        if old != dict(recipe):
            probs.add(
                hpath,
                f"a derived host named {name!r} exists with another recipe "
                f"({installed.parent}); rename the study's host or delete that folder",
            )
            return None
    host_cache[name] = _declared_spec(name, parent, recipe)
    return d


def _keys() -> dict[str, Any]:
    from peftport.configfields import by_key
    from peftport.hosts.derive import DeriveConfig

    return by_key(DeriveConfig)


def _declared_spec(name: str, parent: Any, recipe: tuple[tuple[str, str], ...]) -> Any:
    """The HostSpec of a host the study derives: installed (by `study run`, or by `peftport
    hosts derive` with the same recipe) or still to be built."""
    from peftport.assets import LocalPath
    from peftport.hosts import _build_derived, _derived_home
    from peftport.hosts.spec import Built, HostSpec

    r = dict(recipe)
    return HostSpec(
        id=name,
        family=parent.family,
        parent=parent.id,
        description=f"derived from {parent.id} by the study: masked-LM on "
        f"{r['corpus']}, {r['steps']} steps, lr {r['lr']}, seed {r['seed']}",
        sources=(LocalPath("", str(_derived_home() / name)), Built(recipe, _build_derived)),
    )


def study_host(spec: StudySpec, name: str) -> Any:
    """The HostSpec of a host of the study: one it derives (installed or not), or `get_host`."""
    from peftport.hosts import get_host

    d = next((d for d in spec.derived_hosts if d.name == name), None)
    if d is None:
        return get_host(name)
    return _declared_spec(name, study_host(spec, d.parent), d.recipe())
