"""A study file's text, parsed, with where each key sits in it (for messages that name the
line): YAML keeps positions (a walk of its node tree records each key's line and any key given
twice); TOML keeps none, so the line that names a key is found by a search."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.reader import ReaderError

from peftport.errors import PeftportError


class StudyFileError(PeftportError):
    """One or more problems in a study file; the message lists each with its line and key."""


# Bounds on what a study file may ask of the parser. The presets are a few kB and a few hundred
# nodes; these are generous for any hand-written study and stop hostile files early: an alias
# bomb (9 levels of 9 aliases: 387 M nodes from 350 bytes) or a deep flow sequence ([[[[...)
# that would exhaust memory or Python's recursion limit.
MAX_STUDY_BYTES = 1_000_000
MAX_NODES = 100_000  # scalars, lists and mappings, aliases counted at their expanded size
MAX_DEPTH = 64  # nested lists and mappings


class _Loader(yaml.SafeLoader):
    """A SafeLoader that bounds the document while composing it (node count with aliases
    expanded, nesting depth, no alias to a node that contains it).

    YAML 1.1 reads `1e-3` as a string; learning rates are written that way, so read it as a
    float (a number with an exponent and no dot)."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._nodes = 0
        self._depth = 0
        self._sizes: dict[int, int] = {}  # id(node) -> its expanded size, once composed

    def _refuse(self, mark: Any, problem: str) -> None:
        raise ComposerError(None, None, problem, mark)

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._sizes.get(id(target))
                if size is None:  # the anchor's node is still being composed: a cycle
                    self._refuse(
                        event.start_mark, f"alias *{event.anchor} refers to a node that contains it"
                    )
                self._count(size, event.start_mark)
            return super().compose_node(parent, index)
        mark = self.peek_event().start_mark
        self._depth += 1
        if self._depth > MAX_DEPTH:
            self._refuse(mark, f"nested more than {MAX_DEPTH} levels deep")
        before = self._nodes
        self._count(1, mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._sizes[id(node)] = self._nodes - before
        return node

    def _count(self, n: int, mark: Any) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            self._refuse(
                mark,
                f"the document expands to more than {MAX_NODES:,} values "
                "(aliases counted at their expanded size)",
            )


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


def decode(raw: bytes, name: str) -> str:
    """A study file's bytes -> text: bounded in size, UTF-8 (the line of the first bad byte)."""
    if len(raw) > MAX_STUDY_BYTES:
        raise StudyFileError(
            f"{name}: {len(raw):,} bytes; a study file is at most {MAX_STUDY_BYTES:,} bytes"
        )
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise StudyFileError(
            f"{name}, line {line}: not UTF-8 text (byte 0x{raw[e.start]:02x} "
            f"at offset {e.start}); save the file as UTF-8"
        ) from None


def parse_text(text: str, name: str, fmt: str, base: Path | None = None) -> tuple[Any, Source]:
    """Parse a study file's text once (YAML: compose the bounded node tree, then construct
    from it), and record where each key sits."""
    if len(text) > MAX_STUDY_BYTES:
        raise StudyFileError(
            f"{name}: {len(text):,} characters; a study file is at most {MAX_STUDY_BYTES:,} bytes"
        )
    src = Source(name, text, fmt, base)
    if fmt == "toml":
        try:
            return tomllib.loads(text), src
        except tomllib.TOMLDecodeError as e:
            raise StudyFileError(f"{name}: not valid TOML: {e}") from None
        except (RecursionError, ValueError) as e:  # deep nesting; a number of 5000 digits
            raise StudyFileError(f"{name}: not a usable TOML file: {_short(e)}") from None
    loader = None
    try:
        loader = _Loader(text)  # checks every character first (ReaderError)
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except ReaderError as e:  # a character YAML does not allow (binary data, say)
        line = text[: e.position].count("\n") + 1
        raise StudyFileError(
            f"{name}, line {line}: not valid YAML: character "
            f"{e.character!r} is not allowed (is this a text file?)"
        ) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f", line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e)
        raise StudyFileError(f"{name}{at}: not valid YAML: {problem}") from None
    except (RecursionError, ValueError) as e:  # a number of 5000 digits (int() refuses it)
        raise StudyFileError(f"{name}: not a usable YAML file: {_short(e)}") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is not None:
        _walk_yaml(node, (), src)
    return data, src


def _short(e: BaseException) -> str:
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text[:200]
