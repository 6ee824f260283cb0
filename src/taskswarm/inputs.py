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

A task system's tasks take each other's results the same way, with a ``ResultRef`` (what
``master.push_task`` returns) in place of a Future. Its runner thread pickles the tasks it pushes
with a ``SystemCollector``: a ref whose task's outcome the runner has applied travels by value
(or fails its taker at once, on the runner), one still pending becomes a placeholder and the
master holds the taker back as it holds an application's. The race here: an input that finished
on the master, its outcome on its way to the runner, when the runner pushes its taker. The
master, which has let that outcome go, sends the taker back to the runner (``RESEND``), after
the outcome in the runner's inbox; the runner, which has applied it by then, pickles the taker
again with the input's result by value.

Everything on the worker's side is import-light: the forkserver preloads what a worker needs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from typing import Any

from .errors import DependencyError

__all__ = [
    "Collector",
    "DependencyFailed",
    "ResultRef",
    "SystemCollector",
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

    def reduce_ref(self, ref: ResultRef) -> tuple[Any, ...]:
        raise TypeError(
            f"the ResultRef of task {ref.task_id} belongs to a task system: it can be an argument "
            "only of a task that system pushes (master.push_task)"
        )


# -- a task system's side: the refs its runner pickles ------------------------------------------


class ResultRef:
    """A task system's pushed task, standing for its result: what ``master.push_task`` returns.

    Put it among the arguments or attributes of a task the same system pushes later and that
    task runs once this one is done, with its result in the ref's place (a failed one fails
    it with ``DependencyError``, caused by its error). The runner keeps, in a ref still
    referred to, its task's outcome once applied (``outcome``), so a taker pushed after it
    finished takes it by value; a ref no one refers to costs nothing after its task is done.
    """

    __slots__ = ("__weakref__", "name", "outcome", "system_id", "task_id")

    def __init__(self, task_id: str, system_id: str, name: str) -> None:
        self.task_id, self.system_id, self.name = task_id, system_id, name
        #: ``(result, error)`` once the runner applied the task's outcome; None before.
        self.outcome: tuple[Any, BaseException | None] | None = None

    def done(self) -> bool:
        return self.outcome is not None

    def __repr__(self) -> str:
        state = "pending" if self.outcome is None else "done"
        return f"<ResultRef of task {self.name!r} ({self.task_id}) {state}>"

    def __reduce__(self) -> tuple[Any, ...]:
        active = _local.collector
        if active is not None:
            return active.reduce_ref(self)
        # A durable system's snapshot: the ref as it is, found again by its runner on restore.
        return _revive, (self.task_id, self.system_id, self.name, self.outcome)


def _revive(task_id: str, system_id: str, name: str, outcome: tuple[Any, Any] | None) -> ResultRef:
    ref = ResultRef(task_id, system_id, name)
    ref.outcome = outcome
    register = _local.revive
    if register is not None and outcome is None:
        register(ref)
    return ref


class SystemCollector:
    """The inputs found while a task system's runner pickles the tasks it pushes."""

    def __init__(self, system_id: str) -> None:
        self.system_id = system_id
        #: The pending inputs of the task being pickled, by task id.
        self.deps: dict[str, ResultRef] = {}
        #: Pickling a task the master sent back: the input it did not know (``RESEND``).
        self.unknown = ""

    def take(self) -> dict[str, ResultRef]:
        deps, self.deps = self.deps, {}
        return deps

    def reduce_ref(self, ref: ResultRef) -> tuple[Any, ...]:
        if ref.system_id != self.system_id:
            raise TypeError(
                f"the ResultRef of task {ref.task_id} belongs to another task system: a ref can "
                "be an argument only of a task the system that pushed it pushes"
            )
        if ref.outcome is None:
            if ref.task_id == self.unknown:  # sent back by the master, yet still pending here
                raise DependencyFailed(ref.task_id, LookupError(ref.task_id))
            self.deps[ref.task_id] = ref
            return given, (ref.task_id,)
        result, error = ref.outcome
        if error is not None:
            raise DependencyFailed(ref.task_id, error)
        return _same, (result,)

    def reduce(self, future: Any) -> tuple[Any, ...]:
        raise TypeError(
            f"the Future of task {future.task_id} cannot be an argument of a task a task system "
            "pushes: pass the ResultRef master.push_task returned for it (or its result)"
        )


class _Local(threading.local):
    collector: Collector | SystemCollector | None = None
    #: While a runner unpickles its system's snapshot: where the refs in it are registered.
    revive: Callable[[ResultRef], None] | None = None


_local = _Local()


def collect(active: Collector | SystemCollector | None) -> Collector | SystemCollector | None:
    """Make ``active`` this thread's collector; returns the one before (to put back)."""
    before, _local.collector = _local.collector, active
    return before


@contextlib.contextmanager
def reviving(register: Callable[[ResultRef], None]) -> Iterator[None]:
    """While a runner unpickles its system's snapshot: each pending ref in it is registered."""
    before, _local.revive = _local.revive, register
    try:
        yield
    finally:
        _local.revive = before


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
