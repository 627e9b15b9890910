"""The `peftport` command: a thin edge over the library. User mistakes exit 2 with one clear line."""

from __future__ import annotations

import importlib
import os
import sys

# Threads: OpenMP threads that busy-wait (the default "active" policy) spin for their turn; on
# a loaded machine they spin against each other's work, and 2 threads ran LoRA 10x slower than
# 1 (7.6 s against 0.71 s a step; 0.79 s with PASSIVE). Passive threads sleep instead: at most a
# few percent slower on an idle machine, never a collapse. libgomp reads this once, when torch
# loads it, so it is set here, before any command imports torch; a user's own setting wins.
# Worker processes inherit it (docs/engine.md, "Threads").
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import typer

from peftport import __version__
from peftport.errors import PeftportError

app = typer.Typer(
    name="peftport",
    help="Train a PEFT module on one pretrained host, port it into another, and measure what "
    "it still carries against honest controls (sampled and random modules).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Each module adds its commands to `app` with a `register(app)` function.
COMMAND_MODULES = ["hosts", "data", "port", "check", "train", "study", "report", "demo", "interop"]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"peftport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """peftport: portability of parameter-efficient finetuning modules."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"peftport.commands.{_name}").register(app)


def main() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        app()
    except PeftportError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
