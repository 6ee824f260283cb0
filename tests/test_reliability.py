"""Nothing lost: crashing workers, timeouts, retries, cancellation, drains, master restarts."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import CancelledError

import pytest

import taskswarm as ts
from conftest import free_port, wait_for
from test_contract import SumOfSquares


class Exit(ts.Task):
    def __call__(self):
        os._exit(1)


class Sleep(ts.Task):
    def __init__(self, seconds: float, timeout: float | None = None):
        super().__init__(name=f"sleep-{seconds}")
        self.seconds = seconds
        self.timeout = timeout

    def __call__(self):
        time.sleep(self.seconds)
        return self.seconds


def test_a_task_that_kills_its_worker_fails_with_worker_crashed_after_3_attempts(app):
    poison = app.submit(Exit(name="poison"))
    others = app.push_tasks([ts.FunctionTask(abs, -i) for i in range(200)])
    with pytest.raises(ts.WorkerCrashed, match=r"'poison' .* 3 times; the last time: exit code 1"):
        poison.result(timeout=60)
    assert [f.result(timeout=60) for f in others] == list(range(200))


def test_a_task_past_its_timeout_fails_and_its_worker_serves_the_next():
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        slow = app.submit(Sleep(30, timeout=0.5))
        after = app.submit(abs, -3)
        with pytest.raises(ts.TaskTimeout, match="timeout of 0.5s"):
            slow.result(timeout=30)
        assert after.result(timeout=30) == 3
        assert app.submit(time.sleep, 5, timeout=0.2).exception(timeout=30) is not None


class Flaky(ts.Task):
    """Fails until it has run ``fail_times`` times (counted in a file: each run is a new copy)."""

    max_retries = 3

    def __init__(self, counter: str, fail_times: int, error: type = ConnectionError):
        super().__init__(name="flaky")
        self.counter, self.fail_times, self.error = counter, fail_times, error

    def __call__(self):
        with open(self.counter, "a") as fh:
            fh.write("x")
        with open(self.counter) as fh:
            runs = len(fh.read())
        if runs <= self.fail_times:
            raise self.error(f"run {runs} failed")
        return runs


def test_a_task_is_retried_up_to_max_retries(app, tmp_path):
    assert app.submit(Flaky(str(tmp_path / "a"), 2)).result(timeout=60) == 3
    with pytest.raises(ConnectionError, match="run 4 failed"):
        app.submit(Flaky(str(tmp_path / "b"), 10)).result(timeout=60)


def test_only_exceptions_named_in_retry_on_are_retried(app, tmp_path):
    task = Flaky(str(tmp_path / "c"), 1, error=ValueError)
    task.retry_on = (ConnectionError,)
    with pytest.raises(ValueError, match="run 1 failed"):
        app.submit(task).result(timeout=60)


def idle(app) -> bool:
    status = app.status()
    busy = [s for s in status["slaves"] if s["state"] == "active" and s["in_flight"]]
    return not busy and status["tasks"] == {"queued": 0, "assigned": 0}


def test_cancelling_a_queued_future_drops_the_task():
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        blocker = app.submit(time.sleep, 1.0)
        queued = app.push_tasks([Sleep(0.5) for _ in range(6)])
        assert all(f.cancel() for f in queued[2:])
        with pytest.raises(CancelledError):
            queued[-1].result()
        blocker.result(timeout=30)
        assert [f.result(timeout=30) for f in queued[:2]] == [0.5, 0.5]
        wait_for(lambda: idle(app))
        assert app.status()["slaves"][0]["done"] == 3


def test_app_cancel_stops_a_running_task():
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        running = app.submit(Sleep(60))
        wait_for(lambda: app.status()["slaves"][0]["in_flight"] == 1)
        assert app.cancel(running.task_id)
        assert running.cancelled()
        wait_for(lambda: idle(app), timeout=5)
        assert app.submit(abs, -1).result(timeout=30) == 1


class Forever(ts.TaskSystem):
    def __init__(self):
        super().__init__()

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [Sleep(60) for _ in range(4)]

    def task_finished(self, master, task, result, error):
        pass

    def is_complete(self, master):
        return False

    def gather_result(self, master):
        return None, None


def test_cancel_system_stops_its_tasks_and_fails_its_result(app):
    handle = app.submit_system(Forever())
    wait_for(lambda: sum(s["in_flight"] for s in app.status()["slaves"]) == 4)
    app.cancel_system(handle.system_id)
    with pytest.raises(ts.TaskSystemError, match="was cancelled"):
        handle.result(timeout=30)
    wait_for(lambda: idle(app), timeout=5)


class FirstOfMany(ts.TaskSystem):
    """Completes on the first result; the rest are long and must be cancelled on the slaves."""

    def __init__(self):
        super().__init__()
        self.first = None

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [Sleep(0.1)] + [Sleep(60) for _ in range(10)]

    def task_finished(self, master, task, result, error):
        self.first = result

    def is_complete(self, master):
        return self.first is not None

    def gather_result(self, master):
        return self.first, None


def test_a_completed_systems_leftovers_are_cancelled_on_the_slaves(app):
    assert app.run_system(FirstOfMany(), timeout=30) == 0.1
    wait_for(lambda: idle(app), timeout=5)


def test_sigterm_to_a_slave_finishes_its_running_tasks_and_hands_back_the_rest():
    with ts.LocalCluster(slaves=2, workers=1) as cluster, cluster.connect() as app:
        futures = app.push_tasks([Sleep(0.3) for _ in range(12)])
        wait_for(lambda: all(s["in_flight"] for s in app.status()["slaves"]))
        cluster.slave_processes[0].send_signal(signal.SIGTERM)
        assert [f.result(timeout=60) for f in futures] == [0.3] * 12
        assert cluster.slave_processes[0].wait(timeout=10) == 0


class DurableMaster:
    """A master on a state directory, with slaves, that a test can kill -9 and restart."""

    def __init__(self, nodes, key_file: str, tmp_path, slaves: int, workers: int) -> None:
        self.nodes = nodes
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.args = (
            "master",
            "--bind",
            self.address,
            "--key-file",
            key_file,
            "--state-dir",
            str(tmp_path / "state"),
            "--heartbeat",
            "0.2",
            "--slave-timeout",
            "2",
        )
        self.start()
        for _ in range(slaves):
            nodes.start(
                "slave",
                self.address,
                "--key-file",
                key_file,
                "--workers",
                str(workers),
                "--heartbeat",
                "0.2",
            )

    def start(self) -> None:
        self.process = self.nodes.start(*self.args)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def restart_after_kill(self) -> None:
        self.kill()
        self.start()


class SlowSquares(SumOfSquares):
    def generate_tasks(self, master):
        return [SlowSquare(i) for i in range(self.n)]


class SlowSquare(ts.Task):
    def __init__(self, x):
        super().__init__(name=f"slow-square-{x}")
        self.x = x

    def __call__(self):
        time.sleep(0.02)
        return self.x * self.x


def test_a_master_killed_mid_system_resumes_from_its_journal(nodes, key_file, tmp_path):
    master = DurableMaster(nodes, key_file, tmp_path, slaves=2, workers=1)
    address = master.address
    with ts.connect(address, key_file=key_file) as app:
        handle = app.submit_system(SlowSquares(300))
        wait_for(lambda: handle.done_tasks >= 60)
        master.restart_after_kill()
        assert handle.result(timeout=120) == sum(i * i for i in range(300))


def test_a_restarted_master_keeps_its_task_systems_names(nodes, key_file, tmp_path):
    master = DurableMaster(nodes, key_file, tmp_path, slaves=0, workers=1)
    system = SlowSquares(3)
    system.name = "resumed-sweep"
    with ts.connect(master.address, key_file=key_file) as app:
        app.submit_system(system)  # no slave: it stays running
        first = master.process
        master.kill()
        assert f"task system resumed-sweep ({system.system_id}) started" in first.stderr.read()
        master.start()

        def restored() -> list[tuple[str, str]] | None:
            try:  # the application may not have found the new master yet
                systems = app.status(timeout=2)["systems"]
            except (TimeoutError, ts.TaskswarmError):
                return None
            return [(s["id"], s["name"]) for s in systems]

        assert wait_for(restored, timeout=30) == [(system.system_id, "resumed-sweep")]


def test_plain_tasks_survive_a_master_kill(nodes, key_file, tmp_path):
    master = DurableMaster(nodes, key_file, tmp_path, slaves=1, workers=2)
    address = master.address
    with ts.connect(address, key_file=key_file) as app:
        futures = app.push_tasks([SlowSquare(i) for i in range(200)])
        wait_for(lambda: sum(f.done() for f in futures) >= 30)
        master.kill()
        more = app.push_tasks([SlowSquare(i) for i in range(200, 250)])  # while it is down
        master.start()
        assert [f.result(timeout=120) for f in futures + more] == [i * i for i in range(250)]


def test_taskswarm_result_prints_a_detached_systems_result(cluster, nodes):
    with cluster.connect() as app:
        handle = app.submit_system(SumOfSquares(20))
    out = nodes.run(
        "result",
        handle.system_id,
        "--master",
        cluster.address,
        "--key-file",
        cluster.key_file,
        "--timeout",
        "60",
        cwd=os.path.dirname(__file__),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(i * i for i in range(20)))


class CrashAfterNoting(ts.Task):
    """Notes each attempt in a file, then kills its worker."""

    def __init__(self, path: str):
        super().__init__(name="crash")
        self.path = path

    def __call__(self):
        with open(self.path, "a") as fh:
            fh.write("attempt\n")
        time.sleep(0.3)
        os._exit(1)


def test_a_restarted_master_remembers_how_often_a_task_crashed(nodes, key_file, tmp_path):
    attempts = tmp_path / "attempts"
    master = DurableMaster(nodes, key_file, tmp_path, slaves=1, workers=1)
    address = master.address
    with ts.connect(address, key_file=key_file) as app:
        future = app.submit(CrashAfterNoting(str(attempts)))
        wait_for(lambda: attempts.exists() and len(attempts.read_text().split()) >= 2)
        master.restart_after_kill()
        with pytest.raises(ts.WorkerCrashed, match=r"'crash' .* 3 times"):
            future.result(timeout=60)
    # Two before the kill, at most one in flight across it: never a fresh set of three.
    assert len(attempts.read_text().split()) <= 4
