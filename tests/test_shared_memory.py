"""Big payloads through shared memory: round trips, and no segment outlives its use or its cluster.

Each test runs a real LocalCluster; tasks that must be caught while they run block on a file the
test creates (their pid written first, for the tests that kill them). Every wait has a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import descendants, wait_for
from taskswarm.protocol import sharing
from taskswarm.protocol.pickling import dumps_task
from taskswarm.task import Status, run_task_reporting

pytestmark = pytest.mark.skipif(not sharing.available(), reason="no /dev/shm on this host")

MIB = 1 << 20


# -- tasks (they travel by value) ---------------------------------------------------------------


def length(blob: bytes) -> int:
    return len(blob)


def make_bytes(size: int, seed: int) -> bytes:
    return bytes([seed % 256]) * size


def double(array):  # a numpy array in, a new one out
    return array * 2


def same(value):
    return value


def fail_with(blob: bytes) -> int:
    raise ValueError(f"refused {len(blob)} bytes")


def hold(blob: bytes, folder: str, result_size: int = 0):
    """Say which process runs it (``started``), then wait for ``release``."""
    started = Path(folder) / f"started-{os.getpid()}"
    started.write_text(str(os.getpid()))
    deadline = time.monotonic() + 60
    while not (Path(folder) / "release").exists():
        if time.monotonic() > deadline:
            raise TimeoutError("never released")
        time.sleep(0.01)
    return bytes(result_size) if result_size else len(blob)


# -- helpers -------------------------------------------------------------------------------------


def left(cluster: ts.LocalCluster) -> list[str]:
    return sharing.segments(cluster.shared_prefix)


def started_pids(folder: Path) -> list[int]:
    return [int(p.read_text()) for p in folder.glob("started-*") if p.read_text()]


def wait_gone(pid: int, timeout: float = 30.0) -> None:
    """Wait (on a pidfd, with a deadline) until process ``pid``, not necessarily our child,
    has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        import select

        assert select.select([fd], [], [], timeout)[0], f"process {pid} still runs"
    finally:
        os.close(fd)


@pytest.fixture
def shared_cluster():
    with ts.LocalCluster(slaves=1, workers=2) as cluster:
        yield cluster
    assert not left(cluster)


# -- round trips ---------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_big_bytes_go_and_come_back_through_shared_memory(shared_cluster, tmp_path):
    app = shared_cluster.connect()
    assert app.sharing is not None and app.sharing.prefix == shared_cluster.shared_prefix
    futures = app.push_tasks([ts.FunctionTask(length, make_bytes(MIB, i)) for i in range(20)])
    assert [f.result(30) for f in futures] == [MIB] * 20
    results = [app.submit(make_bytes, 2 * MIB, i) for i in range(5)]
    assert [r.result(30) == make_bytes(2 * MIB, i) for i, r in enumerate(results)] == [True] * 5
    # Small ones still travel in messages (and a big one below the threshold).
    assert app.submit(length, b"x" * 1000).result(30) == 1000
    assert app.submit(make_bytes, 1000, 1).result(30) == bytes([1]) * 1000
    wait_for(lambda: not left(shared_cluster), 10)


@pytest.mark.timeout(60)
def test_the_argument_lies_in_a_segment_while_its_task_runs_and_goes_with_its_result(
    shared_cluster, tmp_path
):
    app = shared_cluster.connect()
    future = app.submit(hold, make_bytes(MIB, 3), str(tmp_path), MIB)
    wait_for(lambda: started_pids(tmp_path), 30)
    (name,) = left(shared_cluster)
    assert name.startswith(shared_cluster.shared_prefix)
    assert os.stat(f"/dev/shm/{name}").st_mode & 0o777 == 0o600  # its owner's alone
    (tmp_path / "release").touch()
    assert future.result(30) == bytes(MIB)
    assert not left(shared_cluster)  # argument and result freed once the Future has it


@pytest.mark.timeout(60)
def test_big_arguments_in_shared_memory_leave_in_batches_while_later_ones_are_pickled(
    shared_cluster,
):
    """A reference is a few dozen bytes, but it stands for its segment: tasks in shared memory
    go to the master a few MiB at a time, as tasks in messages do, so the first run while later
    ones are made (counted by their references' length, all 40 went in one batch at the end)."""
    first_result = threading.Event()
    blob = bytes(1 << 20)
    with shared_cluster.connect() as app:
        app.on_task_finished = lambda task, result, error: first_result.set()

        def tasks():
            for i in range(40):
                if i == 20:  # 20 MiB made: some must have run by now, or this times out
                    assert first_result.wait(30), "no result while the tasks were being made"
                yield ts.FunctionTask(length, blob)

        futures = app.push_tasks(tasks())
        assert [f.result(timeout=30) for f in futures] == [1 << 20] * 40


@pytest.mark.timeout(60)
def test_numpy_arrays_travel_without_a_copy_into_the_pickle(shared_cluster):
    np = pytest.importorskip("numpy")
    app = shared_cluster.connect()
    array = np.arange(MIB // 8, dtype=np.float64).reshape(256, -1)
    doubled = app.submit(double, array).result(30)
    assert doubled.shape == array.shape and (doubled == array * 2).all()
    assert doubled.flags.writeable and doubled.flags.aligned
    doubled[0, 0] = -1.0  # its own pages (copy-on-write), whatever else maps the segment
    back = app.submit(same, {"a": array, "b": [array[::2]]}).result(30)
    assert (back["a"] == array).all() and (back["b"][0] == array[::2]).all()
    wait_for(lambda: not left(shared_cluster), 10)
    del doubled, back  # the mappings under them go with them
    assert (array == np.arange(MIB // 8, dtype=np.float64).reshape(256, -1)).all()


# -- freed however a task ends ---------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_a_cancelled_tasks_argument_is_freed(shared_cluster, tmp_path):
    app = shared_cluster.connect()
    running = app.submit(hold, make_bytes(MIB, 1), str(tmp_path))
    wait_for(lambda: started_pids(tmp_path), 30)
    queued = [app.submit(hold, make_bytes(MIB, 2), str(tmp_path)) for _ in range(3)]
    assert len(left(shared_cluster)) == 4
    assert app.cancel(running)
    for future in queued:
        future.cancel() or app.cancel(future)
    wait_for(lambda: not left(shared_cluster), 20)
    (tmp_path / "release").touch()


@pytest.mark.timeout(60)
def test_a_failed_tasks_argument_is_freed(shared_cluster):
    app = shared_cluster.connect()
    future = app.submit(fail_with, make_bytes(MIB, 5))
    with pytest.raises(ValueError, match=f"refused {MIB} bytes"):
        future.result(30)
    assert not left(shared_cluster)


@pytest.mark.timeout(60)
def test_results_of_an_application_that_left_are_freed_by_the_master(shared_cluster, tmp_path):
    app = shared_cluster.connect()
    app.push_tasks([ts.FunctionTask(hold, b"", str(tmp_path), MIB) for _ in range(2)])
    wait_for(lambda: len(started_pids(tmp_path)) == 2, 30)
    app.close()  # its arguments (none here) go; results still to come are the master's to drop
    (tmp_path / "release").touch()
    wait_for(lambda: not left(shared_cluster), 20)


@pytest.mark.timeout(60)
def test_a_segment_this_host_lacks_fails_the_task_saying_how_to_turn_sharing_off():
    share = sharing.Sharing(sharing.cluster_prefix(os.urandom(32)), 1024)
    task = ts.FunctionTask(length, bytes(4096))
    payload = sharing.seal(share, "a", task.task_id, b"\x80\x05N.", [memoryview(bytes(4096))])
    sharing.free(payload)  # as if made on another host
    status, outcome, text = run_task_reporting(payload)
    assert status == Status.ERROR
    assert "Shared memory is on" in text and "shared_memory=False" in text


@pytest.mark.timeout(60)
def test_a_segment_changed_after_it_was_written_is_refused_not_unpickled(tmp_path):
    """The reference carries the segment's BLAKE3 digest (and the signed header the
    reference's): a segment whose bytes changed is refused where it would be unpickled."""
    share = sharing.Sharing(sharing.cluster_prefix(os.urandom(32)), 1024)
    canary = tmp_path / "canary"
    task = ts.FunctionTask(length, bytes(4096))
    payload = dumps_task(task, share)
    assert sharing.is_reference(payload)
    name = sharing.name_of(payload)
    try:
        path = Path(sharing.DIRECTORY) / name
        data = bytearray(path.read_bytes())
        unpickled = dumps_task(ts.FunctionTask(open, str(canary), "w"))
        data[: len(unpickled)] = unpickled  # same size and layout, another pickle at its head
        path.write_bytes(bytes(data))
        status, outcome, text = run_task_reporting(payload)
    finally:
        sharing.free(payload)
    assert status == Status.ERROR
    assert "does not match the digest" in text
    assert not canary.exists()


# -- shared memory off -----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_with_shared_memory_off_no_segment_is_ever_made(tmp_path):
    with ts.LocalCluster(slaves=1, workers=1, shared_memory=False) as cluster:
        app = cluster.connect()
        assert app.sharing is None
        future = app.submit(hold, make_bytes(MIB, 1), str(tmp_path), MIB)
        wait_for(lambda: started_pids(tmp_path), 30)
        assert not left(cluster)
        (tmp_path / "release").touch()
        assert future.result(30) == bytes(MIB)
        assert app.submit(make_bytes, 2 * MIB, 7).result(30) == make_bytes(2 * MIB, 7)
        assert not left(cluster)


# -- processes killed -9 ---------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_a_worker_killed_mid_task_leaves_no_segment(tmp_path):
    with ts.LocalCluster(slaves=1, workers=1, max_crashes=3) as cluster:
        app = cluster.connect()
        future = app.submit(hold, make_bytes(MIB, 1), str(tmp_path), MIB)
        wait_for(lambda: started_pids(tmp_path), 30)
        (first,) = started_pids(tmp_path)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: set(started_pids(tmp_path)) - {first}, 30)  # run again, elsewhere
        (tmp_path / "release").touch()
        assert future.result(30) == bytes(MIB)
        wait_for(lambda: not left(cluster), 10)
    assert not left(cluster)


@pytest.mark.timeout(90)
def test_a_slave_killed_mid_task_leaves_no_segment_once_the_cluster_closes(tmp_path):
    with ts.LocalCluster(slaves=2, workers=1, slave_timeout=1.0) as cluster:
        app = cluster.connect()
        future = app.submit(hold, make_bytes(MIB, 1), str(tmp_path), MIB)
        wait_for(lambda: started_pids(tmp_path), 30)
        (worker,) = started_pids(tmp_path)
        victim = next(p for p in cluster.slave_processes if worker in _children(p.pid))
        victim.kill()
        victim.wait(10)
        # Its task runs again on the other slave; its orphaned worker finishes, cannot report
        # its result, and frees it.
        wait_for(lambda: set(started_pids(tmp_path)) - {worker}, 30)
        (tmp_path / "release").touch()
        assert future.result(30) == bytes(MIB)
        wait_gone(worker)
    assert not left(cluster)


@pytest.mark.timeout(90)
def test_a_master_killed_with_payloads_in_flight_leaves_no_segment_once_the_cluster_closes(
    tmp_path,
):
    with ts.LocalCluster(slaves=1, workers=1) as cluster:
        app = cluster.connect()
        app.push_tasks([ts.FunctionTask(hold, make_bytes(MIB, i), str(tmp_path)) for i in range(3)])
        wait_for(lambda: started_pids(tmp_path), 30)
        assert len(left(cluster)) == 3
        assert cluster.master_process is not None
        cluster.master_process.kill()
        cluster.master_process.wait(10)
        (tmp_path / "release").touch()
    assert not left(cluster)


APPLICATION = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    import taskswarm as ts

    def hold(blob, folder, result_size):
        (Path(folder) / f"started-{os.getpid()}").write_text(str(os.getpid()))
        deadline = time.monotonic() + 60
        while not (Path(folder) / "release").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        return bytes(result_size)

    folder = sys.argv[1]
    cluster = ts.LocalCluster(slaves=1, workers=2)
    app = cluster.connect()
    futures = app.push_tasks(
        [ts.FunctionTask(hold, bytes(1 << 20), folder, 1 << 20) for _ in range(4)]
    )
    pids = [cluster.master_process.pid] + [p.pid for p in cluster.slave_processes]
    print(cluster.shared_prefix, *pids, flush=True)
    futures[0].result(120)  # never comes: this process is killed first
    """
)


@pytest.mark.timeout(120)
def test_an_application_killed_with_its_local_cluster_leaves_no_segment(tmp_path):
    script = tmp_path / "app.py"
    script.write_text(APPLICATION)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)], stdout=subprocess.PIPE, env=env
    )
    try:
        assert process.stdout is not None
        prefix, *pids = process.stdout.readline().decode().split()
        wait_for(lambda: len(started_pids(tmp_path)) == 2, 60)
        assert sharing.segments(prefix)  # arguments, held by the tasks running and queued
        process.kill()
        process.wait(10)
        for pid in pids:  # the nodes see their program gone, stop, and sweep
            wait_gone(int(pid), 30)
        for pid in started_pids(tmp_path):
            wait_gone(pid, 30)
        assert sharing.segments(prefix) == []
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        (tmp_path / "release").touch()


def _children(pid: int) -> list[int]:
    return descendants(pid)
