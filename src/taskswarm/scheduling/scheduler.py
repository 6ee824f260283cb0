"""The bookkeeping every scheduler shares: the global queue, the task records, the slaves.

A task's life here is one state at a time: queued -> assigned (to one slave) -> done, failed or
cancelled; assigned goes back to queued when its slave is lost or gives it back (stolen for an
idle slave). ``result_arrived`` is the single place a result is matched to its record, so a
result for a task that is no longer live (it was re-run elsewhere, or its task system completed)
is recognised and dropped exactly once.

The queue is ordered by priority, then arrival (``TaskQueue``). Tasks that need resources go
only to a slave with that much free; while none has, they wait without holding up the tasks
behind them, and one that no live slave could ever run fails after ``resource_wait`` seconds.
Every change to a slave goes through ``refresh``, which keeps the *ready* slaves (active, with
room) indexed for the strategy, so choosing a slave never scans them all.

A slave that asks to hold many tasks (its ``want`` is above ``workers x prefetch``: its tasks
take microseconds) is only ready again once it has room for a *batch*, a ``BATCH_SHARE``-th of
its want, and is then filled in that turn as far as the queue allows: each TASKS message it gets
carries many tasks however many slaves share the queue, instead of the few its last RESULTS
freed. It still holds three quarters of its want meanwhile, so its workers never wait; an idle
slave, or one whose workers are not all busy, is ready whatever its room. Such a slave, once
chosen for a task, takes the tasks behind it too, up to a batch or ``STEAL_MIN_BACKLOG`` of
its work at its pace (less than stealing would move), and no more than a fair share of the
queue among the ready slaves: a stream of short tasks is not spread one task per message over
every slave, nor a short queue of longer ones piled on one slave whose pace is that of earlier,
shorter tasks.

One class, over 400 lines, on purpose: every change of a task's state happens in it, so the
invariant above (one state at a time, one match of each result) can be checked by reading one
place; the pieces that are not state changes live apart (``queue``, ``ready``, ``records``).
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from ..api import ITaskScheduler
from ..stats import Measure
from .contracts import MasterView, SchedulerBase, StrategyContract, WatchesSlaves
from .queue import TaskQueue
from .ready import ReadySet
from .records import NodeState, SlaveRecord, TaskRecord, TaskState

__all__ = ["BaseScheduler"]

#: Most tasks needing resources that one dispatch sets aside while looking past them.
MAX_SET_ASIDE = 256
#: A slave is asked for tasks back only if those it holds beyond its workers are this much work.
STEAL_MIN_BACKLOG = 0.02
#: Seconds between two looks for idle slaves, and how long a steal request may go unanswered.
STEAL_INTERVAL = 0.05
STEAL_PATIENCE = 1.0
#: A look for work to steal walks every slave: the next look waits at least this many times as
#: long as the last took, so with thousands of slaves looking costs the loop at most ~1 %.
STEAL_LOOK_SHARE = 100
#: A slave that asks for more than ``workers x prefetch`` tasks is sent them at least a
#: ``BATCH_SHARE``-th of its want at a time (see the module docstring).
BATCH_SHARE = 4

#: A task's resource needs as a hashable key, ``(name, amount)`` pairs in name order.
NeedsKey = tuple[tuple[str, float], ...]


class BaseScheduler(SchedulerBase, ITaskScheduler):
    """Subclasses say how much a slave can take (``capacity``); the rest is common.

    Implements ``contracts.SchedulerContract`` (what the master calls) and the seed's
    ``ITaskScheduler``; its strategy is any ``contracts.StrategyContract``.
    """

    name = "base"

    def __init__(self, strategy: StrategyContract, prefetch: int = 2) -> None:
        self.strategy = strategy
        self.prefetch = max(1, prefetch)
        self.queue = TaskQueue()
        self.tasks: dict[str, TaskRecord] = {}
        self.slaves: dict[str, SlaveRecord] = {}
        self.ready = ReadySet()
        self.systems: set[str] = set()
        self.master: MasterView | None = None
        #: Give idle slaves tasks that busy ones hold beyond what their workers are running.
        self.stealing = True
        #: Seconds a task may wait for resources no live slave has before it fails (inf: never).
        self.resource_wait = 10.0
        #: Tasks that failed for want of resources, for the master to report to their owners.
        self.unsatisfiable: list[TaskRecord] = []
        self._outboxes: list[SlaveRecord] = []
        #: Tasks assigned so far (the master times dispatch per decision from it).
        self.decisions = 0
        #: How long tasks waited in the queue before their assignment.
        self.queue_wait = Measure()
        # The optional hook of a strategy that keeps an index of the ready slaves.
        self._changed = strategy.slave_changed if isinstance(strategy, WatchesSlaves) else None
        self._next_steal_look = 0.0
        self._next_resource_look = 0.0

    # -- ITaskScheduler ---------------------------------------------------------------------

    def setup(self, master: MasterView) -> None:
        self.master = master
        self.strategy.setup(self, master)

    def rate_slaves(self) -> None:
        for slave in self.slaves.values():
            self.refresh(slave)

    def start_system(self, task_system: Any) -> None:
        self.systems.add(getattr(task_system, "system_id", task_system))

    def push_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        for task in tasks:
            self.push_task(task)

    def push_task(self, task: TaskRecord) -> None:
        task.state = TaskState.QUEUED
        task.slave_id = None
        task.queued_at = time.monotonic()
        self.tasks[task.task_id] = task
        self.queue.append(task)

    def handle_task(self, task: TaskRecord) -> bool:
        slave = self.strategy.get_next_slave()
        if slave is None:
            self.queue.appendleft(task)
            return False
        self._assign(task, slave)
        return True

    def _tasked_pushed(self, slave_id: str) -> None:
        self.refresh(self.slaves[slave_id])

    def task_finished(self, task: TaskRecord, result: Any = None, error: Any = None) -> None:
        task.state = TaskState.DONE if error is None else TaskState.FAILED
        slave = self.slaves.get(task.slave_id or "")
        if slave is None:
            return
        self._unhold(slave, task)
        if error is None:
            slave.done += 1
        else:
            slave.failed += 1
        self.refresh(slave)

    # -- what the master calls ---------------------------------------------------------------

    def capacity(self, slave: SlaveRecord) -> int:
        """How many more tasks ``slave`` may be sent now."""
        raise NotImplementedError

    def batch(self, slave: SlaveRecord) -> int:
        """The fewest tasks worth a TASKS message to ``slave``: a ``BATCH_SHARE``-th of its want
        when it asks for more than ``workers x prefetch`` (short tasks), else 1."""
        want = slave.want
        if want <= slave.workers * self.prefetch:
            return 1
        return max(1, want // BATCH_SHARE)

    def handout(self, slave: SlaveRecord) -> int:
        """How many tasks in a row ``slave`` takes once chosen: up to a batch (``batch``) of
        those it runs in ``STEAL_MIN_BACKLOG`` seconds at its pace; 1 while its pace is not
        known or it takes tasks one by one."""
        batch, pace = self.batch(slave), slave.pace
        if batch == 1 or pace <= 0.0:
            return 1
        return max(1, min(batch, int(slave.workers * STEAL_MIN_BACKLOG / pace)))

    def is_ready(self, slave: SlaveRecord) -> bool:
        if slave.state != NodeState.ACTIVE or self.slaves.get(slave.slave_id) is not slave:
            return False
        room = self.capacity(slave)
        return room > 0 and (
            room >= self.batch(slave)
            or bool(slave.outbox)  # being filled this turn: fill it
            or len(slave.in_flight) < slave.workers  # a worker would wait
        )

    def refresh(self, slave: SlaveRecord) -> None:
        """Re-rate a slave after anything about it changed, and keep the ready set right."""
        slave.rating = self.strategy.rate(slave)
        if self.is_ready(slave):
            self.ready.add(slave)
        else:
            self.ready.discard(slave.slave_id)
        if self._changed is not None:
            self._changed(slave)

    def eligible_slaves(self) -> list[SlaveRecord]:
        """The slaves that can take a task now (what a strategy chooses among)."""
        return list(self.ready)

    def dispatch(self) -> None:
        """Hand queued tasks to slaves until the queue is empty or no slave can take more.

        A task needing resources no ready slave has free is set aside and put back in its place
        afterwards, so it holds up nothing behind it.
        """
        aside: list[TaskRecord] = []
        fits_somewhere: dict[NeedsKey, bool] = {}
        while self.queue and len(self.ready):
            task = self.queue.popleft()
            if task.state != TaskState.QUEUED:
                continue  # cancelled while queued: its record is already gone
            if task.resources:
                slave = self._fitting_slave(task)
                if slave is not None:
                    self._assign(task, slave)
                elif not self._unsatisfiable(task, fits_somewhere):
                    aside.append(task)
                    if len(aside) >= MAX_SET_ASIDE:
                        break
            elif task.inputs is not None and (holder := self._holder(task)) is not None:
                self._assign(task, holder)
            elif not self.handle_task(task):
                break
            elif task.slave_id is not None:
                self._hand_more(self.slaves[task.slave_id])
        for task in reversed(aside):
            self.queue.appendleft(task)
        if self.queue and not len(self.ready):
            self._fail_unsatisfiable(fits_somewhere)

    def _assign(self, task: TaskRecord, slave: SlaveRecord) -> None:
        task.state = TaskState.ASSIGNED
        task.slave_id = slave.slave_id
        task.attempts += 1
        task.assigned_at = now = time.monotonic()
        self.decisions += 1
        wait, measure = now - task.queued_at, self.queue_wait  # inline: this runs per task
        measure.count += 1
        measure.total += wait
        if wait < measure.low:
            measure.low = wait
        if wait > measure.high:
            measure.high = wait
        slave.in_flight.add(task.task_id)
        if task.resources:
            slave.take(task.resources)
        if not slave.outbox:
            self._outboxes.append(slave)
        slave.outbox.append(task)
        self._tasked_pushed(slave.slave_id)

    def _holder(self, task: TaskRecord) -> SlaveRecord | None:
        """The ready slave that keeps the most bytes of the task's inputs, if it has room: a
        task runs where its inputs are rather than fetch them (results kept on slaves stand in
        ``task.inputs`` as references with ``slave_id`` and ``size``). A busy holder is passed
        over for whichever slave the strategy picks: waiting for it would cost more."""
        sizes: dict[str, int] = {}
        for _, data in task.inputs or ():
            slave_id = getattr(data, "slave_id", None)
            if slave_id is not None:
                sizes[slave_id] = sizes.get(slave_id, 0) + data.size
        if not sizes:
            return None
        slave = self.slaves.get(max(sizes, key=sizes.__getitem__))
        if slave is None or slave.slave_id not in self.ready or self.capacity(slave) <= 0:
            return None
        return slave

    def _hand_more(self, slave: SlaveRecord) -> None:
        """The slave just chosen takes the next queued tasks too, up to its ``handout`` and never
        more than a fair share of the queue among the slaves ready for it (its pace may be that
        of earlier, shorter tasks: a short queue of longer ones must not all go to one slave
        while others stand idle); a task with resource needs stops it (it goes where they fit)."""
        queue = self.queue
        share = -(-(len(queue) + 1) // max(1, len(self.ready)))  # this task and those behind it
        more = min(self.handout(slave), share) - 1
        while more > 0 and queue and self.capacity(slave) > 0:
            task = queue.popleft()
            if task.state != TaskState.QUEUED:
                continue  # cancelled while queued
            if task.resources:
                queue.appendleft(task)
                return
            self._assign(task, slave)
            more -= 1

    def _fitting_slave(self, task: TaskRecord) -> SlaveRecord | None:
        """The best rated ready slave with the task's resources free (a scan of the ready
        slaves that declared any resources: tasks with needs are expected to be few)."""
        needs = task.resources or {}
        best = None
        for slave in self.ready:
            if (
                slave.resources
                and slave.fits(needs)
                and (best is None or slave.rating < best.rating)
            ):
                best = slave
        return best

    def _unsatisfiable(self, task: TaskRecord, fits_somewhere: dict[NeedsKey, bool]) -> bool:
        """True (and the task is set aside to fail) when it has waited ``resource_wait``
        seconds and no live slave could ever run it; with no slave at all, tasks wait for one.
        ``fits_somewhere`` caches the answer per set of needs for one dispatch."""
        if time.monotonic() - task.queued_at < self.resource_wait:
            return False
        needs = task.resources or {}
        key = tuple(sorted(needs.items()))
        if key not in fits_somewhere:
            live = [s for s in self.slaves.values() if s.state != NodeState.LOST]
            fits_somewhere[key] = not live or any(s.could_ever_fit(needs) for s in live)
        if fits_somewhere[key]:
            return False
        task.state = TaskState.FAILED
        self.tasks.pop(task.task_id, None)
        self.unsatisfiable.append(task)
        return True

    def _fail_unsatisfiable(self, fits_somewhere: dict[NeedsKey, bool]) -> None:
        """With no slave ready, ``dispatch`` never reaches the tasks waiting for resources:
        look at them here, once a second at most (it walks the queue)."""
        now = time.monotonic()
        if math.isinf(self.resource_wait) or now < self._next_resource_look:
            return
        self._next_resource_look = now + 1.0
        if not self.queue.needy:
            return
        expired = [
            task
            for task in self.queue
            if task.resources
            and task.state == TaskState.QUEUED
            and now - task.queued_at >= self.resource_wait
        ]
        for task in expired[:MAX_SET_ASIDE]:
            self._unsatisfiable(task, fits_somewhere)

    def take_unsatisfiable(self) -> list[TaskRecord]:
        tasks, self.unsatisfiable = self.unsatisfiable, []
        return tasks

    def take_outboxes(self) -> list[tuple[SlaveRecord, list[TaskRecord]]]:
        """The tasks assigned since the last call, grouped per slave (one message each)."""
        batches = []
        for slave in self._outboxes:
            if slave.outbox:
                batches.append((slave, slave.outbox))
                slave.outbox = []
                self.refresh(slave)  # filled: ready again once it has room for a batch
        self._outboxes = []
        return batches

    # -- work stealing -----------------------------------------------------------------------

    def plan_steals(self) -> list[tuple[SlaveRecord, int]]:
        """Which slaves to ask for tasks back, and how many, so idle workers elsewhere get
        them: only when the queue is empty, only tasks beyond a slave's running ones (it picks
        them from those no worker has started), and only when they are real work (by the
        slave's pace), so a stream of tiny tasks never churns."""
        now = time.monotonic()
        if not self.stealing or self.queue or now < self._next_steal_look:
            return []
        plans = self._look_for_steals(now)
        took = time.monotonic() - now
        self._next_steal_look = now + max(STEAL_INTERVAL, STEAL_LOOK_SHARE * took)
        return plans

    def _look_for_steals(self, now: float) -> list[tuple[SlaveRecord, int]]:
        active = [s for s in self.slaves.values() if s.state == NodeState.ACTIVE]
        idle = sum(max(0, s.workers - len(s.in_flight)) for s in active)
        if not idle:
            return []
        victims = []
        for slave in active:
            surplus = len(slave.in_flight) - slave.workers
            backlog = surplus * slave.pace / max(1, slave.workers)
            if (
                surplus > 0
                and backlog >= STEAL_MIN_BACKLOG
                and slave.steal_until <= now
                # Tasks holding resources may fit nowhere else: they would come straight back.
                and not any(amount > 0 for amount in slave.used.values())
            ):
                victims.append((surplus, slave))
        plans = []
        for surplus, slave in sorted(victims, key=lambda v: -v[0]):
            count = min(surplus, idle)
            slave.steal_until = now + STEAL_PATIENCE
            plans.append((slave, count))
            idle -= count
            if not idle:
                break
        return plans

    def released(self, slave: SlaveRecord, task_ids: Iterable[str]) -> list[TaskRecord]:
        """A slave gave these back unstarted: straight to slaves with idle workers (never back
        to the one they came from), the rest to the front of the queue, in their order."""
        slave.steal_until = 0.0
        back = []
        now = time.monotonic()
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is None:
                slave.in_flight.discard(task_id)  # cancelled meanwhile: no result will come
                continue
            if task.slave_id != slave.slave_id or task.state != TaskState.ASSIGNED:
                continue  # moved meanwhile
            self._unhold(slave, task)
            task.state = TaskState.QUEUED
            task.slave_id = None
            task.queued_at = now
            back.append(task)
        slave.stolen += len(back)
        left = self._place_stolen(back, slave)
        for task in reversed(left):
            self.queue.appendleft(task)
        self.refresh(slave)
        return back

    def _place_stolen(self, tasks: list[TaskRecord], victim: SlaveRecord) -> list[TaskRecord]:
        """Give each task to the ready slave with the most idle workers; returns those left."""
        thieves = [s for s in self.ready if s is not victim and len(s.in_flight) < s.workers]
        left = []
        for task in tasks:
            idle = [s for s in thieves if len(s.in_flight) < s.workers and self.is_ready(s)]
            if task.resources:
                idle = [s for s in idle if s.resources and s.fits(task.resources)]
            if not idle:
                left.append(task)
                continue
            self._assign(task, max(idle, key=lambda s: s.workers - len(s.in_flight)))
        return left

    # -- results and recovery ----------------------------------------------------------------

    def result_arrived(self, slave_id: str | None, task_id: str) -> TaskRecord | None:
        """Match a result to its live record and retire it; None for a stale or duplicate one."""
        slave = self.slaves.get(slave_id or "")
        task = self.tasks.pop(task_id, None)
        if task is None:
            if slave is not None and task_id in slave.in_flight:
                slave.in_flight.discard(task_id)  # its system completed while it ran
                self.refresh(slave)
            return None
        if task.slave_id is None and slave is not None:
            task.slave_id = slave.slave_id  # a late result from a slave that was lost
        return task

    def requeue(self, task: TaskRecord) -> None:
        """Run a task again (its worker crashed, or it asked for a retry): back of the queue."""
        slave = self.slaves.get(task.slave_id or "")
        if slave is not None:
            self._unhold(slave, task)
            self.refresh(slave)
        self.push_task(task)

    @staticmethod
    def _unhold(slave: SlaveRecord, task: TaskRecord) -> None:
        """The slave no longer holds the task: its slot and resources are free again (only if
        it held it: a late result may be credited to a slave that registered again)."""
        if task.task_id in slave.in_flight:
            slave.in_flight.discard(task.task_id)
            if task.resources:
                slave.take(task.resources, -1)

    def reclaim_missing(
        self, slave: SlaveRecord, held: set[str], sent_before: float
    ) -> list[TaskRecord]:
        """Requeue tasks sent to ``slave`` before ``sent_before`` that it says it does not hold.

        A message can be lost where the transport gives no guarantee (a connection dropped and
        made again): without this, such a task would stay "assigned" to a live slave forever.
        """
        missing = []
        for task_id in list(slave.in_flight):
            task = self.tasks.get(task_id)
            if task is not None and task_id not in held and task.assigned_at < sent_before:
                missing.append(task)
                self.requeue(task)
        return missing

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Forget a live task; if it was assigned, its slave still holds it until told."""
        task = self.tasks.pop(task_id, None)
        if task is not None:
            self._give_back_resources(task)
            task.state = TaskState.CANCELLED
        return task

    def _give_back_resources(self, task: TaskRecord) -> None:
        if task.resources and task.state == TaskState.ASSIGNED:
            slave = self.slaves.get(task.slave_id or "")
            if slave is not None:
                slave.take(task.resources, -1)
                self.refresh(slave)

    def assign_held(self, slave: SlaveRecord, task_ids: list[str]) -> None:
        """A (re)registering slave still holds these: leave them with it instead of re-running."""
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if task is not None and task.state == TaskState.QUEUED:
                task.state = TaskState.ASSIGNED  # its queue entry is skipped by dispatch
                task.slave_id = slave.slave_id
                slave.in_flight.add(task_id)
                if task.resources:
                    slave.take(task.resources)
        self.refresh(slave)

    def add_slave(self, slave: SlaveRecord) -> None:
        self.slaves[slave.slave_id] = slave
        self.refresh(slave)

    def remove_slave(self, slave_id: str) -> list[TaskRecord]:
        """Forget a slave and put its tasks back at the head of the queue, in their order."""
        slave = self.slaves.pop(slave_id, None)
        if slave is None:
            return []
        self.ready.discard(slave_id)
        if self._changed is not None:
            self._changed(slave)
        requeued = [t for t in self.tasks.values() if t.task_id in slave.in_flight]
        now = time.monotonic()
        for task in reversed(requeued):
            task.state = TaskState.QUEUED
            task.slave_id = None
            task.queued_at = now  # a task needing resources gets its full wait for a new slave
            self.queue.appendleft(task)
        return requeued

    def drop_system(self, system_id: str) -> list[TaskRecord]:
        """Forget a finished system's leftover tasks; returns them (assigned ones need
        cancelling on their slaves, whose results will be ignored meanwhile)."""
        self.systems.discard(system_id)
        dropped = [t for t in self.tasks.values() if t.system_id == system_id]
        for task in dropped:
            del self.tasks[task.task_id]
            self._give_back_resources(task)
            task.state = TaskState.CANCELLED
        return dropped

    def counts(self) -> dict[str, int]:
        states = Counter(task.state for task in self.tasks.values())
        return {"queued": states[TaskState.QUEUED], "assigned": states[TaskState.ASSIGNED]}
