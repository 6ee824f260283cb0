"""What every slave-side task manager shares: a queue of tasks not yet handed to anything that
runs them, a count of tasks pushed and not finished, and the queue the slave reads outcomes from.

The process pool and the engine managers differ in how they run tasks (``_feed`` hands queued
ones on); how tasks come in, are given back to the master (work stealing, a slave that stops)
and go out as outcomes is the same, and is kept here once.
"""

from __future__ import annotations

import queue
from collections import deque
from typing import Any

from ..api import ITaskManager
from ..errors import TaskTimeout
from ..task import Status, dump_error, error_text, new_task_id
from .contracts import TaskManagerBase, TaskOutcome, WorkItem

__all__ = ["QueuedManager", "WorkItem"]


class QueuedManager(TaskManagerBase, ITaskManager):
    """The queue half of a task manager; subclasses say how queued tasks are run (``_feed``).

    Implements ``contracts.TaskManagerContract`` (what the slave calls) with the seed's
    ``ITaskManager``; what a subclass does not override keeps ``TaskManagerBase``'s default.
    """

    def __init__(self) -> None:
        self._queue: deque[WorkItem] = deque()
        self._results: queue.SimpleQueue[TaskOutcome] = queue.SimpleQueue()
        self._pending = 0  # pushed and not finished (queued, running or handed on)

    def _feed(self) -> None:
        """Hand queued tasks on to what runs them, as far as there is room."""
        raise NotImplementedError

    def task_finished(
        self, task: WorkItem, result: Any, error: Any, detail: str | None = None
    ) -> None:
        """Queue a task's outcome for the slave; ``detail``: the failure as text for people."""
        raise NotImplementedError

    def push_task(self, task: WorkItem) -> None:
        self.push_tasks([task])

    def push_tasks(self, tasks: list[WorkItem]) -> None:
        """Many at once: one pass of feeding, not one per task."""
        self._queue.extend(tasks)
        self._pending += len(tasks)
        self._feed()

    def get_results_queue(self) -> queue.SimpleQueue[TaskOutcome]:
        return self._results

    def create_task(self, task_class: type, *args: Any, **kwargs: Any) -> Any:
        task = task_class(*args, **kwargs)
        task.task_id = new_task_id()
        return task

    def release(self, count: int) -> list[WorkItem]:
        """Give back up to ``count`` tasks not handed on yet, the newest first: the master moves
        them to idle slaves."""
        items = [self._queue.pop() for _ in range(min(count, len(self._queue)))]
        self._pending -= len(items)
        return items

    def take_queued(self) -> list[WorkItem]:
        """Remove the tasks not handed on yet (to hand them back to the master)."""
        items = list(self._queue)
        self._queue.clear()
        self._pending -= len(items)
        return items

    def _cancel_queued(self, task_ids: set[str]) -> None:
        """Finish as cancelled the named tasks still queued here (never handed on)."""
        kept: deque[WorkItem] = deque()
        for item in self._queue:
            if item.task_id in task_ids:
                self.task_finished(item, b"", Status.CANCELLED)
            else:
                kept.append(item)
        self._queue = kept

    def _timed_out(self, item: WorkItem, where: str, then: str) -> None:
        """Fail a task that ran past its timeout with TaskTimeout: it ran ``where`` (or "") and
        ``then`` happened to its run."""
        error = TaskTimeout(
            f"task {item.task_id} ran past its timeout of {item.timeout:g}s{where}; {then}",
            "TaskTimeout",
        )
        self.task_finished(item, dump_error(error), Status.TIMEOUT, error_text(error))
