"""The generic checks of a study file: problems collected with their line and key, unknown keys
with "did you mean", lists of whole numbers, sections that set a config's fields (checked from
the fields' own descriptions, `peftport.configfields`), and names of hosts and data sets.

Every check adds to a `Problems` and goes on, so one error lists everything wrong in the file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from peftport.configfields import by_key
from peftport.errors import PeftportError
from peftport.study.source import Path_, Source, StudyFileError


class Problems:
    """The problems found in one study file, each at the line of the key it is about."""

    def __init__(self, src: Source) -> None:
        self.src = src
        self.items: list[tuple[int, str]] = []

    def add(self, path: Path_, message: str) -> None:
        line = self.src.line(path) or 0
        item = (line, f"{self.src.where(path)}: {message}")
        if item not in self.items:  # a study-level setting is checked once per technique
            self.items.append(item)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        msgs = [m for _, m in sorted(self.items, key=lambda x: x[0])]
        if len(msgs) == 1:
            raise StudyFileError(msgs[0])
        raise StudyFileError(
            f"{len(msgs)} problems in {self.src.name}:\n  - " + "\n  - ".join(msgs)
        )


def did_you_mean(name: str, known: Iterable[str]) -> str:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=2, cutoff=0.6)
    initials = "".join(w[:1] for w in name.split("_"))  # learning_rate -> lr
    if not close and "_" in name and initials in known:
        close = [initials]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return f"{hint} Known keys: {', '.join(known)}."


def check_keys(obj: dict, allowed: Iterable[str], path: Path_, what: str, probs: Problems) -> None:
    allowed = tuple(allowed)
    for key in obj:
        if key not in allowed:
            probs.add(
                path + (str(key),),
                f"unknown {what} {key!r}." + did_you_mean(str(key), allowed),
            )


# Seeds and step counts are stored in SQLite INTEGER columns (signed 64 bits) and seed numpy
# and torch generators: a larger whole number is refused at its line, not by the store.
MAX_INT = 2**63 - 1


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def int_list(
    raw: Any,
    path: Path_,
    probs: Problems,
    *,
    minimum: int,
    what: str,
    allow_zero_drop: bool = False,
) -> tuple[int, ...]:
    """A non-empty list of distinct whole numbers >= minimum, sorted (0s dropped if asked)."""
    if not isinstance(raw, list) or not raw:
        probs.add(path, f"{what} must be a non-empty list of whole numbers, got {raw!r}")
        return ()
    out: list[int] = []
    for i, v in enumerate(raw):
        if not is_int(v):
            probs.add(path + (i,), f"{what} must be whole numbers, got {v!r}")
        elif v < minimum:
            probs.add(path + (i,), f"{what} must be >= {minimum}, got {v}")
        elif v > MAX_INT:
            probs.add(path + (i,), f"{what} must be at most {MAX_INT} (a 64-bit integer), got {v}")
        elif v in out:
            probs.add(path + (i,), f"{v} is listed twice")
        else:
            out.append(v)
    if allow_zero_drop:
        out = [v for v in out if v != 0]
    return tuple(sorted(out))


def config_section(
    cls: type,
    raw: Mapping[str, Any],
    path: Path_,
    probs: Problems,
    *,
    what: str,
    prefix: str = "",
    refused: Mapping[str, str] | None = None,
) -> dict[str, tuple[Any, Path_]]:
    """A mapping that sets fields of the config dataclass `cls`, by their keys ->
    {field name: (value, path)} of the good ones. Reported at their key: unknown keys (with
    "did you mean"), `refused` keys (key -> why they cannot be set here), wrong types and values
    out of the field's bounds (messages start with `prefix`, e.g. "compare.")."""
    refused = refused or {}
    known = {k: s for k, s in by_key(cls).items() if k not in refused}
    out: dict[str, tuple[Any, Path_]] = {}
    for key, value in raw.items():
        p = path + (str(key),)
        if key in refused:
            probs.add(p, f"{key!r} cannot be set here: {refused[key]}")
        elif key not in known:
            probs.add(p, f"unknown {what} {key!r}." + did_you_mean(str(key), known))
        else:
            value, problem = known[key].value_problem(value)
            if problem:
                probs.add(p, prefix + problem)
            else:
                out[known[key].name] = (value, p)
    return out


def local_path(name: str, base: Path | None) -> str:
    """A relative path in a study file is relative to the file's folder."""
    if base is None or Path(name).is_absolute() or not (base / name).exists():
        return name
    return str((base / name).resolve())


HOST_EXPECTED = "a host must be a host id, a checkpoint folder or a hub id"
DATA_EXPECTED = "a data set id or a CSV/JSONL file"


def host_ok(name: Any, path: Path_, probs: Problems, cache: dict, base: Path | None) -> Any:
    """The HostSpec a study names (cached by name), or None with the problem reported."""
    from peftport.hosts import HOSTS, get_host

    return _named(name, path, probs, cache, base, HOSTS, get_host, HOST_EXPECTED)


def dataset_ok(name: Any, path: Path_, probs: Problems, cache: dict, base: Path | None) -> Any:
    """The data set a study names (cached by name), or None with the problem reported."""
    from peftport.data import DATASETS

    if isinstance(name, str) and name and name not in DATASETS and base is not None:
        p = Path(name).expanduser()
        if p.suffix or "/" in name or (base / p).exists():  # a path, not a mistyped id:
            name = str(base / p)  # relative to the study file, found or not
    return _named(name, path, probs, cache, base, DATASETS, _local_dataset, DATA_EXPECTED)


def _local_dataset(name: str) -> Any:
    """A data set id as `get_dataset` takes it; a local file is read now (columns, labels, at
    least two classes: `peftport.data.check_local_file`), so a bad file is refused at plan
    time with the study file's line rather than by every unit that uses it."""
    from peftport.data import DATASETS, check_local_file, get_dataset

    spec = get_dataset(name)
    if name not in DATASETS:
        check_local_file(spec)
    return spec


def _named(
    name: Any,
    path: Path_,
    probs: Problems,
    cache: dict,
    base: Path | None,
    registry: Any,
    get: Any,
    form: str,
) -> Any:
    """A registered id, else a path relative to the study file (local_path) given to `get`."""
    if not isinstance(name, str) or not name:
        probs.add(path, f"{form}, got {name!r}")
        return None
    if name not in cache:
        try:
            cache[name] = get(name if name in registry else local_path(name, base))
        except PeftportError as e:
            probs.add(path, str(e))
            cache[name] = None
    return cache[name]


def read_data(data: dict, src: Source, probs: Problems) -> list[tuple[str, str]]:
    """The `data` axis: (pre-porting, post-porting) data set ids, each pair with one label set."""
    data_combos: list[tuple[str, str]] = []
    raw_d = data.get("data")
    if "data" in data and (not isinstance(raw_d, list) or not raw_d):
        probs.add(
            ("data",), f"data must be a non-empty list of [pre, post] data sets, got {raw_d!r}"
        )
        raw_d = []
    ds_cache: dict[str, Any] = {}
    for i, d in enumerate(raw_d or []):
        dpath: Path_ = ("data", i)
        if isinstance(d, str):
            combo, paths = (d, d), (dpath, dpath)
        elif isinstance(d, list) and len(d) == 2:
            combo, paths = (d[0], d[1]), (dpath + (0,), dpath + (1,))
        elif isinstance(d, dict):
            check_keys(d, ("pre", "post"), dpath, "data key", probs)
            combo, paths = (d.get("pre"), d.get("post")), (dpath + ("pre",), dpath + ("post",))
        else:
            probs.add(
                dpath,
                f"a data combination is [pre, post], {{pre: ..., post: ...}} or one "
                f"data set for both, got {d!r}",
            )
            continue
        specs = [
            dataset_ok(n, p, probs, ds_cache, src.base) for n, p in zip(combo, paths, strict=True)
        ]
        if None in specs:
            continue
        combo = (specs[0].id, specs[1].id)  # local files: their absolute path
        if tuple(specs[0].label_words) != tuple(specs[1].label_words):
            probs.add(
                dpath,
                f"{combo[0]!r} has labels {list(specs[0].label_words)} and "
                f"{combo[1]!r} has {list(specs[1].label_words)}: a module trained on one "
                "cannot be evaluated on the other",
            )
            continue
        if combo in data_combos:
            probs.add(dpath, f"data combination {combo[0]} -> {combo[1]} is listed twice")
            continue
        data_combos.append(combo)  # type: ignore[arg-type]

    return data_combos
