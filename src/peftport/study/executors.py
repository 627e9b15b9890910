"""Running a plan: one driver loop, three places to run units.

The driver (`run_plan`) is the only writer of the store. It claims runnable units (pending, with
their snapshots present), loads the snapshot a post unit starts from, hands the unit to an
executor, and commits each result (metrics, artifacts, provenance, status) in one transaction.
A failed unit is recorded with its error and does not stop the others; units that need its
snapshots stay pending ("blocked") until `--retry-failed`.

Executors differ only in where `run_unit(payload)` (`units.execute`) runs:
- `InlineExecutor` (workers=0): in the driver's process, one at a time (debugging, tests);
- `LocalExecutor`: N worker processes (spawn), 1 torch thread each by default; a worker keeps
  the hosts it loaded (units.fresh_host) across units; workers die with the driver (Linux
  PR_SET_PDEATHSIG), so a killed study leaves no orphan computing. With GPUs visible, one
  worker per GPU (K with `units_per_gpu`), each pinned to its GPU by CUDA_VISIBLE_DEVICES
  (`gpu_slots`);
- `RayExecutor` (`peftport.study.ray_executor`): plain Ray tasks, on a local Ray instance or a
  cluster (`address`), a fraction of a GPU each when the cluster has GPUs.

Nothing a unit needs travels as a path on the driver's disk: the snapshot a post unit starts
from is in its payload, a host the study derives is installed by the worker from its recipe
(in the payload) on its own node, and results come back to the driver, so the workers need no
access to the store or to the driver's $PEFTPORT_HOME. A unit whose host resolved to other
weights or data than the driver's (another file under the same name on that node) is refused
when its result arrives (`_check_inputs`).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.progress import format_duration
from peftport.study.gpus import Slot, local_slots
from peftport.study.schema import check_store_file
from peftport.study.store import LEASE_SECONDS, Store, crash_point, plan_ids

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


def format_error(e: BaseException) -> str:
    """A PeftportError is its message; anything else keeps the tail of its traceback."""
    if isinstance(e, PeftportError):
        return f"{type(e).__name__}: {e}"
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return tb[-4000:]


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


# --- the driver -----------------------------------------------------------------------------


class _LeaseKeeper(threading.Thread):
    """Renews the leases of the driver's claims while it lives (its own connection), so a long
    unit is never taken for abandoned."""

    def __init__(self, path: str, tokens: Callable[[], list[str]]) -> None:
        super().__init__(daemon=True, name="peftport-lease")
        self.path, self.tokens = path, tokens
        self.stop_event = threading.Event()

    def run(self) -> None:
        db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
        try:
            while not self.stop_event.wait(LEASE_SECONDS / 4):
                tokens = self.tokens()
                if tokens:
                    until = time.time() + LEASE_SECONDS
                    db.executemany(
                        "UPDATE units SET lease_until = ? WHERE claimed_by = ? AND "
                        "status = 'running'",
                        [(until, t) for t in tokens],
                    )
        except sqlite3.Error:
            pass
        finally:
            db.close()


def prepare(plan: Any, echo: Callable[[str], None] = print) -> None:
    """Before any unit: build and install the hosts the study derives, resolve every host
    (building or fetching it once, here rather than in N workers at once), compare the pairs'
    shapes and check their layer maps against the depths, and load every data set."""
    from peftport.data import load_dataset
    from peftport.hosts import get_host, host_folder
    from peftport.study.pairchecks import check_resolved_pairs
    from peftport.study.pairs import install_derived_hosts

    spec = plan.spec
    install_derived_hosts(spec, echo)
    for h in spec.hosts:
        echo(f"host {h}: {host_folder(get_host(h))}")
    check_resolved_pairs(spec)
    for d in spec.datasets:
        data = load_dataset(d, max_examples=spec.max_examples)
        echo(
            f"data set {d}: {len(data.train)} train / {len(data.test)} test examples "
            f"(fingerprint {data.fingerprint[:12]})"
        )


def _payload(
    store: Store,
    unit: Any,
    threads: int,
    keep_adapted: bool,
    layer_map: list[int] | None = None,
    derived: list | None = None,
) -> dict:
    from peftport.module import load_module

    snapshot = None
    if unit.needs:
        row = store.snapshots()[unit.needs[0]]
        snapshot = load_module(store.artifact_path(row["path"]))  # sha256-checked
    return {
        "unit_id": unit.id,
        "config": unit.config,
        "threads": threads,
        "snapshot": snapshot,
        "keep_adapted": keep_adapted,
        "layer_map": list(layer_map) if layer_map is not None else None,
        "derived_hosts": derived or [],
    }


def _host_fingerprints(spec: Any) -> dict[str, str]:
    """The weights fingerprint of each of the study's hosts as the driver resolves them (a
    host it cannot fingerprint is left out: its units report their own error)."""
    from peftport.hosts import get_host, host_folder, weights_fingerprint

    out = {}
    for h in spec.hosts:
        with contextlib.suppress(PeftportError, OSError):
            out[h] = weights_fingerprint(host_folder(get_host(h)))
    return out


def _data_fingerprints(spec: Any) -> dict[str, str]:
    """Each data set's fingerprint as the driver loads it (cached in memory by `prepare`)."""
    from peftport.data import load_dataset

    out = {}
    for d in spec.datasets:
        with contextlib.suppress(PeftportError, OSError):
            out[d] = load_dataset(d, max_examples=spec.max_examples).fingerprint
    return out


def _check_inputs(result: dict, hosts: dict[str, str], data: dict[str, str]) -> None:
    """Refuse a result computed on other host weights or other data than the driver's under
    the same name (a node that resolved its own, different copy)."""
    where = (result.get("environment") or {}).get("peftport_home", "?")
    for kind, key, expected, what in (
        ("host", "host_fingerprints", hosts, "weights"),
        ("data set", "data_fingerprints", data, "examples"),
    ):
        for name, got in (result.get(key) or {}).items():
            want = expected.get(name)
            if want and got != want:
                raise PeftportError(
                    f"{kind} {name} on worker {result.get('worker')} (PEFTPORT_HOME {where}) "
                    f"has {what} {got[:12]}, the driver's are {want[:12]}: that node resolved "
                    f"another {kind} under this name; give every node the same one (its cache, "
                    "or the $PEFTPORT_HOST_* / $PEFTPORT_DATA_* folder set on the node)"
                )


def repair_artifacts(
    store: Store, ids: list[str], echo: Callable[[str], None], full: bool = True
) -> int:
    """Find the damaged or missing artifacts of the units `ids` and make them recomputable
    (`Store.recompute`): the snapshots that units still to run need are checked in full (their
    tensors' sha256), every other artifact in full too with `full`, else for its folder and
    size. Says so in one line each; returns how many units run again."""
    needed = store.needed_snapshots(ids)
    keys = {r["key"] for r in needed}
    damaged = store.damaged_artifacts(needed, full=True)
    damaged += store.damaged_artifacts(
        [r for r in store.artifact_rows(ids) if r["key"] not in keys], full=full
    )
    n = 0
    for d in damaged:
        got = store.recompute(d)
        if got is None:
            continue
        uid, dependents = got
        waiting = store.db.execute(
            "SELECT COUNT(DISTINCT e.unit_id) FROM edges e JOIN units u ON u.id = e.unit_id "
            "WHERE e.depends_on = ? AND u.status != 'done'",
            (uid,),
        ).fetchone()[0]
        n += 1
        echo(
            f"{d['kind']} {d['path']} is damaged ({d['problem']}): unit {uid} runs again to "
            f"rewrite it"
            + (f", then the {waiting} unit(s) that need it" if waiting else "")
            + (f" ({dependents} failed one(s) among them retried)" if dependents else "")
        )
    return n


def _input_recomputed(store: Store, unit: Any, echo: Callable[[str], None]) -> bool:
    """The snapshot `unit` starts from did not load: when it is damaged, make its producer run
    again (True); the unit waits for it uncharged."""
    rows = [r for k, r in store.snapshots().items() if k in set(unit.needs)]
    return repair_artifacts(store, [unit.id], echo) > 0 if rows else False


def _commit(
    store: Store,
    unit: Any,
    token: str,
    result: dict,
    inputs: tuple[dict[str, str], dict[str, str]] = ({}, {}),
) -> bool:
    _check_inputs(result, *inputs)
    artifacts = []
    produces = dict(unit.produces)
    for step, (tensors, meta) in sorted(result.pop("snapshots", {}).items()):
        sha, rel, size = store.stage_artifact(tensors, meta)
        artifacts.append((produces[int(step)], "snapshot", int(step), sha, rel, size))
    adapted = result.pop("adapted", None)
    if adapted is not None:
        sha, rel, size = store.stage_artifact(*adapted)
        artifacts.append((unit.id, "adapted", unit.steps, sha, rel, size))
    crash_point("staged")  # artifacts on disk, not yet in the store: written again later
    return store.finish(unit.id, token, result, artifacts)


def run_plan(
    store: Store,
    plan: Any,
    executor: Any,
    *,
    threads: int = 1,
    retry_failed: bool = False,
    progress: bool = True,
    max_attempts: int = 3,
    poll: float = 1.0,
    echo: Callable[[str], None] | None = None,
    check_first: bool = True,
    verify: bool = True,
) -> dict[str, Any]:
    """Run every unit of the plan that is not done; returns counts. Safe to run again at any
    time (and from several drivers at once on one store): done units are never re-run.
    `check_first`: resolve hosts and data sets and compare the pairs' shapes before anything
    runs (`prepare`). Then, before any unit: every directed pair's host comparison (computed
    once, kept in the store), its resolved layer map and its host_pairs row
    (`peftport.study.pairs.prepare_pairs`). Then the artifacts of the plan's units are checked
    (`repair_artifacts`; `verify`: every one's tensors against its sha256, else only those that
    units still to run need): a damaged or missing one is recomputed."""
    from peftport import progress as progress_lines

    echo = echo or (lambda s: print(s, file=sys.stderr))
    t0 = time.time()
    from peftport.study.pairchecks import check_resolved_pairs
    from peftport.study.pairs import install_derived_hosts, prepare_pairs

    if check_first:
        prepare(plan, echo)
    else:  # prepare ran before (the CLI): this only finds the derived hosts installed
        install_derived_hosts(plan.spec, echo)
    added = store.add_plan(plan)
    # the hosts are on disk now (prepare): their depths are a config.json read away
    layer_maps = prepare_pairs(store, plan.spec, check_resolved_pairs(plan.spec), echo, progress)
    ids = plan_ids(plan)
    if retry_failed:
        failed = [i for i, s in store.statuses(ids).items() if s == "failed"]
        n = store.reset_failed(failed)
        if n:
            echo(f"retrying {n} failed unit(s)")
    reset = store.recover()
    if reset:
        echo(f"{len(reset)} unit(s) left running by a driver that is gone: back to pending")
    repair_artifacts(store, ids, echo, full=verify)
    status = store.statuses(ids)
    derived = [(d.name, d.recipe()) for d in plan.spec.derived_hosts]
    inputs = (_host_fingerprints(plan.spec), _data_fingerprints(plan.spec))

    def work(u: Any) -> int:
        return u.steps + u.evals  # the bar's unit: a training step (an evaluation counts one)

    todo = [u for u in plan.units if status[u.id] != "done"]
    echo(
        f"{len(plan.units) - len(todo)} of {len(plan.units)} units done already; "
        f"{len(todo)} to run with the {executor.name} executor "
        f"({executor.capacity} at a time, {threads} thread(s) each"
        f"{getattr(executor, 'where', '')})"
    )
    in_flight: dict[Any, tuple[Any, str]] = {}
    held: dict[str, tuple[Any, str]] = {}  # unit id -> (unit, claim token): claims not recorded
    keeper = _LeaseKeeper(str(store.path), lambda: [t for _, t in list(held.values())])
    keeper.start()
    bar = progress_lines.bar(
        total=sum(work(u) for u in todo),
        desc=f"study {plan.spec.name}",
        unit="step",
        enabled=progress,
        leave=True,
    )
    counts = {"done": 0, "failed": 0, "released": 0}

    def say(line: str) -> None:  # above a terminal's bar; else the echo (stderr, a log)
        if progress and progress_lines.is_terminal():
            bar.write(line, file=sys.stderr)
        else:
            echo(line)

    def note() -> None:
        bar.set_postfix(
            done=counts["done"], running=len(in_flight), failed=counts["failed"], refresh=False
        )

    last_recover = time.time()
    try:
        while True:
            free = executor.capacity - len(in_flight)
            if free > 0:
                busy = {u.id for u, _ in in_flight.values()}
                for u in store.runnable(plan, exclude=busy):
                    if free <= 0:
                        break
                    token = store.claim(u.id)
                    if token is None:
                        continue  # another driver took it
                    held[u.id] = (u, token)
                    crash_point("claimed")
                    try:
                        payload = _payload(
                            store,
                            u,
                            threads,
                            plan.spec.keep_adapted,
                            layer_maps.get((u.origin, u.receiver)) if u.kind == "post" else None,
                            derived,
                        )
                    except Exception as e:  # noqa: BLE001 - e.g. a damaged artifact
                        held.pop(u.id, None)
                        if _input_recomputed(store, u, echo):  # not this unit's fault
                            store.release(u.id, token, "its input is recomputed", charge=False)
                            continue
                        store.fail(u.id, token, "could not load its input: " + format_error(e))
                        counts["failed"] += 1
                        continue
                    try:
                        handle = executor.submit(payload)
                    except Exception as e:  # noqa: BLE001 - e.g. the payload does not pickle
                        store.fail(u.id, token, "could not start it: " + format_error(e))
                        held.pop(u.id, None)
                        counts["failed"] += 1
                        continue
                    in_flight[handle] = (u, token)
                    free -= 1
                    crash_point("submitted")
                note()
            if not in_flight:
                others = [i for i, s in store.statuses(ids).items() if s == "running"]
                if others and store.runnable(plan) == []:
                    time.sleep(poll)  # another driver is running units this plan needs
                    if time.time() - last_recover > 10:
                        store.recover()
                        last_recover = time.time()
                    continue
                if not store.runnable(plan):
                    break
                continue
            for handle in executor.wait(list(in_flight), timeout=poll):
                u, token = in_flight.pop(handle)  # still in `held` until recorded
                try:
                    result = executor.result(handle)
                except WorkerLost as e:
                    new = store.release(u.id, token, f"worker process died: {e}", max_attempts)
                    held.pop(u.id, None)
                    counts["released" if new == "pending" else "failed"] += 1
                    say(f"unit {u.id} ({u.label}): worker died; {new}")
                    continue
                except Exception as e:  # noqa: BLE001 - recorded, the study goes on
                    store.fail(u.id, token, format_error(e))
                    held.pop(u.id, None)
                    counts["failed"] += 1
                    say(
                        f"unit {u.id} failed ({u.label}): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}"
                    )
                    bar.update(work(u))
                    continue
                try:
                    ok = _commit(store, u, token, result, inputs)
                except Exception as e:  # noqa: BLE001
                    store.fail(u.id, token, "could not store its result: " + format_error(e))
                    held.pop(u.id, None)
                    counts["failed"] += 1
                    continue
                held.pop(u.id, None)
                if ok:
                    counts["done"] += 1
                bar.update(work(u))
            note()
    except BaseException:
        # every claim this driver holds (also one between its claim and its worker, or between
        # its result and its commit): pending again, uncharged; a committed one stays done
        for u, token in list(held.values()):
            store.release(u.id, token, "interrupted", charge=False)
        store.release_mine("interrupted")  # a claim made just as the signal came
        executor.close(cancel=True)
        signum = getattr(executor, "signal_received", None)
        if signum:  # SIGTERM / SIGHUP: the shell's exit code for it
            raise SystemExit(128 + signum) from None
        raise
    finally:
        keeper.stop_event.set()
        bar.close()
    executor.close()
    final = store.statuses(ids)
    blocked = store.blocked(plan)
    out = {
        "study": plan.spec.name,
        "study_id": plan.spec.id,
        "units": len(ids),
        "new_units": added["new"],
        "ran": counts["done"] + counts["failed"],
        "done": sum(1 for s in final.values() if s == "done"),
        "failed": sum(1 for s in final.values() if s == "failed"),
        "pending": sum(1 for s in final.values() if s == "pending"),
        "blocked": len(blocked),
        "seconds": round(time.time() - t0, 1),
    }
    return out


def run_study(
    spec: Any,
    store_path: Path,
    *,
    executor: str = "local",
    workers: int | None = None,
    threads: int = 1,
    address: str | None = None,
    retry_failed: bool = False,
    progress: bool = True,
    echo: Callable[[str], None] | None = None,
    verify: bool = True,
    units_per_gpu: int | None = None,
    gpus_per_unit: float | None = None,
    announce: str = "",
) -> dict[str, Any]:
    """Plan `spec`, check and prepare it (hosts, shapes, data: before the store is touched),
    then run every unit that is not done in the store at `store_path` (`run_plan`). Returns
    `run_plan`'s summary with the store's path. units_per_gpu (local) and gpus_per_unit
    (ray): how units share GPUs (`gpu_slots`, `ray_executor.gpu_request`). `announce`: a line
    echoed once every option is checked, before anything loads (what the device resolved to)."""
    from peftport.study.plan import make_plan

    if threads < 1:
        raise PeftportError(f"--threads must be >= 1, got {threads}")
    if workers is not None and workers < 0:
        raise PeftportError(f"--workers must be >= 0, got {workers}")
    if address and executor != "ray":
        raise PeftportError("--address is for --executor ray")
    # everything that can be refused is refused before anything is created or computed
    check_executor(executor)
    check_gpu_options(executor, workers, units_per_gpu, gpus_per_unit)
    if executor == "local" and workers != 0:
        local_slots(workers, threads, units_per_gpu)  # GPU options that cannot work here
    check_store_file(Path(store_path))
    echo = echo or (lambda s: print(s, file=sys.stderr))
    if announce:
        echo(announce)
    plan = make_plan(spec)
    prepare(plan, echo)
    # before the store: a GPU request the Ray cluster cannot meet is refused here
    ex = make_executor(
        executor,
        workers,
        threads,
        address,
        units_per_gpu=units_per_gpu,
        gpus_per_unit=gpus_per_unit,
    )
    try:
        st = Store(store_path)
    except BaseException:
        ex.close(cancel=True)
        raise
    try:
        out = run_plan(
            st,
            plan,
            ex,
            threads=threads,
            retry_failed=retry_failed,
            progress=progress,
            echo=echo,
            check_first=False,
            verify=verify,
        )
    finally:
        st.close()
    out["store"] = str(st.path)
    return out


def summary_line(out: dict[str, Any]) -> str:
    """One line for a person: `run_study`'s summary."""
    blocked = f" ({out['blocked']} blocked by a failed unit)" if out["blocked"] else ""
    return (
        f"study {out['study']}: {out['done']}/{out['units']} units done, {out['failed']} "
        f"failed, {out['pending']} pending{blocked}; ran {out['ran']} unit(s) in "
        f"{format_duration(out['seconds'])}; store {out['store']}"
    )
