"""What one work unit does, in whatever process runs it: a payload in, a result out.

No store, no files: the driver passes a post unit the snapshot it starts from (tensors and
metadata) and receives metrics, snapshots and provenance back, so the same function runs in the
driver (workers=0), in a local worker process or in a Ray task on another machine.

The units run the same functions as the CLI (`peftport.runs`); a unit only turns its payload
into their arguments and their output into a result:
- pretrain: `train_run` on the origin (a fresh module attached with the seed), to the largest
  pre-porting step count, evaluated on the pre data set and snapshotted at every pre-porting
  step count;
- post: `adapt_run` with the condition: attach the technique to the receiver (seed), port the
  snapshot into it (ported or sampled with the seed, through the pair's resolved layer map when
  the study gives one: the driver resolves it and puts it in the payload as a plain list,
  receiver layer -> origin layer), train to the largest post-porting step count with the shared
  horizon, evaluate at 0 and every post step count;
- random: `train_run` on the receiver: the technique's fresh initialisation (seed) trained the
  same way (the random condition, which is also the from-scratch baseline).

Hosts are loaded once per process and kept (least recently used first out); every unit gets a
deep copy of the pristine model, since attaching a module changes a model in place.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import gc
import os
import platform
import socket
import time
from typing import Any

from peftport.errors import PeftportError
from peftport.lru import LRU

HOST_CACHE_SIZE = 2  # a pair: origin and receiver
_HOSTS: LRU[Any] = LRU(HOST_CACHE_SIZE)
_EVICTED = False  # a cached host was dropped since the last full collection


def fresh_host(host_id: str, num_labels: int) -> Any:
    """A LoadedHost with its own copy of the model (the pristine one stays cached)."""
    from peftport.hosts import LoadedHost, get_host, load_host

    global _EVICTED
    if (host_id, num_labels) not in _HOSTS and len(_HOSTS) >= _HOSTS.maxsize:
        _EVICTED = True  # the oldest host goes: `release_memory` collects fully
    base = _HOSTS.get(
        (host_id, num_labels), lambda: load_host(get_host(host_id), num_labels=num_labels)
    )
    return LoadedHost(
        spec=base.spec,
        folder=base.folder,
        model=copy.deepcopy(base.model),
        tokenizer=base.tokenizer,
        fingerprint=base.fingerprint,
    )


def _train_config(d: dict[str, Any], threads: int) -> Any:
    from peftport.engine import TrainConfig

    d = dict(d)
    d["eval_at"] = tuple(d["eval_at"])
    return TrainConfig(threads=threads, **d)


def _provenance(h_ids: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
    from peftport.provenance import git_revision, package_versions

    return {
        "host_fingerprints": {k: h.fingerprint for k, h in h_ids.items()},
        "data_fingerprints": {k: d.fingerprint for k, d in data.items()},
        "versions": package_versions(),
        "git": git_revision(),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "environment": {"machine": platform.machine(), "cpus": os.cpu_count()},
    }


def execute(payload: dict[str, Any]) -> dict[str, Any]:
    """Run one unit. payload: {"unit_id", "config", "threads", "snapshot": (tensors, meta) or
    None, "keep_adapted", "layer_map": list or None}. Returns metrics per step, snapshots
    (pretrain), the adapted module (if asked), the layer map used, timings and provenance.
    Raises on failure (the driver records the error)."""
    import torch

    threads = int(payload.get("threads") or 1)
    gc.freeze()  # what exists now outlives the unit: `release_memory` need not walk it
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        config = payload["config"]
        kind = config["kind"]
        if kind == "pretrain":
            out = _pretrain(payload["unit_id"], config, threads)
        elif kind in ("post", "random"):
            out = _adapt(
                payload["unit_id"],
                config,
                threads,
                payload.get("snapshot"),
                bool(payload.get("keep_adapted")),
                payload.get("layer_map"),
            )
        else:
            raise PeftportError(f"unknown unit kind {kind!r}")
        out["threads"] = threads
        return out
    finally:
        torch.set_num_threads(before)
        release_memory()


def release_memory() -> None:
    """Free the unit's model copy now (called after each unit, by `execute`).

    The copy sits in reference cycles (modules and the hooks adapters puts on them point at
    each other), so reference counting never frees it, and a worker kept one more copy per unit
    until a rare full collection: about 42 MB per unit on minilm-l6, 3 GB on T5-large. A
    collection frees it; malloc_trim then hands the freed heap back to the system (glibc keeps
    it otherwise, and the worker's RSS would stay at its peak).

    A full collection walks every object in the process (about 440,000 with torch and
    transformers loaded: 1.3 s on a loaded 2-core machine, longer than a tiny unit). `execute`
    freezes what existed before the unit (`gc.freeze`), so this collection walks only what the
    unit made. A host dropped from the host cache is older (a T5 model is cyclic even before a
    module is attached); it is collected fully once the memory held since the last full
    collection exceeds FULL_COLLECTION_BYTES (at once where the process size is unknown).
    """
    global _EVICTED, _BASELINE
    gc.collect()
    if gc.get_freeze_count():
        gc.unfreeze()
    trim = _malloc_trim()
    if _EVICTED:
        rss = _rss()
        if rss is None or _BASELINE is None or rss - _BASELINE > FULL_COLLECTION_BYTES:
            gc.collect()
            _EVICTED = False
            if trim is not None:
                trim(0)
            _BASELINE = _rss()
            return
    if trim is not None:
        trim(0)


FULL_COLLECTION_BYTES = 256 * 2**20
_BASELINE: int | None = None  # resident bytes after the last full collection


def _rss() -> int | None:
    """Resident bytes of this process (Linux), else None."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


_TRIM: list[Any] = []  # [] not looked up yet; [None] not glibc


def _malloc_trim() -> Any:
    if not _TRIM:
        fn = None
        if platform.system() == "Linux":
            try:
                fn = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
                fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
            except (OSError, AttributeError):  # musl and others have no malloc_trim
                fn = None
        _TRIM.append(fn)
    return _TRIM[0]


def _result(run: Any) -> dict[str, Any]:
    res, att = run.result, run.attached
    return {
        "metrics": {int(k): v for k, v in res.metrics.items()},
        "seconds": res.seconds,
        "train_seconds": res.train_seconds,
        "examples_per_second": res.examples_per_second,
        "losses": [round(x, 5) for x in res.losses],
        "trainable_parameters": att.trainable,
        "module_parameters": att.module_parameters,
        "placement": res.placement,  # device, precision, GPU name: where it was computed
        # step -> per-example record of that evaluation (Predictions.to_record: plain bytes)
        "predictions": {int(k): p.to_record() for k, p in res.predictions.items()},
    }


def _module_meta(run: Any, data: Any, step: int, seed: int, extra: dict[str, Any]) -> dict:
    """What the store keeps with a module: the module's metadata at `step`, with the unit's
    own `extra` (which unit made it, from which data)."""
    from peftport.module import module_meta

    return module_meta(
        run.attached,
        run.host,
        task=data.id,
        label_words=data.label_words,
        steps=step,
        seed=seed,
        metrics=run.result.metrics.get(step),
        extra={**extra, "data_fingerprint": data.fingerprint},
    )


def _pretrain(unit_id: str, c: dict[str, Any], threads: int) -> dict[str, Any]:
    from peftport.data import load_dataset
    from peftport.runs import train_run

    t0 = time.perf_counter()
    data = load_dataset(c["data"], max_examples=c["max_examples"])
    run = train_run(
        fresh_host(c["host"], data.num_labels),
        c["technique"],
        data,
        _train_config(c["train"], threads),
        technique_config=c["technique_config"],
        progress=False,
        save_at=tuple(c["save_at"]),
    )
    out = _result(run)
    out["snapshots"] = {
        step: (tensors, _module_meta(run, data, step, c["seed"], {"study_unit": unit_id}))
        for step, tensors in run.snapshots.items()
    }
    out.update(_provenance({c["host"]: run.host}, {c["data"]: data}))
    out["seconds"] = time.perf_counter() - t0
    return out


ALIGNMENT_CACHE_SIZE = 1  # the fit of one host pair (it holds both hosts' weights)
_ALIGNMENTS: LRU[Any] = LRU(ALIGNMENT_CACHE_SIZE)


def method_inputs(
    method: str, c: dict[str, Any], num_labels: int, receiver: Any
) -> tuple[Any, dict[str, Any]]:
    """What a post unit's porting method needs (`methods.MethodInputs`) and what its provenance
    records (`methods.method_record`). `receiver`: the unit's host, no module attached yet.

    align's fit (`alignfit.fit_alignment`: both plain hosts on the shared corpus) is made once
    per host pair in each process that runs align units and kept (`_ALIGNMENTS`): every align
    unit of a pair in that process uses it. It is deterministic (a seeded text sample, CPU
    fp32), so each worker process fits the same maps."""
    from peftport.methods import METHODS, MethodInputs, method_record, parse_method

    parsed = parse_method(method)
    need = METHODS.get(parsed.name)
    if need.needs_alignment:
        from peftport.alignfit import fit_alignment

        key = (c["origin"], c["receiver"], parsed.params["fit"], num_labels)
        t0 = time.perf_counter()
        alignment = _ALIGNMENTS.get(
            key,
            lambda: fit_alignment(
                fresh_host(c["origin"], num_labels),
                fresh_host(c["receiver"], num_labels),
                fit=parsed.params["fit"],
            ),
        )
        info = {
            **method_record(parsed, alignment),
            "align_fit_seconds_here": round(time.perf_counter() - t0, 3),
        }
        return MethodInputs(alignment=alignment), info
    if need.needs_receiver_weights:
        weights = {k: v.detach().clone() for k, v in receiver.model.state_dict().items()}
        return MethodInputs(receiver_weights=weights), method_record(parsed)
    return None, method_record(parsed)


def _origin_predictions(c: dict[str, Any], snapshot: Any, data: Any, cfg: Any) -> dict:
    """The module this post unit starts from, on its origin host, evaluated on the post data
    set's evaluation examples: what the ported module's predictions are compared with
    (agreement, negative flips: report/agreement.py) when the pre-porting data set differs
    (with the same data set, the pretrain unit's own evaluation serves). Run after the
    adaptation, so nothing of the unit's own result can depend on it."""
    from peftport.device import resolve_config
    from peftport.engine import evaluate_with_predictions
    from peftport.runs import encodings, examples_sha256, load_into

    tensors, meta = snapshot
    h, _att, _meta = load_into(
        (tensors, meta), fresh_host(c["origin"], data.num_labels), data, cfg.seed
    )
    _tr, ev = encodings(h, data, cfg)
    _m, pred = evaluate_with_predictions(
        h.model,
        h.kind,
        ev,
        cfg.eval_batch_size,
        placement=resolve_config(cfg),
        eval_mode=cfg.eval_mode,
    )
    return {
        "step": int(c["pre_steps"]),
        **pred.with_examples(examples_sha256(data, cfg)).to_record(),
    }


def _adapt(
    unit_id: str,
    c: dict[str, Any],
    threads: int,
    snapshot: Any,
    keep_adapted: bool,
    layer_map: list[int] | None = None,
) -> dict[str, Any]:
    """post: port the snapshot into the receiver (`runs.adapt_run` with the condition) and train
    it; random: train the technique's fresh initialisation there (`runs.train_run`)."""
    from peftport.data import load_dataset
    from peftport.runs import adapt_run, train_run

    t0 = time.perf_counter()
    data = load_dataset(c["data"], max_examples=c["max_examples"])
    h = fresh_host(c["receiver"], data.num_labels)
    cfg = _train_config(c["train"], threads)
    condition = c.get("condition", "random")
    if c["kind"] == "post":
        if snapshot is None:
            raise PeftportError(f"unit {unit_id}: the module snapshot it starts from is missing")
        if c.get("layer_map") and layer_map is None:
            raise PeftportError(
                f"unit {unit_id}: its config names layer map "
                f"{c['layer_map']['strategy']!r} but the payload carries no "
                "resolved map (the driver resolves it before any unit)"
            )
        if layer_map is not None:
            layer_map = [int(x) for x in layer_map]
        method = c.get("method", "copy")  # absent: copy (the config of before `methods:`)
        inputs, method_info = method_inputs(method, c, data.num_labels, h)
        run = adapt_run(
            snapshot,
            h,
            data,
            cfg,
            progress=False,
            condition=condition,
            layer_map=layer_map,
            head=c.get("head", "follow"),
            method=method,
            method_inputs=inputs,
        )
    elif c.get("head") == "origin":  # random with the origin module's head (plan.py)
        if snapshot is None:
            raise PeftportError(f"unit {unit_id}: the module whose head it keeps is missing")
        run = adapt_run(snapshot, h, data, cfg, progress=False, condition="random", head="origin")
    else:  # random: the technique's fresh initialisation from attach(seed) is the start
        run = train_run(
            h, c["technique"], data, cfg, technique_config=c["technique_config"], progress=False
        )
    out = _result(run)
    if c["kind"] == "post" and c.get("pre_data") != c["data"]:
        out["origin_predictions"] = _origin_predictions(c, snapshot, data, cfg)
    if keep_adapted:
        extra = {"study_unit": unit_id, "condition": condition}
        if layer_map is not None:
            extra["layer_map"] = layer_map
        if c.get("method"):
            extra["method"] = method_info
        out["adapted"] = (run.tensors, _module_meta(run, data, cfg.steps, c["seed"], extra))
    out.update(_provenance({c["receiver"]: h}, {c["data"]: data}))
    out["layer_map"] = layer_map if c["kind"] == "post" else None
    if c.get("method"):  # the unit's provenance: the method, its parameters, align's fit
        out["method"] = method_info
    if snapshot is not None:  # where the ported module came from
        out["host_fingerprints"][c["origin"]] = snapshot[1]["origin_fingerprint"]
    out["seconds"] = time.perf_counter() - t0
    return out
