"""The bookkeeping every scheduler shares: the global queue, the task records, the slaves.

A task's life here is one state at a time: queued -> assigned (to one slave) -> done, failed or
cancelled; assigned goes back to queued when its slave is lost. ``result_arrived`` is the single
place a result is matched to its record, so a result for a task that is no longer live (it was
re-run elsewhere, or its task system completed) is recognised and dropped exactly once.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Iterable
from typing import Any

from ..api import ITaskScheduler, ITaskScheduleStrategy
from .records import NodeState, SlaveRecord, TaskRecord, TaskState

__all__ = ["BaseScheduler"]


class BaseScheduler(ITaskScheduler):
    """Subclasses say how much a slave can take (``capacity``); the rest is common."""

    name = "base"

    def __init__(self, strategy: ITaskScheduleStrategy, prefetch: int = 2) -> None:
        self.strategy = strategy
        self.prefetch = max(1, prefetch)
        self.queue: deque[TaskRecord] = deque()
        self.tasks: dict[str, TaskRecord] = {}
        self.slaves: dict[str, SlaveRecord] = {}
        self.systems: set[str] = set()
        self.master: Any = None

    # -- ITaskScheduler ---------------------------------------------------------------------

    def setup(self, master: Any) -> None:
        self.master = master
        self.strategy.setup(self, master)

    def rate_slaves(self) -> None:
        for slave in self.slaves.values():
            slave.rating = self.strategy.rate(slave)

    def start_system(self, task_system: Any) -> None:
        self.systems.add(getattr(task_system, "system_id", task_system))

    def push_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        for task in tasks:
            self.push_task(task)

    def push_task(self, task: TaskRecord) -> None:
        task.state = TaskState.QUEUED
        task.slave_id = None
        self.tasks[task.task_id] = task
        self.queue.append(task)

    def handle_task(self, task: TaskRecord) -> bool:
        slave = self.strategy.get_next_slave()
        if slave is None:
            self.queue.appendleft(task)
            return False
        task.state = TaskState.ASSIGNED
        task.slave_id = slave.slave_id
        task.attempts += 1
        task.assigned_at = time.monotonic()
        slave.in_flight.add(task.task_id)
        slave.outbox.append(task)
        self._tasked_pushed(slave.slave_id)
        return True

    def _tasked_pushed(self, slave_id: str) -> None:
        slave = self.slaves[slave_id]
        slave.rating = self.strategy.rate(slave)

    def task_finished(self, task: TaskRecord, result: Any = None, error: Any = None) -> None:
        task.state = TaskState.DONE if error is None else TaskState.FAILED
        slave = self.slaves.get(task.slave_id or "")
        if slave is None:
            return
        slave.in_flight.discard(task.task_id)
        if error is None:
            slave.done += 1
        else:
            slave.failed += 1
        slave.rating = self.strategy.rate(slave)

    # -- what the master calls ---------------------------------------------------------------

    def capacity(self, slave: SlaveRecord) -> int:
        """How many more tasks ``slave`` may be sent now."""
        raise NotImplementedError

    def eligible_slaves(self) -> list[SlaveRecord]:
        return [
            s for s in self.slaves.values() if s.state == NodeState.ACTIVE and self.capacity(s) > 0
        ]

    def dispatch(self) -> None:
        """Hand queued tasks to slaves until the queue is empty or no slave can take more."""
        while self.queue:
            task = self.queue.popleft()
            if task.state != TaskState.QUEUED:
                continue  # cancelled while queued: its record is already gone
            if not self.handle_task(task):
                return

    def take_outboxes(self) -> list[tuple[SlaveRecord, list[TaskRecord]]]:
        """The tasks assigned since the last call, grouped per slave (one message each)."""
        batches = []
        for slave in self.slaves.values():
            if slave.outbox:
                batches.append((slave, slave.outbox))
                slave.outbox = []
        return batches

    def result_arrived(self, slave_id: str | None, task_id: str) -> TaskRecord | None:
        """Match a result to its live record and retire it; None for a stale or duplicate one."""
        slave = self.slaves.get(slave_id or "")
        task = self.tasks.pop(task_id, None)
        if task is None:
            if slave is not None and task_id in slave.in_flight:
                slave.in_flight.discard(task_id)  # its system completed while it ran
                slave.rating = self.strategy.rate(slave)
            return None
        if task.slave_id is None and slave is not None:
            task.slave_id = slave.slave_id  # a late result from a slave that was lost
        return task

    def requeue(self, task: TaskRecord) -> None:
        """Run a task again (its worker crashed, or it asked for a retry): back of the queue."""
        slave = self.slaves.get(task.slave_id or "")
        if slave is not None:
            slave.in_flight.discard(task.task_id)
            slave.rating = self.strategy.rate(slave)
        self.push_task(task)

    def reclaim_missing(
        self, slave: SlaveRecord, held: set[str], sent_before: float
    ) -> list[TaskRecord]:
        """Requeue tasks sent to ``slave`` before ``sent_before`` that it says it does not hold.

        A message can be lost where the transport gives no guarantee (a connection dropped and
        made again): without this, such a task would stay "assigned" to a live slave forever.
        """
        missing = []
        for task_id in list(slave.in_flight):
            task = self.tasks.get(task_id)
            if task is not None and task_id not in held and task.assigned_at < sent_before:
                missing.append(task)
                self.requeue(task)
        return missing

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Forget a live task; if it was assigned, its slave still holds it until told."""
        task = self.tasks.pop(task_id, None)
        if task is not None:
            task.state = TaskState.CANCELLED
        return task

    def assign_held(self, slave: SlaveRecord, task_ids: list[str]) -> None:
        """A (re)registering slave still holds these: leave them with it instead of re-running."""
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is not None and task.state == TaskState.QUEUED:
                task.state = TaskState.ASSIGNED  # its queue entry is skipped by dispatch
                task.slave_id = slave.slave_id
                slave.in_flight.add(task_id)
        slave.rating = self.strategy.rate(slave)

    def add_slave(self, slave: SlaveRecord) -> None:
        slave.rating = self.strategy.rate(slave)
        self.slaves[slave.slave_id] = slave

    def remove_slave(self, slave_id: str) -> list[TaskRecord]:
        """Forget a slave and put its tasks back at the head of the queue, in their order."""
        slave = self.slaves.pop(slave_id, None)
        if slave is None:
            return []
        requeued = [t for t in self.tasks.values() if t.task_id in slave.in_flight]
        for task in reversed(requeued):
            task.state = TaskState.QUEUED
            task.slave_id = None
            self.queue.appendleft(task)
        return requeued

    def drop_system(self, system_id: str) -> list[TaskRecord]:
        """Forget a finished system's leftover tasks; returns them (assigned ones need
        cancelling on their slaves, whose results will be ignored meanwhile)."""
        self.systems.discard(system_id)
        dropped = [t for t in self.tasks.values() if t.system_id == system_id]
        for task in dropped:
            del self.tasks[task.task_id]
            task.state = TaskState.CANCELLED
        return dropped

    def counts(self) -> dict[str, int]:
        states = Counter(task.state for task in self.tasks.values())
        return {"queued": states[TaskState.QUEUED], "assigned": states[TaskState.ASSIGNED]}
