"""Progress for every step that may take more than about 10 s, in and out of a terminal.

On a terminal: a tqdm bar (redrawn in place). Outside one (CI, nohup, a log file): no carriage
returns; one plain line when the step starts, one every `interval()` seconds (30 by default,
`PEFTPORT_PROGRESS_INTERVAL`) and one when it ends. Durations read as minutes and seconds
(`format_duration`). `ticker` covers steps with no count to show (it says the step still runs).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import IO, Any

INTERVAL_ENV = "PEFTPORT_PROGRESS_INTERVAL"


def interval() -> float:
    """Seconds between two plain progress lines (outside a terminal)."""
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, "30")))
    except ValueError:
        return 30.0


def format_duration(seconds: float) -> str:
    """'0.4 s', '12 s', '33 min 12 s', '2 h 05 min': what a person reads, not '1992 s'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m:02d} min"
    return f"{m} min {sec} s"


def is_terminal(stream: IO[str] | None = None) -> bool:
    stream = stream if stream is not None else sys.stderr
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LineProgress:
    """tqdm's small interface (update, set_postfix, write, close, iteration) as plain lines."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        total: int | None = None,
        desc: str = "",
        unit: str = "step",
        stream: IO[str] | None = None,
        every: float | None = None,
    ) -> None:
        self.iterable = iterable
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.units = unit + ("es" if unit.endswith(("ch", "sh", "s", "x")) else "s")  # batches
        self.stream = stream if stream is not None else sys.stderr
        self.every = interval() if every is None else every
        self.n = 0
        self.postfix = ""
        self.t0 = self.last = time.monotonic()
        self.closed = False
        self._line(f"started{f', {total:,} {self.units}' if total else ''}")

    def _line(self, what: str) -> None:
        print(f"{self.desc}: {what}" if self.desc else what, file=self.stream, flush=True)

    def _status(self) -> str:
        elapsed = time.monotonic() - self.t0
        parts = [
            f"{self.n:,}/{self.total:,} {self.units}" if self.total else f"{self.n:,} {self.units}"
        ]
        if self.total:
            parts[0] += f" ({100 * self.n / max(1, self.total):.0f}%)"
        parts.append(f"{format_duration(elapsed)} elapsed")
        if self.total and 0 < self.n < self.total:
            parts.append(f"about {format_duration(elapsed / self.n * (self.total - self.n))} left")
        if self.postfix:
            parts.append(self.postfix)
        return ", ".join(parts)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        if now - self.last >= self.every:
            self.last = now
            self._line(self._status())

    def set_postfix(
        self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any
    ) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = " ".join(f"{k}={v}" for k, v in items.items())

    def write(self, s: str) -> None:
        print(s, file=self.stream, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line(f"finished, {self._status()}")

    def __iter__(self) -> Iterator[Any]:
        assert self.iterable is not None
        for x in self.iterable:
            yield x
            self.update(1)
        self.close()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "step",
    enabled: bool = True,
    leave: bool = False,
    stream: IO[str] | None = None,
) -> Any:
    """A progress bar on a terminal, plain periodic lines elsewhere; with `enabled=False` a
    silent tqdm (the same interface, nothing printed)."""
    from tqdm import tqdm

    stream = stream if stream is not None else sys.stderr
    if enabled and not is_terminal(stream):
        return LineProgress(iterable, total=total, desc=desc, unit=unit, stream=stream)
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        leave=leave,
        disable=not enabled,
        dynamic_ncols=True,
        mininterval=1.0,
        file=stream,
    )


@contextmanager
def ticker(
    desc: str, *, stream: IO[str] | None = None, every: float | None = None, enabled: bool = True
) -> Iterator[None]:
    """For a step with nothing to count: 'desc: still running, 1 min 0 s' every `every` seconds
    (on a terminal every 10 s, elsewhere every `interval()`), then 'desc: done in ...'."""
    stream = stream if stream is not None else sys.stderr
    if not enabled:
        yield
        return
    every = every if every is not None else (10.0 if is_terminal(stream) else interval())
    t0 = time.monotonic()
    stop = threading.Event()

    def run() -> None:
        while not stop.wait(every):
            print(
                f"{desc}: still running, {format_duration(time.monotonic() - t0)}",
                file=stream,
                flush=True,
            )

    thread = threading.Thread(target=run, daemon=True, name="peftport-ticker")
    if every > 0:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if thread.is_alive():
            thread.join()
    took = time.monotonic() - t0
    if took >= every:  # a short step needs no closing line
        print(f"{desc}: done in {format_duration(took)}", file=stream, flush=True)
