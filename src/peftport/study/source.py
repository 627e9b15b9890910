"""A study file's text, parsed, with where each key sits in it (for messages that name the
line): YAML keeps positions (a walk of its node tree records each key's line and any key given
twice); TOML keeps none, so the line that names a key is found by a search."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from peftport.errors import PeftportError


class StudyFileError(PeftportError):
    """One or more problems in a study file; the message lists each with its line and key."""


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; learning rates are written that way, so read it as a
    float (a number with an exponent and no dot)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)

Path_ = tuple[str | int, ...]


def key_name(path: Path_) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


class Source:
    """The text of a study file and where each key sits in it."""

    def __init__(self, name: str, text: str, fmt: str, base: Path | None = None) -> None:
        self.name = name
        self.text = text
        self.fmt = fmt
        self.base = base  # the file's folder: relative paths in it are relative to it
        self.lines: dict[Path_, int] = {}
        self.duplicates: list[tuple[Path_, int, int]] = []

    def line(self, path: Path_) -> int | None:
        for n in range(len(path), 0, -1):  # the key itself, else its nearest parent
            if path[:n] in self.lines:
                return self.lines[path[:n]]
            if self.fmt == "toml":
                found = _toml_line(self.text, path[:n])
                if found:
                    return found
        return None

    def where(self, path: Path_) -> str:
        line = self.line(path)
        at = f", line {line}" if line else ""
        return f"{self.name}{at}, key {key_name(path)!r}" if path else self.name


def _toml_line(text: str, path: Path_) -> int | None:
    """TOML keeps no positions: find the line that names the key (a heuristic for messages)."""
    names = [p for p in path if isinstance(p, str)]
    if not names:
        return None
    key = re.escape(names[-1])
    pattern = re.compile(rf'(^|[\s.\[{{,])"?{key}"?\s*(=|\]|\.)')
    for i, line in enumerate(text.splitlines(), 1):
        if pattern.search(line.split("#", 1)[0]):
            return i
    return None


def _walk_yaml(node: yaml.Node, path: Path_, src: Source) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for knode, vnode in node.value:
            key = knode.value
            line = knode.start_mark.line + 1
            if key in seen:
                src.duplicates.append((path + (key,), seen[key], line))
            seen[key] = line
            src.lines[path + (key,)] = line
            _walk_yaml(vnode, path + (key,), src)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            src.lines[path + (i,)] = item.start_mark.line + 1
            _walk_yaml(item, path + (i,), src)


def parse_text(text: str, name: str, fmt: str, base: Path | None = None) -> tuple[Any, Source]:
    src = Source(name, text, fmt, base)
    if fmt == "toml":
        try:
            return tomllib.loads(text), src
        except tomllib.TOMLDecodeError as e:
            raise StudyFileError(f"{name}: not valid TOML: {e}") from None
    try:
        node = yaml.compose(text, Loader=_Loader)
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyFileError(f"{name}{at}: not valid YAML: {problem}") from None
    if node is not None:
        _walk_yaml(node, (), src)
    return data, src
