"""The settings a user gives on the command line and in study files: one training run's
(`TrainConfig`) and a host comparison's (`CompareSettings`). Each field's description (help,
bounds, allowed values: `peftport.configfields.setting`) is the one source of the command's
options and of the study file's checks. Kept apart from the engine and `hostcompare` so that the
command line can describe its options without importing torch or numpy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from peftport.configfields import check_bounds, setting
from peftport.device import PRECISIONS, name_problem
from peftport.errors import PeftportError


@dataclass(frozen=True)
class TrainConfig:
    """One run's settings. Each field's description (help, bounds) is the one source of the
    CLI options of `peftport train/adapt/evaluate` and of a study file's training settings."""

    steps: int = setting(help="Training steps.", ge=0)  # optimizer steps to run
    # a pilot reached 0.81 on minilm-l6 + Rotten Tomatoes at 1e-3
    lr: float = setting(1e-3, help="Peak learning rate (AdamW, warmup then linear decay).", gt=0)
    batch_size: int = setting(16, help="Training batch size.", gt=0)
    eval_batch_size: int = setting(64, help="Evaluation batch size.", gt=0)
    # 128 tokens halves the speed on CPU
    max_length: int = setting(64, help="Maximum tokens per example.", gt=0)
    warmup_ratio: float = setting(
        0.06, help="Share of the schedule's horizon spent warming up linearly.", ge=0
    )
    horizon: int | None = setting(
        None, help="Schedule length in steps (default: the run's last step)."
    )
    weight_decay: float = setting(0.0, help="AdamW weight decay.", ge=0)
    max_grad_norm: float = setting(1.0, help="Gradient clipping norm (0: no clipping).", ge=0)
    seed: int = setting(0, help="Seed for initialisation, data order and dropout.")
    eval_at: tuple[int, ...] = setting((), help="Checkpoint steps to evaluate (0 = zero-shot).")
    eval_split: str = setting(
        "test",
        help="Split to evaluate on.",
        choices=("train", "validation", "test"),
        flags=("--split",),
    )
    max_eval_examples: int | None = setting(
        None,
        help="Evaluate on the first N examples (a seeded sample).",
        gt=0,
        flags=("--max-eval",),
    )
    threads: int | None = setting(None, help="Torch threads (default: torch's choice).", gt=0)
    bf16: bool = setting(False, help="bfloat16 autocast (the older spelling of --precision bf16).")
    device: str = setting(
        "auto", help="Device: auto (CUDA, else MPS, else CPU), cpu, cuda, cuda:N or mps."
    )
    precision: str = setting(
        "auto",
        help="Precision (auto: bf16 autocast on a CUDA GPU or CPU with native bf16, else fp32)",
        choices=PRECISIONS,
    )
    deterministic: bool = setting(
        False, help="No TF32 matmuls and deterministic cuDNN on CUDA (no effect on CPU)."
    )
    eval_mode: str = setting(
        "rank",
        help="Evaluation of text-to-text hosts: rank the label words, or generate the answer "
        "greedily (one that is no label word counts wrong).",
        choices=("rank", "generate"),
    )

    def __post_init__(self) -> None:
        check_bounds(self)
        problem = name_problem(self.device)
        if problem:
            raise PeftportError(problem)
        bad = [s for s in self.eval_at if s < 0 or s > self.steps]
        if bad:
            raise PeftportError(f"eval step(s) {bad} outside the run (0..{self.steps} steps)")
        if self.horizon is not None and self.horizon < self.steps:
            raise PeftportError(f"horizon {self.horizon} is shorter than the run ({self.steps})")

    def lr_at(self, step: int) -> float:
        """Learning rate for optimizer step `step` (0-based)."""
        horizon = self.horizon or self.steps
        warm = max(1, round(self.warmup_ratio * horizon))
        if step < warm:
            return self.lr * (step + 1) / warm
        return self.lr * max(0.0, (horizon - step) / max(1, horizon - warm))


@dataclass(frozen=True)
class CompareSettings:
    """How the driver compares the hosts of every directed pair (`peftport.hostcompare`)."""

    texts: int = setting(256, help="Texts sampled from the corpus.", ge=2)
    corpus: str = setting("rt_plots", help="Unlabelled text corpus.")
    max_length: int = setting(64, help="Maximum tokens per text.", ge=4)
    seed: int = setting(0, help="Seed of the text sample.", ge=0)

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("corpus", "texts", "max_length", "seed")}
