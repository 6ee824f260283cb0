"""The master's core: every record and every decision, and no socket.

Data flow::

    application --SUBMIT--> handle --journal--> scheduler queue --turn--> TASKS --> slave
    application --SYSTEM--> handle --journal--> SystemRunner thread --Push--> scheduler queue
    slave --RESULTS--> handle --> scheduler.result_arrived --> deliver --+--> RESULTS --> app
                                                                        +--journal--> runner
    SystemRunner --Done--> on_runner_message --journal--> SYSTEM_DONE --> application

``MasterCore`` takes what the node gives it, one call at a time on the node's loop thread:

- ``handle(identity, message)``: a message already decoded and authenticated (the codec's
  ``Message``);
- ``turn()``: the end of each turn of the loop (dispatch, then what that turn has to send);
- ``tick(now)``: each heartbeat (heartbeats out, silent slaves lost, retention's sweep);
- ``on_runner_message(item)``: what a task system's runner thread posted to the node's mailbox.

What it says goes out through the ``send`` it was given (``taskswarm.master.edges.Send``):
the node's encodes and writes to its socket, a test's keeps the records in a list. It creates no
socket and no thread of its own (a task system's runner thread is the system's). Plain tasks and
their results stay opaque bytes here. Everything accepted is journaled before it is acknowledged,
so a master restarted on the same state directory carries on where it stopped. Every outcome,
whatever made it, leaves through one path: ``deliver``.

Slightly over 400 lines: the handlers for slaves' messages stay here, beside ``deliver``, since
every outcome they report goes through it; the tables hold everything else.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from ..protocol import sharing
from ..protocol.codec import Kind, Message
from ..protocol.messages import (
    Ack,
    Bye,
    Header,
    Heartbeat,
    Reject,
    Reregister,
    Resize,
    Results,
    Running,
    StatusReply,
    SystemQuery,
)
from ..protocol.messages import Status as StatusQuery
from ..protocol.transport import MAX_MESSAGE_BYTES
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import NodeState, SlaveRecord, TaskRecord, format_resources
from ..stats import Stats
from ..task import Status
from . import outcomes, retention
from .applications import ApplicationRecord, ApplicationTable
from .dependencies import DependencyTable
from .edges import RunnerMail, Send
from .journal import Journal, NullJournal
from .kept import KeptRef
from .outcomes import ErrorLog, Outcome
from .retention import Retention
from .shipping import ShippedCode
from .slaves import SlaveTable
from .status import describe, kept
from .systems import SystemTable
from .timeline import History, TaskStream

__all__ = ["MasterCore"]

log = logging.getLogger(__name__)


class MasterCore:
    """The master's state and handlers, fed by its node; see the module docstring."""

    def __init__(
        self,
        scheduler: SchedulerContract,
        send: Send,
        *,
        journal: Journal | NullJournal | None = None,
        post: Callable[[RunnerMail], None] | None = None,
        rejected: Counter[str] | None = None,
        heartbeat_interval: float = 1.0,
        slave_timeout: float = 5.0,
        max_crashes: int = 3,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        stealing: bool = True,
        resource_wait: float = 10.0,
        keep: Retention = Retention(),  # noqa: B008 - frozen
        clock: Callable[[], float] = time.monotonic,
        node_facts: Callable[[], dict[str, Any]] = dict,
        kept_by_node: Callable[[], dict[str, int]] = dict,
    ) -> None:
        self.scheduler = scheduler
        self.send = send
        self.journal = journal if journal is not None else NullJournal()
        #: Refusals counted by reason (the node's codec shares its own): ``status``.
        self.rejected = rejected if rejected is not None else Counter()
        self.heartbeat_interval = heartbeat_interval
        self.max_crashes = max_crashes
        self.max_message_bytes = max_message_bytes
        self.retention = keep
        self.clock = clock
        #: What the node adds to ``status()["master"]`` and to its ``kept`` (address, sessions).
        self.node_facts, self.kept_by_node = node_facts, kept_by_node
        #: Named measures (count, sum, min, max) of what the master times: ``status()["stats"]``.
        self.stats = Stats()
        scheduler.queue_wait = self.stats.measure("queue_wait_seconds")
        scheduler.stealing = stealing
        scheduler.resource_wait = resource_wait
        self.started = time.time()
        self.peers: dict[bytes, SlaveRecord | ApplicationRecord] = {}
        self.slaves = SlaveTable(
            self.peers,
            scheduler,
            send,
            self.stats,
            heartbeat_interval=heartbeat_interval,
            slave_timeout=slave_timeout,
            max_message_bytes=max_message_bytes,
            clock=clock,
        )
        #: Tasks held back until the tasks whose results they take are done.
        self.dependencies = DependencyTable(scheduler, send)
        self.systems = SystemTable(
            scheduler,
            self.journal,
            send,
            dependencies=self.dependencies,
            tell_application=self.tell_application,
            cancel_on_slaves=self.cancel_on_slaves,
            cluster_info=self.slaves.cluster_info,
            retention=keep,
            rejected=self.rejected,
            **({"post": post} if post is not None else {}),
        )
        self.slaves.on_lost = self._slave_lost
        #: Outcomes ``deliver`` settles but sends no application (a result made again that
        #: its application no longer refers to).
        self._unrouted: set[str] = set()
        self.applications = ApplicationTable(
            self.peers,
            scheduler,
            self.journal,
            self.systems,
            send,
            dependencies=self.dependencies,
            reply_later=self.reply_later,
            cancel_on_slaves=self.cancel_on_slaves,
            deliver=self.deliver,
            dispatch_now=self.dispatch_now,
            rejected=self.rejected,
            max_message_bytes=max_message_bytes,
            retention=keep,
            clock=clock,
        )
        #: Code applications shipped (``app.upload_file``), on its way to every slave.
        self.shipping = ShippedCode(
            send, self.applications.known, lambda: self.scheduler.slaves.values()
        )
        self.errors = ErrorLog()
        #: Where the time goes, for the dashboard: the latest tasks that ran, and the load
        #: sampled each heartbeat (both fixed-size rings; see ``timeline``).
        self.stream = TaskStream()
        self.history = History()
        self._replies: list[tuple[bytes, Header]] = []
        #: Plain tasks a worker began this turn, by application (``Future.running()``).
        self._started_for: defaultdict[str, list[str]] = defaultdict(list)
        self._next_maintenance = time.monotonic() + retention.JOURNAL_MAINTENANCE
        self._collector = retention.Collector()
        self.handlers: dict[str, Callable[[bytes, Message], None]] = {
            Kind.REGISTER: self.on_register,
            Kind.RESULTS: self.on_slave_results,
            Kind.RELEASED: self.slaves.on_released,
            Kind.DRAIN: self.slaves.on_drain,
            Kind.HEARTBEAT: self.on_heartbeat,
            Kind.HELLO: self.applications.on_hello,
            Kind.SUBMIT: self.applications.on_submit,
            Kind.RESULTS_ACK: self.applications.on_results_ack,
            Kind.TASKS_QUERY: self.applications.on_tasks_query,
            Kind.CANCEL: self.applications.on_cancel,
            Kind.SYSTEM: self.applications.on_system,
            Kind.SYSTEM_QUERY: self.on_system_query,
            Kind.STATUS: self.on_status,
            Kind.RESIZE: self.on_resize,
            Kind.BYE: self.on_bye,
            Kind.SHIP: self.shipping.on_ship,
            Kind.SCATTER: self.applications.on_scatter,
            Kind.FORGET: self.applications.on_forget,
        }

    def restore(self) -> None:
        """Take up what the journal holds: queued tasks, undelivered results, task systems."""
        saved = self.journal.load()
        running = {s.system_id for s in saved.systems if s.outcome is None}
        self.scheduler.push_tasks(
            TaskRecord.from_journal(row)
            for row in saved.queued
            if row[2] is None or row[2] in running  # a completed system's leftovers stay gone
        )
        self.applications.restore(saved.undelivered)
        for system in saved.systems:
            self.systems.restore(system)
        if saved.queued or saved.undelivered or saved.systems:
            log.info(
                "restored %d tasks, %d undelivered results, %d task systems",
                len(saved.queued),
                sum(map(len, saved.undelivered.values())),
                len(saved.systems),
            )

    # -- what the node feeds in ----------------------------------------------------------------

    def handle(self, identity: bytes, message: Message) -> None:
        """One message, already authenticated; a bad one is counted and dropped, never raised."""
        handler = self.handlers.get(message.kind)
        if handler is None:
            log.warning("unexpected %s message from %r", message.kind, identity[:16])
            return
        try:
            handler(identity, message)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
            # Signed but ill-formed: a bug or a version skew in a peer, never a crash here.
            self.rejected["bad-fields"] += 1
            log.warning("dropped a %s message with bad fields: %r", message.kind, exc)
        except Exception:
            # Anything else one message sets off is that message's failure, not the
            # cluster's: the master goes on serving every other peer.
            self.rejected["handler-failed"] += 1
            log.exception("handling a %s message failed; it was dropped", message.kind)

    def on_runner_message(self, item: RunnerMail) -> None:
        self.systems.on_runner_message(item)

    def turn(self) -> None:
        """The end of a turn of the loop: dispatch, and send what it and the handlers made."""
        self._dispatch()
        self.deliver(self._unsatisfiable())
        self.slaves.send_task_batches()
        self._send_running()
        self.slaves.send_steal_requests()
        self.applications.results.flush()
        self.applications.results.send_acks()
        self.applications.results.journal_unconfirmed()
        self._send_replies()

    def next_wake(self) -> float | None:
        """When a turn has something to send though no message came (on ``clock``): the
        acknowledgements of SUBMITs that waited for results; None when nothing waits."""
        return self.applications.results.next_ack()

    def tick(self, now: float | None = None) -> None:
        """Each heartbeat (``now`` on the core's clock): beat, lose silent slaves, sweep."""
        now = self.clock() if now is None else now
        for identity in list(self.peers):
            self.send(identity, Kind.HEARTBEAT, Heartbeat())
        self.slaves.check(now)
        self.journal.check()
        self.sweep(now)
        self.history.sample(self.scheduler.slaves.values(), len(self.scheduler.tasks))

    def say_goodbye(self) -> None:
        for identity in list(self.peers):
            self.send(identity, Kind.BYE, Bye())

    def close(self) -> None:
        """Write down what waits unconfirmed, stop the system runners."""
        self.applications.results.journal_unconfirmed(everything=True)
        self.systems.stop_all()

    # -- each turn -----------------------------------------------------------------------------

    def dispatch_now(self) -> None:
        """The scheduler's turn now, and the TASKS it made sent."""
        self._dispatch()
        self.slaves.send_task_batches()

    def _dispatch(self) -> None:
        """The scheduler's turn, timed per decision."""
        before = self.scheduler.decisions
        start = time.perf_counter()
        self.scheduler.dispatch()
        decided = self.scheduler.decisions - before
        if decided:
            self.stats.add("dispatch_seconds", (time.perf_counter() - start) / decided, decided)

    def _unsatisfiable(self) -> list[Outcome]:
        """Tasks whose resources no slave offers: their owners get ResourceUnavailable."""
        tasks = self.scheduler.take_unsatisfiable()
        if not tasks:
            return []
        offers = sorted({format_resources(s.resources) for s in self.scheduler.slaves.values()})
        return outcomes.unsatisfiable(tasks, offers, self.scheduler.resource_wait)

    def reply_later(self, identity: bytes, header: Header) -> None:
        """Send at the end of this turn of the loop, after the tasks it dispatches."""
        self._replies.append((identity, header))

    def _send_replies(self) -> None:
        replies, self._replies = self._replies, []
        for identity, header in replies:
            self.send(identity, header.kind, header)

    def _send_running(self) -> None:
        """One RUNNING message per application whose tasks began this turn, less those whose
        outcome came in the same turn: it goes to the application now and says all."""
        if not self._started_for:
            return
        started, self._started_for = self._started_for, defaultdict(list)
        live = self.scheduler.tasks
        for client_id, task_ids in started.items():
            running = [task_id for task_id in task_ids if task_id in live]
            if running:
                self.tell_application(client_id, Running(tasks=running))

    def tell_application(self, client_id: str, header: Header) -> None:
        """Send to an application by its id, if it is connected."""
        client = self.applications.records.get(client_id)
        if client is not None and client.identity is not None:
            self.send(client.identity, header.kind, header)

    # -- results -------------------------------------------------------------------------------

    def on_slave_results(self, identity: bytes, msg: Message) -> None:
        body = msg.read(Results)
        slave = self.slaves.known(identity)
        if slave is not None:
            slave.last_seen = self.clock()
            self.slaves.take_window(slave, body.credit, body.want, body.pace)
            self.scheduler.refresh(slave)
        else:
            self.send(identity, Kind.REREGISTER, Reregister())
        slave_id = slave.slave_id if slave else None
        if body.started:
            self._note_started(slave_id, body.started)
        settled: list[Outcome] = []
        now, took = time.monotonic(), []
        scheduler, journal, max_crashes = self.scheduler, self.journal, self.max_crashes
        settle = outcomes.settle
        kept = self.dependencies.kept
        ran, number = self.stream.add, self.stream.number
        self.history.finished += len(body.results)
        for result, data in zip(body.results, msg.payloads, strict=True):
            task_id, status, detail = result.task_id, result.status, result.detail
            task = scheduler.result_arrived(slave_id, task_id)
            if task is None:
                sharing.free(data)  # a result in shared memory no one will read
                if result.kept is not None and slave is not None:
                    kept.stale(task_id, slave)  # ... or on its slave
                continue  # stale, duplicate or cancelled
            if result.ended is not None and slave_id is not None:
                began, ended = result.began or result.ended, result.ended
                ran(
                    (
                        number(),
                        began,
                        ended,
                        slave_id,
                        result.worker,
                        task.name,
                        task.system_id,
                        status,
                    )
                )
            if result.kept is not None or status == Status.LOST_INPUT or kept.entries:
                data = self._kept_outcome(task, status, detail, result.kept, slave, data)
                if data is None:
                    continue
            took.append(now - task.assigned_at)
            outcome = settle(task, status, detail, data, scheduler, journal, max_crashes)
            if outcome is None:
                continue  # it runs again
            ok, data = outcome
            if not ok and status != Status.CANCELLED:
                self._note_error(task, status, detail, slave_id)
            settled.append((task, ok, data))
        if took and slave_id is not None:
            self.stats.add(
                "task_seconds", sum(took) / len(took), len(took), low=min(took), high=max(took),
                slave=slave_id,
            )  # fmt: skip
        self.deliver(settled)

    def _kept_outcome(
        self,
        task: TaskRecord,
        status: str,
        detail: str | None,
        size: int | None,
        slave: SlaveRecord | None,
        data: Any,
    ) -> Any:
        """What the data plane makes of a slave's outcome: a :class:`KeptRef` for a result
        its slave keeps, None when there is nothing to deliver (an input could not be had: the
        task waits for it to be made again)."""
        kept = self.dependencies.kept
        if status == Status.LOST_INPUT:
            dep = (detail or "").split(" ", 1)[0]
            log.warning("task %s could not fetch its input: %s", task.task_id, detail)
            self.deliver(self.dependencies.input_lost(task, dep))
            return None
        if size is not None and status == Status.OK:
            if slave is None or not slave.data:
                self.scheduler.requeue(task)  # kept by a slave the master lost: run it again
                return None
            data = KeptRef(task.task_id, slave.slave_id, slave.data, size)
            if not kept.arrived(task, data):
                self._unrouted.add(task.task_id)
            client = self.applications.records.get(task.client_id)
            if client is None or client.said_bye:
                kept.forget([task.task_id], task.client_id)  # no one will ever fetch it
        return data

    def _slave_lost(self, slave: SlaveRecord) -> None:
        """A slave is gone: the results it kept that are still needed are made again."""
        self.deliver(self.dependencies.slave_lost(slave.slave_id))

    def deliver(self, settled: list[Outcome]) -> None:
        """The one way an outcome leaves the master's hands, whatever made it (a worker, a
        cancellation, a lost application, a need no slave meets): a task system's go to its
        runner (journaled first), a plain task's to its application."""
        if not settled:
            return
        kept = self.dependencies.kept
        if kept.remaking:  # made again, and ended otherwise than kept (cancelled, failed...)
            for task, _, data in settled:
                if task.task_id in kept.remaking and type(data) is not KeptRef:
                    if not kept.failed_again(task.task_id):
                        self._unrouted.add(task.task_id)
        if self.dependencies.dependents:
            # Inputs of held-back tasks: those now ready join the queue (dispatched this turn),
            # those whose input failed fail with it.
            settled, ready = self.dependencies.settle(settled)
            if ready:
                self.scheduler.push_tasks(ready)
        per_system: dict[str, list[tuple[str, bool, bytes]]] = defaultdict(list)
        plain: list[Outcome] = []
        unrouted = self._unrouted
        for task, ok, data in settled:
            if task.system_id is not None:
                per_system[task.system_id].append((task.task_id, ok, data))
            elif unrouted and task.task_id in unrouted:
                unrouted.discard(task.task_id)
            else:
                plain.append((task, ok, data))
        self.systems.deliver(per_system)
        self.applications.results.route(plain)

    def _note_error(
        self, task: TaskRecord, status: str, detail: str | None, slave_id: str | None
    ) -> None:
        """Keep the failure for people to read (dashboard, API): its text, never its pickle."""
        system = self.systems.records.get(task.system_id) if task.system_id else None
        if system is not None:
            system.tasks_failed += 1
        self.errors.note(task, status, detail, slave_id)

    def latest_errors(self, limit: int) -> list[dict[str, Any]]:
        """The latest task failures, newest first."""
        return self.errors.latest(limit)

    def _note_started(self, slave_id: str | None, task_ids: list[str]) -> None:
        """A slave's workers began these: their owners' Futures are running now."""
        for task_id in task_ids:
            task = self.scheduler.tasks.get(task_id)
            if task is None or task.slave_id != slave_id or task.started:
                continue
            task.started = True
            if task.system_id is None:
                self._started_for[task.client_id].append(task.task_id)

    # -- cancelling ----------------------------------------------------------------------------

    def cancel_task(self, task_id: str) -> bool:
        """Cancel a live task; its owner gets a TaskError saying so (its Future resolves)."""
        task = self.applications.cancel(task_id)
        if task is None:
            return False
        self.cancel_on_slaves([task])
        self.deliver(outcomes.cancelled_by([task], "through the master's API"))
        return True

    def cancel_on_slaves(self, tasks: list[TaskRecord], soft: bool = False) -> None:
        """Tell slaves to stop tasks that are no longer wanted (queued ones are just gone);
        ``soft``: only those not started yet, a running one finishes (its outcome is dropped)."""
        per_slave: dict[str, list[str]] = defaultdict(list)
        for task in tasks:
            if task.slave_id is not None:
                per_slave[task.slave_id].append(task.task_id)
        self.slaves.cancel(per_slave, soft)

    # -- other requests --------------------------------------------------------------------------

    def on_register(self, identity: bytes, msg: Message) -> None:
        """A slave is welcomed, then sent the code applications shipped: before any task."""
        self.slaves.on_register(identity, msg)
        self.shipping.welcome(identity)

    def on_heartbeat(self, identity: bytes, msg: Message) -> None:
        beat = msg.read(Heartbeat)
        peer = self.peers.get(identity)
        if peer is None:
            self.send(identity, Kind.REREGISTER, Reregister())
            return
        peer.last_seen = self.clock()
        if isinstance(peer, SlaveRecord):
            self.slaves.refresh(peer, beat)

    def on_system_query(self, identity: bytes, msg: Message) -> None:
        query = msg.read(SystemQuery)
        if query.rid is None:
            self.systems.query(identity, query.system_id)
        else:  # only a look-up: the full id of the system an id or a prefix of one names
            self.systems.answer_look_up(identity, query.rid, query.system_id)

    def on_status(self, identity: bytes, msg: Message) -> None:
        rid = msg.read(StatusQuery).rid
        self.send(identity, Kind.STATUS_REPLY, StatusReply(rid=rid, status=self.status()))

    def on_resize(self, identity: bytes, msg: Message) -> None:
        resize = msg.read(Resize)
        if resize.slave_id is None:
            raise ValueError("an application's RESIZE names the slave to resize")
        reason = f"no slave {resize.slave_id}"
        if self.slaves.resize(resize.slave_id, resize.workers):
            self.send(identity, Kind.ACK, Ack(rid=resize.rid, n=1, reason=reason))
        else:
            self.send(identity, Kind.REJECT, Reject(rid=resize.rid, n=1, reason=reason))

    def on_bye(self, identity: bytes, msg: Message) -> None:
        peer = self.peers.get(identity)
        if isinstance(peer, SlaveRecord):
            self.slaves.lose(peer, "said goodbye", NodeState.INACTIVE, logging.INFO)
        elif isinstance(peer, ApplicationRecord):
            self.applications.on_bye(peer)

    # -- forgetting what is no longer needed ------------------------------------------------------

    def sweep(self, now: float) -> None:
        """Once a heartbeat: the master holds what is live, not what happened (retention)."""
        keep = self.retention
        expire_before = time.time() - keep.result_ttl
        self.applications.sweep(expire_before)
        self.systems.sweep(expire_before)
        retention.enforce_result_cap(keep.result_cap, self.applications, self.systems)
        self.slaves.forget_departed(now, keep.forget_after)
        if self.dependencies.dependents:
            self.dependencies.sweep(self.scheduler.tasks.__contains__)
        if time.monotonic() >= self._next_maintenance:
            self.journal.maintain()
            self._collector.collect(self.systems)
            retention.trim_memory()
            self._next_maintenance = time.monotonic() + retention.JOURNAL_MAINTENANCE

    # -- status --------------------------------------------------------------------------------

    def kept(self) -> dict[str, int]:
        """How much the master holds of each kind of record: what should follow live work."""
        return kept(self)

    def status(self) -> dict[str, Any]:
        """Plain data describing the cluster now; `taskswarm status` prints this."""
        return describe(self)
