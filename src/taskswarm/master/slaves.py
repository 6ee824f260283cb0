"""The master's table of slaves: who is there, what each can take, and who has gone.

A slave REGISTERs (again each heartbeat until welcomed), beats, gives back tasks it was asked
to (RELEASED), drains before it stops, and says BYE. One silent past ``slave_timeout`` (scaled by
its own heartbeat when it beats slower than the master) is lost: the scheduler puts what it was
assigned back in the queue, so nothing is lost with it. Departed slaves stay in ``status`` for
``forget_after`` seconds, at most ``DEPARTED_KEPT`` of them. Lives on the master's loop thread,
and knows the rest of the master only by what it is given: the peers' table, the scheduler, how
to send, the measures and the clock.
"""

from __future__ import annotations

import logging
import operator
import time
from collections.abc import Callable
from typing import Any

from ..protocol.codec import ENVELOPE, Kind, Message, within
from ..protocol.messages import (
    Assignment,
    Cancel,
    Heartbeat,
    Register,
    Released,
    Resize,
    Shutdown,
    Steal,
    Tasks,
    Welcome,
)
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import (
    NodeState,
    SlaveRecord,
    TaskRecord,
    format_resources,
    parse_resources,
)
from ..stats import Stats
from .edges import Send
from .kept import KeptRef, Scattered

__all__ = ["DEPARTED_KEPT", "SlaveTable"]

log = logging.getLogger(__name__)

#: Most departed slaves ``status`` shows (oldest forgotten first).
DEPARTED_KEPT = 1000


class SlaveTable:
    def __init__(
        self,
        peers: dict[bytes, Any],
        scheduler: SchedulerContract,
        send: Send,
        stats: Stats,
        *,
        heartbeat_interval: float,
        slave_timeout: float,
        max_message_bytes: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.peers = peers  # shared with the application table: identity -> its record
        self.scheduler = scheduler
        self.send = send
        self.stats = stats
        self.heartbeat_interval = heartbeat_interval
        self.slave_timeout = slave_timeout
        self.max_message_bytes = max_message_bytes
        self.clock = clock
        self.departed: dict[
            str, dict[str, Any]
        ] = {}  # lost or gone slaves, for status; oldest first
        self._departed_at: dict[str, float] = {}  # ... and when (the clock's time)
        #: Told of each slave lost, after its tasks went back to the queue.
        self.on_lost: Callable[[SlaveRecord], object] | None = None

    def known(self, identity: bytes) -> SlaveRecord | None:
        peer = self.peers.get(identity)
        return peer if isinstance(peer, SlaveRecord) else None

    # -- handlers ----------------------------------------------------------------------------

    def on_register(self, identity: bytes, msg: Message) -> None:
        register = msg.read(Register)
        old = self.known(identity)
        if old is not None:
            # Usual at start (a slave repeats REGISTER each heartbeat until welcomed), and what
            # it still holds is assigned back to it just below: worth no warning.
            self.lose(old, "re-registered", level=logging.INFO)
        heartbeat = register.heartbeat
        slave = SlaveRecord(
            slave_id=register.node_id,
            identity=identity,
            host=register.host,
            pid=register.pid,
            workers=register.workers,
            credit=register.credit,
            want=register.want,
            pace=register.pace,
            # Not a positive number (none said, NaN...): the master's own beat counts.
            heartbeat=heartbeat if heartbeat is not None and heartbeat > 0 else 0.0,
            data=register.data,
        )
        slave.last_seen = self.clock()
        try:
            slave.resources = parse_resources(register.resources)
        except ValueError as exc:
            log.warning("slave %s declared bad resources (%s); it offers none", slave.slave_id, exc)
        self.departed.pop(slave.slave_id, None)
        self._departed_at.pop(slave.slave_id, None)
        self.peers[identity] = slave
        self.scheduler.add_slave(slave)
        self.scheduler.assign_held(slave, register.held)
        # The slave learns how often to expect word from the master, so a long heartbeat
        # (a big cluster's) is not taken for a lost master.
        welcome = Welcome(
            node_id=slave.slave_id,
            heartbeat=self.heartbeat_interval,
            max_bytes=self.max_message_bytes,
        )
        self.send(identity, Kind.WELCOME, welcome)
        log.info(
            "slave %s registered from %s with %d workers%s",
            slave.slave_id,
            slave.host,
            slave.workers,
            f" and resources {format_resources(slave.resources)}" if slave.resources else "",
        )

    @staticmethod
    def take_window(
        slave: SlaveRecord, credit: int, want: int | None, pace: float | None = None
    ) -> None:
        """What a slave's message says of how much more it can take (None: unchanged)."""
        slave.credit += credit
        if want is not None:
            slave.want = want
        if pace is not None:
            slave.pace = pace

    def refresh(self, slave: SlaveRecord, beat: Heartbeat) -> None:
        """What a slave's heartbeat says of it (each field only when said)."""
        if slave.state in (NodeState.PENDING, NodeState.INACTIVE):
            if slave.state == NodeState.INACTIVE:
                log.info("slave %s is back", slave.slave_id)
            slave.state = NodeState.ACTIVE
        workers = beat.workers
        if workers is not None and workers != slave.workers:
            slave.workers = workers
            log.info("slave %s now has %d workers", slave.slave_id, slave.workers)
        self.take_window(slave, beat.credit, beat.want, beat.pace)
        if beat.rejected is not None:
            slave.rejected = beat.rejected
        if beat.kept is not None:
            slave.kept_bytes = beat.kept
        if beat.cpu is not None:
            slave.cpu = beat.cpu
        if beat.rss is not None:
            slave.rss = beat.rss
        if beat.stats is not None:
            slave.stats = _measures(beat.stats, slave.slave_id)
        if beat.held is not None:
            # Tasks sent two heartbeats ago have arrived unless their message was lost.
            sent_before = time.monotonic() - 2 * self.heartbeat_interval
            held = set(beat.held)
            for task in self.scheduler.reclaim_missing(slave, held, sent_before):
                log.warning("slave %s never got task %s; requeued", slave.slave_id, task.task_id)
        self.scheduler.refresh(slave)

    def on_drain(self, identity: bytes, msg: Message) -> None:
        slave = self.known(identity)
        if slave is not None:
            slave.state = NodeState.DRAINING
            self.scheduler.refresh(slave)
            log.info("slave %s is draining", slave.slave_id)

    def on_released(self, identity: bytes, msg: Message) -> None:
        """A slave gave back tasks it had not started (for idle slaves): queue them again."""
        released = msg.read(Released)
        slave = self.known(identity)
        if slave is None:
            return  # it was lost meanwhile: its tasks went back to the queue then
        slave.last_seen = self.clock()
        self.take_window(slave, released.credit, released.want)
        back = self.scheduler.released(slave, released.tasks)
        if back:
            log.debug("slave %s gave back %d tasks for idle slaves", slave.slave_id, len(back))

    # -- each heartbeat ------------------------------------------------------------------------

    def check(self, now: float) -> None:
        """Lose slaves silent too long; take no new tasks to those that missed beats."""
        for slave in list(self.scheduler.slaves.values()):
            silent = now - slave.last_seen
            # A slave that beats slower than the master is given as many of its own beats.
            beat = max(self.heartbeat_interval, slave.heartbeat)
            if silent > max(
                self.slave_timeout, self.slave_timeout * beat / self.heartbeat_interval
            ):
                self.lose(slave, f"silent for {silent:.1f}s")
            elif silent > 2.5 * beat and slave.state == NodeState.ACTIVE:
                slave.state = NodeState.INACTIVE
                self.scheduler.refresh(slave)
                log.warning("slave %s missed its heartbeats; no new tasks for it", slave.slave_id)

    def lose(
        self,
        slave: SlaveRecord,
        why: str,
        state: str = NodeState.LOST,
        level: int = logging.WARNING,
    ) -> None:
        """It is gone: its assigned tasks go back to the queue, its summary to ``departed``."""
        requeued = self.scheduler.remove_slave(slave.slave_id)
        self.peers.pop(slave.identity, None)
        slave.state = state
        slave.in_flight = set()
        self.departed.pop(slave.slave_id, None)  # re-inserted: newest last
        self.departed[slave.slave_id] = slave.summary()
        self._departed_at[slave.slave_id] = self.clock()
        log.log(
            level, "slave %s %s (%s); %d tasks requeued", slave.slave_id, state, why, len(requeued)
        )
        if self.on_lost is not None:
            self.on_lost(slave)

    def forget_departed(self, now: float, forget_after: float) -> None:
        forget_before = now - forget_after
        for slave_id, at in list(self._departed_at.items()):
            if at > forget_before and len(self._departed_at) <= DEPARTED_KEPT:
                break  # oldest first: the rest are younger
            del self._departed_at[slave_id]
            self.departed.pop(slave_id, None)

    # -- each turn -----------------------------------------------------------------------------

    def send_task_batches(self) -> None:
        """One TASKS message per slave with what the scheduler gave it (split to fit)."""
        limit = self.max_message_bytes - ENVELOPE
        for slave, batch in self.scheduler.take_outboxes():
            start = time.perf_counter()
            # Big payloads may add up past what the slave accepts in one message.
            sizes = [len(t.payload) if t.inputs is None else _weight(t) for t in batch]
            for part in within(sizes, limit):
                tasks = batch[part]
                header, payloads = _tasks_message(tasks, slave)
                if not self.send(slave.identity, Kind.TASKS, header, payloads):
                    self.lose(slave, "unreachable")
                    break
            self.stats.add("send_seconds", time.perf_counter() - start)

    def send_steal_requests(self) -> None:
        for slave, count in self.scheduler.plan_steals():
            log.debug("asking slave %s for %d unstarted tasks back", slave.slave_id, count)
            self.send(slave.identity, Kind.STEAL, Steal(count=count))

    def cancel(self, per_slave: dict[str, list[str]], soft: bool) -> None:
        """Tell slaves to stop these tasks (``soft``: only those no worker began)."""
        for slave_id, task_ids in per_slave.items():
            slave = self.scheduler.slaves.get(slave_id)
            if slave is not None:
                self.send(slave.identity, Kind.CANCEL, Cancel(tasks=task_ids, soft=soft))

    # -- actions from the HTTP API ---------------------------------------------------------------

    def resize(self, slave_id: str, workers: int) -> bool:
        slave = self.scheduler.slaves.get(slave_id)
        return slave is not None and self.send(slave.identity, Kind.RESIZE, Resize(workers=workers))

    def drain(self, slave_id: str) -> bool:
        """The slave finishes what it runs, hands back what it holds, and leaves."""
        slave = self.scheduler.slaves.get(slave_id)
        return slave is not None and self.send(slave.identity, Kind.SHUTDOWN, Shutdown())

    def cluster_info(self) -> dict[str, int]:
        slaves = [s for s in self.scheduler.slaves.values() if s.state == NodeState.ACTIVE]
        return {"slaves": len(slaves), "workers": sum(s.workers for s in slaves)}


_INPUTS = operator.attrgetter("inputs")


def _weight(task: TaskRecord) -> int:
    """A task's bytes in a TASKS message: its payload, and its inputs' results if any."""
    if task.inputs is None:
        return len(task.payload)
    return len(task.payload) + sum(len(data) for _, data in task.inputs)


def _tasks_message(tasks: list[TaskRecord], slave: SlaveRecord) -> tuple[Tasks, list[Any]]:
    """A TASKS message: the tasks' payloads, then each input's result once (``Tasks.inputs``),
    or for one kept on a slave, an empty payload and that slave's data socket (``Tasks.at``);
    scattered data goes to each slave once, to keep (``"+"``), and is named by its own data
    socket after that."""
    if not any(map(_INPUTS, tasks)):
        return Tasks(tasks=[Assignment(t.task_id, t.timeout, None, t.keep) for t in tasks]), [
            t.payload for t in tasks
        ]
    given: dict[str, Any] = {}
    assignments = []
    for task in tasks:
        if task.inputs:
            for dep, data in task.inputs:
                given.setdefault(dep, data)
            assignments.append(Assignment(task.task_id, task.timeout, task.deps, task.keep))
        else:
            assignments.append(Assignment(task.task_id, task.timeout, None, task.keep))
    at, inputs = [], []
    for data in given.values():
        if type(data) is KeptRef:
            at.append(data.address)
            inputs.append(b"")
        elif type(data) is Scattered and slave.data:
            if slave.slave_id in data.placed:
                at.append(slave.data)
                inputs.append(b"")
            else:
                data.placed.add(slave.slave_id)
                at.append("+")
                inputs.append(data.data)
        else:
            at.append("")
            inputs.append(data.data if type(data) is Scattered else data)
    payloads = [t.payload for t in tasks] + inputs
    return Tasks(tasks=assignments, inputs=list(given), at=at if any(at) else None), payloads


#: What a measure a node reports must hold (anything else is dropped, not trusted).
_MEASURE_FIELDS = ("count", "sum", "avg", "min", "max")


def _measures(rows: Any, slave_id: str) -> list[dict[str, Any]]:
    """A slave's reported measures, labelled with the slave; malformed rows are left out (a
    HEARTBEAT's are a list of maps, its decoder checked; what they hold it did not)."""
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
