"""Config fields described once: a field's description gives its checks, its study-file checks
and its command-line option, so a new field needs no other edit."""

from dataclasses import dataclass

import pytest
import typer
from typer.testing import CliRunner

from peftport.configfields import by_key, check_bounds, describe, setting, typer_options
from peftport.errors import PeftportError
from peftport.study.source import Source
from peftport.study.validate import Problems, config_section


@dataclass(frozen=True)
class Knobs:
    steps: int = setting(help="Steps.", ge=0)
    lr: float = setting(0.5, help="Rate.", gt=0, lt=1)
    split: str = setting("test", help="Split.", choices=("train", "test"), flags=("--sp",))
    limit: int | None = setting(None, help="Limit.", gt=0)
    parent: str = setting("a", help="Parent.", key="from")
    fast: bool = setting(False, help="Go fast.")
    cache: int = setting(2, help="Internal.", internal=True)

    def __post_init__(self) -> None:
        check_bounds(self, prefix="knobs: ")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"steps": -1}, "knobs: steps must be >= 0, got -1"),
        ({"steps": 1, "lr": 1.0}, "knobs: lr must be in (0, 1), got 1.0"),
        ({"steps": 1, "split": "dev"}, "knobs: split must be one of train, test, got 'dev'"),
        ({"steps": 1, "limit": 0}, "knobs: limit must be positive, got 0"),
    ],
)
def test_bounds_come_from_the_description(kwargs, message):
    with pytest.raises(PeftportError) as e:
        Knobs(**kwargs)
    assert str(e.value) == message
    Knobs(steps=0, limit=None)  # None is no value to bound


def test_describe_types():
    assert describe(int | None) == "a whole number or null"
    assert describe(list[str], {str: "a string"}) == "a list of strings"
    assert describe(float) == "a number"


def _problems(text: str = "") -> Problems:
    return Problems(Source("k.yaml", text, "yaml"))


def test_a_section_is_checked_from_the_description():
    probs = _problems()
    got = config_section(
        Knobs,
        {"lr": 2, "limit": True, "from": "b", "stepz": 1, "cache": 3, "split": "train"},
        ("knobs",),
        probs,
        what="knob",
        prefix="knobs.",
    )
    # `from` sets `parent`; the bad values are left out, reported at their key
    assert {k: v for k, (v, _) in got.items()} == {"parent": "b", "split": "train"}
    msgs = "\n".join(m for _, m in probs.items)
    assert "key 'knobs.lr': knobs.lr must be in (0, 1), got 2.0" in msgs  # 2 held as a float
    assert "knobs.limit must be a whole number or null, got True" in msgs
    assert "unknown knob 'stepz'. Did you mean 'steps'?" in msgs
    assert "unknown knob 'cache'" in msgs  # internal: not a user's setting
    assert "cache" not in by_key(Knobs)
    probs = _problems()
    got = config_section(Knobs, {"lr": 1}, ("k",), probs, what="knob", refused={"lr": "no"})
    assert got == {} and "'lr' cannot be set here: no" in probs.items[0][1]


def test_a_field_is_a_command_line_option():
    app = typer.Typer()
    seen = {}

    @app.command()
    @typer_options(Knobs, overrides={"limit": {"default": 7}})
    def run(
        name: str = typer.Option(...),
        as_json: bool = typer.Option(False, "--json"),
        *,
        settings: dict,
    ) -> None:
        seen.update(settings, name=name, as_json=as_json)

    res = CliRunner().invoke(
        app,
        [
            "--name",
            "x",
            "--steps",
            "3",
            "--lr",
            "0.1",
            "--sp",
            "train",
            "--from",
            "p",
            "--fast",
            "--json",
        ],
    )
    assert res.exit_code == 0, res.output
    assert seen == {
        "name": "x",
        "as_json": True,
        "steps": 3,
        "lr": 0.1,
        "split": "train",
        "limit": 7,
        "parent": "p",
        "fast": True,
    }
    res = CliRunner().invoke(app, ["--name", "x"])
    assert res.exit_code != 0 and "--steps" in res.output  # required: no default
    assert "--cache" not in CliRunner().invoke(app, ["--help"]).output
