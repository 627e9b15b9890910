"""Where a run computes and in what precision: `device` and `precision` resolved once.

- device: auto (CUDA if present, else MPS if present, else CPU; `$PEFTPORT_DEVICE` overrides
  auto, which is how `peftport study run --device` reaches its worker processes), cpu, cuda,
  cuda:N, mps;
- precision: auto (bf16 autocast on a CUDA GPU that supports it, and on a CPU that computes
  bfloat16 natively, else fp32), fp32, bf16 (autocast on CUDA, or on CPU as the older `bf16`
  setting did), fp16 (CUDA only, with a gradient scaler). On CPU auto is `cpu_auto_precision`
  of the CPU's flags: bf16 where it has avx512_bf16 or amx_bf16 (measured there: faster and as
  accurate, docs/engine.md), fp32 elsewhere (on AVX2 bf16 is emulated and many times slower).
  bf16 changes the numbers: `precision: fp32` keeps them bit-identical on every CPU.
- TF32 matmuls are allowed on CUDA unless `deterministic`.

Choices that cannot work on this machine (cuda without a GPU, fp16 on CPU, bf16 on a GPU
without it, mps without MPS) raise one PeftportError line, before any host loads.
This module imports torch only inside its functions: the command line checks a device name's
spelling (`name_problem`) without it.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from peftport.errors import PeftportError

DEVICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
ENV = "PEFTPORT_DEVICE"  # the device `auto` stands for, when set
# On a GPU the loss is brought to the host every LOSS_EVERY steps (one sync, not one per step);
# on CPU every step, so CPU logs are what they always were.
LOSS_EVERY = 25

# CPU flags (as /proc/cpuinfo spells them) of native bfloat16 arithmetic: AVX512-BF16 (Intel
# Cooper Lake and later, AMD Zen 4 and later) and AMX-BF16 (Intel Sapphire Rapids and later).
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")

_NAME = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def name_problem(name: Any) -> str | None:
    """Why `name` is not a device name (spelling only, nothing probed), or None."""
    if isinstance(name, str) and _NAME.match(name):
        return None
    return f"device must be one of auto, cpu, cuda, cuda:N, mps, got {name!r}"


@dataclass(frozen=True)
class Placement:
    """A resolved device and precision: what a run computes on, and how."""

    device: str  # "cpu", "cuda:0", "mps"
    precision: str  # fp32 | bf16 | fp16
    gpu: str | None = None  # torch.cuda.get_device_name, on CUDA
    tf32: bool = False  # TF32 matmuls (CUDA, not deterministic)
    deterministic: bool = False

    @property
    def type(self) -> str:
        """The torch device type: cpu, cuda or mps."""
        return self.device.split(":", 1)[0]

    @property
    def loss_every(self) -> int:
        return 1 if self.type == "cpu" else LOSS_EVERY

    def autocast(self) -> Any:
        """The autocast context of a forward pass. fp32 is autocast switched off, exactly the
        context the CPU engine always used (so fp32 CPU numbers do not move)."""
        import torch

        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(self.type, dtype=dtype, enabled=self.precision != "fp32")

    def grad_scaler(self) -> Any:
        """A gradient scaler for fp16 (small gradients underflow in fp16 without it), else None."""
        if self.precision != "fp16":
            return None
        import torch

        return torch.amp.GradScaler("cuda")

    @contextlib.contextmanager
    def backend_flags(self) -> Iterator[None]:
        """TF32 and cuDNN determinism for the run on CUDA, torch's own settings back after."""
        if self.type != "cuda":
            yield
            return
        import torch

        saved = (
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
            torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark,
        )
        torch.backends.cuda.matmul.allow_tf32 = self.tf32
        torch.backends.cudnn.allow_tf32 = self.tf32
        torch.backends.cudnn.deterministic = self.deterministic
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            (
                torch.backends.cuda.matmul.allow_tf32,
                torch.backends.cudnn.allow_tf32,
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark,
            ) = saved

    def provenance(self) -> dict[str, Any]:
        """What a result records about where it was computed."""
        return {k: getattr(self, k) for k in ("device", "precision", "gpu", "tf32")}


def _mps_available() -> bool:
    import torch

    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def _no_cuda(asked: str) -> str:
    import torch

    build = (
        "a CPU-only build of torch"
        if torch.version.cuda is None
        else f"torch built with CUDA {torch.version.cuda}, but no GPU is visible"
    )
    return f"device {asked!r} asked for, but there is no CUDA GPU here ({build}): use cpu or auto"


def resolve(
    device: str = "auto",
    precision: str = "auto",
    *,
    bf16: bool = False,
    deterministic: bool = False,
) -> Placement:
    """The placement `device` and `precision` stand for on this machine, or one PeftportError
    line saying why they cannot work here. `bf16=True` (the older setting) is precision bf16."""
    import torch

    problem = name_problem(device)
    if problem:
        raise PeftportError(problem)
    if precision not in PRECISIONS:
        raise PeftportError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if bf16:
        if precision not in ("auto", "bf16"):
            raise PeftportError(
                f"bf16 (bfloat16 autocast) contradicts precision {precision}: give one of them"
            )
        precision = "bf16"
    name = device
    if name == "auto" and os.environ.get(ENV):
        name = os.environ[ENV]
        problem = name_problem(name)
        if problem:
            raise PeftportError(f"${ENV}: {problem}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"

    gpu = None
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise PeftportError(_no_cuda(name))
        count = torch.cuda.device_count()
        index = int(name.split(":", 1)[1]) if ":" in name else torch.cuda.current_device()
        if index >= count:
            raise PeftportError(
                f"device {name!r} asked for, but only {count} CUDA GPU(s) are visible "
                f"(cuda:0..cuda:{count - 1})"
            )
        name = f"cuda:{index}"
        gpu = torch.cuda.get_device_name(index)
        bf16_ok = torch.cuda.is_bf16_supported(including_emulation=False)
        if precision == "auto":
            precision = "bf16" if bf16_ok else "fp32"
        elif precision == "bf16" and not bf16_ok:
            raise PeftportError(
                f"precision bf16 asked for, but the GPU {gpu} has no native bfloat16: "
                "use fp16 or fp32"
            )
    elif name == "mps":
        if not _mps_available():
            raise PeftportError(
                "device 'mps' asked for, but Apple's MPS backend is not available here "
                "(it needs an Apple-silicon Mac and a torch built with MPS): use cpu or auto"
            )
        if precision in ("bf16", "fp16"):
            raise PeftportError(
                f"precision {precision} is not supported on mps by peftport: use fp32 (or auto)"
            )
        precision = "fp32"
    else:  # cpu
        if precision == "fp16":
            raise PeftportError(
                "precision fp16 needs a CUDA GPU; on CPU use fp32, or bf16 on a CPU with "
                "native bfloat16"
            )
        if precision == "auto":
            precision = cpu_auto_precision(cpu_flags())
    on_cuda = name.startswith("cuda")
    return Placement(
        device=name,
        precision=precision,
        gpu=gpu,
        tf32=on_cuda and not deterministic,
        deterministic=deterministic,
    )


def resolve_config(cfg: Any) -> Placement:
    """The placement of a TrainConfig (its device, precision, bf16 and deterministic)."""
    return resolve(cfg.device, cfg.precision, bf16=cfg.bf16, deterministic=cfg.deterministic)


@contextlib.contextmanager
def default_device(device: str) -> Iterator[None]:
    """`auto` stands for `device` in this process and the worker processes it starts (through
    `$PEFTPORT_DEVICE`) until the block ends; `auto` itself leaves things as they are. The
    device is checked first (one PeftportError line if it cannot work here)."""
    resolve(device)
    if device == "auto":
        yield
        return
    before = os.environ.get(ENV)
    os.environ[ENV] = device
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = before


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of this CPU as the kernel lists them (empty where there is no
    /proc/cpuinfo, e.g. macOS: such a CPU is taken to have no native bf16)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_auto_precision(flags: Iterable[str]) -> str:
    """What precision `auto` is on a CPU with these flags: bf16 where the CPU computes bfloat16
    natively (avx512_bf16 or amx_bf16; measured in bench/bench_precision.py: faster and within
    0.5 points of fp32's accuracy), else fp32 (emulated bf16 is slower than fp32)."""
    return "bf16" if set(flags) & set(NATIVE_BF16_FLAGS) else "fp32"


def precision_line(device: str, precisions: Iterable[str]) -> str:
    """What `precisions` (as a study's techniques set them) become on `device` here, one line
    for the start of a study run and `peftport study plan`. Resolves (one PeftportError line if
    one cannot work here)."""
    asked = sorted(set(precisions))
    placed = {p: resolve(device, p) for p in asked}
    where = sorted({pl.device for pl in placed.values()})
    parts = [f"{p} -> {pl.precision}" if p == "auto" else p for p, pl in placed.items()]
    line = f"device {', '.join(where)}, precision {', '.join(parts)}"
    auto = placed.get("auto")
    if auto is not None and auto.type == "cpu":
        native = sorted(set(cpu_flags()) & set(NATIVE_BF16_FLAGS))
        line += (
            f" (this CPU has native bfloat16: {', '.join(native)}; a rerun on a CPU without it "
            "runs fp32; `precision: fp32` in the study's train section pins it)"
            if auto.precision == "bf16"
            else " (this CPU has no native bfloat16)"
        )
    return line


def describe_machine() -> dict[str, Any]:
    """CPU model, torch and CUDA versions and the GPUs: the head of a benchmark's report."""
    import platform

    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpus = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if torch.cuda.is_available()
        else []
    )
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpus": gpus,
    }
