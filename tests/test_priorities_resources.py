"""Priorities, resources and work stealing on a real LocalCluster (master and slaves as processes).

Nothing here sleeps to synchronise: tasks that must wait block on a "gate" file the test creates
once everything is in place, and the test waits on futures or on the master's status, always
with a deadline. Each task reports which process ran it (its pid and its ancestors' pids), so the
slave it ran on is known whatever start method the worker pool uses.
"""

from __future__ import annotations

import os
import re
import time
from concurrent.futures import TimeoutError as FutureTimeout
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import free_port, wait_for

pytestmark = pytest.mark.timeout(60)

#: How long a gated task waits for its gate before it gives up (so a failed test never hangs).
GATE_PATIENCE = 30.0


# -- what the tasks run (module level: they travel to the workers by value) ----------------------


def ancestry() -> list[int]:
    """This process's pid and its ancestors' (from /proc): a worker's include its slave's."""
    pids = [os.getpid()]
    for _ in range(5):
        try:
            stat = Path(f"/proc/{pids[-1]}/stat").read_text()
        except OSError:
            break
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent <= 1:
            break
        pids.append(parent)
    return pids


def wait_for_file(path: str) -> None:
    deadline = time.monotonic() + GATE_PATIENCE
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the test never created {path}")
        time.sleep(0.005)


def gate(started: str, release: str) -> str:
    """Say it started, then hold the worker until the test creates ``release``."""
    Path(started).touch()
    wait_for_file(release)
    return "gate"


def stamp(label: int) -> tuple[int, int]:
    return label, time.monotonic_ns()


def span(label: str, seconds: float) -> tuple[str, float, float, list[int]]:
    """Run for ``seconds``; say when (CLOCK_MONOTONIC is one clock for every process) and where."""
    start = time.monotonic()
    time.sleep(seconds)
    return label, start, time.monotonic(), ancestry()


def gated(label: str, log: str, release: str) -> tuple[str, list[int]]:
    """Log that it started, then wait for ``release``."""
    with open(log, "a") as file:
        file.write(f"{label}\n")
    wait_for_file(release)
    return label, ancestry()


def touch(path: str) -> None:
    Path(path).touch()


def function_task(fn, *args, priority: int = 0, resources: dict | None = None, name: str = ""):
    task = ts.FunctionTask(fn, *args)
    task.priority = priority
    task.resources = resources
    if name:
        task.name = name
    return task


def slave_pids(app: ts.Application) -> dict[int, dict]:
    return {s["pid"]: s for s in app.status()["slaves"] if s["state"] == "active"}


def ran_on(result_ancestry: list[int], pids) -> int:
    [pid] = [pid for pid in pids if pid in result_ancestry]
    return pid


# -- priorities ----------------------------------------------------------------------------------

PRIORITIES = [0, 5, -2, 5, 1, 0, 9, -2, 1, 5, 0, 9, 3, -2, 1]


def test_higher_priorities_run_first_and_one_priority_runs_in_the_order_sent(tmp_path):
    started, release = tmp_path / "started", tmp_path / "release"
    with (
        ts.LocalCluster(slaves=1, workers=1, stealing=False) as cluster,
        cluster.connect() as app,
    ):
        blocker = app.submit(gate, str(started), str(release))
        wait_for(started.exists)  # the only worker is held: all that follows queues up
        # One push: every task is on the master before the slave has room for any of them, so
        # even those it prefetches are the highest of the batch.
        futures = app.push_tasks(
            [function_task(stamp, i, priority=p) for i, p in enumerate(PRIORITIES)]
        )
        wait_for(lambda: app.status()["tasks"]["assigned"] > 1)  # the batch was dispatched
        on_slave = app.status()["tasks"]["assigned"] - 1  # prefetched behind the gate
        # Sent later, it overtakes everything still on the master, not what the slave holds.
        urgent = app.push_tasks([function_task(stamp, "urgent", priority=100)])[0]
        release.touch()

        assert blocker.result(timeout=20) == "gate"
        results = [f.result(timeout=20) for f in futures] + [urgent.result(timeout=20)]

    order = [label for label, _ in sorted(results, key=lambda r: r[1])]
    by_priority = sorted(range(len(PRIORITIES)), key=lambda i: (-PRIORITIES[i], i))
    assert 1 <= on_slave < len(PRIORITIES)
    assert order == by_priority[:on_slave] + ["urgent"] + by_priority[on_slave:]


# -- resources -----------------------------------------------------------------------------------


def test_tasks_needing_a_gpu_run_only_on_the_gpu_slave_one_at_a_time(tmp_path):
    with ts.LocalCluster(slaves=1, workers=1) as cluster:
        gpu_slave = cluster.add_slave(2, resources={"gpu": 1})  # 2 workers, 1 gpu
        with cluster.connect() as app:
            slaves = slave_pids(app)
            assert slaves[gpu_slave.pid]["resources"] == {"gpu": 1}
            [plain_pid] = [pid for pid in slaves if pid != gpu_slave.pid]
            assert slaves[plain_pid]["resources"] == {}
            tasks = []
            for i in range(12):  # one gpu task after every two plain ones, all sent at once
                if i % 2 == 0:
                    tasks.append(function_task(span, f"gpu{i}", 0.1, resources={"gpu": 1}))
                tasks.append(function_task(span, f"cpu{i}", 0.05))
            futures = app.push_tasks(tasks)
            results = [f.result(timeout=30) for f in futures]
            assert app.status()["tasks"] == {"queued": 0, "assigned": 0}

    assert sorted(r[0] for r in results) == sorted(t.args[0] for t in tasks)
    gpu_runs = sorted((r for r in results if r[0].startswith("gpu")), key=lambda r: r[1])
    cpu_runs = [r for r in results if r[0].startswith("cpu")]
    assert len(gpu_runs) == 6
    assert {ran_on(r[3], slaves) for r in gpu_runs} == {gpu_slave.pid}
    for before, after in zip(gpu_runs, gpu_runs[1:], strict=False):
        assert after[1] >= before[2], f"{before[0]} and {after[0]} held the one gpu together"
    assert {ran_on(r[3], slaves) for r in cpu_runs} == {gpu_slave.pid, plain_pid}


def test_a_task_no_slave_could_ever_run_fails_clearly_and_the_others_complete():
    with (
        ts.LocalCluster(slaves=1, workers=1, resources={"gpu": 1}, resource_wait=0.5) as cluster,
        cluster.connect() as app,
    ):
        before = [function_task(pow, 2, i) for i in range(4)]
        greedy = function_task(pow, 3, 3, resources={"gpu": 4}, name="train-model")
        after = [function_task(pow, 5, i) for i in range(4)]
        sent = time.monotonic()
        futures = app.push_tasks([*before, greedy, *after])
        greedy_future = futures[len(before)]

        with pytest.raises(ts.ResourceUnavailable) as caught:
            greedy_future.result(timeout=20)
        waited = time.monotonic() - sent

        assert [f.result(timeout=20) for f in futures if f is not greedy_future] == [
            *(2**i for i in range(4)),
            *(5**i for i in range(4)),
        ]
        assert app.status()["tasks"] == {"queued": 0, "assigned": 0}

    error = caught.value
    assert isinstance(error, ts.TaskError)
    message = str(error)
    assert "'train-model'" in message
    assert "needs gpu=4" in message  # what it needs,
    assert "they offer: gpu=1" in message  # what the slaves offer,
    assert "taskswarm slave --resources gpu=4" in message  # and what to do about it
    assert "--resource-wait" in message
    assert waited >= 0.5  # it had its resource_wait to find a slave


def test_with_an_infinite_resource_wait_a_task_waits_for_a_slave_that_has_what_it_needs():
    with (
        ts.LocalCluster(slaves=1, workers=1, resource_wait=float("inf")) as cluster,
        cluster.connect() as app,
    ):
        needs_gpu = function_task(span, "gpu", 0.0, resources={"gpu": 1})
        needs_many = function_task(pow, 2, 2, resources={"gpu": 8})
        plain = function_task(pow, 2, 3)
        gpu_future, many_future, plain_future = app.push_tasks([needs_gpu, needs_many, plain])

        assert plain_future.result(timeout=20) == 8  # not held up by the two that wait
        with pytest.raises(FutureTimeout):
            gpu_future.result(timeout=1.5)  # three times the wait that fails a task above
        assert not many_future.done()
        assert app.status()["tasks"] == {"queued": 2, "assigned": 0}

        gpu_slave = cluster.add_slave(1, resources={"gpu": 1})
        label, _, _, where = gpu_future.result(timeout=20)
        assert label == "gpu" and gpu_slave.pid in where

        assert not many_future.done()  # gpu=1 is still not gpu=8: it goes on waiting
        assert app.cancel(needs_many.task_id)
        assert many_future.cancelled()
        wait_for(lambda: app.status()["tasks"] == {"queued": 0, "assigned": 0})


# -- bad input -----------------------------------------------------------------------------------

BAD_TASKS = [
    ("priority", "high", "priority must be a whole number, not 'high'"),
    ("priority", 1.5, "priority must be a whole number, not 1.5"),
    ("priority", True, "priority must be a whole number, not True"),
    ("resources", {"gpu": -1}, "resource 'gpu': the amount must be a number >= 0, not -1"),
    ("resources", {"gpu": "one"}, "resource 'gpu': the amount must be a number >= 0"),
    ("resources", {"gpu": float("nan")}, "resource 'gpu': the amount must be a number >= 0"),
    ("resources", {"": 1}, "resource names must be non-empty strings"),
    ("resources", ["gpu"], "resources must be a dict of names to amounts"),
]


def test_a_bad_priority_or_resources_is_refused_at_submit_and_nothing_is_sent(app, tmp_path):
    marker = tmp_path / "ran"
    for attribute, value, message in BAD_TASKS:
        fine = function_task(touch, str(marker))
        bad = function_task(pow, 2, 2, name="bad-task")
        setattr(bad, attribute, value)

        with pytest.raises(ValueError, match=re.escape(message)) as caught:
            app.push_tasks([fine, bad])  # all or none: the fine one goes neither
        assert "task 'bad-task'" in str(caught.value)
        with pytest.raises(ValueError, match=re.escape(message)):
            app.submit(bad)

    # Whatever was sent before this reaches the master first: had anything gone, it would be
    # queued, running, or done (and have touched the marker) by the time this result is in.
    assert app.submit(pow, 2, 5).result(timeout=20) == 32
    assert app.status()["tasks"] == {"queued": 0, "assigned": 0}
    assert not marker.exists()


@pytest.mark.parametrize(
    ("offer", "expected"),
    [
        ("gpu=abc", "'gpu=abc' is not NAME=AMOUNT; write e.g. --resources gpu=2,mem=16"),
        ("gpu", "'gpu' is not NAME=AMOUNT"),
        ("gpu=1,=2", "'=2' is not NAME=AMOUNT"),
        ("gpu=-1", "'gpu=-1': the amount must be a number >= 0"),
    ],
)
def test_a_slave_given_bad_resources_exits_with_a_usage_error(nodes, key_file, offer, expected):
    out = nodes.run(
        "slave",
        f"tcp://127.0.0.1:{free_port()}",
        "--key-file",
        key_file,
        "--resources",
        offer,
        timeout=30,
    )

    assert out.returncode == 2, out.stderr  # click's usage error
    assert "--resources" in out.stderr
    assert expected in out.stderr
    assert "Traceback" not in out.stderr


def test_a_master_given_a_negative_resource_wait_exits_with_a_usage_error(nodes, key_file):
    out = nodes.run(
        "master",
        "--bind",
        f"tcp://127.0.0.1:{free_port()}",
        "--key-file",
        key_file,
        "--no-state-dir",
        "--resource-wait",
        "-1",
        timeout=30,
    )

    assert out.returncode == 2, out.stderr
    assert "--resource-wait" in out.stderr
    assert "Traceback" not in out.stderr


# -- work stealing -------------------------------------------------------------------------------


def test_an_idle_slave_gets_the_tasks_a_busy_slave_has_not_started(tmp_path):
    log, release = tmp_path / "started.log", tmp_path / "release"
    with (
        ts.LocalCluster(slaves=1, workers=1, stealing=True) as cluster,
        cluster.connect() as app,
    ):
        [busy_pid] = slave_pids(app)
        # One slow task teaches the slave (and the master) that tasks here are real work: from
        # then on its worker takes one task at a time, and what waits behind it can be stolen.
        assert app.submit(span, "warm-up", 0.5).result(timeout=20)[0] == "warm-up"
        wait_for(lambda: slave_pids(app)[busy_pid]["pace_ms"] >= 50)

        futures = app.push_tasks(
            [function_task(gated, f"t{i}", str(log), str(release)) for i in (0, 1)]
        )
        wait_for(lambda: slave_pids(app)[busy_pid]["in_flight"] == 2)  # one runs, one waits
        assert app.status()["tasks"] == {"queued": 0, "assigned": 2}

        idle_pid = cluster.add_slave(1).pid
        wait_for(lambda: slave_pids(app)[busy_pid]["stolen"] >= 1)
        wait_for(lambda: slave_pids(app)[idle_pid]["in_flight"] == 1)
        release.touch()

        results = dict(f.result(timeout=20) for f in futures)
        slaves = slave_pids(app)

    assert sorted(results) == ["t0", "t1"]
    assert sorted(log.read_text().split()) == ["t0", "t1"]  # each ran exactly once
    assert ran_on(results["t0"], [busy_pid, idle_pid]) == busy_pid
    assert ran_on(results["t1"], [busy_pid, idle_pid]) == idle_pid  # the one it had not started
    assert slaves[busy_pid]["stolen"] == 1
    assert slaves[idle_pid]["stolen"] == 0


def test_a_slave_keeps_what_it_holds_when_stealing_is_off(tmp_path):
    log, release = tmp_path / "started.log", tmp_path / "release"
    with (
        ts.LocalCluster(slaves=1, workers=1, stealing=False) as cluster,
        cluster.connect() as app,
    ):
        assert app.status()["master"]["stealing"] is False
        [busy_pid] = slave_pids(app)
        assert app.submit(span, "warm-up", 0.5).result(timeout=20)[0] == "warm-up"
        futures = app.push_tasks(
            [function_task(gated, f"t{i}", str(log), str(release)) for i in (0, 1)]
        )
        wait_for(lambda: slave_pids(app)[busy_pid]["in_flight"] == 2)
        idle_pid = cluster.add_slave(1).pid
        # With stealing on, the idle slave had its task within a few of the master's turns
        # (50 ms apart); here, a second later, nothing has moved.
        with pytest.raises(FutureTimeout):
            futures[1].result(timeout=1.0)
        slaves = slave_pids(app)
        assert (slaves[busy_pid]["in_flight"], slaves[idle_pid]["in_flight"]) == (2, 0)
        release.touch()
        results = dict(f.result(timeout=20) for f in futures)
        slaves = slave_pids(app)

    assert all(ran_on(where, [busy_pid, idle_pid]) == busy_pid for where in results.values())
    assert slaves[busy_pid]["stolen"] == 0
