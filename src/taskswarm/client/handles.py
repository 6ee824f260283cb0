"""What an application holds while work runs on the cluster: system handles and the Executor."""

from __future__ import annotations

import concurrent.futures
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import TYPE_CHECKING, Any, Protocol

import cloudpickle

from ..errors import BadDigest, TaskError
from ..inputs import reduce_future
from ..protocol.pickling import UnpicklableTask
from ..protocol.sharing import Mapped
from ..task import FunctionTask
from . import html
from .meter import Meter, ProgressCallback
from .remote import Remote

if TYPE_CHECKING:
    from .application import Application

__all__ = ["SystemHandle", "SystemObserver", "TaskFuture", "TaskswarmExecutor"]


class TaskFuture(Future[Any]):
    """A ``concurrent.futures.Future`` for one task, with the stdlib's states and rules.

    It is *running* once a worker has begun its task (its slave tells the master, which tells
    this application). ``cancel()`` works only before that, as the stdlib defines it: it
    returns True, the Future is cancelled at once, and the task is dropped wherever it still
    waits (the master's queue, a slave's, or behind another task in a worker's pipeline). On
    a running task it returns False and the task runs on. Cancelling travels: a task that was
    already reaching a worker as ``cancel()`` was called may still run there, its outcome
    discarded. ``app.cancel(future)`` stops a running task too, on purpose (its worker is
    replaced).

    A TaskFuture may be an argument of another task of the same connection (``app.submit(f,
    future)``): that task runs once this one is done, with its result in the Future's place
    (``taskswarm.inputs``).
    """

    def __init__(
        self, task_id: str, on_cancel: Callable[[str], None], owner: str | None = None
    ) -> None:
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel
        #: The ``client_id`` of the connection that made it: only its tasks may take it.
        self.owner = owner
        #: The Futures this one's task took as arguments that were pending then (let go once
        #: it is done).
        self.inputs: tuple[TaskFuture, ...] = ()

    #: The Future of scattered data (``app.scatter``): the master keeps its value for the
    #: tasks that take it, so it travels to them by reference, not pickled into each.
    scattered = False
    #: Its result stayed on its slave (``taskswarm.client.remote``): fetched by ``result()``.
    remote: Remote | None = None
    #: Its task's name (``Task.name``), for people to read.
    name = ""

    def _repr_html_(self) -> str:
        return html.future_html(self)

    def result(self, timeout: float | None = None) -> Any:
        value = super().result(timeout)
        if type(value) is Mapped:
            return self._read(value)
        remote = self.remote
        if remote is None or value is not remote:
            return value
        with remote.lock:  # one fetch, whoever asks first; the others wait for it
            if self.remote is None:
                return self._result
            value = remote.get(timeout)
            self._result = value
            self.remote = None
        if remote.release is not None:
            remote.release()  # here now: its slave may let it go
        return value

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        return reduce_future(self)

    def __await__(self) -> Generator[Any, None, Any]:
        """``await future`` in a coroutine, whichever connection made it: the result, waited
        for without blocking the event loop (``taskswarm.client.aio`` says what cancelling
        the awaiting asyncio task does)."""
        from .aio import outcome  # here, not above: asyncio loads only for programs that await

        return outcome(self).__await__()

    def _read(self, mapped: Mapped) -> Any:
        """A result in shared memory, read the first time it is asked for (one read, whoever
        asks first; the others wait for it and take its value)."""
        with mapped.lock:
            if self._result is not mapped:
                return self._result
            try:
                value = mapped.load(cloudpickle.loads)
            except BadDigest:
                raise
            except BaseException as exc:  # noqa: BLE001 - a SystemExit from __setstate__ too
                raise TaskError(
                    f"the result of task {self.name or self.task_id!r} could not be unpickled "
                    f"here: {type(exc).__name__}: {exc}"
                ) from exc
            self._result = value
        return value

    def cancel(self) -> bool:
        if not self._cancel(running_too=False):
            return False
        self._on_cancel(self.task_id)
        return True

    # -- the application node's side -------------------------------------------------------------

    def mark_running(self) -> None:
        """The master handed the task to a slave: from now on ``cancel()`` returns False."""
        if self._state != PENDING:
            return  # done or cancelled meanwhile (the usual case for tiny tasks): no lock
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()

    def stop(self) -> bool:
        """Cancel whether running or not (``app.cancel``); False once the outcome is in."""
        return self._cancel(running_too=True)

    def _cancel(self, running_too: bool) -> bool:
        with self._condition:
            if self._state == FINISHED or (self._state == RUNNING and not running_too):
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED
            self._condition.notify_all()
            # Waiters (wait, as_completed) learn of a cancellation only through this call,
            # which a local executor makes when it would have run the call; here nothing
            # local ever would.
            self.set_running_or_notify_cancel()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # the stdlib's own, unstubbed
        return True


class SystemObserver(Protocol):
    """Hears of one task system's progress and end (``SystemHandle.observe``): how a progress
    board follows a system without the handle knowing of boards."""

    def system_progress(self, handle: SystemHandle) -> None:
        """New counts are in ``handle.meter``."""

    def system_finished(self, handle: SystemHandle, error: BaseException | None) -> None:
        """The system ended, with ``error`` when it failed."""


class SystemHandle:
    """A task system living on the master. Keep ``system_id``: any process can fetch the result.
    ``name`` is the system's ``TaskSystem.name`` ("" when not known here).

    ``meter`` tells how far it has got: done, total, rate (tasks/s) and ETA. Under ``taskswarm
    run`` the system also shows on the program's progress board, unless the callback given
    draws progress itself.
    """

    def __init__(
        self,
        system_id: str,
        progress: ProgressCallback | None = None,
        label: str = "",
        *,
        name: str = "",
    ) -> None:
        self.system_id = system_id
        self.name = name
        self.progress = progress
        self.done_tasks = 0
        self.total_tasks = 0
        # Named as people see it everywhere: `my-sweep 1f2e3d4c` (the id's start tells apart
        # systems of one name, and is enough for `taskswarm result`).
        self.meter = Meter(label or f"{name or 'task system'} {system_id[:8]}")
        self.meter.update(0, 0)  # the system starts now: its rate counts from here
        self._observers: list[SystemObserver] = []
        self._future: Future[Any] = Future()

    # -- the caller's side -----------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the system's result; raises its error if ``gather_result`` returned one."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, fn: Callable[[Future[Any]], None]) -> None:
        self._future.add_done_callback(fn)

    def observe(self, observer: SystemObserver) -> None:
        """Tell ``observer`` of each progress report and of the end (on the I/O thread)."""
        self._observers.append(observer)

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.done_tasks}/{self.total_tasks}"
        name = f" {self.name!r}" if self.name else ""
        return f"<SystemHandle {self.system_id}{name} {state}>"

    def _repr_html_(self) -> str:
        return html.system_html(self)

    # -- the application node's side ------------------------------------------------------------

    def set_progress(
        self, done: int, total: int, failed: int = 0, first_failure: str | None = None
    ) -> None:
        self.done_tasks, self.total_tasks = done, total
        self.meter.update(done, total, failed=failed, first_failure=first_failure)
        for observer in self._observers:
            observer.system_progress(self)
        if self.progress is not None:
            self.progress(done, total)

    def set_outcome(self, result: Any = None, error: BaseException | None = None) -> None:
        if self._future.done():
            return
        self.meter.finished, self.meter.failed = True, error is not None
        for observer in self._observers:
            observer.system_finished(self, error)
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)


class TaskswarmExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run on the cluster's workers.

    ``map`` sends its whole batch in one message instead of one per call. Every call is a
    ``FunctionTask``: keyword arguments (``timeout`` included) go to the function, as the
    stdlib's executors do; use ``app.submit(..., timeout=)`` for a task time limit.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        # Weak: a pending future is kept alive by the application until its outcome is in, and
        # nothing here may keep a finished one (or its result) alive for the caller.
        self._futures: weakref.WeakSet[Future[Any]] = weakref.WeakSet()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        # The lock orders submissions against shutdown; nothing that may call back into this
        # executor (a done-callback fired at once) runs under it.
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            try:
                (future,) = self._app.push_tasks([FunctionTask(fn, *args, **kwargs)])
            except UnpicklableTask as exc:
                # As the stdlib's process pool, whose feeder thread pickles the call: the
                # Future fails with the pickler's own error (``app.submit`` raises at once).
                return _failed(exc)
            self._futures.add(future)
        return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            calls = zip(*iterables, strict=False)
            futures = self._app.push_tasks(FunctionTask(fn, *args) for args in calls)
            self._futures.update(futures)
        futures.reverse()  # popped from the end, in order

        def results() -> Iterator[Any]:
            # Each future is let go as its result is yielded: the caller alone holds a result.
            try:
                while futures:
                    if deadline is None:
                        yield _result_or_cancel(futures.pop())
                    else:
                        # One deadline for the whole map, counted from the call, as the stdlib.
                        yield _result_or_cancel(futures.pop(), deadline - time.monotonic())
            finally:
                self._app.cancel_pending(futures)  # those never asked for: one message

        return results()

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = [f for f in list(self._futures) if not f.done()]
        if cancel_futures:
            self._app.cancel_queued(pending)  # what no slave has started: a running one finishes
        if wait:
            concurrent.futures.wait(pending)


def _failed(exc: UnpicklableTask) -> Future[Any]:
    error = exc.__cause__ if isinstance(exc.__cause__, Exception) else exc
    if error is not exc and hasattr(error, "add_note"):
        error.add_note(str(exc))
    future: Future[Any] = Future()
    future.set_exception(error)
    return future


def _result_or_cancel(future: Future[Any], timeout: float | None = None) -> Any:
    try:
        try:
            return future.result(timeout)
        finally:
            future.cancel()
    finally:
        del future  # the exception it holds refers back to this frame
