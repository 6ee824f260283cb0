"""Futures as arguments: a task takes other tasks' results, on a real cluster.

``app.submit(total, fa, fb)`` runs ``total`` once ``fa`` and ``fb`` are done, with their results
in their places; a failed input fails its takers with ``ts.DependencyError`` caused by its
error. These run on a real LocalCluster (master, two slaves, their workers); the master's own
bookkeeping is tested in memory in tests/test_master_core.py.
"""

from __future__ import annotations

import gc
import os
import pickle
import signal
import threading
import time
from concurrent.futures import CancelledError
from pathlib import Path

import numpy as np
import pytest

import taskswarm as ts
from conftest import descendants, wait_for
from taskswarm.protocol import sharing


def add(a, b=0):
    return a + b


def total(values):
    return sum(values)


def boom():
    raise ValueError("the input broke")


def pause(seconds, value=None):
    time.sleep(seconds)
    return value


def step(x, seconds=0.0, note=None):
    """x + 1, after noting this worker's pid (a test finds which slave runs it)."""
    if note is not None:
        Path(note).write_text(str(os.getpid()))
    time.sleep(seconds)
    return x + 1


class Adds(ts.Task):
    """A task whose attribute is another task's Future."""

    def __init__(self, value):
        super().__init__(name="adds")
        self.value = value

    def __call__(self):
        return self.value + 100


@pytest.fixture(scope="module")
def cluster():
    with ts.LocalCluster(slaves=2, workers=1) as local:
        yield local


@pytest.fixture
def app(cluster):
    with cluster.connect() as connection:
        yield connection


def test_a_task_runs_with_its_inputs_results_in_their_places(app):
    fa, fb = app.submit(add, 10), app.submit(add, 5)
    assert app.submit(add, fa, fb).result(timeout=30) == 15
    assert app.submit(add, fa, b=fb).result(timeout=30) == 15  # keyword arguments too
    assert app.submit(total, [fa, fb, 1]).result(timeout=30) == 16  # inside a list
    assert app.submit(Adds(fa)).result(timeout=30) == 110  # a Task's attribute


def test_a_chain_and_a_diamond(app):
    future = app.submit(add, 0, 1)
    for _ in range(20):
        future = app.submit(add, future, 1)
    assert future.result(timeout=60) == 21

    top = app.submit(add, 1)
    left, right = app.submit(add, top, 10), app.submit(add, top, 20)
    assert app.submit(add, left, right).result(timeout=30) == 32


def test_an_input_done_before_is_taken_by_value(app):
    done = app.submit(add, 41)
    assert done.result(timeout=30) == 41
    assert app.submit(add, done, 1).result(timeout=30) == 42


def test_a_failed_input_fails_its_takers_with_its_error_as_the_cause(app):
    broken = app.submit(boom)
    taker = app.submit(add, broken, 1)
    further = app.submit(add, taker, 1)
    with pytest.raises(ts.DependencyError, match="did not run: its input") as caught:
        taker.result(timeout=30)
    assert isinstance(caught.value.__cause__, ValueError)
    assert str(caught.value.__cause__) == "the input broke"
    assert caught.value.dependency == broken.task_id
    with pytest.raises(ts.DependencyError) as caught:
        further.result(timeout=30)
    assert isinstance(caught.value.__cause__, ts.DependencyError)
    # Sent after the input failed: fails at once, never sent.
    with pytest.raises(ts.DependencyError, match="failed: ValueError: the input broke"):
        app.submit(add, broken, 1).result(timeout=5)


def test_a_cancelled_input_fails_its_takers(app):
    slow = app.submit(pause, 30)
    taker = app.submit(add, slow, 1)
    wait_for(slow.running, timeout=20)
    assert app.cancel(slow)
    with pytest.raises(ts.DependencyError, match="was cancelled") as caught:
        taker.result(timeout=30)
    assert isinstance(caught.value.__cause__, CancelledError)


def test_the_executor_takes_futures_too(app):
    with app.executor() as executor:
        fa = executor.submit(add, 2)
        assert executor.submit(add, fa, 3).result(timeout=30) == 5


def test_a_future_of_another_connection_is_refused_at_submit(cluster, app):
    with cluster.connect() as other:
        theirs = other.submit(add, 1)
        with pytest.raises(TypeError, match="belongs to another connection"):
            app.submit(add, theirs, 1)
        assert theirs.result(timeout=30) == 1


def test_a_future_cannot_be_pickled_outside_a_task(app):
    future = app.submit(add, 1)
    with pytest.raises(TypeError, match="only as an argument of a task"):
        pickle.dumps(future)
    assert future.result(timeout=30) == 1


class Stalls:
    """An argument that pickles slowly, once ``future`` is done: what happens to a task still
    being pickled when its input finishes and its application would confirm that input."""

    def __init__(self, future):
        self.future = future

    def __reduce__(self):
        self.future.result(timeout=30)
        time.sleep(0.1)  # twenty times the delay after which results are confirmed
        return (int, (7,))


def test_an_input_that_finishes_while_its_taker_is_pickled_is_still_given_to_it(app):
    for _ in range(3):
        quick = app.submit(add, 1)
        # ``quick`` is pending when pickled, done (and would be confirmed) before the task
        # leaves: the master must still have its result when the task arrives.
        taker = app.submit(add, quick, Stalls(quick))
        assert taker.result(timeout=30) == 8


def test_many_takers_of_one_input_and_inputs_that_finish_while_sent(app):
    for _ in range(5):
        source = app.submit(add, 1)
        takers = [app.submit(add, source, i) for i in range(200)]
        assert [f.result(timeout=60) for f in takers] == [i + 1 for i in range(200)]


def test_big_results_go_through_shared_memory_and_are_freed_once_taken(cluster, app):
    assert app.sharing is not None
    leaves = [app.submit(np.full, 1 << 17, float(i)) for i in range(16)]  # 1 MiB each
    level = leaves
    while len(level) > 1:
        level = [app.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
    root = level[0].result(timeout=60)
    assert root.shape == (1 << 17,) and root[0] == sum(range(16))
    for future in leaves:
        future.result(timeout=30)
    # Every input's segment is freed once the tasks that take it are done.
    wait_for(lambda: sharing.segments(cluster.shared_prefix) == [], timeout=20)
    kept = app.status()["master"]["kept"]
    assert kept["waiting_tasks"] == 0 and kept["input_results"] == 0


def test_without_shared_memory_inputs_travel_in_messages():
    with ts.LocalCluster(slaves=1, workers=2, shared_memory=False) as cluster:
        with cluster.connect() as app:
            assert app.sharing is None
            fa = app.submit(np.full, 1 << 17, 2.0)
            fb = app.submit(np.full, 1 << 17, 3.0)
            assert app.submit(add, fa, fb).result(timeout=60)[0] == 5.0


def slow_big(seconds):
    time.sleep(seconds)
    return np.full(1 << 18, 1.0)  # 2 MiB: more than a socket holds


def test_tasks_with_big_inputs_are_not_sent_ahead_to_a_busy_worker():
    """Sent ahead to a worker busy with a task that returns 2 MiB, a task carrying 2 MiB of
    inputs would fill the worker's socket while the worker fills the slave's: each waiting
    for the other to read, for ever. Two takers of one input become ready together."""
    with ts.LocalCluster(slaves=1, workers=1, shared_memory=False) as cluster:
        with cluster.connect() as app:
            for future in app.push_tasks(ts.FunctionTask(add, i) for i in range(50)):
                future.result(timeout=30)  # the slave's pace: tasks of a millisecond
            made = app.submit(np.full, 1 << 18, 1.0)
            takers = [app.submit(add, made, made) for _ in range(4)]
            assert [f.result(timeout=30)[0] for f in takers] == [2.0] * 4


def test_a_chain_survives_the_slave_running_it_killed(tmp_path):
    with ts.LocalCluster(slaves=2, workers=1) as cluster, cluster.connect() as app:
        notes = [tmp_path / f"step-{i}" for i in range(6)]
        future = app.submit(step, 0, 0.0, str(notes[0]))
        for i in range(1, 6):
            future = app.submit(step, future, 0.5 if i == 3 else 0.0, str(notes[i]))
        wait_for(notes[3].exists, timeout=30)
        worker = int(notes[3].read_text())
        (slave,) = [s for s in cluster.slave_processes if worker in descendants(s.pid)]
        os.kill(slave.pid, signal.SIGKILL)
        assert future.result(timeout=60) == 6


def test_takers_submitted_from_many_threads_while_inputs_finish(app):
    errors: list[BaseException] = []

    def submitter(seed):
        try:
            for i in range(20):
                source = app.submit(add, seed, i)
                assert app.submit(add, source, 1).result(timeout=60) == seed + i + 1
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=submitter, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors


def row_sum(matrix, i):
    return float(matrix[i].sum())


def test_scattered_data_is_sent_once_and_taken_by_many_tasks(cluster, app):
    matrix = np.arange(1 << 18, dtype=float).reshape(512, 512)  # 2 MiB
    ref = app.scatter(matrix)
    assert ref.done() and ref.result() is matrix
    futures = [app.submit(row_sum, ref, i) for i in range(100)]
    assert [f.result(timeout=60) for f in futures] == [float(row.sum()) for row in matrix[:100]]
    kept = app.status()["master"]["kept"]
    assert kept["scattered"] == 1 and kept["input_results"] == 1
    assert kept["input_bytes"] < 1024  # on one host: a reference to one segment
    assert len(sharing.segments(cluster.shared_prefix)) == 1  # made once, not per task

    del futures, ref
    gc.collect()  # the last reference to it is gone: the master and this process let it go
    wait_for(lambda: app.status()["master"]["kept"]["scattered"] == 0, timeout=20)
    assert app.status()["master"]["kept"]["input_results"] == 0
    wait_for(lambda: sharing.segments(cluster.shared_prefix) == [], timeout=20)


def test_scattered_data_let_go_while_its_taker_runs_is_forgotten_after_it(app):
    # The taker holds the only reference: it is let go on the connection's I/O thread, as the
    # taker's result arrives (a garbage collector's callback, which may run under any lock,
    # so it only hands the id over: see client/sending.py).
    taker = app.submit(total, app.scatter([1, 2, 3]))
    assert taker.result(timeout=30) == 6
    del taker
    gc.collect()
    wait_for(lambda: app.status(timeout=5)["master"]["kept"]["scattered"] == 0, timeout=20)


def test_scattered_data_travels_in_messages_without_shared_memory():
    with ts.LocalCluster(slaves=1, workers=2, shared_memory=False) as cluster:
        with cluster.connect() as app:
            ref = app.scatter(list(range(1000)))
            assert [app.submit(total, ref).result(timeout=30) for _ in range(3)] == [499500] * 3
            assert app.status()["master"]["kept"]["input_bytes"] > 1000


def test_scattered_data_of_another_connection_cannot_be_taken(cluster, app):
    with cluster.connect() as other:
        theirs = other.scatter([1, 2, 3])
        with pytest.raises(TypeError, match="belongs to another connection"):
            app.submit(total, theirs)
        assert other.submit(total, theirs).result(timeout=30) == 6


# -- a task system's tasks take each other's results ------------------------------------------


def named(name, fn, *args, **kwargs):
    task = ts.FunctionTask(fn, *args, **kwargs)
    task.name = name
    return task


class Graph(ts.TaskSystem):
    """Pushes takers of pending inputs, of a failed one, and (once the rest are in) of an input
    long done: the refs ``master.push_task`` returns stand for the results."""

    def __init__(self):
        super().__init__()
        self.seen = {}
        self.first = None

    def generate_tasks(self, master):
        first = master.push_task(named("first", add, 1, 2))
        second = master.push_task(named("second", add, 10))
        self.first = first  # kept: a taker pushed later takes its result by value
        master.push_task(named("sum", add, first, b=second))
        master.push_task(named("nested", total, [first, second, 5]))
        broken = master.push_task(named("broken", boom))
        return [named("after-broken", add, broken, 1)]

    def task_finished(self, master, task, result, error):
        cause = None if error is None else error.__cause__
        self.seen[task.name] = (result, type(error).__name__, type(cause).__name__)
        if len(self.seen) == 6:
            assert self.first.done()
            master.push_task(named("late", add, self.first, 100))

    def is_complete(self, master):
        return len(self.seen) == 7

    def gather_result(self, master):
        return self.seen, None


def test_a_task_system_pushes_tasks_that_take_its_other_tasks_results(app):
    seen = app.run_system(Graph(), timeout=60)
    assert seen["sum"] == (13, "NoneType", "NoneType")
    assert seen["nested"] == (18, "NoneType", "NoneType")
    assert seen["late"] == (103, "NoneType", "NoneType")  # its input long done: by value
    # A failed input fails its taker, unrun, with the input's own error as the cause.
    assert seen["after-broken"] == (None, "DependencyError", "ValueError")


class Race(ts.TaskSystem):
    """Pushes a taker of ``source`` while ``source``'s outcome is in the runner's inbox, not
    yet applied: the master, which has let that outcome go, must send the taker back."""

    def __init__(self):
        super().__init__()
        self.source = None
        self.results = {}
        self.raced = None

    def generate_tasks(self, master):
        # "source" starts once "gate" is done, so its outcome comes in a later batch than
        # gate's, while gate's task_finished runs.
        gate = master.push_task(named("gate", add, 0))
        self.source = master.push_task(named("source", add, gate, 41))
        return []

    def task_finished(self, master, task, result, error):
        self.results[task.name] = result if error is None else repr(error)
        if task.name == "gate":
            inbox = master._runner.inbox  # the source's outcome arrives while this runs
            deadline = time.monotonic() + 30
            while inbox.empty() and time.monotonic() < deadline:
                time.sleep(0.01)
            self.raced = not inbox.empty() and not self.source.done()
            master.push_task(named("taker", add, self.source, 1))

    def is_complete(self, master):
        return len(self.results) == 3

    def gather_result(self, master):
        return (self.results, self.raced), None


def test_a_taker_pushed_while_its_inputs_outcome_is_on_its_way_gets_it(app):
    results, raced = app.run_system(Race(), timeout=60)
    assert raced  # the case this is about did happen
    assert results == {"gate": 0, "source": 41, "taker": 42}


class Holds(ts.TaskSystem):
    """Completes while a taker still waits for its input: the taker goes with the system."""

    def generate_tasks(self, master):
        slow = master.push_task(named("slow", pause, 5.0, 1))
        return [named("quick", add, 1), named("taker", add, slow, 1)]

    def task_finished(self, master, task, result, error):
        pass

    def is_complete(self, master):
        return True

    def gather_result(self, master):
        return "done", None


def test_a_task_system_that_completes_leaves_no_taker_waiting(app):
    assert app.run_system(Holds(), timeout=60) == "done"
    kept = app.status()["master"]["kept"]
    assert kept["waiting_tasks"] == 0


def test_a_result_ref_is_refused_outside_its_task_system(app):
    ref = ts.ResultRef("0123", "some-system", "elsewhere")
    with pytest.raises(TypeError, match="belongs to a task system"):
        app.submit(add, ref)
    # A durable system's snapshot holds its refs as they are; its runner finds them again.
    from taskswarm import inputs

    found = []
    with inputs.reviving(found.append):
        copy = pickle.loads(pickle.dumps(ref))
    assert (copy.task_id, copy.system_id, copy.done()) == ("0123", "some-system", False)
    assert found == [copy]


def test_a_durable_masters_task_system_snapshots_its_refs(tmp_path):
    # Each push carries a snapshot of the system, refs and all (pickled as they are, not as
    # placeholders), and the takers journaled as they were sent.
    with ts.LocalCluster(slaves=1, workers=2, state_dir=tmp_path) as cluster:
        with cluster.connect() as app:
            seen = app.run_system(Graph(), timeout=60)
    assert seen["sum"][0] == 13 and seen["late"][0] == 103
    assert seen["after-broken"][1:] == ("DependencyError", "ValueError")


def test_a_big_result_in_shared_memory_is_read_only_when_asked_for(app):
    # A graph's intermediate results are mapped as they arrive, not read: the digest and the
    # unpickling wait for result() (which the graph's application never calls for most).
    future = app.submit(np.full, 1 << 18, 2.0)  # 2 MiB: in shared memory
    wait_for(future.done, timeout=30)
    assert type(future._result) is sharing.Mapped
    values: list = []
    threads = [threading.Thread(target=lambda: values.append(future.result())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert len(values) == 4 and all(value is values[0] for value in values)  # read once
    assert float(values[0].sum()) == 2.0 * (1 << 18)
    assert app.submit(total, future).result(timeout=30) == 2.0 * (1 << 18)  # by value now
