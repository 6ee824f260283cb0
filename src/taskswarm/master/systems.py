"""The master's table of task systems: starting, feeding, completing, restoring them.

Each live system has a ``SystemRunner`` thread (``master.runner``); this table lives on the
master's loop thread and is the only place that creates, journals and retires them. Runners talk
back through the master's mailbox: ``Push`` (tasks, with a snapshot when durable), ``Progress``
and ``Done`` (``taskswarm.master.edges``). The table knows the rest of the master only by what
it is given: the scheduler, the journal, how to post to the loop, send and cancel on slaves,
and the dependency table, where a system's tasks that take its other tasks' results
(``ResultRef``) wait for them, and which sends a runner back a task whose input's outcome
was already on its way to it (``RESEND``: ``taskswarm.inputs``).

A completed system's outcome is kept (in memory and in the journal) until it is *collected*: an
application that received it in SYSTEM_DONE confirms with ``RESULTS_ACK {"systems": [id]}``,
and the outcome and its journal row are dropped at once. The small record stays ``forget_after``
seconds for ``status``, then goes too. An outcome never collected (its application went away)
expires ``result_ttl`` seconds after the system completed, or earlier when the retained results
pass ``result_cap`` (oldest first). The ids of systems let go are remembered (the newest
``FORGOTTEN_KEPT``), so ``system_result(id)`` can say what became of the result.

Each system has a name (``TaskSystem.name``, sent with it and journaled) that status, the log
and the dashboard show beside its id; ``look_up`` finds one by a unique prefix of its id
(``taskswarm.master.system_ids``).
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cloudpickle

from ..errors import BadDigest, TaskSystemError
from ..protocol.codec import Kind
from ..protocol.digests import opened
from ..protocol.messages import Ack, Header, Reject, SystemDone, SystemProgress
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import TaskRecord
from ..task import ExceptionWithTraceback, failure
from .dependencies import DependencyTable
from .edges import Done, Progress, Push, RunnerMail, Send
from .journal import Journal, NullJournal, RestoredSystem
from .retention import Retention
from .runner import RESEND, ResultBatch, SystemRunner
from .system_ids import Found, look_up

__all__ = ["SystemRecord", "SystemTable"]

log = logging.getLogger(__name__)

#: Ids of systems whose result was let go remembered, with why (newest kept).
FORGOTTEN_KEPT = 10_000
#: Most records of collected systems kept for ``status`` (oldest forgotten first). Few: each one,
#: long-lived among the short-lived objects of the systems that follow, pins memory around it
#: (a soak measured about 12 KiB of RSS per record kept).
COLLECTED_KEPT = 100


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
    cancelled: bool = False  # stopped by app.cancel_system (or Ctrl-C under taskswarm run)
    finished_at: float | None = None  # wall-clock time it completed (for --result-ttl)
    collected_at: float | None = None  # monotonic time its outcome was received and dropped
    name: str = ""  # TaskSystem.name ("": sent by an older application)

    @property
    def finished(self) -> bool:
        return self.ended is not None

    @property
    def called(self) -> str:
        """How log lines name it: ``my-sweep (id)``."""
        return f"{self.name} ({self.system_id})" if self.name else self.system_id

    def summary(self) -> dict[str, Any]:
        state = "running" if not self.finished else ("failed" if self.failed else "complete")
        if self.cancelled:
            state = "cancelled"
        elapsed = (self.ended or time.monotonic()) - self.started
        eta = None  # seconds left at the rate so far, while running and once it is known
        if not self.finished and self.done and self.total >= self.done and elapsed > 0:
            eta = round((self.total - self.done) / (self.done / elapsed), 3)
        return {
            "id": self.system_id,
            "name": self.name,
            "application": self.client_id,
            "done": self.done,
            "total": self.total,
            "tasks_failed": self.tasks_failed,
            "state": state,
            "elapsed": round(elapsed, 3),
            "eta": eta,
        }


def _no_runners(item: RunnerMail) -> None:
    raise RuntimeError("this master core runs no task systems: it was given nowhere to post")


class SystemTable:
    def __init__(
        self,
        scheduler: SchedulerContract,
        journal: Journal | NullJournal,
        send: Send,
        *,
        dependencies: DependencyTable,
        tell_application: Callable[[str, Header], None],
        cancel_on_slaves: Callable[[list[TaskRecord], bool], None],
        cluster_info: Callable[[], dict[str, int]],
        post: Callable[[RunnerMail], None] = _no_runners,
        retention: Retention,
        rejected: Counter[str] | None = None,
    ) -> None:
        self.scheduler = scheduler
        self.journal = journal
        #: Where tasks that take other tasks' results wait for them.
        self.dependencies = dependencies
        self.send = send
        #: Send to an application by its id (if it is connected).
        self.tell_application = tell_application
        self.cancel_on_slaves = cancel_on_slaves
        self.cluster_info = cluster_info
        #: How a runner thread reaches the loop (the node's mailbox).
        self.post = post
        self.retention = retention
        #: refusals counted by reason (the master's): results whose digest did not match
        self.rejected: Counter[str] = Counter() if rejected is None else rejected
        self.records: dict[str, SystemRecord] = {}
        #: system_id -> (why, wall-clock time): "collected", "expired" or "capped"; newest last
        self.forgotten: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self.held = 0  # bytes of outcomes kept for collection
        self.finished_since_gc = 0  # systems completed since the master's last full collection

    # -- starting --------------------------------------------------------------------------------

    def start(
        self, system_id: str, client_id: str, payload: bytes, waiter: bytes, name: str = ""
    ) -> bool:
        """Take in a system sent by an application; False if the id is taken by another."""
        if system_id in self.records:
            # Sent again by its own application after a reconnect: it is here already.
            return self.records[system_id].client_id == client_id
        self.journal.add_system(system_id, client_id, payload, name, strict=True)
        record = SystemRecord(system_id, client_id, None, name=name)
        self._run(record, payload, None, [])
        record.waiters.add(waiter)
        log.info("task system %s started for application %s", record.called, client_id)
        return True

    def restore(self, saved: RestoredSystem) -> None:
        """Bring back a system from the journal: done ones keep their outcome for queries."""
        record = SystemRecord(saved.system_id, saved.client_id, None, name=saved.name)
        if saved.outcome is not None:
            record.outcome, record.failed = saved.outcome, saved.failed
            record.ended, record.finished_at = time.monotonic(), saved.ended_at or time.time()
            self.held += len(saved.outcome)
            self.records[saved.system_id] = record
            return
        replay = [(seq, task_id, ok, data) for seq, task_id, ok, data in saved.replay]
        self._run(record, saved.snapshot, saved.is_snapshot, replay)
        log.info(
            "task system %s restored (%s, %d results to replay)",
            record.called,
            "from a snapshot" if saved.is_snapshot else "as first received",
            len(replay),
        )

    def _run(
        self, record: SystemRecord, payload: bytes, is_snapshot: bool | None, replay: ResultBatch
    ) -> None:
        record.runner = SystemRunner(
            record.system_id,
            record.client_id,
            payload,
            self.post,
            self.cluster_info,
            durable=self.journal.durable,
            restored=bool(is_snapshot),
            replay=replay,
        )
        self.records[record.system_id] = record
        self.scheduler.start_system(record.system_id)
        record.runner.start()

    # -- feeding ---------------------------------------------------------------------------------

    def deliver(self, per_system: dict[str, list[tuple[str, bool, Any]]]) -> None:
        """Journal results for their systems, then hand them to the runners.

        The runners unpickle these, so each result from a slave is checked against the digest
        its signed header gave here, before it is journaled (a restart replays what the journal
        holds): one altered on the way becomes a ``BadDigest`` failure of its task."""
        for system_id, results in per_system.items():
            record = self.records.get(system_id)
            if record is None or record.runner is None:
                continue
            results = [self._checked(task_id, ok, data) for task_id, ok, data in results]
            last = self.journal.system_results(system_id, results)
            first = last - len(results) + 1
            record.runner.inbox.put(
                [(first + i, task_id, ok, data) for i, (task_id, ok, data) in enumerate(results)]
            )

    def _checked(self, task_id: str, ok: bool, data: Any) -> tuple[str, bool, Any]:
        try:
            return task_id, ok, opened(data)
        except BadDigest as exc:
            self.rejected[exc.reason] += 1
            exc.add_note(f"(the outcome of task {task_id} was refused, not unpickled)")
            log.warning("refused the outcome of task %s: %s", task_id, exc)
            return task_id, False, failure(exc)

    def on_runner_message(self, item: RunnerMail) -> None:
        record = self.records.get(item.system_id)
        if record is None or record.finished:
            return
        if isinstance(item, Push):
            self._push(record, item)
        elif isinstance(item, Progress):
            record.done, record.total = item.done, item.total
            progress = SystemProgress(
                system_id=item.system_id,
                done=item.done,
                total=item.total,
                failed=item.failed,
                first_failure=item.first_failure,  # once: the application keeps it
            )
            self.tell_application(record.client_id, progress)
        elif isinstance(item, Done):
            self.complete(record, item.outcome, item.failed)

    def _push(self, record: SystemRecord, push: Push) -> None:
        records = [
            TaskRecord.from_meta(meta, payload, record.client_id, record.system_id)
            for meta, payload in push.tasks
        ]
        rows = [task.journal_row() for task in records]
        if push.snapshot is not None:
            self.journal.snapshot(record.system_id, push.snapshot, push.applied_seq, rows)
        elif rows:
            self.journal.add_tasks(rows)
        resend: list[tuple[TaskRecord, str]] = []
        ready, _ = self.dependencies.admit(records, record.client_id, {}, resend)
        self.scheduler.push_tasks(ready)
        if resend and record.runner is not None:
            rows_back = [(RESEND, task.task_id, False, dep.encode()) for task, dep in resend]
            record.runner.inbox.put(rows_back)

    # -- ending ----------------------------------------------------------------------------------

    def complete(self, record: SystemRecord, outcome: bytes, failed: bool) -> None:
        if record.runner is not None:
            record.runner.stop()
        record.outcome, record.failed, record.runner = outcome, failed, None
        record.ended, record.finished_at = time.monotonic(), time.time()
        self.held += len(outcome)
        self.finished_since_gc += 1
        self.journal.system_done(record.system_id, outcome, failed, record.finished_at)
        leftovers = self.scheduler.drop_system(record.system_id)
        self.dependencies.drop_system(record.system_id)
        self.cancel_on_slaves(leftovers, False)
        elapsed = time.monotonic() - record.started
        log.info(
            "task system %s %s in %.2fs (%d tasks, %d leftovers cancelled)",
            record.called,
            "cancelled" if record.cancelled else "failed" if failed else "completed",
            elapsed,
            record.total,
            len(leftovers),
        )
        for identity in record.waiters:
            self.send_outcome(identity, record)
        record.waiters.clear()

    def cancel(self, system_id: str) -> bool:
        record = self.records.get(system_id)
        if record is None or record.finished:
            return False
        error = TaskSystemError(f"task system {record.called} was cancelled")
        record.cancelled = True
        self.complete(record, cloudpickle.dumps((None, ExceptionWithTraceback(error, ""))), True)
        return True

    def query(self, identity: bytes, system_id: str) -> None:
        """Send the outcome now if there is one, else when it comes."""
        record = self.records.get(system_id)
        if record is None or record.collected_at is not None:
            reason = self.why_unknown(system_id) or None
            unknown = SystemDone(system_id=system_id, unknown=True, reason=reason)
            self.send(identity, Kind.SYSTEM_DONE, unknown)
        elif record.outcome is not None:
            self.send_outcome(identity, record)
        else:
            record.waiters.add(identity)

    def why_unknown(self, system_id: str) -> str:
        """What became of a system the master no longer holds, if it still remembers it."""
        why, when = self.forgotten.get(system_id, ("", 0.0))
        at = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(when))
        if why == "collected":
            return (
                f"its result was collected at {at} and is not kept after that (a result is "
                "held only until an application confirms it received it)"
            )
        if why == "expired":
            return (
                f"its result expired uncollected at {at}, {self.retention.result_ttl:g}s after the "
                "system completed (the master's --result-ttl)"
            )
        if why == "capped":
            return (
                f"its result was dropped uncollected at {at} to keep the results the master "
                "holds under its --result-cap (oldest go first)"
            )
        return ""

    # -- letting go --------------------------------------------------------------------------

    def collected(self, system_ids: list[str], client_id: str) -> None:
        """An application received these systems' outcomes: drop them (journal rows too)."""
        gone = []
        for system_id in system_ids:
            record = self.records.get(system_id)
            if record is None or record.outcome is None:
                continue
            self._let_go(record, "collected")
            record.collected_at = time.monotonic()
            gone.append(system_id)
            log.debug("task system %s collected by application %s", record.called, client_id)
        self.journal.forget_systems(gone)

    def _let_go(self, record: SystemRecord, why: str) -> None:
        if record.outcome is not None:
            self.held -= len(record.outcome)
        record.outcome = None
        record.waiters.clear()
        self.forgotten[record.system_id] = (why, time.time())
        self.forgotten.move_to_end(record.system_id)
        while len(self.forgotten) > FORGOTTEN_KEPT:
            self.forgotten.popitem(last=False)

    def drop(self, record: SystemRecord, why: str) -> None:
        """Let an uncollected outcome go (expired, or over the cap): the record goes too."""
        self._let_go(record, why)
        del self.records[record.system_id]
        self.journal.forget_systems([record.system_id])

    def sweep(self, expire_before: float) -> None:
        """Once a heartbeat: expire outcomes of systems completed before ``expire_before``
        (wall clock), forget collected systems' records after ``forget_after``."""
        forget_before = time.monotonic() - self.retention.forget_after
        kept: list[SystemRecord] = []
        for record in list(self.records.values()):
            if record.collected_at is not None:
                if record.collected_at <= forget_before:
                    del self.records[record.system_id]
                else:
                    kept.append(record)
            elif record.outcome is not None and (record.finished_at or 0.0) < expire_before:
                log.info(
                    "task system %s: its result expired uncollected (--result-ttl %gs)",
                    record.called,
                    self.retention.result_ttl,
                )
                self.drop(record, "expired")
        if len(kept) > COLLECTED_KEPT:
            kept.sort(key=lambda r: r.collected_at or 0.0)
            for record in kept[: len(kept) - COLLECTED_KEPT]:
                del self.records[record.system_id]

    def retained(self) -> list[tuple[float, SystemRecord, int]]:
        """Outcomes waiting for collection: (completed at, record, bytes), any order."""
        return [
            (r.finished_at or 0.0, r, len(r.outcome))
            for r in self.records.values()
            if r.outcome is not None
        ]

    def send_outcome(self, identity: bytes, record: SystemRecord) -> None:
        self.send(
            identity,
            Kind.SYSTEM_DONE,
            SystemDone(system_id=record.system_id, failed=record.failed),
            [record.outcome],
        )

    def stop_all(self) -> None:
        for record in self.records.values():
            if record.runner is not None:
                record.runner.stop()

    def summaries(self) -> list[dict[str, Any]]:
        """Running systems first (oldest first), then finished ones, newest first: what is
        going on now, then what just ended."""
        running = [r for r in self.records.values() if not r.finished]
        finished = sorted(
            (r for r in self.records.values() if r.finished),
            key=lambda r: r.finished_at or 0.0,
            reverse=True,
        )
        return [record.summary() for record in running + finished]

    def look_up(self, given: str) -> Found:
        """The system whose id is ``given``, or the one it is a unique prefix of, among the
        systems held and those let go (whose prefix then says what became of them)."""
        return look_up(given, [*self.records, *self.forgotten], self._describe)

    def answer_look_up(self, identity: bytes, rid: int, given: str) -> None:
        """ACK naming the system ``given`` names, or REJECT saying why none (``look_up``)."""
        found = self.look_up(given)
        if found.system_id is None:
            reject = Reject(rid=rid, reason=found.reason, error=found.error)
            self.send(identity, Kind.REJECT, reject)
            return
        record = self.records.get(found.system_id)
        name = record.name if record is not None else None
        self.send(identity, Kind.ACK, Ack(rid=rid, system_id=found.system_id, name=name))

    def _describe(self, system_id: str) -> str:
        record = self.records.get(system_id)
        if record is None:
            return f"result {self.forgotten.get(system_id, ('forgotten', 0.0))[0]}"
        state = str(record.summary()["state"])
        return f"{record.name}, {state}" if record.name else state
