"""Benchmark of the training engine (issue 4). Prints its figures; asserts nothing.

    python bench/bench_engine.py [--steps 500] [--speed-steps 100] [--eval-examples 500] [--skip-quality]

1. Quality: each technique trained on minilm-l6 + rotten_tomatoes (batch 16), test accuracy.
2. Zero-shot after porting each trained module minilm-l6 -> minilm-l6-tuned (ported vs sampled
   vs random), the "well above chance" check.
3. Speed: this loop against the Hugging Face `Trainer` on the same model, module, data and batch
   size, side by side in one run, each arm in its own process: the Trainer as configured by
   default (batches padded to their longest row in random order) and with `group_by_length`
   (rows of similar length batched together, as this loop does: the honest anchor); training
   examples/s, the ratios, padded tokens per step, model-FLOP utilisation (MFU) against a
   matrix-product peak measured here (and against the flag-based peak, which assumes two
   512-bit FMA pipes), and each arm's peak memory (max RSS).
4. Evaluation: forward-only scoring of test examples (sorted by length, batch 64), its MFU, and
   what one 100-example evaluation costs in training steps.
5. bf16 autocast against fp32: speed and accuracy, one technique.

Prints the machine (CPU model, AVX/bf16 flags, torch's CPU capability, threads) first: figures
differ between machines, ratios within one run compare like with like.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).parent))
from benchmachine import machine  # noqa: E402  (the same machine line in every bench)

# a row of the quality table: technique at its default config, or a named variant of one
VARIANTS = {"prefix-flat": ("prefix", {"flat": True})}
TECHNIQUES = ("adapter", "lora", "prefix", "prefix-flat", "compacter", "prompt", "ia3")
# 1e-3 unless named. Prefix through its MLP: at 1e-3 and above the loss stays flat (at 5e-3 the
# AUC stays below 0.5 for 300 steps); at 3e-4 the AUC rises (0.81 at 300 steps). The flat prefix
# and the small modules want a higher rate.
LR_DEFAULT = "prefix=3e-4,prefix-flat=1e-2,compacter=3e-3,prompt=1e-2,ia3=3e-3"


def parse_lrs(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = part.partition("=")
        if name not in TECHNIQUES:
            raise SystemExit(f"--lr: unknown technique {name!r}; one of {', '.join(TECHNIQUES)}")
        out[name] = float(value)
    return out


def peak_flops() -> tuple[float, str]:
    """Flag-based fp32 peak: cores x clock x FLOP/cycle (2 FMA pipes x SIMD lanes x 2). An
    upper bound that some CPUs do not reach (Zen 4 runs 512-bit FMAs as two 256-bit halves)."""
    flags = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in flags.splitlines() if "cpu MHz" in line)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2
    cores = os.cpu_count() or 1
    return cores * mhz * 1e6 * per_cycle, (
        f"{cores} cores x {mhz:.0f} MHz x {per_cycle} fp32 FLOP/cycle "
        f"({'avx512' if lanes == 16 else 'avx2' if lanes == 8 else 'sse'}, 2 FMA pipes assumed)"
    )


def _matmul_peak(threads: int, q) -> None:
    """The best sustained fp32 rate of square matrix products (256 to 2048) and of the host's
    own shapes (64 rows x 384 @ 384 x 1536), `threads` threads, 0.5 s each."""
    import torch

    from peftport.study.compute import product_rate

    torch.set_num_threads(threads)
    gen = torch.Generator().manual_seed(0)
    shapes = [(n, n, n) for n in (256, 512, 1024, 2048)] + [(16 * 40, 384, 1536)]
    best, rates = 0.0, {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k, generator=gen), torch.randn(k, n, generator=gen)
        rate = product_rate(a, b, 0.5)
        rates[f"{m}x{k}@{k}x{n}"] = rate
        best = max(best, rate)
    q.put(dict(peak=best, rates=rates))


def model_flops(n_params: int, tokens: int, training: bool = True) -> float:
    """FLOPs over `tokens` tokens: forward 2*N*T, and in PEFT training also the backward pass
    through the activations (2*N*T; the frozen weights get no gradient), N the parameters that
    multiply (embedding tables are looked up, not multiplied), attention scores ignored (short
    rows)."""
    return (4.0 if training else 2.0) * n_params * tokens


def matmul_parameters(model) -> int:
    """Parameters that take part in matrix products: all but the embedding tables."""
    import torch

    embedded = {
        id(p)
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters(recurse=False)
    }
    return sum(p.numel() for p in model.parameters() if id(p) not in embedded)


def _quality(technique: str, steps: int, lr: float, q) -> None:
    import torch

    from peftport.data import load_dataset
    from peftport.engine import TrainConfig
    from peftport.module import save_module
    from peftport.runs import train_run

    torch.set_num_threads(2)
    data = load_dataset("rotten_tomatoes")
    cfg = TrainConfig(steps=steps, eval_at=(steps,), seed=0, lr=lr)
    name, config = VARIANTS.get(technique, (technique, None))
    out = train_run("minilm-l6", name, data, cfg, technique_config=config, progress=False)
    path = save_module(f"/tmp/peftport-bench/{technique}", out.tensors, out.meta, overwrite=True)
    q.put(
        dict(
            technique=technique,
            metrics=out.result.metrics[steps],
            module=str(path),
            trainable=out.meta["trainable"],
            seconds=out.result.train_seconds,
            lr=lr,
        )
    )


def _zero_shot(module: str, q) -> None:
    import torch

    from peftport.porting_io import port_module
    from peftport.runs import evaluate_run

    torch.set_num_threads(2)
    res = {}
    for cond in ("ported", "sampled", "random"):
        out = f"{module}-{cond}"
        port_module(Path(module), "minilm-l6-tuned", cond, 0, Path(out), force=True)
        res[cond] = evaluate_run(out, "minilm-l6-tuned", "rotten_tomatoes")["accuracy"]
    q.put(res)


def _lora_host(cfg):
    """minilm-l6 with a fresh LoRA (seed 0), 2 threads, and Rotten Tomatoes encoded for it."""
    import torch

    from peftport.data import load_dataset
    from peftport.runs import encodings, host_for
    from peftport.techniques import attach

    torch.set_num_threads(2)
    data = load_dataset("rotten_tomatoes")
    h = host_for("minilm-l6", "lora", data)
    attach(h.model, "bert", "lora", seed=0)
    return h, *encodings(h, data, cfg)


def _count_tokens() -> tuple[list[int], list[int]]:
    """From now on every padded batch adds its padded and its real token counts to the lists."""
    import peftport.tasks as tasks

    padded: list[int] = []
    real: list[int] = []
    orig = tasks._pad

    def counting_pad(rows, pad, *a):
        ids, mask = orig(rows, pad, *a)
        padded.append(ids.numel())
        real.append(int(mask.sum()))
        return ids, mask

    tasks._pad = counting_pad
    return padded, real


def _speed_ours(steps: int, bf16: bool, q) -> None:
    from peftport.engine import TrainConfig, train

    cfg = TrainConfig(steps=steps, seed=0, bf16=bf16)
    h, tr, _ = _lora_host(cfg)
    tokens, real = _count_tokens()
    res = train(h.model, h.kind, tr, None, cfg, progress=False)
    n = matmul_parameters(h.model)
    q.put(
        dict(
            eps=res.examples_per_second,
            seconds=res.train_seconds,
            tokens=sum(tokens),
            real_tokens=sum(real),
            params=n,
            maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    )


def _speed_trainer(steps: int, group_by_length: bool, q) -> None:
    import torch
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    from peftport.data import load_dataset
    from peftport.runs import host_for
    from peftport.techniques import attach

    torch.set_num_threads(2)
    data = load_dataset("rotten_tomatoes")
    h = host_for("minilm-l6", "lora", data)
    attach(h.model, "bert", "lora", seed=0)
    enc = h.tokenizer([e.text for e in data.train], truncation=True, max_length=64)
    rows = [
        {"input_ids": i, "attention_mask": m, "labels": e.label}
        for i, m, e in zip(enc["input_ids"], enc["attention_mask"], data.train, strict=True)
    ]
    tokens = []
    base = DataCollatorWithPadding(h.tokenizer)

    real: list[int] = []

    def collate(batch):
        out = base(batch)
        tokens.append(out["input_ids"].numel())
        real.append(int(out["attention_mask"].sum()))
        return out

    args = TrainingArguments(
        output_dir="/tmp/peftport-bench/trainer",
        max_steps=steps,
        per_device_train_batch_size=16,
        learning_rate=1e-3,
        warmup_ratio=0.06,
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        weight_decay=0.0,
        logging_steps=10_000,
        save_strategy="no",
        report_to=[],
        seed=0,
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        group_by_length=group_by_length,
    )
    trainer = Trainer(model=h.model, args=args, train_dataset=rows, data_collator=collate)
    t0 = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - t0
    n = matmul_parameters(h.model)
    q.put(
        dict(
            eps=steps * 16 / seconds,
            seconds=seconds,
            tokens=sum(tokens),
            real_tokens=sum(real),
            params=n,
            maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    )


def _speed_eval(n_examples: int, q) -> None:
    """Forward-only scoring of `n_examples` test examples as a study evaluates them."""
    from peftport.engine import TrainConfig, evaluate

    h, _, ev = _lora_host(TrainConfig(steps=1, seed=0, max_eval_examples=n_examples))
    evaluate(h.model, h.kind, ev)  # warm up
    tokens, _ = _count_tokens()
    t0 = time.perf_counter()
    evaluate(h.model, h.kind, ev)
    seconds = time.perf_counter() - t0
    q.put(
        dict(
            eps=len(ev) / seconds,
            seconds=seconds,
            examples=len(ev),
            tokens=sum(tokens),
            params=matmul_parameters(h.model),
        )
    )


def _bf16_quality(bf16: bool, steps: int, q) -> None:
    import torch

    from peftport.engine import TrainConfig
    from peftport.runs import train_run

    torch.set_num_threads(2)
    cfg = TrainConfig(steps=steps, eval_at=(steps,), seed=0, bf16=bf16)
    out = train_run("minilm-l6", "lora", "rotten_tomatoes", cfg, progress=False)
    q.put(dict(metrics=out.result.metrics[steps], eps=out.result.examples_per_second))


def run(fn, *args):
    """Each measurement in a fresh process: clean memory figures, no shared caches."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=fn, args=(*args, q))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--speed-steps", type=int, default=100)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--bf16", action="store_true", help="also time bf16 autocast")
    ap.add_argument("--techniques", default=",".join(TECHNIQUES))
    ap.add_argument(
        "--lr",
        default=LR_DEFAULT,
        help="peak learning rate per technique, e.g. 'lora=1e-3,prefix=5e-3' (default: "
        f"{LR_DEFAULT})",
    )
    args = ap.parse_args()
    report: dict = {}

    print(machine(2), flush=True)
    flag_peak, how = peak_flops()
    measured = run(_matmul_peak, 2)
    peak = measured["peak"]
    print(
        f"peak: {peak / 1e9:.0f} GFLOP/s fp32 measured (best of "
        + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in measured["rates"].items())
        + f", 2 threads); flag-based {flag_peak / 1e9:.0f} GFLOP/s ({how})",
        flush=True,
    )
    report["peak"] = dict(measured=measured, flag_based=flag_peak)

    def mfu(r: dict, training: bool) -> str:
        used = model_flops(r["params"], r["tokens"], training) / r["seconds"]
        return f"MFU {used / peak:6.1%} measured peak ({used / flag_peak:5.1%} flag-based)"

    if not args.skip_speed:
        print(f"\n== speed: LoRA on minilm-l6, batch 16, {args.speed_steps} steps, 2 threads ==")
        arms = [
            ("peftport loop", _speed_ours, (args.speed_steps, False)),
            ("HF Trainer", _speed_trainer, (args.speed_steps, False)),
            ("HF Trainer, by length", _speed_trainer, (args.speed_steps, True)),
        ]
        if args.bf16:  # slow where the CPU has no native bf16 (AVX2 only)
            arms.append(("peftport loop, bf16", _speed_ours, (args.speed_steps, True)))
        speed = {}
        for name, fn, fargs in arms:
            r = speed[name] = run(fn, *fargs)
            r["tps"] = r["real_tokens"] / r["seconds"]
            print(
                f"{name:22s} {r['eps']:7.1f} examples/s  {r['tps']:7.0f} real tokens/s  "
                f"{r['tokens'] / args.speed_steps:5.0f} padded tokens/step "
                f"({r['real_tokens'] / r['tokens']:4.0%} real)  {mfu(r, training=True)}  "
                f"peak RSS {r['maxrss_mb']:6.0f} MB",
                flush=True,
            )
        # Real (unpadded) tokens per second: a sampler that draws longer rows first (the
        # Trainer's group_by_length starts each 50-batch group with its longest) is not
        # rewarded or punished for which rows it drew in a short run.
        ours = speed["peftport loop"]["tps"]
        print(
            f"ratio peftport / Trainer, real tokens per second: "
            f"{ours / speed['HF Trainer']['tps']:.2f}x; / Trainer with group_by_length (the "
            f"honest anchor): {ours / speed['HF Trainer, by length']['tps']:.2f}x",
            flush=True,
        )
        report["speed"] = speed

        ev = run(_speed_eval, args.eval_examples)
        step_seconds = speed["peftport loop"]["seconds"] / args.speed_steps
        per100 = ev["seconds"] / ev["examples"] * 100
        print(
            f"\n== evaluation: {ev['examples']} test examples, batch 64 sorted by length, 2 "
            f"threads ==\n{ev['eps']:7.1f} examples/s  {ev['tokens'] / ev['examples']:5.1f} "
            f"padded tokens/example  {mfu(ev, training=False)}; one 100-example evaluation costs "
            f"{per100:.2f} s = {per100 / step_seconds:.2f} training steps of 16 (a training "
            "example is a forward and a backward pass: about 2x a scored one's FLOPs)",
            flush=True,
        )
        report["evaluation"] = dict(ev, per100_seconds=per100, step_seconds=step_seconds)

    if not args.skip_quality:
        lrs = parse_lrs(args.lr)
        print(
            f"\n== quality: minilm-l6 + rotten_tomatoes, {args.steps} steps, batch 16, lr 1e-3 "
            f"unless named ({args.lr}) =="
        )
        rows = []
        for t in args.techniques.split(","):
            q = run(_quality, t, args.steps, lrs.get(t, 1e-3))
            z = run(_zero_shot, q["module"])
            rows.append((t, q, z))
            m = q["metrics"]
            print(
                f"{t:12s} lr {q['lr']:.0e}  acc {m['accuracy']:.4f}  F1 {m['macro_f1']:.4f}  AUC {m['auc']:.4f}  "
                f"({q['trainable']:,} trainable, {q['seconds']:.0f} s) | zero-shot on "
                f"minilm-l6-tuned: ported {z['ported']:.4f} sampled {z['sampled']:.4f} "
                f"random {z['random']:.4f}",
                flush=True,
            )
        report["quality"] = [dict(q, zero_shot=z) for _t, q, z in rows]
        if args.bf16:
            b32 = run(_bf16_quality, False, args.steps)
            b16 = run(_bf16_quality, True, args.steps)
            print(
                f"\n== bf16 autocast, LoRA {args.steps} steps: accuracy fp32 "
                f"{b32['metrics']['accuracy']:.4f} vs bf16 {b16['metrics']['accuracy']:.4f}; "
                f"speed {b16['eps'] / b32['eps']:.2f}x =="
            )
            report["bf16"] = dict(fp32=b32, bf16=b16)
    Path("/tmp/peftport-bench/report.json").write_text(json.dumps(report, indent=2, default=str))
    print("\nfull figures: /tmp/peftport-bench/report.json")


if __name__ == "__main__":
    os.makedirs("/tmp/peftport-bench", exist_ok=True)
    sys.exit(main())
