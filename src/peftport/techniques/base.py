"""What every technique is made of: a frozen, documented config and a description.

A technique's config is a frozen dataclass whose fields carry their help text
(`field(metadata={"help": ...})`) and whose defaults are the recorded defaults of the study. It
round-trips through JSON (`as_dict` / `from_dict`), checks its own values, checks whether a host
can take it (`check_host`), and maps itself to an AdapterHub `adapters` config (`to_adapters`).
`adapters` is imported lazily, so reading or validating a config never loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, ClassVar, Self

from pydantic import ConfigDict, Strict, TypeAdapter, ValidationError

from peftport.errors import PeftportError
from peftport.hosts.spec import KINDS


def doc(default: Any, help: str) -> Any:  # noqa: A002 - "help" is the field's help text
    """A dataclass field with a default and its help text (shown by `peftport techniques`)."""
    return field(default=default, metadata={"help": help})


def _check_value(technique: str, name: str, hint: Any, value: Any) -> Any:
    """Check `value` against a field's annotation with pydantic; returns it (ints widened to
    float, lists to tuples) or raises a PeftportError naming the field and the expected type."""
    try:
        return _adapter(hint).validate_python(value)
    except ValidationError:
        raise PeftportError(
            f"{technique} config: field {name!r} must be {_describe(hint)}, got {value!r}"
        ) from None


@functools.cache
def _adapter(hint: Any) -> TypeAdapter:
    # Strict: "16" is no integer and True no number (a typo in a study file must not pass as a
    # value); an int stands for a float. Tuple fields alone are lax about their container, since
    # JSON and YAML give lists; their items stay strict.
    return TypeAdapter(_lax_tuples(hint), config=ConfigDict(strict=True))


def _lax_tuples(hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is tuple:
        return Annotated[hint, Strict(False)]
    if origin in (typing.Union, types.UnionType):
        return typing.Union[tuple(_lax_tuples(a) for a in typing.get_args(hint))]  # noqa: UP007
    return hint


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is tuple:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    return {
        bool: "true/false",
        int: "an integer",
        float: "a number",
        str: "a string",
        type(None): "null",
    }.get(hint, str(hint))


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config. Subclasses set `technique` and say how they map to an
    AdapterHub config: `adapters_class` and `adapters_fields` (or override `to_adapters`)."""

    technique: ClassVar[str] = ""
    # The `adapters` config class this config stands for, and the fields passed to it as they
    # are, space-separated; `ours:theirs` where AdapterHub names a field otherwise.
    adapters_class: ClassVar[str] = ""
    adapters_fields: ClassVar[str] = ""

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
        import adapters

        kwargs = dict(self.adapters_extra())
        for item in self.adapters_fields.split():
            ours, _, theirs = item.partition(":")
            kwargs[theirs or ours] = getattr(self, ours)
        return getattr(adapters, self.adapters_class_name())(**kwargs)

    def adapters_class_name(self) -> str:
        """The `adapters` config class (a variant may choose another)."""
        return self.adapters_class

    def adapters_extra(self) -> dict[str, Any]:
        """`adapters` config arguments that are not one field as it is (fixed, or derived)."""
        return {}

    @classmethod
    def from_adapters(cls, c: Mapping[str, Any]) -> dict[str, Any] | None:
        """The inverse of `to_adapters`: the fields of this technique's config that stand for
        the AdapterHub config dict `c`, or None if `c` is another technique's. Importers check
        the answer by mapping it back and comparing."""
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        """JSON-able: tuples become lists. `from_dict(as_dict())` gives an equal config."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> Self:
        """Build from a (partial) mapping; missing fields take their defaults."""
        data = dict(data or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise PeftportError(
                f"{cls.technique} config: unknown field(s) {unknown}; "
                f"known fields: {', '.join(known)}"
            )
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
class Support:
    """Whether a technique works on one host kind, and what is special there."""

    ok: bool
    note: str = ""

    def cell(self) -> str:
        word = "yes" if self.ok else "no"
        return f"{word} ({self.note})" if self.note else word


YES = Support(True)
ATTENTION_MATRICES = ("q", "k", "v")


def attention_targets(targets: tuple[str, ...], default: str) -> dict[str, Any]:
    """AdapterHub's LoRA-family arguments for the attention matrices `targets` (none: off; the
    list must still name one, `default`)."""
    return {"selfattn_lora": bool(targets), "attn_matrices": list(targets) or [default]}


EVERY_KIND: Mapping[str, Support] = types.MappingProxyType(dict.fromkeys(KINDS, YES))


def everywhere(notes: Mapping[str, str]) -> Mapping[str, Support]:
    """Supported on every host kind, with what is special on some (kind -> note)."""
    return types.MappingProxyType({k: Support(True, notes.get(k, "")) for k in KINDS})


# the end of the reason a technique PEFT lacks gives
USE_ADAPTERHUB = "export it as an AdapterHub folder (--format adapterhub)"


@dataclass(frozen=True)
class Technique:
    """A registered technique: its name, its config class, where it comes from, and what the
    rest of peftport asks of it (porting, attach, interop), so that no code outside
    techniques/ tells techniques apart by name.

    - `support`: host kind -> Support, for every kind (the support table of docs/techniques.md);
      by default a plain yes on every kind.
    - `order`: its place in tables and listings (the paper's four first).
    - `layer_mappable`: its layers' tensors are separate, so a layer map may move layers. False
      when one tensor holds every layer's part (prefix tuning's MLP output): then only a map
      that moves no layer applies, and hosts of other depth cannot take the module.
    - `eager_attention`: host kinds on which `attach` switches the host to eager attention.
    - `neutral_fill`: the value that makes its tensors at a site compute the identity (LoRA 0,
      IA3 1); imports fill the sites a foreign folder leaves out with it. None: no such value.
    - `peft_type`: PEFT's name for the same technique (its `peft_type`), if PEFT has one;
      `peft_refused`: why no PEFT folder can compute what this technique computes ("" if one
      can).
    - `adapterhub_hints`: text of a loading error -> a hint appended to it, for known faults
      of AdapterHub's own saved folders.
    """

    config_cls: type[TechniqueConfig]
    summary: str
    reference: str
    order: int
    support: Mapping[str, Support] = field(default_factory=lambda: EVERY_KIND)
    layer_mappable: bool = True
    eager_attention: frozenset[str] = frozenset()
    neutral_fill: float | None = None
    peft_type: str | None = None
    peft_refused: str = ""
    adapterhub_hints: Mapping[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The technique's name: its config's `technique` (said once, there)."""
        return self.config_cls.technique

    def __post_init__(self) -> None:
        # A programming error in a technique file, caught when the registry imports it.
        if set(self.support) != set(KINDS):
            raise ValueError(
                f"technique {self.name!r}: support must name every host kind "
                f"{list(KINDS)}, got {sorted(self.support)}"
            )
        if not set(self.eager_attention) <= set(KINDS):
            raise ValueError(f"technique {self.name!r}: eager_attention names unknown kinds")
        if self.peft_type is None and not self.peft_refused:
            raise ValueError(
                f"technique {self.name!r}: without a peft_type, peft_refused must "
                "say why PEFT cannot take it"
            )

    def supports(self, kind: str) -> bool:
        return self.support[kind].ok

    @property
    def peft_exportable(self) -> bool:
        """PEFT has a faithful counterpart (a codec in peftport.interop converts it)."""
        return self.peft_type is not None and not self.peft_refused

    def make_config(
        self, config: Mapping[str, Any] | TechniqueConfig | None = None
    ) -> TechniqueConfig:
        """None -> the defaults; a mapping -> those fields over the defaults; a config -> itself
        (it must be this technique's)."""
        if config is None:
            return self.config_cls()
        if isinstance(config, TechniqueConfig):
            if not isinstance(config, self.config_cls):
                raise PeftportError(
                    f"technique {self.name!r} takes a "
                    f"{self.config_cls.__name__}, got {type(config).__name__}"
                )
            return config
        if isinstance(config, Mapping):
            return self.config_cls.from_dict(config)
        raise PeftportError(
            f"technique {self.name!r}: config must be a mapping or a "
            f"{self.config_cls.__name__}, got {type(config).__name__}"
        )

    def defaults(self) -> dict[str, Any]:
        return self.config_cls().as_dict()
