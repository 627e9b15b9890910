"""The report's page as data: blocks (notes, tables, figures, ...) in sections, in order.

`peftport.report.render.page` builds a `Page`; the jinja2 templates in templates/ render it as
HTML and Markdown, so both show the same sections in the same order.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

Cell = tuple[str, str]  # (text, css class)


@dataclass
class RenderedFigure:
    stem: str
    title: str
    caption: str
    png: bytes
    svg: bytes
    notes: list[str]
    technique: str = ""


# --- the page: one ordered list of sections ---------------------------------------------------
#
# `page` decides what the report says and in which order; the templates (templates/report.html,
# templates/report.md) only decide how each kind of block looks. So HTML and Markdown cannot
# drift apart: a section added to `page` appears in both, in the same place.


@dataclass(frozen=True)
class Span:
    """A run of a note's text: plain, `code`, `bold` or a `link` to `href`."""

    text: str
    kind: str = ""
    href: str = ""


@dataclass(frozen=True)
class Note:
    spans: tuple[Span, ...]
    kind: ClassVar[str] = "note"


@dataclass(frozen=True)
class TableBlock:
    header: list[str]
    rows: list[list[Cell]]
    kind: ClassVar[str] = "table"


@dataclass(frozen=True)
class CsvLinks:
    names: tuple[str, ...]  # table names: tables/<name>.csv
    kind: ClassVar[str] = "csv"


@dataclass(frozen=True)
class Heading:
    text: str
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Figure:
    figure: RenderedFigure
    notes_label: str  # what its notes are: "Missing results", "Notes"
    kind: ClassVar[str] = "figure"

    @property
    def png_base64(self) -> str:
        return base64.b64encode(self.figure.png).decode("ascii")


@dataclass(frozen=True)
class Details:
    """Blocks folded away under `summary` (HTML), a subsection (Markdown)."""

    summary: str
    blocks: list[Any]
    kind: ClassVar[str] = "details"


@dataclass(frozen=True)
class Bullets:
    items: list[str]
    kind: ClassVar[str] = "bullets"


@dataclass(frozen=True)
class Code:
    summary: str
    text: str
    kind: ClassVar[str] = "code"


Block = Note | TableBlock | CsvLinks | Heading | Figure | Details | Bullets | Code


@dataclass(frozen=True)
class Section:
    id: str  # the HTML anchor
    nav: str  # its entry in the page's contents
    title: str
    blocks: list[Block]


@dataclass(frozen=True)
class Page:
    title: str
    store: str
    metric: str
    generated_at: str
    version: str
    git: list[str]
    complete: bool
    status: str  # one line: what is complete, or how much is missing
    sections: list[Section]


def note(*parts: str | Span) -> Note:
    return Note(tuple(p if isinstance(p, Span) else Span(p) for p in parts))


def notes(texts: Sequence[str]) -> list[Block]:
    return [note(t) for t in texts]
