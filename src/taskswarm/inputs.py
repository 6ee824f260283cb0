"""Futures as task arguments: what travels in a task's pickle in place of a Future, and how a
worker puts each input's result in its place.

``app.submit(total, fa, fb)`` pickles the task in the caller's thread, as every task is; a
Future of the same application met anywhere in it (an argument, inside a list or a dict, an
attribute of a ``Task``) is reduced by the ``Collector`` of that call:

* an input already done here travels by value: its result is pickled in its place; one that
  failed or was cancelled fails the new task at once (``DependencyFailed``, which the
  application turns into a ``DependencyError`` caused by the input's error);
* one still pending becomes a placeholder, ``given(task_id)``. The task's metadata names it
  (``TaskMeta.deps``); the master holds the task back until every input has its outcome, then
  sends the inputs' pickled results with it (``Tasks.inputs``), or fails it with
  ``DependencyError`` if one failed. The worker unpickles the inputs first, each checked
  against the digest its signed header gave, and ``given`` returns each one's value while the
  task itself is unpickled. A result in shared memory is mapped, not copied, by every task
  that takes it.

The race this must close: an input that finishes while its dependent is being pickled. The
master lets an outcome go once its application confirms it (RESULTS_ACK), and a dependent that
names an outcome the master has let go could not run. So the collector *pins* an input before
it looks whether it is done: a pinned input's confirmation waits (``Ledger.pin``) until the
SUBMIT naming it has been sent, by the I/O thread, which sends the confirmations too. The
master therefore always meets the dependent before it lets the input go; an input found done
after the pin was settled before it, and travels by value.

Everything on the worker's side is import-light: the forkserver preloads what a worker needs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import CancelledError
from typing import Any

from .errors import DependencyError

__all__ = [
    "Collector",
    "DependencyFailed",
    "given",
    "giving",
    "reduce_future",
]


class DependencyFailed(Exception):
    """An input of a task being pickled has already failed (or was cancelled): the task is
    not sent, and its Future fails with ``DependencyError`` (see ``dependency_error``)."""

    def __init__(self, task_id: str, error: BaseException) -> None:
        super().__init__(task_id, error)
        self.task_id, self.error = task_id, error


def dependency_error(task_name: str, dependency: str, cause: BaseException | None) -> Exception:
    """The error of a task whose input failed, its ``__cause__`` the input's own error."""
    what = "was cancelled" if isinstance(cause, CancelledError) else "failed"
    text = f": {type(cause).__name__}: {cause}" if cause is not None and str(cause) else ""
    error = DependencyError(
        f"task {task_name!r} did not run: its input, task {dependency}, {what}{text}",
        dependency=dependency,
    )
    error.__cause__ = cause
    return error


# -- the application's side: pickling a task that holds Futures ---------------------------------


class Collector:
    """The inputs found while one application pickles its tasks (one per ``push_tasks``)."""

    def __init__(
        self, owner: str, pin: Callable[[str], None], unpin: Callable[[Sequence[str]], None]
    ) -> None:
        self.owner = owner
        self.pin, self.unpin = pin, unpin
        #: The pending inputs of the task being pickled, by task id (pinned, in order).
        self.deps: dict[str, Any] = {}

    def take(self) -> dict[str, Any]:
        """The pending inputs of the task just pickled; the next task starts with none."""
        deps, self.deps = self.deps, {}
        return deps

    def reduce(self, future: Any) -> tuple[Any, ...]:
        task_id = future.task_id
        if getattr(future, "owner", None) != self.owner:
            raise TypeError(
                f"the Future of task {task_id} belongs to another connection: a Future can "
                "be a task's argument only on the connection (Application) that made it; "
                "pass its result instead (future.result())"
            )
        if task_id in self.deps:
            return given, (task_id,)
        self.pin(task_id)  # before looking: see the module docstring
        if not future.done() or future.scattered or future.remote is not None:
            self.deps[task_id] = future
            return given, (task_id,)
        self.unpin([task_id])
        if future.cancelled():
            raise DependencyFailed(task_id, CancelledError())
        error = future.exception()
        if error is not None:
            raise DependencyFailed(task_id, error)
        return _same, (future.result(),)


class _Local(threading.local):
    collector: Collector | None = None


_local = _Local()


def collect(active: Collector | None) -> Collector | None:
    """Make ``active`` this thread's collector; returns the one before (to put back)."""
    before, _local.collector = _local.collector, active
    return before


def reduce_future(future: Any) -> tuple[Any, ...]:
    """How a task's Future pickles: only inside a task its application is sending."""
    active = _local.collector
    if active is None:
        raise TypeError(
            f"the Future of task {future.task_id} cannot be pickled: a Future can be passed "
            "only as an argument of a task submitted on the connection that made it "
            "(app.submit, app.push_tasks, app.executor())"
        )
    return active.reduce(future)


def _same(value: Any) -> Any:
    return value


# -- the worker's side: putting results in place ------------------------------------------------

_MISSING = object()
#: The inputs' values while the task that takes them is unpickled, by task id.
_given: dict[str, Any] = {}


def given(task_id: str) -> Any:
    """A placeholder's value: the result of input ``task_id`` (unpickling the task only)."""
    value = _given.get(task_id, _MISSING)
    if value is _MISSING:
        raise DependencyError(
            f"the result of task {task_id}, an input of this task, did not come with it (the "
            "master that held it back restarted, or it was sent by other means than the "
            "application's connection); submit the task again",
            dependency=task_id,
        )
    return value


class giving:  # noqa: N801 - used as a statement: ``with giving(values):``
    """The inputs' values, given while a task is unpickled, and gone right after."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def __enter__(self) -> None:
        _given.update(self.values)

    def __exit__(self, *exc: object) -> None:
        _given.clear()
