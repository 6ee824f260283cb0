"""Progress on long work: one bar per task system on a terminal, plain log lines elsewhere.

A task system reports ``(done, total)`` as it goes (``SYSTEM_PROGRESS``), with how many of its
tasks failed and, once, what the first failure said; what a person wants to see is how fast, how
long still, and whether the work is failing. :class:`Meter` turns the counts into a rate and an
ETA (over a recent window, so a slow start or a change of pace does not skew it for ever), and
:class:`ProgressBoard` shows every meter: a rich bar each on an interactive terminal; on a pipe or
in CI, a log line every tenth of the way (and at least every ``LOG_INTERVAL`` seconds) -- never
a line per task.

``taskswarm run`` puts up a board for the whole program (:func:`installed`), and every task
system the program sends or waits for appears on it by itself, including those of an
``ApplicationNode``. A program that draws its own progress asks for a bar with
:func:`progress_display`: on the run's board when there is one, on its own otherwise, so the
same system never shows twice.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, TextIO

from ..client.meter import Meter, ProgressCallback, format_seconds
from ..client.watching import ApplicationWatcher, watching

if TYPE_CHECKING:
    from ..client.handles import SystemHandle

__all__ = [
    "Meter",
    "ProgressBoard",
    "ProgressCallback",
    "active",
    "format_seconds",
    "installed",
    "progress_display",
]

#: Most seconds between two log lines of one unfinished meter (in plain-line mode).
LOG_INTERVAL = 30.0


class ProgressBoard:
    """Every meter of one program, drawn as bars on a terminal or logged as lines otherwise.

    Thread-safe: updates come from an application's I/O thread while the program's own thread
    prints. The rich display starts with the first meter, so a program that sends no task
    system never gets an empty live region.
    """

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interactive = self.stream.isatty() if interactive is None else interactive
        self._lock = threading.Lock()
        self._meters: dict[str, Meter] = {}
        self._logged: dict[str, tuple[int, float]] = {}  # key -> (tenth, when) of its last line
        self._rich: Any = None
        self._bars: dict[str, Any] = {}
        self._told_failure: set[str] = set()  # meters whose first failure was shown
        self._closed = False

    def __enter__(self) -> ProgressBoard:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._rich is not None:
                self._rich.stop()
                self._rich = None

    def update(
        self,
        key: str,
        done: int,
        total: int,
        label: str | None = None,
        failed: int = 0,
        first_failure: str | None = None,
    ) -> None:
        """New counts for ``key``; the first failure's text is shown once, when it comes."""
        with self._lock:
            meter = self._meters.get(key)
            if meter is None:
                meter = self._meters[key] = Meter(label or key)
            if meter.finished or self._closed:
                return
            meter.update(done, total, failed=failed, first_failure=first_failure)
            self._show(key, meter)
            self._tell_failure(key, meter)

    def finish(self, key: str, error: BaseException | None = None) -> None:
        with self._lock:
            meter = self._meters.get(key)
            if meter is None or meter.finished or self._closed:
                return
            meter.finished, meter.failed = True, error is not None
            self._show(key, meter)

    def cancel(self, key: str) -> Meter | None:
        """Show ``key`` as cancelled (Ctrl-C): its meter, to say how far it got, or None."""
        with self._lock:
            meter = self._meters.get(key)
            if meter is None or meter.finished or self._closed:
                return meter
            meter.finished, meter.cancelled = True, True
            self._show(key, meter)
            return meter

    def callback(self, key: str, label: str) -> ProgressCallback:
        """A ``(done, total)`` callback that draws on this board under ``label``."""

        def report(done: int, total: int) -> None:
            self.update(key, done, total, label)
            if total and done >= total:
                self.finish(key)

        report.draws_progress = True  # type: ignore[attr-defined]
        return report

    # -- drawing (with the lock held) -----------------------------------------------------------

    def _show(self, key: str, meter: Meter) -> None:
        if self.interactive:
            self._draw(key, meter)
        else:
            self._log(key, meter)

    def _tell_failure(self, key: str, meter: Meter) -> None:
        """Print what the first failed task said, once: a run whose every task fails shows why
        at once, not only a count."""
        if meter.first_failure is None or key in self._told_failure:
            return
        self._told_failure.add(key)
        text = f"{meter.label}: first failure: {meter.first_failure}"
        if self._rich is not None:
            self._rich.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)

    def _log(self, key: str, meter: Meter) -> None:
        tenth = 10 * meter.done // meter.total if meter.total else 0
        now = time.monotonic()
        last = self._logged.get(key)
        if (
            last is not None
            and not meter.finished
            and tenth <= last[0]
            and now - last[1] < LOG_INTERVAL
        ):
            return
        self._logged[key] = (tenth, now)
        print(meter.describe(), file=self.stream, flush=True)

    def _draw(self, key: str, meter: Meter) -> None:
        if self._rich is None:
            self._rich = _rich_progress(self.stream)
            self._rich.start()
        if meter.finished:
            state = meter.state
        else:
            state = "ETA ?" if meter.eta is None else f"ETA {format_seconds(meter.eta)}"
        failed = f"[red]{meter.tasks_failed} failed[/red]" if meter.tasks_failed else ""
        fields = {"rate": f"{meter.rate:.1f} tasks/s", "eta": state, "failed": failed}
        bar = self._bars.get(key)
        if bar is None:
            bar = self._bars[key] = self._rich.add_task(meter.label, total=None, **fields)
        self._rich.update(bar, completed=meter.done, total=meter.total or None, **fields)


def _rich_progress(stream: TextIO) -> Any:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[failed]}"),
        TextColumn("{task.fields[rate]}"),
        TextColumn("{task.fields[eta]}"),
        console=Console(file=stream),
        transient=False,
        # The program's prints go above the bars when they share the terminal; output sent
        # elsewhere (a file, a pipe) stays where the program sent it.
        redirect_stdout=_is_terminal(sys.stdout),
        redirect_stderr=stream is sys.stderr,
    )


def _is_terminal(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError):
        return False


# -- the program's board ------------------------------------------------------------------------

_active: ProgressBoard | None = None


def active() -> ProgressBoard | None:
    """The board ``taskswarm run`` put up for this program, if any."""
    return _active


@contextlib.contextmanager
def installed(board: ProgressBoard) -> Iterator[ProgressBoard]:
    """Make ``board`` the program's board while the block runs: every task system shows on it."""
    global _active
    previous, _active = _active, board
    try:
        with watching(_ShowSystems(board)):
            yield board
    finally:
        _active = previous


class _ShowSystems(ApplicationWatcher):
    """Puts every task system followed meanwhile on ``board``: each handle made is observed,
    unless its own progress callback draws (on this board or its own) already."""

    def __init__(self, board: ProgressBoard) -> None:
        self.board = board

    def system_tracked(self, handle: SystemHandle) -> None:
        if not getattr(handle.progress, "draws_progress", False):
            handle.observe(self)

    def system_progress(self, handle: SystemHandle) -> None:
        meter = handle.meter
        self.board.update(
            handle.system_id,
            meter.done,
            meter.total,
            meter.label,
            meter.tasks_failed,
            meter.first_failure,
        )

    def system_finished(self, handle: SystemHandle, error: BaseException | None) -> None:
        self.board.finish(handle.system_id, error)


@contextlib.contextmanager
def progress_display(
    label: str, quiet: bool = False, stream: TextIO | None = None
) -> Iterator[ProgressCallback | None]:
    """A ``(done, total)`` callback that shows progress under ``label`` (nothing when ``quiet``).

    It draws on the program's board when ``taskswarm run`` put one up, on a board of its own
    otherwise (a bar on an interactive stderr, log lines on a pipe). A quiet one still stands
    for the work, so the run's board does not show it either.
    """
    if quiet:
        yield _silent
        return
    key = f"{label}#{id(object())}"
    board = active()
    if board is not None:
        yield board.callback(key, label)
        return
    with ProgressBoard(stream) as own:
        yield own.callback(key, label)


def _silent(done: int, total: int) -> None:
    """Progress no one is to see."""


_silent.draws_progress = True  # type: ignore[attr-defined]
