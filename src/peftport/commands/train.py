"""`peftport train`, `adapt` and `evaluate`: one run each, with a progress bar and a summary."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from peftport.errors import PeftportError
from peftport.hostlimits import check_max_length


def parse_steps(text: str, what: str = "--eval-at") -> tuple[int, ...]:
    """ "0,100,300" -> (0, 100, 300); a clear error for anything else."""
    if not text.strip():
        return ()
    try:
        steps = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise PeftportError(
            f"{what} takes whole numbers separated by commas, got {text!r}"
        ) from None
    return tuple(sorted(set(steps)))


def _metrics_table(title: str, metrics: dict) -> Table:
    table = Table(title=title)
    for col in ("step", "accuracy", "macro-F1", "ROC-AUC", "majority share", "n"):
        table.add_column(col, justify="right")
    for step, m in sorted(metrics.items(), key=lambda kv: int(kv[0])):
        table.add_row(
            str(step),
            f"{m['accuracy']:.4f}",
            f"{m['macro_f1']:.4f}",
            f"{m['auc']:.4f}",
            f"{m['majority_share']:.3f}",
            str(m["n"]),
        )
    return table


def _config(settings: dict[str, Any], zero_shot: bool = False) -> Any:
    """The TrainConfig of a command's options (`--eval-at` given as text; default: the last
    step, and with `zero_shot` step 0 too)."""
    from peftport.configs import TrainConfig

    steps = settings["steps"]
    if steps <= 0:
        raise PeftportError(f"--steps must be positive, got {steps}")
    default = (0, steps) if zero_shot else (steps,)
    return TrainConfig(**{**settings, "eval_at": parse_steps(settings["eval_at"]) or default})


def _finish(out, as_json: bool, title: str, out_dir: Path | None) -> None:
    from peftport.module import save_module

    path = save_module(out_dir, out.tensors, out.meta) if out_dir else None
    summary = {
        "metrics": out.meta["metrics"],
        "module": str(path) if path else None,
        "seconds": round(out.result.seconds, 2),
        "train_examples_per_second": round(out.result.examples_per_second, 1),
        "trainable_parameters": out.meta["trainable"],
        "placement": out.result.placement,
    }
    if as_json:  # "module": null says it is not kept
        typer.echo(json.dumps(summary, indent=2))
        return
    if path is None:  # trained for its metrics only: say so, not silently
        typer.echo("note: the module is not kept (give --out DIR to save it)", err=True)
    from peftport.progress import format_duration

    Console().print(_metrics_table(title, out.meta["metrics"]))
    Console().print(
        f"{out.meta['trainable']:,} trainable parameters; "
        f"{out.result.placement['device']} ({out.result.placement['precision']}); "
        f"{format_duration(out.result.seconds)}, {out.result.examples_per_second:.1f} "
        "training examples/s" + (f"; module saved to {path}" if path else "")
    )


# The TrainConfig fields as `train` and `adapt` take them; every other field is an option too,
# generated from its description on TrainConfig.
_EVAL_AT = "Checkpoint steps to evaluate, e.g. 0,100,300"
TRAIN_OPTIONS = {
    "eval_at": {"type": str, "default": "", "help": f"{_EVAL_AT} (default: the last step)."},
}
ADAPT_OPTIONS = {
    "steps": {"help": "Post-porting training steps."},
    "eval_at": {
        "type": str,
        "default": "",
        "help": f"{_EVAL_AT} (0 = zero-shot; default: 0 and the last step).",
    },
}
EVALUATE_OPTIONS = (
    "max_length",
    "max_eval_examples",
    "eval_split",
    "device",
    "precision",
    "deterministic",
    "eval_mode",
)


def register(app: typer.Typer) -> None:
    from peftport.configfields import typer_options
    from peftport.configs import TrainConfig

    @app.command()
    @typer_options(TrainConfig, overrides=TRAIN_OPTIONS)
    def train(
        host: str = typer.Option(..., help="Host id, local folder or hub id."),
        technique: str = typer.Option(..., help="PEFT technique (see `peftport techniques`)."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        out: Path = typer.Option(None, help="Folder to save the trained module in."),
        config: str = typer.Option("", help="Technique settings as JSON, e.g. '{\"r\": 16}'."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        *,
        settings: dict[str, Any],
    ) -> None:
        """Train a fresh PEFT module on a host and evaluate it at checkpoints."""
        from peftport.runs import train_run

        tech_cfg = _parse_config(config)
        cfg = _config(settings)
        check_max_length(host, cfg.max_length)
        res = train_run(host, technique, data, cfg, technique_config=tech_cfg, progress=not as_json)
        _finish(res, as_json, f"{technique} on {host}, {data}", out)

    @app.command()
    @typer_options(TrainConfig, overrides=ADAPT_OPTIONS)
    def adapt(
        module: Path = typer.Argument(..., help="Module folder (from train or port)."),
        host: str = typer.Option(..., help="Receiving host."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        out: Path = typer.Option(None, help="Folder to save the adapted module in."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        *,
        settings: dict[str, Any],
    ) -> None:
        """Adapt a ported (or sampled, or random) module on its receiving host for a few steps."""
        from peftport.runs import adapt_run

        cfg = _config(settings, zero_shot=True)
        check_max_length(host, cfg.max_length)
        res = adapt_run(module, host, data, cfg, progress=not as_json)
        _finish(res, as_json, f"adapting {module} on {host}, {data}", out)

    @app.command()
    @typer_options(TrainConfig, only=EVALUATE_OPTIONS)
    def evaluate(
        module: Path = typer.Argument(..., help="Module folder."),
        host: str = typer.Option(..., help="Host to evaluate the module in."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
        predictions: Path = typer.Option(
            None,
            "--predictions",
            help="Also write the per-example predictions (index into "
            "the evaluated split, label, predicted, score margin or scores) to this .csv or "
            ".jsonl file.",
        ),
        *,
        settings: dict[str, Any],
    ) -> None:
        """Evaluate a module in a host: accuracy, macro-F1, ROC-AUC."""
        from peftport.configs import TrainConfig
        from peftport.device import resolve
        from peftport.predictions import FILE_FORMATS
        from peftport.progress import ticker
        from peftport.runs import evaluate_run_with_predictions

        if predictions is not None and predictions.suffix.lower() not in FILE_FORMATS:
            raise PeftportError(
                f"--predictions {predictions}: the file name must end in "
                f"{' or '.join(FILE_FORMATS)} (the format it is written in)"
            )
        TrainConfig(steps=0, **settings)  # the fields' bounds (--max-eval-examples 0, ...)
        check_max_length(host, settings["max_length"])
        placement = resolve(  # a device or precision that cannot work: before any load
            settings["device"], settings["precision"], deterministic=settings["deterministic"]
        )
        split = settings["eval_split"]
        with ticker(f"evaluating {module} in {host}"):  # a line every 30 s in a log
            m, pred = evaluate_run_with_predictions(
                module,
                host,
                data,
                split=split,
                max_examples=settings["max_eval_examples"],
                max_length=settings["max_length"],
                placement=placement,
                eval_mode=settings["eval_mode"],
            )
        if predictions is not None:
            from peftport.atomic import write_text

            write_text(predictions, pred.as_text(FILE_FORMATS[predictions.suffix.lower()]))
        if as_json:
            typer.echo(json.dumps(m, indent=2))
        else:
            title = (
                f"{module} in {host}, {data} ({split}; {placement.device}, {placement.precision})"
            )
            Console().print(_metrics_table(title, {0: m}))


def _parse_config(text: str) -> dict | None:
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise PeftportError(f"--config is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise PeftportError("--config must be a JSON object, e.g. '{\"r\": 16}'")
    return value
