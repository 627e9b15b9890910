"""Benchmark of the training engine (issue 4). Prints its figures; asserts nothing.

    python bench/bench_engine.py [--steps 500] [--speed-steps 40] [--skip-quality]

1. Quality: each technique trained on minilm-l6 + rotten_tomatoes (batch 16), test accuracy.
2. Zero-shot after porting each trained module minilm-l6 -> minilm-l6-tuned (ported vs sampled
   vs random), the "well above chance" check.
3. Speed: this loop against the Hugging Face `Trainer` on the same model, module, data and batch
   size, side by side in one run, each arm in its own process; training examples/s, the ratio,
   model-FLOP utilisation against the machine's peak, and each arm's peak memory (max RSS).
4. bf16 autocast against fp32: speed and accuracy, one technique.
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
    """Physical fp32 peak: cores x clock x FLOP/cycle (2 FMA pipes x SIMD lanes x 2)."""
    flags = Path("/proc/cpuinfo").read_text()
    mhz = max(float(line.split(":")[1]) for line in flags.splitlines() if "cpu MHz" in line)
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2
    cores = os.cpu_count() or 1
    return cores * mhz * 1e6 * per_cycle, (
        f"{cores} cores x {mhz:.0f} MHz x {per_cycle} fp32 FLOP/cycle "
        f"({'avx512' if lanes == 16 else 'avx2' if lanes == 8 else 'sse'}, 2 FMA pipes assumed)"
    )


def model_flops(n_params: int, tokens: int) -> float:
    """FLOPs of PEFT training over `tokens` tokens: forward 2*N*T plus backward through the
    activations (2*N*T; the frozen weights get no gradient), N the parameters that multiply
    (embedding tables are looked up, not multiplied), attention scores ignored (short rows)."""
    return 4.0 * n_params * tokens


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


def _speed_ours(steps: int, bf16: bool, q) -> None:
    import torch

    from peftport.data import load_dataset
    from peftport.engine import TrainConfig, train
    from peftport.runs import encodings, host_for
    from peftport.techniques import attach

    torch.set_num_threads(2)
    data = load_dataset("rotten_tomatoes")
    h = host_for("minilm-l6", "lora", data)
    attach(h.model, "bert", "lora", seed=0)
    cfg = TrainConfig(steps=steps, seed=0, bf16=bf16)
    tr, _ = encodings(h, data, cfg)
    tokens = []
    import peftport.tasks as tasks

    orig = tasks._pad

    def counting_pad(rows, pad):
        ids, mask = orig(rows, pad)
        tokens.append(ids.numel())
        return ids, mask

    tasks._pad = counting_pad
    res = train(h.model, h.kind, tr, None, cfg, progress=False)
    n = matmul_parameters(h.model)
    q.put(
        dict(
            eps=res.examples_per_second,
            seconds=res.train_seconds,
            tokens=sum(tokens),
            params=n,
            maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        )
    )


def _speed_trainer(steps: int, q) -> None:
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

    def collate(batch):
        out = base(batch)
        tokens.append(out["input_ids"].numel())
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
            params=n,
            maxrss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
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
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--skip-speed", action="store_true")
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

    peak, how = peak_flops()
    print(f"machine peak: {peak / 1e9:.0f} GFLOP/s fp32 ({how})", flush=True)
    if not args.skip_speed:
        print(f"\n== speed: LoRA on minilm-l6, batch 16, {args.speed_steps} steps, 2 threads ==")
        arms = [
            ("peftport loop", _speed_ours, (args.speed_steps, False)),
            ("HF Trainer", _speed_trainer, (args.speed_steps,)),
        ]
        if args.bf16:  # slow where the CPU has no native bf16 (AVX2 only)
            arms.append(("peftport loop, bf16", _speed_ours, (args.speed_steps, True)))
        speed = {}
        for name, fn, fargs in arms:
            r = speed[name] = run(fn, *fargs)
            mfu = model_flops(r["params"], r["tokens"]) / r["seconds"] / peak
            print(
                f"{name:22s} {r['eps']:7.1f} examples/s  {r['tokens'] / args.speed_steps:7.0f} "
                f"padded tokens/step  MFU {mfu:6.1%}  peak RSS {r['maxrss_mb']:6.0f} MB",
                flush=True,
            )
        ratio = speed["peftport loop"]["eps"] / speed["HF Trainer"]["eps"]
        print(f"ratio peftport / Trainer: {ratio:.2f}x", flush=True)
        report["speed"] = speed

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
