"""Running a plan: the driver loop, the only writer of the store.

The driver (`run_plan`) claims runnable units (pending, with their snapshots present), loads
the snapshot a post unit starts from, hands the unit to an executor
(`peftport.study.executors`), and commits each result (metrics, artifacts, provenance, status)
in one transaction. A failed unit is recorded with its error and does not stop the others;
units that need its snapshots stay pending ("blocked") until `--retry-failed`.

Nothing a unit needs travels as a path on the driver's disk: the snapshot a post unit starts
from is in its payload, a host the study derives is installed by the worker from its recipe
(in the payload) on its own node, and results come back to the driver, so the workers need no
access to the store or to the driver's $PEFTPORT_HOME. A unit whose host resolved to other
weights or data than the driver's (another file under the same name on that node) is refused
when its result arrives (`_check_inputs`).
"""

from __future__ import annotations

import contextlib
import sqlite3
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peftport.errors import PeftportError
from peftport.progress import format_duration
from peftport.study.executors import WorkerLost, check_executor, check_gpu_options, make_executor
from peftport.study.gpus import local_slots
from peftport.study.schema import check_store_file
from peftport.study.store import LEASE_SECONDS, Store, crash_point, plan_ids


def format_error(e: BaseException) -> str:
    """A PeftportError is its message; anything else keeps the tail of its traceback."""
    if isinstance(e, PeftportError):
        return f"{type(e).__name__}: {e}"
    tb = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return tb[-4000:]


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
