"""The master's records: one per task, one per slave. Plain data, no behaviour beyond helpers."""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from ..protocol.digests import Payload, digest_of, raw
from ..protocol.messages import TaskMeta
from ..protocol.messages import parse_resources as parse_resources  # where it was, too


class TaskState:
    WAITING = "waiting"  # for the outcomes of the tasks it takes as inputs (not queued yet)
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
    #: bytes made on the master, or a ``Payload`` as received (sent on with its digest)
    payload: Any
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
    priority: int = 0  # higher runs first
    resources: dict[str, float] | None = None  # what it needs of a slave's declared resources
    queued_at: float = 0.0  # monotonic time it last joined the queue
    started: bool = False  # a worker began it (its slave said so)
    cancelling: bool = False  # its owner asked for it back before a worker began it
    deps: list[str] | None = None  # the tasks whose results it takes (``TaskMeta.deps``)
    inputs: list[tuple[str, Any]] | None = None  # (task id, pickled result) of each, once known
    keep: bool = False  # its result may stay on its slave (``TaskMeta.keep``)

    @classmethod
    def from_meta(
        cls,
        meta: TaskMeta | Sequence[Any],
        payload: Any,
        client_id: str,
        system_id: str | None = None,
    ) -> TaskRecord:
        """Build from a task's metadata (a SUBMIT's, or a task system's pushed task); ValueError
        when a number is out of range (the batch is refused, saying which).

        ``meta`` is a :class:`TaskMeta`, or the array it travels as (from a message built of
        plain data), which is checked as the codec checks a received one."""
        if not isinstance(meta, TaskMeta):
            meta = msgspec.convert(list(meta), TaskMeta)  # ValidationError is a ValueError
        record = cls(
            meta.task_id,
            payload,
            client_id,
            system_id,
            meta.timeout,
            meta.max_retries,
            sys.intern(meta.name),  # a million tasks of one kind keep one name between them
        )
        if meta.deps:
            record.deps = meta.deps
        if meta.keep:
            record.keep = True
        if meta.timeout is None and not meta.max_retries and not meta.priority:
            if meta.resources is None:
                return record  # the defaults: nothing to check
        meta.check()
        record.priority = meta.priority
        record.resources = parse_resources(meta.resources)
        return record

    def journal_row(self) -> tuple[Any, ...]:
        return (
            self.task_id,
            self.client_id,
            self.system_id,
            raw(self.payload),
            self.timeout,
            self.max_retries,
            self.name,
            self.priority,
            json.dumps(self.resources) if self.resources else None,
            digest_of(self.payload),
        )

    @classmethod
    def from_journal(cls, row: tuple[Any, ...]) -> TaskRecord:
        (task_id, client_id, system_id, payload, timeout, max_retries, name, priority, resources,
         digest, retries, crashes) = row  # fmt: skip
        return cls(
            task_id,
            payload if digest is None else Payload(payload, digest),
            client_id,
            system_id,
            timeout,
            max_retries,
            name,
            retries=retries,
            crashes=crashes,
            priority=priority or 0,
            resources=parse_resources(json.loads(resources)) if resources else None,
        )


def format_resources(resources: dict[str, float] | None) -> str:
    """``gpu=2,mem=16``, the way ``--resources`` takes them (each amount exactly)."""
    if not resources:
        return "none"
    return ",".join(f"{name}={_number(amount)}" for name, amount in sorted(resources.items()))


def _number(amount: float) -> str:
    """The shortest text that reads back as ``amount``: ``2``, ``0.5``, ``1234567``."""
    text = repr(float(amount))
    return text.removesuffix(".0")


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
    resources: dict[str, float] | None = None  # what it declared (--resources)
    used: dict[str, float] = field(default_factory=dict)  # taken by the tasks it holds
    pace: float = 0.0  # its running average of task durations, seconds (0: not known yet)
    steal_until: float = 0.0  # a steal request is out until then (monotonic)
    stolen: int = 0  # tasks taken back from it for idle slaves
    heartbeat: float = 0.0  # seconds between its heartbeats, as it declared (0: not said)
    stats: list[dict[str, Any]] = field(default_factory=list)  # its own measures, last reported
    data: str | None = None  # its data socket, where the results it keeps are fetched
    kept_bytes: int = 0  # bytes of results it keeps, as it last reported
    kept_results: int = 0  # results the master knows it keeps
    cpu: float | None = None  # CPU % of its process tree (slave + workers), as last reported
    rss: int | None = None  # resident bytes of that tree, as last reported

    def fits(self, needs: dict[str, float]) -> bool:
        """Whether a task needing ``needs`` fits in what this slave has free now."""
        offered = self.resources or {}
        used = self.used
        return all(offered.get(k, 0.0) - used.get(k, 0.0) >= v for k, v in needs.items())

    def could_ever_fit(self, needs: dict[str, float]) -> bool:
        offered = self.resources or {}
        return all(offered.get(k, 0.0) >= v for k, v in needs.items())

    def take(self, needs: dict[str, float], sign: int = 1) -> None:
        for name, amount in needs.items():
            self.used[name] = self.used.get(name, 0.0) + sign * amount

    def summary(self) -> dict[str, Any]:
        """What `status` and the dashboard show of this slave: plain, msgpack-able data."""
        return {
            "id": self.slave_id,
            "kind": "slave",
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
            "resources": self.resources or {},
            "pace_ms": round(self.pace * 1000, 3),
            "stolen": self.stolen,
            "data": self.data,
            "kept_results": self.kept_results,
            "kept_bytes": self.kept_bytes,
            "cpu": self.cpu,
            "rss": self.rss,
            "last_heartbeat": round(time.monotonic() - self.last_seen, 3),  # seconds ago
        }
