"""How far one piece of work has got: counts, and the rate and ETA they imply.

A task system's handle keeps a :class:`Meter` (``handle.meter``) that its application updates as
the master reports progress; the terminal's progress board (``ops/progress.py``) draws meters of
its own from the same counts. The arithmetic lives here, beside the handle that owns a meter, so
the application node needs nothing from the operations package.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Meter", "ProgressCallback", "format_seconds"]

#: Told ``(done, total)`` as a task system progresses.
ProgressCallback = Callable[[int, int], None]

#: Seconds of recent updates the rate is measured over.
RATE_WINDOW = 10.0


@dataclass
class Meter:
    """Counts of one piece of work, with the rate and ETA they imply."""

    label: str
    done: int = 0
    total: int = 0
    started: float = 0.0
    finished: bool = False
    failed: bool = False  # the work as a whole ended in an error
    cancelled: bool = False  # ... or was stopped (Ctrl-C, app.cancel_system)
    tasks_failed: int = 0  # of ``done``, how many ended in an error
    first_failure: str | None = None  # what the first of those said, remote traceback and all

    def __post_init__(self) -> None:
        self.started = self.started or time.monotonic()
        # The rate comes from updates only: a meter that starts watching work already under
        # way (a board's first report of a system) must not count it all as done at once.
        self._samples: deque[tuple[float, int]] = deque()

    def update(
        self,
        done: int,
        total: int,
        now: float | None = None,
        failed: int | None = None,
        first_failure: str | None = None,
    ) -> None:
        now = time.monotonic() if now is None else now
        self.done, self.total = done, max(total, done)
        if failed is not None:
            self.tasks_failed = failed
        if first_failure and self.first_failure is None:
            self.first_failure = first_failure
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[1][0] > RATE_WINDOW:
            self._samples.popleft()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Tasks per second over the recent window (the whole run when it is short)."""
        if len(self._samples) < 2:
            return 0.0
        (t0, d0), (t1, d1) = self._samples[0], self._samples[-1]
        return (d1 - d0) / (t1 - t0) if t1 > t0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds still to go at the recent rate; None while it cannot be told."""
        if self.finished:
            return 0.0
        rate = self.rate
        if rate <= 0 or self.total <= 0:
            return None
        return max(0.0, (self.total - self.done) / rate)

    @property
    def state(self) -> str:
        """How the work ended: ``done``, ``failed`` or ``cancelled`` (``running`` until then)."""
        if not self.finished:
            return "running"
        return "cancelled" if self.cancelled else "failed" if self.failed else "done"

    def describe(self) -> str:
        """One line: ``label: done/total (P%), F failed, R tasks/s, ETA T`` -- what a log line
        says (the failed count only when some failed)."""
        percent = f" ({100 * self.done // self.total}%)" if self.total else ""
        text = f"{self.label}: {self.done}/{self.total or '?'} tasks{percent}"
        if self.tasks_failed:
            text += f", {self.tasks_failed} failed"
        if self.finished:
            how = self.state
            rate = self.done / self.elapsed if self.elapsed > 0 else 0.0
            return f"{text}, {how} in {format_seconds(self.elapsed)} ({rate:.1f} tasks/s)"
        eta = "?" if self.eta is None else format_seconds(self.eta)
        return f"{text}, {self.rate:.1f} tasks/s, ETA {eta}"


def format_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h04m``: short enough for a column, exact enough to plan by."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
