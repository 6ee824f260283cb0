"""The seed's four interfaces, with the seed's names and signatures, for Python 3.

The original framework (``concurrent.core.async.api``) defined these with zope-like ``Interface``
classes. Here they are abstract base classes, so an implementation that forgets a method fails at
construction instead of at the first call on a remote node. Every scheduler, strategy, task manager
and task system in taskswarm implements one of them. What the nodes call on a scheduler or a task
manager goes beyond these two, and is stated as Protocols in ``taskswarm.scheduling.contracts``
and ``taskswarm.slave.contracts``, of which these interfaces are the seed's part.
"""

from __future__ import annotations

import abc
import uuid
from typing import Any

__all__ = ["ITaskManager", "ITaskSystem", "ITaskScheduler", "ITaskScheduleStrategy"]


class ITaskManager(abc.ABC):
    """Runs tasks on a slave: owns the slave's worker processes and hands their results back."""

    @abc.abstractmethod
    def init(self, identity: str, address: str) -> None:
        """Tell the manager which slave it serves and where that slave's master is."""

    @abc.abstractmethod
    def get_num_workers(self) -> int:
        """How many tasks can run at once: the master rates the slave by this."""

    @abc.abstractmethod
    def start(self) -> None:
        """Start the worker processes; tasks pushed before this wait in the manager's queue."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop every worker process; safe to call twice, never leaves a child behind."""

    @abc.abstractmethod
    def update_pool(self, _num_workers: int) -> None:
        """Resize the pool while it runs, without losing or repeating a pushed task."""

    @abc.abstractmethod
    def push_task(self, task: Any) -> None:
        """Queue one task for the workers; returns at once."""

    @abc.abstractmethod
    def wait_for_all(self, timeout: float | None = None) -> bool:
        """Block until every pushed task has a result; False if the timeout ran out first."""

    @abc.abstractmethod
    def get_results_queue(self) -> Any:
        """The queue finished tasks' results flow through, in the order they finished."""

    @abc.abstractmethod
    def create_task(self, task_class: type, *args: Any, **kwargs: Any) -> Any:
        """Build a task of ``task_class`` with a fresh unique ``task_id``."""

    @abc.abstractmethod
    def task_finished(self, task: Any, result: Any, error: Any) -> None:
        """Called by the manager itself once a worker has performed a task."""


class ITaskSystem:
    """Application logic that runs on the master: makes tasks, reacts to results, decides the end.

    The constructor runs on the application node, never on the master, so it is the place to set
    up the system's parameters; the instance then travels to the master pickled.
    """

    def __init__(self) -> None:
        self._system_id = str(uuid.uuid4())

    @property
    def system_id(self) -> str:
        return self._system_id

    def get_system_id(self) -> str:
        return self._system_id

    def init_system(self, master: Any) -> None:
        """Prepare the system on the master, before any task is generated."""
        raise NotImplementedError("init_system(self, master) not implemented!")

    def generate_tasks(self, master: Any) -> list[Any]:
        """Return the initial tasks; more may be pushed later from ``task_finished``."""
        raise NotImplementedError("generate_tasks(self, master) not implemented!")

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        """React to one finished task (``error`` is the exception, or None); may push more tasks."""
        raise NotImplementedError(
            "task_finished(self, master, task, result, error) not implemented!"
        )

    def gather_result(self, master: Any) -> tuple[Any, Any]:
        """Once complete, return ``(result, error)`` for the application that sent the system."""
        raise NotImplementedError("gather_result(self, master) not implemented!")

    def is_complete(self, master: Any) -> bool:
        """Asked after every finished task: True ends the system and drops its leftover tasks."""
        raise NotImplementedError("is_complete(self, master) not implemented!")


class ITaskScheduleStrategy(abc.ABC):
    """Chooses which slave gets the next task, by rating every slave."""

    @abc.abstractmethod
    def setup(self, scheduler: Any, master: Any) -> None:
        """Give the strategy the scheduler (and so the slaves) it chooses among."""

    @abc.abstractmethod
    def rate(self, slave: Any) -> float:
        """Rate one slave: lower is better; ``math.inf`` for a slave that can take nothing."""

    @abc.abstractmethod
    def get_next_slave(self) -> Any | None:
        """The slave that should process the next task, or None when no slave can take one."""


class ITaskScheduler(abc.ABC):
    """Keeps the global task queue and sends its tasks to slaves, chosen by a strategy."""

    @abc.abstractmethod
    def setup(self, master: Any) -> None:
        """Bind the scheduler to its master (configuration, the strategy's setup)."""

    @abc.abstractmethod
    def rate_slaves(self) -> None:
        """Refresh every slave's rating."""

    @abc.abstractmethod
    def start_system(self, task_system: Any) -> None:
        """Take in a new task system: its tasks will share the queue with everyone else's."""

    @abc.abstractmethod
    def push_tasks(self, tasks: list[Any]) -> None:
        """Put a batch of tasks on the global queue, in order."""

    @abc.abstractmethod
    def push_task(self, task: Any) -> None:
        """Put one task on the global queue."""

    @abc.abstractmethod
    def handle_task(self, task: Any) -> bool:
        """Send a task to a slave; when no slave can take it, queue it back and return False."""

    @abc.abstractmethod
    def _tasked_pushed(self, slave_id: str) -> None:
        """A slave has acquired a new task: update its rating."""

    @abc.abstractmethod
    def task_finished(self, task: Any, result: Any, error: Any) -> None:
        """A slave has finished a task: update its rating."""
