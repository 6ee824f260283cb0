"""The seed's callback style: subclass ApplicationNode, override its hooks, call ``run()``.

``taskswarm run my_app.py`` runs the ApplicationNode subclass an app file defines
(``my_app.py:ClassName`` picks one when it defines several), constructed without arguments:
such a node reads its options from ``sys.argv``, which holds what follows the app on the
command line.

Which thread calls what: ``get_task_system``, ``start_processing`` and ``work_finished`` run on
the thread that called ``run()`` (the main thread under ``taskswarm run``), as do
``push_task_response`` and ``push_task_failed`` (on the thread that pushed). ``task_finished``
and ``system_progress`` run on the connection's I/O thread, one at a time: keep them short (a
slow one holds up every later result); pushing more tasks from them is fine.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import Future
from typing import Any

from ..task import Task

__all__ = ["ApplicationNode"]


class ApplicationNode:
    """Override ``get_task_system`` and/or ``start_processing`` and the result hooks."""

    #: Set on the class once one of its instances ran: `taskswarm run` then does not run it
    #: again after the file's own code did.
    _taskswarm_ran: bool = False

    def __init__(
        self,
        master: str | None = None,
        key_file: str | None = None,
        slaves: int | None = None,
        workers: int | None = None,
    ) -> None:
        self.master, self.key_file = master, key_file
        self.slaves, self.workers = slaves, workers
        self.app: Any = None
        self.handle: Any = None  # the SystemHandle of the task system, once sent
        #: Plain tasks pushed so far: with no task system either, the node ran nothing (a
        #: hook misnamed in porting, say), which `taskswarm run` reports as an error.
        self.tasks_sent = 0
        self._outstanding: set[str] = set()
        self._lock = threading.Lock()
        self._all_done = threading.Event()
        self._all_done.set()

    # -- hooks to override -------------------------------------------------------------------------

    def get_task_system(self) -> Any | None:
        """Return a task system to send to the master, or None to send plain tasks only."""
        return None

    def start_processing(self) -> None:
        """Push plain tasks here with ``self.push_task`` / ``self.push_tasks``."""

    def task_finished(self, task: Task, result: Any, error: BaseException | None) -> None:
        """One plain task finished (``error`` is its exception, or None)."""

    def push_task_response(self, task_ids: list[str]) -> None:
        """The master accepted these tasks."""

    def push_task_failed(self, task_ids: list[str], error: BaseException) -> None:
        """These tasks could not be sent; ``error`` says why."""

    def work_finished(self, result: Any, error: BaseException | None) -> None:
        """The task system finished with ``gather_result``'s outcome."""

    def system_progress(self, done: int, total: int) -> None:
        """The task system has ``done`` of ``total`` tasks finished so far.

        ``self.handle.meter`` has the rate (tasks/s) and ETA too. Under ``taskswarm run`` the
        system already shows as a progress bar (or log lines when output is not a terminal).
        """

    # -- what the hooks call -----------------------------------------------------------------------

    def push_task(self, task: Task) -> Future[Any]:
        return self.push_tasks([task])[0]

    def push_tasks(self, tasks: Iterable[Task]) -> list[Future[Any]]:
        tasks = list(tasks)
        with self._lock:
            self._outstanding.update(t.task_id for t in tasks)
            self.tasks_sent += len(tasks)
            self._all_done.clear()
        try:
            futures: list[Future[Any]] = self.app.push_tasks(tasks)
        except Exception as exc:
            self._settle([t.task_id for t in tasks])
            self.push_task_failed([t.task_id for t in tasks], exc)
            raise
        self.push_task_response([t.task_id for t in tasks])
        return futures

    def run(self, timeout: float | None = None) -> Any:
        """Connect (or start a local cluster), send the work, wait until all of it is done."""
        from ..local import connect_or_start

        # `taskswarm run app.py` runs the file's ApplicationNode only if the file did not.
        type(self)._taskswarm_ran = True

        with connect_or_start(self.master, self.key_file, self.slaves, self.workers) as app:
            self.app = app
            app.on_task_finished = self._on_task_finished
            system = self.get_task_system()
            handle = app.submit_system(system, self.system_progress) if system else None
            self.handle = handle
            self.start_processing()
            self._all_done.wait(timeout)
            if handle is None:
                return None
            try:
                result = handle.result(timeout)
            except BaseException as exc:
                self.work_finished(None, exc)
                raise
            self.work_finished(result, None)
            return result

    def _on_task_finished(self, task: Task, result: Any, error: BaseException | None) -> None:
        try:
            self.task_finished(task, result, error)
        finally:
            self._settle([task.task_id])

    def _settle(self, task_ids: list[str]) -> None:
        with self._lock:
            self._outstanding.difference_update(task_ids)
            if not self._outstanding:
                self._all_done.set()
