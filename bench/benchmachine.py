"""The machine line every benchmark prints before its figures (figures differ between
machines; ratios within one run compare like with like)."""

from __future__ import annotations

import os

FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")


def machine(threads: int) -> str:
    import torch

    from peftport.device import cpu_flags, describe_machine

    m = describe_machine()
    have = cpu_flags()
    flags = ", ".join(f"{f} {'yes' if f in have else 'no'}" for f in FLAGS)
    return (
        f"machine: {m['cpu']} ({m['cpus']} CPUs); flags: {flags}; torch {m['torch']} "
        f"(CPU capability {torch.backends.cpu.get_cpu_capability()}); {threads} thread(s), "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"
    )
