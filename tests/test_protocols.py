"""The plugin contracts are the real ones: parts written against them alone run a cluster.

``taskswarm.scheduling.contracts.SchedulerContract`` is what the master calls on a scheduler,
``taskswarm.slave.contracts.TaskManagerContract`` what a slave calls on a task manager. This
test writes a package of its own holding a FIFO scheduler and a task manager that runs tasks
one at a time in a thread, each using only the contracts and their documented base classes
(``SchedulerBase``, ``TaskManagerBase``) -- nothing of the in-tree implementations -- and
registers them under entry points the way an installed package does: a ``*.dist-info`` folder
with an ``entry_points.txt`` beside the package, on PYTHONPATH (what pip would leave, made
without a build, so the test runs in seconds). A master and a slave started with
``--scheduler fifo --manager one-at-a-time`` then run plain tasks and a task system.

The in-tree implementations are checked against the same contracts: at runtime with
``isinstance`` (the Protocols are ``runtime_checkable``, which checks the members are there),
and statically by the annotated assignments below when a type checker reads this file.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import Nodes, importable, wait_for
from taskswarm.api import ITaskManager, ITaskScheduler
from taskswarm.engines.managers import DaskManager, RayManager
from taskswarm.engines.schedulers import DaskScheduler, RayScheduler
from taskswarm.plugins import available, load_plugin
from taskswarm.scheduling.contracts import (
    SchedulerContract,
    SchedulerFactory,
    StrategyContract,
    StrategyHost,
    WatchesSlaves,
)
from taskswarm.scheduling.pull import PullScheduler
from taskswarm.scheduling.push import PushScheduler
from taskswarm.scheduling.strategies import LoadStrategy, RoundRobinStrategy, TwoChoicesStrategy
from taskswarm.slave.contracts import TaskManagerContract
from taskswarm.slave.process_pool import ProcessPoolManager
from test_contract import SumOfSquares  # DESIGN.md's task system, as written there

pytestmark = pytest.mark.timeout(60)

PACKAGE = "fifo_plugins"
SCHEDULER = "fifo"
MANAGER = "one-at-a-time"
#: The name of the thread the third-party task manager runs tasks in.
RUNNER_THREAD = "one-at-a-time-runner"

MODULE = f'''\
"""A scheduler and a task manager written against taskswarm's documented contracts alone."""

import os
import queue
import threading
import time

from taskswarm.slave.contracts import TaskManagerBase
from taskswarm.scheduling.contracts import SchedulerBase
from taskswarm.scheduling.records import NodeState, TaskState
from taskswarm.task import Status, run_task_reporting


class FifoScheduler(SchedulerBase):
    """One queue, first in first out; each task to the active slave holding the fewest,
    never more than it has workers. No strategy, no stealing, no resources."""

    def __init__(self, strategy, prefetch=2):
        self.tasks = {{}}
        self.slaves = {{}}
        self.queued = {{}}  # task id -> record, in arrival order
        self.outboxes = {{}}  # slave id -> tasks assigned since take_outboxes
        self.decisions = 0

    def push_tasks(self, tasks):
        for task in tasks:
            task.state, task.slave_id = TaskState.QUEUED, None
            self.tasks[task.task_id] = task
            self.queued[task.task_id] = task

    def _has_room(self, slave):
        return slave.state == NodeState.ACTIVE and len(slave.in_flight) < max(1, slave.workers)

    def dispatch(self):
        while self.queued:
            ready = [slave for slave in self.slaves.values() if self._has_room(slave)]
            if not ready:
                return
            task = self.queued.pop(next(iter(self.queued)))
            self._assign(task, min(ready, key=lambda slave: len(slave.in_flight)))
            self.outboxes.setdefault(task.slave_id, []).append(task)

    def _assign(self, task, slave):
        task.state, task.slave_id = TaskState.ASSIGNED, slave.slave_id
        task.assigned_at = time.monotonic()
        slave.in_flight.add(task.task_id)
        self.decisions += 1
        self.refresh(slave)

    def _free(self, task):
        slave = self.slaves.get(task.slave_id or "")
        if slave is not None:
            slave.in_flight.discard(task.task_id)
            self.refresh(slave)

    def take_outboxes(self):
        outboxes, self.outboxes = self.outboxes, {{}}
        return [(self.slaves[s], tasks) for s, tasks in outboxes.items() if s in self.slaves]

    def add_slave(self, slave):
        self.slaves[slave.slave_id] = slave
        self.refresh(slave)

    def assign_held(self, slave, task_ids):
        for task_id in task_ids:
            task = self.queued.pop(task_id, None)
            if task is not None:
                self._assign(task, slave)

    def refresh(self, slave):
        slave.rating = len(slave.in_flight) / slave.workers if slave.workers else float("inf")

    def reclaim_missing(self, slave, held, sent_before):
        missing = [
            self.tasks[task_id]
            for task_id in list(slave.in_flight)
            if task_id in self.tasks
            and task_id not in held
            and self.tasks[task_id].assigned_at < sent_before
        ]
        for task in missing:
            self.requeue(task)
        return missing

    def remove_slave(self, slave_id):
        slave = self.slaves.pop(slave_id, None)
        if slave is None:
            return []
        back = [t for t in self.tasks.values() if t.task_id in slave.in_flight]
        for task in back:
            task.state, task.slave_id = TaskState.QUEUED, None
        self.queued = {{**{{t.task_id: t for t in back}}, **self.queued}}
        return back

    def result_arrived(self, slave_id, task_id):
        task = self.tasks.pop(task_id, None)
        if task is None:
            slave = self.slaves.get(slave_id or "")
            if slave is not None:
                slave.in_flight.discard(task_id)  # cancelled meanwhile
            return None
        return task

    def task_finished(self, task, result, error):
        task.state = TaskState.DONE if error is None else TaskState.FAILED
        self._free(task)

    def requeue(self, task):
        self._free(task)
        self.push_tasks([task])

    def cancel(self, task_id):
        task = self.tasks.pop(task_id, None)
        if task is not None:
            self.queued.pop(task_id, None)
            task.state = TaskState.CANCELLED
        return task

    def drop_system(self, system_id):
        mine = [t.task_id for t in self.tasks.values() if t.system_id == system_id]
        return [self.cancel(task_id) for task_id in mine]

    def counts(self):
        states = [task.state for task in self.tasks.values()]
        return {{"queued": states.count(TaskState.QUEUED),
                "assigned": states.count(TaskState.ASSIGNED)}}


class OneAtATimeManager(TaskManagerBase):
    """Runs the tasks it is pushed one after another in a thread of the slave's process; the
    thread wakes the slave's loop through a pipe, the one file descriptor it polls."""

    def __init__(self, workers=None):
        self.identity = ""
        self._todo = queue.SimpleQueue()  # work items for the thread; None: stop
        self._done = queue.SimpleQueue()  # outcomes from the thread
        self._results = queue.SimpleQueue()  # outcomes for the slave
        self._held = {{}}  # task id -> work item, pushed and not reported
        self._cancelled = set()
        self._wake_read, self._wake_write = os.pipe()
        self._thread = threading.Thread(target=self._run, name="{RUNNER_THREAD}", daemon=True)

    def init(self, identity, address):
        self.identity = identity

    def start(self):
        self._thread.start()

    def stop(self):
        if self._wake_read < 0:
            return
        if self._thread.is_alive():
            self._todo.put(None)
            self._thread.join()
        os.close(self._wake_read)
        os.close(self._wake_write)
        self._wake_read = self._wake_write = -1

    def get_num_workers(self):
        return 1

    def update_pool(self, _num_workers):
        pass  # one task at a time, always

    def fds(self):
        return [self._wake_read] if self._wake_read >= 0 else []

    def collect(self, fd):
        os.read(fd, 4096)
        while not self._done.empty():
            task_id, status, outcome, text = self._done.get_nowait()
            self._held.pop(task_id, None)
            if task_id in self._cancelled:
                self._cancelled.discard(task_id)
                status, outcome, text = Status.CANCELLED, b"", None
            self._results.put((task_id, status, outcome, text))

    def push_task(self, task):
        self._held[task.task_id] = task
        self._todo.put(task)

    def cancel(self, task_ids):
        self._cancelled.update(task_ids & self._held.keys())

    def get_results_queue(self):
        return self._results

    @property
    def busy(self):
        return len(self._held)

    def held(self):
        return list(self._held.values())

    def _run(self):
        while (item := self._todo.get()) is not None:
            if item.task_id in self._cancelled:
                outcome = (Status.CANCELLED, b"", None)
            else:
                outcome = run_task_reporting(item.payload)
            self._done.put((item.task_id, *outcome))
            os.write(self._wake_write, b"!")
'''

ENTRY_POINTS = f"""\
[taskswarm.schedulers]
{SCHEDULER} = {PACKAGE}:FifoScheduler

[taskswarm.managers]
{MANAGER} = {PACKAGE}:OneAtATimeManager
"""


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding the package and the ``dist-info`` an installer would have written."""
    site = tmp_path_factory.mktemp("site")
    (site / f"{PACKAGE}.py").write_text(MODULE)
    info = site / f"{PACKAGE}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {PACKAGE}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(ENTRY_POINTS)
    return site


@pytest.fixture
def on_path(installed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The package importable here and in every node started; undone afterwards."""
    yield from importable(installed, PACKAGE, monkeypatch)


def runner_thread() -> str:
    """The name of the thread running this task (a module function: it travels by value)."""
    return threading.current_thread().name


def fail() -> None:
    raise ValueError("from the third-party task manager")


def _conforms_statically() -> None:
    """Never called: a type checker (mypy) reading this file checks that each in-tree part is
    assignable to its contract, member by member and signature by signature."""
    strategy: StrategyContract = LoadStrategy()
    watching: WatchesSlaves = RoundRobinStrategy()
    factory: SchedulerFactory = PushScheduler
    host: StrategyHost = PushScheduler(strategy)
    schedulers: list[SchedulerContract] = [
        PushScheduler(strategy),
        PullScheduler(strategy),
        DaskScheduler(strategy),
        RayScheduler(strategy),
    ]
    managers: list[TaskManagerContract] = [ProcessPoolManager(1), DaskManager(1), RayManager(1)]
    del watching, factory, host, schedulers, managers


@pytest.mark.parametrize(
    "scheduler", [PushScheduler, PullScheduler, DaskScheduler, RayScheduler], ids=lambda c: c.name
)
def test_the_in_tree_schedulers_meet_the_schedulers_contract(scheduler):
    built = scheduler(TwoChoicesStrategy(), 2)

    assert isinstance(scheduler, SchedulerFactory)
    assert isinstance(built, SchedulerContract)
    assert isinstance(built, StrategyHost)
    assert ("engine" in built.options) == (scheduler in (DaskScheduler, RayScheduler))


@pytest.mark.parametrize("manager", [ProcessPoolManager, DaskManager, RayManager])
def test_the_in_tree_task_managers_meet_the_task_managers_contract(manager):
    assert isinstance(manager(1), TaskManagerContract)


def test_the_in_tree_strategies_meet_the_strategies_contract():
    for name in available("taskswarm.strategies"):
        strategy = load_plugin("taskswarm.strategies", name)()
        assert isinstance(strategy, StrategyContract), name
        assert isinstance(strategy, WatchesSlaves), name


def test_the_third_party_parts_are_found_by_name_and_meet_the_contracts(on_path):
    scheduler = load_plugin("taskswarm.schedulers", SCHEDULER)
    manager = load_plugin("taskswarm.managers", MANAGER)

    assert scheduler.__module__ == manager.__module__ == PACKAGE
    assert isinstance(scheduler(LoadStrategy(), 2), SchedulerContract)
    built = manager(None)
    try:
        assert isinstance(built, TaskManagerContract)
    finally:
        built.stop()
    # Written against the contracts: the seed's interfaces are not needed to plug in.
    assert not issubclass(scheduler, ITaskScheduler)
    assert not issubclass(manager, ITaskManager)


def test_a_cluster_runs_on_a_third_party_scheduler_and_task_manager(
    on_path, nodes: Nodes, key_file: str, tmp_path: Path
):
    ready = tmp_path / "master.address"
    master = nodes.start(
        "master", "--bind", "tcp://127.0.0.1:0", "--key-file", key_file, "--no-state-dir",
        "--no-dashboard", "--scheduler", SCHEDULER, "--heartbeat", "0.2",
        "--ready-file", str(ready),
    )  # fmt: skip
    address = wait_for(lambda: ready.exists() and ready.read_text().strip())
    nodes.start(
        "slave", address, "--key-file", key_file, "--manager", MANAGER, "--heartbeat", "0.2"
    )

    with ts.connect(address, key_file=key_file) as app:
        assert app.status()["master"]["scheduler"] == SCHEDULER

        futures = app.push_tasks([ts.FunctionTask(pow, 2, i) for i in range(20)])
        assert [f.result(timeout=20) for f in futures] == [2**i for i in range(20)]
        assert app.submit(runner_thread).result(timeout=20) == RUNNER_THREAD
        with pytest.raises(ValueError, match="from the third-party task manager"):
            app.submit(fail).result(timeout=20)
        assert app.run_system(SumOfSquares(30), timeout=30) == sum(i * i for i in range(30))
        assert app.status()["tasks"] == {"queued": 0, "assigned": 0}

    assert master.poll() is None
