"""The master's table of application nodes: what they submit, and their results' way back.

A plain task's outcome is kept here until its application confirms receipt (RESULTS_ACK), and
sent again after a reconnect, so a result survives a lost message. It is journaled too, so it
survives a master restart, but not at once: most are confirmed within milliseconds, and writing
each one down only to delete it moments later was a third of a durable master's work. An outcome
still unconfirmed after ``JOURNAL_AFTER`` seconds is written; until then the task's own journal
row stands for it, so a master killed in between runs the task again rather than lose it. An
outcome of a task that ran for ``JOURNAL_AFTER`` or longer is written at once: running it again
would cost more than the write. Lives on the master's loop thread, like everything it owns.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..scheduling.records import TaskRecord
from ..wire import Kind, Message

if TYPE_CHECKING:
    from .master import Master

__all__ = ["ClientRecord", "ClientTable"]

log = logging.getLogger(__name__)

#: Seconds an outcome may wait for its application's confirmation before it is journaled.
JOURNAL_AFTER = 0.25


@dataclass(eq=False)
class ClientRecord:
    """An application node: where its results go, and which it has not confirmed yet."""

    client_id: str
    identity: bytes | None
    last_seen: float = field(default_factory=time.monotonic)
    outbox: list[tuple[str, bool, bytes]] = field(default_factory=list)
    unconfirmed: dict[str, tuple[bool, bytes]] = field(default_factory=dict)
    host: str = ""
    pid: int | None = None
    connected: bool = False  # said HELLO and not BYE
    submitted: int = 0  # plain tasks accepted from it
    done: int = 0  # ... whose outcome was a result
    failed: int = 0  # ... whose outcome was an error
    cancelled: int = 0  # ... cancelled before an outcome

    def summary(self) -> dict[str, Any]:
        """What `status` and the dashboard show of this application node."""
        settled = self.done + self.failed + self.cancelled
        return {
            "id": self.client_id,
            "kind": "application",
            "host": self.host,
            "pid": self.pid,
            "state": "connected" if self.connected else "gone",
            "in_flight": max(0, self.submitted - settled),
            "done": self.done,
            "failed": self.failed,
            "unconfirmed": len(self.unconfirmed),
            "last_heartbeat": round(time.monotonic() - self.last_seen, 3),  # seconds ago
        }


class ClientTable:
    def __init__(self, master: Master) -> None:
        self.master = master
        self.records: dict[str, ClientRecord] = {}
        #: Outcomes not journaled yet, oldest first: (when, client, task_id).
        self._unjournaled: deque[tuple[float, ClientRecord, str]] = deque()

    def restore(self, undelivered: dict[str, list[tuple[str, bool, bytes]]]) -> None:
        """Results journaled but never confirmed: they wait for their application's HELLO."""
        for client_id, outcomes in undelivered.items():
            client = self._record(client_id)
            client.unconfirmed = {t: (ok, data) for t, ok, data in outcomes}

    def _record(self, client_id: str) -> ClientRecord:
        client = self.records.get(client_id)
        if client is None:
            client = self.records[client_id] = ClientRecord(client_id, None)
        return client

    def known(self, identity: bytes) -> ClientRecord | None:
        """The application behind ``identity``; unknown ones are asked to say HELLO again."""
        peer = self.master.peers.get(identity)
        if isinstance(peer, ClientRecord):
            peer.last_seen = time.monotonic()
            return peer
        self.master.send(identity, Kind.REREGISTER)
        return None

    # -- handlers ----------------------------------------------------------------------------------

    def on_hello(self, identity: bytes, msg: Message) -> None:
        client_id = str(msg["client_id"])
        if client_id not in self.records:
            log.info("application %s connected", client_id)
        client = self._record(client_id)
        if client.identity not in (identity, None):
            self.master.peers.pop(client.identity, None)
        client.identity = identity
        client.connected = True
        client.host, client.pid = str(msg.get("host", "")), msg.get("pid")
        self.master.peers[identity] = client
        # Whatever it has not confirmed may have been lost on the way: send it again.
        client.outbox = [(t, ok, data) for t, (ok, data) in client.unconfirmed.items()]
        self.master.send(identity, Kind.WELCOME, {"node_id": client_id})

    def on_submit(self, identity: bytes, msg: Message) -> None:
        client = self.known(identity)
        if client is None:
            return
        tasks = [
            TaskRecord.from_meta(meta, payload, client.client_id)
            for meta, payload in zip(msg["tasks"], msg.payloads, strict=True)
        ]
        # A batch sent again after a reconnect: keep only what the master does not know yet.
        known = self.master.scheduler.tasks
        fresh = [t for t in tasks if t.task_id not in known and t.task_id not in client.unconfirmed]
        client.submitted += len(fresh)
        self.master.journal.add_tasks(t.journal_row() for t in fresh)
        self.master.scheduler.push_tasks(fresh)
        # Answered once this turn's tasks are on their way: the ACK is not on their path.
        self.master.reply_later(identity, Kind.ACK, {"rid": msg.get("rid"), "n": len(tasks)})

    def on_results_ack(self, identity: bytes, msg: Message) -> None:
        client = self.known(identity)
        if client is None:
            return
        task_ids = [str(t) for t in msg["tasks"]]
        for task_id in task_ids:
            client.unconfirmed.pop(task_id, None)
        self.master.journal.forget_tasks(task_ids)

    def on_cancel(self, identity: bytes, msg: Message) -> None:
        client = self.known(identity)
        if client is None:
            return
        if msg.get("system_id") is not None:
            self.master.systems.cancel(str(msg["system_id"]))
            return
        task_ids = [str(t) for t in msg["tasks"]]
        cancelled = [t for t in map(self.master.scheduler.cancel, task_ids) if t is not None]
        client.cancelled += len(cancelled)
        self.master.journal.forget_tasks(task_ids)
        self.master.cancel_on_slaves(cancelled)

    def on_system(self, identity: bytes, msg: Message) -> None:
        client = self.known(identity)
        if client is None:
            return
        system_id = str(msg["system_id"])
        if self.master.systems.start(system_id, client.client_id, msg.payloads[0], identity):
            self.master.send(identity, Kind.ACK, {"rid": msg.get("rid"), "n": 1})
        else:
            reason = f"task system {system_id} already exists"
            self.master.send(identity, Kind.REJECT, {"rid": msg.get("rid"), "reason": reason})

    # -- results on their way back ---------------------------------------------------------------

    def route(self, outcomes: list[tuple[TaskRecord, bool, bytes]]) -> None:
        """Queue plain tasks' outcomes for their applications (journaled later, if need be)."""
        if not outcomes:
            return
        now = time.monotonic()
        durable = self.master.journal.durable
        long_ran = []
        for task, ok, data in outcomes:
            client = self._record(task.client_id)
            if ok:
                client.done += 1
            else:
                client.failed += 1
            client.outbox.append((task.task_id, ok, data))
            client.unconfirmed[task.task_id] = (ok, data)
            if not durable:
                continue
            if now - task.assigned_at >= JOURNAL_AFTER:
                long_ran.append((task.task_id, ok, data))
            else:
                self._unjournaled.append((now, client, task.task_id))
        if long_ran:
            self.master.journal.plain_outcomes(long_ran)

    def journal_unconfirmed(self, everything: bool = False) -> None:
        """Write down the outcomes still unconfirmed after ``JOURNAL_AFTER`` (or all of them)."""
        due = time.monotonic() - JOURNAL_AFTER
        rows = []
        while self._unjournaled and (everything or self._unjournaled[0][0] <= due):
            _, client, task_id = self._unjournaled.popleft()
            outcome = client.unconfirmed.get(task_id)
            if outcome is not None:
                rows.append((task_id, *outcome))
        if rows:
            self.master.journal.plain_outcomes(rows)

    def flush(self) -> None:
        """One RESULTS message per application with everything queued for it."""
        for client in self.records.values():
            if not client.outbox or client.identity is None:
                continue
            header = {"results": [[t, ok] for t, ok, _ in client.outbox]}
            payloads = [data for _, _, data in client.outbox]
            if self.master.send(client.identity, Kind.RESULTS, header, payloads):
                client.outbox = []

    def summaries(self) -> list[dict[str, Any]]:
        """Connected applications, and gone ones whose results still wait for them."""
        return [c.summary() for c in self.records.values() if c.connected or c.unconfirmed]

    def send(self, client_id: str, kind: str, header: dict) -> None:
        client = self.records.get(client_id)
        if client is not None and client.identity is not None:
            self.master.send(client.identity, kind, header)
