"""The master's scheduling bookkeeping, as pure code over task and slave records.

The master pushes task records, asks the scheduler to ``dispatch``, sends each slave's outbox,
and reports each result with ``result_arrived`` then ``task_finished``; it removes lost slaves
(their tasks go back to the queue) and drops the leftovers of completed task systems. No socket
is involved, so every rule of a task's life can be checked here over any sequence of events.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from schedbook import (
    SCHEDULERS,
    STRATEGIES,
    dispatch,
    finish,
    make_scheduler,
    make_slave,
    make_tasks,
)
from taskswarm.api import ITaskScheduler, ITaskScheduleStrategy
from taskswarm.errors import ConfigurationError
from taskswarm.scheduling import available, load_plugin
from taskswarm.scheduling.pull import PullScheduler
from taskswarm.scheduling.push import PushScheduler
from taskswarm.scheduling.records import NodeState, SlaveRecord, TaskRecord, TaskState
from taskswarm.scheduling.strategies import (
    LoadStrategy,
    RoundRobinStrategy,
)
from taskswarm.slave.process_pool import ProcessPoolManager

CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- rating and placement ------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [LoadStrategy, RoundRobinStrategy])
def test_a_slave_is_rated_by_its_tasks_in_flight_per_worker(strategy):
    rate = strategy().rate

    assert rate(SlaveRecord("s", b"s", workers=4)) == 0.0
    assert rate(SlaveRecord("s", b"s", workers=4, in_flight={"a", "b"})) == 0.5
    assert rate(SlaveRecord("s", b"s", workers=1, in_flight={"a", "b", "c"})) == 3.0


@pytest.mark.parametrize("strategy", [LoadStrategy, RoundRobinStrategy])
def test_a_slave_without_workers_is_rated_infinitely_bad(strategy):
    rate = strategy().rate

    assert rate(SlaveRecord("s", b"s", workers=0)) == math.inf
    assert rate(SlaveRecord("s", b"s", workers=0, in_flight={"a"})) == math.inf


def test_a_slave_is_rated_when_it_is_added_and_whenever_rate_slaves_is_asked():
    scheduler = make_scheduler()
    slave = make_slave("a", workers=2)
    scheduler.add_slave(slave)
    assert slave.rating == 0.0

    slave.in_flight.add("x")
    scheduler.rate_slaves()

    assert slave.rating == 0.5


@CHECKS
@given(
    workers=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    prefetch=st.integers(1, 3),
    steps=st.lists(st.tuples(st.booleans(), st.integers(0, 100)), max_size=60),
)
def test_the_load_strategy_sends_each_task_to_the_least_loaded_slave(workers, prefetch, steps):
    scheduler = make_scheduler("push", "load", prefetch)
    for i, n in enumerate(workers):
        scheduler.add_slave(make_slave(f"s{i}", n))
    for push, pick in steps:
        busy = [s for s in scheduler.slaves.values() if s.in_flight]
        if not push and busy:  # a result comes in: loads change
            slave = busy[pick % len(busy)]
            finish(scheduler, slave.slave_id, sorted(slave.in_flight)[0])
            continue
        loads = {
            s.slave_id: len(s.in_flight) / s.workers
            for s in scheduler.slaves.values()
            if s.workers * prefetch > len(s.in_flight)
        }
        if not loads:
            continue
        scheduler.push_tasks(make_tasks(1))

        sent = dispatch(scheduler)

        [(chosen, _)] = sent.items()
        assert loads[chosen] == min(loads.values())


def test_the_load_strategy_skips_a_lightly_loaded_slave_that_has_no_credit_left():
    scheduler = make_scheduler("pull", "load")
    scheduler.add_slave(make_slave("idle-but-no-credit", workers=8, credit=0))
    scheduler.add_slave(make_slave("busy", workers=1, credit=3))
    scheduler.push_tasks(make_tasks(3))

    assert {k: len(v) for k, v in dispatch(scheduler).items()} == {"busy": 3}


@pytest.mark.parametrize("kind", ["push", "pull"])
def test_round_robin_spreads_tasks_evenly_over_slaves_with_room(kind):
    scheduler = make_scheduler(kind, "round-robin", prefetch=10)
    for name in "abc":
        scheduler.add_slave(make_slave(name, workers=10, credit=100))
    scheduler.push_tasks(make_tasks(30))

    sent = dispatch(scheduler)

    assert {k: len(v) for k, v in sent.items()} == {"a": 10, "b": 10, "c": 10}


@pytest.mark.parametrize("strategy", ["load", "round-robin"])
@pytest.mark.parametrize("state", [NodeState.PENDING, NodeState.INACTIVE, NodeState.LOST])
def test_a_slave_that_is_not_active_gets_no_tasks(state, strategy):
    scheduler = make_scheduler("push", strategy)
    scheduler.add_slave(make_slave("asleep", workers=4, credit=8, state=state))
    scheduler.push_tasks(make_tasks(3))

    assert dispatch(scheduler) == {}
    assert scheduler.counts() == {"queued": 3, "assigned": 0}


# -- capacity ------------------------------------------------------------------------------------


@CHECKS
@given(
    workers=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    prefetch=st.integers(1, 4),
    n=st.integers(0, 60),
    strategy=st.sampled_from(sorted(STRATEGIES)),
)
def test_the_push_scheduler_never_gives_a_slave_more_than_workers_times_prefetch(
    workers, prefetch, n, strategy
):
    scheduler = make_scheduler("push", strategy, prefetch)
    for i, w in enumerate(workers):
        scheduler.add_slave(make_slave(f"s{i}", w))
    scheduler.push_tasks(make_tasks(n))

    sent = dispatch(scheduler)

    for i, w in enumerate(workers):
        assert len(sent.get(f"s{i}", [])) <= w * prefetch
        assert len(scheduler.slaves[f"s{i}"].in_flight) <= w * prefetch
    assert sum(map(len, sent.values())) == min(n, sum(workers) * prefetch)
    assert scheduler.counts() == {
        "queued": n - sum(map(len, sent.values())),
        "assigned": sum(map(len, sent.values())),
    }


@CHECKS
@given(
    slaves=st.lists(st.tuples(st.integers(1, 4), st.integers(0, 6)), min_size=1, max_size=5),
    n=st.integers(0, 40),
    grants=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 3)), max_size=5),
    strategy=st.sampled_from(sorted(STRATEGIES)),
)
def test_the_pull_scheduler_never_sends_a_slave_more_than_its_credit(slaves, n, grants, strategy):
    scheduler = make_scheduler("pull", strategy)
    granted = Counter()
    for i, (workers, credit) in enumerate(slaves):
        scheduler.add_slave(make_slave(f"s{i}", workers, credit))
        granted[f"s{i}"] = credit
    scheduler.push_tasks(make_tasks(n))
    received = Counter()

    for pick, credit in [(0, 0), *grants]:  # the first turn spends what registration granted
        slave_id = f"s{pick % len(slaves)}"
        scheduler.slaves[slave_id].credit += credit  # a heartbeat or result grants more
        scheduler.refresh(scheduler.slaves[slave_id])  # as the master does after any change
        granted[slave_id] += credit
        for slave_id, ids in dispatch(scheduler).items():
            received[slave_id] += len(ids)

    for slave_id, slave in scheduler.slaves.items():
        assert received[slave_id] <= granted[slave_id]
        assert slave.credit == granted[slave_id] - received[slave_id] >= 0
    assert sum(received.values()) == min(n, sum(granted.values()))


# -- batches for slaves that ask for many --------------------------------------------------------


@pytest.mark.parametrize("kind", ["push", "pull"])
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_slave_that_asks_for_many_is_refilled_a_quarter_of_its_want_at_a_time(kind, strategy):
    scheduler = make_scheduler(kind, strategy)
    scheduler.add_slave(make_slave("quick", workers=1, credit=128, want=128))
    scheduler.push_tasks(make_tasks(1000))
    first = dispatch(scheduler)["quick"]
    assert len(first) == 128
    slave = scheduler.slaves["quick"]

    def results_come_back(n: int) -> dict[str, list[str]]:
        for task_id in sorted(slave.in_flight)[:n]:
            finish(scheduler, "quick", task_id)
        if kind == "pull":  # each result carries a credit
            slave.credit += n
            scheduler.refresh(slave)
        return dispatch(scheduler)

    assert results_come_back(31) == {}  # 97 on hand: no message for a few tasks
    assert [len(v) for v in results_come_back(1).values()] == [32]  # a whole batch at once
    assert len(slave.in_flight) == 128


@pytest.mark.parametrize("kind", ["push", "pull"])
def test_an_idle_slave_that_asks_for_many_gets_a_lone_task_at_once(kind):
    scheduler = make_scheduler(kind)
    scheduler.add_slave(make_slave("quick", workers=2, credit=128, want=128))
    scheduler.push_tasks(make_tasks(1))

    assert [len(v) for v in dispatch(scheduler).values()] == [1]

    scheduler.push_tasks(make_tasks(1))  # a worker still has nothing: no batch to wait for
    assert [len(v) for v in dispatch(scheduler).values()] == [1]


def test_a_slave_short_of_credit_still_gets_tasks_while_a_worker_has_none():
    scheduler = make_scheduler("pull")
    scheduler.add_slave(make_slave("short", workers=4, credit=3, want=128))
    scheduler.push_tasks(make_tasks(10))

    assert [len(v) for v in dispatch(scheduler).values()] == [3]


def test_tasks_are_spread_in_batches_over_many_slaves_that_ask_for_many():
    scheduler = make_scheduler("push", "load")
    for i in range(100):
        scheduler.add_slave(make_slave(f"s{i}", workers=1, want=128))
    scheduler.push_tasks(make_tasks(100 * 128))
    dispatch(scheduler)
    for round_ in range(5):
        for slave in scheduler.slaves.values():  # each slave reports a few at a time
            for task_id in sorted(slave.in_flight)[: 8 + round_]:
                finish(scheduler, slave.slave_id, task_id)
        scheduler.push_tasks(make_tasks(100 * 10))
        sent = dispatch(scheduler)
        assert all(len(ids) >= 32 for ids in sent.values()), sorted(map(len, sent.values()))


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_slave_chosen_for_a_short_task_takes_the_next_ones_too(strategy):
    scheduler = make_scheduler("push", strategy)
    for i in range(2):  # 20 ms of work is 10 tasks of 2 ms, or all 32 of a batch of 50 µs
        scheduler.add_slave(make_slave(f"slow{i}", workers=1, want=128, pace=0.002))
    tasks = make_tasks(80)
    scheduler.push_tasks(tasks)
    sent = dispatch(scheduler)
    ids = [task.task_id for task in tasks]
    assert ids[:10] in (batch[:10] for batch in sent.values())  # a run of 10, not 1 each

    scheduler = make_scheduler("push", strategy)
    for i in range(2):
        scheduler.add_slave(make_slave(f"quick{i}", workers=1, want=128, pace=50e-6))
    tasks = make_tasks(100)
    scheduler.push_tasks(tasks)
    sent = dispatch(scheduler)
    ids = [task.task_id for task in tasks]
    assert ids[:32] in (batch[:32] for batch in sent.values())  # a whole batch of 32


@pytest.mark.parametrize("strategy", ["load", "throughput"])
def test_a_short_queue_is_shared_among_ready_slaves_whatever_pace_they_last_reported(strategy):
    """Slaves whose pace is that of earlier tasks of a millisecond get four tasks of 20 ms: each
    takes two, not one slave all four while the other stands idle. (The strategies that balance
    load; round-robin, random and two-choices choose by their own rule, a handout at a time.)"""
    scheduler = make_scheduler("push", strategy)
    for i in range(2):
        scheduler.add_slave(make_slave(f"s{i}", workers=1, want=128, pace=0.001))
    scheduler.push_tasks(make_tasks(4))
    assert sorted(map(len, dispatch(scheduler).values())) == [2, 2]

    scheduler = make_scheduler("push", strategy)
    for i in range(10):
        scheduler.add_slave(make_slave(f"t{i}", workers=1, want=128, pace=0.002))
    scheduler.push_tasks(make_tasks(20))
    assert sorted(map(len, dispatch(scheduler).values())) == [2] * 10


def test_tasks_are_spread_one_by_one_while_a_slaves_pace_is_not_known_or_slow():
    scheduler = make_scheduler("push", "load")
    for i in range(4):
        scheduler.add_slave(make_slave(f"new{i}", workers=1, want=128))
        scheduler.add_slave(make_slave(f"slow{i}", workers=1, want=128, pace=0.05))
    scheduler.push_tasks(make_tasks(8))

    assert sorted(map(len, dispatch(scheduler).values())) == [1] * 8


# -- results, lost slaves, dropped systems -------------------------------------------------------


def test_a_result_is_accepted_once_and_its_duplicate_dropped():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1)
    scheduler.push_task(task)
    dispatch(scheduler)

    assert finish(scheduler, "a", task.task_id) is task
    assert task.state == TaskState.DONE
    assert finish(scheduler, "a", task.task_id) is None
    assert scheduler.slaves["a"].in_flight == set()
    assert scheduler.slaves["a"].done == 1
    assert scheduler.counts() == {"queued": 0, "assigned": 0}


def test_a_task_that_failed_is_marked_failed_and_counted_against_its_slave():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1)
    scheduler.push_task(task)
    dispatch(scheduler)

    finish(scheduler, "a", task.task_id, error=True)

    assert task.state == TaskState.FAILED
    assert (scheduler.slaves["a"].done, scheduler.slaves["a"].failed) == (0, 1)


def test_a_result_for_a_task_nobody_pushed_is_dropped():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))

    assert scheduler.result_arrived("a", "never-pushed") is None
    assert scheduler.result_arrived(None, "never-pushed") is None


def test_a_lost_slaves_tasks_go_back_to_the_head_of_the_queue():
    scheduler = make_scheduler("push", prefetch=1)
    scheduler.add_slave(make_slave("a", workers=2))
    first = make_tasks(2)
    later = make_tasks(2)
    scheduler.push_tasks(first + later)
    assert dispatch(scheduler) == {"a": [t.task_id for t in first]}

    requeued = scheduler.remove_slave("a")

    assert {t.task_id for t in requeued} == {t.task_id for t in first}
    assert all(t.state == TaskState.QUEUED and t.slave_id is None for t in first)
    assert scheduler.counts() == {"queued": 4, "assigned": 0}
    scheduler.add_slave(make_slave("b", workers=2))
    assert set(dispatch(scheduler)["b"]) == {t.task_id for t in first}


def test_a_lost_slaves_tasks_go_back_in_the_order_they_were_assigned():
    scheduler = make_scheduler("push", prefetch=1)
    scheduler.add_slave(make_slave("a", workers=20))
    tasks = make_tasks(20)
    scheduler.push_tasks(tasks)
    dispatch(scheduler)

    requeued = scheduler.remove_slave("a")

    assert [t.task_id for t in requeued] == [t.task_id for t in tasks]
    assert list(scheduler.queue) == tasks


def test_removing_an_unknown_slave_requeues_nothing():
    assert make_scheduler().remove_slave("nobody") == []


def test_a_late_result_from_a_lost_slave_is_accepted_once_and_the_rerun_is_dropped():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1)
    scheduler.push_task(task)
    dispatch(scheduler)
    scheduler.remove_slave("a")
    scheduler.add_slave(make_slave("b", workers=1))
    assert dispatch(scheduler) == {"b": [task.task_id]}

    assert finish(scheduler, None, task.task_id) is task  # "a" is unknown now: no slave id
    assert scheduler.slaves["b"].in_flight == set()
    assert finish(scheduler, "b", task.task_id) is None
    assert task.state == TaskState.DONE


def test_a_late_result_for_a_requeued_task_keeps_it_from_running_again():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1)
    scheduler.push_task(task)
    dispatch(scheduler)
    scheduler.remove_slave("a")

    assert finish(scheduler, None, task.task_id) is task
    scheduler.add_slave(make_slave("b", workers=1))

    assert dispatch(scheduler) == {}
    assert scheduler.counts() == {"queued": 0, "assigned": 0}


def test_a_late_result_from_a_slave_that_registered_again_is_credited_to_it():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1)
    scheduler.push_task(task)
    dispatch(scheduler)
    scheduler.remove_slave("a")
    scheduler.add_slave(make_slave("a", workers=1))  # same node, new record

    assert finish(scheduler, "a", task.task_id) is task
    assert task.slave_id == "a"
    assert scheduler.slaves["a"].done == 1
    assert dispatch(scheduler) == {}


def test_dropping_a_system_cancels_its_queued_tasks_and_ignores_its_running_ones():
    scheduler = make_scheduler("push", prefetch=1)
    scheduler.add_slave(make_slave("a", workers=2))
    running = make_tasks(2, system_id="sys")
    waiting = make_tasks(2, system_id="sys")
    other = make_tasks(1, system_id="other")
    scheduler.start_system("sys")
    scheduler.push_tasks(running + waiting + other)
    dispatch(scheduler)

    assert len(scheduler.drop_system("sys")) == 4

    assert "sys" not in scheduler.systems
    assert all(t.state == TaskState.CANCELLED for t in running + waiting)
    assert finish(scheduler, "a", running[0].task_id) is None  # its result is ignored ...
    assert scheduler.slaves["a"].in_flight == {running[1].task_id}  # ... and frees its slot
    assert dispatch(scheduler) == {"a": [other[0].task_id]}  # the waiting ones never run
    assert finish(scheduler, "a", other[0].task_id) is other[0]


def test_a_scheduler_takes_a_system_or_its_id():
    class System:
        system_id = "sys-1"

    scheduler = make_scheduler()
    scheduler.start_system(System())
    scheduler.start_system("sys-2")

    assert scheduler.systems == {"sys-1", "sys-2"}


def test_counts_never_go_negative_after_a_system_with_running_tasks_is_dropped():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=1))
    scheduler.push_tasks(make_tasks(2, system_id="sys"))
    dispatch(scheduler)

    scheduler.drop_system("sys")

    assert scheduler.counts() == {"queued": 0, "assigned": 0}


# -- any sequence of events ----------------------------------------------------------------------

SYSTEMS = ["sys-a", "sys-b", "sys-c"]


class SchedulerBookkeeping(RuleBasedStateMachine):
    """Drives a scheduler as the master does, against a model of what each slave holds."""

    def __init__(self) -> None:
        super().__init__()
        self.pushed: dict[str, TaskRecord] = {}
        self.dropped: set[str] = set()
        self.accepted: Counter[str] = Counter()
        self.holdings: dict[str, list[str]] = {}  # live slave -> ids it received, result unsent
        self.orphans: list[str] = []  # ids a lost slave held: their results may still come
        self.delivered: list[tuple[str, str]] = []
        self.granted: Counter[str] = Counter()
        self.received: Counter[str] = Counter()
        self.slave_ids = itertools.count()

    @initialize(
        kind=st.sampled_from(sorted(SCHEDULERS)),
        strategy=st.sampled_from(sorted(STRATEGIES)),
        prefetch=st.integers(1, 3),
    )
    def start(self, kind: str, strategy: str, prefetch: int) -> None:
        self.kind, self.prefetch = kind, prefetch
        self.scheduler = make_scheduler(kind, strategy, prefetch)

    # -- the model ---------------------------------------------------------------------------

    def is_live(self, task_id: str) -> bool:
        task = self.pushed[task_id]
        return not self.accepted[task_id] and task.system_id not in self.dropped

    def live(self) -> list[TaskRecord]:
        return [t for t in self.pushed.values() if self.is_live(t.task_id)]

    def deliver(self, slave_id: str | None, task_id: str, error: object = None) -> None:
        expected = self.pushed[task_id] if self.is_live(task_id) else None
        record = self.scheduler.result_arrived(slave_id, task_id)
        assert record is expected
        if record is not None:
            self.accepted[task_id] += 1
            self.scheduler.task_finished(record, None, error)
            assert record.state == (TaskState.DONE if error is None else TaskState.FAILED)

    def join(self, workers: int, state: str = NodeState.ACTIVE) -> None:
        slave_id = f"s{next(self.slave_ids)}"
        credit = workers * self.prefetch if self.kind == "pull" else 0
        self.scheduler.add_slave(make_slave(slave_id, workers, credit, state))
        self.holdings[slave_id] = []
        self.granted[slave_id] = credit

    # -- events ------------------------------------------------------------------------------

    @precondition(lambda self: len(self.holdings) < 5)
    @rule(
        workers=st.integers(0, 3),
        state=st.sampled_from([NodeState.ACTIVE] * 3 + [NodeState.PENDING]),
    )
    def add_slave(self, workers: int, state: str) -> None:
        self.join(workers, state)

    @rule(n=st.integers(1, 4), system_id=st.sampled_from([None, *SYSTEMS]))
    def push_tasks(self, n: int, system_id: str | None) -> None:
        if system_id in self.dropped:
            system_id = None  # the master pushes nothing for a system that completed
        if system_id is not None:
            self.scheduler.start_system(system_id)
        tasks = make_tasks(n, system_id=system_id)
        self.scheduler.push_tasks(tasks)
        self.pushed.update((t.task_id, t) for t in tasks)

    @rule()
    def dispatch(self) -> None:
        held = {t for ids in self.holdings.values() for t in ids}
        self.scheduler.dispatch()
        for slave, batch in self.scheduler.take_outboxes():
            assert slave.slave_id in self.holdings
            assert slave.state == NodeState.ACTIVE
            for task in batch:
                assert self.is_live(task.task_id), "a finished or cancelled task was sent"
                assert task.task_id not in held, "a task was sent while a live slave holds it"
                assert (task.state, task.slave_id) == (TaskState.ASSIGNED, slave.slave_id)
                self.holdings[slave.slave_id].append(task.task_id)
                self.received[slave.slave_id] += 1

    @precondition(lambda self: any(self.holdings.values()))
    @rule(data=st.data(), error=st.sampled_from([None, None, True]))
    def deliver_a_result(self, data: st.DataObject, error: object) -> None:
        slave_id = data.draw(st.sampled_from(sorted(s for s, h in self.holdings.items() if h)))
        held = self.holdings[slave_id]
        task_id = held.pop(data.draw(st.integers(0, len(held) - 1)))
        self.deliver(slave_id, task_id, error)
        self.delivered.append((slave_id, task_id))
        if self.kind == "pull":  # the slave grants one credit per result it sends
            self.scheduler.slaves[slave_id].credit += 1
            self.scheduler.refresh(self.scheduler.slaves[slave_id])
            self.granted[slave_id] += 1

    @precondition(lambda self: self.orphans)
    @rule(data=st.data())
    def deliver_a_late_result_from_a_lost_slave(self, data: st.DataObject) -> None:
        task_id = self.orphans.pop(data.draw(st.integers(0, len(self.orphans) - 1)))
        self.deliver(None, task_id)

    @precondition(lambda self: self.delivered)
    @rule(data=st.data())
    def deliver_a_result_again(self, data: st.DataObject) -> None:
        slave_id, task_id = data.draw(st.sampled_from(self.delivered))
        self.deliver(slave_id if slave_id in self.holdings else None, task_id)

    @precondition(lambda self: self.holdings)
    @rule(data=st.data())
    def lose_a_slave(self, data: st.DataObject) -> None:
        slave_id = data.draw(st.sampled_from(sorted(self.holdings)))

        requeued = self.scheduler.remove_slave(slave_id)

        held = self.holdings.pop(slave_id)
        assert {t.task_id for t in requeued} == {t for t in held if self.is_live(t)}
        assert all(t.state == TaskState.QUEUED and t.slave_id is None for t in requeued)
        self.orphans.extend(held)

    @rule(system_id=st.sampled_from(SYSTEMS))
    def drop_a_system(self, system_id: str) -> None:
        expected = sum(1 for t in self.live() if t.system_id == system_id)

        assert len(self.scheduler.drop_system(system_id)) == expected

        self.dropped.add(system_id)
        assert system_id not in self.scheduler.systems

    @rule()
    def run_to_completion(self) -> None:
        """Dispatch and deliver until nothing is left: every live task then completes once."""
        if not any(
            s.state == NodeState.ACTIVE and s.workers > 0 for s in self.scheduler.slaves.values()
        ):
            self.join(workers=1)
        for _ in range(len(self.pushed) + 2):
            self.dispatch()
            while self.orphans:
                self.deliver(None, self.orphans.pop())
            for slave_id, held in self.holdings.items():
                while held:
                    self.deliver(slave_id, held.pop(0))
                    if self.kind == "pull":
                        self.scheduler.slaves[slave_id].credit += 1
                        self.scheduler.refresh(self.scheduler.slaves[slave_id])
                        self.granted[slave_id] += 1
            if not self.live():
                break
        assert not self.live(), f"never completed: {self.live()}"
        for task_id, task in self.pushed.items():
            if task.system_id in self.dropped:
                assert self.accepted[task_id] <= 1
            else:
                assert self.accepted[task_id] == 1
        assert self.scheduler.counts() == {"queued": 0, "assigned": 0}

    def teardown(self) -> None:
        if hasattr(self, "scheduler"):
            self.run_to_completion()

    # -- what must always hold -------------------------------------------------------------

    @invariant()
    def every_task_is_in_exactly_one_state(self) -> None:
        scheduler = self.scheduler
        in_queue = Counter(t.task_id for t in scheduler.queue if t.state == TaskState.QUEUED)
        for task_id, task in self.pushed.items():
            holders = [s.slave_id for s in scheduler.slaves.values() if task_id in s.in_flight]
            if self.accepted[task_id]:
                assert task.state in (TaskState.DONE, TaskState.FAILED)
                assert task_id not in scheduler.tasks
                assert holders == []
            elif task.system_id in self.dropped:
                assert task.state == TaskState.CANCELLED
                assert task_id not in scheduler.tasks
            else:
                assert scheduler.tasks[task_id] is task
                if task.state == TaskState.QUEUED:
                    assert in_queue[task_id] == 1
                    assert task.slave_id is None
                    assert holders == []
                else:
                    assert task.state == TaskState.ASSIGNED
                    assert in_queue[task_id] == 0
                    assert holders == [task.slave_id]
        assert set(in_queue) <= set(self.pushed)

    @invariant()
    def a_slaves_tasks_in_flight_are_what_it_holds_and_has_not_answered(self) -> None:
        for slave_id, slave in self.scheduler.slaves.items():
            held = self.holdings[slave_id]
            assert slave.in_flight == {t for t in held if not self.accepted[t]}
            if slave.state != NodeState.ACTIVE:
                assert held == []

    @invariant()
    def no_slave_exceeds_its_capacity(self) -> None:
        for slave_id, slave in self.scheduler.slaves.items():
            if self.kind == "push":
                assert len(slave.in_flight) <= slave.workers * self.prefetch
            else:
                assert slave.credit == self.granted[slave_id] - self.received[slave_id] >= 0

    @invariant()
    def each_result_is_accepted_at_most_once(self) -> None:
        assert all(n <= 1 for n in self.accepted.values())

    @invariant()
    def counts_add_up(self) -> None:
        counts = self.scheduler.counts()
        live = self.live()
        assert counts["queued"] + counts["assigned"] == len(live)
        assert counts == {
            "queued": sum(1 for t in live if t.state == TaskState.QUEUED),
            "assigned": sum(1 for t in live if t.state == TaskState.ASSIGNED),
        }


SchedulerBookkeeping.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestEveryTaskHasOneStateAndOneResultWhateverHappens = SchedulerBookkeeping.TestCase


# -- plugins -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("group", "name", "cls"),
    [
        ("taskswarm.schedulers", "push", PushScheduler),
        ("taskswarm.schedulers", "pull", PullScheduler),
        ("taskswarm.strategies", "load", LoadStrategy),
        ("taskswarm.strategies", "round-robin", RoundRobinStrategy),
        ("taskswarm.managers", "process-pool", ProcessPoolManager),
    ],
)
def test_plugins_are_found_by_name_through_entry_points(group, name, cls):
    assert load_plugin(group, name) is cls
    assert name in available(group)


def test_every_scheduler_and_strategy_plugin_implements_the_seeds_interface():
    for name in available("taskswarm.schedulers"):
        assert issubclass(load_plugin("taskswarm.schedulers", name), ITaskScheduler)
    for name in available("taskswarm.strategies"):
        assert issubclass(load_plugin("taskswarm.strategies", name), ITaskScheduleStrategy)


@pytest.mark.parametrize("group", ["taskswarm.schedulers", "taskswarm.strategies"])
def test_an_unknown_plugin_name_is_a_configuration_error_listing_the_choices(group):
    with pytest.raises(ConfigurationError) as caught:
        load_plugin(group, "no-such-plugin")

    message = str(caught.value)
    assert "'no-such-plugin'" in message
    assert available(group)
    for name in available(group):
        assert name in message


def test_an_unknown_plugin_group_says_none_is_installed():
    with pytest.raises(ConfigurationError, match="none installed"):
        load_plugin("taskswarm.no-such-group", "x")


def test_an_unknown_strategy_is_called_a_strategy_in_the_message():
    with pytest.raises(ConfigurationError, match="no strategy named 'nope'"):
        load_plugin("taskswarm.strategies", "nope")


@pytest.mark.parametrize("kind", ["push", "pull"])
def test_tasks_a_slave_never_received_are_requeued_and_its_credit_restored(kind):
    scheduler = make_scheduler(kind, prefetch=2)
    slave = make_slave("s", workers=1, credit=2)
    scheduler.add_slave(slave)
    scheduler.push_tasks([TaskRecord(f"t{i}", b"", "c") for i in range(3)])
    scheduler.dispatch()
    sent = [t.task_id for t in scheduler.take_outboxes()[0][1]]
    assert len(sent) == 2
    credit = slave.credit

    # Just sent: not missing yet, whatever the slave says.
    assert scheduler.reclaim_missing(slave, set(), sent_before=0.0) == []
    # Long ago, and the slave holds only the first: the second was lost on the way.
    missing = scheduler.reclaim_missing(slave, {sent[0]}, sent_before=float("inf"))
    assert [t.task_id for t in missing] == [sent[1]]
    assert slave.in_flight == {sent[0]}
    assert scheduler.tasks[sent[1]].state == TaskState.QUEUED
    if kind == "pull":
        assert slave.credit == credit + 1
