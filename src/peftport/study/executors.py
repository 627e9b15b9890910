"""Running a plan: one driver loop, three places to run units.

The driver (`run_plan`) is the only writer of the store. It claims runnable units (pending, with
their snapshots present), loads the snapshot a post unit starts from, hands the unit to an
executor, and commits each result (metrics, artifacts, provenance, status) in one transaction.
A failed unit is recorded with its error and does not stop the others; units that need its
snapshots stay pending ("blocked") until `--retry-failed`.

Executors differ only in where `units.execute(payload)` runs:
- `InlineExecutor` (workers=0): in the driver's process, one at a time (debugging, tests);
- `LocalExecutor`: N worker processes (spawn), 1 torch thread each by default; a worker keeps
  the hosts it loaded (units.fresh_host) across units; workers die with the driver (Linux
  PR_SET_PDEATHSIG), so a killed study leaves no orphan computing;
- `RayExecutor`: plain Ray tasks (num_cpus = threads, a GPU each when the cluster has GPUs),
  on a local Ray instance or a cluster (`address`); results come back to the driver, so the
  workers need no access to the store.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.study.store import LEASE_SECONDS, Store, plan_ids

ENV_KEYS = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "TOKENIZERS_PARALLELISM", "PEFTPORT_HOME",
            "HF_HOME", "XDG_CACHE_HOME")


class WorkerLost(Exception):
    """The process running a unit died (killed, out of memory): the unit is given back."""


def _env() -> dict[str, str]:
    env = {k: os.environ[k] for k in ENV_KEYS if k in os.environ}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PEFTPORT_HOST_",
                                                                       "PEFTPORT_DATA_"))})
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env


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
        from peftport.study.units import execute

        try:
            return _Done(value=execute(payload))
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
    os.environ.update(env)
    _set_parent_death_signal()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C
    import torch

    torch.set_num_threads(threads)
    import transformers

    transformers.logging.set_verbosity_error()


def _run_in_worker(payload: dict) -> dict:
    from peftport.study.units import execute

    return execute(payload)


class LocalExecutor:
    """N worker processes on this machine."""

    name = "local"

    def __init__(self, workers: int, threads: int = 1, context: str = "spawn") -> None:
        import multiprocessing as mp

        if workers < 1:
            raise PeftportError(f"--workers must be >= 1 for the local executor, got {workers}")
        self.capacity = workers
        self.threads = threads
        self._ctx = mp.get_context(context)
        self._pool = self._new_pool()

    def _new_pool(self):
        from concurrent.futures import ProcessPoolExecutor

        return ProcessPoolExecutor(max_workers=self.capacity, mp_context=self._ctx,
                                   initializer=_init_worker, initargs=(self.threads, _env()))

    def submit(self, payload: dict):
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._pool.submit(_run_in_worker, payload)
        except BrokenProcessPool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()
            return self._pool.submit(_run_in_worker, payload)

    def wait(self, handles: list, timeout: float) -> list:
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        try:
            return handle.result()
        except BrokenProcessPool as e:
            raise WorkerLost(str(e) or "a worker process died") from None

    def close(self, cancel: bool = False) -> None:
        if cancel:
            for p in list(getattr(self._pool, "_processes", {}).values()):
                p.terminate()
        self._pool.shutdown(wait=True, cancel_futures=cancel)


def _ray_execute(payload: dict) -> dict:
    from peftport.study.units import execute

    return execute(payload)


class RayExecutor:
    """Plain Ray tasks; joins a cluster with `address`, else starts a local instance."""

    name = "ray"

    def __init__(self, workers: int | None = None, threads: int = 1,
                 address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise PeftportError("the ray executor needs Ray: pip install 'peftport[ray]'") \
                from None
        self.ray = ray
        self._started = False
        if not ray.is_initialized():
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False,
                                      runtime_env={"env_vars": _env()})
            if address:
                kw["address"] = address
            elif workers:
                kw["num_cpus"] = workers * threads
            ray.init(**kw)
            self._started = True
        resources = ray.cluster_resources()
        gpus = 1 if resources.get("GPU", 0) >= 1 else 0
        cpus = int(resources.get("CPU", 1))
        self.capacity = workers or max(1, cpus // threads)
        if gpus and not workers:  # a GPU each: no more at a time than there are GPUs
            self.capacity = min(self.capacity, int(resources["GPU"]))
        self.threads = threads
        self._fn = ray.remote(num_cpus=threads, num_gpus=gpus, max_retries=0)(_ray_execute)

    def submit(self, payload: dict):
        return self._fn.remote(payload)

    def wait(self, handles: list, timeout: float) -> list:
        ready, _ = self.ray.wait(handles, num_returns=1, timeout=timeout)
        if ready:
            more, _ = self.ray.wait([h for h in handles if h not in ready],
                                    num_returns=len(handles) - len(ready), timeout=0)
            ready += more
        return ready

    def result(self, handle) -> dict:
        from ray.exceptions import RayTaskError, WorkerCrashedError

        try:
            return self.ray.get(handle)
        except RayTaskError as e:
            cause = getattr(e, "cause", None)
            raise (cause if isinstance(cause, BaseException) else e) from None
        except WorkerCrashedError as e:
            raise WorkerLost(str(e)) from None

    def close(self, cancel: bool = False) -> None:
        if self._started:
            self.ray.shutdown()


def make_executor(kind: str, workers: int | None, threads: int = 1,
                  address: str | None = None):
    if kind == "local":
        if workers == 0:
            return InlineExecutor(threads)
        return LocalExecutor(workers or max(1, (os.cpu_count() or 1) // threads), threads)
    if kind == "ray":
        return RayExecutor(workers, threads, address)
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
                    db.executemany("UPDATE units SET lease_until = ? WHERE claimed_by = ? AND "
                                   "status = 'running'", [(until, t) for t in tokens])
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
    from peftport.study.pairs import install_derived_hosts
    from peftport.study.spec import check_resolved_pairs

    spec = plan.spec
    install_derived_hosts(spec, echo)
    for h in spec.hosts:
        echo(f"host {h}: {host_folder(get_host(h))}")
    check_resolved_pairs(spec)
    for d in spec.datasets:
        data = load_dataset(d, max_examples=spec.max_examples)
        echo(f"data set {d}: {len(data.train)} train / {len(data.test)} test examples "
             f"(fingerprint {data.fingerprint[:12]})")


def _payload(store: Store, unit: Any, threads: int, keep_adapted: bool,
             layer_map: list[int] | None = None) -> dict:
    from peftport.module import load_module

    snapshot = None
    if unit.needs:
        row = store.snapshots()[unit.needs[0]]
        snapshot = load_module(store.artifact_path(row["path"]))  # sha256-checked
    return {"unit_id": unit.id, "config": unit.config, "threads": threads,
            "snapshot": snapshot, "keep_adapted": keep_adapted,
            "layer_map": list(layer_map) if layer_map is not None else None}


def _commit(store: Store, unit: Any, token: str, result: dict) -> bool:
    artifacts = []
    produces = dict(unit.produces)
    for step, (tensors, meta) in sorted(result.pop("snapshots", {}).items()):
        sha, rel, size = store.stage_artifact(tensors, meta)
        artifacts.append((produces[int(step)], "snapshot", int(step), sha, rel, size))
    adapted = result.pop("adapted", None)
    if adapted is not None:
        sha, rel, size = store.stage_artifact(*adapted)
        artifacts.append((unit.id, "adapted", unit.steps, sha, rel, size))
    return store.finish(unit.id, token, result, artifacts)


def run_plan(store: Store, plan: Any, executor: Any, *, threads: int = 1,
             retry_failed: bool = False, progress: bool = True, max_attempts: int = 3,
             poll: float = 1.0, echo: Callable[[str], None] | None = None,
             check_first: bool = True) -> dict[str, Any]:
    """Run every unit of the plan that is not done; returns counts. Safe to run again at any
    time (and from several drivers at once on one store): done units are never re-run.
    `check_first`: resolve hosts and data sets and compare the pairs' shapes before anything
    runs (`prepare`). Then, before any unit: every directed pair's host comparison (computed
    once, kept in the store), its resolved layer map and its host_pairs row
    (`peftport.study.pairs.prepare_pairs`)."""
    from tqdm import tqdm

    echo = echo or (lambda s: print(s, file=sys.stderr))
    t0 = time.time()
    from peftport.study.pairs import install_derived_hosts, prepare_pairs
    from peftport.study.spec import check_resolved_pairs

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
    status = store.statuses(ids)

    def work(u: Any) -> int:
        return u.steps + u.evals  # the bar's unit: a training step (an evaluation counts one)

    todo = [u for u in plan.units if status[u.id] != "done"]
    echo(f"{len(plan.units) - len(todo)} of {len(plan.units)} units done already; "
         f"{len(todo)} to run with the {executor.name} executor "
         f"({executor.capacity} at a time, {threads} thread(s) each)")
    in_flight: dict[Any, tuple[Any, str]] = {}
    keeper = _LeaseKeeper(str(store.path), lambda: [t for _, t in list(in_flight.values())])
    keeper.start()
    bar = tqdm(total=sum(work(u) for u in todo), desc=f"study {plan.spec.name}", unit="step",
               disable=not progress, dynamic_ncols=True, mininterval=1.0, file=sys.stderr)
    counts = {"done": 0, "failed": 0, "released": 0}

    def note() -> None:
        bar.set_postfix(done=counts["done"], running=len(in_flight), failed=counts["failed"],
                        refresh=False)

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
                    try:
                        payload = _payload(store, u, threads, plan.spec.keep_adapted,
                                           layer_maps.get((u.origin, u.receiver))
                                           if u.kind == "post" else None)
                    except Exception as e:  # noqa: BLE001 - e.g. a damaged artifact
                        store.fail(u.id, token, "could not load its input: " + format_error(e))
                        counts["failed"] += 1
                        continue
                    try:
                        handle = executor.submit(payload)
                    except Exception as e:  # noqa: BLE001 - e.g. the payload does not pickle
                        store.fail(u.id, token, "could not start it: " + format_error(e))
                        counts["failed"] += 1
                        continue
                    except BaseException:  # Ctrl-C while an inline unit runs
                        store.release(u.id, token, "interrupted", max_attempts=1 << 30)
                        raise
                    in_flight[handle] = (u, token)
                    free -= 1
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
                u, token = in_flight.pop(handle)
                try:
                    result = executor.result(handle)
                except WorkerLost as e:
                    new = store.release(u.id, token, f"worker process died: {e}", max_attempts)
                    counts["released" if new == "pending" else "failed"] += 1
                    bar.write(f"unit {u.id} ({u.label}): worker died; {new}")
                    continue
                except Exception as e:  # noqa: BLE001 - recorded, the study goes on
                    store.fail(u.id, token, format_error(e))
                    counts["failed"] += 1
                    bar.write(f"unit {u.id} failed ({u.label}): "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}")
                    bar.update(work(u))
                    continue
                try:
                    ok = _commit(store, u, token, result)
                except Exception as e:  # noqa: BLE001
                    store.fail(u.id, token, "could not store its result: " + format_error(e))
                    counts["failed"] += 1
                    continue
                if ok:
                    counts["done"] += 1
                bar.update(work(u))
            note()
    except BaseException:
        for u, token in in_flight.values():
            store.release(u.id, token, "interrupted", max_attempts=1 << 30)
        executor.close(cancel=True)
        raise
    finally:
        keeper.stop_event.set()
        bar.close()
    executor.close()
    final = store.statuses(ids)
    blocked = store.blocked(plan)
    out = {
        "study": plan.spec.name, "study_id": plan.spec.id, "units": len(ids),
        "new_units": added["new"], "ran": counts["done"] + counts["failed"],
        "done": sum(1 for s in final.values() if s == "done"),
        "failed": sum(1 for s in final.values() if s == "failed"),
        "pending": sum(1 for s in final.values() if s == "pending"),
        "blocked": len(blocked), "seconds": round(time.time() - t0, 1),
    }
    return out


def run_study(spec: Any, store_path: Path, *, executor: str = "local",
              workers: int | None = None, threads: int = 1, address: str | None = None,
              retry_failed: bool = False, progress: bool = True,
              echo: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Plan `spec`, check and prepare it (hosts, shapes, data: before the store is touched),
    then run every unit that is not done in the store at `store_path` (`run_plan`). Returns
    `run_plan`'s summary with the store's path."""
    from peftport.study.plan import make_plan

    if threads < 1:
        raise PeftportError(f"--threads must be >= 1, got {threads}")
    if workers is not None and workers < 0:
        raise PeftportError(f"--workers must be >= 0, got {workers}")
    if address and executor != "ray":
        raise PeftportError("--address is for --executor ray")
    echo = echo or (lambda s: print(s, file=sys.stderr))
    plan = make_plan(spec)
    prepare(plan, echo)
    st = Store(store_path)
    try:
        ex = make_executor(executor, workers, threads, address)
        out = run_plan(st, plan, ex, threads=threads, retry_failed=retry_failed,
                       progress=progress, echo=echo, check_first=False)
    finally:
        st.close()
    out["store"] = str(st.path)
    return out


def summary_line(out: dict[str, Any]) -> str:
    """One line for a person: `run_study`'s summary."""
    blocked = f" ({out['blocked']} blocked by a failed unit)" if out["blocked"] else ""
    return (f"study {out['study']}: {out['done']}/{out['units']} units done, {out['failed']} "
            f"failed, {out['pending']} pending{blocked}; ran {out['ran']} unit(s) in "
            f"{out['seconds']:.0f} s; store {out['store']}")
