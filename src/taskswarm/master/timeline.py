"""Where the time goes: the master's short memory of recent tasks and of the cluster's load.

Two rings, both of fixed size, so what they hold never grows with the work done:

* **the task stream** (``TaskStream``): the latest ``STREAM_TASKS`` tasks that ran, each as one
  tuple ``(number, began, ended, slave, worker, name, system, status)``, appended as its outcome
  arrives (``MasterCore.on_slave_results``). Nothing else is done per task: the JSON is built
  only when the API asks (``/api/stream``);
* **the history** (``History``): one sample per heartbeat of the master (tasks done per second,
  queued, running, each slave's CPU and memory), ``HISTORY_SAMPLES`` of them: ten minutes at the
  default heartbeat of a second. A page opened late still draws the last ten minutes
  (``/api/history``). A sample costs a pass over the slaves, not over the tasks.

Times are Unix seconds. A task's are its slave's clock (its worker took them); the history's
are the master's.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from ..dashboard import HISTORY_SAMPLES, STREAM_TASKS  # not .api: that is aiohttp
from ..scheduling.records import SlaveRecord

__all__ = ["HISTORY_SAMPLES", "STREAM_TASKS", "History", "TaskStream"]

#: One task that ran: (number, began, ended, slave_id, worker pid, name, system_id, status);
#: tasks are numbered in the order their outcomes arrived, so a page asks for those after the
#: last it has, whatever the slaves' clocks say.
Ran = tuple[int, float, float, str, "int | None", str, "str | None", str]


class TaskStream:
    """The newest tasks that ran, for the dashboard's task stream."""

    def __init__(self, size: int = STREAM_TASKS) -> None:
        self.ran: deque[Ran] = deque(maxlen=size)
        #: The hot path's two calls per task: ``add((number(), began, ...))``.
        self.add = self.ran.append
        self.number = itertools.count(1).__next__

    def recent(self, after: int = 0, limit: int = STREAM_TASKS) -> dict[str, Any]:
        """The newest ``limit`` tasks numbered after ``after``, oldest first, as rows ``[began,
        ended, worker, name, system, status]``; ``worker`` is ``slave/pid`` (the slave alone
        for a task manager that does not say). ``last``: the newest number, the next ``after``."""
        ran = self.ran
        last = ran[-1][0] if ran else after
        fresh = last - after
        chosen = list(ran)[-min(fresh, limit, len(ran)) :] if fresh > 0 else []
        tasks = [
            [round(began, 4), round(ended, 4), slave if worker is None else f"{slave}/{worker}"]
            + [name, system, status]
            for _, began, ended, slave, worker, name, system, status in chosen
        ]
        return {"now": time.time(), "last": last, "kept": len(ran), "tasks": tasks}


class History:
    """One sample of the cluster's load per heartbeat, the newest ``size`` of them."""

    def __init__(self, size: int = HISTORY_SAMPLES) -> None:
        self.samples: deque[tuple[float, float, int, int, dict[str, tuple[Any, Any]]]] = deque(
            maxlen=size
        )
        #: Outcomes that reached the master so far (``MasterCore`` counts them per message).
        self.finished = 0
        self._last: tuple[float, int] | None = None

    def sample(self, slaves: Iterable[SlaveRecord], total_tasks: int) -> None:
        """Note the load now: ``total_tasks`` live (queued or assigned) tasks."""
        now = time.time()
        rate = 0.0
        if self._last is not None and now > self._last[0]:
            rate = (self.finished - self._last[1]) / (now - self._last[0])
        self._last = (now, self.finished)
        running = 0
        usage: dict[str, tuple[Any, Any]] = {}
        for slave in slaves:
            running += len(slave.in_flight)
            usage[slave.slave_id] = (slave.cpu, slave.rss)
        self.samples.append((now, round(rate, 2), max(0, total_tasks - running), running, usage))

    def series(self) -> dict[str, Any]:
        """Columns, as a chart takes them: ``time``, ``rate`` (tasks done/s), ``queued``,
        ``running``, and per slave ``cpu`` (%) and ``rss`` (bytes), null where it was not there."""
        samples = list(self.samples)
        names = sorted({name for sample in samples for name in sample[4]})
        return {
            "interval": None if len(samples) < 2 else round(samples[-1][0] - samples[-2][0], 3),
            "kept": len(samples),
            "time": [round(s[0], 3) for s in samples],
            "rate": [s[1] for s in samples],
            "queued": [s[2] for s in samples],
            "running": [s[3] for s in samples],
            "slaves": {
                name: {
                    "cpu": [s[4].get(name, (None, None))[0] for s in samples],
                    "rss": [s[4].get(name, (None, None))[1] for s in samples],
                }
                for name in names
            },
        }
