"""Results that stay on the slaves that made them: where each is, who needs it, its lineage.

A plain task whose application allows it (``TaskMeta.keep``) leaves a big result on its slave
(:mod:`taskswarm.protocol.dataplane`); the slave's RESULTS says only how big. Here the master
keeps, per such result, a :class:`Kept`: where the bytes are (a :class:`KeptRef`, which stands
for them wherever the master's tables hold a result: an outcome on its way to the application,
an input of a task that takes it), and what it takes to make them again, its *lineage*: the
task as submitted and its inputs (small ones by value, kept ones by their own entry).

The bytes stay on the slave while anyone needs them: the application (its Future is alive: it
sends FORGET when the Future is garbage-collected, or leaves), or a task that takes them
(waiting, queued or running). Then the master tells the slave to DROP them. The entry itself
lives on, without bytes, while a result made from it is still kept: should that one be lost,
it may have to be made again from this one, and so on up the graph (Dask and Ray keep their
lineage the same way). So the master holds per result a few dozen bytes and its task's
payload, never the result.

When a slave is lost, or a slave reports that an input it had to fetch was not to be had
(``Status.LOST_INPUT``), each result it kept that is still needed is made again: its task runs
again (after its own lost inputs, made again first), the tasks that take it wait for it, and its
application's Future learns the new place (``Delivered.at``). A result whose lineage is gone (an
input that was neither kept nor small enough to be held) cannot be made again: what needs it
fails with ``DependencyError``, saying so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..protocol.codec import Kind
from ..protocol.messages import Drop
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import SlaveRecord, TaskRecord, TaskState
from .edges import Send

__all__ = ["LOST", "Kept", "KeptRef", "KeptResults", "Scattered"]

#: What ``KeptResults.ref`` says of a result that was lost and cannot be made again.
LOST = "was lost with its slave and cannot be made again"

log = logging.getLogger(__name__)


class KeptRef:
    """A kept result where the master's tables would hold its bytes: which slave keeps it, at
    which data socket, and its size. Has no bytes here (``len`` 0) but is a result (true)."""

    __slots__ = ("address", "size", "slave_id", "task_id")

    def __init__(self, task_id: str, slave_id: str, address: str, size: int) -> None:
        self.task_id, self.slave_id, self.address, self.size = task_id, slave_id, address, size

    def __len__(self) -> int:
        return 0

    def __bool__(self) -> bool:
        return True

    def __repr__(self) -> str:
        return f"KeptRef({self.task_id} on {self.slave_id}, {self.size} bytes)"


class Scattered:
    """Scattered data (``app.scatter``) as the master holds it: its bytes, and the slaves that
    keep a copy. The first task that takes it on a slave carries it, with word to keep it
    (``Tasks.at`` ``"+"``); later ones there name the slave's own data socket instead, so the
    bytes cross to each slave once, not once per message. The copies go (DROP) with it."""

    __slots__ = ("data", "placed")

    def __init__(self, data: Any) -> None:
        self.data = data
        #: The slaves (by id) that keep a copy.
        self.placed: set[str] = set()

    def __len__(self) -> int:
        return len(self.data)

    def __repr__(self) -> str:
        return f"Scattered({len(self.data)} bytes, on {sorted(self.placed)})"


@dataclass(eq=False)
class Kept:
    """One kept result: where it is now, who needs it, and how to make it again."""

    #: Its task as submitted (payload and all), to run it again.
    record: TaskRecord
    #: Where its bytes are; None while they are lost or let go.
    ref: KeptRef | None
    #: Its inputs: ``(task id, result)`` of one held by value, ``(task id, None)`` of a kept one
    #: (its own entry, counted in that entry's ``users``).
    inputs: list[tuple[str, Any]] = field(default_factory=list)
    #: Its application refers to it (no FORGET yet).
    wanted: bool = True
    #: Entries made from it that may need it made again.
    users: int = 0
    #: Running again (its bytes were lost while needed).
    remaking: bool = False
    #: Its application cancelled it while it was being made again: it is not made again.
    abandoned: bool = False


class KeptResults:
    """Every kept result the master knows of, by task id; lives on the master's loop thread."""

    def __init__(
        self,
        scheduler: SchedulerContract,
        send: Send | None,
        taken: Callable[[str], bool],
    ) -> None:
        self.scheduler = scheduler
        self.send = send
        #: Whether a task that takes it is waiting, queued or running (the dependency table's).
        self.taken = taken
        self.entries: dict[str, Kept] = {}
        #: The ids of those being made again (their outcome, however it comes, ends that).
        self.remaking: set[str] = set()
        #: What runs a task again with these inputs (the dependency table's ``readmit``).
        self.readmit: Callable[[TaskRecord, list[tuple[str, Any]]], None] | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def kept_bytes(self) -> int:
        return sum(e.ref.size for e in self.entries.values() if e.ref is not None)

    def ref(self, task_id: str, client_id: str) -> KeptRef | str | None | bool:
        """An input's place: its ref; None (no such kept result of ``client_id``); False (it
        is being made again: wait for it); ``LOST`` (it cannot be had)."""
        entry = self.entries.get(task_id)
        if entry is None or entry.record.client_id != client_id:
            return None
        if entry.ref is None:
            if not entry.remaking and entry.wanted and not entry.abandoned:
                self.need(task_id)
            return False if entry.remaking else LOST
        return entry.ref

    # -- results coming in ----------------------------------------------------------------------

    def arrived(self, task: TaskRecord, ref: KeptRef) -> bool:
        """A kept result came in; returns whether its application should hear of it (its
        first outcome, or the new place of one it still refers to)."""
        slave = self.scheduler.slaves.get(ref.slave_id)
        if slave is not None:
            slave.kept_results += 1
        entry = self.entries.get(task.task_id)
        if entry is not None:  # made again
            entry.ref, entry.remaking = ref, False
            self.remaking.discard(task.task_id)
            self.check(task.task_id)
            return entry.wanted
        inputs: list[tuple[str, Any]] = []
        for dep, data in task.inputs or ():
            source = self.entries.get(dep) if type(data) is KeptRef else None
            if source is not None:
                source.users += 1
                inputs.append((dep, None))
            else:
                inputs.append((dep, data))
        self.entries[task.task_id] = Kept(_fresh(task), ref, inputs)
        return True

    def abandon(self, task_id: str) -> None:
        """Its application cancelled it while it was being made again."""
        entry = self.entries.get(task_id)
        if entry is not None:
            entry.abandoned = True
        self.failed_again(task_id)

    def failed_again(self, task_id: str) -> bool:
        """A result being made again came back otherwise (failed, cancelled, or small enough
        to travel): whether its application should hear of it."""
        entry = self.entries.get(task_id)
        self.remaking.discard(task_id)
        if entry is None or not entry.remaking:
            return True
        entry.remaking = False
        self.check(task_id)
        return entry.wanted

    # -- letting go -----------------------------------------------------------------------------

    def forget(self, task_ids: Iterable[str], client_id: str) -> None:
        """Its application no longer refers to these (their Futures are gone)."""
        for task_id in task_ids:
            entry = self.entries.get(task_id)
            if entry is not None and entry.record.client_id == client_id:
                entry.wanted = False
                self.check(task_id)

    def forget_client(self, client_id: str) -> None:
        self.forget([t for t, e in self.entries.items() if e.record.client_id == client_id],
                    client_id)  # fmt: skip

    def check(self, task_id: str) -> None:
        """Let its bytes go once no one needs them, and its entry once nothing may need it
        made again (then its own inputs are checked in turn)."""
        todo = [task_id]
        while todo:
            entry = self.entries.get(todo.pop())
            if entry is None:
                continue
            task_id = entry.record.task_id
            if entry.wanted or entry.remaking or self.taken(task_id):
                continue
            if entry.ref is not None:
                self._drop(entry.ref)
                entry.ref = None
            if entry.users:
                continue
            del self.entries[task_id]
            for dep, data in entry.inputs:
                source = self.entries.get(dep) if data is None else None
                if source is not None:
                    source.users -= 1
                    todo.append(dep)

    def stale(self, task_id: str, slave: SlaveRecord) -> None:
        """A slave kept a result no one will ask it for (its task was cancelled, or ran twice):
        it may drop it, unless it is the very copy the master knows of."""
        entry = self.entries.get(task_id)
        if entry is not None and entry.ref is not None and entry.ref.slave_id == slave.slave_id:
            return
        self._tell_drop(slave, task_id)

    def drop_copies(self, data_id: str, slave_ids: Iterable[str]) -> None:
        """Scattered data let go: the slaves that keep a copy drop it."""
        for slave_id in slave_ids:
            slave = self.scheduler.slaves.get(slave_id)
            if slave is not None:
                self._tell_drop(slave, data_id)

    def _drop(self, ref: KeptRef) -> None:
        """The bytes ``ref`` names are no longer needed: their slave (if still here) drops them."""
        slave = self.scheduler.slaves.get(ref.slave_id)
        if slave is not None:
            slave.kept_results = max(0, slave.kept_results - 1)
            self._tell_drop(slave, ref.task_id)

    def _tell_drop(self, slave: SlaveRecord, data_id: str) -> None:
        if self.send is not None:
            self.send(slave.identity, Kind.DROP, Drop(data_ids=[data_id]))

    # -- losing and making again ----------------------------------------------------------------

    def slave_lost(self, slave_id: str) -> list[str]:
        """A slave is gone with what it kept: returns the ids lost. The dependency table pulls
        back the tasks queued to take them, then has those still needed made again (``need``)."""
        lost = [
            t for t, e in self.entries.items() if e.ref is not None and e.ref.slave_id == slave_id
        ]
        for task_id in lost:
            self.entries[task_id].ref = None
        return lost

    def input_lost(self, task_id: str) -> None:
        """A slave could not fetch it from where it was said to be: its place is forgotten
        (and the slave told to drop it, should it still be there), to be made again."""
        entry = self.entries.get(task_id)
        if entry is None or entry.ref is None:
            return
        self._drop(entry.ref)
        entry.ref = None

    def need(self, task_id: str) -> bool:
        """Make a lost result again if anyone needs it; False when it cannot be (its lineage
        is gone), True when it is there, on its way, or not needed."""
        entry = self.entries.get(task_id)
        if entry is None:
            return False
        if entry.ref is not None or entry.remaking:
            return True
        if entry.abandoned:
            return False
        if not (entry.wanted or self.taken(task_id)):
            self.check(task_id)  # only its lineage may be needed: made again if ever it is
            return True
        for dep, data in entry.inputs:
            if data is None and not self._available(dep):
                log.warning("task %s cannot be made again: its input %s is gone", task_id, dep)
                return False
        entry.remaking = True
        self.remaking.add(task_id)
        log.info("making the result of task %s again (its slave lost it)", task_id)
        assert self.readmit is not None
        self.readmit(_fresh(entry.record), entry.inputs)
        return True

    def _available(self, dep: str) -> bool:
        """An input of a result made again: there, or made again too."""
        source = self.entries.get(dep)
        if source is None or source.abandoned:
            return False
        if source.ref is not None or source.remaking:
            return True
        for sub, data in source.inputs:
            if data is None and not self._available(sub):
                return False
        source.remaking = True
        self.remaking.add(dep)
        assert self.readmit is not None
        self.readmit(_fresh(source.record), source.inputs)
        return True


def _fresh(task: TaskRecord) -> TaskRecord:
    """A copy of a task as it was submitted, to run it again."""
    copy = TaskRecord(
        task.task_id,
        task.payload,
        task.client_id,
        task.system_id,
        task.timeout,
        task.max_retries,
        task.name,
        priority=task.priority,
        resources=task.resources,
        deps=task.deps,
        keep=task.keep,
    )
    copy.state = TaskState.WAITING
    return copy
