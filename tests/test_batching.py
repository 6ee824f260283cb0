"""Batching on every hop, checked for what it must never change: every task runs, its result
arrives once, and a failure belongs to the task that caused it.

Worker pipelines are driven directly (the way a slave's loop drives them); streaming
submission, the slaves' window and the confirmation of results run on real clusters.
"""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
import time
from collections.abc import Iterator

import cloudpickle
import pytest

import taskswarm as ts
from conftest import free_port, wait_for
from taskswarm.protocol.keys import ClusterKeys
from taskswarm.protocol.messages import Header, Results
from taskswarm.slave.contracts import TaskManagerBase
from taskswarm.slave.node import PREFETCH, RESULTS_HOLD, STARTED_HOLD, Slave
from taskswarm.slave.pacing import PACE_WEIGHT, SLOW_TASK, folded
from taskswarm.slave.process_pool import ProcessPoolManager, WorkItem
from taskswarm.task import FunctionTask, Status
from test_process_pool import DEADLINE, outcomes, push, results

pytestmark = pytest.mark.usefixtures("tasks_travel_by_value")

# -- what the tasks run (shipped by value: the workers cannot import this test module) ----------


def sleep_and_pid(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def noop(x: object) -> object:
    return x


def learn_short_tasks(pool: ProcessPoolManager) -> None:
    """Start the pool and run many instant tasks: it learns tasks are short and pipelines
    deeply."""
    pool.start()
    for i in range(300):
        push(pool, FunctionTask(abs, -i))
    assert pool.wait_for_all(timeout=DEADLINE)
    results(pool)
    assert pool.depth() > 2


def run_with_timeouts(pool: ProcessPoolManager, count: int) -> list:
    """What the slave's loop does: collect, and enforce timeouts, until ``count`` are in."""
    seen: list = []
    deadline = time.monotonic() + DEADLINE
    while len(seen) < count:
        assert time.monotonic() < deadline, f"only {len(seen)} of {count} outcomes"
        pool.wait_for_all(timeout=0.02)
        pool.check_timeouts()
        seen.extend(results(pool))
    return seen


# -- worker pipelines ----------------------------------------------------------------------------


def test_a_crash_deep_in_a_pipeline_is_its_own_and_the_tasks_behind_it_run_once(make_pool):
    pool = make_pool(1)
    learn_short_tasks(pool)
    before = [push(pool, FunctionTask(abs, -i)) for i in range(5)]
    crash = push(pool, FunctionTask(os._exit, 7))
    after = [push(pool, FunctionTask(abs, -i)) for i in range(5, 10)]

    assert pool.wait_for_all(timeout=DEADLINE)

    got = outcomes(results(pool))  # fails on any duplicate
    assert got[crash] == (None, (Status.CRASH, "exit code 7"))
    assert [got[t] for t in before + after] == [(i, None) for i in range(10)]


def test_a_pipelined_tasks_timeout_counts_from_when_it_starts(make_pool):
    pool = make_pool(1)
    learn_short_tasks(pool)
    first = push(pool, FunctionTask(sleep_and_pid, 0.6))  # no timeout, runs first
    second = FunctionTask(sleep_and_pid, 0.05)
    pool.push_task(WorkItem(second.task_id, cloudpickle.dumps(second), 0.4))

    got = outcomes(run_with_timeouts(pool, 2))

    # It waited 0.6 s behind the first, longer than its timeout, and ran well within it.
    assert got[first][1] is None and got[second.task_id][1] is None
    assert got[first][0] == got[second.task_id][0]  # the same worker, one after the other


def test_cancelling_a_task_waiting_in_a_pipeline_leaves_the_running_one_alone(make_pool):
    pool = make_pool(1)
    learn_short_tasks(pool)
    running = push(pool, FunctionTask(sleep_and_pid, 0.3))
    waiting = push(pool, FunctionTask(abs, -1))
    assert [w.task_id for w in pool.held()] == [running, waiting]

    pool.cancel({waiting})

    assert pool.wait_for_all(timeout=DEADLINE)
    got = outcomes(results(pool))
    assert got[waiting] == (None, (Status.CANCELLED, b""))
    assert got[running][1] is None


def test_a_batch_of_slow_tasks_after_fast_ones_is_shared_among_all_workers(make_pool):
    pool = make_pool(4)
    learn_short_tasks(pool)
    tasks = [FunctionTask(sleep_and_pid, 0.05) for _ in range(16)]

    pool.push_tasks([WorkItem(t.task_id, cloudpickle.dumps(t)) for t in tasks])

    assert pool.wait_for_all(timeout=DEADLINE)
    pids = [value for value, _ in outcomes(results(pool)).values()]
    assert len(set(pids)) == 4, "the fast tasks' pace must not send the batch to one worker"


# -- on a cluster --------------------------------------------------------------------------------


def test_push_tasks_streams_a_generator_results_arrive_before_it_returns(app):
    first_result = threading.Event()
    app.on_task_finished = lambda task, result, error: first_result.set()

    def tasks() -> Iterator[ts.Task]:
        for i in range(3000):
            if i == 2000:  # two thousand made: some must have run by now, or this times out
                assert first_result.wait(DEADLINE), "no result while the tasks were being made"
            yield ts.FunctionTask(noop, i)

    futures = app.push_tasks(tasks())

    assert [f.result(timeout=DEADLINE) for f in futures] == list(range(3000))


def test_an_unsendable_task_mid_stream_withdraws_those_sent_before_it(app):
    lock = threading.Lock()

    def tasks() -> Iterator[ts.Task]:
        for _ in range(1200):
            yield ts.FunctionTask(time.sleep, 0.2)
        yield ts.FunctionTask(print, lock)

    with pytest.raises(TypeError, match=r"argument 0 \(_thread.lock\) cannot be pickled"):
        app.push_tasks(tasks())

    wait_for(lambda: app.status()["tasks"] == {"queued": 0, "assigned": 0}, timeout=DEADLINE)


def test_a_slave_asks_for_hundreds_of_tasks_when_they_take_microseconds(cluster, app):
    assert cluster.address.startswith("ipc://")  # a LocalCluster's nodes share a Unix socket
    for future in app.push_tasks([ts.FunctionTask(noop, i) for i in range(5000)]):
        future.result(timeout=DEADLINE)

    slaves = app.status()["slaves"]

    assert all(s["want"] > 10 * s["workers"] for s in slaves), slaves


def test_a_durable_master_forgets_results_once_the_application_has_them(nodes, key_file, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    journal = tmp_path / "state" / "journal.sqlite3"
    nodes.start(
        "master", "--bind", address, "--key-file", key_file, "--state-dir", str(journal.parent)
    )
    nodes.start("slave", address, "--key-file", key_file, "--workers", "2")

    with ts.connect(address, key_file=key_file) as app:
        futures = app.push_tasks([ts.FunctionTask(noop, i) for i in range(500)])
        assert [f.result(timeout=DEADLINE) for f in futures] == list(range(500))

        def rows() -> int:
            with sqlite3.connect(journal) as db:
                return db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0]

        wait_for(lambda: rows() == 0, timeout=DEADLINE)


# -- a slave gathers outcomes of short tasks into batches -----------------------------------------


class Instant(TaskManagerBase):
    """A task manager whose tasks finish when the test says so, at a pace the test sets."""

    def __init__(self, workers: int, pace: float) -> None:
        self.workers, self._pace = workers, pace
        self.results: queue.SimpleQueue[tuple[str, str, object, str | None]] = queue.SimpleQueue()
        self.began: list[str] = []

    def init(self, identity: str, address: str) -> None: ...
    def stop(self) -> None: ...
    def get_num_workers(self) -> int:
        return self.workers

    def get_results_queue(self) -> queue.SimpleQueue[tuple[str, str, object, str | None]]:
        return self.results

    def take_started(self) -> list[str]:
        began, self.began = self.began, []
        return began

    def finish(self, task_ids: list[str]) -> None:
        for task_id in task_ids:
            self.results.put((task_id, Status.OK, b"r", None))

    @property
    def pace(self) -> float:
        return self._pace


@pytest.fixture
def quick_slave() -> Iterator[tuple[Slave, Instant, list[Header]]]:
    """A slave of 2 workers whose tasks take 50 µs, its manager, and what it sends."""
    manager = Instant(workers=2, pace=50e-6)
    slave = Slave(f"tcp://127.0.0.1:{free_port()}", ClusterKeys(b"k" * 32), manager=manager)
    sent: list[Header] = []
    slave.outbox._send = lambda record, payloads=(): sent.append(record) or True
    try:
        yield slave, manager, sent
    finally:
        slave.close()


def holds(slave: Slave, n: int) -> list[str]:
    """The master sent it ``n`` tasks."""
    task_ids = [f"t{i}" for i in range(n)]
    slave.outbox._arrived.update(dict.fromkeys(task_ids, time.monotonic()))
    return task_ids


def results_sent(sent: list[Header]) -> list[int]:
    return [len(r.results) for r in sent if isinstance(r, Results) and r.results]


def test_a_slave_of_short_tasks_asks_for_enough_to_fill_messages(quick_slave):
    slave, _, _ = quick_slave
    assert slave.outbox.wanted() == 128  # 32 a message, four messages' worth on hand
    slave.outbox.window()
    assert slave.outbox.batch() == 32


def test_outcomes_of_short_tasks_go_back_a_batch_at_a_time(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    task_ids = holds(slave, 128)
    manager.finish(task_ids[:31])
    manager.began.append(task_ids[40])

    slave.outbox.send_results()
    assert results_sent(sent) == []  # 97 still to run: no hurry
    assert sent == []  # the start waits with them

    manager.finish(task_ids[31:32])
    slave.outbox.send_results()
    assert results_sent(sent) == [32]
    assert sent[-1].started == [task_ids[40]]


def test_a_lone_tasks_outcome_is_sent_at_once(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    manager.finish(holds(slave, 1))

    slave.outbox.send_results()

    assert results_sent(sent) == [1]


def test_a_lone_task_that_ends_soon_is_never_reported_begun(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    (task_id,) = holds(slave, 1)
    manager.began.append(task_id)
    slave.outbox.send_results()
    assert sent == []  # its start waits: its outcome may say all

    manager.finish([task_id])
    slave.outbox.send_results()
    assert results_sent(sent) == [1]
    assert sent[-1].started is None


def test_a_task_still_running_is_reported_begun_after_the_hold(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    (task_id,) = holds(slave, 1)
    manager.began.append(task_id)
    slave.outbox.send_results()
    assert sent == []
    assert slave.outbox._began_by is not None
    assert slave.outbox._began_by - time.monotonic() <= STARTED_HOLD

    slave.outbox._began_by = time.monotonic()  # the hold is over
    slave.outbox.send_results()

    assert [(r.results, r.started) for r in sent] == [([], [task_id])]
    assert slave.outbox._began_by is None


def test_outcomes_go_at_once_when_the_slave_runs_short_of_tasks(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    task_ids = holds(slave, 40)
    manager.finish(task_ids[:7])
    slave.outbox.send_results()
    assert results_sent(sent) == []  # 33 on hand: more than a batch
    manager.finish(task_ids[7:8])
    slave.outbox.send_results()
    assert results_sent(sent) == [8]  # 32 (0.8 ms): the master must hear now to refill in time


def test_outcomes_are_gathered_while_the_work_on_hand_is_long_enough(quick_slave):
    slave, manager, sent = quick_slave
    manager._pace = 0.002  # 2 ms a task: 20 tasks on hand are 20 ms of work for 2 workers
    slave.outbox.window()
    assert slave.outbox.batch() == 32
    task_ids = holds(slave, 30)
    manager.finish(task_ids[:10])
    slave.outbox.send_results()
    assert results_sent(sent) == []
    manager.finish(task_ids[10:28])
    slave.outbox.send_results()
    assert results_sent(sent) == [28]  # 2 tasks left, one for each worker: 2 ms


def test_gathered_outcomes_wait_no_longer_than_the_hold(quick_slave):
    slave, manager, sent = quick_slave
    slave.outbox.window()
    task_ids = holds(slave, 128)
    manager.finish(task_ids[:3])
    slave.outbox.send_results()
    assert results_sent(sent) == []
    assert slave.outbox._send_by is not None
    assert slave.outbox._send_by - time.monotonic() <= RESULTS_HOLD

    time.sleep(RESULTS_HOLD)
    slave.outbox.send_results()

    assert results_sent(sent) == [3]
    assert slave.outbox._send_by is None


def test_outcomes_of_tasks_of_milliseconds_wait_no_longer_than_a_slow_task(quick_slave):
    slave, manager, sent = quick_slave
    manager._pace = 0.01  # 128 held are 640 ms of work: a batch fills in 160 ms
    slave.outbox.window()
    task_ids = holds(slave, 128)
    manager.finish(task_ids[:3])
    slave.outbox.send_results()
    assert results_sent(sent) == []
    assert slave.outbox._send_by is not None
    assert slave.outbox._send_by - time.monotonic() <= SLOW_TASK


def test_slow_tasks_send_each_outcome_at_once(quick_slave):
    slave, manager, sent = quick_slave
    manager._pace = 0.2
    slave.outbox.window()
    task_ids = holds(slave, 4)
    manager.finish(task_ids[:1])

    slave.outbox.send_results()

    assert slave.outbox.batch() == 1
    assert results_sent(sent) == [1]


# -- a slave of slow tasks asks for no queue, from its first outcome on ---------------------------


def test_the_pace_starts_at_the_first_tasks_duration():
    assert folded(0.0, 0.06) == 0.06
    assert folded(0.0, 0.06, finished=3) == 0.06
    assert folded(0.06, 0.01) == pytest.approx(0.06 + PACE_WEIGHT * (0.01 - 0.06))


def test_a_slave_whose_first_task_is_slow_asks_for_no_queue_of_them(make_pool):
    """One task of 60 ms is a slow one (over ``SLOW_TASK``): the slave asks to hold what its
    worker pipelines (two), not a quarter of a second's worth of tasks it takes for short ones.
    A pace that started at a fifth of the first task's length (12 ms) asked for 20."""
    pool = make_pool(1)
    pool.start()
    push(pool, FunctionTask(sleep_and_pid, 0.06))
    assert pool.wait_for_all(timeout=DEADLINE)
    assert len(results(pool)) == 1
    assert pool.pace >= 0.06 > SLOW_TASK

    slave = Slave(f"tcp://127.0.0.1:{free_port()}", ClusterKeys(b"k" * 32), manager=pool)
    try:
        assert slave.outbox.wanted() == PREFETCH  # one worker, one task running and one next
    finally:
        slave.close()
