"""The global task queue: highest priority first, first in first out within one priority.

One deque per priority in use, and a heap of those priorities: with every task at the default
priority this is a single deque, so the common case pays one dict lookup per task and nothing
per task grows with the number of priorities.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator

from .records import TaskRecord

__all__ = ["TaskQueue"]


class TaskQueue:
    """``append`` joins the back of the task's priority, ``appendleft`` its front (a task
    going back where it was), ``popleft`` takes the front of the highest priority."""

    def __init__(self) -> None:
        self._lanes: dict[int, deque[TaskRecord]] = {}
        self._priorities: list[int] = []  # heap of -priority, one entry per lane
        self._size = 0
        #: Entries that need resources (so the scheduler knows when to look for them).
        self.needy = 0

    def _lane(self, priority: int) -> deque[TaskRecord]:
        lane = self._lanes.get(priority)
        if lane is None:
            lane = self._lanes[priority] = deque()
            heapq.heappush(self._priorities, -priority)
        return lane

    def append(self, task: TaskRecord) -> None:
        self._lane(task.priority).append(task)
        self._size += 1
        if task.resources:
            self.needy += 1

    def appendleft(self, task: TaskRecord) -> None:
        self._lane(task.priority).appendleft(task)
        self._size += 1
        if task.resources:
            self.needy += 1

    def popleft(self) -> TaskRecord:
        if not self._size:
            raise IndexError("pop from an empty task queue")
        priority = -self._priorities[0]
        lane = self._lanes[priority]
        task = lane.popleft()
        if not lane:
            del self._lanes[priority]
            heapq.heappop(self._priorities)
        self._size -= 1
        if task.resources:
            self.needy -= 1
        return task

    def __len__(self) -> int:
        return self._size

    def __bool__(self) -> bool:
        return self._size > 0

    def __iter__(self) -> Iterator[TaskRecord]:
        """Every queued entry in the order ``popleft`` would give them."""
        for priority in sorted(self._lanes, reverse=True):
            yield from self._lanes[priority]
