"""The process pool task manager, driven directly the way a slave's loop drives it.

The manager has no threads of its own (but for one that writes a big task to its worker): its
owner pushes ``WorkItem``s and then collects, either with ``wait_for_all`` or by calling
``collect`` for each readable worker pipe (what the slave's poller does). Outcomes come out of
``get_results_queue`` as ``(task_id, ok, pickled outcome)``. Every test here starts real worker
processes and stops them in a fixture.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import sys
import time
from collections import Counter
from multiprocessing.connection import wait
from pathlib import Path

import cloudpickle
import pytest

from taskswarm.errors import BadDigest, TaskTimeout
from taskswarm.protocol.digests import Payload, digest
from taskswarm.slave.process_pool import ProcessPoolManager, WorkItem
from taskswarm.task import REFUSED, FunctionTask, Status, Task, load_outcome

pytestmark = pytest.mark.usefixtures("tasks_travel_by_value")

DEADLINE = 30.0


# -- what the tasks run (shipped by value: the workers cannot import this test module) ----------


def square_with_pid(i: int) -> tuple[int, int]:
    total = sum(range(20_000))  # a little work, so that tasks overlap a resize
    assert total == 199_990_000
    return i * i, os.getpid()


def kill_myself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def block_forever() -> None:
    signal.pause()


# -- fixtures and helpers ------------------------------------------------------------------------


def push(pool: ProcessPoolManager, task: Task) -> str:
    pool.push_task(WorkItem(task.task_id, cloudpickle.dumps(task)))
    return task.task_id


def results(pool: ProcessPoolManager) -> list[tuple[str, bool, bytes]]:
    """Everything in the results queue now."""
    out = []
    while True:
        try:
            out.append(pool.get_results_queue().get_nowait())
        except queue.Empty:
            return out


def collect_until(pool: ProcessPoolManager, seen: list, count: int) -> None:
    """What the slave's loop does: wait on the worker pipes and collect, until ``count`` are in."""
    deadline = time.monotonic() + DEADLINE
    while len(seen) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"only {len(seen)} of {count} results within {DEADLINE}s"
        for fd in wait(pool.fds(), left):
            pool.collect(fd)
        seen.extend(results(pool))


def outcomes(items: list[tuple]) -> dict[str, tuple[object, object]]:
    """task id -> (result, error); a crash's error is ("crash", how the worker died).

    Items are ``(task_id, status, outcome, detail[, worker, began, ended])``; the detail (a
    failure as text) and the times are checked where they matter."""
    ids = Counter(task_id for task_id, *_ in items)
    assert all(n == 1 for n in ids.values()), f"results delivered twice: {ids.most_common(3)}"
    return {
        task_id: (None, (status, data))
        if status in (Status.CRASH, Status.CANCELLED)
        else load_outcome(status == Status.OK, data, task_id)
        for task_id, status, data, *_ in items
    }


def worker_processes(pool: ProcessPoolManager) -> list[multiprocessing.process.BaseProcess]:
    name = f"taskswarm-worker-{pool.identity}"
    return [p for p in multiprocessing.active_children() if p.name == name]


def is_running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def descendants() -> set[int]:
    """Every live process below this one (workers are the forkserver's children)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and is_running(int(entry.name)):
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    found, stack = set(), [os.getpid()]
    while stack:
        for child in parents.get(stack.pop(), []):
            found.add(child)
            stack.append(child)
    return found


# -- running tasks -------------------------------------------------------------------------------


def test_every_pushed_task_comes_out_of_the_results_queue_once_with_its_result(make_pool):
    pool = make_pool(2)
    pool.start()
    tasks = {i: FunctionTask(pow, i, 2) for i in range(50)}
    for task in tasks.values():
        push(pool, task)

    assert pool.wait_for_all(timeout=DEADLINE)

    got = outcomes(results(pool))
    assert got == {task.task_id: (i * i, None) for i, task in tasks.items()}


def test_each_outcome_says_which_worker_ran_it_and_when(make_pool):
    """The master's task stream draws a bar per task from these (``Outcome.worker``...)."""
    pool = make_pool(2)
    pool.start()
    before = time.time()
    ids = [push(pool, FunctionTask(abs, -i)) for i in range(6)]
    assert pool.wait_for_all(timeout=DEADLINE)
    after = time.time()

    got = {item[0]: item for item in results(pool)}

    pids = {p.pid for p in worker_processes(pool)}
    assert set(got) == set(ids)
    for _, status, _, _, worker, began, ended in got.values():
        assert status == Status.OK and worker in pids
        assert before <= began <= ended <= after


def test_tasks_pushed_before_start_wait_for_it(make_pool):
    pool = make_pool(1)
    ids = [push(pool, FunctionTask(abs, -i)) for i in range(5)]
    assert results(pool) == []
    assert [w.task_id for w in pool.held()] == ids

    pool.start()

    assert pool.wait_for_all(timeout=DEADLINE)
    assert {k: v[0] for k, v in outcomes(results(pool)).items()} == dict(
        zip(ids, range(5), strict=True)
    )


def test_a_task_that_raises_comes_back_as_its_error_and_the_pool_goes_on(make_pool):
    pool = make_pool(1)
    pool.start()
    bad = push(pool, FunctionTask(int, "not a number"))
    good = push(pool, FunctionTask(int, "42"))

    assert pool.wait_for_all(timeout=DEADLINE)

    items = results(pool)
    got = outcomes(items)
    assert type(got[bad][1]) is ValueError
    assert got[good] == (42, None)
    # Beside the pickled error, its text: what the master shows people without unpickling.
    detail = {task_id: text for task_id, _, _, text, *_ in items}
    assert detail[good] is None
    assert detail[bad].startswith("ValueError: invalid literal for int()")
    assert "Traceback (most recent call last)" in detail[bad]


class Canary:
    """Creates its file when unpickled."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_tasks_that_do_not_match_their_digests_fail_unrun_and_their_worker_serves_on(
    make_pool, tmp_path
):
    """A payload altered on the way (its signed digest no longer matches) is refused where it
    would be unpickled: a task failure like any other, in the worker that got it, which goes on
    to the next task. Not a crash, not a new worker, however many there are."""
    pool = make_pool(1)
    pool.start()
    canary = tmp_path / "canary"
    forged = cloudpickle.dumps(Canary(str(canary)))
    wrong = digest(b"the task the master signed for")
    first = push(pool, FunctionTask(square_with_pid, 2))
    ids = [f"forged-{i}" for i in range(2000)]
    for task_id in ids:
        pool.push_task(WorkItem(task_id, Payload(forged, wrong)))
    after = push(pool, FunctionTask(square_with_pid, 3))

    assert pool.wait_for_all(timeout=DEADLINE)

    items = results(pool)
    got = outcomes(items)
    assert {task_id for task_id, status, *_ in items if status == Status.CRASH} == set()
    for task_id in ids:
        assert type(got[task_id][1]) is BadDigest
    detail = {task_id: text for task_id, _, _, text, *_ in items}
    assert all(detail[task_id].startswith(REFUSED) for task_id in ids)
    (_, pid_before), (_, pid_after) = got[first][0], got[after][0]
    assert pid_after == pid_before  # the same worker process ran the task after them
    assert [p.pid for p in worker_processes(pool)] == [pid_before]
    assert not canary.exists()  # never unpickled


def test_the_pool_grows_and_shrinks_mid_run_and_every_result_arrives_once(make_pool):
    pool = make_pool(1)
    pool.start()
    seen: list = []
    tasks = {}

    def push_squares(start: int, stop: int) -> None:
        for i in range(start, stop):
            task = FunctionTask(square_with_pid, i)
            tasks[push(pool, task)] = i

    push_squares(0, 20)
    collect_until(pool, seen, 5)
    pool.update_pool(3)
    assert pool.get_num_workers() == 3
    push_squares(20, 60)
    # Every worker holds tasks when the pool shrinks: each was just fed its pipeline, and a
    # task leaves it only when the pool collects its outcome. (Shrinking later, after more
    # results, would race with a worker that has emptied its pipeline and gets no more.)
    assert pool.busy == 3
    pool.update_pool(1)
    push_squares(60, 80)
    assert pool.wait_for_all(timeout=DEADLINE)
    seen.extend(results(pool))

    got = outcomes(seen)
    assert {task_id: value[0] for task_id, (value, _) in got.items()} == {
        task_id: i * i for task_id, i in tasks.items()
    }
    assert len({pid for (_, pid), _ in got.values()}) >= 3
    assert len(pool.fds()) == 1
    assert len(worker_processes(pool)) == 1


def test_growing_a_pool_that_has_not_started_only_sets_its_size(make_pool):
    pool = make_pool(1)

    pool.update_pool(4)

    assert pool.get_num_workers() == 4
    assert pool.fds() == []
    pool.start()
    assert len(pool.fds()) == 4


def test_a_negative_pool_size_is_refused(make_pool):
    with pytest.raises(ValueError):
        make_pool(1).update_pool(-1)
    with pytest.raises(ValueError):
        ProcessPoolManager(-1)


def test_queued_tasks_can_be_taken_back_and_the_running_ones_still_finish(make_pool):
    pool = make_pool(1)
    pool.start()
    ids = [push(pool, FunctionTask(abs, -i)) for i in range(5)]

    taken = pool.take_queued()

    # The worker holds the task it runs and the next (its pipeline); the rest come back.
    given = len(ids) - len(taken)
    assert 1 <= given <= 2
    assert [w.task_id for w in taken] == ids[given:]
    assert pool.wait_for_all(timeout=DEADLINE)
    assert sorted(outcomes(results(pool))) == sorted(ids[:given])


def test_create_task_builds_a_task_with_a_fresh_id(make_pool):
    pool = make_pool(1)

    first = pool.create_task(FunctionTask, pow, 2, 3)
    second = pool.create_task(FunctionTask, pow, 2, 3)

    assert isinstance(first, FunctionTask)
    assert first.task_id != second.task_id
    assert (first.fn, first.args) == (pow, (2, 3))


# -- workers that die ----------------------------------------------------------------------------


def test_a_task_that_exits_its_worker_is_reported_as_a_crash_naming_the_exit_code(make_pool):
    pool = make_pool(1)
    pool.start()
    crash = push(pool, FunctionTask(os._exit, 3))
    after = push(pool, FunctionTask(pow, 2, 10))

    assert pool.wait_for_all(timeout=DEADLINE)

    got = outcomes(results(pool))
    assert got[crash] == (None, (Status.CRASH, "exit code 3"))
    assert got[after] == (1024, None)
    assert len(pool.fds()) == 1


def test_a_task_that_kills_its_worker_is_reported_as_a_crash_naming_the_signal(make_pool):
    pool = make_pool(1)
    pool.start()
    crash = push(pool, FunctionTask(kill_myself))
    after = push(pool, FunctionTask(abs, -7))

    assert pool.wait_for_all(timeout=DEADLINE)

    got = outcomes(results(pool))
    assert got[crash] == (None, (Status.CRASH, "signal SIGKILL"))
    assert got[after] == (7, None)


def test_a_task_past_its_timeout_fails_with_task_timeout_and_its_slot_serves_the_next(make_pool):
    pool = make_pool(1)
    pool.start()
    slow = FunctionTask(time.sleep, 30)
    slow_id = slow.task_id
    pool.push_task(WorkItem(slow_id, cloudpickle.dumps(slow), 0.3))
    after = push(pool, FunctionTask(abs, -5))
    deadline = time.monotonic() + DEADLINE
    while pool.get_results_queue().empty() and time.monotonic() < deadline:
        pool.wait_for_all(timeout=0.05)
        pool.check_timeouts()
    assert pool.wait_for_all(timeout=DEADLINE)
    got = outcomes(results(pool))
    assert isinstance(got[slow_id][1], TaskTimeout)
    assert "timeout of 0.3s" in str(got[slow_id][1])
    assert got[after] == (5, None)
    assert len(pool.fds()) == 1


def test_cancel_drops_queued_tasks_and_stops_running_ones(make_pool):
    pool = make_pool(1)
    pool.start()
    running = push(pool, FunctionTask(time.sleep, 30))
    queued = push(pool, FunctionTask(time.sleep, 30))
    after = push(pool, FunctionTask(abs, -9))
    pool.cancel({running, queued})
    assert pool.wait_for_all(timeout=DEADLINE)
    got = outcomes(results(pool))
    assert got[running] == (None, (Status.CANCELLED, b""))
    assert got[queued] == (None, (Status.CANCELLED, b""))
    assert got[after] == (9, None)


def test_wait_for_all_gives_up_at_its_timeout(make_pool):
    pool = make_pool(1)
    pool.start()
    push(pool, FunctionTask(block_forever))

    started = time.monotonic()
    assert pool.wait_for_all(timeout=0.2) is False
    assert time.monotonic() - started < 5


# -- stopping ------------------------------------------------------------------------------------


def test_stop_leaves_no_worker_process_behind(make_pool):
    warm_up = make_pool(1)  # the forkserver (and resource tracker) outlive any one pool
    warm_up.start()
    push(warm_up, FunctionTask(abs, -1))
    assert warm_up.wait_for_all(timeout=DEADLINE)
    warm_up.stop()
    before = descendants()

    pool = make_pool(3)
    pool.start()
    for i in range(9):
        push(pool, FunctionTask(square_with_pid, i))
    assert pool.wait_for_all(timeout=DEADLINE)
    workers = descendants() - before
    assert len(workers) >= 3
    assert len(worker_processes(pool)) == 3

    pool.stop()

    assert not [pid for pid in workers if is_running(pid)]
    assert worker_processes(pool) == []
    assert pool.fds() == []


def test_stop_kills_a_worker_stuck_in_a_task(make_pool):
    pool = make_pool(1)
    pool.start()
    push(pool, FunctionTask(block_forever))
    [worker] = worker_processes(pool)

    pool.stop()

    assert not worker.is_alive()
    assert worker_processes(pool) == []


def test_stop_is_safe_twice_and_before_start(make_pool):
    never_started = make_pool(2)
    never_started.stop()
    never_started.stop()

    pool = make_pool(2)
    pool.start()
    pool.stop()
    pool.stop()

    assert worker_processes(pool) == []


def test_the_default_pool_size_counts_only_the_cores_this_process_may_use():
    """A slave pinned to one core (taskset, a cpuset, a systemd CPUAffinity=) starts one worker."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", "from taskswarm.slave.process_pool import usable_cores as u; "
         "print(u())"],
        capture_output=True, text=True, timeout=60,
        preexec_fn=lambda: os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"


def test_a_big_task_is_written_to_its_worker_off_the_callers_thread(make_pool):
    # A worker reads a few hundred MiB a second: pushing 300 MiB must hand the write to a
    # thread and return, so the slave's loop (its heartbeats) goes on meanwhile.
    pool = make_pool(1)
    pool.start()
    task = FunctionTask(len, b"x" * 300 * 2**20)

    push(pool, task)

    (worker,) = pool._workers.values()
    assert worker.writer is not None and worker.writer.is_alive()  # still writing
    assert pool.wait_for_all(timeout=DEADLINE)
    assert outcomes(results(pool)) == {task.task_id: (300 * 2**20, None)}
