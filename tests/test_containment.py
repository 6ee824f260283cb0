"""Tasks are contained: what a task starts dies with its worker, and a worker that holds more
memory than its limit is replaced, its task failing with WorkerMemoryExceeded after the usual
attempts.

A task here starts a ``sleep`` child and writes its pid (and its worker's) to a file, since a
task cut short returns nothing; the test then waits, with a deadline, for the child to be gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from multiprocessing.connection import wait
from pathlib import Path

import cloudpickle
import pytest

import taskswarm as ts
from conftest import alive, free_port, proc_stat, wait_for
from taskswarm.errors import ConfigurationError
from taskswarm.slave.containment import (
    fair_share,
    machine_memory,
    parse_memory_limit,
)
from taskswarm.slave.process_pool import ProcessPoolManager, WorkItem
from taskswarm.task import Status

pytestmark = [pytest.mark.timeout(120), pytest.mark.usefixtures("tasks_travel_by_value")]

#: The child a task starts: recognisable, so a test cleans up only what it started.
CHILD = ["sleep", "300"]


class SpawnAndWait(ts.Task):
    """Starts a child that would outlive it, notes ``worker_pid child_pid``, then sleeps."""

    def __init__(self, note: str, seconds: float = 60.0, timeout: float | None = None):
        super().__init__(name="spawn-and-wait")
        self.note, self.seconds, self.timeout = note, seconds, timeout

    def __call__(self):
        child = subprocess.Popen(CHILD)
        Path(self.note + ".tmp").write_text(f"{os.getpid()} {child.pid}")
        os.replace(self.note + ".tmp", self.note)  # whole or not at all
        time.sleep(self.seconds)
        return child.pid


class Hog(ts.Task):
    """Holds ``mib`` MiB (written, so resident), then sleeps."""

    def __init__(self, mib: int, seconds: float = 60.0):
        super().__init__(name="hog")
        self.mib, self.seconds = mib, seconds

    def __call__(self):
        data = b"\x01" * (self.mib << 20)
        time.sleep(self.seconds)
        return len(data)


@pytest.fixture
def note(tmp_path: Path) -> Iterator[Path]:
    """Where a SpawnAndWait task notes its pids; whatever child it noted is killed at the end,
    whether or not the test passed."""
    path = tmp_path / "pids"
    try:
        yield path
    finally:
        if path.exists():
            _kill_child(int(path.read_text().split()[1]))


def _kill_child(pid: int) -> None:
    try:
        if Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"300"]:
            os.kill(pid, signal.SIGKILL)
    except (OSError, ProcessLookupError):
        pass


def noted(path: Path) -> tuple[int, int]:
    """The (worker, child) pids a SpawnAndWait task noted, once it has."""
    wait_for(path.exists, timeout=30)
    worker, child = map(int, path.read_text().split())
    return worker, child


def gone(pid: int, timeout: float = 10.0) -> None:
    wait_for(lambda: not alive(pid), timeout=timeout)


# -- process groups ------------------------------------------------------------------------------


def test_a_worker_leads_a_process_group_that_its_tasks_children_share(make_pool, note):
    pool = make_pool(1)
    pool.start()
    task = SpawnAndWait(str(note))
    pool.push_task(WorkItem(task.task_id, cloudpickle.dumps(task)))
    worker, child = noted(note)
    assert int(proc_stat(worker)[2]) == worker  # its own group, with its pid
    assert int(proc_stat(child)[2]) == worker
    assert int(proc_stat(os.getpid())[2]) != worker


def test_a_timed_out_tasks_children_die_with_its_worker(note):
    with ts.LocalCluster(slaves=2, workers=1) as cluster, cluster.connect() as app:
        # Its slaves share the machine: each worker's default limit is half of it.
        assert cluster.worker_memory_limit == str(machine_memory() // 2)
        future = app.submit(SpawnAndWait(str(note), timeout=1.0))
        worker, child = noted(note)
        with pytest.raises(ts.TaskTimeout):
            future.result(timeout=30)
        gone(child)
        gone(worker)  # killed with its group; its parent reaps it a moment later
        assert app.submit(abs, -2).result(timeout=30) == 2


def test_cancelling_a_running_task_kills_its_children(note):
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        future = app.submit(SpawnAndWait(str(note)))
        worker, child = noted(note)
        assert app.cancel(future.task_id)
        gone(child)
        gone(worker)  # killed with its group; its parent reaps it a moment later
        assert app.submit(abs, -3).result(timeout=30) == 3


def test_stopping_the_pool_kills_what_a_running_task_started(make_pool, note):
    pool = make_pool(1)
    pool.start()
    task = SpawnAndWait(str(note))
    pool.push_task(WorkItem(task.task_id, cloudpickle.dumps(task)))
    worker, child = noted(note)
    pool.stop()
    gone(child)
    gone(worker)  # killed with its group; its parent reaps it a moment later


def test_a_worker_killed_from_outside_takes_its_tasks_children_with_it(make_pool, note):
    pool = make_pool(1)
    pool.start()
    task = SpawnAndWait(str(note))
    pool.push_task(WorkItem(task.task_id, cloudpickle.dumps(task)))
    worker, child = noted(note)
    os.kill(worker, signal.SIGKILL)
    seen: list[tuple] = []
    deadline = time.monotonic() + 30
    while not seen and time.monotonic() < deadline:
        for fd in wait(pool.fds(), 1.0):
            pool.collect(fd)
        while not pool.get_results_queue().empty():
            seen.append(pool.get_results_queue().get_nowait())
    assert [(t, status) for t, status, *_ in seen] == [(task.task_id, Status.CRASH)]
    gone(child)


def test_ctrl_c_at_the_slave_stops_its_workers_and_their_tasks_children(nodes, key_file, note):
    """A terminal's Ctrl-C reaches the slave's foreground group, which its workers have left:
    the slave stops, and takes its workers' groups with it."""
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("master", "--bind", address, "--key-file", key_file, "--no-state-dir")
    slave = nodes.start(
        "slave", address, "--key-file", key_file, "--workers", "1", "--grace", "0.2",
        start_new_session=True,  # its own group: the one a terminal would send Ctrl-C to
    )  # fmt: skip
    with ts.connect(address, key_file=key_file) as app:
        app.submit(SpawnAndWait(str(note)))
        worker, child = noted(note)
        os.killpg(slave.pid, signal.SIGINT)
        assert slave.wait(timeout=30) == 0
    gone(worker)
    gone(child)


# -- memory --------------------------------------------------------------------------------------


def test_a_task_past_the_memory_limit_fails_with_worker_memory_exceeded(capfd):
    with (
        ts.LocalCluster(slaves=1, workers=1, worker_memory_limit="200MiB") as cluster,
        cluster.connect() as app,
    ):
        hog = app.submit(Hog(400))
        with pytest.raises(ts.WorkerMemoryExceeded) as raised:
            hog.result(timeout=60)
        message = str(raised.value)
        assert isinstance(raised.value, ts.WorkerCrashed)
        assert "'hog'" in message and hog.task_id in message
        assert "3 times" in message  # the usual attempts: --max-crashes
        assert "200.0 MiB" in message and "--worker-memory-limit" in message
        assert app.submit(abs, -4).result(timeout=30) == 4  # a fresh worker serves the next
        assert app.submit(Hog(20, seconds=0)).result(timeout=30) == 20 << 20
    assert "replacing it" in capfd.readouterr().err  # the slave's warning


def test_a_task_under_the_memory_limit_runs():
    pool = ProcessPoolManager(1, memory_limit="300MiB")
    pool.init("test-under-limit", "tcp://127.0.0.1:0")
    try:
        pool.start()
        task = Hog(50, seconds=0.6)  # long enough to be looked at a few times
        pool.push_task(WorkItem(task.task_id, cloudpickle.dumps(task)))
        deadline = time.monotonic() + 30
        while pool.get_results_queue().empty() and time.monotonic() < deadline:
            # What the slave's loop does: sleep on the pipes until the next check is due.
            wake_at = pool.next_deadline() or time.monotonic() + 1.0
            for fd in wait(pool.fds(), max(0.0, wake_at - time.monotonic())):
                pool.collect(fd)
            pool.check_timeouts()
        assert pool.get_results_queue().get_nowait()[1] == Status.OK
    finally:
        pool.stop()


def test_the_default_limit_is_a_fair_share_of_the_machine_and_follows_the_pool():
    pool = ProcessPoolManager(4)
    assert pool.memory_limit == machine_memory() // 4
    pool.update_pool(8)
    assert pool.memory_limit == machine_memory() // 8
    assert ProcessPoolManager(0).memory_limit is None
    assert fair_share(3, total=3000) == 1000
    assert machine_memory() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


@pytest.mark.parametrize(
    ("given", "limit"),
    [
        ("2GiB", 2 << 30),
        ("512MiB", 512 << 20),
        ("1.5GB", 1_500_000_000),
        ("300000000", 300_000_000),
        (" 64 mib ", 64 << 20),
        (10**9, 10**9),
        ("0", None),
        (0, None),
        ("none", None),
        ("off", None),
        ("auto", "auto"),
        (None, "auto"),
    ],
)
def test_memory_limits_are_read_as_people_write_sizes(given, limit):
    assert parse_memory_limit(given) == limit


def test_a_fraction_is_that_share_of_the_machine_for_each_worker():
    assert parse_memory_limit("0.5") == machine_memory() // 2
    assert ProcessPoolManager(2, memory_limit=0.25).memory_limit == machine_memory() // 4


@pytest.mark.parametrize("given", ["lots", "2 parsecs", "-1GiB", "nan", True])
def test_a_memory_limit_that_is_no_size_is_refused(given):
    with pytest.raises(ConfigurationError):
        parse_memory_limit(given)


def test_the_slave_refuses_a_bad_memory_limit_before_it_starts(nodes, key_file):
    out = nodes.run(
        "slave", "tcp://127.0.0.1:1", "--key-file", key_file, "--worker-memory-limit", "lots"
    )
    assert out.returncode == 2
    assert "--worker-memory-limit" in out.stderr and "2GiB" in out.stderr
