"""What a reported run means, and the outcomes the master makes itself.

A slave reports each run with a status (``taskswarm.task.Status``). ``settle`` decides what it
means: an outcome to deliver, or a task to run again (a retry, a crash under ``max_crashes``).
The master makes some outcomes of its own, as pickled errors it never unpickles: a task that
keeps killing its worker (``crash_error``), a task cancelled by someone other than its owner
(``cancelled_by``), a task whose resources no slave offers (``unsatisfiable``). Every one of them
leaves through the core's one ``deliver``. ``ErrorLog`` keeps the latest failures' text for
people (status, dashboard), never their pickle.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..dashboard import ERRORS_KEPT  # not .api: that is aiohttp, which a master may not need
from ..errors import ResourceUnavailable, TaskError, WorkerCrashed, WorkerMemoryExceeded
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import TaskRecord, format_resources
from ..task import MEMORY_EXCEEDED, Status, failure
from .journal import Journal, NullJournal

__all__ = ["ErrorLog", "Outcome", "cancelled_by", "crash_error", "settle", "unsatisfiable"]

log = logging.getLogger(__name__)

#: A task's outcome on its way out: the task, whether it succeeded, its pickled result or error.
#: ``(task, ok, data)``: data is the pickled result or error (bytes, or a ``Payload`` as it
#: came), or a ``KeptRef`` for a result its slave keeps (``taskswarm.master.kept``).
Outcome = tuple[TaskRecord, bool, Any]


def settle(
    task: TaskRecord,
    status: str,
    detail: Any,
    data: bytes,
    scheduler: SchedulerContract,
    journal: Journal | NullJournal,
    max_crashes: int,
) -> tuple[bool, bytes] | None:
    """Decide what a reported run means: an outcome to deliver, or None to run it again."""
    if status == Status.CANCELLED:
        if not task.cancelling:
            return None  # stopped after the master forgot it: nothing to deliver
        # An executor's shutdown took it back before any worker began it: its owner's
        # Future ends cancelled (an empty failed outcome says so).
        scheduler.task_finished(task, None, Status.CANCELLED)
        return False, b""
    if status == Status.RETRY and task.retries < task.max_retries:
        task.retries += 1
        journal.count_attempts(task.task_id, task.retries, task.crashes)
        log.info("task %s raised; retry %d of %d", task.task_id, task.retries, task.max_retries)
        scheduler.requeue(task)
        return None
    if status == Status.CRASH:
        task.crashes += 1
        journal.count_attempts(task.task_id, task.retries, task.crashes)
        if task.crashes < max_crashes:
            log.warning("task %s killed its worker (%s); running it again", task.task_id, detail)
            scheduler.requeue(task)
            return None
        data = crash_error(task, str(detail), max_crashes)
    ok = status == Status.OK
    scheduler.task_finished(task, None, None if ok else status)
    return ok, data


def crash_error(task: TaskRecord, how: str, attempts: int) -> bytes:
    """The outcome of a task that keeps killing its worker: built here, never unpickled here.
    When the last attempt ended with the slave replacing the worker for its memory, the error
    is the WorkerMemoryExceeded kind, and says how to allow more."""
    named = f"task {task.name or task.task_id!r} ({task.task_id})"
    if how.startswith(MEMORY_EXCEEDED):
        error: WorkerCrashed = WorkerMemoryExceeded(
            f"{named} lost its worker process {attempts} times; the last time the slave "
            f"replaced the worker for its memory: {how[len(MEMORY_EXCEEDED) :]}. Give the "
            "slaves a larger --worker-memory-limit (0 for none), or have the task use less",
            "WorkerMemoryExceeded",
        )
    else:
        error = WorkerCrashed(
            f"{named} killed its worker process {attempts} times; the last time: {how}",
            "WorkerCrashed",
        )
    return failure(error)


def cancelled_by(tasks: Iterable[TaskRecord], how: str) -> list[Outcome]:
    """Outcomes telling owners of tasks cancelled by someone else of it, and by whom: a
    TaskError saying so fails the Future, or reaches the task system's ``task_finished``."""
    return [
        (
            task,
            False,
            failure(
                TaskError(
                    f"task {task.name or task.task_id!r} ({task.task_id}) was cancelled {how}",
                    "TaskError",
                )
            ),
        )
        for task in tasks
    ]


def unsatisfiable(
    tasks: Iterable[TaskRecord], offers: list[str], resource_wait: float
) -> list[Outcome]:
    """Outcomes for tasks whose resources no slave offers: ResourceUnavailable, saying how."""
    outcomes: list[Outcome] = []
    for task in tasks:
        needs = format_resources(task.resources)
        log.warning(
            "task %s needs %s, which no slave offers (%s); it fails",
            task.task_id,
            needs,
            "; ".join(offers),
        )
        error = ResourceUnavailable(
            f"task {task.name or task.task_id!r} ({task.task_id}) needs {needs}, but no slave "
            f"in the cluster offers that (they offer: {'; '.join(offers)}) and none came "
            f"within {resource_wait:g}s. Start a slave with "
            f"`taskswarm slave --resources {needs}`, lower the task's needs, or give the "
            "master a longer --resource-wait.",
            "ResourceUnavailable",
        )
        outcomes.append((task, False, failure(error)))
    return outcomes


class ErrorLog:
    """The latest task failures, for people to read (dashboard, API): text, never a pickle."""

    def __init__(self) -> None:
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)  # newest last

    def latest(self, limit: int) -> list[dict[str, Any]]:
        """The latest task failures, newest first."""
        return list(reversed(self.errors))[:limit]

    def note(self, task: TaskRecord, status: str, detail: Any, slave_id: str | None) -> None:
        text = str(detail) if detail else f"the task failed ({status}); its slave gave no detail"
        if status == Status.CRASH:
            times = task.crashes
            if text.startswith(MEMORY_EXCEEDED):
                how = text[len(MEMORY_EXCEEDED) :]
                text = f"WorkerMemoryExceeded: lost its worker process {times} times; last: {how}"
            else:
                text = f"WorkerCrashed: killed its worker process {times} times; last: {text}"
        error, _, traceback = text.partition("\n")
        self.errors.append(
            {
                "time": round(time.time(), 3),
                "task_id": task.task_id,
                "name": task.name,
                "system_id": task.system_id,
                "application_id": task.client_id,
                "slave_id": slave_id,
                "status": status,
                "error": error,
                "traceback": traceback,
            }
        )
