"""Does peftport use this machine's GPU properly? One script, one verdict.

    python bench/gpu_check.py [--steps 300] [--max-eval 1000] [--device cuda] [--skip-study]

1. LoRA and the bottleneck adapter on minilm-l6 + rotten_tomatoes, each trained the same way on
   CPU (fp32) and on the GPU in fp32 and in bf16 (bf16 only where the GPU has it): test
   accuracy (the GPU runs must be within 1 point of the CPU run), training throughput of each
   and peak GPU memory (torch.cuda.max_memory_allocated).
2. A 4-unit study (LoRA, minilm-l6 -> minilm-l6: pretrain, ported, sampled, random) run with
   `peftport study run --device cuda` on the local executor (one worker per visible GPU): every
   unit must finish; it names the GPUs the units were pinned to.

On a machine without a CUDA GPU it prints the machine and "no GPU: skipped", and exits 0.
`--device cpu --host tiny-bert --data FILE.csv` runs the whole check with CPU in the GPU's place
(on tiny hosts it checks the script itself; the figures then mean nothing).
Exit status: 0 when every check passes (or skipped), 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TECHNIQUES = ("lora", "adapter")
TOLERANCE = 0.01  # accuracy: 1 point


def header() -> None:
    from peftport.device import describe_machine

    m = describe_machine()
    print(f"CPU: {m['cpu']} ({m['cpus']} logical CPUs)")
    print(f"torch {m['torch']}, CUDA {m['cuda'] or 'none (CPU-only build)'}")
    print(f"GPUs: {', '.join(m['gpus']) if m['gpus'] else 'none'}")


def one_run(args: argparse.Namespace, technique: str, device: str, precision: str) -> dict:
    import torch

    from peftport.configs import TrainConfig
    from peftport.runs import train_run

    cfg = TrainConfig(
        steps=args.steps,
        eval_at=(args.steps,),
        batch_size=16,
        max_length=64,
        max_eval_examples=args.max_eval,
        seed=0,
        device=device,
        precision=precision,
    )
    on_cuda = device.startswith("cuda")
    if on_cuda:
        gc.collect()  # the previous run's model (reference cycles) off the GPU first
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    out = train_run(args.host, technique, args.data, cfg, progress=False)
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**20 if on_cuda else None
    placement = out.result.placement
    return {
        "technique": technique,
        "device": placement["device"],
        "precision": placement["precision"],
        "gpu": placement["gpu"],
        "accuracy": out.result.metrics[args.steps]["accuracy"],
        "examples_per_second": out.result.examples_per_second,
        "seconds": seconds,
        "peak_mb": peak,
    }


def precisions(device: str) -> list[str]:
    """fp32, and bf16 where the device has it (a GPU without bf16 is reported, not failed)."""
    from peftport.device import resolve
    from peftport.errors import PeftportError

    out = ["fp32"]
    try:
        resolve(device, "bf16")
        out.append("bf16")
    except PeftportError as e:
        print(f"bf16 skipped: {e}")
    return out


def study_check(args: argparse.Namespace, tmp: Path) -> tuple[bool, str]:
    """Run a 4-unit study on the device through the command line; (passed, what happened)."""
    data = args.data if not Path(args.data).exists() else str(Path(args.data).resolve())
    study = tmp / "gpu-check.yaml"
    study.write_text(
        "name: gpu-check\n"
        "techniques: [lora]\n"
        f"pairs: [[{args.host}, {args.host}]]\n"
        f"data: [[{data}, {data}]]\n"
        f"pre_steps: [{args.study_steps}]\npost_steps: [{max(1, args.study_steps // 2)}]\n"
        "seeds: [0]\n"
        f"train: {{batch_size: 16, max_length: 64, max_eval_examples: {args.max_eval}}}\n"
        "compare: {texts: 16, max_length: 32}\n"
    )
    cmd = [
        sys.executable,
        "-m",
        "peftport",
        "study",
        "run",
        str(study),
        "--store",
        str(tmp / "gpu-check.sqlite"),
        "--device",
        args.device,
        # "cuda" without an index: the executor's default, one worker per visible GPU, so a
        # machine with several GPUs shows that every one of them takes units
        *([] if args.device == "cuda" else ["--workers", "1"]),
        "--no-progress",
        "--json",
    ]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if res.returncode != 0:
        tail = (res.stderr.strip().splitlines() or ["(no output)"])[-1]
        return False, f"study run failed (exit {res.returncode}): {tail}"
    out = json.loads(res.stdout)
    ok = out["units"] == 4 and out["done"] == 4 and out["failed"] == 0
    gpus = units_gpus(tmp / "gpu-check.sqlite")
    return ok, (
        f"{out['done']}/{out['units']} units done, {out['failed']} failed, "
        f"in {seconds:.0f} s on {args.device}"
        + (f" (units ran on GPU(s) {', '.join(gpus)})" if gpus else "")
    )


def units_gpus(store: Path) -> list[str]:
    """The GPUs the store's units were pinned to (CUDA_VISIBLE_DEVICES in their environment)."""
    import sqlite3

    with contextlib.closing(sqlite3.connect(f"file:{store}?mode=ro", uri=True)) as db:
        rows = db.execute("SELECT result FROM units WHERE status = 'done'").fetchall()
    envs = [(json.loads(raw or "{}") or {}).get("environment") or {} for (raw,) in rows]
    return sorted({e["cuda_visible_devices"] for e in envs if "cuda_visible_devices" in e})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="the accelerator to check (default cuda)")
    p.add_argument("--host", default="minilm-l6")
    p.add_argument("--data", default="rotten_tomatoes")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--max-eval", type=int, default=1000)
    p.add_argument("--study-steps", type=int, default=50)
    p.add_argument("--skip-study", action="store_true")
    args = p.parse_args(argv)

    import torch

    header()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no GPU: skipped")
        return 0
    from peftport.device import resolve

    resolve(args.device)  # e.g. cuda:3 on a one-GPU machine: one clear line
    problems: list[str] = []
    rows = []
    for technique in TECHNIQUES:
        cpu = one_run(args, technique, "cpu", "fp32")
        rows.append(cpu)
        for precision in precisions(args.device):
            r = one_run(args, technique, args.device, precision)
            r["speedup"] = r["examples_per_second"] / max(cpu["examples_per_second"], 1e-9)
            rows.append(r)
            gap = abs(r["accuracy"] - cpu["accuracy"])
            if gap > TOLERANCE:
                problems.append(
                    f"{technique} {precision} on {r['device']}: accuracy "
                    f"{r['accuracy']:.4f} vs CPU {cpu['accuracy']:.4f} "
                    f"(gap {100 * gap:.1f} points > 1)"
                )

    print(f"\n{args.steps} steps, batch 16, length 64, {args.host} + {args.data}")
    print(
        f"{'technique':<10}{'device':<10}{'precision':<10}{'accuracy':>9}"
        f"{'examples/s':>12}{'vs CPU':>8}{'peak GPU MB':>13}"
    )
    for r in rows:
        speed = f"{r['speedup']:.1f}x" if "speedup" in r else "-"
        peak = f"{r['peak_mb']:.0f}" if r["peak_mb"] is not None else "-"
        print(
            f"{r['technique']:<10}{r['device']:<10}{r['precision']:<10}{r['accuracy']:>9.4f}"
            f"{r['examples_per_second']:>12.1f}{speed:>8}{peak:>13}"
        )

    if not args.skip_study:
        with tempfile.TemporaryDirectory() as tmp:
            ok, what = study_check(args, Path(tmp))
        print(f"\nstudy (4 units, local executor, --device {args.device}): {what}")
        if not ok:
            problems.append(f"study: {what}")

    if problems:
        print("\nverdict: PROBLEMS")
        for line in problems:
            print(f"  - {line}")
        return 1
    print(
        "\nverdict: OK (GPU accuracy within 1 point of CPU"
        + ("" if args.skip_study else "; the study ran on the device")
        + ")"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
