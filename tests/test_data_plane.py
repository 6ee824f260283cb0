"""Results that stay on the slave that made them: fetched when asked for, made again if lost.

A plain task's big result (``KEEP_BYTES`` or more, not in shared memory) stays on its slave;
the master learns where, the application's Future fetches it on ``result()``, and tasks that
take it fetch it from slave to slave (or find it where they run: they are sent where their
inputs are). These run on real LocalClusters with shared memory off, as between hosts (the
multi-host bed does the same across network namespaces: tests/multihost/test_hosts.py).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import taskswarm as ts
from conftest import descendants, wait_for
from taskswarm.errors import TaskError
from taskswarm.ops.status_view import render_status
from taskswarm.protocol.dataplane import KEEP_BYTES, FetchFailed, fetch
from taskswarm.protocol.keys import ClusterKeys

BIG = KEEP_BYTES // 8 * 4  # float64 items: four times the threshold


def make(n, value=1.0):
    return np.full(n, float(value))


def add(a, b):
    return a + b


def total(a):
    return float(a.sum())


def made_here(n):
    """A big result that says which worker made it."""
    return os.getpid(), np.ones(n)


def runs_where(pair):
    return pair[0] == os.getpid()


def step(a, seconds=0.0, note=None):
    if note is not None:
        Path(note).write_text(str(os.getpid()))
    time.sleep(seconds)
    return a + 1


class Noted(ts.Task):
    """A task whose ``finished`` does something: its result must come at once."""

    seen: list = []

    def __init__(self, n):
        super().__init__(name="noted")
        self.n = n

    def __call__(self):
        return np.ones(self.n)

    def finished(self, result, error):
        Noted.seen.append(type(result))


@pytest.fixture(scope="module")
def cluster():
    with ts.LocalCluster(slaves=2, workers=1, shared_memory="off") as local:
        yield local


@pytest.fixture
def app(cluster):
    with cluster.connect() as application:
        yield application


def wire_out(app) -> float:
    """Bytes the master has sent so far (its ``wire_bytes`` measure)."""
    for row in app.status()["stats"]:
        if row["name"] == "wire_bytes" and row["labels"].get("direction") == "out":
            return row["sum"]
    return 0.0


def kept(app) -> tuple[int, int]:
    """Results the master knows are kept, and how many the slaves keep by its count."""
    status = app.status()
    return status["master"]["kept"]["kept_results"], sum(
        s["kept_results"] for s in status["slaves"]
    )


@pytest.mark.timeout(60)
def test_a_big_result_stays_on_its_slave_until_its_future_asks(app):
    before = wire_out(app)
    future = app.submit(make, BIG, 3)
    assert future.exception(timeout=30) is None
    assert future.remote is not None  # done, its bytes still on the slave
    assert wire_out(app) - before < BIG * 8 / 10  # the master never carried them
    assert kept(app) == (1, 1)
    # `taskswarm status` shows what each slave keeps, as it says in its heartbeat.
    wait_for(lambda: any(s["kept_bytes"] for s in app.status()["slaves"]), timeout=10)
    console = Console(width=200, record=True)
    render_status(app.status(), console)
    shown = console.export_text()
    assert "kept" in shown and "1 (256." in shown  # one result, 256 KiB and its pickle
    value = future.result(timeout=30)
    assert value.shape == (BIG,) and value[0] == 3.0
    assert future.remote is None and future.result() is value  # fetched once, then kept
    wait_for(lambda: kept(app) == (0, 0), timeout=20)  # here now: the slave lets it go
    assert future.result() is value
    assert app.submit(total, future).result(timeout=30) == 3.0 * BIG  # taken by value now


@pytest.mark.timeout(60)
def test_a_kept_result_whose_future_is_let_go_is_dropped_by_its_slave(app):
    future = app.submit(make, BIG)
    assert future.exception(timeout=30) is None
    assert kept(app) == (1, 1)
    del future
    gc.collect()
    wait_for(lambda: kept(app) == (0, 0), timeout=20)
    wait_for(lambda: not any(s["kept_bytes"] for s in app.status()["slaves"]), timeout=20)


@pytest.mark.timeout(60)
def test_small_results_and_tasks_that_want_theirs_come_at_once(app):
    small = app.submit(make, 16)
    assert small.exception(timeout=30) is None and small.remote is None
    Noted.seen.clear()
    noted = app.submit(Noted(BIG))
    assert noted.exception(timeout=30) is None and noted.remote is None
    assert Noted.seen == [np.ndarray]
    app.keep_results = False
    try:
        future = app.submit(make, BIG)
        assert future.exception(timeout=30) is None and future.remote is None
    finally:
        app.keep_results = True


@pytest.mark.timeout(90)
def test_a_tree_reduction_moves_its_bytes_between_slaves_not_through_the_master(app):
    before = wire_out(app)
    level = [app.submit(make, BIG, i) for i in range(16)]
    while len(level) > 1:
        level = [app.submit(add, level[i], level[i + 1]) for i in range(0, len(level), 2)]
    assert level[0].result(timeout=60)[0] == sum(range(16))
    produced = 31 * BIG * 8
    through = wire_out(app) - before - BIG * 8  # less the final result, which came here
    assert through < produced / 50, (through, produced)


@pytest.mark.timeout(60)
def test_a_task_runs_on_the_slave_that_keeps_its_input(app):
    for _ in range(6):
        source = app.submit(made_here, BIG)
        source.exception(timeout=30)
        assert app.submit(runs_where, source).result(timeout=30) is True


@pytest.mark.timeout(60)
def test_a_done_callback_may_ask_for_a_kept_result(app):
    got = threading.Event()
    seen = []

    def callback(future):
        seen.append(future.result()[0])
        got.set()

    app.submit(make, BIG, 7).add_done_callback(callback)
    assert got.wait(30) and seen == [7.0]


@pytest.mark.timeout(120)
def test_a_result_lost_with_its_slave_is_made_again(tmp_path):
    with ts.LocalCluster(slaves=2, workers=1, shared_memory="off") as cluster:
        with cluster.connect() as app:
            note = tmp_path / "made"
            future = app.submit(step, np.zeros(BIG), 0.0, str(note))
            assert future.exception(timeout=30) is None and future.remote is not None
            worker = int(note.read_text())
            (slave,) = [s for s in cluster.slave_processes if worker in descendants(s.pid)]
            os.kill(slave.pid, signal.SIGKILL)
            # Its Future fetches it from wherever the master made it again.
            assert future.result(timeout=60)[0] == 1.0
            # And a task that takes it gets it too.
            assert app.submit(total, future).result(timeout=60) == float(BIG)


@pytest.mark.timeout(120)
def test_a_chain_survives_the_slave_keeping_an_intermediate_killed(tmp_path):
    with ts.LocalCluster(slaves=3, workers=1, shared_memory="off") as cluster:
        with cluster.connect() as app:
            notes = [tmp_path / f"step-{i}" for i in range(6)]
            future = app.submit(step, np.zeros(BIG), 0.0, str(notes[0]))
            for i in range(1, 6):
                future = app.submit(step, future, 0.5 if i == 3 else 0.0, str(notes[i]))
            wait_for(notes[3].exists, timeout=30)
            worker = int(notes[2].read_text())  # it keeps step 2's result, step 3's input
            (slave,) = [s for s in cluster.slave_processes if worker in descendants(s.pid)]
            os.kill(slave.pid, signal.SIGKILL)
            assert future.result(timeout=90)[0] == 6.0


@pytest.mark.timeout(60)
def test_a_data_socket_answers_only_the_cluster_key(app):
    future = app.submit(make, BIG, 5)
    assert future.exception(timeout=30) is None
    address = future.remote.address
    with pytest.raises(FetchFailed, match="did not answer"):
        fetch(address, [future.task_id], ClusterKeys(b"another key" * 3), timeout=1.0)
    with pytest.raises(FetchFailed, match="no longer keeps"):
        fetch(address, ["no-such-task"], future.remote.keys, timeout=10.0)
    assert future.result(timeout=30)[0] == 5.0


@pytest.mark.timeout(60)
def test_a_kept_result_whose_slave_is_unreachable_fails_clearly(app, monkeypatch):
    import taskswarm.client.remote as remote

    monkeypatch.setattr(remote, "MOVE_WAIT", 0.5)
    future = app.submit(make, BIG)
    assert future.exception(timeout=30) is None
    future.remote.address = "tcp://127.0.0.1:9"  # nothing listens there
    monkeypatch.setattr(remote, "FETCH_TIMEOUT", 0.5)
    with pytest.raises(TaskError, match="could not be fetched: the slave at tcp://127.0.0.1:9"):
        future.result(timeout=30)


@pytest.mark.timeout(60)
def test_a_kept_result_not_fetched_before_its_connection_closed_says_so_at_once(cluster):
    with cluster.connect() as app:
        future = app.submit(make, BIG)
        assert future.exception(timeout=30) is None
    # Not a fetch that finds no one, then a wait for a new place (that would end in a
    # TimeoutError here): the closed connection says why at once.
    with pytest.raises(ts.errors.ClientClosed, match=r"call result\(\) before closing"):
        future.result(timeout=30)


def row_sum(matrix, i):
    return float(matrix[i].sum())


@pytest.mark.timeout(60)
def test_scattered_data_crosses_to_each_slave_once(app):
    matrix = np.arange(1 << 18, dtype=float).reshape(512, 512)  # 2 MiB
    ref = app.scatter(matrix)
    before = wire_out(app)
    rows = [app.submit(row_sum, ref, i).result(timeout=30) for i in range(20)]  # one by one
    assert rows == [float(matrix[i].sum()) for i in range(20)]
    assert wire_out(app) - before < 2 * matrix.nbytes + (1 << 20)  # twice at most: 2 slaves
    del ref
    gc.collect()
    wait_for(lambda: app.status()["master"]["kept"]["scattered"] == 0, timeout=20)
