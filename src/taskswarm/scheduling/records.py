"""The master's records: one per task, one per slave. Plain data, no behaviour beyond helpers."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field


class TaskState:
    QUEUED = "queued"
    ASSIGNED = "assigned"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class NodeState:
    PENDING = "pending"  # registered, its pool not started yet
    ACTIVE = "active"  # heartbeating, takes tasks
    INACTIVE = "inactive"  # heartbeat late: takes no new tasks until it is heard again
    DRAINING = "draining"  # stopping: finishes what it holds, takes nothing new
    LOST = "lost"  # heartbeat timed out: its tasks went back to the queue


@dataclass(slots=True, eq=False)
class TaskRecord:
    """A task as the master sees it: an id, an owner, and its payload as opaque bytes."""

    task_id: str
    payload: bytes
    client_id: str
    system_id: str | None = None
    timeout: float | None = None
    max_retries: int = 0
    name: str = ""
    state: str = TaskState.QUEUED
    slave_id: str | None = None
    attempts: int = 0  # times sent to a slave
    assigned_at: float = 0.0  # monotonic time of the last assignment
    retries: int = 0  # times run again because it raised (counts against max_retries)
    crashes: int = 0  # times it killed its worker process

    @classmethod
    def from_meta(
        cls, meta: list, payload: bytes, client_id: str, system_id: str | None = None
    ) -> TaskRecord:
        """Build from the ``[task_id, timeout, max_retries, name]`` a message header carries."""
        task_id, timeout, max_retries, name = meta
        return cls(
            str(task_id),
            payload,
            client_id,
            system_id,
            None if timeout is None else float(timeout),
            int(max_retries),
            sys.intern(str(name)),  # a million tasks of one kind keep one name between them
        )

    def journal_row(self) -> tuple:
        return (
            self.task_id,
            self.client_id,
            self.system_id,
            self.payload,
            self.timeout,
            self.max_retries,
            self.name,
        )

    @classmethod
    def from_journal(cls, row: tuple) -> TaskRecord:
        task_id, client_id, system_id, payload, timeout, max_retries, name, retries, crashes = row
        return cls(
            task_id,
            payload,
            client_id,
            system_id,
            timeout,
            max_retries,
            name,
            retries=retries,
            crashes=crashes,
        )


@dataclass(slots=True, eq=False)
class SlaveRecord:
    slave_id: str
    identity: bytes
    host: str = "?"
    pid: int = 0
    workers: int = 0
    state: str = NodeState.PENDING
    in_flight: set[str] = field(default_factory=set)
    done: int = 0
    failed: int = 0
    credit: int = 0  # tasks it may still be sent (pull)
    want: int = 0  # tasks it asks to hold to stay busy (push; at least workers * prefetch)
    rejected: int = 0  # messages this slave refused (bad signature, replays...), as it reports
    rating: float = math.inf
    last_seen: float = field(default_factory=time.monotonic)
    outbox: list[TaskRecord] = field(default_factory=list)

    def summary(self) -> dict:
        """What `status` and the dashboard show of this slave: plain, msgpack-able data."""
        return {
            "id": self.slave_id,
            "host": self.host,
            "pid": self.pid,
            "state": self.state,
            "workers": self.workers,
            "in_flight": len(self.in_flight),
            "want": self.want,
            "rating": None if math.isinf(self.rating) else round(self.rating, 3),
            "done": self.done,
            "failed": self.failed,
            "rejected": self.rejected,
        }
