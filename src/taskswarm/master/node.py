"""The master node: keeps the global task queue, runs task systems, routes results.

Data flow::

    application --SUBMIT--> router --journal--> scheduler queue --dispatch--> TASKS --> slave
    application --SYSTEM--> router --journal--> SystemRunner thread --push--> scheduler queue
    slave --RESULTS--> router --> scheduler.result_arrived --+--journal--> RESULTS --> application
                                                             +--journal--> SystemRunner (its tasks)
    SystemRunner --done--> mailbox --journal--> SYSTEM_DONE --> application

One thread owns the socket and every record (the loop below). Plain tasks and their results stay
opaque bytes here; only task systems, in their runner threads, are ever unpickled on the master.
Everything accepted is journaled (``taskswarm.master.journal``) before it is acknowledged, so a
master restarted on the same state directory carries on where it stopped.

Bounded by live work, not by history: once a heartbeat, ``_sweep`` forgets what nobody needs
any more (departed slaves, gone applications, collected task systems, closed sessions, after
``forget_after`` seconds), loses applications silent past ``client_timeout``, expires results
kept uncollected past ``result_ttl`` and keeps those kept under ``result_cap`` bytes; every few
seconds the journal gives its free space back.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import gc
import logging
import math
import os
import socket
import time
from collections import defaultdict, deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import zmq

from ..dashboard import DashboardServer, parse_address
from ..dashboard.api import ERRORS_KEPT
from ..errors import (
    ConfigurationError,
    ResourceUnavailable,
    TaskError,
    WorkerCrashed,
    WorkerMemoryExceeded,
)
from ..ops.config import MasterConfig
from ..protocol.addresses import advertised_address, check_advertise, public_url
from ..protocol.codec import ENVELOPE, Codec, Kind, Message, within
from ..protocol.keys import ClusterKeys, as_keys
from ..protocol.mailbox import Mailbox
from ..protocol.transport import MAX_MESSAGE_BYTES, bind_router, receive_batch, try_send
from ..scheduling import load_plugin
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import (
    NodeState,
    SlaveRecord,
    TaskRecord,
    format_resources,
    parse_resources,
)
from ..stats import Stats
from ..task import MEMORY_EXCEEDED, Status, failure
from .applications import ApplicationRecord, ApplicationTable
from .gate import Gate
from .journal import Journal, NullJournal
from .systems import SystemTable

__all__ = ["Master"]

log = logging.getLogger(__name__)


#: The newest task failures ``status`` (and so the live page) carries.
ERRORS_IN_STATUS = 10
#: The retention settings' defaults, from their one declaration (taskswarm.ops.config): results no
#: application collected are kept a day (``--result-ttl``, as Celery's ``result_expires``), at
#: most 1 GiB of them (``--result-cap-mib``); an application silent 10 s (twenty missed beats) is
#: lost (``--client-timeout``); departed slaves, gone applications and collected systems stay in
#: ``status`` 300 s (``--forget-after``), at most ``DEPARTED_KEPT`` departed slaves meanwhile.
RESULT_TTL: float = MasterConfig.result_ttl
RESULT_CAP: int = MasterConfig.result_cap_mib * 1024 * 1024
CLIENT_TIMEOUT: float = MasterConfig.client_timeout
FORGET_AFTER: float = MasterConfig.forget_after
DEPARTED_KEPT = 1000
#: Seconds a closed connection's reply address is kept (at most ``forget_after``): a peer that
#: sends again is given a new one as its message gets in, so this need not be long.
SESSION_GRACE = 2.0
#: Seconds between the journal's space reclaims.
JOURNAL_MAINTENANCE = 5.0
#: Least seconds between the full garbage collections run after task systems completed.
GC_INTERVAL = 30.0
MIB = 1024 * 1024


class Master:
    """Serve one cluster on ``bind`` until ``stop()``; see the module docstring for the flow."""

    @classmethod
    def from_config(cls, config: MasterConfig, key: bytes | ClusterKeys) -> Master:
        """The master ``taskswarm master`` runs, from its settings (:mod:`taskswarm.ops.config`)."""
        # Settings the master takes under their own names; the rest are renamed or converted.
        same = (
            "scheduler", "strategy", "prefetch", "slave_timeout", "max_crashes", "stealing",
            "resource_wait", "advertise", "engine", "result_ttl", "client_timeout", "forget_after",
        )  # fmt: skip
        return cls(
            config.bind,
            key,
            heartbeat_interval=config.heartbeat,
            state_dir=config.journal_dir,
            max_message_bytes=config.max_message_mib * MIB,
            dashboard=config.dashboard_address,
            dashboard_hosts=config.dashboard_host,
            result_cap=config.result_cap_mib * MIB,
            **{name: getattr(config, name) for name in same},
        )

    def __init__(
        self,
        bind: str,
        key: bytes | ClusterKeys,
        *,
        scheduler: str = "push",
        strategy: str = "load",
        prefetch: int = 2,
        heartbeat_interval: float = 1.0,
        slave_timeout: float = 5.0,
        state_dir: str | os.PathLike[str] | None = None,
        max_crashes: int = 3,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        stealing: bool = True,
        resource_wait: float = 10.0,
        dashboard: str | None = None,
        dashboard_hosts: Sequence[str] = (),
        advertise: str | None = None,
        engine: str | None = None,
        result_ttl: float = RESULT_TTL,
        result_cap: int = RESULT_CAP,
        client_timeout: float = CLIENT_TIMEOUT,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        #: The cluster's keys. A scheduler plugin that runs its own node in the master's process
        #: (the engine schedulers' bridge) signs with them; nothing else reads them.
        keys = self.keys = as_keys(key)
        _tune_malloc()
        self.codec = Codec(keys.hmac, max_bytes=max_message_bytes)
        self.max_message_bytes = max_message_bytes
        self.heartbeat_interval = heartbeat_interval
        self.slave_timeout = slave_timeout
        self.max_crashes = max_crashes
        #: Retention (see the module docstring): seconds, bytes (0: no cap), seconds, seconds.
        self.result_ttl = result_ttl
        self.result_cap = result_cap
        self.client_timeout = client_timeout
        self.forget_after = forget_after
        self._next_maintenance = time.monotonic() + JOURNAL_MAINTENANCE
        self._next_gc = time.monotonic() + GC_INTERVAL
        strategy_obj = load_plugin("taskswarm.strategies", strategy)()
        self.scheduler: SchedulerContract = load_plugin("taskswarm.schedulers", scheduler)(
            strategy_obj, prefetch
        )
        #: The Dask or Ray cluster an engine scheduler (``--scheduler dask|ray``) hands tasks to.
        self.engine = engine
        if engine is not None and not self.scheduler.uses_engine:
            raise ConfigurationError(
                f"--engine {engine} needs a scheduler that runs tasks on an engine "
                f"(--scheduler dask or --scheduler ray), not {scheduler!r}"
            )
        self.scheduler.setup(self)
        #: Named measures (count, sum, min, max) of what the master times: ``status()["stats"]``.
        self.stats = Stats()
        self.scheduler.queue_wait = self.stats.measure("queue_wait_seconds")
        self.scheduler.stealing = stealing
        self.scheduler.resource_wait = resource_wait
        self.scheduler_name, self.strategy_name = scheduler, strategy
        self.journal = Journal(Path(state_dir) / "journal.sqlite3") if state_dir else NullJournal()
        check_advertise(advertise)  # a bad one is a usage error before anything is bound
        self._context = zmq.Context()
        self.router, self.address = bind_router(
            self._context, bind, keys.curve_secret, max_message_bytes
        )
        #: Where others are told to reach this master (status, the dashboard URL): see addresses.
        self.advertised = advertised_address(self.address, advertise)
        self.encrypted = keys.curve
        self.mailbox = Mailbox()
        self.gate = Gate(
            self.codec,
            lambda identity, frames: try_send(self.router, [identity, *frames]),
            self._ask_to_reregister,
        )
        self._poller = zmq.Poller()
        self._poller.register(self.router, zmq.POLLIN)
        self._poller.register(self.mailbox.fileno(), zmq.POLLIN)
        self.peers: dict[bytes, SlaveRecord | ApplicationRecord] = {}
        self.applications = ApplicationTable(self)
        self.systems = SystemTable(self)
        self.departed: dict[str, dict] = {}  # lost or gone slaves, for status; oldest first
        self._departed_at: dict[str, float] = {}  # ... and when (monotonic)
        self.errors: deque[dict[str, Any]] = deque(maxlen=ERRORS_KEPT)  # newest last
        self._replies: list[tuple[bytes, str, dict]] = []
        #: Plain tasks a worker began this turn, by application (``Future.running()``).
        self._started_for: defaultdict[str, list[str]] = defaultdict(list)
        self._stopping = False
        #: Stop when this process is no longer our parent (set for LocalCluster's nodes).
        self.parent_pid: int | None = None
        self._closed = False
        self.started = time.time()
        self._handlers = {
            Kind.REGISTER: self.on_slave_register,
            Kind.RESULTS: self.on_slave_results,
            Kind.RELEASED: self.on_slave_released,
            Kind.DRAIN: self.on_slave_drain,
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
        }
        self._restore()
        self.dashboard: DashboardServer | None = None
        self.dashboard_url: str | None = None
        if dashboard:
            self._start_dashboard(dashboard, dashboard_hosts)
        log.info(
            "master listening on %s, advertised as %s (scheduler %s, strategy %s, stealing %s, "
            "state %s)",
            self.address,
            self.advertised,
            scheduler,
            strategy,
            "on" if stealing else "off",
            state_dir or "not kept",
        )

    def _restore(self) -> None:
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

    def _start_dashboard(self, address: str, hosts: Sequence[str]) -> None:
        host, port = parse_address(address)
        advertised = urlsplit(self.advertised).hostname or ""  # the name status's URL shows
        token = self.keys.dashboard_token()
        server = DashboardServer(self.ask, host, port, token, [advertised, *hosts])
        try:
            self.dashboard_url = public_url(server.start(), self.advertised)
        except OSError as exc:
            log.warning(
                "dashboard not started: cannot listen on %s (%s); the master runs without it. "
                "Give another --dashboard HOST:PORT, or --no-dashboard.",
                address,
                exc.strerror or exc,
            )
            return
        self.dashboard = server
        log.info("dashboard and API on %s", self.dashboard_url)

    def ask(self, question: Any) -> concurrent.futures.Future:
        """Run ``question(master)`` in the master's loop (from any thread): how the dashboard
        reads the records the loop owns. The Future holds its answer or its exception."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        self.mailbox.post(("ask", question, future))
        return future

    def _answer(self, question: Any, future: concurrent.futures.Future) -> None:
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(question(self))
        except Exception as exc:  # noqa: BLE001 - the asker gets it, the loop carries on
            future.set_exception(exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def serve(self, ready_file: str | None = None) -> None:
        """Run the loop until ``stop()``: a short list of named steps per turn."""
        if ready_file:
            Path(ready_file).write_text(self.address)
        next_beat = time.monotonic()
        try:
            while not self._stopping:
                wait = max(0.0, next_beat - time.monotonic())
                events = dict(self._poller.poll(math.ceil(wait * 1000)))
                if self.router in events:
                    self._receive_from_nodes()
                if self.mailbox.fileno() in events:
                    self._read_mailbox()
                if time.monotonic() >= next_beat:
                    self._send_heartbeats()
                    self.gate.report()
                    self._check_slaves()
                    self._check_parent()
                    self.journal.check()
                    self._sweep()
                    next_beat = time.monotonic() + self.heartbeat_interval
                self._dispatch()
                self._fail_unsatisfiable()
                self._send_task_batches()
                self._send_running()
                self._send_steal_requests()
                self.applications.flush()
                self.applications.journal_unconfirmed()
                self._send_replies()
        finally:
            self._say_goodbye()
            self.close()

    def _read_mailbox(self) -> None:
        """Questions and runners' messages; a function of its own, so that nothing it read (a
        system's outcome can be megabytes) stays referenced by the loop until the next one."""
        for item in self.mailbox.drain():
            if item[0] == "ask":
                self._answer(*item[1:])
            else:
                self.systems.on_runner_message(item)

    def _dispatch(self) -> None:
        """The scheduler's turn, timed per decision."""
        before = self.scheduler.decisions
        start = time.perf_counter()
        self.scheduler.dispatch()
        decided = self.scheduler.decisions - before
        if decided:
            self.stats.add("dispatch_seconds", (time.perf_counter() - start) / decided, decided)

    def _check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log.warning("the process that started this node is gone; stopping")
            self.stop()

    def stop(self) -> None:
        """Ask the loop to end; safe from a signal handler or another thread."""
        self._stopping = True
        self.mailbox.wake()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.dashboard is not None:
            self.dashboard.stop()
        self.scheduler.close()  # an engine scheduler's bridge and its engine connection
        self.applications.journal_unconfirmed(everything=True)
        self.systems.stop_all()
        self.router.close(linger=0)
        self._context.term()
        self.mailbox.close()
        self.journal.close()
        log.info("master stopped")

    # -- receiving and sending -----------------------------------------------------------------

    def _receive_from_nodes(self) -> None:
        for frames in receive_batch(self.router):
            identity = frames[0].bytes
            message = self.gate.admit(identity, frames[1:])
            if message is None:
                continue
            handler = self._handlers.get(message.kind)
            if handler is None:
                log.warning("unexpected %s message from %r", message.kind, identity[:16])
                continue
            try:
                handler(identity, message)
            except (KeyError, TypeError, ValueError, IndexError, OverflowError) as exc:
                # Signed but ill-formed: a bug or a version skew in a peer, never a crash here.
                self.codec.rejected["bad-fields"] += 1
                log.warning("dropped a %s message with bad fields: %r", message.kind, exc)
            except Exception:
                # Anything else one message sets off is that message's failure, not the
                # cluster's: the master goes on serving every other peer.
                self.codec.rejected["handler-failed"] += 1
                log.exception("handling a %s message failed; it was dropped", message.kind)

    def reply_later(self, identity: bytes, kind: str, header: dict) -> None:
        """Send at the end of this turn of the loop, after the tasks it dispatches."""
        self._replies.append((identity, kind, header))

    def _send_replies(self) -> None:
        replies, self._replies = self._replies, []
        for identity, kind, header in replies:
            self.send(identity, kind, header)

    def send(self, identity: bytes, kind: str, header: dict | None = None, payloads=()) -> bool:
        frames = self.codec.encode(kind, header, payloads, to=self.gate.sessions.get(identity))
        return try_send(self.router, [identity, *frames])

    def _ask_to_reregister(self, identity: bytes, session: str) -> None:
        try_send(self.router, [identity, *self.codec.encode(Kind.REREGISTER, to=session)])

    # -- slaves ----------------------------------------------------------------------------------

    def _slave(self, identity: bytes) -> SlaveRecord | None:
        peer = self.peers.get(identity)
        return peer if isinstance(peer, SlaveRecord) else None

    def on_slave_register(self, identity: bytes, msg: Message) -> None:
        old = self._slave(identity)
        if old is not None:
            # Usual at start (a slave repeats REGISTER each heartbeat until welcomed), and what
            # it still holds is assigned back to it just below: worth no warning.
            self._lose_slave(old, "re-registered", level=logging.INFO)
        slave = SlaveRecord(
            slave_id=str(msg["node_id"]),
            identity=identity,
            host=str(msg.get("host", "?")),
            pid=int(msg.get("pid", 0)),
            workers=int(msg.get("workers", 0)),
            credit=int(msg.get("credit", 0)),
            want=int(msg.get("want", 0)),
            pace=float(msg.get("pace", 0.0)),
            heartbeat=_positive(msg.get("heartbeat")),
        )
        try:
            slave.resources = parse_resources(msg.get("resources"))
        except ValueError as exc:
            log.warning("slave %s declared bad resources (%s); it offers none", slave.slave_id, exc)
        self.departed.pop(slave.slave_id, None)
        self._departed_at.pop(slave.slave_id, None)
        self.peers[identity] = slave
        self.scheduler.add_slave(slave)
        self.scheduler.assign_held(slave, [str(t) for t in msg.get("held", [])])
        # The slave learns how often to expect word from the master, so a long heartbeat
        # (a big cluster's) is not taken for a lost master.
        welcome = {
            "node_id": slave.slave_id,
            "heartbeat": self.heartbeat_interval,
            "max_bytes": self.codec.max_bytes,
        }
        self.send(identity, Kind.WELCOME, welcome)
        log.info(
            "slave %s registered from %s with %d workers%s",
            slave.slave_id,
            slave.host,
            slave.workers,
            f" and resources {format_resources(slave.resources)}" if slave.resources else "",
        )

    def on_heartbeat(self, identity: bytes, msg: Message) -> None:
        peer = self.peers.get(identity)
        if peer is None:
            self.send(identity, Kind.REREGISTER)
            return
        peer.last_seen = time.monotonic()
        if isinstance(peer, SlaveRecord):
            self._refresh_slave(peer, msg)

    def _refresh_slave(self, slave: SlaveRecord, msg: Message) -> None:
        if slave.state in (NodeState.PENDING, NodeState.INACTIVE):
            if slave.state == NodeState.INACTIVE:
                log.info("slave %s is back", slave.slave_id)
            slave.state = NodeState.ACTIVE
        workers = msg.get("workers")
        if workers is not None and int(workers) != slave.workers:
            slave.workers = int(workers)
            log.info("slave %s now has %d workers", slave.slave_id, slave.workers)
        slave.credit += int(msg.get("credit", 0))
        slave.want = int(msg.get("want", slave.want))
        slave.pace = float(msg.get("pace", slave.pace))
        slave.rejected = int(msg.get("rejected", slave.rejected))
        if msg.get("stats") is not None:
            slave.stats = _measures(msg["stats"], slave.slave_id)
        if msg.get("held") is not None:
            # Tasks sent two heartbeats ago have arrived unless their message was lost.
            sent_before = time.monotonic() - 2 * self.heartbeat_interval
            held = {str(t) for t in msg["held"]}
            for task in self.scheduler.reclaim_missing(slave, held, sent_before):
                log.warning("slave %s never got task %s; requeued", slave.slave_id, task.task_id)
        self.scheduler.refresh(slave)

    def on_slave_drain(self, identity: bytes, msg: Message) -> None:
        slave = self._slave(identity)
        if slave is not None:
            slave.state = NodeState.DRAINING
            self.scheduler.refresh(slave)
            log.info("slave %s is draining", slave.slave_id)

    def on_slave_results(self, identity: bytes, msg: Message) -> None:
        slave = self._slave(identity)
        if slave is not None:
            slave.last_seen = time.monotonic()
            slave.credit += int(msg.get("credit", 0))
            slave.want = int(msg.get("want", slave.want))
            slave.pace = float(msg.get("pace", slave.pace))
            self.scheduler.refresh(slave)
        else:
            self.send(identity, Kind.REREGISTER)
        slave_id = slave.slave_id if slave else None
        if msg.get("started"):
            self._note_started(slave_id, msg["started"])
        outcomes: list[tuple[TaskRecord, bool, bytes]] = []
        now, took = time.monotonic(), []
        for (task_id, status, detail), data in zip(msg["results"], msg.payloads, strict=True):
            task = self.scheduler.result_arrived(slave_id, str(task_id))
            if task is None:
                continue  # stale, duplicate or cancelled
            took.append(now - task.assigned_at)
            outcome = self._settle(task, status, detail, data)
            if outcome is None:
                continue  # it runs again
            ok, data = outcome
            if not ok and status != Status.CANCELLED:
                self._note_error(task, status, detail, slave_id)
            outcomes.append((task, ok, data))
        if took and slave_id is not None:
            self.stats.add(
                "task_seconds", sum(took) / len(took), len(took), low=min(took), high=max(took),
                slave=slave_id,
            )  # fmt: skip
        self.deliver(outcomes)

    def deliver(self, outcomes: list[tuple[TaskRecord, bool, bytes]]) -> None:
        """The one way an outcome leaves the master's hands, whatever made it (a worker, a
        cancellation, a lost application, a need no slave meets): a task system's go to its
        runner (journaled first), a plain task's to its application."""
        per_system: dict[str, list[tuple[str, bool, bytes]]] = defaultdict(list)
        plain: list[tuple[TaskRecord, bool, bytes]] = []
        for task, ok, data in outcomes:
            if task.system_id is not None:
                per_system[task.system_id].append((task.task_id, ok, data))
            else:
                plain.append((task, ok, data))
        self.systems.deliver(per_system)
        self.applications.route(plain)

    def _settle(
        self, task: TaskRecord, status: str, detail: Any, data: bytes
    ) -> tuple[bool, bytes] | None:
        """Decide what a reported run means: an outcome to deliver, or None to run it again."""
        if status == Status.CANCELLED:
            if not task.cancelling:
                return None  # stopped after the master forgot it: nothing to deliver
            # An executor's shutdown took it back before any worker began it: its owner's
            # Future ends cancelled (an empty failed outcome says so).
            self.scheduler.task_finished(task, None, Status.CANCELLED)
            return False, b""
        if status == Status.RETRY and task.retries < task.max_retries:
            task.retries += 1
            self.journal.count_attempts(task.task_id, task.retries, task.crashes)
            log.info("task %s raised; retry %d of %d", task.task_id, task.retries, task.max_retries)
            self.scheduler.requeue(task)
            return None
        if status == Status.CRASH:
            task.crashes += 1
            self.journal.count_attempts(task.task_id, task.retries, task.crashes)
            if task.crashes < self.max_crashes:
                log.warning(
                    "task %s killed its worker (%s); running it again", task.task_id, detail
                )
                self.scheduler.requeue(task)
                return None
            data = _crash_error(task, str(detail), self.max_crashes)
        ok = status == Status.OK
        self.scheduler.task_finished(task, None, None if ok else status)
        return ok, data

    def latest_errors(self, limit: int) -> list[dict[str, Any]]:
        """The latest task failures, newest first."""
        return list(reversed(self.errors))[:limit]

    def _note_error(self, task: TaskRecord, status: str, detail: Any, slave_id: str | None) -> None:
        """Keep the failure for people to read (dashboard, API): its text, never its pickle."""
        system = self.systems.records.get(task.system_id) if task.system_id else None
        if system is not None:
            system.tasks_failed += 1
        text = str(detail) if detail else f"the task failed ({status}); its slave gave no detail"
        if status == Status.CRASH:
            times = task.crashes
            if text.startswith(MEMORY_EXCEEDED):
                how = text[len(MEMORY_EXCEEDED) :]
                text = f"WorkerMemoryExceeded: lost its worker process {times} times; last: {how}"
            else:
                text = f"WorkerCrashed: killed its worker process {times} times; last: {text}"
        error, _, traceback = text.partition("\n")
        self.errors.append(
            {
                "time": round(time.time(), 3),
                "task_id": task.task_id,
                "name": task.name,
                "system_id": task.system_id,
                "application_id": task.client_id,
                "slave_id": slave_id,
                "status": status,
                "error": error,
                "traceback": traceback,
            }
        )

    def _check_slaves(self) -> None:
        now = time.monotonic()
        for slave in list(self.scheduler.slaves.values()):
            silent = now - slave.last_seen
            # A slave that beats slower than the master is given as many of its own beats.
            beat = max(self.heartbeat_interval, slave.heartbeat)
            if silent > max(
                self.slave_timeout, self.slave_timeout * beat / self.heartbeat_interval
            ):
                self._lose_slave(slave, f"silent for {silent:.1f}s")
            elif silent > 2.5 * beat and slave.state == NodeState.ACTIVE:
                slave.state = NodeState.INACTIVE
                self.scheduler.refresh(slave)
                log.warning("slave %s missed its heartbeats; no new tasks for it", slave.slave_id)

    def _lose_slave(
        self,
        slave: SlaveRecord,
        why: str,
        state: str = NodeState.LOST,
        level: int = logging.WARNING,
    ) -> None:
        requeued = self.scheduler.remove_slave(slave.slave_id)
        self.peers.pop(slave.identity, None)
        slave.state = state
        slave.in_flight = set()
        self.departed.pop(slave.slave_id, None)  # re-inserted: newest last
        self.departed[slave.slave_id] = slave.summary()
        self._departed_at[slave.slave_id] = time.monotonic()
        log.log(
            level, "slave %s %s (%s); %d tasks requeued", slave.slave_id, state, why, len(requeued)
        )

    def _send_task_batches(self) -> None:
        limit = self.max_message_bytes - ENVELOPE
        for slave, batch in self.scheduler.take_outboxes():
            start = time.perf_counter()
            # Big payloads may add up past what the slave accepts in one message.
            for part in within([len(t.payload) for t in batch], limit):
                tasks = batch[part]
                header = {"tasks": [[t.task_id, t.timeout] for t in tasks]}
                if not self.send(slave.identity, Kind.TASKS, header, [t.payload for t in tasks]):
                    self._lose_slave(slave, "unreachable")
                    break
            self.stats.add("send_seconds", time.perf_counter() - start)

    def _note_started(self, slave_id: str | None, task_ids: list[str]) -> None:
        """A slave's workers began these: their owners' Futures are running now."""
        for task_id in task_ids:
            task = self.scheduler.tasks.get(str(task_id))
            if task is None or task.slave_id != slave_id or task.started:
                continue
            task.started = True
            if task.system_id is None:
                self._started_for[task.client_id].append(task.task_id)

    def _send_running(self) -> None:
        """One RUNNING message per application whose tasks began this turn."""
        started, self._started_for = self._started_for, defaultdict(list)
        for client_id, task_ids in started.items():
            self.applications.send(client_id, Kind.RUNNING, {"tasks": task_ids})

    # -- actions from the HTTP API (run in the loop through ``ask``) ----------------------------

    def resize_slave(self, slave_id: str, workers: int) -> bool:
        slave = self.scheduler.slaves.get(slave_id)
        return slave is not None and self.send(slave.identity, Kind.RESIZE, {"workers": workers})

    def drain_slave(self, slave_id: str) -> bool:
        """The slave finishes what it runs, hands back what it holds, and leaves."""
        slave = self.scheduler.slaves.get(slave_id)
        return slave is not None and self.send(slave.identity, Kind.SHUTDOWN)

    def cancel_task(self, task_id: str) -> bool:
        """Cancel a live task; its owner gets a TaskError saying so (its Future resolves)."""
        task = self.scheduler.cancel(task_id)
        if task is None:
            return False
        self.cancel_on_slaves([task])
        self.tell_cancelled([task], "through the master's API")
        return True

    def tell_cancelled(self, tasks: list[TaskRecord], how: str) -> None:
        """Owners of tasks cancelled by someone else learn of it, and by whom: a TaskError
        saying so fails the Future, or reaches the task system's ``task_finished``."""
        self.deliver(
            [
                (
                    task,
                    False,
                    failure(
                        TaskError(
                            f"task {task.name or task.task_id!r} ({task.task_id}) was "
                            f"cancelled {how}",
                            "TaskError",
                        )
                    ),
                )
                for task in tasks
            ]
        )

    def _send_steal_requests(self) -> None:
        for slave, count in self.scheduler.plan_steals():
            log.debug("asking slave %s for %d unstarted tasks back", slave.slave_id, count)
            self.send(slave.identity, Kind.STEAL, {"count": count})

    def on_slave_released(self, identity: bytes, msg: Message) -> None:
        """A slave gave back tasks it had not started (for idle slaves): queue them again."""
        slave = self._slave(identity)
        if slave is None:
            return  # it was lost meanwhile: its tasks went back to the queue then
        slave.last_seen = time.monotonic()
        slave.credit += int(msg.get("credit", 0))
        slave.want = int(msg.get("want", slave.want))
        back = self.scheduler.released(slave, [str(t) for t in msg.get("tasks", [])])
        if back:
            log.debug("slave %s gave back %d tasks for idle slaves", slave.slave_id, len(back))

    def _fail_unsatisfiable(self) -> None:
        """Tasks whose resources no slave offers: their owners get ResourceUnavailable."""
        tasks = self.scheduler.take_unsatisfiable()
        if not tasks:
            return
        offers = sorted({format_resources(s.resources) for s in self.scheduler.slaves.values()})
        outcomes: list[tuple[TaskRecord, bool, bytes]] = []
        for task in tasks:
            needs = format_resources(task.resources)
            log.warning(
                "task %s needs %s, which no slave offers (%s); it fails",
                task.task_id,
                needs,
                "; ".join(offers),
            )
            error = ResourceUnavailable(
                f"task {task.name or task.task_id!r} ({task.task_id}) needs {needs}, but no slave "
                f"in the cluster offers that (they offer: {'; '.join(offers)}) and none came "
                f"within {self.scheduler.resource_wait:g}s. Start a slave with "
                f"`taskswarm slave --resources {needs}`, lower the task's needs, or give the "
                "master a longer --resource-wait.",
                "ResourceUnavailable",
            )
            outcomes.append((task, False, failure(error)))
        self.deliver(outcomes)

    def cancel_on_slaves(self, tasks: list[TaskRecord], soft: bool = False) -> None:
        """Tell slaves to stop tasks that are no longer wanted (queued ones are just gone);
        ``soft``: only those not started yet, a running one finishes (its outcome is dropped)."""
        per_slave: dict[str, list[str]] = defaultdict(list)
        for task in tasks:
            if task.slave_id is not None:
                per_slave[task.slave_id].append(task.task_id)
        header: dict[str, Any] = {"soft": True} if soft else {}
        for slave_id, task_ids in per_slave.items():
            slave = self.scheduler.slaves.get(slave_id)
            if slave is not None:
                self.send(slave.identity, Kind.CANCEL, {"tasks": task_ids, **header})

    # -- requests from applications --------------------------------------------------------

    def on_system_query(self, identity: bytes, msg: Message) -> None:
        self.systems.query(identity, str(msg["system_id"]))

    def on_status(self, identity: bytes, msg: Message) -> None:
        self.send(identity, Kind.STATUS_REPLY, {"rid": msg.get("rid"), "status": self.status()})

    def on_resize(self, identity: bytes, msg: Message) -> None:
        ok = self.resize_slave(str(msg["slave_id"]), int(msg["workers"]))
        reply = Kind.ACK if ok else Kind.REJECT
        self.send(
            identity,
            reply,
            {"rid": msg.get("rid"), "n": 1, "reason": f"no slave {msg['slave_id']}"},
        )

    def on_bye(self, identity: bytes, msg: Message) -> None:
        peer = self.peers.get(identity)
        if isinstance(peer, SlaveRecord):
            self._lose_slave(peer, "said goodbye", NodeState.INACTIVE, logging.INFO)
        elif isinstance(peer, ApplicationRecord):
            self.applications.on_bye(peer)

    # -- forgetting what is no longer needed ----------------------------------------------------

    def _sweep(self) -> None:
        """Once a heartbeat: the master holds what is live, not what happened (module doc)."""
        expire_before = time.time() - self.result_ttl
        self.applications.sweep(expire_before)
        self.systems.sweep(expire_before)
        self._enforce_result_cap()
        forget_before = time.monotonic() - self.forget_after
        for slave_id, at in list(self._departed_at.items()):
            if at > forget_before and len(self._departed_at) <= DEPARTED_KEPT:
                break  # oldest first: the rest are younger
            del self._departed_at[slave_id]
            self.departed.pop(slave_id, None)
        self.gate.prune(self.peers, min(SESSION_GRACE, self.forget_after))
        if time.monotonic() >= self._next_maintenance:
            self.journal.maintain()
            self._collect_finished_systems()
            _trim_memory()
            self._next_maintenance = time.monotonic() + JOURNAL_MAINTENANCE

    def _collect_finished_systems(self) -> None:
        """A full garbage collection once task systems completed (at most every GC_INTERVAL).

        A finished system leaves reference cycles behind (its runner thread and handles, the
        class its application sent by value), holding the system and all it kept. A node
        collects its oldest generation rarely (``cli._tune_gc``), so without this they would
        pile up for a long while: 1,000 systems made the master's RSS creep by ~7 MiB. A full
        collection costs about 0.3 s with a million tasks queued, hence the interval.
        """
        if not self.systems.finished_since_gc or time.monotonic() < self._next_gc:
            return
        self.systems.finished_since_gc = 0
        gc.collect()
        self._next_gc = time.monotonic() + GC_INTERVAL

    def _enforce_result_cap(self) -> None:
        """Keep the results held for collection under ``result_cap`` bytes: oldest go first."""
        if not self.result_cap:
            return
        over = self.applications.retained_bytes() + self.systems.held - self.result_cap
        if over <= 0:
            return
        plain: list[tuple[float, int, Any, int]] = [
            (made, 0, (client, task_id), size)
            for made, client, task_id, size in self.applications.retained()
        ]
        systems: list[tuple[float, int, Any, int]] = [
            (at, 1, record, size) for at, record, size in self.systems.retained()
        ]
        dropped: dict[Any, list[str]] = defaultdict(list)
        count = 0
        for _, kind, what, size in sorted(plain + systems, key=lambda row: row[0]):
            if over <= 0:
                break
            over -= size
            count += 1
            if kind == 0:
                dropped[what[0]].append(what[1])
            else:
                self.systems.drop(what, "capped")
        for client, task_ids in dropped.items():
            self.applications.drop_unconfirmed(client, task_ids)
        log.warning(
            "dropped the %d oldest uncollected results to stay under --result-cap %d bytes",
            count,
            self.result_cap,
        )

    # -- heartbeats and status -----------------------------------------------------------------

    def _send_heartbeats(self) -> None:
        for identity in list(self.peers):
            self.send(identity, Kind.HEARTBEAT)

    def _say_goodbye(self) -> None:
        for identity in list(self.peers):
            self.send(identity, Kind.BYE)

    def kept(self) -> dict[str, int]:
        """How much the master holds of each kind of record: what should follow live work."""
        return {
            "applications": len(self.applications.records),
            "sessions": len(self.gate.sessions),
            "departed_slaves": len(self.departed),
            "systems": len(self.systems.records),
            "forgotten_systems": len(self.systems.forgotten),
            "uncollected_bytes": self.applications.retained_bytes() + self.systems.held,
            # Sessions whose message numbers the codec remembers against replays (it keeps at
            # most wire.MAX_SESSIONS, oldest forgotten first).
            "replay_sessions": len(getattr(self.codec, "_last_seen", ())),
        }

    def cluster_info(self) -> dict[str, int]:
        slaves = [s for s in self.scheduler.slaves.values() if s.state == NodeState.ACTIVE]
        return {"slaves": len(slaves), "workers": sum(s.workers for s in slaves)}

    def status(self) -> dict[str, Any]:
        """Plain data describing the cluster now; `taskswarm status` prints this."""
        live = [s.summary() for s in self.scheduler.slaves.values()]
        return {
            "master": {
                "address": self.advertised,
                "bind": self.address,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "uptime": round(time.time() - self.started, 3),
                "scheduler": self.scheduler_name,
                "strategy": self.strategy_name,
                "stealing": self.scheduler.stealing,
                "dashboard": self.dashboard_url,
                "encrypted": self.encrypted,
                "rejected": dict(self.codec.rejected),
                "kept": self.kept(),
                # Why new work is refused (the journal cannot be written), or null.
                "degraded": self.journal.fault,
                "journal_failed_writes": self.journal.failed_writes,
            },
            "slaves": live + list(self.departed.values()),
            "applications": self.applications.summaries(),
            "systems": self.systems.summaries(),
            "tasks": self.scheduler.counts(),
            "errors": self.latest_errors(ERRORS_IN_STATUS),
            "stats": self.stats.snapshot()
            + [row for slave in self.scheduler.slaves.values() for row in slave.stats]
            + [
                {"name": "messages_rejected", "labels": {"reason": reason}, "count": n, "sum": n}
                | {"avg": 1.0, "min": 1.0, "max": 1.0}
                for reason, n in sorted(self.codec.rejected.items())
            ],
        }


def _load_libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None  # glibc


_libc = _load_libc()
_malloc_trim = _libc.malloc_trim if _libc is not None else None
#: glibc's ``mallopt`` parameter, and the size from which blocks get their own mapping.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 * 1024


def _tune_malloc() -> None:
    """Big blocks (results of megabytes) in mappings of their own, returned when freed.

    glibc raises this threshold each time such a block is freed, after which big results are
    carved out of its heaps and the fragments they leave keep the master's RSS up long after
    they were delivered (a soak of 1,000 results of 4 MiB: +19 MiB with it moving, +11 fixed).
    Setting it fixes it at this size. A no-op elsewhere than glibc.
    """
    if _libc is not None:
        _libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _trim_memory() -> None:
    """Hand memory freed since the last call back to the system (glibc's ``malloc_trim``).

    The results passing through (megabytes each, pickled and framed in several threads) are
    freed once delivered, but glibc keeps freed blocks in its arenas, so the master's RSS would
    stay at its highest point for ever; trimming lets it follow live work. A no-op elsewhere.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)


def _crash_error(task: TaskRecord, how: str, attempts: int) -> bytes:
    """The outcome of a task that keeps killing its worker: built here, never unpickled here.
    When the last attempt ended with the slave replacing the worker for its memory, the error
    is the WorkerMemoryExceeded kind, and says how to allow more."""
    named = f"task {task.name or task.task_id!r} ({task.task_id})"
    if how.startswith(MEMORY_EXCEEDED):
        error: WorkerCrashed = WorkerMemoryExceeded(
            f"{named} lost its worker process {attempts} times; the last time the slave "
            f"replaced the worker for its memory: {how[len(MEMORY_EXCEEDED) :]}. Give the "
            "slaves a larger --worker-memory-limit (0 for none), or have the task use less",
            "WorkerMemoryExceeded",
        )
    else:
        error = WorkerCrashed(
            f"{named} killed its worker process {attempts} times; the last time: {how}",
            "WorkerCrashed",
        )
    return failure(error)


def _positive(value: Any) -> float:
    """A number a peer declared, or 0.0 when it said nothing usable."""
    return float(value) if isinstance(value, (int, float)) and value > 0 else 0.0


#: What a measure a node reports must hold (anything else is dropped, not trusted).
_MEASURE_FIELDS = ("count", "sum", "avg", "min", "max")


def _measures(rows: Any, slave_id: str) -> list[dict[str, Any]]:
    """A slave's reported measures, labelled with the slave; malformed rows are left out."""
    if not isinstance(rows, list):
        return []
    kept = []
    for row in rows[:64]:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        values = [row.get(field) for field in _MEASURE_FIELDS]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        given = row.get("labels")
        labels = {str(k): str(v) for k, v in (given if isinstance(given, dict) else {}).items()}
        labels["slave"] = slave_id
        summary = dict(zip(_MEASURE_FIELDS, values, strict=True))
        kept.append({"name": row["name"], "labels": labels, **summary})
    return kept
