"""What an application holds while work runs on the cluster: system handles and the Executor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from typing import TYPE_CHECKING, Any

from . import progress as progress_board
from .progress import Meter, ProgressCallback
from .task import FunctionTask

if TYPE_CHECKING:
    from .nodes.application import Application

__all__ = ["SystemHandle", "TaskFuture", "TaskswarmExecutor"]


class TaskFuture(Future):
    """A ``concurrent.futures.Future`` for one task; ``cancel()`` also tells the master.

    A task still queued is dropped there; one already running finishes, and its result is
    ignored (``app.cancel(task_id)`` stops running ones too).
    """

    def __init__(self, task_id: str, on_cancel: Callable[[str], None]) -> None:
        super().__init__()
        self.task_id = task_id
        self._on_cancel = on_cancel

    def cancel(self) -> bool:
        if not super().cancel():
            return False
        self._on_cancel(self.task_id)
        return True


class SystemHandle:
    """A task system living on the master. Keep ``system_id``: any process can fetch the result.

    ``meter`` tells how far it has got: done, total, rate (tasks/s) and ETA. Under ``taskswarm
    run`` the system also shows on the program's progress board, unless the callback given
    draws progress itself.
    """

    def __init__(
        self, system_id: str, progress: ProgressCallback | None = None, label: str = ""
    ) -> None:
        self.system_id = system_id
        self.progress = progress
        self.done_tasks = 0
        self.total_tasks = 0
        self.meter = Meter(label or f"task system {system_id[:8]}")
        self.meter.update(0, 0)  # the system starts now: its rate counts from here
        board = progress_board.active()
        self._board = None if getattr(progress, "draws_progress", False) else board
        self._future: Future[Any] = Future()

    # -- the caller's side -----------------------------------------------------------------------

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the system's result; raises its error if ``gather_result`` returned one."""
        return self._future.result(timeout)

    def done(self) -> bool:
        return self._future.done()

    def add_done_callback(self, fn: Callable[[Future[Any]], None]) -> None:
        self._future.add_done_callback(fn)

    def __repr__(self) -> str:
        state = "done" if self.done() else f"{self.done_tasks}/{self.total_tasks}"
        return f"<SystemHandle {self.system_id} {state}>"

    # -- the application node's side ------------------------------------------------------------

    def set_progress(self, done: int, total: int) -> None:
        self.done_tasks, self.total_tasks = done, total
        self.meter.update(done, total)
        if self._board is not None:
            self._board.update(self.system_id, done, total, self.meter.label)
        if self.progress is not None:
            self.progress(done, total)

    def set_outcome(self, result: Any = None, error: BaseException | None = None) -> None:
        if self._future.done():
            return
        self.meter.finished, self.meter.failed = True, error is not None
        if self._board is not None:
            self._board.finish(self.system_id, error)
        if error is not None:
            self._future.set_exception(error)
        else:
            self._future.set_result(result)


class TaskswarmExecutor(Executor):
    """A ``concurrent.futures.Executor`` whose calls run on the cluster's workers.

    ``map`` sends its whole batch in one message instead of one per call.
    """

    def __init__(self, app: Application) -> None:
        self._app = app
        self._futures: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self._shutdown = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = self._app.submit(fn, *args, **kwargs)
            self._track(future)
            return future

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[Any]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            futures = self._app.push_tasks(
                [FunctionTask(fn, *args) for args in zip(*iterables, strict=False)]
            )
            for future in futures:
                self._track(future)

        deadline = None if timeout is None else time.monotonic() + timeout

        def results() -> Iterator[Any]:
            try:
                for future in futures:
                    # One deadline for the whole map, counted from the call, as the stdlib does.
                    left = None if deadline is None else max(0.0, deadline - time.monotonic())
                    yield future.result(left)
            finally:
                for future in futures:
                    future.cancel()

        return results()

    def _track(self, future: Future[Any]) -> None:
        self._futures.add(future)
        future.add_done_callback(self._forget)

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        with self._lock:
            self._shutdown = True
            pending = list(self._futures)
        if cancel_futures:
            for future in pending:
                future.cancel()
        if wait:
            for future in pending:
                try:
                    future.exception()
                except BaseException:  # noqa: BLE001 - cancelled: nothing to wait for
                    pass
