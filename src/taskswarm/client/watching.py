"""Who else hears of what this process's applications do: the seam to the operations side.

``taskswarm run`` watches the program it runs: it counts the connections the program opens and,
on Ctrl-C, cancels the work each one leaves (``ops/running.py``); its progress board shows every
task system the program sends or waits for (``ops/progress.py``). Neither is the application
node's business, so the application node only tells whoever watches, through this module, and
imports nothing from the operations package. A watcher is told::

    opened(app)             an Application connected to its master
    interrupted(app)        a KeyboardInterrupt is leaving ``app``'s ``with`` block; it closes next
    system_tracked(handle)  a SystemHandle was made (``submit_system``, ``system_result``);
                            ``handle.observe(...)`` then hears of its progress and its end
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .application import Application
    from .handles import SystemHandle

__all__ = ["ApplicationWatcher", "watchers", "watching"]


class ApplicationWatcher:
    """Told of the connections this process opens and the task systems they follow.

    Every hook does nothing here: a watcher overrides those it needs.
    """

    def opened(self, app: Application) -> None:
        """``app`` has connected to its master."""

    def interrupted(self, app: Application) -> None:
        """A KeyboardInterrupt is leaving ``app``'s ``with`` block; it closes next."""

    def system_tracked(self, handle: SystemHandle) -> None:
        """A handle for a task system was made; nothing about the system has come yet."""


_watchers: list[ApplicationWatcher] = []


@contextlib.contextmanager
def watching(watcher: ApplicationWatcher) -> Iterator[ApplicationWatcher]:
    """Tell ``watcher`` of every connection opened, every one Ctrl-C leaves, and every task
    system followed, meanwhile."""
    _watchers.append(watcher)
    try:
        yield watcher
    finally:
        _watchers.remove(watcher)


def watchers() -> list[ApplicationWatcher]:
    """The watchers now (a copy: one may stop watching while it is told)."""
    return list(_watchers)
