"""Schedule strategies: which slave gets the next task.

``LoadStrategy`` is the seed's rating: tasks in flight per worker, lower is better, and the worst
possible rating for a slave with no workers.
"""

from __future__ import annotations

import math
from typing import Any

from ..api import ITaskScheduleStrategy
from .records import SlaveRecord

__all__ = ["LoadStrategy", "RoundRobinStrategy"]


class LoadStrategy(ITaskScheduleStrategy):
    """The least loaded slave (in flight / workers) that can still take a task."""

    def setup(self, scheduler: Any, master: Any) -> None:
        self.scheduler = scheduler

    def rate(self, slave: SlaveRecord) -> float:
        if slave.workers <= 0:
            return math.inf
        return len(slave.in_flight) / slave.workers

    def get_next_slave(self) -> SlaveRecord | None:
        best, best_rating = None, math.inf
        for slave in self.scheduler.eligible_slaves():
            if slave.rating < best_rating:
                best, best_rating = slave, slave.rating
        return best


class RoundRobinStrategy(ITaskScheduleStrategy):
    """Each slave in turn, skipping those that cannot take a task; ignores load."""

    def setup(self, scheduler: Any, master: Any) -> None:
        self.scheduler = scheduler
        self._turn = 0

    def rate(self, slave: SlaveRecord) -> float:
        return math.inf if slave.workers <= 0 else len(slave.in_flight) / slave.workers

    def get_next_slave(self) -> SlaveRecord | None:
        candidates = self.scheduler.eligible_slaves()
        if not candidates:
            return None
        self._turn = (self._turn + 1) % len(candidates)
        return candidates[self._turn]
