"""The master node: keeps the global task queue, runs task systems, routes results.

Data flow::

    application --SUBMIT--> router --> scheduler queue --dispatch--> TASKS --> slave
    application --SYSTEM--> router --> SystemRunner thread --push--> scheduler queue
    slave --RESULTS--> router --> scheduler.result_arrived --+--> RESULTS --> application
                                                             +--> SystemRunner inbox (its tasks)
    SystemRunner --done--> mailbox --> SYSTEM_DONE --> application

One thread owns the socket and every record (the loop below). Plain tasks and their results stay
opaque bytes here; only task systems, in their runner threads, are ever unpickled on the master.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from ..scheduling import load_plugin
from ..scheduling.records import NodeState, SlaveRecord, TaskRecord
from ..system import SystemRunner
from ..wire import Codec, Kind, Message
from .mailbox import Mailbox
from .transport import bind_router, receive_batch, try_send

__all__ = ["Master"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ClientRecord:
    """An application node: where its results go, and what could not be delivered yet."""

    client_id: str
    identity: bytes
    last_seen: float = field(default_factory=time.monotonic)
    outbox: list[tuple[str, bool, bytes]] = field(default_factory=list)


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


class Master:
    """Serve one cluster on ``bind`` until ``stop()``; see the module docstring for the flow."""

    def __init__(
        self,
        bind: str,
        key: bytes,
        *,
        scheduler: str = "push",
        strategy: str = "load",
        prefetch: int = 2,
        heartbeat_interval: float = 1.0,
        slave_timeout: float = 5.0,
    ) -> None:
        self.codec = Codec(key)
        self.heartbeat_interval = heartbeat_interval
        self.slave_timeout = slave_timeout
        strategy_obj = load_plugin("taskswarm.strategies", strategy)()
        self.scheduler = load_plugin("taskswarm.schedulers", scheduler)(strategy_obj, prefetch)
        self.scheduler.setup(self)
        self.scheduler_name, self.strategy_name = scheduler, strategy
        self._context = zmq.Context()
        self.router, self.address = bind_router(self._context, bind)
        self.mailbox = Mailbox()
        self._poller = zmq.Poller()
        self._poller.register(self.router, zmq.POLLIN)
        self._poller.register(self.mailbox.fileno(), zmq.POLLIN)
        self.peers: dict[bytes, SlaveRecord | ClientRecord] = {}
        self.clients: dict[str, ClientRecord] = {}
        self.systems: dict[str, SystemRecord] = {}
        self.departed: dict[str, dict] = {}  # lost or gone slaves, for status
        self._stopping = False
        #: Stop when this process is no longer our parent (set for LocalCluster's nodes).
        self.parent_pid: int | None = None
        self._closed = False
        self.started = time.time()
        self._handlers = {
            Kind.REGISTER: self.on_slave_register,
            Kind.RESULTS: self.on_slave_results,
            Kind.HEARTBEAT: self.on_heartbeat,
            Kind.HELLO: self.on_client_hello,
            Kind.SUBMIT: self.on_client_submit,
            Kind.SYSTEM: self.on_client_system,
            Kind.SYSTEM_QUERY: self.on_system_query,
            Kind.STATUS: self.on_status,
            Kind.RESIZE: self.on_resize,
            Kind.BYE: self.on_bye,
        }
        log.info(
            "master listening on %s (scheduler %s, strategy %s)", self.address, scheduler, strategy
        )

    # -- lifecycle -----------------------------------------------------------------------------

    def serve(self, ready_file: str | None = None) -> None:
        """Run the loop until ``stop()``: a short list of named steps per turn."""
        if ready_file:
            Path(ready_file).write_text(self.address)
        next_beat = time.monotonic()
        try:
            while not self._stopping:
                wait = max(0.0, next_beat - time.monotonic())
                events = dict(self._poller.poll(wait * 1000))
                if self.router in events:
                    self._receive_from_nodes()
                if self.mailbox.fileno() in events:
                    self._process_mailbox()
                if time.monotonic() >= next_beat:
                    self._send_heartbeats()
                    self._check_slaves()
                    self._check_parent()
                    next_beat = time.monotonic() + self.heartbeat_interval
                self.scheduler.dispatch()
                self._send_task_batches()
                self._send_client_results()
        finally:
            self._say_goodbye()
            self.close()

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
        for record in self.systems.values():
            if record.runner is not None:
                record.runner.stop()
        self.router.close(linger=0)
        self._context.term()
        self.mailbox.close()
        log.info("master stopped")

    # -- receiving -------------------------------------------------------------------------------

    def _receive_from_nodes(self) -> None:
        for frames in receive_batch(self.router):
            identity = frames[0].bytes
            try:
                message = self.codec.decode(frames[1:])
            except Exception as exc:
                log.warning("dropped a message from %r: %s", identity[:16], exc)
                continue
            handler = self._handlers.get(message.kind)
            if handler is None:
                log.warning("unexpected %s message from %r", message.kind, identity[:16])
                continue
            try:
                handler(identity, message)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                # Signed but ill-formed: a bug or a version skew in a peer, never a crash here.
                self.codec.rejected["bad-fields"] += 1
                log.warning("dropped a %s message with bad fields: %r", message.kind, exc)

    def _send(self, identity: bytes, kind: str, header: dict | None = None, payloads=()) -> bool:
        return try_send(self.router, [identity, *self.codec.encode(kind, header, payloads)])

    def _slave(self, identity: bytes) -> SlaveRecord | None:
        peer = self.peers.get(identity)
        return peer if isinstance(peer, SlaveRecord) else None

    # -- slaves ----------------------------------------------------------------------------------

    def on_slave_register(self, identity: bytes, msg: Message) -> None:
        old = self._slave(identity)
        if old is not None:
            self._lose_slave(old, "re-registered")
        slave = SlaveRecord(
            slave_id=str(msg["node_id"]),
            identity=identity,
            host=str(msg.get("host", "?")),
            pid=int(msg.get("pid", 0)),
            workers=int(msg.get("workers", 0)),
            credit=int(msg.get("credit", 0)),
        )
        self.departed.pop(slave.slave_id, None)
        self.peers[identity] = slave
        self.scheduler.add_slave(slave)
        self._send(identity, Kind.WELCOME, {"node_id": slave.slave_id})
        log.info(
            "slave %s registered from %s with %d workers", slave.slave_id, slave.host, slave.workers
        )

    def on_heartbeat(self, identity: bytes, msg: Message) -> None:
        peer = self.peers.get(identity)
        if peer is None:
            self._send(identity, Kind.REREGISTER)
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
        slave.rating = self.scheduler.strategy.rate(slave)

    def on_slave_results(self, identity: bytes, msg: Message) -> None:
        slave = self._slave(identity)
        if slave is not None:
            slave.last_seen = time.monotonic()
            slave.credit += int(msg.get("credit", 0))
        else:
            self._send(identity, Kind.REREGISTER)
        slave_id = slave.slave_id if slave else None
        per_system: dict[str, list] = defaultdict(list)
        for (task_id, ok), data in zip(msg["results"], msg.payloads, strict=False):
            task = self.scheduler.result_arrived(slave_id, task_id)
            if task is None:
                continue
            self.scheduler.task_finished(task, None, None if ok else True)
            if task.system_id is not None:
                per_system[task.system_id].append((task_id, bool(ok), data))
            elif (client := self.clients.get(task.client_id)) is not None:
                client.outbox.append((task_id, bool(ok), data))
        for system_id, batch in per_system.items():
            record = self.systems.get(system_id)
            if record is not None and record.runner is not None:
                record.runner.inbox.put(batch)

    def _check_slaves(self) -> None:
        now = time.monotonic()
        for slave in list(self.scheduler.slaves.values()):
            silent = now - slave.last_seen
            if silent > self.slave_timeout:
                self._lose_slave(slave, f"silent for {silent:.1f}s")
            elif silent > 2.5 * self.heartbeat_interval and slave.state == NodeState.ACTIVE:
                slave.state = NodeState.INACTIVE
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
        self.departed[slave.slave_id] = slave.summary()
        log.log(
            level, "slave %s %s (%s); %d tasks requeued", slave.slave_id, state, why, len(requeued)
        )

    def _send_task_batches(self) -> None:
        for slave, tasks in self.scheduler.take_outboxes():
            ids = [t.task_id for t in tasks]
            if not self._send(
                slave.identity, Kind.TASKS, {"tasks": ids}, [t.payload for t in tasks]
            ):
                self._lose_slave(slave, "unreachable")

    # -- applications ----------------------------------------------------------------------------

    def _client(self, identity: bytes) -> ClientRecord | None:
        peer = self.peers.get(identity)
        if isinstance(peer, ClientRecord):
            peer.last_seen = time.monotonic()
            return peer
        self._send(identity, Kind.REREGISTER)
        return None

    def on_client_hello(self, identity: bytes, msg: Message) -> None:
        client_id = str(msg["client_id"])
        client = self.clients.get(client_id)
        if client is None:
            client = self.clients[client_id] = ClientRecord(client_id, identity)
            log.info("application %s connected", client_id)
        elif client.identity != identity:
            self.peers.pop(client.identity, None)
            client.identity = identity
        self.peers[identity] = client
        self._send(identity, Kind.WELCOME, {"node_id": client_id})

    def on_client_submit(self, identity: bytes, msg: Message) -> None:
        client = self._client(identity)
        if client is None:
            return
        ids = msg["tasks"]
        if len(ids) != len(msg.payloads):
            self._send(identity, Kind.REJECT, {"rid": msg.get("rid"), "reason": "malformed batch"})
            return
        self.scheduler.push_tasks(
            TaskRecord(str(task_id), payload, client.client_id)
            for task_id, payload in zip(ids, msg.payloads, strict=False)
        )
        self._send(identity, Kind.ACK, {"rid": msg.get("rid"), "n": len(ids)})

    def on_client_system(self, identity: bytes, msg: Message) -> None:
        client = self._client(identity)
        if client is None:
            return
        system_id = str(msg["system_id"])
        if system_id in self.systems:
            self._send(
                identity,
                Kind.REJECT,
                {"rid": msg.get("rid"), "reason": f"task system {system_id} already exists"},
            )
            return
        runner = SystemRunner(
            system_id, client.client_id, msg.payloads[0], self.mailbox.post, self.cluster_info
        )
        self.systems[system_id] = SystemRecord(system_id, client.client_id, runner)
        self.systems[system_id].waiters.add(identity)
        self.scheduler.start_system(system_id)
        runner.start()
        self._send(identity, Kind.ACK, {"rid": msg.get("rid"), "n": 1})
        log.info("task system %s started for application %s", system_id, client.client_id)

    def on_system_query(self, identity: bytes, msg: Message) -> None:
        system_id = str(msg["system_id"])
        record = self.systems.get(system_id)
        if record is None:
            self._send(identity, Kind.SYSTEM_DONE, {"system_id": system_id, "unknown": True})
        elif record.outcome is not None:
            self._send_outcome(identity, record)
        else:
            record.waiters.add(identity)

    def on_status(self, identity: bytes, msg: Message) -> None:
        self._send(identity, Kind.STATUS_REPLY, {"rid": msg.get("rid"), "status": self.status()})

    def on_resize(self, identity: bytes, msg: Message) -> None:
        slave = self.scheduler.slaves.get(str(msg["slave_id"]))
        ok = slave is not None and self._send(
            slave.identity, Kind.RESIZE, {"workers": int(msg["workers"])}
        )
        reply = Kind.ACK if ok else Kind.REJECT
        self._send(
            identity,
            reply,
            {"rid": msg.get("rid"), "n": 1, "reason": f"no slave {msg['slave_id']}"},
        )

    def on_bye(self, identity: bytes, msg: Message) -> None:
        peer = self.peers.get(identity)
        if isinstance(peer, SlaveRecord):
            self._lose_slave(peer, "said goodbye", NodeState.INACTIVE, logging.INFO)
        elif isinstance(peer, ClientRecord):
            self.peers.pop(identity, None)

    def _send_client_results(self) -> None:
        for client in self.clients.values():
            if not client.outbox:
                continue
            header = {"results": [[t, ok] for t, ok, _ in client.outbox]}
            if self._send(client.identity, Kind.RESULTS, header, [d for _, _, d in client.outbox]):
                client.outbox = []

    # -- task systems (messages from runner threads) -----------------------------------------

    def _process_mailbox(self) -> None:
        for item in self.mailbox.drain():
            kind, system_id, *rest = item
            record = self.systems.get(system_id)
            if record is None or record.outcome is not None:
                continue
            if kind == "push":
                self.scheduler.push_tasks(
                    TaskRecord(task_id, payload, record.client_id, system_id)
                    for task_id, payload in rest[0]
                )
            elif kind == "progress":
                record.done, record.total = rest
                self._send_to_owner(
                    record,
                    Kind.SYSTEM_PROGRESS,
                    {"system_id": system_id, "done": rest[0], "total": rest[1]},
                )
            elif kind == "done":
                self._complete_system(record, *rest)

    def _complete_system(self, record: SystemRecord, outcome: bytes, failed: bool) -> None:
        record.outcome, record.failed, record.runner = outcome, failed, None
        dropped = self.scheduler.drop_system(record.system_id)
        elapsed = time.monotonic() - record.started
        log.info(
            "task system %s %s in %.2fs (%d tasks, %d leftovers dropped)",
            record.system_id,
            "failed" if failed else "completed",
            elapsed,
            record.total,
            dropped,
        )
        for identity in record.waiters:
            self._send_outcome(identity, record)
        record.waiters.clear()

    def _send_outcome(self, identity: bytes, record: SystemRecord) -> None:
        self._send(
            identity,
            Kind.SYSTEM_DONE,
            {"system_id": record.system_id, "failed": record.failed},
            [record.outcome],
        )

    def _send_to_owner(self, record: SystemRecord, kind: str, header: dict) -> None:
        client = self.clients.get(record.client_id)
        if client is not None:
            self._send(client.identity, kind, header)

    # -- heartbeats and status -----------------------------------------------------------------

    def _send_heartbeats(self) -> None:
        for identity in list(self.peers):
            self._send(identity, Kind.HEARTBEAT)

    def _say_goodbye(self) -> None:
        for identity in list(self.peers):
            self._send(identity, Kind.BYE)

    def cluster_info(self) -> dict[str, int]:
        slaves = [s for s in self.scheduler.slaves.values() if s.state == NodeState.ACTIVE]
        return {"slaves": len(slaves), "workers": sum(s.workers for s in slaves)}

    def status(self) -> dict[str, Any]:
        """Plain data describing the cluster now; `taskswarm status` prints this."""
        live = [s.summary() for s in self.scheduler.slaves.values()]
        systems = [
            {
                "id": r.system_id,
                "client": r.client_id,
                "done": r.done,
                "total": r.total,
                "state": "running" if r.outcome is None else ("failed" if r.failed else "complete"),
            }
            for r in self.systems.values()
        ]
        return {
            "master": {
                "address": self.address,
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "uptime": round(time.time() - self.started, 3),
                "scheduler": self.scheduler_name,
                "strategy": self.strategy_name,
                "rejected": dict(self.codec.rejected),
            },
            "slaves": live + list(self.departed.values()),
            "applications": len(self.clients),
            "systems": systems,
            "tasks": self.scheduler.counts(),
        }
