"""Where units run: three executors behind one interface (`capacity`, `submit`, `wait`,
`result`, `close`).

Executors differ only in where `run_unit(payload)` (`units.execute`) runs:
- `InlineExecutor` (workers=0): in the driver's process, one at a time (debugging, tests);
- `LocalExecutor`: N worker processes (spawn), 1 torch thread each by default; a worker keeps
  the hosts it loaded (units.fresh_host) across units; workers die with the driver (Linux
  PR_SET_PDEATHSIG), so a killed study leaves no orphan computing. With GPUs visible, one
  worker per GPU (K with `units_per_gpu`), each pinned to its GPU by CUDA_VISIBLE_DEVICES
  (`gpu_slots`);
- `RayExecutor` (`peftport.study.ray_executor`): plain Ray tasks, on a local Ray instance or a
  cluster (`address`), a fraction of a GPU each when the cluster has GPUs.

The loop that feeds them and writes the store is `peftport.study.driver`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from peftport.errors import PeftportError
from peftport.study.gpus import Slot, local_slots

ENV_KEYS = (
    "HF_HUB_OFFLINE",
    "TRANSFORMERS_OFFLINE",
    "TOKENIZERS_PARALLELISM",
    "PEFTPORT_HOME",
    "HF_HOME",
    "XDG_CACHE_HOME",
)
# paths on the driver's machine: not passed to the workers of a Ray cluster (each node has its own)
PATH_KEYS = ("PEFTPORT_HOME", "HF_HOME", "XDG_CACHE_HOME")
PATH_PREFIXES = ("PEFTPORT_HOST_", "PEFTPORT_DATA_")


class WorkerLost(Exception):
    """The process running a unit died (killed, out of memory): the unit is given back."""


def _env(paths: bool = True) -> dict[str, str]:
    """The environment a worker gets from the driver. paths=False (a Ray cluster): without the
    driver's folders ($PEFTPORT_HOME, caches, $PEFTPORT_HOST_* / $PEFTPORT_DATA_* overrides),
    which name places on the driver's machine: each node keeps its own."""
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(PATH_PREFIXES)})
    if not paths:
        env = {
            k: v for k, v in env.items() if k not in PATH_KEYS and not k.startswith(PATH_PREFIXES)
        }
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


def node_info() -> dict[str, Any]:
    """Where a unit ran, beyond the worker's host:pid: the folder its hosts and data came
    from, the GPU(s) it was given (CUDA_VISIBLE_DEVICES) and its OpenMP settings."""
    from peftport.assets import peftport_home

    info: dict[str, Any] = {"hostname": socket.gethostname(), "peftport_home": str(peftport_home())}
    for k in ("CUDA_VISIBLE_DEVICES", "OMP_WAIT_POLICY", "OMP_NUM_THREADS"):
        if k in os.environ:
            info[k.lower()] = os.environ[k]
    return info


def run_unit(payload: dict) -> dict:
    """Run one unit where this process is (`units.execute`): first install the hosts the
    study derives that this machine lacks (from their recipes, in the payload: a worker on
    another node has its own $PEFTPORT_HOME), then record where it ran in its environment."""
    from peftport.study.units import execute

    derived = payload.get("derived_hosts") or ()
    if derived:
        from peftport.hosts.derive import install_derived_host

        for name, recipe in derived:  # parents first; an installed one is a no-op
            install_derived_host(name, tuple(tuple(x) for x in recipe))
    out = execute(payload)
    out["environment"] = {**(out.get("environment") or {}), **node_info()}
    return out


# --- executors ------------------------------------------------------------------------------


class _Done:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error


class InlineExecutor:
    """Run each unit in the driver's process (workers=0)."""

    name = "inline"

    def __init__(self, threads: int = 1) -> None:
        self.capacity = 1
        self.threads = threads

    def submit(self, payload: dict) -> _Done:
        try:
            return _Done(value=run_unit(payload))
        except Exception as e:  # noqa: BLE001 - recorded as the unit's error
            return _Done(error=e)

    def wait(self, handles: list, timeout: float) -> list:
        return list(handles)

    def result(self, handle: _Done) -> dict:
        if handle.error is not None:
            raise handle.error
        return handle.value

    def close(self, cancel: bool = False) -> None:
        pass


def _set_parent_death_signal() -> None:
    """Linux: this process gets SIGKILL when its parent (the driver) dies."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the driver died before the prctl took effect
        os._exit(1)


def _init_worker(threads: int, env: dict[str, str]) -> None:
    os.environ.update(env)  # CUDA_VISIBLE_DEVICES before torch (below) can start CUDA
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C
    import torch

    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()


KILL_HOOK = "PEFTPORT_TEST_KILL_WORKER_OF"  # tests: a unit id whose worker SIGKILLs itself


class _RemoteTraceback(Exception):
    """The worker's traceback of a unit's error (the cause of the error the driver re-raises)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


def _worker_main(conn, threads: int, env: dict[str, str]) -> None:
    """One worker process: runs the units the driver sends, one at a time, until told to stop
    (None) or the driver is gone."""
    _init_worker(threads, env)

    while True:
        try:
            payload = conn.recv()
        except (EOFError, OSError):
            return
        if payload is None:
            return
        if os.environ.get(KILL_HOOK) and payload.get("unit_id") == os.environ[KILL_HOOK]:
            os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-unit (tests)
        try:
            msg = ("ok", run_unit(payload), None)
        except Exception as e:  # noqa: BLE001 - sent to the driver, recorded as the unit's error
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            msg = ("error", e, tb)
        try:
            conn.send(msg)
        except Exception as e:  # noqa: BLE001 - an error that does not pickle: its text goes
            conn.send(("error", RuntimeError(f"{type(e).__name__}: {e}"), msg[2] or ""))


class _Job:
    """A unit handed to one worker process (the handle `LocalExecutor.submit` returns)."""

    def __init__(self, worker: _Worker) -> None:
        self.worker = worker
        self.value: Any = None
        self.error: BaseException | None = None
        self.finished = False


class _Worker:
    def __init__(self, ctx: Any, threads: int, slot: int, env: dict[str, str]) -> None:
        self.conn, child = ctx.Pipe()
        self.slot = slot
        self.proc = ctx.Process(
            target=_worker_main,
            args=(child, threads, {**_env(), **env}),
            daemon=True,
            name="peftport-worker",
        )
        self.proc.start()
        child.close()
        self.job: _Job | None = None


class LocalExecutor:
    """N worker processes on this machine, each its own pipe: when one dies (killed, out of
    memory) only the unit it ran is lost (`WorkerLost`); the others' units go on, and the dead
    worker is replaced."""

    name = "local"

    def __init__(
        self,
        workers: int | None = None,
        threads: int = 1,
        context: str = "spawn",
        slots: Sequence[Slot] | None = None,
    ) -> None:
        import multiprocessing as mp

        if slots is None:
            if workers is None or workers < 1:
                raise PeftportError(f"--workers must be >= 1 for the local executor, got {workers}")
            slots = [Slot()] * workers
        self.slots = list(slots)
        self.capacity = len(self.slots)
        self.threads = threads
        self._ctx = mp.get_context(context)
        self._workers: list[_Worker] = []
        gpus = [s.gpu for s in self.slots if s.gpu is not None]
        self.where = (
            f" on GPU(s) {', '.join(dict.fromkeys(gpus))}, pinned one each by CUDA_VISIBLE_DEVICES"
            if gpus
            else ""
        )

    def _start(self) -> _Worker:
        """A new worker in the first slot no live worker holds (a dead one's, when replaced)."""
        taken = {w.slot for w in self._workers}
        i = next(i for i in range(len(self.slots)) if i not in taken)
        return _Worker(self._ctx, self.threads, i, dict(self.slots[i].env))

    def submit(self, payload: dict) -> _Job:
        self._workers = [w for w in self._workers if w.proc.is_alive() or w.job is not None]
        idle = [w for w in self._workers if w.job is None and w.proc.is_alive()]
        if idle:
            worker = idle[0]
        elif len(self._workers) < self.capacity:
            worker = self._start()
            self._workers.append(worker)
        else:
            raise RuntimeError("no idle worker process (more units submitted than capacity)")
        job = _Job(worker)
        worker.job = job
        try:
            worker.conn.send(payload)
        except (OSError, EOFError) as e:  # the worker died while idle: a new one takes it
            worker.job = None
            self._workers.remove(worker)
            worker = self._start()
            self._workers.append(worker)
            job = _Job(worker)
            worker.job = job
            try:
                worker.conn.send(payload)
            except (OSError, EOFError):
                raise WorkerLost(f"could not hand the unit to a worker process ({e})") from None
        return job

    def _collect(self, job: _Job) -> None:
        w = job.worker
        try:
            kind, value, tb = w.conn.recv()
        except (EOFError, OSError):
            w.proc.join(timeout=5)
            code = w.proc.exitcode
            how = (
                f"killed by signal {-code}"
                if code is not None and code < 0
                else f"exit code {code}"
            )
            job.error = WorkerLost(f"its worker process (pid {w.proc.pid}) died ({how})")
        else:
            if kind == "ok":
                job.value = value
            else:
                value.__cause__ = _RemoteTraceback(tb or "")
                job.error = value
        job.finished = True
        w.job = None
        if job.error is not None and isinstance(job.error, WorkerLost):
            w.conn.close()

    def wait(self, handles: list, timeout: float) -> list:
        from multiprocessing.connection import wait as mp_wait

        pending = [j for j in handles if not j.finished]
        if pending:
            waitables: dict[Any, _Job] = {}
            for j in pending:
                waitables[j.worker.conn] = j
                waitables[j.worker.proc.sentinel] = j
            for ready in mp_wait(list(waitables), timeout=timeout):
                j = waitables[ready]
                if not j.finished:
                    self._collect(j)
        return [j for j in handles if j.finished]

    def result(self, handle: _Job) -> dict:
        if not handle.finished:
            self._collect(handle)
        if handle.error is not None:
            raise handle.error
        return handle.value

    def close(self, cancel: bool = False) -> None:
        for w in self._workers:
            if cancel:
                w.proc.terminate()
            else:
                with contextlib.suppress(OSError, EOFError):  # a worker gone already
                    w.conn.send(None)
        for w in self._workers:
            w.proc.join(timeout=30 if not cancel else 5)
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join()
            w.conn.close()
        self._workers = []


EXECUTORS = ("local", "ray", "inline")


def check_executor(kind: str) -> None:
    """Refuse an unknown executor, or ray without Ray installed (before a store is made)."""
    if kind not in EXECUTORS:
        raise PeftportError(f"unknown executor {kind!r}; choose local or ray")
    if kind == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise PeftportError("the ray executor needs Ray: pip install 'peftport[ray]'") from None


def __getattr__(name: str) -> Any:
    if name == "RayExecutor":  # it lives in ray_executor (which imports this module)
        from peftport.study.ray_executor import RayExecutor

        return RayExecutor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_gpu_options(
    kind: str, workers: int | None, units_per_gpu: int | None, gpus_per_unit: float | None
) -> None:
    """Refuse the GPU options of the other executor (one line, before anything starts)."""
    if units_per_gpu is not None and (kind != "local" or workers == 0):
        raise PeftportError(
            "--units-per-gpu is for the local executor's worker processes"
            + (" (not --workers 0)" if kind == "local" else "; on Ray use --gpus-per-unit")
        )
    if gpus_per_unit is not None and kind != "ray":
        raise PeftportError(
            "--gpus-per-unit is for --executor ray; the local executor "
            "packs units with --units-per-gpu"
        )


def make_executor(
    kind: str,
    workers: int | None,
    threads: int = 1,
    address: str | None = None,
    *,
    units_per_gpu: int | None = None,
    gpus_per_unit: float | None = None,
):
    check_gpu_options(kind, workers, units_per_gpu, gpus_per_unit)
    if kind == "local":
        if workers == 0:
            return InlineExecutor(threads)
        return LocalExecutor(threads=threads, slots=local_slots(workers, threads, units_per_gpu))
    if kind == "ray":
        from peftport.study.ray_executor import RayExecutor

        return RayExecutor(workers, threads, address, gpus_per_unit)
    if kind == "inline":
        return InlineExecutor(threads)
    raise PeftportError(f"unknown executor {kind!r}; choose local or ray")
