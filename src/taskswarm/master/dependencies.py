"""Tasks that take other tasks' results (Futures as arguments): held back, then sent with them.

A task whose SUBMIT names inputs (``TaskMeta.deps``: tasks of the same application whose
Futures were among its arguments) waits here, outside the scheduler, until every input has an
outcome. Then it joins the queue like any task, carrying its inputs' pickled results
(``TaskRecord.inputs``), which go to its slave in the same TASKS message (``Tasks.inputs``) and
to its worker with it. An input that failed (or was cancelled) fails it, unrun, with
``DependencyError``; its application adds the input's own error as the cause. So does an input
the master does not know: the application never lets that happen (``taskswarm.inputs``: it
confirms an input's outcome only after the task naming it was sent), unless the master
restarted without its state directory.

Scattered data (``app.scatter``) is an input with no task behind it: its application sends its
value once (SCATTER) and it is kept, like a finished input's result, until the application
no longer refers to it (FORGET, or the application leaves) and no task takes it. It goes to
each slave once (``taskswarm.master.kept.Scattered``), and the slaves' copies go with it.

A big result that stayed on its slave (``taskswarm.master.kept``) is held here as its place (a
``KeptRef``): the task that takes it is sent to that slave when it has room, else its own
slave fetches it; if it is lost, the task waits while it is made again.

What this holds, and for how long (the master is bounded by live work): a waiting task's
record until it is queued, failed or cancelled; an input's result (the bytes as they came from
its slave, or a reference to a shared memory segment, a few dozen bytes, on one host) only
while a task that takes it is waiting, queued or running; scattered data while its
application refers to it. The index is cleaned as each such
task ends, and once a heartbeat (``sweep``) for any that left by another road.

The plain results also still go to their application as usual (a big one as its place): a
Future given to another task keeps its own result too.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import DependencyError, TaskError
from ..scheduling.contracts import SchedulerContract
from ..scheduling.records import TaskRecord, TaskState
from ..task import failure
from .edges import Send
from .kept import LOST, KeptRef, KeptResults, Scattered
from .outcomes import Outcome

__all__ = ["DependencyTable"]

log = logging.getLogger(__name__)

#: How an application's kept outcomes are looked up: task id -> (ok, data, made at).
Kept = Mapping[str, tuple[bool, Any, float]]
_DEPS = operator.attrgetter("deps")
#: What ``_look_up`` says of an input whose result the master holds, or that has not finished.
_HELD, _MISSING = "held", "missing"


class DependencyTable:
    """Waiting tasks, the inputs they wait for, and the inputs' results while needed."""

    def __init__(self, scheduler: SchedulerContract, send: Send | None = None) -> None:
        self.scheduler = scheduler
        #: Tasks held back: task id -> (its record, the inputs it still waits for).
        self.waiting: dict[str, tuple[TaskRecord, set[str]]] = {}
        #: Input task id -> the tasks that take it (waiting, queued or running).
        self.dependents: dict[str, set[str]] = {}
        #: Results kept on slaves: where they are and how to make them again.
        self.kept = KeptResults(scheduler, send, self.dependents.__contains__)
        self.kept.readmit = self.readmit
        #: Input task id -> its pickled result, while a task that takes it is not done (or,
        #: for scattered data, until its application forgets it).
        self.held: dict[str, Any] = {}
        #: Scattered data (``app.scatter``): data id -> the application it belongs to.
        self.scattered: dict[str, str] = {}

    def held_bytes(self) -> int:
        return sum(len(data) for data in self.held.values())

    # -- tasks coming in -----------------------------------------------------------------------

    def admit(
        self,
        tasks: list[TaskRecord],
        client_id: str,
        kept: Kept,
        resend: list[tuple[TaskRecord, str]] | None = None,
    ) -> tuple[list[TaskRecord], list[Outcome]]:
        """A SUBMIT's new tasks: those to queue now, and outcomes for those that fail now (an
        input failed or is unknown); the rest wait here. ``kept``: the outcomes the master
        still keeps for their application (an input done before the task came).

        ``resend``, for a task system's tasks: where a task naming an input the master does not
        hold goes instead of failing, with that input (its outcome is on its way to the
        system's runner, which sends the task again with it by value: ``taskswarm.inputs``)."""
        if not any(map(_DEPS, tasks)):
            return tasks, []
        ready, failed = [], []
        # An input may be live, waiting here, or come in the same SUBMIT.
        batch = {task.task_id: task for task in tasks}
        for task in tasks:
            if not task.deps:
                ready.append(task)
                continue
            missing: set[str] = set()
            broken = False
            for dep in task.deps:
                found = self._look_up(dep, client_id, batch, kept)
                if found is _MISSING:
                    missing.add(dep)
                elif found is not _HELD:
                    broken = True
                    break
            if broken:  # ``dep`` cannot be had: why is ``found``
                if resend is not None:
                    resend.append((task, dep))
                else:
                    failed.append(_failed(task, dep, found))
                continue
            for dep in task.deps:
                self.dependents.setdefault(dep, set()).add(task.task_id)
            if missing:
                task.state = TaskState.WAITING
                self.waiting[task.task_id] = (task, missing)
            else:
                self._give_inputs(task)
                ready.append(task)
        self._forget_unused(dep for task in tasks for dep in task.deps or ())
        return ready, failed

    def _look_up(
        self, dep: str, client_id: str, batch: dict[str, TaskRecord], kept: Kept
    ) -> str | None:
        """Where input ``dep`` of a task of ``client_id`` stands: ``_HELD`` (its result is
        here), ``_MISSING`` (it has not finished), or why it cannot be had: "failed", or None
        for unknown (or another application's)."""
        if dep in self.held:
            owner = self.scattered.get(dep)
            return _HELD if owner is None or owner == client_id else None
        if self.kept.entries:
            ref = self.kept.ref(dep, client_id)
            if ref is False:
                return _MISSING  # being made again
            if ref is LOST:
                return LOST
            if ref is not None:
                self.held[dep] = ref
                return _HELD
        record = self.scheduler.tasks.get(dep) or batch.get(dep)
        waiting = self.waiting.get(dep)
        if waiting is not None:
            record = waiting[0]
        if record is not None:
            return _MISSING if record.client_id == client_id else None
        outcome = kept.get(dep)
        if outcome is None:
            return None
        if not outcome[0]:
            return "failed"
        self.held[dep] = outcome[1]
        return _HELD

    def _give_inputs(self, task: TaskRecord) -> None:
        task.inputs = [(dep, self.held[dep]) for dep in task.deps or ()]

    # -- outcomes going out --------------------------------------------------------------------

    def settle(self, outcomes: list[Outcome]) -> tuple[list[Outcome], list[TaskRecord]]:
        """Outcomes on their way out (``MasterCore.deliver``): returns them with the outcomes
        of the waiting tasks they fail (and of those these fail in turn), and the tasks they
        made ready to queue."""
        if not self.dependents:
            return outcomes, []
        ready: list[TaskRecord] = []
        everything = list(outcomes)
        todo = outcomes
        while todo:
            failed: list[Outcome] = []
            for task, ok, data in todo:
                if task.deps:
                    self._done_with(task)
                takers = self.dependents.get(task.task_id)
                if not takers:
                    continue
                if ok:
                    self.held[task.task_id] = data
                for taker_id in list(takers):
                    entry = self.waiting.get(taker_id)
                    if entry is None:
                        continue
                    taker, missing = entry
                    if not ok:
                        del self.waiting[taker_id]
                        taker.state = TaskState.FAILED
                        how = "failed" if len(data) else "was cancelled"
                        failed.append(_failed(taker, task.task_id, how, task.name))
                        continue
                    missing.discard(task.task_id)
                    if not missing:
                        del self.waiting[taker_id]
                        self._give_inputs(taker)
                        ready.append(taker)
                if not ok:
                    self._forget_unused([task.task_id])
            everything.extend(failed)
            todo = failed
        return everything, ready

    def _done_with(self, task: TaskRecord) -> None:
        """``task`` ended (whatever its outcome): it no longer takes its inputs."""
        for dep in task.deps or ():
            takers = self.dependents.get(dep)
            if takers is not None:
                takers.discard(task.task_id)
        self._forget_unused(task.deps or ())
        task.inputs = None

    def _forget_unused(self, deps: Iterable[str]) -> None:
        for dep in deps:
            takers = self.dependents.get(dep)
            if takers is not None and not takers:
                del self.dependents[dep]
            if dep not in self.dependents and dep not in self.scattered:
                held = self.held.pop(dep, None)
                if type(held) is KeptRef or dep in self.kept.entries:
                    self.kept.check(dep)
                elif type(held) is Scattered and held.placed:
                    self.kept.drop_copies(dep, held.placed)

    # -- scattered data ----------------------------------------------------------------------------

    def scatter(self, data_id: str, client_id: str, data: Any) -> str | None:
        """Keep data an application put on the cluster; the reason it cannot, or None."""
        if data_id in self.held or data_id in self.scheduler.tasks or data_id in self.waiting:
            return f"data id {data_id} is already in use"
        self.held[data_id] = Scattered(data)
        self.scattered[data_id] = client_id
        return None

    def forget(self, data_ids: Iterable[str], client_id: str) -> None:
        """Its application no longer refers to this data: gone once no task takes it."""
        data_ids = list(data_ids)
        forgotten = [d for d in data_ids if self.scattered.get(d) == client_id]
        for data_id in forgotten:
            del self.scattered[data_id]
        self._forget_unused(forgotten)
        if self.kept.entries:
            self.kept.forget(data_ids, client_id)

    def forget_client(self, client_id: str) -> None:
        """An application left: its scattered data goes (once no task takes it), and so do
        the results kept for it."""
        self.forget([d for d, owner in self.scattered.items() if owner == client_id], client_id)
        if self.kept.entries:
            self.kept.forget_client(client_id)

    # -- kept results lost and made again ------------------------------------------------------

    def readmit(self, task: TaskRecord, inputs: list[tuple[str, object]]) -> None:
        """Run a task again to make a lost result (``KeptResults.need``): its inputs by
        value are held again, its kept ones waited for if they are being made again too."""
        for dep, data in inputs:
            self.dependents.setdefault(dep, set()).add(task.task_id)
            if data is not None:
                self.held.setdefault(dep, data)
        self._queue_or_wait(task)

    def _queue_or_wait(self, task: TaskRecord) -> None:
        """Queue a task whose inputs are all here; else hold it back for the missing ones."""
        missing = set()
        for dep in task.deps or ():
            entry = self.kept.entries.get(dep)
            if entry is None:
                continue  # held by value
            if entry.ref is None:
                missing.add(dep)
            else:
                self.held[dep] = entry.ref
        task.inputs = None
        if missing:
            task.state = TaskState.WAITING
            self.waiting[task.task_id] = (task, missing)
        else:
            self._give_inputs(task)
            self.scheduler.push_tasks([task])

    def slave_lost(self, slave_id: str) -> list[Outcome]:
        """A slave is gone with the results it kept: those still needed are made again, the
        tasks queued to take them wait for them; returns the outcomes of what fails because
        one cannot be made again."""
        if not self.kept.entries:
            return []
        return self._lost(self.kept.slave_lost(slave_id))

    def input_lost(self, task: TaskRecord, dep: str) -> list[Outcome]:
        """A slave could not fetch ``task``'s input ``dep`` (it came back unrun): made again
        if it was where the task was told, and the task waits for it."""
        sent = dict(task.inputs or ()).get(dep)
        if type(sent) is Scattered:
            sent.placed.discard(task.slave_id or "")  # it had no copy after all
        entry = self.kept.entries.get(dep)
        self.scheduler.requeue(task)  # back from its slave, pulled back just below
        if entry is not None and entry.ref is not None and entry.ref is sent:
            self.kept.input_lost(dep)
        return self._lost([dep], also=[task])

    def _lost(self, lost: list[str], also: Iterable[TaskRecord] = ()) -> list[Outcome]:
        if not lost:
            return []
        pulled = list(also)
        tasks = self.scheduler.tasks
        for dep in lost:
            for taker_id in self.dependents.get(dep, ()):
                taker = tasks.get(taker_id)
                if taker is not None and taker.state == TaskState.QUEUED and taker not in pulled:
                    pulled.append(taker)
        for taker in pulled:
            self.scheduler.cancel(taker.task_id)  # its queue entry is skipped from now on
            self._queue_or_wait(taker)
        failed: list[Outcome] = []
        for dep in lost:
            if not self.kept.need(dep):
                failed.extend(self._lost_for_good(dep))
        return failed

    def _lost_for_good(self, dep: str) -> list[Outcome]:
        entry = self.kept.entries.get(dep)
        name = entry.record.name if entry is not None else ""
        how = "was lost with its slave and cannot be made again (an input it took was let go)"
        outcomes: list[Outcome] = []
        for taker_id in list(self.dependents.get(dep, ())):
            held = self.waiting.pop(taker_id, None)
            if held is not None:
                held[0].state = TaskState.FAILED
                outcomes.append(_failed(held[0], dep, how, name))
        if entry is not None and entry.wanted:
            error = TaskError(f"the result of task {name!r} ({dep}) {how}; submit it again")
            outcomes.append((entry.record, False, failure(error)))
        return outcomes

    # -- cancelling ----------------------------------------------------------------------------

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Forget a waiting task (cancelled); its record, or None if it was not waiting."""
        entry = self.waiting.pop(task_id, None)
        if entry is None:
            return None
        task = entry[0]
        task.state = TaskState.CANCELLED
        self._done_with(task)
        return task

    def cancelled(self, task: TaskRecord) -> list[Outcome]:
        """A task was cancelled with no outcome to deliver: the outcomes of the waiting tasks
        that took it (failed with ``DependencyError``), and of those that took these."""
        if task.task_id not in self.dependents:
            return []
        outcomes, _ = self.settle([(task, False, b"")])
        return outcomes[1:]

    def drop_system(self, system_id: str) -> None:
        """A task system ended: its tasks waiting here go (as ``scheduler.drop_system``'s)."""
        for task_id in [t for t, (task, _) in self.waiting.items() if task.system_id == system_id]:
            self.cancel(task_id)

    def of_client(self, client_id: str) -> list[str]:
        return [t for t, (task, _) in self.waiting.items() if task.client_id == client_id]

    def sweep(self, live: Callable[[str], bool]) -> None:
        """Once a heartbeat: drop takers that ended by a road that did not pass ``settle`` (a
        cancellation its owner asked for has no outcome to deliver)."""
        for dep in list(self.dependents):
            takers = self.dependents[dep]
            takers.intersection_update([t for t in takers if t in self.waiting or live(t)])
        self._forget_unused(list(self.dependents))


def _failed(task: TaskRecord, dep: str, how: str | None, dep_name: str = "") -> Outcome:
    """The outcome of a task that cannot run: an input failed, or the master does not know it."""
    named = f"task {dep} ({dep_name!r})" if dep_name else f"task {dep}"
    if how is None:
        text = (
            f"task {task.name!r} did not run: its input, {named}, is not known to the master "
            "(the master restarted without its state directory, or that task's outcome was "
            "collected and let go before this task was sent); pass the input's result instead "
            "of its Future"
        )
    else:
        text = f"task {task.name!r} did not run: its input, {named}, {how}"
    return task, False, failure(DependencyError(text, dependency=dep))
