"""bf16 autocast against fp32 on CPU (issue 12): accuracy and CPU time, side by side.

    OMP_NUM_THREADS=1 python bench/bench_precision.py [--steps 120] [--seeds 0,1]
        [--eval-examples 500] [--threads 1] [--techniques adapter,lora,prefix-flat,compacter]

Each of the four study techniques, at the quick preset's settings (batch 16, length 64, warmup
6 %, lr 3e-3 for adapter and LoRA, 1e-2 for the flat prefix and Compacter), is trained on
minilm-l6 + rotten_tomatoes in fp32 and in bf16 for each seed, through the library's own
`runs.train_run` / `runs.evaluate_run` with `TrainConfig(precision=...)`: what users run.
The fp32 and bf16 runs alternate (fp32, bf16 for one technique and seed, then the next), so
load from other work on a shared machine falls on both alike. Timing is process CPU time
(`time.process_time`: what this process computed, less sensitive to other processes than wall
time) and wall time:
- training: CPU-s per step of the whole `train_run` call (attaching and tokenising included,
  the same in both precisions), and the loop's own wall s/step (`TrainResult.train_seconds`);
- evaluation: CPU-s and wall s per example of `evaluate_run` on a loaded host (tokenising the
  evaluated examples included).
Prints the machine (CPU model, bf16/AVX flags, torch, threads) with the figures and the
verdict `cpu_bf16_verdict` draws from them (the rule `--precision auto` on CPU follows).
Asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).parent))
from benchmachine import machine  # noqa: E402

# technique row -> (technique, config, lr): the quick preset's pretraining settings
QUICK = {
    "adapter": ("adapter", None, 3e-3),
    "lora": ("lora", None, 3e-3),
    "prefix-flat": ("prefix", {"flat": True}, 1e-2),
    "compacter": ("compacter", None, 1e-2),
}


def cpu_bf16_verdict(acc_diffs: dict[str, float], train_ratio: float, eval_ratio: float) -> str:
    """The issue's rule: bf16 on this CPU if it is faster (bf16/fp32 CPU time below 1 in
    training and evaluation) and every technique's accuracy, averaged over seeds, is within
    0.5 points of fp32's."""
    off = {t: d for t, d in acc_diffs.items() if abs(d) > 0.5}
    if train_ratio >= 1 or eval_ratio >= 1:
        return (
            f"fp32: bf16 is not faster here (CPU time bf16/fp32 {train_ratio:.2f} training, "
            f"{eval_ratio:.2f} evaluation)"
        )
    if off:
        return (
            "fp32: bf16 moves accuracy more than 0.5 points ("
            + ", ".join(f"{t} {d:+.2f}" for t, d in off.items())
            + ")"
        )
    return (
        f"bf16: {1 / train_ratio:.2f}x faster training, {1 / eval_ratio:.2f}x faster evaluation "
        f"per CPU-second, every technique within 0.5 points of fp32's accuracy"
    )


def one_arm(row: str, seed: int, precision: str, steps: int, n_eval: int, data) -> dict:
    """Train one module in `precision` and evaluate it in the same precision; timings."""
    from peftport.device import resolve
    from peftport.engine import TrainConfig
    from peftport.runs import evaluate_run, host_for, train_run

    name, config, lr = QUICK[row]
    cfg = TrainConfig(
        steps=steps,
        seed=seed,
        lr=lr,
        batch_size=16,
        max_length=64,
        warmup_ratio=0.06,
        precision=precision,
    )
    host = host_for("minilm-l6", name, data)  # loaded outside the timed span
    c0, w0 = time.process_time(), time.perf_counter()
    out = train_run(host, name, data, cfg, technique_config=config, progress=False)
    train_cpu, train_wall = time.process_time() - c0, time.perf_counter() - w0
    assert out.result.placement["precision"] == precision, out.result.placement
    del host, out.host  # the trained model is not needed again; free it before the next load
    fresh = host_for("minilm-l6", name, data)
    c0, w0 = time.process_time(), time.perf_counter()
    metrics = evaluate_run(
        (out.tensors, out.meta),
        fresh,
        data,
        max_examples=n_eval,
        max_length=64,
        placement=resolve("cpu", precision),
    )
    eval_cpu, eval_wall = time.process_time() - c0, time.perf_counter() - w0
    return dict(
        technique=row,
        seed=seed,
        precision=precision,
        accuracy=metrics["accuracy"],
        auc=metrics["auc"],
        train_cpu_per_step=train_cpu / steps,
        train_wall_per_step=train_wall / steps,
        loop_wall_per_step=out.result.train_seconds / steps,
        eval_cpu_per_example=eval_cpu / n_eval,
        eval_wall_per_example=eval_wall / n_eval,
    )


def summarise(rows: list[dict], technique: str) -> dict:
    """Means over seeds per precision, the difference in points and the bf16/fp32 ratios."""
    out: dict = {"technique": technique}
    for p in ("fp32", "bf16"):
        mine = [r for r in rows if r["technique"] == technique and r["precision"] == p]
        for key in mine[0]:
            if isinstance(mine[0][key], float):
                out[f"{p}_{key}"] = statistics.fmean(r[key] for r in mine)
    out["accuracy_diff_points"] = 100 * (out["bf16_accuracy"] - out["fp32_accuracy"])
    out["auc_diff_points"] = 100 * (out["bf16_auc"] - out["fp32_auc"])
    for key in (
        "train_cpu_per_step",
        "loop_wall_per_step",
        "eval_cpu_per_example",
        "eval_wall_per_example",
    ):
        out[f"ratio_{key}"] = out[f"bf16_{key}"] / out[f"fp32_{key}"]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--eval-examples", type=int, default=500)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--techniques", default=",".join(QUICK))
    ap.add_argument("--out", default="/tmp/peftport-bench/precision.json")
    args = ap.parse_args()
    techniques = args.techniques.split(",")
    unknown = [t for t in techniques if t not in QUICK]
    if unknown:
        raise SystemExit(f"--techniques: unknown {unknown}; choose from {', '.join(QUICK)}")
    seeds = [int(s) for s in args.seeds.split(",")]

    import torch

    from peftport.data import load_dataset

    torch.set_num_threads(args.threads)
    head = machine(args.threads)
    print(head, flush=True)
    print(
        f"timings taken under load: the machine is shared with other work; fp32 and bf16 "
        f"alternate so load falls on both. {args.steps} steps, batch 16, length 64; "
        f"evaluation on {args.eval_examples} test examples; seeds {seeds}\n",
        flush=True,
    )
    data = load_dataset("rotten_tomatoes")
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    rows = []
    for t in techniques:
        for seed in seeds:
            for precision in ("fp32", "bf16"):
                r = one_arm(t, seed, precision, args.steps, args.eval_examples, data)
                rows.append(r)
                print(
                    f"  {t:11s} seed {seed} {precision}: acc {r['accuracy']:.4f} AUC "
                    f"{r['auc']:.4f}  train {r['train_cpu_per_step']:.3f} CPU-s/step "
                    f"(loop {r['loop_wall_per_step']:.3f} wall s/step)  eval "
                    f"{1000 * r['eval_cpu_per_example']:.1f} CPU-ms/example "
                    f"({1000 * r['eval_wall_per_example']:.1f} wall ms)",
                    flush=True,
                )
    summary = [summarise(rows, t) for t in techniques]
    print(f"\n{head}\nper technique, means over seeds {seeds} (timings under load):")
    print(
        f"{'technique':11s} {'acc fp32':>8s} {'acc bf16':>8s} {'d pts':>6s} {'AUC fp32':>8s} "
        f"{'AUC bf16':>8s} {'d pts':>6s} | {'train CPU-s/step':>17s} {'x':>5s} | "
        f"{'eval CPU-ms/ex':>15s} {'x':>5s} | {'wall x train/eval':>17s}"
    )
    for s in summary:
        print(
            f"{s['technique']:11s} {s['fp32_accuracy']:8.4f} {s['bf16_accuracy']:8.4f} "
            f"{s['accuracy_diff_points']:+6.2f} {s['fp32_auc']:8.4f} {s['bf16_auc']:8.4f} "
            f"{s['auc_diff_points']:+6.2f} | {s['fp32_train_cpu_per_step']:7.3f} -> "
            f"{s['bf16_train_cpu_per_step']:6.3f} {s['ratio_train_cpu_per_step']:5.2f} | "
            f"{1000 * s['fp32_eval_cpu_per_example']:6.1f} -> "
            f"{1000 * s['bf16_eval_cpu_per_example']:5.1f} {s['ratio_eval_cpu_per_example']:5.2f} | "
            f"{s['ratio_loop_wall_per_step']:7.2f} / {s['ratio_eval_wall_per_example']:5.2f}"
        )
    verdict = cpu_bf16_verdict(
        {s["technique"]: s["accuracy_diff_points"] for s in summary},
        train_ratio=statistics.fmean(s["ratio_train_cpu_per_step"] for s in summary),
        eval_ratio=statistics.fmean(s["ratio_eval_cpu_per_example"] for s in summary),
    )
    print(f"\nverdict: {verdict}")
    print(
        f"bench total: {time.process_time() - start_cpu:.0f} CPU-s, "
        f"{time.perf_counter() - start_wall:.0f} wall s"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(
        json.dumps(
            dict(machine=head, args=vars(args), runs=rows, summary=summary, verdict=verdict),
            indent=2,
        )
    )
    print(f"full figures: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
