"""The training and evaluation engine: one plain loop, read top to bottom.

Only the module (and, on encoder classifiers, the head) is trainable. AdamW, linear warmup then
linear decay over a fixed horizon, gradient clipping, one seed for everything. The model is
evaluated at a list of checkpoint steps inside ONE run; step 0 is zero-shot. The schedule's
horizon is a config field (default: the run's last step), so a run evaluated at 500, 1500 and
3000 gives at 500 exactly what a run stopped at 500 with the same horizon gives.

Devices (`peftport.device`): the model, the module and every batch live on the run's device;
evaluation runs there too, and scores come back to the host once per evaluation. The loss is
brought back every step on CPU (the logs are what they always were) and every
`device.LOSS_EVERY` steps on a GPU (one sync, not one per step). On CPU in fp32 the numbers are
bit-identical to the engine before devices existed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from peftport import tasks
from peftport.configs import TrainConfig
from peftport.device import Placement, resolve, resolve_config
from peftport.errors import PeftportError
from peftport.predictions import Predictions


@dataclass
class TrainResult:
    metrics: dict[int, dict[str, float]]  # checkpoint step -> metrics
    steps: int
    seconds: float
    train_seconds: float
    examples_per_second: float
    losses: list[float] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    placement: dict = field(default_factory=dict)  # device, precision, GPU name (provenance)
    # checkpoint step -> the evaluation's per-example record (peftport.predictions)
    predictions: dict[int, Predictions] = field(default_factory=dict)


def batches(lengths: list[int], batch_size: int, seed: int) -> Iterator[list[int]]:
    """Endless length-bucketed batches: shuffle, sort within pools of 50 batches, shuffle batches.

    Rows of similar length share a batch (less padding) while the order stays random.
    """
    gen = torch.Generator().manual_seed(seed)
    pool = batch_size * 50
    while True:
        order = torch.randperm(len(lengths), generator=gen).tolist()
        chunk: list[list[int]] = []
        for start in range(0, len(order), pool):
            part = sorted(order[start : start + pool], key=lambda i: lengths[i])
            chunk += [part[j : j + batch_size] for j in range(0, len(part), batch_size)]
        chunk = [b for b in chunk if len(b) == batch_size] or chunk  # no ragged tail batch
        for k in torch.randperm(len(chunk), generator=gen).tolist():
            yield chunk[k]


def _model_device(model) -> str:
    p = next(model.parameters(), None)
    return str(p.device) if p is not None else "cpu"


def evaluate(model, kind: str, enc: tasks.Encoded, *args: Any, **kwargs: Any) -> dict[str, float]:
    """Accuracy, macro-F1 and ROC-AUC (binary: on the score margin; else macro one-vs-rest):
    `evaluate_with_predictions`, which takes the same arguments, without the per-example
    record."""
    return evaluate_with_predictions(model, kind, enc, *args, **kwargs)[0]


def evaluate_with_predictions(
    model,
    kind: str,
    enc: tasks.Encoded,
    batch_size: int = 64,
    bf16: bool = False,
    placement: Placement | None = None,
    eval_mode: str = "rank",
) -> tuple[dict[str, float], Predictions]:
    """Accuracy, macro-F1 and ROC-AUC (binary: on the score margin; else macro one-vs-rest),
    and the per-example record they are computed from (labels, predictions, scores; the
    examples' fingerprint is the caller's to add: `Predictions.with_examples`).

    Runs on `placement` (default: where the model is, bf16 autocast if `bf16`).
    eval_mode "generate" (text-to-text): accuracy and macro-F1 of the greedily generated
    answers, one that is no label word counted wrong (`no_label_share` says how many); the AUC
    stays the ranking's margin."""
    from peftport import stats

    if placement is None:
        placement = resolve(_model_device(model), "bf16" if bf16 else "fp32")
    model.to(placement.device)
    # fork_rng covers the CPU generator and, on CUDA, only the run's device
    rng_devices = [torch.device(placement.device).index or 0] if placement.type == "cuda" else None
    was_training = model.training
    model.eval()
    order = sorted(range(len(enc)), key=lambda i: len(enc.input_ids[i]))
    n_labels = len(enc.candidates) if enc.candidates else None
    out: list[torch.Tensor | None] = [None] * len(enc)
    generated = [tasks.NO_LABEL] * len(enc)
    if eval_mode not in ("rank", "generate"):
        raise PeftportError(f"eval_mode must be rank or generate, got {eval_mode!r}")
    if eval_mode == "generate" and kind != tasks.TEXT_TO_TEXT:
        tasks.generated_labels(model, kind, enc, [])  # raises: for text-to-text hosts only
    with torch.random.fork_rng(devices=rng_devices), placement.autocast():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            s = tasks.scores(model, kind, enc, idx)
            for i, row in zip(idx, s, strict=True):
                out[i] = row
            if eval_mode == "generate":
                for i, g in zip(idx, tasks.generated_labels(model, kind, enc, idx), strict=True):
                    generated[i] = g
    model.train(was_training)
    score = torch.stack(out).float().cpu().numpy()  # (N, C): one transfer per evaluation
    n_labels = n_labels or score.shape[1]
    labels = enc.labels
    preds = score.argmax(1)
    if eval_mode == "generate":  # no label word: wrong, as the label after the gold one
        import numpy as np

        preds = np.array(
            [
                g if g != tasks.NO_LABEL else (y + 1) % n_labels
                for g, y in zip(generated, labels, strict=True)
            ]
        )
    m = {
        "accuracy": float(stats.accuracy(labels, preds)),
        "macro_f1": float(stats.macro_f1(labels, preds, n_labels)),
        "auc": float(
            stats.roc_auc(labels, score[:, 1] - score[:, 0])
            if n_labels == 2
            else stats.macro_auc_ovr(labels, score)
        ),
        "n": len(labels),
        "majority_share": float(max((preds == c).mean() for c in range(n_labels))),
    }
    if eval_mode == "generate":
        m["no_label_share"] = generated.count(tasks.NO_LABEL) / len(generated)
    return m, Predictions.from_scores(labels, preds, score)


def train(
    model,
    kind: str,
    train_enc: tasks.Encoded,
    eval_enc: tasks.Encoded | None,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    desc: str = "training",
    on_checkpoint: Callable[[int, dict[str, float] | None], None] | None = None,
    save_at: tuple[int, ...] = (),
    placement: Placement | None = None,
) -> TrainResult:
    """Train the model's trainable parameters for cfg.steps, evaluating at cfg.eval_at.

    `on_checkpoint(step, metrics)` is called at every step in eval_at or save_at (metrics is None
    for a save-only step), after the evaluation: a caller snapshots the module there.
    cfg.threads sets torch's thread count for the training only: the caller's comes back after.
    The model is moved to the run's device (`placement`, default: resolved from cfg) and stays
    there.
    """
    placement = placement or resolve_config(cfg)
    before = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        with placement.backend_flags():
            return _train(
                model,
                kind,
                train_enc,
                eval_enc,
                cfg,
                progress,
                desc,
                on_checkpoint,
                save_at,
                placement,
            )
    finally:
        torch.set_num_threads(before)


def _train(
    model,
    kind: str,
    train_enc: tasks.Encoded,
    eval_enc: tasks.Encoded | None,
    cfg: TrainConfig,
    progress: bool,
    desc: str,
    on_checkpoint: Callable[[int, dict[str, float] | None], None] | None,
    save_at: tuple[int, ...],
    placement: Placement,
) -> TrainResult:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise PeftportError("nothing to train: the model has no trainable parameters")
    if len(train_enc) < cfg.batch_size and cfg.steps > 0:
        raise PeftportError(
            f"the training split has {len(train_enc)} examples, fewer than one "
            f"batch of {cfg.batch_size}"
        )
    if cfg.eval_at and eval_enc is None:
        raise PeftportError("eval_at given but no evaluation data")
    model.to(placement.device)  # before the optimizer, which keeps its state by parameter
    torch.manual_seed(cfg.seed)  # dropout (seeds every CUDA device too)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scaler = placement.grad_scaler()  # fp16 only
    loss_every = placement.loss_every
    pending: list[torch.Tensor] = []  # losses still on the device (GPU: flushed every k steps)
    checkpoints = sorted(set(cfg.eval_at) | set(save_at))
    metrics: dict[int, dict[str, float]] = {}
    predictions: dict[int, Predictions] = {}
    losses: list[float] = []
    t0 = time.perf_counter()
    eval_seconds = 0.0

    def checkpoint(step: int) -> None:
        nonlocal eval_seconds
        m = None
        if step in cfg.eval_at:
            te = time.perf_counter()
            m, predictions[step] = evaluate_with_predictions(
                model,
                kind,
                eval_enc,
                cfg.eval_batch_size,
                placement=placement,
                eval_mode=cfg.eval_mode,
            )
            eval_seconds += time.perf_counter() - te
            metrics[step] = m
        if on_checkpoint is not None:
            on_checkpoint(step, m)

    if 0 in checkpoints:
        checkpoint(0)
    model.train()
    bar = None
    if progress and cfg.steps > 0:
        from peftport.progress import bar as progress_bar

        bar = progress_bar(total=cfg.steps, desc=desc, unit="step")  # plain lines in a log
    stream = batches(train_enc.lengths(), cfg.batch_size, cfg.seed)
    for step in range(cfg.steps):
        for group in opt.param_groups:
            group["lr"] = cfg.lr_at(step)
        idx = next(stream)
        with placement.autocast():
            loss = tasks.training_loss(model, kind, train_enc, idx)
        if scaler is None:
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()
        else:  # fp16: scale the loss, unscale before clipping, skip steps with inf gradients
            scaler.scale(loss).backward()
            if cfg.max_grad_norm:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            scaler.step(opt)
            scaler.update()
        opt.zero_grad(set_to_none=True)
        if loss_every == 1:
            losses.append(loss.item())
        else:
            pending.append(loss.detach())
            if (step + 1) % loss_every == 0 or step + 1 in checkpoints or step + 1 == cfg.steps:
                losses.extend(torch.stack(pending).float().tolist())  # one host sync
                pending.clear()
        if bar is not None:
            bar.update(1)
            if step % 10 == 0 and losses:
                recent = losses[-20:]
                bar.set_postfix(loss=f"{sum(recent) / len(recent):.3f}")
        if step + 1 in checkpoints:
            checkpoint(step + 1)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    train_seconds = seconds - eval_seconds
    return TrainResult(
        metrics=metrics,
        steps=cfg.steps,
        seconds=seconds,
        train_seconds=train_seconds,
        examples_per_second=cfg.steps * cfg.batch_size / train_seconds if train_seconds else 0.0,
        losses=losses,
        config=asdict(cfg),
        placement=placement.provenance(),
        predictions=predictions,
    )
