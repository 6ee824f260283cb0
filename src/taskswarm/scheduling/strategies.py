"""Schedule strategies: which slave gets the next task.

Each is an ITaskScheduleStrategy chosen by name (``--strategy``, entry points in
``taskswarm.strategies``). The scheduler keeps the *ready* slaves (active, with room for a task)
and tells the strategy whenever one of them changes (``slave_changed``), so no strategy scans
every slave for every task:

* ``load`` (the default): the seed's rating, tasks in flight per worker, lowest first: a heap,
  O(log n) per task;
* ``throughput``: the expected wait for a new task on each slave, (in flight + 1) x its running
  average task duration / workers, so a slow or loaded machine gets less: a heap, O(log n);
* ``round-robin``: each ready slave in turn, whatever its load: O(1);
* ``random``: any ready slave, uniformly: O(1);
* ``two-choices``: the better rated of two random ready slaves (the "power of two choices"),
  nearly as even as ``load`` at O(1).

A strategy written against the seed's interface alone (``rate`` and ``get_next_slave`` over
``scheduler.eligible_slaves()``) works too; it just pays a scan per task.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from collections import deque
from typing import TYPE_CHECKING, Any

from ..api import ITaskScheduleStrategy
from .records import SlaveRecord

if TYPE_CHECKING:
    from .contracts import MasterView
    from .scheduler import BaseScheduler

__all__ = [
    "BaseStrategy",
    "LoadStrategy",
    "RandomStrategy",
    "RoundRobinStrategy",
    "ThroughputStrategy",
    "TwoChoicesStrategy",
]


def load(slave: SlaveRecord) -> float:
    """Tasks in flight per worker; ``inf`` for a slave with no workers."""
    if slave.workers <= 0:
        return math.inf
    return len(slave.in_flight) / slave.workers


class BaseStrategy(ITaskScheduleStrategy):
    """Rates by load and is told of every change to a slave; subclasses choose."""

    def setup(self, scheduler: Any, master: MasterView) -> None:
        # The in-tree schedulers: their ready set is what the O(1) strategies draw from.
        self.scheduler: BaseScheduler = scheduler

    def rate(self, slave: SlaveRecord) -> float:
        return load(slave)

    def slave_changed(self, slave: SlaveRecord) -> None:
        """The slave's rating or readiness may have changed (it was just re-rated)."""

    def get_next_slave(self) -> SlaveRecord | None:
        raise NotImplementedError


class LoadStrategy(BaseStrategy):
    """The lowest rated ready slave, from a heap of (rating, turn) entries.

    Every change pushes a fresh entry and makes the slave's older ones stale; stale entries are
    dropped when they reach the top, and the heap is rebuilt when they outnumber live ones, so
    each choice costs O(log n) amortised. Among equal ratings the slave that changed least
    recently comes first, which spreads ties round the cluster.
    """

    def setup(self, scheduler: Any, master: MasterView) -> None:
        super().setup(scheduler, master)
        self._heap: list[tuple[float, int, str]] = []
        self._live: dict[str, int] = {}  # slave id -> turn of its one live entry
        self._turns = itertools.count()

    def slave_changed(self, slave: SlaveRecord) -> None:
        if not self.scheduler.is_ready(slave):
            self._live.pop(slave.slave_id, None)
            return
        turn = next(self._turns)
        self._live[slave.slave_id] = turn
        heapq.heappush(self._heap, (slave.rating, turn, slave.slave_id))
        if len(self._heap) > 2 * len(self._live) + 64:
            self._heap = [entry for entry in self._heap if self._live.get(entry[2]) == entry[1]]
            heapq.heapify(self._heap)

    def get_next_slave(self) -> SlaveRecord | None:
        heap, live, slaves = self._heap, self._live, self.scheduler.slaves
        while heap:
            _, turn, slave_id = heap[0]
            if live.get(slave_id) == turn:
                slave = slaves.get(slave_id)
                if slave is not None and self.scheduler.is_ready(slave):
                    return slave
                live.pop(slave_id, None)
            heapq.heappop(heap)
        return None


class ThroughputStrategy(LoadStrategy):
    """Like ``load``, but rated in seconds: how long a new task would wait to finish there.

    The rating is (in flight + 1) x the slave's running average task duration (its *pace*,
    which each slave measures and reports) / its workers. A machine slowed by other work, or
    with slower cores, has a longer pace and so gets fewer tasks. Until a slave has reported a
    pace it is rated with the average of the others'.
    """

    def setup(self, scheduler: Any, master: MasterView) -> None:
        super().setup(scheduler, master)
        self._paces: dict[str, float] = {}  # the last pace each slave reported
        self._known_pace = 0.0  # running average of the paces reported

    def rate(self, slave: SlaveRecord) -> float:
        if slave.workers <= 0:
            return math.inf
        if slave.pace > 0 and self._paces.get(slave.slave_id) != slave.pace:
            self._paces[slave.slave_id] = slave.pace  # a new report: fold it in once
            if not self._known_pace:
                self._known_pace = slave.pace
            self._known_pace += 0.1 * (slave.pace - self._known_pace)
        pace = slave.pace or self._known_pace or 1.0
        return (len(slave.in_flight) + 1) * pace / slave.workers


class RoundRobinStrategy(BaseStrategy):
    """Each ready slave in turn, whatever its load: a ring of slave ids."""

    def setup(self, scheduler: Any, master: MasterView) -> None:
        super().setup(scheduler, master)
        self._ring: deque[str] = deque()
        self._in_ring: set[str] = set()

    def slave_changed(self, slave: SlaveRecord) -> None:
        if slave.slave_id not in self._in_ring and self.scheduler.is_ready(slave):
            self._in_ring.add(slave.slave_id)
            self._ring.append(slave.slave_id)

    def get_next_slave(self) -> SlaveRecord | None:
        while self._ring:
            slave_id = self._ring.popleft()
            slave = self.scheduler.slaves.get(slave_id)
            if slave is not None and self.scheduler.is_ready(slave):
                self._ring.append(slave_id)
                return slave
            self._in_ring.discard(slave_id)  # back in the ring when it is ready again
        return None


class RandomStrategy(BaseStrategy):
    """Any ready slave, uniformly at random."""

    def setup(self, scheduler: Any, master: MasterView) -> None:
        super().setup(scheduler, master)
        self.random = random.Random()

    def get_next_slave(self) -> SlaveRecord | None:
        return self.scheduler.ready.choice(self.random)


class TwoChoicesStrategy(RandomStrategy):
    """The better rated of two ready slaves drawn at random: the "power of two choices", whose
    worst load is exponentially better than one random choice's, at O(1) a task."""

    def get_next_slave(self) -> SlaveRecord | None:
        first = self.scheduler.ready.choice(self.random)
        second = self.scheduler.ready.choice(self.random)
        if first is None or second is None:
            return first
        return first if first.rating <= second.rating else second
