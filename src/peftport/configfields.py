"""Config fields described once, on the dataclass itself.

A config's fields carry their help text, bounds and allowed values in their metadata
(`setting(...)`). From that one description come:

- the dataclass's own range checks (`check_bounds`, called from `__post_init__`),
- a study file's checks of a section that sets the fields (`value_problem`: type, bounds and
  allowed values, used by `peftport.study.validate.config_section`),
- the typer options of the commands that take the fields (`typer_options`).

So a new field is one line on the dataclass: it appears in the CLI and in study files with no
other edit. Types are checked by pydantic in strict mode (a bool is not a number, "3" is not a
whole number), and every message is worded here from the field's description.

    @dataclass(frozen=True)
    class Knobs:
        steps: int = setting(300, help="Training steps.", gt=0)
        split: str = setting("test", help="Split to evaluate on.", choices=("test", "train"))
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import MISSING, dataclass, field
from typing import Any

from peftport.errors import PeftportError


def setting(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002 - the word typer and argparse use
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    choices: tuple[str, ...] | None = None,
    key: str | None = None,
    flags: tuple[str, ...] = (),
    internal: bool = False,
) -> Any:
    """A dataclass field with its description.

    key: the name in files and on the command line when the field's name cannot be it
    (`parent` is `from`); flags: further command-line spellings kept for old scripts;
    internal: set by the code, never by a user (not in the CLI, not in study files)."""
    meta = {
        "help": help,
        "ge": ge,
        "gt": gt,
        "lt": lt,
        "choices": choices,
        "key": key,
        "flags": flags,
        "internal": internal,
    }
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class Setting:
    """One described field of a config dataclass."""

    name: str  # the attribute
    key: str  # its name in study files and (dashed) on the command line
    annotation: Any  # the resolved type
    default: Any  # MISSING when required
    help: str
    ge: float | None = None
    gt: float | None = None
    lt: float | None = None
    choices: tuple[str, ...] | None = None
    flags: tuple[str, ...] = ()
    internal: bool = False

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def bounds(self) -> str:
        """What the bounds ask for, as a message says it ("positive", ">= 2", "in (0, 1)")."""
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.gt is not None and self.lt is not None:
            return f"in ({_num(self.gt)}, {_num(self.lt)})"
        parts = []
        if self.gt is not None:
            parts.append("positive" if self.gt == 0 else f"> {_num(self.gt)}")
        if self.ge is not None:
            parts.append(f">= {_num(self.ge)}")
        if self.lt is not None:
            parts.append(f"< {_num(self.lt)}")
        return " and ".join(parts)

    def bound_problem(self, value: Any) -> str | None:
        """Why `value` (of the right type) is out of bounds, or None."""
        if value is None or isinstance(value, bool):
            return None
        if isinstance(value, int) and abs(value) > _MAX_INT:
            return f"{self.key} must be at most {_MAX_INT} in size (a 64-bit integer), got {value}"
        if self.choices:
            ok = value in self.choices
        else:
            ok = (
                (self.ge is None or value >= self.ge)
                and (self.gt is None or value > self.gt)
                and (self.lt is None or value < self.lt)
            )
        return None if ok else f"{self.key} must be {self.bounds()}, got {value!r}"

    def type_problem(self, value: Any) -> tuple[Any, str | None]:
        """(the value as the field holds it, why its type is wrong or None). A whole number
        given for a float field becomes a float."""
        ok, value = of_type(self.annotation, value)
        return value, None if ok else (
            f"{self.key} must be {describe(self.annotation)}, got {value!r}"
        )

    def value_problem(self, value: Any) -> tuple[Any, str | None]:
        """Type, then bounds: (the value as the field holds it, the problem or None)."""
        value, problem = self.type_problem(value)
        return value, problem or self.bound_problem(value)


# Whole numbers end in SQLite INTEGER columns (64-bit) and in torch/numpy seeds.
_MAX_INT = 2**63 - 1


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


PLAIN: dict[type, str] = {  # for people writing study files
    int: "a whole number",
    float: "a number",
    str: "a string",
    bool: "true or false",
    type(None): "null",
    dict: "a mapping",
    list: "a list",
    tuple: "a list",
}


def describe(annotation: Any, words: Mapping[type, str] | None = None) -> str:
    """`int | None` -> "a whole number or null"; `list[str]` -> "a list of strings"."""
    words = {**PLAIN, **(words or {})}
    if annotation in words:
        return words[annotation]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, _UnionType):
        return " or ".join(describe(a, words) for a in args)
    if origin is typing.Literal:
        return f"one of {', '.join(map(str, args))}"
    if origin in (list, tuple) and args:
        item = describe(args[0], words).split(" ", 1)[-1]
        return f"{words[origin]} of {item}s"
    return words.get(origin, str(annotation))


_UnionType = type(int | None)


def of_type(annotation: Any, value: Any) -> tuple[bool, Any]:
    """(whether `value` is of the type, strictly: no bool for a number, no "3" for 3; the value
    as that type holds it: a whole number for a float becomes a float)."""
    from pydantic import ValidationError

    try:
        return True, _adapter(annotation).validate_python(value)
    except ValidationError:
        return False, value


@functools.cache
def _adapter(annotation: Any) -> Any:
    from pydantic import ConfigDict, TypeAdapter

    return TypeAdapter(annotation, config=ConfigDict(strict=True))


@functools.cache
def settings(cls: type) -> dict[str, Setting]:
    """The described fields of a config dataclass, by attribute name, in field order."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        m = f.metadata
        if "help" not in m:
            raise TypeError(
                f"{cls.__name__}.{f.name} has no description: declare it with setting(...)"
            )
        default = f.default if f.default_factory is MISSING else f.default_factory()
        described = {k: m[k] for k in ("help", "ge", "gt", "lt", "choices", "flags", "internal")}
        out[f.name] = Setting(
            name=f.name,
            key=m["key"] or f.name,
            annotation=hints[f.name],
            default=default,
            **described,
        )
    return out


def by_key(cls: type) -> dict[str, Setting]:
    """The settings a user may give (study files, CLI), by their key."""
    return {s.key: s for s in settings(cls).values() if not s.internal}


def check_bounds(obj: Any, prefix: str = "") -> None:
    """Raise PeftportError for the first field of `obj` out of its bounds (for __post_init__)."""
    for s in settings(type(obj)).values():
        problem = s.bound_problem(getattr(obj, s.name))
        if problem:
            raise PeftportError(prefix + problem)


# --- command-line options -----------------------------------------------------------------


def typer_options(
    cls: type,
    only: Iterable[str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator: the command gains one typer option per user setting of `cls` (or those
    named in `only`), placed before its `as_json` parameter if it has one, and receives them
    together as its `settings` parameter (a dict by attribute name).

    overrides: per attribute, any of default, help, type (the option's type when the field's
    cannot be typed on a command line, e.g. a tuple given as "0,100,300")."""
    import typer

    chosen = [
        s for s in settings(cls).values() if not s.internal and (only is None or s.name in only)
    ]
    overrides = overrides or {}

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "settings"
        ]
        made = []
        for s in chosen:
            o = overrides.get(s.name, {})
            default = o.get("default", ... if s.required else s.default)
            flag = f"--{s.key.replace('_', '-')}"
            if s.annotation is bool:  # an on/off switch, as typer makes one by default
                flag += f"/--no-{s.key.replace('_', '-')}"
            text = o.get("help", s.help)
            if s.choices:
                text = f"{text.rstrip('.')}: {', '.join(s.choices)}."
            option = typer.Option(default, flag, *s.flags, help=text)
            made.append(
                inspect.Parameter(
                    s.name,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD,
                    default=option,
                    annotation=o.get("type", s.annotation),
                )
            )
        at = next((i for i, p in enumerate(own) if p.name == "as_json"), len(own))
        params = own[:at] + made + own[at:]

        @functools.wraps(func)
        def command(**kw: Any) -> Any:
            given = {s.name: kw.pop(s.name) for s in chosen}
            return func(**kw, settings=given)

        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params}
        return command

    return decorate
