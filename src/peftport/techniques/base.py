"""What every technique is made of: a frozen, documented config and a description.

A technique's config is a frozen dataclass whose fields carry their help text
(`field(metadata={"help": ...})`) and whose defaults are the recorded defaults of the study. It
round-trips through JSON (`as_dict` / `from_dict`), checks its own values, checks whether a host
can take it (`check_host`), and maps itself to an AdapterHub `adapters` config (`to_adapters`).
`adapters` is imported lazily, so reading or validating a config never loads it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

from peftport.errors import PeftportError


def doc(default: Any, help: str) -> Any:  # noqa: A002 - "help" is the field's help text
    """A dataclass field with a default and its help text (shown by `peftport techniques`)."""
    return field(default=default, metadata={"help": help})


def _check_value(technique: str, name: str, hint: Any, value: Any) -> Any:
    """Check `value` against a simple annotation; returns it (ints widened to float, lists to
    tuples) or raises a PeftportError naming the field."""
    bad = PeftportError(f"{technique} config: field {name!r} must be {_describe(hint)}, "
                        f"got {value!r}")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            try:
                return _check_value(technique, name, option, value)
            except PeftportError:
                continue
        raise bad
    if hint is type(None):
        if value is None:
            return None
        raise bad
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        (item,) = typing.get_args(hint)[:1]
        return tuple(_check_value(technique, name, item, v) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    return value


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(hint, str(hint))


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config. Subclasses set `technique` and implement `to_adapters`."""

    technique: ClassVar[str] = ""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in fields(self):
            value = _check_value(self.technique, f.name, hints[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        self.validate()

    # -- to override -----------------------------------------------------------------------
    def validate(self) -> None:
        """Check values that types alone do not (ranges, choices); raise PeftportError."""

    def check_host(self, hidden_size: int, host: str = "this host") -> None:
        """Raise PeftportError if a host `hidden_size` wide cannot take this config."""

    def to_adapters(self) -> Any:
        """The AdapterHub `adapters` config object this config stands for."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """JSON-able: tuples become lists. `from_dict(as_dict())` gives an equal config."""
        return {f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
                for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Self:
        """Build from a (partial) mapping; missing fields take their defaults."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PeftportError(f"{cls.technique} config: unknown field(s) {unknown}; "
                                f"known fields: {', '.join(known)}")
        return cls(**data)

    def replace(self, **changes: Any) -> Self:
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise PeftportError(f"{self.technique} config: unknown field(s) {unknown}")
        return dataclasses.replace(self, **changes)

    @classmethod
    def field_help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


@dataclass(frozen=True)
class Technique:
    """A registered technique: its name, its config class and where it comes from."""

    name: str
    config_cls: type[TechniqueConfig]
    summary: str
    reference: str

    def make_config(self, config: Mapping[str, Any] | TechniqueConfig | None = None
                    ) -> TechniqueConfig:
        """None -> the defaults; a mapping -> those fields over the defaults; a config -> itself
        (it must be this technique's)."""
        if config is None:
            return self.config_cls()
        if isinstance(config, TechniqueConfig):
            if not isinstance(config, self.config_cls):
                raise PeftportError(f"technique {self.name!r} takes a "
                                    f"{self.config_cls.__name__}, got {type(config).__name__}")
            return config
        if isinstance(config, Mapping):
            return self.config_cls.from_dict(config)
        raise PeftportError(f"technique {self.name!r}: config must be a mapping or a "
                            f"{self.config_cls.__name__}, got {type(config).__name__}")

    def defaults(self) -> dict[str, Any]:
        return self.config_cls().as_dict()
