"""Runs: a host, a technique and a data set put together with the engine (the edge over the core).

- `train_run`: attach a fresh module to a host, train it, return its tensors, metadata, metrics;
- `adapt_run`: load a module (ported, sampled or random) into a host and train it further;
- `evaluate_run`: load a module into a host and evaluate it.
Each checks its inputs (host kind, label words, steps, checkpoints) before any training starts.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from peftport import tasks
from peftport.data import Dataset, load_dataset
from peftport.engine import TrainConfig, TrainResult, evaluate, train
from peftport.errors import PeftportError
from peftport.hosts import DECODER_LM, LoadedHost, load_host
from peftport.provenance import environment


@dataclass
class RunOutput:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]
    result: TrainResult
    snapshots: dict[int, dict[str, torch.Tensor]]  # step -> module tensors (save_at steps)


def _host_for(host: str | LoadedHost, technique: str, num_labels: int) -> LoadedHost:
    if isinstance(host, LoadedHost):
        return host
    # prefix tuning on decoders needs eager attention (sdpa masks the prefix out when padded)
    attn = "eager" if technique == "prefix" else None
    from peftport.hosts import get_host

    spec = get_host(host)
    if spec.kind != DECODER_LM and spec.family != "" and attn:
        attn = None
    return load_host(spec, num_labels=num_labels, attn_implementation=attn)


def _check_labels(data: Dataset, label_words: tuple[str, ...] | None, what: str) -> None:
    if label_words is not None and tuple(label_words) != tuple(data.label_words):
        raise PeftportError(
            f"{what} was trained for labels {tuple(label_words)}, but data set {data.id!r} has "
            f"{tuple(data.label_words)}: the label sets must match")


def _encodings(h: LoadedHost, data: Dataset, cfg: TrainConfig):
    framing = tasks.Framing.for_host(h.kind, data.label_words, cfg.max_length)
    train_rows = data.split("train")
    eval_rows = data.split(cfg.eval_split)
    if cfg.max_eval_examples:
        eval_rows = eval_rows[: cfg.max_eval_examples]
    tr = tasks.encode(h.tokenizer, train_rows, framing, f"{data.fingerprints['train']}")
    ev = tasks.encode(h.tokenizer, eval_rows, framing,
                      f"{data.fingerprints[cfg.eval_split]}:{len(eval_rows)}")
    return tr, ev


def module_meta(*, technique: str, config: dict, h: LoadedHost, data: Dataset, cfg: TrainConfig,
                result: TrainResult | None, trainable: int, extra: dict | None = None) -> dict:
    meta = {
        "technique": technique,
        "config": config,
        "host": {"id": h.spec.id, "family": h.spec.family, "kind": h.kind,
                 "fingerprint": h.fingerprint},
        "task": {"data": data.id, "data_fingerprint": data.fingerprint,
                 "label_names": list(data.label_names), "label_words": list(data.label_words)},
        "steps": cfg.steps,
        "seed": cfg.seed,
        "train_config": asdict(cfg),
        "trainable_parameters": trainable,
        "metrics": {str(k): v for k, v in (result.metrics if result else {}).items()},
        "environment": environment(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if extra:
        meta.update(extra)
    return meta


def train_run(host: str | LoadedHost, technique: str, data: str | Dataset, cfg: TrainConfig, *,
              technique_config: dict | None = None, progress: bool = True,
              save_at: tuple[int, ...] = ()) -> RunOutput:
    """Train a fresh module of `technique` on `host` for cfg.steps, evaluating at cfg.eval_at."""
    from peftport.techniques import attach, get_technique, module_state

    get_technique(technique)  # unknown technique: error before anything loads
    data = data if isinstance(data, Dataset) else load_dataset(data)
    h = _host_for(host, technique, data.num_labels)
    att = attach(h.model, h.spec.family, technique, technique_config, seed=cfg.seed)
    tr, ev = _encodings(h, data, cfg)
    snapshots: dict[int, dict[str, torch.Tensor]] = {}

    def snap(step: int, _m) -> None:
        if step in save_at:
            snapshots[step] = module_state(h.model)

    result = train(h.model, h.kind, tr, ev, cfg, progress=progress, on_checkpoint=snap,
                   save_at=save_at, desc=f"{technique} on {h.spec.id}")
    tensors = module_state(h.model)
    meta = module_meta(technique=technique, config=asdict(att.config), h=h, data=data, cfg=cfg,
                       result=result, trainable=att.trainable,
                       extra={"condition": "trained"})
    return RunOutput(tensors=tensors, meta=meta, result=result, snapshots=snapshots)


def load_into(module: str | Path | tuple[dict, dict], host: str | LoadedHost, data: Dataset,
              seed: int) -> tuple[LoadedHost, Any, dict]:
    """Attach the module's technique to `host` and load the module's tensors into it."""
    from peftport.module import load_module
    from peftport.techniques import attach, load_module_state

    tensors, meta = load_module(module) if not isinstance(module, tuple) else module
    _check_labels(data, tuple(meta["task"]["label_words"]), f"module ({meta['technique']})")
    h = _host_for(host, meta["technique"], data.num_labels)
    if h.kind != meta["host"]["kind"]:
        raise PeftportError(
            f"the module was made for a {meta['host']['kind']} host, but {h.spec.id!r} is a "
            f"{h.kind}: a module can only go into a host of the same kind")
    att = attach(h.model, h.spec.family, meta["technique"], meta["config"], seed=seed)
    load_module_state(h.model, tensors)
    return h, att, meta


def adapt_run(module: str | Path | tuple[dict, dict], host: str | LoadedHost, data: str | Dataset,
              cfg: TrainConfig, *, progress: bool = True) -> RunOutput:
    """Post-porting adaptation: load the module into `host`, train cfg.steps more, evaluate."""
    from peftport.techniques import module_state

    data = data if isinstance(data, Dataset) else load_dataset(data)
    h, att, meta = load_into(module, host, data, cfg.seed)
    tr, ev = _encodings(h, data, cfg)
    result = train(h.model, h.kind, tr, ev, cfg, progress=progress,
                   desc=f"adapting {meta['technique']} on {h.spec.id}")
    extra = {"condition": meta.get("condition", "ported"), "adapted_from": {
        "host": meta["host"], "steps": meta["steps"], "sha256": meta.get("sha256")}}
    out_meta = module_meta(technique=meta["technique"], config=meta["config"], h=h, data=data,
                           cfg=cfg, result=result, trainable=att.trainable, extra=extra)
    return RunOutput(tensors=module_state(h.model), meta=out_meta, result=result, snapshots={})


def evaluate_run(module: str | Path | tuple[dict, dict], host: str | LoadedHost,
                 data: str | Dataset, *, split: str = "test", max_examples: int | None = None,
                 max_length: int = 64, batch_size: int = 64) -> dict[str, float]:
    data = data if isinstance(data, Dataset) else load_dataset(data)
    cfg = TrainConfig(steps=0, eval_split=split, max_eval_examples=max_examples,
                      max_length=max_length, eval_batch_size=batch_size)
    h, _att, _meta = load_into(module, host, data, seed=0)
    _tr, ev = _encodings(h, data, cfg)
    return evaluate(h.model, h.kind, ev, batch_size)
