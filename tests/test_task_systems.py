"""Task systems on a real cluster: follow-up tasks, concurrency, early completion, failures."""

from __future__ import annotations

import gc
import threading

import pytest

import taskswarm as ts
from conftest import wait_for


class CollatzStep(ts.Task):
    def __init__(self, start: int, value: int):
        super().__init__(name=f"collatz-{start}")
        self.start, self.value = start, value

    def __call__(self):
        return self.value // 2 if self.value % 2 == 0 else 3 * self.value + 1


class CollatzWalks(ts.TaskSystem):
    """Each finished step pushes the next one, until every walk reaches 1."""

    def __init__(self, starts):
        super().__init__()
        self.steps = {s: 0 for s in starts}
        self.open = len(starts)

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [CollatzStep(s, s) for s in self.steps]

    def task_finished(self, master, task, result, error):
        assert error is None
        self.steps[task.start] += 1
        if result == 1:
            self.open -= 1
        else:
            master.push_task(CollatzStep(task.start, result))

    def is_complete(self, master):
        return self.open == 0

    def gather_result(self, master):
        return dict(self.steps), None


def collatz_length(n: int) -> int:
    steps = 0
    while n != 1:
        n = n // 2 if n % 2 == 0 else 3 * n + 1
        steps += 1
    return steps


class SumRange(ts.Task):
    def __init__(self, lo: int, hi: int):
        super().__init__(name=f"sum-{lo}-{hi}")
        self.lo, self.hi = lo, hi

    def __call__(self):
        if self.hi - self.lo <= 10:
            return ("sum", sum(range(self.lo, self.hi)))
        mid = (self.lo + self.hi) // 2
        return ("split", [(self.lo, mid), (mid, self.hi)])


class RecursiveSum(ts.TaskSystem):
    """A task answers either with a partial sum or with the halves to compute instead."""

    def __init__(self, n: int):
        super().__init__()
        self.n, self.total, self.open = n, 0, 1

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [SumRange(0, self.n)]

    def task_finished(self, master, task, result, error):
        self.open -= 1
        kind, value = result
        if kind == "sum":
            self.total += value
        else:
            master.push_tasks([SumRange(lo, hi) for lo, hi in value])
            self.open += len(value)

    def is_complete(self, master):
        return self.open == 0

    def gather_result(self, master):
        return self.total, None


def test_a_system_whose_finished_tasks_push_follow_ups_completes_right(app):
    starts = list(range(2, 30))
    assert app.run_system(CollatzWalks(starts), timeout=120) == {
        s: collatz_length(s) for s in starts
    }


def test_a_systems_result_is_asked_again_on_the_connection_that_received_it(app):
    # The master lets an outcome go once received; the connection that received it answers
    # from the handle the program still holds (it asked the master and failed before), and
    # holds none the program has dropped.
    handle = app.submit_system(RecursiveSum(100))
    assert handle.result(timeout=60) == sum(range(100))
    assert app.system_result(handle.system_id, timeout=30) == sum(range(100))
    assert app.system_result(handle.system_id[:10], timeout=30) == sum(range(100))
    system_id = handle.system_id
    del handle
    gc.collect()
    assert system_id not in app._ledger.systems and not app._ledger.ended_system(system_id)
    with pytest.raises(ts.UnknownTaskSystem, match="collected"):
        app.system_result(system_id, timeout=30)


def test_a_recursive_split_sums_a_range(app):
    assert app.run_system(RecursiveSum(5000), timeout=120) == sum(range(5000))


def test_two_systems_from_two_applications_run_at_once_without_mixing(cluster):
    results = {}

    def run(name, system):
        with cluster.connect() as own_app:
            results[name] = own_app.run_system(system, timeout=120)

    threads = [
        threading.Thread(target=run, args=("collatz", CollatzWalks(range(2, 25)))),
        threading.Thread(target=run, args=("sum", RecursiveSum(3000))),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(150)
    assert results == {
        "collatz": {s: collatz_length(s) for s in range(2, 25)},
        "sum": sum(range(3000)),
    }


class Probe(ts.Task):
    def __init__(self, x: int):
        super().__init__(name=f"probe-{x}")
        self.x = x

    def __call__(self):
        import time

        time.sleep(0.01)
        return self.x


class FindFirst(ts.TaskSystem):
    """Completes as soon as the wanted value is seen: the rest are leftovers to drop."""

    def __init__(self, n: int, wanted: int):
        super().__init__()
        self.n, self.wanted, self.found = n, wanted, None

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [Probe(i) for i in range(self.n)]

    def task_finished(self, master, task, result, error):
        if result == self.wanted:
            self.found = task.x

    def is_complete(self, master):
        return self.found is not None

    def gather_result(self, master):
        return self.found, None


def test_a_system_that_completes_early_drops_its_leftover_tasks(app):
    assert app.run_system(FindFirst(2000, 5), timeout=60) == 5

    def drained():
        status = app.status()
        idle = all(s["in_flight"] == 0 for s in status["slaves"])
        return status["tasks"] == {"queued": 0, "assigned": 0} and idle

    wait_for(drained, timeout=20)
    done = sum(s["done"] for s in app.status()["slaves"])
    assert done < 2000


class Boom(ts.Task):
    def __call__(self):
        raise KeyError("missing-thing")


class ExpectsError(ts.TaskSystem):
    def __init__(self):
        super().__init__()
        self.error = None

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [Boom()]

    def task_finished(self, master, task, result, error):
        self.error = error

    def is_complete(self, master):
        return self.error is not None

    def gather_result(self, master):
        return (
            type(self.error).__name__,
            str(self.error),
            "in __call__" in str(self.error.__cause__),
        ), None


def test_a_system_gets_a_task_exception_with_its_remote_traceback(app):
    assert app.run_system(ExpectsError(), timeout=60) == ("KeyError", "'missing-thing'", True)


class BrokenCallback(ExpectsError):
    def task_finished(self, master, task, result, error):
        raise RuntimeError("bug in my task system")


def test_a_system_whose_callback_raises_fails_alone(app):
    with pytest.raises(RuntimeError, match="bug in my task system") as info:
        app.run_system(BrokenCallback(), timeout=60)
    assert "task_finished" in str(info.value.__cause__)
    assert app.run_system(RecursiveSum(100), timeout=60) == sum(range(100))


class GathersError(RecursiveSum):
    def gather_result(self, master):
        return None, "the numbers did not add up"


def test_a_system_that_gathers_an_error_raises_it(app):
    with pytest.raises(ts.TaskSystemError, match="the numbers did not add up"):
        app.run_system(GathersError(50), timeout=60)


class NoTasks(RecursiveSum):
    def generate_tasks(self, master):
        return []


def test_a_system_that_waits_for_nothing_fails_with_a_clear_error(app):
    with pytest.raises(ts.TaskSystemError, match="no task left to wait for"):
        app.run_system(NoTasks(10), timeout=60)


def test_progress_reaches_the_application(app):
    seen = []
    app.run_system(
        RecursiveSum(2000), progress=lambda done, total: seen.append((done, total)), timeout=60
    )
    assert seen and seen[-1][0] == seen[-1][1] > 0
