"""Progress in a notebook: a task system's table, redrawn in place while ``run_system`` waits.

A terminal gets rich's bars (``ops/progress.py``, under ``taskswarm run``); a Jupyter kernel has
no terminal, and its stderr is a stream of text where a bar would print a line per redraw. In a
kernel, ``run_system`` shows the system's table (``html.system_html``) with ``IPython.display``
and updates that one output as the master reports progress, until the system ends::

    I/O thread: SYSTEM_PROGRESS -> handle.set_progress -> observer: changed.set()
                SYSTEM_DONE     -> handle.set_outcome  -> done callback: finished.set()
    the cell's thread: wait on changed (at most one redraw per REDRAW_INTERVAL)
                       -> display handle .update(HTML(system_html(handle)))

The redrawing is done by the thread that waits (the cell's), never by the application's I/O
thread: a kernel sends each output as from the cell the sending thread belongs to, and a
display call must not hold up the messages of every connection behind it. IPython is imported
only where it runs already; no widget library is needed.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

from .html import system_html

if TYPE_CHECKING:
    from .handles import SystemHandle
    from .meter import ProgressCallback

__all__ = ["REDRAW_INTERVAL", "in_kernel", "shows_progress", "wait_showing"]

#: Least seconds between two redraws: a fast system reports more often than anyone reads.
REDRAW_INTERVAL = 0.2


def in_kernel() -> bool:
    """Whether this process is an IPython kernel (Jupyter, VS Code's notebooks), where an HTML
    output can be updated in place; a plain IPython shell in a terminal is not one."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    shell = ipython.get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def shows_progress(progress: ProgressCallback | None) -> bool:
    """Whether ``run_system`` should draw progress here: in a kernel, unless the program's
    callback draws it already (``ops.progress.progress_display``)."""
    return in_kernel() and not getattr(progress, "draws_progress", False)


class _Changes:
    """Events the I/O thread sets as the system reports: ``changed`` (progress or the end)
    and ``finished``."""

    def __init__(self, handle: SystemHandle) -> None:
        self.changed = threading.Event()
        self.finished = threading.Event()
        handle.observe(self)
        # A done callback runs at once when the system ended already: no end goes unseen.
        handle.add_done_callback(self._ended)

    def system_progress(self, handle: SystemHandle) -> None:
        self.changed.set()

    def system_finished(self, handle: SystemHandle, error: BaseException | None) -> None:
        self.changed.set()

    def _ended(self, future: Future[Any]) -> None:
        self.finished.set()
        self.changed.set()


def wait_showing(handle: SystemHandle, timeout: float | None = None) -> Any:
    """``handle.result(timeout)``, with the system's table shown and kept up to date meanwhile."""
    display = importlib.import_module("IPython.display")
    shown = display.display(display.HTML(system_html(handle)), display_id=True)
    changes = _Changes(handle)
    deadline = None if timeout is None else time.monotonic() + timeout
    while not changes.finished.is_set():
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            break
        if changes.changed.wait(left):
            changes.changed.clear()
            shown.update(display.HTML(system_html(handle)))
            # Reports that come meanwhile make one redraw; the end cuts the pause short.
            changes.finished.wait(REDRAW_INTERVAL)
    shown.update(display.HTML(system_html(handle)))
    return handle.result(0)
