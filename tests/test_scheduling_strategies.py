"""The scheduler's queue, strategies, resources and work stealing, as pure bookkeeping.

Everything here drives records the way the master does (push, dispatch, results, slaves coming,
changing and going, steal requests answered), always calling ``scheduler.refresh(slave)`` after
changing a slave's fields, and checks the scheduler against brute-force scans or simple models.
Time is a fake clock wherever the scheduler looks at it, so hypothesis replays every example
exactly.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import random
from collections import Counter
from collections.abc import Iterator
from unittest import mock

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
from taskswarm.scheduling import scheduler as scheduler_module
from taskswarm.scheduling.pull import PullScheduler
from taskswarm.scheduling.queue import TaskQueue
from taskswarm.scheduling.records import NodeState, SlaveRecord, TaskRecord, TaskState
from taskswarm.scheduling.scheduler import (
    STEAL_INTERVAL,
    STEAL_MIN_BACKLOG,
    STEAL_PATIENCE,
    BaseScheduler,
)

pytestmark = pytest.mark.timeout(120)

HEAPS = ["load", "throughput"]
CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MACHINES = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
NOT_ACTIVE = [NodeState.PENDING, NodeState.INACTIVE, NodeState.DRAINING]


def room(scheduler: BaseScheduler, slave: SlaveRecord) -> int:
    """How many more tasks ``slave`` may be sent, worked out here rather than asked."""
    if isinstance(scheduler, PullScheduler):
        return slave.credit
    return max(slave.workers * scheduler.prefetch, slave.want) - len(slave.in_flight)


def batch(scheduler: BaseScheduler, slave: SlaveRecord) -> int:
    """The fewest tasks a slave that asks for many (short tasks) is sent at a time."""
    if slave.want <= slave.workers * scheduler.prefetch:
        return 1
    return max(1, slave.want // 4)


def ready_slaves(scheduler: BaseScheduler) -> list[SlaveRecord]:
    """Brute force: every known slave that is active and has room, for a batch unless it is
    being filled this turn or some of its workers have nothing to do."""
    return [
        s
        for s in scheduler.slaves.values()
        if s.state == NodeState.ACTIVE
        and room(scheduler, s) > 0
        and (room(scheduler, s) >= batch(scheduler, s) or s.outbox or len(s.in_flight) < s.workers)
    ]


def load(slave: SlaveRecord) -> float:
    return len(slave.in_flight) / slave.workers if slave.workers > 0 else math.inf


class Clock:
    """Stands in for the ``time`` module inside the scheduler: only ``monotonic`` is used."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def monotonic(self) -> float:
        return self.now


@contextlib.contextmanager
def frozen_clock() -> Iterator[Clock]:
    clock = Clock()
    with mock.patch.object(scheduler_module, "time", clock):
        yield clock


@pytest.fixture
def clock() -> Iterator[Clock]:
    with frozen_clock() as fake:
        yield fake


# -- the queue: highest priority first, first in first out within one ----------------------------

QUEUE_OPS = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["append", "appendleft"]), st.integers(-3, 3), st.booleans()),
        st.tuples(st.just("popleft"), st.just(0), st.just(False)),
    ),
    max_size=80,
)


@CHECKS
@given(ops=QUEUE_OPS)
def test_the_task_queue_behaves_like_a_list_sorted_by_priority_then_arrival(ops):
    """Model: each entry's key is (-priority, n) for append and (-priority, -n) for appendleft,
    n counting up, so a later appendleft goes before an earlier one of the same priority."""
    queue = TaskQueue()
    keys: dict[TaskRecord, tuple[int, int]] = {}
    counter = itertools.count(1)
    for op, priority, needy in ops:
        if op == "popleft":
            if not keys:
                with pytest.raises(IndexError):
                    queue.popleft()
                continue
            expected = min(keys, key=keys.__getitem__)
            assert queue.popleft() is expected
            del keys[expected]
        else:
            [task] = make_tasks(1, {"gpu": 1.0} if needy else None, priority)
            n = next(counter)
            keys[task] = (-priority, n if op == "append" else -n)
            getattr(queue, op)(task)
        assert len(queue) == len(keys)
        assert bool(queue) is bool(keys)
        assert queue.needy == sum(1 for t in keys if t.resources)
        assert list(queue) == sorted(keys, key=keys.__getitem__)


@CHECKS
@given(priorities=st.lists(st.integers(-5, 5), max_size=60))
def test_popleft_gives_tasks_sorted_by_priority_then_the_order_they_came(priorities):
    queue = TaskQueue()
    tasks = [make_tasks(1, priority=p)[0] for p in priorities]
    for task in tasks:
        queue.append(task)

    popped = [queue.popleft() for _ in tasks]

    order = sorted(range(len(tasks)), key=lambda i: (-priorities[i], i))
    assert popped == [tasks[i] for i in order]
    assert not queue and len(queue) == 0 and queue.needy == 0


def test_appendleft_puts_a_task_back_at_the_front_of_its_own_priority_only():
    queue = TaskQueue()
    high, low_a, low_b = make_tasks(1, priority=5) + make_tasks(2)
    for task in (high, low_a, low_b):
        queue.append(task)
    [back] = make_tasks(1)  # priority 0, going back where it was

    queue.appendleft(back)

    assert list(queue) == [high, back, low_a, low_b]


@CHECKS
@given(
    priorities=st.lists(st.integers(-2, 2), min_size=1, max_size=30),
    kind=st.sampled_from(sorted(SCHEDULERS)),
    strategy=st.sampled_from(sorted(STRATEGIES)),
)
def test_a_scheduler_sends_tasks_in_priority_order(priorities, kind, strategy):
    scheduler = make_scheduler(kind, strategy, prefetch=1)
    scheduler.add_slave(make_slave("a", workers=len(priorities), credit=len(priorities)))
    tasks = [make_tasks(1, priority=p)[0] for p in priorities]
    scheduler.push_tasks(tasks)

    sent = dispatch(scheduler)

    order = sorted(range(len(tasks)), key=lambda i: (-priorities[i], i))
    assert sent == {"a": [tasks[i].task_id for i in order]}


# -- strategies: only ready slaves, the least loaded for `load` ----------------------------------


def check_every_pick(scheduler: BaseScheduler, name: str) -> list[SlaveRecord | None]:
    """Wrap the strategy's ``get_next_slave`` so that every choice, however it is asked for
    (dispatch, handle_task, a direct call), is checked against a scan of all slaves."""
    original = scheduler.strategy.get_next_slave
    picks: list[SlaveRecord | None] = []

    def get_next_slave() -> SlaveRecord | None:
        ready = ready_slaves(scheduler)
        chosen = original()
        picks.append(chosen)
        if not ready:
            assert chosen is None, f"{name} chose {chosen.slave_id} with no slave ready"
            return chosen
        assert chosen is not None, f"{name} chose nothing with {len(ready)} slaves ready"
        assert any(chosen is s for s in ready), f"{name} chose {chosen.slave_id}, not ready"
        if name == "load":
            assert load(chosen) == min(load(s) for s in ready)
        if name in HEAPS:  # the heap orders by the ratings as last refreshed
            assert chosen.rating == min(s.rating for s in ready)
        return chosen

    scheduler.strategy.get_next_slave = get_next_slave  # type: ignore[method-assign]
    return picks


# Mostly slaves that can take tasks (hypothesis favours the first of each list), some that can't.
WORKERS = st.sampled_from([2, 1, 3, 0])
CREDIT = st.sampled_from([2, 4, 1, 0])
WANT = st.sampled_from([0, 6, 2, 16])


class StrategyChoices(RuleBasedStateMachine):
    """Slaves come, change and go, tasks come and finish; every choice is checked."""

    @initialize(
        kind=st.sampled_from(sorted(SCHEDULERS)),
        strategy=st.sampled_from(sorted(STRATEGIES)),
        prefetch=st.integers(1, 3),
    )
    def start(self, kind: str, strategy: str, prefetch: int) -> None:
        self.kind, self.name = kind, strategy
        self.scheduler = make_scheduler(kind, strategy, prefetch)
        self.picks = check_every_pick(self.scheduler, strategy)
        self.slave_ids = itertools.count()

    def slave(self, data: st.DataObject) -> SlaveRecord:
        return self.scheduler.slaves[data.draw(st.sampled_from(sorted(self.scheduler.slaves)))]

    @precondition(lambda self: len(self.scheduler.slaves) < 6)
    @rule(
        workers=WORKERS,
        credit=CREDIT,
        want=WANT,
        state=st.sampled_from([NodeState.ACTIVE] * 3 + NOT_ACTIVE),
    )
    def add_slave(self, workers: int, credit: int, want: int, state: str) -> None:
        slave_id = f"s{next(self.slave_ids)}"
        self.scheduler.add_slave(make_slave(slave_id, workers, credit, state, want=want))

    @rule(n=st.integers(1, 5), priority=st.integers(-1, 1))
    def push_tasks(self, n: int, priority: int) -> None:
        self.scheduler.push_tasks(make_tasks(n, priority=priority))

    @rule()
    def dispatch(self) -> None:
        sent = dispatch(self.scheduler)
        for slave_id, ids in sent.items():
            slave = self.scheduler.slaves[slave_id]
            assert slave.state == NodeState.ACTIVE
            assert set(ids) <= slave.in_flight
            assert room(self.scheduler, slave) >= 0  # never sent more than it had room for
        if self.scheduler.queue:  # stopped early: because no slave had room left
            assert not ready_slaves(self.scheduler)

    @rule()
    def ask_the_strategy(self) -> None:
        self.scheduler.strategy.get_next_slave()

    @precondition(lambda self: any(s.in_flight for s in self.scheduler.slaves.values()))
    @rule(data=st.data(), grant=st.booleans())
    def a_result_comes_in(self, data: st.DataObject, grant: bool) -> None:
        busy = sorted(s.slave_id for s in self.scheduler.slaves.values() if s.in_flight)
        slave = self.scheduler.slaves[data.draw(st.sampled_from(busy))]
        task_id = data.draw(st.sampled_from(sorted(slave.in_flight)))
        assert finish(self.scheduler, slave.slave_id, task_id) is not None
        if self.kind == "pull" and grant:  # the result carries one credit
            slave.credit += 1
            self.scheduler.refresh(slave)

    @precondition(lambda self: self.scheduler.slaves)
    @rule(data=st.data(), state=st.sampled_from([NodeState.ACTIVE] * 3 + NOT_ACTIVE))
    def a_slave_changes_state(self, data: st.DataObject, state: str) -> None:
        slave = self.slave(data)
        slave.state = state
        self.scheduler.refresh(slave)

    @precondition(lambda self: self.scheduler.slaves)
    @rule(
        data=st.data(),
        workers=WORKERS,
        credit=CREDIT,
        want=WANT,
        pace=st.sampled_from([0.0, 0.001, 0.05, 0.5]),
    )
    def a_heartbeat_changes_a_slave(self, data, workers, credit, want, pace) -> None:
        slave = self.slave(data)
        slave.workers, slave.want, slave.pace = workers, want, pace
        slave.credit += credit
        self.scheduler.refresh(slave)

    @precondition(lambda self: self.scheduler.slaves)
    @rule(data=st.data())
    def a_slave_is_lost(self, data: st.DataObject) -> None:
        slave = self.slave(data)
        requeued = self.scheduler.remove_slave(slave.slave_id)
        assert {t.task_id for t in requeued} == slave.in_flight

    @invariant()
    def the_ready_set_is_exactly_the_slaves_that_can_take_a_task(self) -> None:
        expected = {s.slave_id for s in ready_slaves(self.scheduler)}
        assert {s.slave_id for s in self.scheduler.ready} == expected
        assert len(self.scheduler.ready) == len(expected)


StrategyChoices.TestCase.settings = MACHINES
TestEveryStrategyChoosesOnlyReadySlaves = StrategyChoices.TestCase


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_strategy_chooses_nothing_when_no_slave_is_ready(kind, strategy):
    scheduler = make_scheduler(kind, strategy, prefetch=1)
    assert scheduler.strategy.get_next_slave() is None  # no slave at all
    for i, state in enumerate(NOT_ACTIVE):
        scheduler.add_slave(make_slave(f"asleep{i}", workers=2, credit=2, state=state))
    scheduler.add_slave(make_slave("no-workers", workers=0, credit=0))
    full = make_slave("full", workers=1, credit=1)
    scheduler.add_slave(full)
    assert dispatch(scheduler) == {}
    first = make_tasks(3)
    scheduler.push_tasks(first)
    assert dispatch(scheduler) == {"full": [first[0].task_id]}

    assert scheduler.strategy.get_next_slave() is None
    assert len(scheduler.ready) == 0
    assert dispatch(scheduler) == {}
    assert scheduler.counts() == {"queued": 2, "assigned": 1}


# -- round-robin ---------------------------------------------------------------------------------


@CHECKS
@given(
    n=st.integers(1, 8),
    toggles=st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=12),
    kind=st.sampled_from(sorted(SCHEDULERS)),
)
def test_round_robin_visits_every_ready_slave_in_turn(n, toggles, kind):
    scheduler = make_scheduler(kind, "round-robin")
    slaves = [make_slave(f"s{i}", workers=4, credit=10) for i in range(n)]
    for slave in slaves:
        scheduler.add_slave(slave)
    for index, active in [(0, True), *toggles]:
        slave = slaves[index % n]
        slave.state = NodeState.ACTIVE if active else NodeState.INACTIVE
        scheduler.refresh(slave)
        scheduler.strategy.get_next_slave()  # the ring turns between changes too
        ready = {s.slave_id for s in slaves if s.state == NodeState.ACTIVE}

        rounds = [scheduler.strategy.get_next_slave() for _ in range(3 * len(ready))]

        if not ready:
            assert rounds == []
            assert scheduler.strategy.get_next_slave() is None
            continue
        ids = [s.slave_id for s in rounds]
        first = ids[: len(ready)]
        assert set(first) == ready and len(set(first)) == len(ready)  # each once ...
        assert ids == first * 3  # ... then the same turn again


def test_round_robin_puts_a_slave_that_is_ready_again_back_in_the_turn():
    scheduler = make_scheduler("push", "round-robin")
    slaves = [make_slave(name, workers=4) for name in "abc"]
    for slave in slaves:
        scheduler.add_slave(slave)
    slaves[1].state = NodeState.INACTIVE
    scheduler.refresh(slaves[1])
    assert [scheduler.strategy.get_next_slave().slave_id for _ in range(4)] == list("acac")

    slaves[1].state = NodeState.ACTIVE
    scheduler.refresh(slaves[1])

    picks = [scheduler.strategy.get_next_slave().slave_id for _ in range(6)]
    assert sorted(picks[:3]) == list("abc") and picks[3:] == picks[:3]


# -- heap-based strategies with many slaves ------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
@pytest.mark.parametrize("strategy", HEAPS)
def test_the_heap_strategies_stay_right_with_thousands_of_slaves(kind, strategy):
    rng = random.Random(7)
    scheduler = make_scheduler(kind, strategy, prefetch=2)
    slaves = [
        make_slave(f"s{i}", workers=rng.randint(1, 8), credit=rng.randint(0, 16))
        for i in range(2000)
    ]
    for slave in slaves:
        slave.pace = rng.choice([0.0, 0.01, 0.1])
        scheduler.add_slave(slave)
    picks = 0
    original = scheduler.strategy.get_next_slave

    def get_next_slave() -> SlaveRecord | None:
        nonlocal picks
        picks += 1
        chosen = original()
        if picks % 97 == 0:  # a full scan now and then
            ready = ready_slaves(scheduler)
            assert chosen is not None and any(chosen is s for s in ready)
            assert chosen.rating == min(s.rating for s in ready)
            if strategy == "load":
                assert load(chosen) == min(load(s) for s in ready)
        return chosen

    scheduler.strategy.get_next_slave = get_next_slave  # type: ignore[method-assign]
    for _ in range(10):
        scheduler.push_tasks(make_tasks(1000))
        dispatch(scheduler)
        busy = [s for s in slaves if s.in_flight]
        for slave in rng.sample(busy, min(len(busy), 600)):
            finish(scheduler, slave.slave_id, min(slave.in_flight))
            if kind == "pull":
                slave.credit += rng.randint(0, 2)
                scheduler.refresh(slave)
        for slave in rng.sample(slaves, 20):  # some go quiet, some come back
            slave.state = rng.choice([NodeState.ACTIVE, NodeState.INACTIVE])
            scheduler.refresh(slave)
        heap, live = scheduler.strategy._heap, scheduler.strategy._live
        assert len(heap) <= 2 * len(live) + 64 + 1  # stale entries never pile up
        assert set(live) == {s.slave_id for s in ready_slaves(scheduler)}

    assert picks >= 10_000 and not scheduler.queue  # every task went out


# -- resources: what each slave has in use always adds up ----------------------------------------

OFFERS = [None, {"gpu": 1.0}, {"gpu": 2.0, "mem": 8.0}, {"mem": 4.0}]
NEEDS = [
    None,
    None,
    {"gpu": 1.0},
    {"gpu": 2.0},
    {"mem": 4.0},
    {"gpu": 1.0, "mem": 2.0},
    {"gpu": 9.0},
]


class ResourceBookkeeping(RuleBasedStateMachine):
    """Drives a scheduler with resource needs and offers through every way a task moves."""

    def __init__(self) -> None:
        super().__init__()
        self._clock = frozen_clock()
        self.clock = self._clock.__enter__()
        self.pushed: dict[str, TaskRecord] = {}
        self.holdings: dict[str, set[str]] = {}  # slave -> ids sent, no result reported yet
        self.failed: set[str] = set()  # ids that ended unsatisfiable
        self.slave_ids = itertools.count()

    def teardown(self) -> None:
        self._clock.__exit__(None, None, None)

    @initialize(
        kind=st.sampled_from(sorted(SCHEDULERS)),
        strategy=st.sampled_from(sorted(STRATEGIES)),
        wait=st.sampled_from([0.0, 5.0, math.inf]),
    )
    def start(self, kind: str, strategy: str, wait: float) -> None:
        self.kind = kind
        self.scheduler = make_scheduler(kind, strategy, prefetch=2)
        self.scheduler.resource_wait = wait

    def live(self) -> list[TaskRecord]:
        return list(self.scheduler.tasks.values())

    def slave(self, data: st.DataObject) -> SlaveRecord:
        return self.scheduler.slaves[data.draw(st.sampled_from(sorted(self.scheduler.slaves)))]

    # -- events ------------------------------------------------------------------------------

    @precondition(lambda self: len(self.scheduler.slaves) < 4)
    @rule(workers=st.integers(1, 3), offer=st.sampled_from(OFFERS))
    def add_slave(self, workers: int, offer: dict | None) -> None:
        slave_id = f"s{next(self.slave_ids)}"
        credit = 2 * workers if self.kind == "pull" else 0
        self.scheduler.add_slave(make_slave(slave_id, workers, credit, resources=offer))
        self.holdings[slave_id] = set()

    @rule(n=st.integers(1, 4), needs=st.sampled_from(NEEDS), priority=st.integers(0, 1))
    def push_tasks(self, n: int, needs: dict | None, priority: int) -> None:
        tasks = make_tasks(n, dict(needs) if needs else None, priority)
        self.scheduler.push_tasks(tasks)
        self.pushed.update((t.task_id, t) for t in tasks)

    @rule(seconds=st.sampled_from([0.5, 2.0, 6.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.now += seconds

    @rule()
    def dispatch(self) -> None:
        sent = dispatch(self.scheduler)
        for slave_id, ids in sent.items():
            slave = self.scheduler.slaves[slave_id]
            for task_id in ids:
                needs = self.pushed[task_id].resources
                assert not needs or slave.could_ever_fit(needs)
            self.holdings[slave_id].update(ids)
        for task in self.scheduler.take_unsatisfiable():
            assert task.state == TaskState.FAILED and task.task_id not in self.scheduler.tasks
            assert self.clock.now - task.queued_at >= self.scheduler.resource_wait
            live = [s for s in self.scheduler.slaves.values() if s.state != NodeState.LOST]
            assert live and not any(s.could_ever_fit(task.resources) for s in live)
            self.failed.add(task.task_id)

    @precondition(lambda self: any(self.holdings.values()))
    @rule(data=st.data(), how=st.sampled_from(["done", "retry"]))
    def a_result_comes_in(self, data: st.DataObject, how: str) -> None:
        slave_id = data.draw(st.sampled_from(sorted(s for s, h in self.holdings.items() if h)))
        task_id = data.draw(st.sampled_from(sorted(self.holdings[slave_id])))
        self.holdings[slave_id].discard(task_id)
        record = self.scheduler.result_arrived(slave_id, task_id)
        if record is None:
            return  # it was cancelled meanwhile
        if how == "retry":  # it raised and may run again: back of the queue
            self.scheduler.requeue(record)
        else:
            self.scheduler.task_finished(record, None, None)
        if self.kind == "pull":
            self.scheduler.slaves[slave_id].credit += 1
            self.scheduler.refresh(self.scheduler.slaves[slave_id])

    @precondition(lambda self: self.scheduler.tasks)
    @rule(data=st.data())
    def a_task_is_cancelled(self, data: st.DataObject) -> None:
        task_id = data.draw(st.sampled_from(sorted(self.scheduler.tasks)))
        task = self.scheduler.cancel(task_id)
        assert task is not None and task.state == TaskState.CANCELLED
        # An assigned one is still held by its slave, whose (cancelled) result comes later.

    @precondition(lambda self: self.holdings)
    @rule(data=st.data())
    def a_slave_is_lost(self, data: st.DataObject) -> None:
        slave = self.slave(data)
        requeued = self.scheduler.remove_slave(slave.slave_id)
        held = self.holdings.pop(slave.slave_id)
        assert {t.task_id for t in requeued} == {t for t in held if t in self.scheduler.tasks}
        assert all(t.state == TaskState.QUEUED and t.slave_id is None for t in requeued)

    @precondition(lambda self: any(self.holdings.values()))
    @rule(data=st.data(), junk=st.booleans())
    def a_slave_gives_tasks_back(self, data: st.DataObject, junk: bool) -> None:
        """A steal request answered: the slave releases some of what it holds, unstarted."""
        slave_id = data.draw(st.sampled_from(sorted(s for s, h in self.holdings.items() if h)))
        slave = self.scheduler.slaves[slave_id]
        # Only tasks still live: a cancelled one would have been cancelled on the slave
        # (see test_a_task_cancelled_then_given_back_is_no_longer_counted_as_held).
        held = sorted(t for t in self.holdings[slave_id] if t in self.scheduler.tasks)
        given = data.draw(st.lists(st.sampled_from(held), unique=True)) if held else []
        others = sorted(t for s, h in self.holdings.items() if s != slave_id for t in h)
        ids = [*given, *(["never-sent", *others[:2]] if junk else [])]
        before = {s: set(x.in_flight) for s, x in self.scheduler.slaves.items()}

        idle_before = {s.slave_id for s in self.scheduler.ready if len(s.in_flight) < s.workers}

        back = self.scheduler.released(slave, ids)

        assert [t.task_id for t in back] == given
        self.holdings[slave_id].difference_update(given)
        # Each goes straight to another slave that had idle workers, or back to the queue.
        placed = {s.slave_id: [t.task_id for t in b] for s, b in self.scheduler.take_outboxes()}
        for task in back:
            if task.state == TaskState.QUEUED:
                assert task.slave_id is None
            else:
                assert task.state == TaskState.ASSIGNED
                assert task.slave_id != slave_id and task.slave_id in idle_before
                assert task.task_id in placed[task.slave_id]
        for other_id, in_flight in before.items():  # nobody else's own tasks moved
            if other_id != slave_id:
                gained = set(placed.get(other_id, []))
                assert self.scheduler.slaves[other_id].in_flight == in_flight | gained
                self.holdings[other_id].update(gained)
        if self.kind == "pull":
            slave.credit += len(given)
            self.scheduler.refresh(slave)

    # -- what must always hold -------------------------------------------------------------

    @invariant()
    def each_slave_uses_what_its_assigned_tasks_need_and_no_more_than_it_has(self) -> None:
        for slave in self.scheduler.slaves.values():
            expected: Counter[str] = Counter()
            for task in self.live():
                if task.state == TaskState.ASSIGNED and task.slave_id == slave.slave_id:
                    expected.update(task.resources or {})
            offered = slave.resources or {}
            for name in set(expected) | set(slave.used):
                used = slave.used.get(name, 0.0)
                assert used == pytest.approx(expected[name]), (slave.slave_id, name)
                assert -1e-9 <= used <= offered.get(name, 0.0) + 1e-9, (slave.slave_id, name)

    @invariant()
    def every_task_is_in_exactly_one_state(self) -> None:
        scheduler = self.scheduler
        entries = Counter(t.task_id for t in scheduler.queue if t.state == TaskState.QUEUED)
        holders: dict[str, list[str]] = {}
        for slave in scheduler.slaves.values():
            for task_id in slave.in_flight:
                holders.setdefault(task_id, []).append(slave.slave_id)
        for task_id, task in self.pushed.items():
            live = scheduler.tasks.get(task_id)
            if live is None:
                assert task.state in (TaskState.DONE, TaskState.FAILED, TaskState.CANCELLED)
                assert entries[task_id] == 0
                continue
            assert live is task
            if task.state == TaskState.QUEUED:
                assert entries[task_id] == 1
                assert task.slave_id is None and task_id not in holders
            else:
                assert task.state == TaskState.ASSIGNED
                assert entries[task_id] == 0
                assert holders.get(task_id) == [task.slave_id]
        assert all(task_id in self.pushed for task_id in entries)

    @invariant()
    def a_slaves_tasks_in_flight_are_what_it_was_sent_and_has_not_answered(self) -> None:
        for slave_id, slave in self.scheduler.slaves.items():
            assert slave.in_flight == self.holdings[slave_id]

    @invariant()
    def only_tasks_no_slave_could_run_fail_and_only_after_their_wait(self) -> None:
        if self.scheduler.resource_wait == math.inf:
            assert not self.failed


ResourceBookkeeping.TestCase.settings = MACHINES
TestResourcesAlwaysAddUp = ResourceBookkeeping.TestCase


def test_a_task_needing_resources_goes_only_where_they_are_free_and_holds_nothing_up():
    scheduler = make_scheduler("push", "load", prefetch=4)
    plain = make_slave("plain", workers=4)
    gpu = make_slave("gpu", workers=4, resources={"gpu": 1.0})
    scheduler.add_slave(plain)
    scheduler.add_slave(gpu)
    first, second = make_tasks(2, {"gpu": 1.0})
    rest = make_tasks(6)
    scheduler.push_tasks([first, second, *rest])

    sent = dispatch(scheduler)

    assert first.task_id in sent["gpu"] and second.task_id not in sent.get("gpu", [])
    assert sum(map(len, sent.values())) == 7  # the second gpu task waits; the rest go
    assert list(scheduler.queue) == [second]
    assert gpu.used == {"gpu": 1.0}
    finish(scheduler, "gpu", first.task_id)
    assert gpu.used == {"gpu": 0.0}
    assert dispatch(scheduler) == {"gpu": [second.task_id]}


@pytest.mark.parametrize("how", ["retry", "cancel", "drop-system", "lost"])
def test_a_task_that_leaves_its_slave_gives_back_the_resources_it_held(how):
    scheduler = make_scheduler("push", "load", prefetch=2)
    gpu = make_slave("gpu", workers=2, resources={"gpu": 2.0, "mem": 8.0})
    scheduler.add_slave(gpu)
    scheduler.start_system("sys")
    [kept] = make_tasks(1, {"gpu": 1.0, "mem": 3.0})
    [leaving] = make_tasks(1, {"gpu": 1.0, "mem": 3.0}, system_id="sys")
    scheduler.push_tasks([kept, leaving])
    assert dispatch(scheduler) == {"gpu": [kept.task_id, leaving.task_id]}
    assert gpu.used == {"gpu": 2.0, "mem": 6.0}

    if how == "retry":
        scheduler.requeue(scheduler.result_arrived("gpu", leaving.task_id))
    elif how == "cancel":
        scheduler.cancel(leaving.task_id)
    elif how == "drop-system":
        assert scheduler.drop_system("sys") == [leaving]
    else:
        scheduler.remove_slave("gpu")
        assert scheduler.counts() == {"queued": 2, "assigned": 0}
        return

    assert gpu.used == {"gpu": 1.0, "mem": 3.0}
    assert gpu.fits({"gpu": 1.0, "mem": 3.0}) and not gpu.fits({"gpu": 2.0})


# -- the unsatisfiable path ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_a_task_no_slave_could_ever_run_fails_once_its_wait_is_over(kind, clock):
    scheduler = make_scheduler(kind)
    scheduler.resource_wait = 0.0
    scheduler.add_slave(make_slave("a", workers=2, credit=4, resources={"gpu": 1.0}))
    [greedy] = make_tasks(1, {"gpu": 4.0})
    others = make_tasks(3)
    scheduler.push_tasks([greedy, *others])

    sent = dispatch(scheduler)

    assert sent == {"a": [t.task_id for t in others]}
    assert scheduler.take_unsatisfiable() == [greedy]
    assert scheduler.take_unsatisfiable() == []  # handed over once
    assert greedy.state == TaskState.FAILED
    assert greedy.task_id not in scheduler.tasks
    assert not scheduler.queue
    assert scheduler.counts() == {"queued": 0, "assigned": 3}


def test_a_task_waiting_for_resources_fails_only_after_resource_wait(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = 5.0
    scheduler.add_slave(make_slave("a", workers=1, resources={"gpu": 1.0}))
    [greedy] = make_tasks(1, {"gpu": 2.0})
    scheduler.push_task(greedy)

    for now in (0.0, 2.0, 4.99):
        clock.now = 1000.0 + now
        dispatch(scheduler)
        assert scheduler.take_unsatisfiable() == []
        assert scheduler.counts() == {"queued": 1, "assigned": 0}
    clock.now = 1005.0
    dispatch(scheduler)
    assert scheduler.take_unsatisfiable() == [greedy]


def test_a_task_waiting_for_resources_fails_even_when_no_slave_has_room(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = 1.0
    scheduler.add_slave(make_slave("a", workers=1))
    scheduler.push_tasks(make_tasks(2))  # fills the only slave
    [greedy] = make_tasks(1, {"gpu": 1.0})
    scheduler.push_task(greedy)
    dispatch(scheduler)
    assert not scheduler.ready

    clock.now += 1.0
    dispatch(scheduler)

    assert scheduler.take_unsatisfiable() == [greedy]


def test_with_no_slave_at_all_a_task_needing_resources_waits_for_one(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = 0.0
    [task] = make_tasks(1, {"gpu": 1.0})
    scheduler.push_task(task)

    for _ in range(3):
        clock.now += 60.0
        dispatch(scheduler)
        assert scheduler.take_unsatisfiable() == []
    assert scheduler.tasks[task.task_id] is task and task.state == TaskState.QUEUED
    scheduler.add_slave(make_slave("late", workers=1, resources={"gpu": 1.0}))
    assert dispatch(scheduler) == {"late": [task.task_id]}


def test_a_slave_that_could_run_it_but_is_not_active_keeps_a_task_waiting(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = 0.0
    scheduler.add_slave(make_slave("small", workers=1, resources={"gpu": 1.0}))
    scheduler.add_slave(
        make_slave("big", workers=1, resources={"gpu": 4.0}, state=NodeState.INACTIVE)
    )
    [task] = make_tasks(1, {"gpu": 4.0})
    scheduler.push_task(task)
    clock.now += 60.0

    assert dispatch(scheduler) == {}
    assert scheduler.take_unsatisfiable() == []
    scheduler.slaves["big"].state = NodeState.ACTIVE
    scheduler.refresh(scheduler.slaves["big"])
    assert dispatch(scheduler) == {"big": [task.task_id]}


def test_an_infinite_resource_wait_never_fails_a_task(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = math.inf
    scheduler.add_slave(make_slave("a", workers=1))
    [task] = make_tasks(1, {"gpu": 1.0})
    scheduler.push_task(task)
    for _ in range(3):
        clock.now += 1e9
        dispatch(scheduler)
    assert scheduler.take_unsatisfiable() == []
    assert scheduler.counts() == {"queued": 1, "assigned": 0}


# -- work stealing -------------------------------------------------------------------------------


def backlogged(kind: str = "push", pace: float = 0.1, held: int = 4, workers: int = 1):
    """A slave ``victim`` holding ``held`` tasks for ``workers`` workers, and an idle slave."""
    scheduler = make_scheduler(kind, prefetch=held)
    victim = make_slave("victim", workers=workers, credit=held, pace=pace)
    scheduler.add_slave(victim)
    tasks = make_tasks(held)
    scheduler.push_tasks(tasks)
    assert dispatch(scheduler) == {"victim": [t.task_id for t in tasks]}
    idle = make_slave("idle", workers=2, credit=4)
    scheduler.add_slave(idle)
    return scheduler, victim, idle, tasks


def test_a_slave_holding_real_work_beyond_its_workers_is_asked_for_it_when_one_is_idle(clock):
    scheduler, victim, _, _ = backlogged(pace=0.1, held=4, workers=1)

    plans = scheduler.plan_steals()

    assert plans == [(victim, 2)]  # 3 beyond its one worker, but only 2 workers are idle
    assert 3 * 0.1 / 1 >= STEAL_MIN_BACKLOG


def test_tiny_tasks_are_never_stolen(clock):
    scheduler, _, _, _ = backlogged(pace=STEAL_MIN_BACKLOG / 10, held=4, workers=1)
    assert scheduler.plan_steals() == []


def test_a_slave_whose_pace_is_not_known_yet_is_not_asked(clock):
    scheduler, _, _, _ = backlogged(pace=0.0)
    assert scheduler.plan_steals() == []


def test_nothing_is_stolen_when_stealing_is_off(clock):
    scheduler, _, _, _ = backlogged()
    scheduler.stealing = False
    assert scheduler.plan_steals() == []


def test_nothing_is_stolen_while_the_queue_has_tasks(clock):
    scheduler, victim, _, _ = backlogged()
    scheduler.push_tasks(make_tasks(1))  # the idle slave gets this one first
    assert scheduler.plan_steals() == []
    clock.now += STEAL_INTERVAL
    dispatch(scheduler)
    assert scheduler.plan_steals() == [(victim, 1)]  # one idle worker left


def test_nothing_is_stolen_when_no_slave_is_idle(clock):
    scheduler, victim, idle, _ = backlogged()
    idle.state = NodeState.INACTIVE  # only active slaves count as idle
    scheduler.refresh(idle)
    assert scheduler.plan_steals() == []


def test_a_slave_is_not_asked_again_until_it_answered_or_its_patience_ran_out(clock):
    scheduler, victim, _, _ = backlogged(held=6)
    asked_at = clock.now
    assert scheduler.plan_steals() == [(victim, 2)]

    clock.now += STEAL_INTERVAL
    assert scheduler.plan_steals() == []  # still waiting for its answer
    clock.now = asked_at + STEAL_PATIENCE - 0.01
    assert scheduler.plan_steals() == []
    clock.now = asked_at + STEAL_PATIENCE + STEAL_INTERVAL
    assert scheduler.plan_steals() == [(victim, 2)]  # no answer in time: ask again

    clock.now += STEAL_INTERVAL
    assert scheduler.released(victim, []) == []  # it answered, with nothing to give
    assert scheduler.plan_steals() == [(victim, 2)]  # so it may be asked again at once


def test_the_scheduler_looks_for_idle_slaves_at_most_every_steal_interval(clock):
    scheduler, victim, _, _ = backlogged()
    assert scheduler.plan_steals() == [(victim, 2)]
    scheduler.released(victim, [])  # answered: it could be asked again ...

    looked_at = clock.now
    assert scheduler.plan_steals() == []  # ... but not before the next look is due
    clock.now = looked_at + STEAL_INTERVAL * 0.9
    assert scheduler.plan_steals() == []
    clock.now = looked_at + STEAL_INTERVAL
    assert scheduler.plan_steals() == [(victim, 2)]


@CHECKS
@given(
    slaves=st.lists(
        st.tuples(
            st.integers(0, 3),  # workers
            st.integers(0, 8),  # tasks held
            st.sampled_from([0.0, 0.001, 0.01, 0.05, 0.5]),  # pace
            st.sampled_from([NodeState.ACTIVE] * 3 + NOT_ACTIVE),
        ),
        min_size=1,
        max_size=6,
    ),
    stealing=st.booleans(),
    queued=st.booleans(),
)
def test_steal_plans_only_ask_for_real_surplus_and_never_more_than_is_idle(
    slaves, stealing, queued
):
    with frozen_clock():
        scheduler = make_scheduler("push", prefetch=1)
        scheduler.stealing = stealing
        for i, (workers, held, pace, state) in enumerate(slaves):
            slave = make_slave(f"s{i}", workers, state=state, pace=pace)
            slave.in_flight = {f"s{i}-t{j}" for j in range(held)}
            scheduler.add_slave(slave)
        if queued:
            scheduler.push_tasks(make_tasks(1))

        plans = scheduler.plan_steals()

    active = [s for s in scheduler.slaves.values() if s.state == NodeState.ACTIVE]
    idle = sum(max(0, s.workers - len(s.in_flight)) for s in active)
    victims = [
        s
        for s in active
        if len(s.in_flight) > s.workers
        and (len(s.in_flight) - s.workers) * s.pace / max(1, s.workers) >= STEAL_MIN_BACKLOG
    ]
    if not stealing or queued or not idle:
        assert plans == []
        return
    assert bool(plans) == bool(victims)
    assert sum(count for _, count in plans) <= idle
    assert len({s.slave_id for s, _ in plans}) == len(plans)
    for slave, count in plans:
        assert any(slave is v for v in victims)
        assert 0 < count <= len(slave.in_flight) - slave.workers
    if len(plans) < len(victims):  # those left out only because every idle worker is spoken for
        assert sum(count for _, count in plans) == idle


@pytest.mark.parametrize("kind", sorted(SCHEDULERS))
def test_released_tasks_go_back_to_the_head_of_the_queue_in_order(kind, clock):
    scheduler = make_scheduler(kind, prefetch=4)
    victim = make_slave("victim", workers=1, credit=4, resources={"gpu": 4.0}, pace=0.1)
    other = make_slave("other", workers=1, credit=1)
    scheduler.add_slave(victim)
    held = make_tasks(2) + make_tasks(2, {"gpu": 1.0})
    scheduler.push_tasks(held)
    assert dispatch(scheduler) == {"victim": [t.task_id for t in held]}
    scheduler.add_slave(other)
    [others] = make_tasks(1)
    scheduler.push_task(others)
    assert dispatch(scheduler) == {"other": [others.task_id]}
    urgent = make_tasks(1, priority=5)
    waiting = make_tasks(2)
    for slave in (victim, other):  # both full now: these stay queued
        slave.credit = 0
        slave.want = 0
        scheduler.refresh(slave)
    scheduler.push_tasks(urgent + waiting)
    assert victim.used == {"gpu": 2.0}

    give = [held[1], held[3], held[2]]  # in the order the slave gives them
    back = scheduler.released(
        victim, [t.task_id for t in give] + ["never-sent", others.task_id, held[1].task_id]
    )

    assert back == give
    assert list(scheduler.queue) == urgent + give + waiting  # ahead of their own priority only
    assert victim.in_flight == {held[0].task_id}
    assert victim.used == {"gpu": 0.0}
    assert victim.stolen == 3
    assert other.in_flight == {others.task_id}  # another slave's task is not taken from it
    assert all(t.state == TaskState.QUEUED and t.slave_id is None for t in give)
    assert scheduler.counts() == {"queued": 6, "assigned": 2}


def test_a_finished_task_given_back_late_is_ignored(clock):
    scheduler, victim, _, tasks = backlogged()
    finish(scheduler, "victim", tasks[3].task_id)

    assert scheduler.released(victim, [tasks[3].task_id]) == []
    assert victim.stolen == 0
    assert not scheduler.queue


def test_stolen_tasks_go_to_the_idle_slave(clock):
    scheduler, victim, idle, tasks = backlogged(held=4)
    [(asked, count)] = scheduler.plan_steals()
    assert (asked, count) == (victim, 2)
    newest = [t.task_id for t in tasks[-count:]][::-1]  # a slave gives the newest first

    scheduler.released(victim, newest)

    assert dispatch(scheduler) == {"idle": newest}
    assert len(victim.in_flight) == 2 and idle.in_flight == set(newest)
    clock.now += STEAL_INTERVAL
    assert scheduler.plan_steals() == []  # nobody is idle any more


# -- regressions: bugs these tests found -----------------------------------------------------


def test_a_late_result_credited_to_a_reregistered_slave_gives_back_nothing_it_did_not_take():
    scheduler = make_scheduler()
    scheduler.add_slave(make_slave("a", workers=2, resources={"gpu": 1.0}))
    [task] = make_tasks(1, {"gpu": 1.0})
    scheduler.push_task(task)
    dispatch(scheduler)
    scheduler.remove_slave("a")  # lost: the task is queued again
    again = make_slave("a", workers=2, resources={"gpu": 1.0})
    scheduler.add_slave(again)  # same node, new record, holding nothing

    assert finish(scheduler, "a", task.task_id) is task  # its late result is accepted

    assert again.used.get("gpu", 0.0) == 0.0
    scheduler.push_tasks(make_tasks(2, {"gpu": 1.0}))
    assert len(dispatch(scheduler).get("a", [])) == 1  # one gpu, one gpu task at a time


def test_a_task_cancelled_then_given_back_is_no_longer_counted_as_held(clock):
    scheduler, victim, _, tasks = backlogged()
    scheduler.cancel(tasks[3].task_id)  # the CANCEL crosses the slave's RELEASED on the wire

    scheduler.released(victim, [tasks[3].task_id])

    assert tasks[3].task_id not in victim.in_flight


def test_a_task_whose_only_fitting_slave_is_lost_gets_its_full_wait_for_a_new_one(clock):
    scheduler = make_scheduler()
    scheduler.resource_wait = 10.0
    scheduler.add_slave(make_slave("gpu", workers=1, resources={"gpu": 1.0}))
    scheduler.add_slave(make_slave("plain", workers=1))
    [task] = make_tasks(1, {"gpu": 1.0})
    scheduler.push_task(task)
    assert dispatch(scheduler) == {"gpu": [task.task_id]}
    clock.now += 60.0  # it ran for a minute

    scheduler.remove_slave("gpu")
    dispatch(scheduler)
    assert scheduler.take_unsatisfiable() == []  # not failed the moment its slave went
    clock.now += 10.0
    dispatch(scheduler)

    assert scheduler.take_unsatisfiable() == [task]


def test_a_slave_holding_tasks_that_need_resources_is_not_asked_to_give_any_back(clock):
    scheduler = make_scheduler(prefetch=4)
    busy = make_slave("busy", workers=1, pace=0.1, resources={"gpu": 4.0})
    scheduler.add_slave(busy)
    tasks = make_tasks(4, {"gpu": 1.0})
    scheduler.push_tasks(tasks)
    assert dispatch(scheduler) == {"busy": [t.task_id for t in tasks]}
    scheduler.add_slave(make_slave("idle", workers=2))  # it could not run them anyway

    assert scheduler.plan_steals() == []
