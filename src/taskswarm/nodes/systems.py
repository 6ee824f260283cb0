"""The master's table of task systems: starting, feeding, completing, restoring them.

Each live system has a ``SystemRunner`` thread (``taskswarm.system``); this table lives on the
master's loop thread and is the only place that creates, journals and retires them. Runners talk
back through the master's mailbox: ``push`` (tasks, with a snapshot when durable), ``progress``
and ``done``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import cloudpickle

from ..errors import TaskSystemError
from ..journal import RestoredSystem
from ..scheduling.records import TaskRecord
from ..system import SystemRunner
from ..task import ExceptionWithTraceback
from ..wire import Kind

if TYPE_CHECKING:
    from .master import Master

__all__ = ["SystemRecord", "SystemTable"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class SystemRecord:
    system_id: str
    client_id: str
    runner: SystemRunner | None
    started: float = field(default_factory=time.monotonic)
    done: int = 0
    total: int = 0
    outcome: bytes | None = None  # pickled (result, error) once complete
    failed: bool = False
    waiters: set[bytes] = field(default_factory=set)
    ended: float | None = None  # monotonic time it completed or failed
    tasks_failed: int = 0  # its tasks whose outcome was an error

    def summary(self) -> dict[str, Any]:
        state = "running" if self.outcome is None else ("failed" if self.failed else "complete")
        elapsed = (self.ended or time.monotonic()) - self.started
        eta = None  # seconds left at the rate so far, while running and once it is known
        if self.outcome is None and self.done and self.total >= self.done and elapsed > 0:
            eta = round((self.total - self.done) / (self.done / elapsed), 3)
        return {
            "id": self.system_id,
            "application": self.client_id,
            "done": self.done,
            "total": self.total,
            "tasks_failed": self.tasks_failed,
            "state": state,
            "elapsed": round(elapsed, 3),
            "eta": eta,
        }


class SystemTable:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.records: dict[str, SystemRecord] = {}

    # -- starting --------------------------------------------------------------------------------

    def start(self, system_id: str, client_id: str, payload: bytes, waiter: bytes) -> bool:
        """Take in a system sent by an application; False if the id is taken by another."""
        if system_id in self.records:
            # Sent again by its own application after a reconnect: it is here already.
            return self.records[system_id].client_id == client_id
        self.master.journal.add_system(system_id, client_id, payload)
        self._run(SystemRecord(system_id, client_id, None), payload, None, [])
        self.records[system_id].waiters.add(waiter)
        log.info("task system %s started for application %s", system_id, client_id)
        return True

    def restore(self, saved: RestoredSystem) -> None:
        """Bring back a system from the journal: done ones keep their outcome for queries."""
        record = SystemRecord(saved.system_id, saved.client_id, None)
        if saved.outcome is not None:
            record.outcome, record.failed = saved.outcome, saved.failed
            self.records[saved.system_id] = record
            return
        replay = [(seq, task_id, ok, data) for seq, task_id, ok, data in saved.replay]
        self._run(record, saved.snapshot, saved.is_snapshot, replay)
        log.info(
            "task system %s restored (%s, %d results to replay)",
            saved.system_id,
            "from a snapshot" if saved.is_snapshot else "as first received",
            len(replay),
        )

    def _run(
        self, record: SystemRecord, payload: bytes, is_snapshot: bool | None, replay: list
    ) -> None:
        record.runner = SystemRunner(
            record.system_id,
            record.client_id,
            payload,
            self.master.mailbox.post,
            self.master.cluster_info,
            durable=self.master.journal.durable,
            restored=bool(is_snapshot),
            replay=replay,
        )
        self.records[record.system_id] = record
        self.master.scheduler.start_system(record.system_id)
        record.runner.start()

    # -- feeding ---------------------------------------------------------------------------------

    def deliver(self, per_system: dict[str, list[tuple[str, bool, bytes]]]) -> None:
        """Journal results for their systems, then hand them to the runners."""
        for system_id, results in per_system.items():
            record = self.records.get(system_id)
            if record is None or record.runner is None:
                continue
            last = self.master.journal.system_results(system_id, results)
            first = last - len(results) + 1
            record.runner.inbox.put(
                [(first + i, task_id, ok, data) for i, (task_id, ok, data) in enumerate(results)]
            )

    def on_runner_message(self, item: tuple) -> None:
        kind, system_id, *rest = item
        record = self.records.get(system_id)
        if record is None or record.outcome is not None:
            return
        if kind == "push":
            self._push(record, *rest)
        elif kind == "progress":
            record.done, record.total = rest
            self.master.clients.send(
                record.client_id,
                Kind.SYSTEM_PROGRESS,
                {"system_id": system_id, "done": rest[0], "total": rest[1]},
            )
        elif kind == "done":
            self.complete(record, *rest)

    def _push(
        self, record: SystemRecord, tasks: list, snapshot: bytes | None, applied_seq: int
    ) -> None:
        records = [
            TaskRecord.from_meta(meta, payload, record.client_id, record.system_id)
            for meta, payload in tasks
        ]
        rows = [task.journal_row() for task in records]
        if snapshot is not None:
            self.master.journal.snapshot(record.system_id, snapshot, applied_seq, rows)
        elif rows:
            self.master.journal.add_tasks(rows)
        self.master.scheduler.push_tasks(records)

    # -- ending ----------------------------------------------------------------------------------

    def complete(self, record: SystemRecord, outcome: bytes, failed: bool) -> None:
        if record.runner is not None:
            record.runner.stop()
        record.outcome, record.failed, record.runner = outcome, failed, None
        record.ended = time.monotonic()
        self.master.journal.system_done(record.system_id, outcome, failed)
        leftovers = self.master.scheduler.drop_system(record.system_id)
        self.master.cancel_on_slaves(leftovers)
        elapsed = time.monotonic() - record.started
        log.info(
            "task system %s %s in %.2fs (%d tasks, %d leftovers cancelled)",
            record.system_id,
            "failed" if failed else "completed",
            elapsed,
            record.total,
            len(leftovers),
        )
        for identity in record.waiters:
            self.send_outcome(identity, record)
        record.waiters.clear()

    def cancel(self, system_id: str) -> bool:
        record = self.records.get(system_id)
        if record is None or record.outcome is not None:
            return False
        error = TaskSystemError(f"task system {system_id} was cancelled")
        self.complete(record, cloudpickle.dumps((None, ExceptionWithTraceback(error, ""))), True)
        return True

    def query(self, identity: bytes, system_id: str) -> None:
        """Send the outcome now if there is one, else when it comes."""
        record = self.records.get(system_id)
        if record is None:
            self.master.send(identity, Kind.SYSTEM_DONE, {"system_id": system_id, "unknown": True})
        elif record.outcome is not None:
            self.send_outcome(identity, record)
        else:
            record.waiters.add(identity)

    def send_outcome(self, identity: bytes, record: SystemRecord) -> None:
        self.master.send(
            identity,
            Kind.SYSTEM_DONE,
            {"system_id": record.system_id, "failed": record.failed},
            [record.outcome],
        )

    def stop_all(self) -> None:
        for record in self.records.values():
            if record.runner is not None:
                record.runner.stop()

    def summaries(self) -> list[dict[str, Any]]:
        return [record.summary() for record in self.records.values()]
