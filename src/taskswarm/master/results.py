"""Plain tasks' outcomes on their way back to their applications.

A plain task's outcome is kept until its application confirms receipt (RESULTS_ACK), and sent
again after a reconnect, so a result survives a lost message. It is journaled too, so it
survives a master restart, but not at once: most are confirmed within milliseconds, and writing
each one down only to delete it moments later was a third of a durable master's work. An outcome
still unconfirmed after ``JOURNAL_AFTER`` seconds is written; until then the task's own journal
row stands for it, so a master killed in between runs the task again rather than lose it. An
outcome of a task that ran for ``JOURNAL_AFTER`` or longer is written at once: running it again
would cost more than the write. Each turn, every application with outcomes waiting gets them
in one RESULTS message (split to fit the size limit). An ``ApplicationRecord`` holds its
application's outcomes; the application table (``taskswarm.master.applications``) keeps the
records.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..protocol import sharing
from ..protocol.codec import ENVELOPE, Kind, within
from ..protocol.messages import Ack, Delivered, Delivery
from .edges import Send
from .journal import Journal, NullJournal
from .kept import KeptRef
from .outcomes import Outcome

__all__ = ["ACK_DELAY", "JOURNAL_AFTER", "ApplicationRecord", "ResultRoute"]

#: Seconds an outcome may wait for its application's confirmation before it is journaled.
JOURNAL_AFTER = 0.25
#: Seconds the acknowledgement of a SUBMIT waits to go with that application's results, to an
#: application that takes them in batches (``Hello.batched_acks``); then it goes alone.
ACK_DELAY = 0.005


@dataclass(eq=False)
class ApplicationRecord:
    """An application node: where its results go, and which it has not confirmed yet."""

    client_id: str
    identity: bytes | None
    last_seen: float = field(default_factory=time.monotonic)
    outbox: list[tuple[str, bool, Any]] = field(default_factory=list)
    #: task_id -> (ok, data, made at (wall clock, for --result-ttl)), oldest first
    unconfirmed: dict[str, tuple[bool, bytes, float]] = field(default_factory=dict)
    held: int = 0  # bytes in ``unconfirmed``
    gone_at: float | None = None  # monotonic time it said BYE or was lost; None while connected
    said_bye: bool = False  # closed for good: nothing is kept for it any more
    host: str = ""
    pid: int | None = None
    connected: bool = False  # said HELLO and not BYE
    submitted: int = 0  # plain tasks accepted from it
    done: int = 0  # ... whose outcome was a result
    failed: int = 0  # ... whose outcome was an error
    cancelled: int = 0  # ... cancelled before an outcome
    batched_acks: bool = False  # takes its SUBMITs' acknowledgements in batches (HELLO says)
    acks_due: list[int] = field(default_factory=list)  # SUBMITs accepted, not acknowledged yet

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


class ResultRoute:
    """Outcomes queued per application, sent each turn, journaled if they wait."""

    def __init__(
        self,
        records: dict[str, ApplicationRecord],
        gone_record: Callable[[str], ApplicationRecord],
        journal: Journal | NullJournal,
        send: Send,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._records = records  # the application table's, by client id
        #: A record made (as gone) for an application the master has not seen since a restart.
        self._gone_record = gone_record
        self.journal = journal
        self.send = send
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        #: Applications with something in their outbox (``flush`` looks at these only).
        self._waiting: dict[str, ApplicationRecord] = {}
        #: Outcomes not journaled yet, oldest first: (when, client, task_id).
        self._unjournaled: deque[tuple[float, ApplicationRecord, str]] = deque()
        #: Applications owed the acknowledgement of a SUBMIT, and when it goes alone at the
        #: latest (monotonic), oldest first.
        self._acks_by: dict[str, tuple[float, ApplicationRecord]] = {}

    def acknowledge(self, client: ApplicationRecord, rid: int) -> None:
        """A SUBMIT accepted: it is acknowledged with the application's next results, or alone
        after ``ACK_DELAY``, so that a lone task's round trip costs no message of its own."""
        client.acks_due.append(rid)
        if client.client_id not in self._acks_by:
            self._acks_by[client.client_id] = (self.clock() + ACK_DELAY, client)

    def next_ack(self) -> float | None:
        """When the oldest acknowledgement owed goes alone (on ``clock``); None if none is."""
        for due, _ in self._acks_by.values():
            return due
        return None

    def send_acks(self, now: float | None = None) -> None:
        """The acknowledgements owed for ``ACK_DELAY`` or longer go alone, one ACK each."""
        if not self._acks_by:
            return
        now = self.clock() if now is None else now
        while self._acks_by:
            client_id, (due, client) = next(iter(self._acks_by.items()))
            if due > now:
                return
            del self._acks_by[client_id]
            rids, client.acks_due = client.acks_due, []
            if rids and client.identity is not None:
                self.send(client.identity, Kind.ACK, Ack(rid=rids[0], rids=rids))

    def waiting(self, client: ApplicationRecord) -> None:
        """Its outbox has something: send it this turn."""
        self._waiting[client.client_id] = client

    def route(self, outcomes: list[Outcome]) -> None:
        """Queue plain tasks' outcomes for their applications (journaled later, if need be)."""
        if not outcomes:
            return
        now = time.monotonic()
        durable = self.journal.durable
        long_ran = []
        made = time.time()
        records = self._records
        for task, ok, data in outcomes:
            client = records.get(task.client_id)
            if client is None:  # restored from the journal: it may come back for it
                client = self._gone_record(task.client_id)
            elif client.said_bye:
                sharing.free(data)  # a result in shared memory goes with it
                continue  # no one can receive this any more
            if ok:
                client.done += 1
            elif data:
                client.failed += 1
            else:
                client.cancelled += 1  # taken back from its slave unrun (no outcome)
            if client.identity is not None:
                client.outbox.append((task.task_id, ok, data))
                self._waiting[task.client_id] = client
            client.unconfirmed[task.task_id] = (ok, data, made)
            client.held += len(data)
            if not durable:
                continue
            if now - task.assigned_at >= JOURNAL_AFTER:
                long_ran.append((task.task_id, ok, data, made))
            else:
                self._unjournaled.append((now, client, task.task_id))
        if long_ran:
            self.journal.plain_outcomes(long_ran)

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
            self.journal.plain_outcomes(rows)

    def flush(self) -> None:
        """One RESULTS message per application with everything queued for it."""
        if not self._waiting:
            return
        waiting, self._waiting = self._waiting, {}
        for client in waiting.values():
            if not client.outbox or client.identity is None:
                continue
            outbox, limit = client.outbox, self.max_message_bytes - ENVELOPE
            acked = client.acks_due or None  # the SUBMITs accepted go with the results
            sent = 0  # big results may add up past what one message may hold: split them
            for part in within([len(data) for _, _, data in outbox], limit):
                header = Delivery(
                    results=[
                        Delivered(t, ok)
                        if type(data) is not KeptRef
                        else Delivered(t, ok, data.address)
                        for t, ok, data in outbox[part]
                    ],
                    acked=acked,
                )
                payloads = [
                    data if type(data) is not KeptRef else b"" for _, _, data in outbox[part]
                ]
                if not self.send(client.identity, Kind.RESULTS, header, payloads):
                    break
                sent = part.stop
                if acked:
                    client.acks_due, acked = [], None
                    self._acks_by.pop(client.client_id, None)
            client.outbox = outbox[sent:]
            if client.outbox:
                self._waiting[client.client_id] = client  # again next turn
