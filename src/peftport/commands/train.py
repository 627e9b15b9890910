"""`peftport train`, `adapt` and `evaluate`: one run each, with a progress bar and a summary."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from peftport.errors import PeftportError


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


def _config(
    steps, eval_at, lr, batch_size, max_length, seed, threads, bf16, max_eval, split, horizon=None
):
    from peftport.engine import TrainConfig

    if steps <= 0:
        raise PeftportError(f"--steps must be positive, got {steps}")
    return TrainConfig(
        steps=steps,
        lr=lr,
        batch_size=batch_size,
        max_length=max_length,
        seed=seed,
        eval_at=parse_steps(eval_at) or (steps,),
        threads=threads,
        bf16=bf16,
        max_eval_examples=max_eval,
        eval_split=split,
        horizon=horizon,
    )


def _finish(out, as_json: bool, title: str, out_dir: Path | None) -> None:
    from peftport.module import save_module

    path = save_module(out_dir, out.tensors, out.meta) if out_dir else None
    summary = {
        "metrics": out.meta["metrics"],
        "module": str(path) if path else None,
        "seconds": round(out.result.seconds, 2),
        "train_examples_per_second": round(out.result.examples_per_second, 1),
        "trainable_parameters": out.meta["trainable"],
    }
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    Console().print(_metrics_table(title, out.meta["metrics"]))
    Console().print(
        f"{out.meta['trainable']:,} trainable parameters; "
        f"{out.result.seconds:.1f} s, {out.result.examples_per_second:.1f} "
        "training examples/s" + (f"; module saved to {path}" if path else "")
    )


def register(app: typer.Typer) -> None:
    common = dict(
        lr=typer.Option(1e-3, help="Peak learning rate (AdamW, warmup then linear decay)."),
        batch_size=typer.Option(16, help="Training batch size."),
        max_length=typer.Option(64, help="Maximum tokens per example."),
        seed=typer.Option(0, help="Seed for initialisation, data order and dropout."),
        threads=typer.Option(None, help="Torch threads (default: torch's choice)."),
        bf16=typer.Option(False, help="bfloat16 autocast on CPU (faster; see docs)."),
        max_eval=typer.Option(None, "--max-eval", help="Evaluate on the first N examples."),
        split=typer.Option("test", help="Split to evaluate on: test or validation."),
    )

    @app.command()
    def train(
        host: str = typer.Option(..., help="Host id, local folder or hub id."),
        technique: str = typer.Option(..., help="PEFT technique (see `peftport techniques`)."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        steps: int = typer.Option(..., help="Training steps."),
        eval_at: str = typer.Option(
            "", help="Checkpoint steps to evaluate, e.g. 0,100,300 (default: the last step)."
        ),
        out: Path = typer.Option(None, help="Folder to save the trained module in."),
        config: str = typer.Option("", help="Technique settings as JSON, e.g. '{\"r\": 16}'."),
        lr: float = common["lr"],
        batch_size: int = common["batch_size"],
        max_length: int = common["max_length"],
        seed: int = common["seed"],
        threads: int = common["threads"],
        bf16: bool = common["bf16"],
        max_eval: int = common["max_eval"],
        split: str = common["split"],
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Train a fresh PEFT module on a host and evaluate it at checkpoints."""
        from peftport.runs import train_run

        tech_cfg = _parse_config(config)
        cfg = _config(
            steps, eval_at, lr, batch_size, max_length, seed, threads, bf16, max_eval, split
        )
        res = train_run(host, technique, data, cfg, technique_config=tech_cfg, progress=not as_json)
        _finish(res, as_json, f"{technique} on {host}, {data}", out)

    @app.command()
    def adapt(
        module: Path = typer.Argument(..., help="Module folder (from train or port)."),
        host: str = typer.Option(..., help="Receiving host."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        steps: int = typer.Option(..., help="Post-porting training steps."),
        eval_at: str = typer.Option("0", help="Checkpoints, e.g. 0,100,300 (0 = zero-shot)."),
        out: Path = typer.Option(None, help="Folder to save the adapted module in."),
        lr: float = common["lr"],
        batch_size: int = common["batch_size"],
        max_length: int = common["max_length"],
        seed: int = common["seed"],
        threads: int = common["threads"],
        bf16: bool = common["bf16"],
        max_eval: int = common["max_eval"],
        split: str = common["split"],
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Adapt a ported (or sampled, or random) module on its receiving host for a few steps."""
        from peftport.runs import adapt_run

        cfg = _config(
            steps, eval_at, lr, batch_size, max_length, seed, threads, bf16, max_eval, split
        )
        res = adapt_run(module, host, data, cfg, progress=not as_json)
        _finish(res, as_json, f"adapting {module} on {host}, {data}", out)

    @app.command()
    def evaluate(
        module: Path = typer.Argument(..., help="Module folder."),
        host: str = typer.Option(..., help="Host to evaluate the module in."),
        data: str = typer.Option(..., help="Data set id or a CSV/JSONL file."),
        max_length: int = common["max_length"],
        max_eval: int = common["max_eval"],
        split: str = common["split"],
        as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    ) -> None:
        """Evaluate a module in a host: accuracy, macro-F1, ROC-AUC."""
        from peftport.runs import evaluate_run

        m = evaluate_run(
            module, host, data, split=split, max_examples=max_eval, max_length=max_length
        )
        if as_json:
            typer.echo(json.dumps(m, indent=2))
        else:
            Console().print(_metrics_table(f"{module} in {host}, {data} ({split})", {0: m}))


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
