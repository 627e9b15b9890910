"""An estimate of the compute a study needs, printed by `peftport study plan`.

Model FLOPs (Kaplan et al. 2020): a forward pass costs about 2 x N x tokens, where N is the
host's parameter count without its embedding tables (embeddings are lookups, not matrix
products). A PEFT training step adds the backward pass through the activations (another
2 x N x tokens) but no weight gradients, since the host is frozen: 4 x N x tokens. An
evaluation is a forward pass. Attention scores are left out (short rows).

Tokens are examples x the mean row length of the data as the host frames it (its template and
special tokens, truncated at max_length), measured on a seeded sample of 256 training rows
when the host's tokenizer and the data are on disk already (nothing is downloaded for an
estimate), else max_length: batches are padded to their longest row and peftport groups rows
of similar length, so the mean is close; max_length is an upper bound. A text-to-text host's
decoder sees a few tokens, not the row, so for T5 the estimate is high.

N comes from the host's config.json (no weights are loaded): on disk when the host is, else,
for the paper's hub-only hosts, the sizes of their published config.json (KNOWN_CONFIGS);
a host of unknown size is named and left out.

Hours: FLOPs / a sustained rate. The reference GPU is an NVIDIA A100 (312 dense bf16 TFLOP/s
peak) at 40% of peak; this CPU's rate is the best float32 matrix product of 256 to 1024 on one
thread (measured once per CPU model and torch version, kept in $PEFTPORT_HOME), times the
cores, at CPU_SHARE of it: what the quick and standard studies sustained on a 2-core Xeon
(39-41% and 46-48%, evaluation and unit start-up included; docs/study.md).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

A100_PEAK = 312e12  # dense bf16 FLOP/s
A100_SHARE = 0.40
CPU_SHARE = 0.45
RATE_SIZES = (256, 512, 1024)
SAMPLE_ROWS = 256  # training rows whose mean length stands for the data set's
EVAL_EXAMPLES = 1_000  # per evaluation when the study does not cap it (SST-2 val. 872, RT 1,066)

# Sizes from the published config.json of the paper's hub-only hosts (Flan-T5 has the T5 v1.1
# architecture: gated-GELU feed-forward, untied output layer, vocabulary 32,128).
_T5_V11 = {
    "model_type": "t5",
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
}
KNOWN_CONFIGS: dict[str, dict[str, Any]] = {
    "t5-v1_1-base": {
        **_T5_V11,
        "d_model": 768,
        "d_kv": 64,
        "d_ff": 2048,
        "num_heads": 12,
        "num_layers": 12,
        "num_decoder_layers": 12,
    },
    "t5-v1_1-large": {
        **_T5_V11,
        "d_model": 1024,
        "d_kv": 64,
        "d_ff": 2816,
        "num_heads": 16,
        "num_layers": 24,
        "num_decoder_layers": 24,
    },
}
KNOWN_CONFIGS["flan-t5-base"] = KNOWN_CONFIGS["t5-v1_1-base"]
KNOWN_CONFIGS["flan-t5-large"] = KNOWN_CONFIGS["t5-v1_1-large"]


def parameter_counts(config: dict[str, Any]) -> tuple[int, int] | None:
    """(all parameters, parameters without embedding tables) of a host from its config.json
    (weights, biases and norms of the families peftport supports), or None if unknown."""
    c = config
    kind = c.get("model_type")
    try:
        if kind == "bert":
            h, n_layers, inner = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
            layer = 4 * (h * h + h) + 2 * h * inner + inner + h + 4 * h  # attn, ffn, 2 norms
            body = n_layers * layer + h * h + h  # + pooler
            emb = (
                c["vocab_size"]
                + c.get("max_position_embeddings", 512)
                + c.get("type_vocab_size", 2)
            ) * h + 2 * h
            return emb + body, body
        if kind == "gpt2":
            h, n_layers = c["n_embd"], c["n_layer"]
            inner = c.get("n_inner") or 4 * h
            layer = 4 * h * h + 4 * h + 2 * h * inner + inner + h + 4 * h
            body = n_layers * layer + 2 * h
            emb = (c["vocab_size"] + c.get("n_positions", 1024)) * h
            return emb + body, body
        if kind == "llama":
            h, n_layers, inner = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"]
            heads = c["num_attention_heads"]
            hd = c.get("head_dim") or h // heads
            kv = c.get("num_key_value_heads") or heads
            layer = 2 * h * heads * hd + 2 * h * kv * hd + 3 * h * inner + 2 * h
            body = n_layers * layer + h
            emb = c["vocab_size"] * h * (1 if c.get("tie_word_embeddings") else 2)
            return emb + body, body
        if kind == "t5":
            d, dkv, heads, dff = c["d_model"], c["d_kv"], c["num_heads"], c["d_ff"]
            enc = c["num_layers"]
            dec = c.get("num_decoder_layers") or enc
            attn = 4 * d * heads * dkv
            ffn = (
                (3 if str(c.get("feed_forward_proj", "relu")).startswith("gated") else 2) * d * dff
            )
            buckets = c.get("relative_attention_num_buckets", 32) * heads * 2  # one per stack
            body = enc * (attn + ffn + 2 * d) + dec * (2 * attn + ffn + 3 * d) + 2 * d + buckets
            tied = c.get("tie_word_embeddings", True)
            emb = c["vocab_size"] * d * (1 if tied else 2)
            return emb + body, body
    except (KeyError, TypeError):
        return None
    return None


def host_size(host: str) -> tuple[int, int, str] | None:
    """(parameters, parameters without embeddings, where the sizes came from), or None."""
    from peftport.errors import PeftportError
    from peftport.hosts import get_host
    from peftport.study.pairchecks import cheap_host_config

    try:
        config = cheap_host_config(get_host(host))
    except PeftportError:
        config = None
    origin = "config.json"
    if config is None and host in KNOWN_CONFIGS:
        config, origin = KNOWN_CONFIGS[host], "its published config.json"
    counts = parameter_counts(config) if config else None
    return (*counts, origin) if counts else None


def _cpu_key() -> str:
    """What the measured rate depends on: the CPU model and torch's version."""
    import platform

    import torch

    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model} | torch {torch.__version__} | {RATE_SIZES}"


@functools.cache
def cpu_matmul_rate(seconds: float = 0.1) -> float:
    """float32 FLOP/s of one thread, the best square matrix product of RATE_SIZES, kept per CPU
    model and torch version in $PEFTPORT_HOME/cpu_rate.json so that `study plan` does not time
    products on every call. A rate measured while the other cores were busy (1-minute load
    average above cores - 1: this thread shared a core) is low, so it is measured again on the
    next call, and the best rate seen is kept; a quiet measurement is final. Measured once a
    process when the file cannot be read or written."""
    from peftport.assets import peftport_home
    from peftport.atomic import write_json

    path, key = peftport_home() / "cpu_rate.json", _cpu_key()
    known: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        known = json.loads(path.read_text())
    if not isinstance(known, dict):
        known = {}
    entry = known.get(key)
    old = entry.get("rate") if isinstance(entry, dict) else None
    old = float(old) if isinstance(old, int | float) and old > 0 else 0.0
    if old and entry.get("quiet") is True:
        return old
    rate = _measure_rate(seconds)
    quiet = os.getloadavg()[0] <= (os.cpu_count() or 1) - 1
    best = max(rate, old)
    with contextlib.suppress(OSError):  # a read-only home: measured again next time
        write_json(path, {**known, key: {"rate": best, "quiet": quiet}})
    return best


def _measure_rate(seconds: float) -> float:
    """The best rate over RATE_SIZES, `seconds` each (small products are below the CPU's
    peak, large ones near it)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    best = 0.0
    try:
        for n in RATE_SIZES:
            a = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
            best = max(best, product_rate(a, a, seconds))
        return best
    finally:
        torch.set_num_threads(before)


def product_rate(a: Any, b: Any, seconds: float) -> float:
    """FLOP/s of the matrix product a @ b, repeated for `seconds` after one warm-up product,
    on the threads torch has (the caller sets them)."""
    a @ b  # warm up
    count, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        count += 1
    return 2 * a.shape[0] * a.shape[1] * b.shape[1] * count / elapsed


@functools.cache
def mean_tokens(host: str, data: str, max_length: int) -> float | None:
    """Mean tokens per row of `data` as `host` frames it (template, special tokens, truncation
    at max_length) over its first SAMPLE_ROWS training rows (a seeded sample), or None when
    the host's tokenizer or the data is not on this machine yet (nothing is fetched)."""
    from peftport import tasks
    from peftport.data import load_dataset_if_on_disk
    from peftport.errors import PeftportError
    from peftport.hosts import get_host
    from peftport.study.pairchecks import cheap_host_folder

    try:  # an unknown host or a malformed data file: `study run` names it, not the estimate
        spec = get_host(host)
        folder = cheap_host_folder(spec)
        dataset = load_dataset_if_on_disk(data) if folder is not None else None
    except PeftportError:
        return None
    if folder is None or dataset is None or not dataset.train:
        return None
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    except (OSError, ValueError):  # a folder without tokenizer files
        return None
    finally:
        transformers.logging.set_verbosity(verbosity)
    rows = dataset.train[:SAMPLE_ROWS]
    framing = tasks.Framing.for_host(spec.kind, dataset.label_words, max_length)
    try:  # label words this tokenizer cannot tell apart: `study run` says so
        enc = tasks.encode(
            tokenizer, rows, framing, f"{dataset.fingerprints['train']}[:{len(rows)}]"
        )
    except PeftportError:
        return None
    return sum(enc.lengths()) / len(enc)


@dataclass(frozen=True)
class Estimate:
    train_flops: float
    eval_flops: float
    sizes: dict[str, tuple[int, int, str]]  # host -> (params, without embeddings, source)
    unknown: tuple[str, ...]  # hosts of unknown size: their units are not counted
    eval_examples_assumed: bool
    # (host, data) -> mean tokens per row, None where max_length stood in (not on disk)
    lengths: dict[tuple[str, str], float | None] = field(default_factory=dict)

    @property
    def flops(self) -> float:
        return self.train_flops + self.eval_flops

    def gpu_hours(self) -> float:
        return self.flops / (A100_PEAK * A100_SHARE) / 3600

    def cpu_hours(self, rate_per_core: float, cores: int) -> float:
        return self.flops / (rate_per_core * cores * CPU_SHARE) / 3600


def estimate(plan: Any) -> Estimate:
    """Model FLOPs of every unit of a plan (training steps and evaluations)."""
    sizes: dict[str, tuple[int, int, str]] = {}
    lengths: dict[tuple[str, str], float | None] = {}
    unknown: list[str] = []
    train = evals = 0.0
    assumed = False
    for u in plan.units:
        host = u.origin if u.kind == "pretrain" else u.receiver
        data = u.pre_data if u.kind == "pretrain" else u.post_data
        if host not in sizes and host not in unknown:
            got = host_size(host)
            if got is None:
                unknown.append(host)
            else:
                sizes[host] = got
        if host in unknown:
            continue
        n = sizes[host][1]
        t = u.config["train"]
        if (host, data) not in lengths:
            lengths[host, data] = mean_tokens(host, data, t["max_length"]) if data else None
        tokens = min(lengths[host, data] or t["max_length"], t["max_length"])
        train += 4 * n * u.steps * t["batch_size"] * tokens
        caps = [x for x in (t.get("max_eval_examples"), u.config.get("max_examples")) if x]
        assumed = assumed or not caps
        examples = min(caps) if caps else EVAL_EXAMPLES
        evals += 2 * n * u.evals * examples * tokens
    return Estimate(train, evals, sizes, tuple(unknown), assumed, lengths)


def _hours(h: float) -> str:
    if h * 60 < 1:
        return "under a minute"
    if h < 1:
        return f"{h * 60:.0f} min"
    return f"{h:,.0f} h" if h >= 10 else f"{h:.1f} h"


def describe_estimate(plan: Any) -> list[str]:
    """The estimate as lines of `study plan`'s text."""
    e = estimate(plan)
    rate, cores = cpu_matmul_rate(), os.cpu_count() or 1
    padded = [k for k, v in e.lengths.items() if v is None]
    lines = [
        f"compute (estimate): {e.flops:.3g} FLOPs = {e.train_flops:.3g} training "
        f"(4 x N x tokens: forward and backward, the frozen host gets no weight gradients) + "
        f"{e.eval_flops:.3g} evaluation (2 x N x tokens); N: host parameters without "
        "embeddings, tokens: examples x mean row length"
        + (
            f", {EVAL_EXAMPLES:,} examples per evaluation (not capped by the study)"
            if e.eval_examples_assumed
            else ""
        )
        + (", max_length where not on disk yet (an upper bound)" if padded else ""),
        f"  on an A100 at {A100_SHARE:.0%} of {A100_PEAK / 1e12:.0f} bf16 TFLOP/s "
        f"({A100_PEAK * A100_SHARE / 1e12:.0f} TFLOP/s sustained): {_hours(e.gpu_hours())}",
        f"  on this CPU ({cores} cores x {rate / 1e9:.0f} GFLOP/s float32 matmul per core, "
        f"measured now; {CPU_SHARE:.0%} of it sustained): {_hours(e.cpu_hours(rate, cores))}",
    ]
    if e.lengths:
        lines.append(
            "  row lengths (tokens): "
            + "; ".join(
                f"{d} on {h} " + (f"{v:.1f}" if v is not None else "max_length (not on disk)")
                for (h, d), v in e.lengths.items()
            )
        )
    if e.sizes:
        lines.append(
            "  host sizes: "
            + "; ".join(
                f"{h} {p / 1e6:,.1f}M parameters ({b / 1e6:,.1f}M without embeddings, from {src})"
                for h, (p, b, src) in e.sizes.items()
            )
        )
    if e.unknown:
        lines.append(f"  unknown size (units not counted): {', '.join(e.unknown)}")
    return lines
