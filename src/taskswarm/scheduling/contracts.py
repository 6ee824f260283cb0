"""What the master needs of a scheduler, and what a scheduler's strategy is asked: as Protocols.

The seed's ``ITaskScheduler`` and ``ITaskScheduleStrategy`` (``taskswarm.api``) are the seed's
user-facing interfaces, kept with its names. They are not what the master calls: the master
hands a scheduler its records, asks it to ``dispatch`` every turn of its loop, sends what landed
in each slave's outbox, and tells it of every result, lost slave and cancellation. This module
states that contract exactly, so that a scheduler from another package can be written against
it alone::

    master --load_plugin("taskswarm.schedulers", NAME)(strategy, prefetch)--> SchedulerContract
    master loop: dispatch -> take_unsatisfiable -> take_outboxes -> plan_steals  (every turn)
    slave REGISTER / heartbeat / RESULTS / RELEASED -> add_slave, assign_held, refresh,
        reclaim_missing, result_arrived, task_finished, requeue, released, remove_slave
    applications and task systems -> push_tasks, cancel, start_system, drop_system

Everything here runs on the master's loop thread: a scheduler needs no locks, and must never
block (no sockets, no sleeps). It works on the master's records (``records.TaskRecord``,
``records.SlaveRecord``); the master creates them and reads some of their fields, which the
scheduler keeps right (see ``SchedulerContract``).

``SchedulerBase`` gives the members a simple scheduler has no use for (work stealing, an
engine, resources that never fit) documented defaults; the in-tree schedulers
(``scheduler.BaseScheduler`` and its subclasses) derive from it and from ``ITaskScheduler``.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..stats import Measure
from .records import TaskState

if TYPE_CHECKING:
    from .records import SlaveRecord, TaskRecord

__all__ = [
    "MasterView",
    "SchedulerBase",
    "SchedulerContract",
    "SchedulerFactory",
    "StrategyContract",
    "StrategyHost",
    "WatchesSlaves",
]


class MasterView(Protocol):
    """What a scheduler (and its strategy) may read of the master it is set up with: nothing
    else, so the master can change behind it. The in-tree schedulers read none of it; one that
    runs tasks elsewhere (the engine schedulers) connects a node of its own with these."""

    @property
    def scheduler_options(self) -> Mapping[str, str]:
        """``--scheduler-option KEY=VALUE`` as given; the master does not interpret them."""
        ...

    @property
    def address(self) -> str:
        """Where the master's nodes connect (``tcp://HOST:PORT``)."""
        ...

    @property
    def keys(self) -> Any:
        """The cluster's keys (``protocol.keys.ClusterKeys``): a node of the scheduler's own
        signs with them, as the master's own part."""
        ...

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between the master's heartbeats; a node of the scheduler's beats as often."""
        ...

    @property
    def max_message_bytes(self) -> int:
        """The largest message the master accepts."""
        ...


@runtime_checkable
class SchedulerContract(Protocol):
    """Everything the master calls on its scheduler, and when.

    A scheduler keeps the global queue and the live task records (queued or assigned to a
    slave) and decides which slave gets each queued task. The master builds it by name through
    the ``taskswarm.schedulers`` entry points (see ``SchedulerFactory``), and every call
    comes from the master's single loop thread.

    The records are the master's: it creates them (``TaskRecord`` from what applications and
    task systems send, ``SlaveRecord`` when a slave registers) and reads these fields, which the
    scheduler keeps up to date: a task's ``state`` (``records.TaskState``), ``slave_id`` (the
    slave holding it, None while queued) and ``assigned_at`` (``time.monotonic()`` when it was
    last sent); a slave's ``in_flight`` (ids of the tasks it holds) and ``rating`` (shown in
    ``status``). A slave's ``state``, ``workers``, ``credit``, ``want``, ``pace`` and
    ``resources`` are set by the master from what the slave says; the scheduler reads them.

    ``taskswarm.api.ITaskScheduler`` is the seed's interface for the same part; a class may
    implement both, as the in-tree ones do, but only this contract is needed to plug in.
    """

    @property
    def tasks(self) -> Mapping[str, TaskRecord]:
        """The live tasks by id: queued or assigned, not yet finished, failed or cancelled.
        The master looks tasks up here (duplicates of a re-sent batch, ``Future.running()``,
        the HTTP API's task list) and never changes it."""
        ...

    @property
    def slaves(self) -> Mapping[str, SlaveRecord]:
        """The registered slaves by id (not the lost ones). The master walks it for heartbeats
        and looks slaves up to send them messages; only ``add_slave``/``remove_slave`` change
        it."""
        ...

    @property
    def decisions(self) -> int:
        """Tasks assigned so far, a running count: the master times ``dispatch`` per
        decision."""
        ...

    #: Set by the master from ``--stealing``: whether ``plan_steals`` may plan anything.
    stealing: bool
    #: Set by the master from ``--resource-wait``: seconds a task may wait for resources no
    #: live slave has before it is given up (``take_unsatisfiable``); ``math.inf``: never.
    resource_wait: float
    #: Set by the master to its ``queue_wait_seconds`` measure: the scheduler adds how long each
    #: task waited in the queue before it was assigned (``status()["stats"]``).
    queue_wait: Measure

    @property
    def options(self) -> Collection[str]:
        """The scheduler options (``--scheduler-option KEY=VALUE``) this scheduler reads, in
        ``setup``, from ``master.scheduler_options`` (a mapping of str to str). The master does
        not interpret them; it refuses a key the scheduler does not name here, so a misspelt
        option is an error rather than ignored. Read once, as the master starts."""
        ...

    def setup(self, master: MasterView) -> None:
        """Bind the scheduler to its master, once, before any other call (the in-tree ones pass
        the master on to their strategy's ``setup``). ``MasterView`` says what it may read:
        its options in ``scheduler_options``, and, for one that runs tasks elsewhere, where
        nodes connect and the keys they sign with."""
        ...

    def close(self) -> None:
        """The master is stopping: release whatever the scheduler holds (threads, connections).
        Called once, from the master's ``close``; must not raise."""
        ...

    # -- work coming in ---------------------------------------------------------------------

    def start_system(self, task_system: Any) -> None:
        """A task system (its id, a str) starts running on the master; its tasks will come
        through ``push_tasks``. Called before any of them."""
        ...

    def push_tasks(self, tasks: Iterable[TaskRecord]) -> None:
        """Queue new tasks, in order (applications' batches, task systems' tasks, the journal's
        at start): each becomes ``TaskState.QUEUED`` with ``slave_id`` None and is listed in
        ``tasks``. Nothing is sent until ``dispatch``."""
        ...

    def dispatch(self) -> None:
        """Assign queued tasks to slaves that can take them, as many as fit: called at the end
        of every turn of the master's loop. Each assigned task becomes ``TaskState.ASSIGNED``
        with its ``slave_id`` and ``assigned_at`` set, is added to its slave's ``in_flight``
        and waits to be collected by ``take_outboxes``; count each in ``decisions``. Only
        slaves whose ``state`` is ``NodeState.ACTIVE`` may be given tasks."""
        ...

    def take_outboxes(self) -> list[tuple[SlaveRecord, list[TaskRecord]]]:
        """The tasks assigned since the last call, grouped per slave, each group in the order
        the slave should run them; the master sends each group as one message right after
        ``dispatch``. Each assignment is returned exactly once."""
        ...

    def take_unsatisfiable(self) -> list[TaskRecord]:
        """Tasks given up since the last call because they need resources no live slave could
        ever offer (after ``resource_wait``): already gone from ``tasks``, marked
        ``TaskState.FAILED``; the master fails each with ``ResourceUnavailable``."""
        ...

    # -- slaves --------------------------------------------------------------------------------

    def add_slave(self, slave: SlaveRecord) -> None:
        """A slave registered (``state`` is ``NodeState.PENDING`` until its first heartbeat).
        A slave registering again under the same id was removed just before."""
        ...

    def assign_held(self, slave: SlaveRecord, task_ids: list[str]) -> None:
        """A slave that just registered (again) still holds these tasks: those still queued
        here are assigned to it instead of being sent anywhere (no outbox entry), so a master
        that restarted does not run them twice. Ids not in ``tasks`` are ignored."""
        ...

    def refresh(self, slave: SlaveRecord) -> None:
        """Something about the slave changed (its state, workers, credit, want or pace, from a
        heartbeat or a results message): re-rate it and note whether it can take tasks now."""
        ...

    def reclaim_missing(
        self, slave: SlaveRecord, held: set[str], sent_before: float
    ) -> list[TaskRecord]:
        """The slave says it holds ``held``: every task assigned to it before ``sent_before``
        (monotonic) that it does not hold was lost on the way; queue it again and return it."""
        ...

    def remove_slave(self, slave_id: str) -> list[TaskRecord]:
        """The slave is lost or gone: forget it, queue the tasks it held again (at the front,
        in their order) and return them. Unknown ids return ``[]``."""
        ...

    # -- results ------------------------------------------------------------------------------

    def result_arrived(self, slave_id: str | None, task_id: str) -> TaskRecord | None:
        """A slave (None: one no longer registered) reports an outcome for ``task_id``: remove
        the live record from ``tasks`` and return it, or return None when the task is no longer
        live (a duplicate, cancelled, or its system completed), in which case the outcome is
        dropped. The single place a result meets its record, so each is delivered once."""
        ...

    def task_finished(self, task: TaskRecord, result: Any, error: Any) -> None:
        """The record returned by ``result_arrived`` is done (``error`` None) or failed
        (``error`` is the slave's status string): free its place on its slave. ``result`` is
        always None here: the master never unpickles plain tasks' outcomes."""
        ...

    def requeue(self, task: TaskRecord) -> None:
        """Run a task again (it raised and may retry, or it killed its worker): the record came
        from ``result_arrived``; free its place on its slave and queue it at the back."""
        ...

    def cancel(self, task_id: str) -> TaskRecord | None:
        """Forget a live task (an application cancelled it): remove it from ``tasks``, mark it
        ``TaskState.CANCELLED`` and return it (None if not live). An assigned one keeps its
        ``slave_id``: the master tells that slave, and ``result_arrived`` drops its outcome."""
        ...

    def drop_system(self, system_id: str) -> list[TaskRecord]:
        """A task system completed: forget its live tasks as ``cancel`` does and return them
        (the master cancels the assigned ones on their slaves)."""
        ...

    # -- work stealing --------------------------------------------------------------------------

    def plan_steals(self) -> list[tuple[SlaveRecord, int]]:
        """Slaves to ask for unstarted tasks back, and how many each, for idle slaves elsewhere:
        called every turn (so it should decide cheaply, and rarely); ``[]`` when ``stealing``
        is off. Each slave answers with the tasks it gave back, through ``released``."""
        ...

    def released(self, slave: SlaveRecord, task_ids: Iterable[str]) -> list[TaskRecord]:
        """A slave gave these tasks back unstarted (asked by ``plan_steals``, or of its own
        accord): those still assigned to it are queued again (or assigned elsewhere at once)
        and returned; the others moved meanwhile and are ignored."""
        ...

    # -- status ---------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """``{"queued": N, "assigned": M}`` over the live tasks, for ``status``."""
        ...


@runtime_checkable
class SchedulerFactory(Protocol):
    """How the master makes a scheduler: the class an entry point of ``taskswarm.schedulers``
    names is called with the strategy (built from ``--strategy``, with no arguments) and the
    tasks a slave may hold per worker (``--prefetch``). A scheduler that chooses slaves its own
    way may ignore the strategy."""

    def __call__(self, strategy: StrategyContract, prefetch: int) -> SchedulerContract: ...


@runtime_checkable
class StrategyContract(Protocol):
    """What the in-tree schedulers ask of a schedule strategy: exactly the seed's
    ``taskswarm.api.ITaskScheduleStrategy``, whose three methods a strategy from another package
    implements (the class is named by an entry point of ``taskswarm.strategies`` and built with
    no arguments). A strategy that also has ``slave_changed`` (``WatchesSlaves``) is told
    of every change, so it can keep an index instead of scanning."""

    def setup(self, scheduler: Any, master: MasterView) -> None:
        """Called once by the scheduler's ``setup``: the scheduler (see ``StrategyHost``
        for what a strategy may use of it) and the master (see ``MasterView``)."""
        ...

    def rate(self, slave: SlaveRecord) -> float:
        """The slave's rating, lower is better (``math.inf``: it can take nothing): called
        whenever something about the slave changed; stored in ``slave.rating``."""
        ...

    def get_next_slave(self) -> SlaveRecord | None:
        """The slave that gets the next queued task, chosen among those that can take one now
        (``scheduler.eligible_slaves()``); None when none can."""
        ...


@runtime_checkable
class WatchesSlaves(Protocol):
    """A strategy's optional hook: the scheduler calls ``slave_changed`` after every re-rating
    and whenever a slave is added or removed, so the strategy can keep an index of the ready
    slaves (``taskswarm.scheduling.strategies.BaseStrategy`` has it, doing nothing)."""

    def slave_changed(self, slave: SlaveRecord) -> None:
        """The slave was just re-rated, or removed; ask ``scheduler.is_ready(slave)``."""
        ...


@runtime_checkable
class StrategyHost(Protocol):
    """What a strategy may use of the in-tree schedulers (``scheduler.BaseScheduler``)."""

    @property
    def slaves(self) -> Mapping[str, SlaveRecord]:
        """The registered slaves by id, ready or not."""
        ...

    def is_ready(self, slave: SlaveRecord) -> bool:
        """Whether the slave is active and has room for one more task now."""
        ...

    def eligible_slaves(self) -> list[SlaveRecord]:
        """Every slave that can take a task now."""
        ...


class SchedulerBase:
    """Documented defaults for the members of ``SchedulerContract`` a simple scheduler
    has no use for; a scheduler from another package may inherit them and write the rest.

    The defaults: no options (``options`` empty), nothing to ``close``, ``setup`` keeps the
    master as ``self.master``, ``start_system`` does nothing, no work stealing (``plan_steals``
    plans nothing; ``released`` queues the given-back tasks again through ``requeue``), and no
    task is ever given up for want of resources (``take_unsatisfiable`` is always empty). The
    attributes the master sets (``stealing``, ``resource_wait``, ``queue_wait``) and
    ``decisions`` start as class-level defaults.
    """

    options: frozenset[str] = frozenset()
    decisions: int = 0
    stealing: bool = False
    resource_wait: float = math.inf
    #: Replaced by the master's own measure before any task is queued.
    queue_wait: Measure = Measure()

    master: Any = None
    tasks: Mapping[str, TaskRecord]  # a subclass keeps its live tasks here

    def setup(self, master: MasterView) -> None:
        """Keep the master (``self.master``)."""
        self.master = master

    def close(self) -> None:
        """Nothing to release."""

    def start_system(self, task_system: Any) -> None:
        """Nothing to prepare: a system's tasks are queued like any others."""

    def take_unsatisfiable(self) -> list[TaskRecord]:
        """Never gives a task up: it waits for a slave that has what it needs."""
        return []

    def plan_steals(self) -> list[tuple[SlaveRecord, int]]:
        """No work stealing."""
        return []

    def released(self, slave: SlaveRecord, task_ids: Iterable[str]) -> list[TaskRecord]:
        """Queue again, through ``requeue``, each given-back task still assigned to ``slave``."""
        back = []
        for task_id in task_ids:
            task = self.tasks.get(task_id)
            if (
                task is not None
                and task.slave_id == slave.slave_id
                and task.state == TaskState.ASSIGNED
            ):
                self.requeue(task)
                back.append(task)
        return back

    def requeue(self, task: TaskRecord) -> None:
        """Required of a subclass (see ``SchedulerContract.requeue``); ``released`` uses it."""
        raise NotImplementedError
