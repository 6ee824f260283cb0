"""The slave node: registers with the master, runs the tasks it is sent, returns their results.

Data flow (one thread; ZeroMQ socket and worker pipes in one poller)::

    master --TASKS--> dealer --> task manager (worker processes)
    worker pipe --> task manager results queue --> outbox --> RESULTS (batched) --> master

The slave never unpickles a task: payloads go to the workers as they came, each with the digest
its signed header gave, which the worker checks right before it unpickles the task (a mismatch:
the task fails unrun with ``BadDigest``, counted here as ``bad-digest``). It takes messages
only from the master's session, the one the WELCOME answering its REGISTER came from (from
another session it heeds REREGISTER alone, a restarted master's first word, by registering
again); another session's are dropped and counted (``not-from-master``), even signed with the
cluster key.

How many tasks it asks to hold, and when their outcomes go back (in batches while tasks are
short, at once when its workers would run short), is its outbox's to say (:mod:`.outbox`): the
loop feeds it, and every message telling the master how much more to send carries its window.

Until the master has answered (it may start later, or restart), the slave keeps re-sending
REGISTER each heartbeat, and says so: that it is waiting for the master at its address (and
why, when the host's name does not resolve), again every ``WAIT_LOG_INTERVAL`` s, and when it
gets through.

Slightly over 400 lines: what is left is one concept, the slave's link to the master (its socket
and loop, registering, waiting and reconnecting, the handlers of the master's messages); split
further, the handlers would need the loop's socket and session handed back to them.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

import zmq

from ..errors import WireError
from ..ops.config import SlaveConfig
from ..protocol import sharing
from ..protocol.codec import ENVELOPE, Codec, Kind, Message, Notice
from ..protocol.dataplane import DataServer, FetchFailed, Store, data_host, fetch
from ..protocol.keys import ClusterKeys, as_keys
from ..protocol.lifecycle import NodeLifecycle
from ..protocol.messages import (
    Bye,
    Cancel,
    Drain,
    Drop,
    Header,
    Heartbeat,
    Register,
    Released,
    Resize,
    Steal,
    Tasks,
    Welcome,
    parse_resources,
)
from ..protocol.transport import (
    MAX_MESSAGE_BYTES,
    connect_dealer,
    receive_batch,
    try_send,
    unresolvable,
)
from ..scheduling import load_plugin
from ..scheduling.records import format_resources
from ..stats import Stats
from ..task import Status
from .contracts import TaskManagerContract, WorkItem
from .outbox import (  # noqa: F401 - defined here first: where tests and tools find them
    BATCH_SHARE,
    MESSAGE_TASKS,
    PREFETCH,
    QUEUE_SECONDS,
    RESULTS_HOLD,
    STARTED_HOLD,
    Outbox,
)
from .shipping import Shelf
from .usage import ProcessTreeUsage

__all__ = ["Slave"]

log = logging.getLogger(__name__)

#: Master heartbeats a slave may miss before it takes the master for lost and reconnects.
MASTER_BEATS = 5
#: Seconds between two "still waiting for the master" lines.
WAIT_LOG_INTERVAL = 30.0


class Slave(NodeLifecycle):
    @classmethod
    def from_config(
        cls,
        config: SlaveConfig,
        key: bytes | ClusterKeys,
        before_connect: Callable[[], object] | None = None,
    ) -> Slave:
        """The slave ``taskswarm slave`` runs, from its settings (:mod:`taskswarm.ops.config`)."""
        from ..engines.managers import manager_for

        manager = manager_for(
            config.manager, config.workers, config.engine, config.worker_memory_limit
        )
        return cls(
            config.master_address,
            key,
            workers=config.workers,
            manager=manager,
            heartbeat_interval=config.heartbeat,
            grace=config.grace,
            max_message_bytes=config.max_message_mib * 1024 * 1024,
            resources=dict(config.resources) if config.resources else None,
            before_connect=before_connect,
            shared_memory=config.shared_memory,
        )

    def __init__(
        self,
        master: str,
        key: bytes | ClusterKeys,
        *,
        workers: int | None = None,
        manager: str | TaskManagerContract = "process-pool",
        heartbeat_interval: float = 1.0,
        master_timeout: float = 5.0,
        grace: float = 2.0,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        resources: dict[str, float] | None = None,
        before_connect: Callable[[], object] | None = None,
        shared_memory: object = "off",
    ) -> None:
        """``before_connect`` runs once the task manager knows its slave (its workers may begin
        to start) and before the socket connects: a LocalCluster's slave waits there for its
        master to listen. ``shared_memory``: results of this size or more go back to their
        applications through shared memory (``--shared-memory``; None or "off": never)."""
        super().__init__()
        keys = self.keys = as_keys(key)
        self.shared_prefix = sharing.cluster_prefix(keys.hmac)
        # Set before the task manager starts its workers: they are handed it.
        sharing.configure(sharing.Sharing.of(keys.hmac, shared_memory))
        #: What this slave offers tasks that declare needs (``Task.resources``), e.g. GPUs.
        self.resources = parse_resources(resources)
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.master_address = master
        self.codec = Codec(keys.hmac, max_bytes=max_message_bytes)
        self.heartbeat_interval = heartbeat_interval
        self.master_timeout = self._master_timeout = master_timeout
        self.grace = grace
        #: What this slave times (sends, tasks' time here), reported to the master each heartbeat.
        self.stats = Stats()
        # A name, or a task manager built by the caller (one that needs more than ``workers``,
        # such as an engine's address). Either way, only its contract is used from here on.
        self.manager: TaskManagerContract = (
            load_plugin("taskswarm.managers", manager)(workers)
            if isinstance(manager, str)
            else manager
        )
        #: Big results of plain tasks, kept here until the master says DROP (the data plane).
        self.store = Store()
        #: CPU and memory of this slave and its workers, sent with each heartbeat.
        self.usage = ProcessTreeUsage()
        #: What this slave asks the master to send, and its outcomes on their way back.
        self.outbox = Outbox(
            self.manager,
            self._send,
            self.stats,
            self.codec.rejected,
            max_bytes=max_message_bytes,
            store=self.store,
        )
        #: Tasks waiting for inputs fetched from other slaves (they count as held).
        self.fetching: set[str] = set()
        self.manager.init(self.node_id, master)
        if before_connect is not None:
            before_connect()
        self._context = zmq.Context()
        self.master_socket = connect_dealer(
            self._context, master, self.node_id.encode(), keys.curve_public
        )
        #: Where other nodes fetch the results kept here (``Register.data``).
        self.data = DataServer(self._context, data_host(master), keys, self.store)
        self.registered = False
        self.master_session: str | None = None  # the master's session, to address messages
        #: Why the master refused this slave (wrong key or version), if it did.
        self.failure: str | None = None
        #: Called once, when the master first welcomed this slave and its workers are started
        #: (LocalCluster's slaves tell the cluster so: it waits on that, not on polls).
        self.on_ready: Callable[[], object] | None = None
        #: When the task manager's start returned (monotonic): its workers exist from then.
        self.workers_started: float | None = None
        #: Code applications shipped, unpacked here (removed when the slave closes).
        self.shelf = Shelf()
        self._last_from_master = time.monotonic()
        #: Since when no master has answered, and when to say so next (None: registered).
        self._waiting_since: float | None = time.monotonic()
        self._next_wait_note = 0.0
        self._handlers = {
            Kind.WELCOME: self.on_welcome,
            Kind.TASKS: self.on_tasks,
            Kind.HEARTBEAT: self.on_heartbeat,
            Kind.REREGISTER: self.on_reregister,
            Kind.RESIZE: self.on_resize,
            Kind.BYE: self.on_master_bye,
            Kind.SHUTDOWN: self.on_shutdown,
            Kind.CANCEL: self.on_cancel,
            Kind.STEAL: self.on_steal,
            Kind.SHIP: self.on_ship,
            Kind.DROP: self.on_drop,
        }

    # -- lifecycle -----------------------------------------------------------------------------

    def serve(self) -> None:
        """Run until ``stop()``, then finish in-flight tasks (up to ``grace`` s) and leave."""
        # REGISTER first: the master welcomes this slave while its workers start.
        self._heartbeat_or_register()
        next_beat = time.monotonic() + self.heartbeat_interval
        self.manager.start()
        self.workers_started = time.monotonic()
        log.info(
            "slave %s with %d workers%s, master %s",
            self.node_id,
            self.manager.get_num_workers(),
            f" and resources {format_resources(self.resources)}" if self.resources else "",
            self.master_address,
        )
        poller, generation = self._make_poller(), self.manager.generation
        try:
            while not self._stopping:
                if generation != self.manager.generation:
                    poller, generation = self._make_poller(), self.manager.generation
                wake_at = min(next_beat, self.manager.next_deadline() or next_beat)
                due = self.outbox.next_deadline()
                if due is not None:
                    wake_at = min(wake_at, due)
                events = dict(poller.poll(_milliseconds(wake_at - time.monotonic())))
                if self.master_socket in events:
                    self._receive_from_master()
                if self.data.socket in events:
                    self.data.serve()
                self._collect_results(events)
                self.manager.check_timeouts()
                if self.mailbox.fileno() in events:
                    for posted in self.mailbox.drain():
                        posted()  # inputs fetched from other slaves (``_fetch``)
                self.outbox.send_results()
                if time.monotonic() >= next_beat:
                    self.outbox.send_results(everything=True)  # the heartbeat lists what it holds
                    self._heartbeat_or_register()
                    self._check_parent()
                    next_beat = time.monotonic() + self.heartbeat_interval
            self._drain()
        finally:
            self.close()

    def close(self) -> None:
        if not self._first_close():
            return
        self.manager.stop()
        self.shelf.close()  # after the workers: none of them imports from it any more
        self.data.close()
        self.master_socket.close(linger=0)
        self._context.term()
        self.mailbox.close()
        self.sweep_orphaned()  # after the workers: none of them makes a segment any more
        log.info("slave %s stopped", self.node_id)

    def _drain(self) -> None:
        """Finish what is running for a while, hand the rest back, say goodbye."""
        self._send(Drain())  # no new tasks for us
        handed_back = self.manager.take_queued()
        deadline = time.monotonic() + self.grace
        while self.manager.busy and time.monotonic() < deadline:
            poller = self._make_poller()
            events = dict(poller.poll(_milliseconds(deadline - time.monotonic())))
            self._collect_results(events)
        self.outbox.send_results(everything=True)
        self._send(Bye(handed_back=len(handed_back)))
        # Let the BYE and the last results leave before the socket closes.
        self.master_socket.setsockopt(zmq.LINGER, 500)

    # -- messages from the master ---------------------------------------------------------------

    def _make_poller(self) -> zmq.Poller:
        poller = zmq.Poller()
        poller.register(self.master_socket, zmq.POLLIN)
        poller.register(self.data.socket, zmq.POLLIN)
        poller.register(self.mailbox.fileno(), zmq.POLLIN)
        for fd in self.manager.fds():
            poller.register(fd, zmq.POLLIN)
        return poller

    def _receive_from_master(self) -> None:
        for frames in receive_batch(self.master_socket):
            try:
                message = self.codec.decode(frames)
            except WireError as exc:
                refusal = Notice.read(frames)
                if refusal is not None and not self.registered:
                    # Wrong key or version: waiting would only hang. Say so and stop.
                    log.error(
                        "the master at %s refused this slave: %s", self.master_address, refusal
                    )
                    self.failure = refusal
                    self.stop()
                else:
                    log.debug("dropped a message: %s", exc)
                continue
            if message.sender != self.master_session:
                if message.kind == Kind.WELCOME and not self.registered:
                    self.master_session = message.sender  # the answer to our REGISTER
                elif message.kind != Kind.REREGISTER:
                    # Signed with the cluster key, but not by the master that welcomed this
                    # slave: a slave takes orders from that session only (and addresses it).
                    # (REREGISTER, a restarted master's first word, only makes it register.)
                    self.codec.rejected["not-from-master"] += 1
                    log.debug("dropped a %s message from another session", message.kind)
                    continue
            self._last_from_master = time.monotonic()
            handler = self._handlers.get(message.kind)
            if handler is None:
                continue
            try:
                handler(message)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                self.codec.rejected["bad-fields"] += 1
                log.warning("dropped a %s message with bad fields: %r", message.kind, exc)

    def on_welcome(self, msg: Message) -> None:
        if not self.registered:
            waited = time.monotonic() - (self._waiting_since or time.monotonic())
            log.info(
                "connected to the master at %s%s",
                self.master_address,
                f" after waiting {waited:.1f}s" if waited >= self.heartbeat_interval else "",
            )
        self.registered = True
        self._waiting_since, self._next_wait_note = None, 0.0
        welcome = msg.read(Welcome)
        if welcome.max_bytes is not None and welcome.max_bytes > ENVELOPE:
            self.outbox.master_max_bytes = welcome.max_bytes
        if welcome.heartbeat is not None and welcome.heartbeat > 0:
            # Silent for five of the master's heartbeats (and never under the given timeout).
            self.master_timeout = max(self._master_timeout, MASTER_BEATS * welcome.heartbeat)
        self._send(Heartbeat(workers=self.manager.get_num_workers()))
        if self.on_ready is not None:
            ready, self.on_ready = self.on_ready, None
            ready()

    def on_tasks(self, msg: Message) -> None:
        # As many payloads as tasks, then one per input: the codec checked.
        body = msg.read(Tasks)
        tasks, payloads = body.tasks, msg.payloads
        self.outbox.arrived([task.task_id for task in tasks])
        keep = [task.task_id for task in tasks if task.keep]
        if keep:
            self.outbox.keep.update(keep)
        if not body.inputs:
            self.manager.push_tasks(
                [
                    WorkItem(task.task_id, payload, task.timeout)
                    for task, payload in zip(tasks, payloads, strict=True)
                ]
            )
            return
        given: dict[str, Any] = {}
        remote: dict[str, str] = {}  # input -> the data socket of the slave that keeps it
        at = body.at or [""] * len(body.inputs)
        for dep, payload, where in zip(body.inputs, payloads[len(tasks) :], at, strict=True):
            if not where:
                given[dep] = payload
            elif where == "+":  # scattered data: sent here once, for every task that takes it
                given[dep] = payload
                self.store.put(dep, payload)
            elif where == self.data.address and dep in self.store:
                given[dep] = self.store.get(dep)
            else:
                remote[dep] = where
        items, waiting = [], []
        for task, payload in zip(tasks, payloads, strict=False):
            item = WorkItem(task.task_id, payload, task.timeout)
            if task.deps and any(dep in remote for dep in task.deps):
                waiting.append((item, task.deps))
            else:
                if task.deps:
                    item.inputs = [(dep, given[dep]) for dep in task.deps]
                items.append(item)
        if items:
            self.manager.push_tasks(items)
        if waiting:
            self._fetch(waiting, given, remote)

    def _fetch(
        self,
        waiting: list[tuple[WorkItem, list[str]]],
        given: dict[str, Any],
        remote: dict[str, str],
    ) -> None:
        """Fetch inputs kept on other slaves, on a thread of their own, then run the tasks
        that take them (on the loop thread again, through the mailbox). A task whose input
        cannot be had goes back to the master as ``Status.LOST_INPUT``: the master makes the
        input again from its lineage and sends the task once it has."""
        self.fetching.update(item.task_id for item, _ in waiting)
        by_place: dict[str, list[str]] = defaultdict(list)
        for dep, where in remote.items():
            by_place[where].append(dep)

        def run() -> None:
            fetched: dict[str, Any] = {}
            failed: dict[str, str] = {}
            start = time.monotonic()
            for where, deps in by_place.items():
                try:
                    fetched.update(fetch(where, deps, self.keys))
                except (FetchFailed, zmq.ZMQError) as exc:
                    failed.update(dict.fromkeys(deps, str(exc)))
            took = time.monotonic() - start
            self.mailbox.post(lambda: self._fetched(waiting, {**given, **fetched}, failed, took))

        threading.Thread(target=run, name="fetch-inputs", daemon=True).start()

    def _fetched(
        self,
        waiting: list[tuple[WorkItem, list[str]]],
        inputs: dict[str, Any],
        failed: dict[str, str],
        took: float,
    ) -> None:
        self.stats.add("slave_fetch_seconds", took)  # here: the measures are the loop's
        items = []
        for item, deps in waiting:
            if item.task_id not in self.fetching:
                continue  # cancelled meanwhile
            self.fetching.discard(item.task_id)
            lost = [dep for dep in deps if dep in failed]
            if lost:
                self.outbox.add(
                    (item.task_id, Status.LOST_INPUT, b"", f"{lost[0]} {failed[lost[0]]}")
                )
                continue
            item.inputs = [(dep, inputs[dep]) for dep in deps]
            items.append(item)
        if items:
            self.manager.push_tasks(items)

    def on_drop(self, msg: Message) -> None:
        """Kept results no one needs any more."""
        self.store.drop(msg.read(Drop).data_ids)

    def on_cancel(self, msg: Message) -> None:
        cancel = msg.read(Cancel)
        task_ids = set(cancel.tasks or ())
        for task_id in task_ids & self.fetching:  # never run: stopped as a queued one is
            self.fetching.discard(task_id)
            self.outbox.add((task_id, Status.CANCELLED, b""))
        if cancel.soft:
            self.manager.cancel_unstarted(task_ids)
        else:
            self.manager.cancel(task_ids)

    def on_steal(self, msg: Message) -> None:
        """Give back up to ``count`` tasks no worker has started, for idle slaves elsewhere."""
        items = self.manager.release(msg.read(Steal).count)
        tasks = [item.task_id for item in items]
        self.outbox.released(tasks)
        self._send(Released(tasks=tasks, **self.outbox.window(finished=len(items))))

    def on_ship(self, msg: Message) -> None:
        """Code an application shipped: for every task that comes after it."""
        self.shelf.receive(msg, self.manager, self.codec.rejected)

    def on_heartbeat(self, msg: Message) -> None:
        pass  # _last_from_master is refreshed for every message

    def on_reregister(self, msg: Message) -> None:
        if not self.registered:
            # A REGISTER is already on its way (each heartbeat repeats it). After a network
            # outage the master answers every stale heartbeat with REREGISTER: registering
            # once per answer would make it drop and re-add this slave as many times.
            return
        self.registered = False
        self._register()

    def on_resize(self, msg: Message) -> None:
        self.manager.update_pool(msg.read(Resize).workers)
        self._send(Heartbeat(workers=self.manager.get_num_workers(), **self.outbox.window()))

    def on_master_bye(self, msg: Message) -> None:
        log.warning("master %s is going away; waiting for it to come back", self.master_address)
        self.registered = False

    def on_shutdown(self, msg: Message) -> None:
        self.stop()

    # -- sending ---------------------------------------------------------------------------------

    def _send(self, record: Header, payloads: Sequence[Any] = ()) -> bool:
        kind = record.kind
        to = None if kind in Kind.UNADDRESSED else self.master_session
        return try_send(self.master_socket, self.codec.encode(kind, record, payloads, to=to))

    def _register(self) -> None:
        held = self.manager.held()
        self.outbox.registering(len(held) + len(self.fetching))
        self._send(
            Register(
                node_id=self.node_id,
                host=socket.gethostname(),
                pid=os.getpid(),
                workers=self.manager.get_num_workers(),
                resources=self.resources,
                heartbeat=self.heartbeat_interval,
                **self.outbox.window(),
                # What it still holds from before (a master that restarted can keep it here).
                held=[item.task_id for item in held] + list(self.fetching),
                data=self.data.address,
            )
        )

    def _heartbeat_or_register(self) -> None:
        silent = time.monotonic() - self._last_from_master
        if silent > self.master_timeout:
            if self.registered:
                log.warning("no word from the master for %.1fs; registering again", silent)
                self.registered = False
            self._reconnect()
        if self.registered:
            cpu, rss = self.usage.measure() or (None, None)
            self._send(
                Heartbeat(
                    workers=self.manager.get_num_workers(),
                    **self.outbox.window(),
                    rejected=sum(self.codec.rejected.values())
                    + sum(self.data.codec.rejected.values()),
                    stats=self.stats.snapshot(),
                    held=[item.task_id for item in self.manager.held()] + list(self.fetching),
                    kept=self.store.bytes,
                    cpu=cpu,
                    rss=rss,
                )
            )
        else:
            self._note_waiting()
            self._register()

    def _note_waiting(self) -> None:
        """Say that the master has not answered: once a heartbeat has passed without it, then
        every ``WAIT_LOG_INTERVAL`` s. A host whose name does not resolve is named as such,
        since ZeroMQ itself retries it silently, exactly like a master not started yet."""
        now = time.monotonic()
        if self._waiting_since is None:
            self._waiting_since = now
        waited = now - self._waiting_since
        if waited < self.heartbeat_interval or now < self._next_wait_note:
            return
        first = self._next_wait_note == 0.0
        self._next_wait_note = now + WAIT_LOG_INTERVAL
        why = unresolvable(self.master_address)
        if why is not None:
            log.warning(
                "waiting for the master at %s: %s; trying again every %gs",
                self.master_address,
                why,
                self.heartbeat_interval,
            )
        elif first:
            log.info(
                "waiting for the master at %s: no answer yet; trying again every %gs",
                self.master_address,
                self.heartbeat_interval,
            )
        else:
            log.info(
                "still waiting for the master at %s (%.0fs so far)", self.master_address, waited
            )

    def _reconnect(self) -> None:
        """Replace the connection to a master that has been silent for ``master_timeout``.

        After a network outage the old connection waits for TCP's next retransmission, whose
        backoff doubles up to two minutes, with every message since queued behind it: a slave
        cut off for 30 s would rejoin some 25 s after the network came back, and then replay a
        REGISTER per heartbeat. A new connection gets through within ``master_timeout`` of the
        network's return (the master hands this slave's identity over to it). What was queued
        on the old one is dropped: the REGISTER that follows tells the master which tasks this
        slave still holds, and the master queues the rest again.
        """
        self._last_from_master = time.monotonic()  # the next try, if needed, is as far off
        self.master_socket.disconnect(self.master_address)
        self.master_socket.connect(self.master_address)

    def _collect_results(self, events: dict[int, int]) -> None:
        for fd in self.manager.fds():
            if fd in events:
                self.manager.collect(fd)


def _milliseconds(seconds: float) -> int:
    """A poll timeout: never negative, rounded up (rounded down, a wait shorter than a
    millisecond would poll without waiting until its moment came)."""
    return max(0, math.ceil(seconds * 1000))
