"""The master's table of application nodes: what they submit, and what becomes of them.

Handlers for what an application says (HELLO, SUBMIT, SYSTEM, CANCEL, TASKS_QUERY, RESULTS_ACK,
BYE); its plain tasks' outcomes go back through ``ResultRoute`` (``taskswarm.master.results``)
and are kept until it confirms them. Lives on the master's loop thread, and knows the rest of
the master only by what it is given: the peers' table, the scheduler, the journal, the task
systems' table, how to send, cancel on slaves and deliver.

The table is bounded by live work, not by history:

- an application that says BYE is gone for good (its connection object is closed): its plain
  tasks still queued or running are cancelled and its unconfirmed outcomes dropped, since no one
  can receive them any more; its task systems live on;
- an application silent for the master's ``client_timeout`` is *lost*, as a slave would be: its
  plain tasks are cancelled too, but their outcome (a TaskError saying why) is kept with its
  other unconfirmed ones, so if it comes back (HELLO with the same client_id) its Futures end;
- outcomes kept for a gone application expire ``result_ttl`` seconds after they were made, and
  the oldest go first past the master's ``result_cap`` (``retention.enforce_result_cap``);
- a gone application's record, once nothing waits for it, is forgotten ``forget_after`` seconds
  after it left (at most ``GONE_KEPT`` of them are kept meanwhile).

Slightly over 400 lines: an application's submissions, cancellations and confirmations are one
conversation with one record, kept together; results on their way out live in ``results``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import BadDigest, TaskError
from ..protocol import sharing
from ..protocol.codec import Kind, Message
from ..protocol.messages import (
    Ack,
    Cancel,
    Forget,
    Header,
    Hello,
    Reject,
    Reregister,
    ResultsAck,
    Scatter,
    Submit,
    System,
    TasksQuery,
    Welcome,
)
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import TaskRecord, TaskState
from ..system import check_name
from ..task import failure
from .dependencies import DependencyTable
from .edges import Send
from .journal import Journal, JournalFault, NullJournal
from .outcomes import Outcome, cancelled_by
from .results import ApplicationRecord, ResultRoute
from .retention import Retention

if TYPE_CHECKING:
    from .systems import SystemTable

__all__ = ["ApplicationRecord", "ApplicationTable"]

log = logging.getLogger(__name__)

#: Most records of gone applications with nothing left for them kept (oldest forgotten first):
#: ``status`` does not show them, they only spare a quick reconnect a new record.
GONE_KEPT = 100


class ApplicationTable:
    def __init__(
        self,
        peers: dict[bytes, Any],
        scheduler: SchedulerContract,
        journal: Journal | NullJournal,
        systems: SystemTable,
        send: Send,
        *,
        dependencies: DependencyTable,
        reply_later: Callable[[bytes, Header], None],
        cancel_on_slaves: Callable[[list[TaskRecord], bool], None],
        deliver: Callable[[list[Outcome]], None],
        dispatch_now: Callable[[], None],
        rejected: Counter[str],
        max_message_bytes: int,
        retention: Retention,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers = peers  # shared with the slaves' table: identity -> its record
        self.scheduler = scheduler
        self.journal = journal
        self.systems = systems
        self.send = send
        #: Tasks held back for their inputs (Futures as arguments).
        self.dependencies = dependencies
        #: Send at the end of this turn of the loop, after the tasks it dispatches.
        self.reply_later = reply_later
        #: Tell slaves to stop tasks (``soft``: only those no worker began).
        self.cancel_on_slaves = cancel_on_slaves
        #: The master's one way out for outcomes.
        self.deliver = deliver
        #: Dispatch now and send what it gave each slave (before a cancellation does).
        self.dispatch_now = dispatch_now
        self.rejected = rejected  # refusals counted by reason (the codec's, in status)
        self.max_message_bytes = max_message_bytes
        self.retention = retention
        self.clock = clock
        self.records: dict[str, ApplicationRecord] = {}
        self.results = ResultRoute(
            self.records, self._gone_record, journal, send, max_message_bytes, clock
        )

    def _gone_record(self, client_id: str) -> ApplicationRecord:
        """A record for an application not seen since a restart: it may come back."""
        client = self._record(client_id)
        client.gone_at = self.clock()
        return client

    def restore(self, undelivered: dict[str, list[tuple[str, bool, bytes, float]]]) -> None:
        """Results journaled but never confirmed: they wait for their application's HELLO
        (until they expire, counted from when they were made)."""
        now = self.clock()
        for client_id, outcomes in undelivered.items():
            client = self._record(client_id)
            client.gone_at = now
            outcomes = sorted(outcomes, key=lambda row: row[3])  # oldest first, for expiry
            client.unconfirmed = {t: (ok, data, when) for t, ok, data, when in outcomes}
            client.held = sum(len(data) for _, _, data, _ in outcomes)

    def _record(self, client_id: str) -> ApplicationRecord:
        client = self.records.get(client_id)
        if client is None:
            client = self.records[client_id] = ApplicationRecord(client_id, None)
        return client

    def known(self, identity: bytes) -> ApplicationRecord | None:
        """The application behind ``identity``; unknown ones are asked to say HELLO again."""
        peer = self.peers.get(identity)
        if isinstance(peer, ApplicationRecord):
            peer.last_seen = self.clock()
            return peer
        self.send(identity, Kind.REREGISTER, Reregister())
        return None

    # -- handlers ----------------------------------------------------------------------------------

    def on_hello(self, identity: bytes, msg: Message) -> None:
        hello = msg.read(Hello)
        client_id = hello.client_id
        if client_id not in self.records:
            log.info("application %s connected", client_id)
        client = self._record(client_id)
        if client.identity not in (identity, None):
            self.peers.pop(client.identity, None)
        client.identity = identity
        client.connected = True
        client.gone_at = None
        client.said_bye = False
        client.last_seen = self.clock()
        client.host, client.pid = hello.host, hello.pid
        client.batched_acks = hello.batched_acks
        self.peers[identity] = client
        # Whatever it has not confirmed may have been lost on the way: send it again.
        client.outbox = [(t, ok, data) for t, (ok, data, _) in client.unconfirmed.items()]
        if client.outbox:
            self.results.waiting(client)
        self.send(
            identity, Kind.WELCOME, Welcome(node_id=client_id, max_bytes=self.max_message_bytes)
        )

    def on_submit(self, identity: bytes, msg: Message) -> None:
        submit = msg.read(Submit)
        rid = submit.rid
        client = self.known(identity)
        if client is None:
            return
        try:
            tasks = [
                TaskRecord.from_meta(meta, payload, client.client_id)
                for meta, payload in zip(submit.tasks, msg.payloads, strict=True)
            ]
        except (TypeError, ValueError, OverflowError) as exc:
            # Refused whole, with the reason: its Futures fail with it instead of waiting.
            self.rejected["bad-fields"] += 1
            reason = f"a task in the batch is ill-formed: {exc}"
            self.send(identity, Kind.REJECT, Reject(rid=rid, reason=reason))
            return
        # A batch sent again after a reconnect: keep only what the master does not know yet.
        known, waiting = self.scheduler.tasks, self.dependencies.waiting
        fresh = [t for t in tasks if t.task_id not in known and t.task_id not in client.unconfirmed]
        if waiting:
            fresh = [t for t in fresh if t.task_id not in waiting]
        if fresh and not self.accepting(identity, rid):
            return
        try:
            self.journal.add_tasks([t.journal_row() for t in fresh], strict=True)
        except JournalFault as exc:
            self.refuse(identity, rid, str(exc))
            return
        client.submitted += len(fresh)
        if self.journal.durable:
            for task in fresh:
                task.keep = False  # a durable master journals every result: it must have it
        ready, failed = self.dependencies.admit(fresh, client.client_id, client.unconfirmed)
        self.scheduler.push_tasks(ready)
        if failed:
            self.deliver(failed)
        if client.batched_acks and rid is not None:
            # With its results, or alone a little later: no message of its own per round trip.
            self.results.acknowledge(client, rid)
            return
        # Answered once this turn's tasks are on their way: the ACK is not on their path.
        self.reply_later(identity, Ack(rid=rid, n=len(tasks)))

    def on_scatter(self, identity: bytes, msg: Message) -> None:
        """Data put on the cluster for many tasks: kept (not opened) until forgotten."""
        scatter = msg.read(Scatter)
        client = self.known(identity)
        if client is None:
            return
        refused = self.dependencies.scatter(scatter.data_id, client.client_id, msg.payloads[0])
        if refused is None:
            self.send(identity, Kind.ACK, Ack(rid=scatter.rid, n=1))
        else:
            self.send(identity, Kind.REJECT, Reject(rid=scatter.rid, reason=refused))

    def on_forget(self, identity: bytes, msg: Message) -> None:
        client = self.known(identity)
        if client is not None:
            self.dependencies.forget(msg.read(Forget).data_ids, client.client_id)

    def accepting(self, identity: bytes, rid: int | None) -> bool:
        """Whether the master can take new work now; if not, the sender is told why. Work is
        acknowledged only once it is saved, so while the journal cannot be written (a full or
        read-only disk, a vanished state directory) it is refused with the reason instead."""
        fault = self.journal.fault
        if fault is None:
            return True
        self.refuse(identity, rid, fault)
        return False

    def refuse(self, identity: bytes, rid: int | None, reason: str) -> None:
        self.rejected["not-saved"] += 1
        self.send(identity, Kind.REJECT, Reject(rid=rid, reason=reason))

    def on_results_ack(self, identity: bytes, msg: Message) -> None:
        ack = msg.read(ResultsAck)
        client = self.known(identity)
        if client is None:
            return
        self.drop_unconfirmed(client, ack.tasks, delivered=True)  # delivered: let go
        # Task systems' results it received (``systems``, newer applications): forgotten now.
        if ack.systems:
            self.systems.collected(ack.systems, client.client_id)

    def on_tasks_query(self, identity: bytes, msg: Message) -> None:
        """An application back after a reconnect names the plain tasks it still waits for:
        those the master does not hold (not queued, running, or with an outcome kept for it)
        are answered failed, so that no Future waits for ever on one nothing will finish."""
        query = msg.read(TasksQuery)
        client = self.known(identity)
        if client is None:
            return
        known, waiting = self.scheduler.tasks, self.dependencies.waiting
        lost = [
            task_id
            for task_id in query.tasks
            if task_id not in known and task_id not in client.unconfirmed
            and task_id not in waiting
        ]  # fmt: skip
        if not lost:
            return
        log.warning(
            "application %s waits for %d tasks this master does not hold; failing them",
            client.client_id,
            len(lost),
        )
        error = TaskError(
            "the master no longer holds this task: it restarted without its state directory "
            "(--state-dir), or the task's result expired uncollected while this application "
            f"was away (--result-ttl {self.retention.result_ttl:g}s, --result-cap-mib); "
            "submit it again",
            "TaskError",
        )
        outcome = failure(error)  # one, shared
        client.outbox.extend((task_id, False, outcome) for task_id in lost)
        self.results.waiting(client)

    def on_cancel(self, identity: bytes, msg: Message) -> None:
        cancel = msg.read(Cancel)
        client = self.known(identity)
        if client is None:
            return
        if cancel.system_id is not None:
            self.systems.cancel(cancel.system_id)
            return
        if cancel.tasks is None:
            raise ValueError("a CANCEL names its tasks or its task system")
        task_ids, rid = cancel.tasks, cancel.rid
        if rid is not None:
            # An executor's shutdown(cancel_futures=True): only what no slave has yet, and say
            # which, so the rest finish as the stdlib's executors let running calls finish.
            # Tasks that came in this same turn go to idle workers first, as they would have
            # had the turn ended before this message (they came first); sent now, so that
            # they reach their slaves before the cancellation does.
            self.dispatch_now()
            task_ids = self._take_back_unstarted(task_ids)
        cancelled = [t for t in map(self.cancel, task_ids) if t is not None]
        client.cancelled += len(cancelled)
        self.journal.forget_tasks([t.task_id for t in cancelled])
        self.cancel_on_slaves(cancelled, cancel.soft)
        # Any application may cancel any task (each holds the cluster key: docs/security.md);
        # the owner of one it did not send is told, so its Future or system does not wait.
        others = [t for t in cancelled if t.client_id != client.client_id or t.system_id]
        if others:
            self.deliver(cancelled_by(others, f"by application {client.client_id}"))
        if rid is not None:
            taken = [t.task_id for t in cancelled]
            self.send(identity, Kind.ACK, Ack(rid=rid, n=len(cancelled), tasks=taken))

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Forget a live task, queued, running or waiting for its inputs (None: not live)."""
        task = self.scheduler.cancel(task_id)
        if task is None and self.dependencies.waiting:
            task = self.dependencies.cancel(task_id)
        if task is not None and task_id in self.dependencies.kept.remaking:
            self.dependencies.kept.abandon(task_id)  # it will not be made again
        if task is not None and task_id in self.dependencies.dependents:
            self.deliver(self.dependencies.cancelled(task))  # what waited for it fails
        return task

    def _take_back_unstarted(self, task_ids: list[str]) -> list[str]:
        """Of these tasks, those still queued here (returned, to cancel now); those on a slave
        that no worker began are asked back from it, their outcome to come (``cancelled``, or
        a result if a worker began one meanwhile). Started ones run on."""
        tasks = self.scheduler.tasks
        queued, asked = [], []
        waiting = self.dependencies.waiting
        for task_id in task_ids:
            task = tasks.get(task_id)
            if task_id in waiting:
                queued.append(task_id)  # waiting for its inputs: as good as queued
                continue
            if task is None or task.started:
                continue
            if task.state == TaskState.QUEUED:
                queued.append(task_id)
            elif task.state == TaskState.ASSIGNED:
                task.cancelling = True
                asked.append(task)
        self.cancel_on_slaves(asked, True)
        return queued

    def on_system(self, identity: bytes, msg: Message) -> None:
        system = msg.read(System)
        client = self.known(identity)
        if client is None:
            return
        system_id, rid = system.system_id, system.rid
        if system_id not in self.systems.records and not self.accepting(identity, rid):
            return
        try:
            name = "" if system.name is None else check_name(system.name)
        except (TypeError, ValueError) as exc:  # the application checks it too: a rogue one
            self.rejected["bad-fields"] += 1
            self.send(identity, Kind.REJECT, Reject(rid=rid, reason=str(exc)))
            return
        # The master runs this one itself: its digest is checked here, before it is journaled
        # (a restart unpickles what the journal holds) and long before it is unpickled.
        try:
            payload = msg.payloads[0].open()
        except BadDigest as exc:
            self.rejected[exc.reason] += 1
            self.send(identity, Kind.REJECT, Reject(rid=rid, reason=str(exc)))
            return
        try:
            started = self.systems.start(system_id, client.client_id, payload, identity, name)
        except JournalFault as exc:
            self.refuse(identity, rid, str(exc))
            return
        if started:
            self.send(identity, Kind.ACK, Ack(rid=rid, n=1))
        else:
            reason = f"task system {system_id} already exists"
            self.send(identity, Kind.REJECT, Reject(rid=rid, reason=reason))

    # -- applications that leave ---------------------------------------------------------------

    def on_bye(self, client: ApplicationRecord) -> None:
        """It closed its connection: nothing can reach it any more (its task systems live on)."""
        if client.identity is not None:
            self.peers.pop(client.identity, None)
        client.connected = False
        client.said_bye = True
        client.gone_at = self.clock()
        client.identity = None
        client.outbox = []
        self.drop_unconfirmed(client, list(client.unconfirmed))
        self._cancel_tasks_of(client, None)
        self.dependencies.forget_client(client.client_id)

    def _lose(self, client: ApplicationRecord, silent: float) -> None:
        """Silent past ``client_timeout`` (killed, or its machine or link gone): like a lost
        slave. Its plain tasks are cancelled, with an outcome saying so kept for it in case it
        comes back; its task systems live on, detached, their results kept for it."""
        log.warning(
            "application %s silent for %.1fs (more than --client-timeout %gs): lost; its plain "
            "tasks are cancelled, its task systems go on",
            client.client_id,
            silent,
            self.retention.client_timeout,
        )
        if client.identity is not None:
            self.peers.pop(client.identity, None)
        client.connected = False
        client.gone_at = self.clock()
        client.identity = None
        client.outbox = []
        error = TaskError(
            f"task cancelled: its application {client.client_id} was silent for {silent:.1f}s "
            f"(the master's --client-timeout is {self.retention.client_timeout:g}s)",
            "TaskError",
        )
        self._cancel_tasks_of(client, failure(error))

    def _cancel_tasks_of(self, client: ApplicationRecord, outcome: bytes | None) -> None:
        """Cancel its plain tasks queued or running (on the slaves too); ``outcome``, if given,
        is kept as each one's (one shared bytes object, not journaled)."""
        if client.submitted <= client.done + client.failed + client.cancelled:
            return  # nothing of its own in flight: no need to look through the live tasks
        scheduler = self.scheduler
        mine = [
            t.task_id
            for t in scheduler.tasks.values()
            if t.client_id == client.client_id and t.system_id is None
        ] + self.dependencies.of_client(client.client_id)
        cancelled = [t for t in map(self.cancel, mine) if t is not None]
        client.cancelled += len(cancelled)
        self.journal.forget_tasks(mine)
        self.cancel_on_slaves(cancelled, False)
        if outcome is not None:
            made = time.time()
            for task in cancelled:
                client.unconfirmed[task.task_id] = (False, outcome, made)
                client.held += len(outcome)
        if cancelled:
            log.info("cancelled %d plain tasks of application %s", len(cancelled), client.client_id)

    def drop_unconfirmed(
        self, client: ApplicationRecord, task_ids: list[str], delivered: bool = False
    ) -> None:
        """Forget outcomes delivered, or that no one will collect (journal rows with them).
        A result in shared memory that was not ``delivered`` is freed here (a delivered one
        its application freed when it read it)."""
        for task_id in task_ids:
            outcome = client.unconfirmed.pop(task_id, None)
            if outcome is not None:
                client.held -= len(outcome[1])
                if not delivered:
                    sharing.free(outcome[1])
        if task_ids:
            self.journal.forget_tasks(task_ids)

    def sweep(self, expire_before: float) -> None:
        """Once a heartbeat: lose silent applications, expire outcomes made before
        ``expire_before`` (wall clock), forget gone applications nothing waits for."""
        now = self.clock()
        forget_before = now - self.retention.forget_after
        idle: list[ApplicationRecord] = []
        for client in list(self.records.values()):
            if client.connected:
                silent = now - client.last_seen
                if silent > self.retention.client_timeout:
                    self._lose(client, silent)
                else:
                    continue
            expired = []
            for task_id, (_, _, made) in client.unconfirmed.items():
                if made >= expire_before:
                    break  # oldest first: the rest are younger
                expired.append(task_id)
            if expired:
                log.info(
                    "%d results of application %s expired uncollected (--result-ttl %gs)",
                    len(expired),
                    client.client_id,
                    self.retention.result_ttl,
                )
                self.drop_unconfirmed(client, expired)
            if not client.unconfirmed:
                gone_at = client.gone_at if client.gone_at is not None else now
                if gone_at <= forget_before:
                    del self.records[client.client_id]
                    self.dependencies.forget_client(client.client_id)
                else:
                    idle.append(client)
        if len(idle) > GONE_KEPT:
            idle.sort(key=lambda c: c.gone_at or 0.0)
            for client in idle[: len(idle) - GONE_KEPT]:
                del self.records[client.client_id]
                self.dependencies.forget_client(client.client_id)

    def retained(self) -> list[tuple[float, ApplicationRecord, str, int]]:
        """Outcomes kept for gone applications: (made, client, task_id, bytes), any order."""
        return [
            (made, client, task_id, len(data))
            for client in self.records.values()
            if not client.connected
            for task_id, (_, data, made) in client.unconfirmed.items()
        ]

    def retained_bytes(self) -> int:
        """Bytes of outcomes kept for gone applications (what ``--result-cap`` bounds)."""
        return sum(c.held for c in self.records.values() if not c.connected)

    def summaries(self) -> list[dict[str, Any]]:
        """Connected applications, and gone ones whose results still wait for them."""
        return [c.summary() for c in self.records.values() if c.connected or c.unconfirmed]
