"""Runs: a host, a technique and a data set put together with the engine (the edge over the core).

- `train_run`: attach a fresh module to a host, train it (snapshotting it at `save_at` steps),
  return its tensors, metadata, metrics;
- `adapt_run`: load a module into a host, or port it into the host first (`condition`), and
  train it further;
- `evaluate_run`: load a module into a host and evaluate it.
Each checks its inputs (technique, host kind, label words, steps, checkpoints) before any
training starts. The CLI commands and the study's work units both run through these, so a study
and the CLI give the same numbers for the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peftport import tasks
from peftport.data import Dataset, load_dataset
from peftport.device import Placement, resolve, resolve_config
from peftport.engine import TrainConfig, TrainResult, evaluate_with_predictions, train
from peftport.errors import PeftportError
from peftport.hosts import ENCODER_CLASSIFIER, LoadedHost, get_host, load_host
from peftport.predictions import Predictions
from peftport.provenance import git_revision

ModuleLike = str | Path | tuple[dict[str, torch.Tensor], dict[str, Any]]


@dataclass
class RunOutput:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    result: TrainResult
    snapshots: dict[int, dict[str, torch.Tensor]]  # step -> module tensors (save_at steps)
    host: LoadedHost  # the host the module was trained on (its model carries the module)
    attached: Any  # the techniques.Attached of the module


def as_dataset(data: str | Dataset) -> Dataset:
    return data if isinstance(data, Dataset) else load_dataset(data)


def host_for(host: str | LoadedHost, technique: str, data: Dataset) -> LoadedHost:
    """Load `host` (or reuse a loaded one) after checking the technique supports its kind."""
    from peftport.techniques import check_supported, get_technique

    get_technique(technique)  # unknown technique: an error before anything loads
    if isinstance(host, LoadedHost):
        check_supported(technique, host.kind)
        return host
    spec = get_host(host)
    if spec.family:
        check_supported(technique, spec.kind)
    return load_host(spec, num_labels=data.num_labels)


def eval_rows(data: Dataset, cfg: TrainConfig) -> tuple:
    """The examples an evaluation uses: the first cfg.max_eval_examples of the evaluation split
    in its seeded order (all of it without a limit)."""
    rows = data.split(cfg.eval_split)
    return rows[: cfg.max_eval_examples] if cfg.max_eval_examples else rows


def examples_sha256(data: Dataset, cfg: TrainConfig) -> str:
    """The fingerprint of the evaluated examples in order (`Predictions.examples_sha256`)."""
    from peftport.data import fingerprint_examples

    return fingerprint_examples(eval_rows(data, cfg))


def encodings(h: LoadedHost, data: Dataset, cfg: TrainConfig) -> tuple[tasks.Encoded, ...]:
    """The training split and the evaluation split, tokenised once (cached) for this host."""
    framing = tasks.Framing.for_host(h.kind, data.label_words, cfg.max_length)
    eval_rows_ = eval_rows(data, cfg)
    tr = tasks.encode(h.tokenizer, data.split("train"), framing, data.fingerprints["train"])
    ev = tasks.encode(
        h.tokenizer, eval_rows_, framing, f"{data.fingerprints[cfg.eval_split]}:{len(eval_rows_)}"
    )
    return tr, ev


def _extra(data: Dataset, cfg: TrainConfig, result: TrainResult | None, **more: Any) -> dict:
    extra = {
        "data": {"id": data.id, "fingerprint": data.fingerprint, "source": data.source},
        "train_config": result.config if result else None,
        "git": git_revision(),
    }
    if result is not None:
        extra["timing"] = {
            "seconds": round(result.seconds, 3),
            "train_seconds": round(result.train_seconds, 3),
            "examples_per_second": round(result.examples_per_second, 2),
        }
        extra["placement"] = result.placement  # device, precision, GPU name
    extra.update(more)
    return extra


def _step_metrics(result: TrainResult) -> dict[str, dict[str, float]]:
    return {str(k): v for k, v in sorted(result.metrics.items())}


def train_run(
    host: str | LoadedHost,
    technique: str,
    data: str | Dataset,
    cfg: TrainConfig,
    *,
    technique_config: dict | None = None,
    progress: bool = True,
    save_at: tuple[int, ...] = (),
) -> RunOutput:
    """Train a fresh module of `technique` on `host` for cfg.steps, evaluating at cfg.eval_at."""
    from peftport.module import module_meta
    from peftport.techniques import attach, module_state

    placement = resolve_config(cfg)  # a device or precision that cannot work: before any load
    data = as_dataset(data)
    h = host_for(host, technique, data)
    att = attach(h.model, h.spec.family, technique, technique_config, seed=cfg.seed)
    result, snapshots = _fit(
        h,
        att,
        data,
        cfg,
        progress=progress,
        save_at=save_at,
        desc=f"{technique} on {h.spec.id}",
        placement=placement,
    )
    meta = module_meta(
        att,
        h,
        task=data.id,
        label_words=data.label_words,
        steps=cfg.steps,
        seed=cfg.seed,
        metrics=_step_metrics(result),
        extra=_extra(data, cfg, result),
    )
    return RunOutput(
        tensors=module_state(h.model, att.name),
        meta=meta,
        result=result,
        snapshots=snapshots,
        host=h,
        attached=att,
    )


def _fit(
    h: LoadedHost,
    att: Any,
    data: Dataset,
    cfg: TrainConfig,
    *,
    progress: bool,
    desc: str,
    save_at: tuple[int, ...] = (),
    placement: Placement | None = None,
) -> tuple[TrainResult, dict[int, dict[str, torch.Tensor]]]:
    """Encode the data for `h` and train the attached module; its tensors at `save_at` steps."""
    from peftport.techniques import module_state

    tr, ev = encodings(h, data, cfg)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snap(step: int, _metrics) -> None:
        if step in save_at:
            snapshots[step] = module_state(h.model, att.name)

    result = train(
        h.model,
        h.kind,
        tr,
        ev,
        cfg,
        progress=progress,
        on_checkpoint=snap,
        save_at=save_at,
        desc=desc,
        placement=placement,
    )
    sha = examples_sha256(data, cfg) if result.predictions else ""
    result.predictions = {k: p.with_examples(sha) for k, p in result.predictions.items()}
    return result, snapshots


def check_labels(meta: dict[str, Any], data: Dataset) -> None:
    """A module scores the label words it was trained for: refuse a data set with others."""
    if tuple(meta["label_words"]) != tuple(data.label_words):
        raise PeftportError(
            f"the module was trained for labels {tuple(meta['label_words'])}, but data set "
            f"{data.id!r} has {tuple(data.label_words)}: the label sets must match"
        )


def load_into(
    module: ModuleLike,
    host: str | LoadedHost,
    data: Dataset,
    seed: int = 0,
    *,
    condition: str | None = None,
    layer_map: list[int] | None = None,
    head: str = "follow",
    method: str = "copy",
    method_inputs: Any = None,
) -> tuple[LoadedHost, Any, dict]:
    """Attach the module's technique to `host` (its fresh initialisation drawn with `seed`) and
    load the module's tensors into it.

    `condition` (ported, sampled, random) ports the module into the host first, through
    `layer_map` (receiver layer -> origin layer) if given: `peftport port` and loading in one
    step, as a study's post unit does. Without it the module must already belong to this host.
    `head`: the head policy for encoder classifiers (`peftport.porting`: follow or origin);
    `method`: the porting method of the ported condition (`peftport.methods`; `port_into`),
    with `method_inputs` (a `MethodInputs`) when the caller has them already.
    """
    from peftport.module import load_module
    from peftport.techniques import attach, load_module_state

    tensors, meta = module if isinstance(module, tuple) else load_module(module)
    check_labels(meta, data)
    h = host_for(host, meta["technique"], data)
    if h.kind != meta["host_kind"]:
        raise PeftportError(
            f"the module was made for a {meta['host_kind']} host, but {h.spec.id!r} is a "
            f"{h.kind}: a module only goes into a host of the same kind"
        )
    if condition is not None:
        ported = port_into(
            h,
            tensors,
            meta,
            condition,
            seed,
            layer_map,
            head=head,
            method=method,
            inputs=method_inputs,
        )
        return h, ported.attached, meta
    _check_belongs(meta, h)
    name = meta.get("adapter_name", "peftport")
    att = attach(h.model, h.spec.family, meta["technique"], meta["config"], name=name, seed=seed)
    load_module_state(h.model, tensors, name)
    return h, att, meta


@dataclass
class Ported:
    """A module ported into a host and loaded there (`port_into`)."""

    attached: Any  # the `techniques.Attached` on the host
    receiver: Any  # the `porting.ReceiverSpec` it was ported into
    state: dict[str, torch.Tensor]  # the tensors loaded (receiver names)
    method: Any  # the `methods.ParsedMethod` used
    alignment: Any = None  # the fitted `alignfit.Alignment` under method align


def port_into(
    h: LoadedHost,
    tensors: dict[str, torch.Tensor],
    meta: dict[str, Any],
    condition: str,
    seed: int,
    layer_map: Any = None,
    *,
    head: str = "follow",
    keep_receiver_head: bool = False,
    method: Any = "copy",
    align_texts: int = 256,
    inputs: Any = None,
) -> Ported:
    """Attach the module's technique to `h` (fresh, drawn with `seed`), port the module's
    tensors into it under `condition` (the ported condition under porting `method`) and load
    them: the one porting step of `peftport port`, `adapt --condition` and a study's post units.

    `layer_map`: the resolved map `porting.port` takes, or a function of the `ReceiverSpec` that
    chooses it (`peftport port` resolves a strategy against the receiver's depths). `inputs`:
    the method's `MethodInputs` when the caller has them; else fitted or copied here (align
    fits on `align_texts` texts)."""
    from peftport.methods import method_for, port_with_method
    from peftport.porting import ReceiverSpec, port
    from peftport.techniques import attach, load_module_state

    parsed = method_for(method, condition)
    if inputs is None:  # on the plain hosts, before a module changes what they compute
        inputs = _method_inputs(parsed, meta, h, align_texts)
    name = meta.get("adapter_name", "peftport")
    att = attach(h.model, h.spec.family, meta["technique"], meta["config"], name=name, seed=seed)
    receiver = ReceiverSpec.from_attached(att, host_id=h.spec.id, fingerprint=h.fingerprint)
    lmap = layer_map(receiver) if callable(layer_map) else layer_map
    if condition == "ported" and parsed.name != "copy":
        state = port_with_method(
            tensors,
            meta,
            receiver,
            parsed,
            lmap,
            keep_receiver_head=keep_receiver_head,
            inputs=inputs,
        )
    else:  # copy is the ported condition itself, bit for bit
        state = port(
            tensors,
            meta,
            receiver,
            condition,
            seed,
            lmap,
            keep_receiver_head=keep_receiver_head,
            head=head,
        )
    load_module_state(h.model, state, name)  # proves the result loads, strictly
    return Ported(att, receiver, state, parsed, inputs.alignment)


def _method_inputs(parsed: Any, meta: dict[str, Any], h: LoadedHost, align_texts: int) -> Any:
    """What porting method `parsed` uses beyond the module (`methods.MethodInputs`): the
    alignment between the origin's and `h`'s hidden spaces, or `h`'s own weights."""
    from peftport.methods import METHODS, MethodInputs

    needs = METHODS.get(parsed.name)
    if needs.needs_alignment:
        from peftport.alignfit import fit_alignment

        num_labels = len(meta["label_words"]) if meta["host_kind"] == ENCODER_CLASSIFIER else 2
        origin = load_host(get_host(meta["origin_host"]), num_labels=max(num_labels, 1))
        return MethodInputs(
            alignment=fit_alignment(origin, h, fit=parsed.params["fit"], texts=align_texts)
        )
    if needs.needs_receiver_weights:
        return MethodInputs(
            receiver_weights={k: v.detach().clone() for k, v in h.model.state_dict().items()}
        )
    return MethodInputs()


def _check_belongs(meta: dict[str, Any], h: LoadedHost) -> None:
    """A module loads as it is only into the host it was trained on or ported into."""
    port_info = meta.get("port") or {}
    if port_info.get("receiver_fingerprint") and port_info["receiver_fingerprint"] != h.fingerprint:
        raise PeftportError(
            f"the module was ported into {port_info.get('receiver_host')!r} but is being loaded "
            f"into {h.spec.id!r} (other weights); port it into this host first (`peftport port`)"
        )
    if not port_info and meta["origin_fingerprint"] != h.fingerprint:
        raise PeftportError(
            f"the module was trained on {meta['origin_host']!r} and {h.spec.id!r} has other "
            "weights; port it first: `peftport port MODULE --to HOST --condition ported`"
        )


def adapt_run(
    module: ModuleLike,
    host: str | LoadedHost,
    data: str | Dataset,
    cfg: TrainConfig,
    *,
    progress: bool = True,
    condition: str | None = None,
    layer_map: list[int] | None = None,
    head: str = "follow",
    method: str = "copy",
    method_inputs: Any = None,
) -> RunOutput:
    """Post-porting adaptation: load the module into `host` (porting it first under `condition`,
    see `load_into`), train cfg.steps more, evaluate."""
    from peftport.module import FILLED
    from peftport.techniques import module_state

    placement = resolve_config(cfg)  # a device or precision that cannot work: before any load
    data = as_dataset(data)
    h, att, meta = load_into(
        module,
        host,
        data,
        cfg.seed,
        condition=condition,
        layer_map=layer_map,
        head=head,
        method=method,
        method_inputs=method_inputs,
    )
    result, _ = _fit(
        h,
        att,
        data,
        cfg,
        progress=progress,
        desc=f"adapting {meta['technique']} on {h.spec.id}",
        placement=placement,
    )
    out = {k: v for k, v in meta.items() if k not in FILLED}
    out["steps"] = int(meta["steps"]) + cfg.steps
    out["metrics"] = _step_metrics(result)
    out["extra"] = _extra(
        data, cfg, result, adapted_from=meta.get("sha256"), adapted_steps=cfg.steps
    )
    return RunOutput(
        tensors=module_state(h.model, att.name),
        meta=out,
        result=result,
        snapshots={},
        host=h,
        attached=att,
    )


def evaluate_run(
    module: ModuleLike, host: str | LoadedHost, data: str | Dataset, **options: Any
) -> dict[str, float]:
    """The module's metrics in `host`: `evaluate_run_with_predictions`, which takes the same
    options (split, max_examples, max_length, batch_size, placement, eval_mode), without the
    per-example record."""
    return evaluate_run_with_predictions(module, host, data, **options)[0]


def evaluate_run_with_predictions(
    module: ModuleLike,
    host: str | LoadedHost,
    data: str | Dataset,
    *,
    split: str = "test",
    max_examples: int | None = None,
    max_length: int = 64,
    batch_size: int = 64,
    placement: Placement | None = None,
    eval_mode: str = "rank",
) -> tuple[dict[str, float], Predictions]:
    """`evaluate_run`'s metrics and the per-example record they come from (the evaluated
    examples' fingerprint included)."""
    placement = placement or resolve()  # a device that cannot work: before any load
    data = as_dataset(data)
    cfg = TrainConfig(
        steps=0,
        eval_split=split,
        max_eval_examples=max_examples,
        max_length=max_length,
        eval_batch_size=batch_size,
    )
    h, _att, _meta = load_into(module, host, data)
    _tr, ev = encodings(h, data, cfg)
    m, pred = evaluate_with_predictions(
        h.model, h.kind, ev, batch_size, placement=placement, eval_mode=eval_mode
    )
    return m, pred.with_examples(examples_sha256(data, cfg))


__all__ = [
    "RunOutput",
    "train_run",
    "adapt_run",
    "evaluate_run",
    "evaluate_run_with_predictions",
    "examples_sha256",
    "load_into",
    "port_into",
    "Ported",
    "check_labels",
    "encodings",
    "host_for",
    "as_dataset",
    "ENCODER_CLASSIFIER",
]
