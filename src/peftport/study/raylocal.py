"""The local Ray instance a study driver starts: shut down on every exit path, cleaned after a
driver that could not shut it down.

A driver that starts Ray itself (no `--address`) writes `$PEFTPORT_HOME/ray/<pid>.json`: its own
pid and start time, and the pids and start times of the processes Ray started for it (GCS,
raylet, dashboard and runtime-env agents, workers). It shuts Ray down at a normal end, on an
error, on Ctrl-C (KeyboardInterrupt), on SIGTERM and SIGHUP (turned into SystemExit so the
driver's cleanup runs) and at interpreter exit (atexit), then removes the file. Only SIGKILL
(or a power cut) leaves the file behind with Ray's processes running: the next driver that
starts Ray (`clean_stale`) ends those processes, if they are still the same processes (pid and
start time) and their driver is gone.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any


def records_dir() -> Path:
    from peftport.assets import peftport_home

    return peftport_home() / "ray"


def _started(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None


def _same(pid: int, created: float | None) -> bool:
    have = _started(pid)
    return have is not None and created is not None and abs(have - created) < 0.01


def _descendants() -> list[dict[str, Any]]:
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            out.append({"pid": p.pid, "created": p.create_time(), "name": p.name()})
    return out


def clean_stale(echo: Any = None) -> list[int]:
    """End the Ray processes of peftport drivers that died without shutting Ray down (their
    record is left and their pid is gone). Returns the pids ended."""
    import psutil

    ended: list[int] = []
    folder = records_dir()
    if not folder.is_dir():
        return ended
    for f in sorted(folder.glob("*.json")):
        try:
            rec = json.loads(f.read_text())
            driver, created = int(rec["driver"]), rec.get("driver_created")
        except (OSError, ValueError, KeyError, TypeError):
            f.unlink(missing_ok=True)
            continue
        if _same(driver, created):
            continue  # that driver still runs: its Ray is in use
        procs = []
        for r in rec.get("processes", []):
            if _same(int(r["pid"]), r.get("created")):
                with contextlib.suppress(psutil.Error):
                    p = psutil.Process(int(r["pid"]))
                    procs.append(p)
                    procs += p.children(recursive=True)  # workers started later
        unique = {p.pid: p for p in procs}
        for p in unique.values():
            with contextlib.suppress(psutil.Error):
                p.terminate()
        _, alive = psutil.wait_procs(list(unique.values()), timeout=5)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=5)
        ended += sorted(unique)
        f.unlink(missing_ok=True)
        if unique and echo is not None:
            echo(
                f"ended {len(unique)} Ray process(es) left by peftport driver pid {driver}, "
                "which was killed"
            )
    return ended


class LocalRay:
    """Owns a local Ray instance started by this driver (see the module's doc)."""

    def __init__(self, ray: Any) -> None:
        self.ray = ray
        self.path = records_dir() / f"{os.getpid()}.json"
        self._closed = False
        self.received: int | None = None
        self._old: dict[int, Any] = {}
        atexit.register(self.shutdown)
        if threading.current_thread() is threading.main_thread():
            # over whatever ray.init installed (its handler aborts the driver, skipping the
            # cleanup); restored at shutdown
            for sig in (signal.SIGTERM, signal.SIGHUP):
                self._old[sig] = signal.signal(sig, self._on_signal)
        self.record()

    def record(self) -> None:
        """Write (again) which processes Ray runs for this driver."""
        from peftport.atomic import write_json

        rec = {
            "driver": os.getpid(),
            "driver_created": _started(os.getpid()),
            "processes": _descendants(),
            "at": time.time(),
        }
        write_json(self.path, rec)

    def _on_signal(self, signum: int, frame: Any) -> None:
        # unwind like an exception: the driver releases its claims, then Ray is shut down.
        # Ray turns a SystemExit raised inside its calls into SystemExit(1): `received` keeps
        # the signal for the exit code
        self.received = signum
        raise SystemExit(128 + signum)

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.ray.shutdown()
        finally:
            self.path.unlink(missing_ok=True)
            for sig, old in self._old.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, old if old is not None else signal.SIG_DFL)
            atexit.unregister(self.shutdown)
