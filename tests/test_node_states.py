"""Slaves that stall, die or leave: their state, and where their tasks go."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import taskswarm as ts
from conftest import descendants, free_port, wait_for
from taskswarm.protocol.keys import load_keys
from test_contract import SumOfSquares


class Slow(ts.Task):
    def __init__(self, i: int):
        super().__init__(name=f"slow-{i}")
        self.i = i

    def __call__(self):
        time.sleep(0.02)
        return self.i


def states(app):
    return sorted(s["state"] for s in app.status()["slaves"])


def test_a_stalled_slave_goes_inactive_then_lost_and_its_tasks_finish_elsewhere():
    with ts.LocalCluster(slaves=2, workers=1, heartbeat=0.2, slave_timeout=2.0) as cluster:
        with cluster.connect() as app:
            futures = app.push_tasks([Slow(i) for i in range(200)])
            wait_for(lambda: sum(f.done() for f in futures) >= 10)
            stalled = cluster.slave_processes[0]
            stalled.send_signal(signal.SIGSTOP)
            try:
                wait_for(lambda: "inactive" in states(app) or "lost" in states(app))
                wait_for(lambda: states(app) == ["active", "lost"])
                assert [f.result(timeout=60) for f in futures] == list(range(200))
            finally:
                stalled.send_signal(signal.SIGCONT)
            # Back from the stall, it registers again as new capacity.
            wait_for(lambda: states(app).count("active") == 2)


def test_a_killed_slave_loses_no_task():
    with ts.LocalCluster(slaves=2, workers=1, heartbeat=0.2, slave_timeout=1.0) as cluster:
        with cluster.connect() as app:
            futures = app.push_tasks([Slow(i) for i in range(150)])
            wait_for(lambda: sum(f.done() for f in futures) >= 10)
            cluster.slave_processes[0].kill()
            assert [f.result(timeout=60) for f in futures] == list(range(150))


@pytest.mark.parametrize("scheduler", ["push", "pull"])
@pytest.mark.parametrize("strategy", ["load", "round-robin"])
def test_every_scheduler_and_strategy_runs_a_system(scheduler, strategy):
    with ts.LocalCluster(slaves=2, workers=1, scheduler=scheduler, strategy=strategy) as cluster:
        with cluster.connect() as app:
            assert app.run_system(SumOfSquares(300), timeout=60) == sum(i * i for i in range(300))
            status = app.status()
            assert status["master"]["scheduler"] == scheduler
            assert all(s["done"] > 0 for s in status["slaves"])


def test_an_unknown_scheduler_name_is_a_clear_error_before_any_process_starts():
    before = set(descendants(os.getpid()))
    with pytest.raises(ts.ConfigurationError, match="no scheduler named 'nope'; choose one of: "):
        ts.LocalCluster(slaves=1, scheduler="nope", start_timeout=20)
    assert set(descendants(os.getpid())) <= before


def test_a_local_cluster_leaves_no_process_behind_even_when_the_body_raises():
    before = set(descendants(os.getpid()))
    with pytest.raises(RuntimeError):
        with ts.LocalCluster(slaves=2, workers=2) as cluster:
            assert len(set(descendants(os.getpid())) - before) >= 3
            raise RuntimeError("the application failed")
    assert cluster.address
    wait_for(lambda: set(descendants(os.getpid())) <= before, timeout=10)


def test_sigint_to_taskswarm_run_stops_the_app_and_its_embedded_cluster(tmp_path):
    app = tmp_path / "forever.py"
    app.write_text(
        textwrap.dedent(
            """
            import time, taskswarm as ts
            with ts.connect() as app:
                print("connected", flush=True)
                while True:
                    app.submit(time.sleep, 0.01).result()
            """
        )
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "taskswarm", "run", str(app), "--slaves", "2", "--workers", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout.readline().strip() == "connected"
        children = descendants(process.pid)
        assert len(children) >= 3
        process.send_signal(signal.SIGINT)
        started = time.monotonic()
        process.wait(timeout=10)
        assert time.monotonic() - started < 5
        wait_for(lambda: not set(children) & set(descendants(1) + descendants(os.getpid())))
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate()


class Nap(ts.Task):
    def __init__(self, i: int):
        super().__init__(name=f"nap-{i}")
        self.i = i

    def __call__(self):
        time.sleep(0.4)
        return self.i


SLOW_BEATING_SLAVE = textwrap.dedent(
    """
    import sys
    from taskswarm.protocol.keys import load_keys
    from taskswarm.slave.node import Slave

    # Beats every 1.5 s (the master every 0.5 s) and would take the master for lost after
    # 0.3 s of silence: each side must go by the other's pace, not its own.
    slave = Slave(sys.argv[1], load_keys(sys.argv[2]), workers=1, heartbeat_interval=1.5,
                  master_timeout=0.3)
    slave.serve()
    """
)


@pytest.mark.timeout(60)
def test_master_and_slave_each_wait_by_the_others_heartbeat_not_their_own(nodes, key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    master = nodes.start(
        "master", "--bind", address, "--key-file", key_file, "--no-state-dir", "--no-dashboard",
        "--heartbeat", "0.5", "--slave-timeout", "0.6",
    )  # fmt: skip
    slave = subprocess.Popen(
        [sys.executable, "-c", SLOW_BEATING_SLAVE, address, key_file],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        with ts.Application(address, load_keys(key_file)) as app:
            futures = app.push_tasks([Nap(i) for i in range(8)])  # 3 s of work, 2 slave beats
            assert [f.result(timeout=30) for f in futures] == list(range(8))
            assert states(app) == ["active"]
    finally:
        slave.terminate()
        _, slave_log = slave.communicate(timeout=20)
        master.terminate()
        _, master_log = master.communicate(timeout=20)
    assert master_log.count("registered from") == 1, master_log
    assert " lost " not in master_log and "inactive" not in master_log, master_log
    assert "registering again" not in slave_log, slave_log
