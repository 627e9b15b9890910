"""GPUs of the local executor: which worker is pinned to which GPU.

`gpu_slots` is the rule (a pure function, tested without a GPU); `visible_gpus` finds the
GPUs of this machine; `local_slots` puts them together for `LocalExecutor`. A worker is pinned
by CUDA_VISIBLE_DEVICES set in its process before torch starts CUDA there, so the unit sees its
GPU alone, as cuda:0.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from peftport.errors import PeftportError

GPUS_ENV = "PEFTPORT_VISIBLE_GPUS"  # the GPU ids the local executor hands out (visible_gpus)


def _ids(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def visible_gpus() -> list[str]:
    """The GPU ids the local executor pins its workers to: $PEFTPORT_VISIBLE_GPUS when set
    (comma-separated ids, empty for none: it overrides what torch sees, e.g. to test the
    pinning on a machine without a GPU), else the entries of CUDA_VISIBLE_DEVICES torch uses,
    else 0 .. torch.cuda.device_count() - 1 (none without CUDA)."""
    if GPUS_ENV in os.environ:
        return _ids(os.environ[GPUS_ENV])
    import torch

    if not torch.cuda.is_available():
        return []
    n = torch.cuda.device_count()
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return _ids(os.environ["CUDA_VISIBLE_DEVICES"])[:n]
    return [str(i) for i in range(n)]


@dataclass(frozen=True)
class Slot:
    """One local worker's place: the GPU it is pinned to (None: no GPU, as on a CPU machine)
    and the environment that pins it, set before torch starts in the worker."""

    gpu: str | None = None
    env: tuple[tuple[str, str], ...] = ()


def gpu_slots(
    gpus: Sequence[str],
    *,
    units_per_gpu: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    cpu_workers: int = 1,
) -> list[Slot]:
    """The local executor's workers, one Slot each (a pure function).

    gpus: the visible GPU ids (`visible_gpus`); device: the study's --device (cpu or mps: no
    GPU is used; cuda:N: only GPU N of `gpus`). Without a GPU: `workers` (default
    `cpu_workers`) unpinned slots. With G GPUs: K = `units_per_gpu` workers per GPU (default 1,
    or as many as `workers` needs), dealt round robin (GPU 0, 1, .., 0, 1, ..) so fewer workers
    than K x G still spread over the GPUs; each worker sees its GPU alone, as cuda:0.
    Options that cannot work raise one PeftportError line."""
    if units_per_gpu is not None and units_per_gpu < 1:
        raise PeftportError(f"--units-per-gpu must be >= 1, got {units_per_gpu}")
    if workers is not None and workers < 1:
        raise PeftportError(f"--workers must be >= 1 for worker processes, got {workers}")
    gpus = list(gpus)
    if device in ("cpu", "mps"):
        gpus = []
        why = f"--device {device}"
    else:
        why = (
            f"${GPUS_ENV} is empty"
            if GPUS_ENV in os.environ
            else "CUDA_VISIBLE_DEVICES and torch show none"
        )
        if device.startswith("cuda:"):
            index = int(device.split(":", 1)[1])
            if index >= len(gpus):
                raise PeftportError(
                    f"--device {device}: only {len(gpus)} GPU(s) are visible "
                    f"({', '.join(gpus) or 'none'})"
                )
            gpus = [gpus[index]]
    if not gpus:
        if units_per_gpu is not None:
            raise PeftportError(
                f"--units-per-gpu {units_per_gpu} needs a GPU, and none is used here ({why})"
            )
        return [Slot() for _ in range(workers or cpu_workers)]
    per = units_per_gpu or (-(-workers // len(gpus)) if workers else 1)
    n = workers or per * len(gpus)
    if n > per * len(gpus):
        raise PeftportError(
            f"--workers {n} is more than --units-per-gpu {per} x {len(gpus)} "
            "GPU(s): raise --units-per-gpu or give fewer workers"
        )
    # a pinned worker sees its GPU as cuda:0: an explicit cuda:N becomes that
    pin = {"PEFTPORT_DEVICE": "cuda:0"} if device.startswith("cuda") else {}
    out = []
    for i in range(n):
        gpu = gpus[i % len(gpus)]
        out.append(Slot(gpu, tuple(sorted({"CUDA_VISIBLE_DEVICES": gpu, **pin}.items()))))
    return out


def _device() -> str:
    """The device `auto` stands for in this process (`peftport.device.ENV`), else auto."""
    from peftport.device import ENV

    return os.environ.get(ENV) or "auto"


def local_slots(
    workers: int | None,
    threads: int = 1,
    units_per_gpu: int | None = None,
    device: str | None = None,
) -> list[Slot]:
    """The local executor's workers on this machine (`gpu_slots` of `visible_gpus`)."""
    device = device or _device()
    gpus = visible_gpus() if device not in ("cpu", "mps") else []
    return gpu_slots(
        gpus,
        units_per_gpu=units_per_gpu,
        workers=workers,
        device=device,
        cpu_workers=max(1, (os.cpu_count() or 1) // threads),
    )
