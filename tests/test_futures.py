"""Futures and the executor as ``concurrent.futures`` defines them, on a real cluster: running
and cancelled states, references let go, errors that keep their type, code that travels by value
with its source lines, and payloads over the message limit refused with a reason."""

from __future__ import annotations

import concurrent.futures
import gc
import importlib
import linecache
import os
import pickle
import subprocess
import sys
import textwrap
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import Nodes, free_port, wait_for
from taskswarm.protocol import pickling
from taskswarm.task import FunctionTask, run_task_payload

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def shared() -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=2, workers=1) as cluster:
        yield cluster


@pytest.fixture
def app(shared: ts.LocalCluster) -> Iterator[ts.Application]:
    with shared.connect() as connection:
        yield connection


# -- what the tasks do (module level: they travel by value, as a test module is no package) --


def hold_until(path: str, value: object = "released") -> object:
    """Work that lasts until the test lets it end (the file appears)."""
    while not os.path.exists(path):
        time.sleep(0.005)
    return value


def touch(path: str) -> None:
    Path(path).touch()


def capture(*args: object, **kwargs: object) -> tuple:
    return args, kwargs


class Payload:
    """A result object whose life the test follows with a weak reference."""


def make_payload(_: int) -> Payload:
    return Payload()


class Holder:
    def method(self) -> int:
        return 7


class FailsToPickle:
    def __reduce__(self):
        raise pickle.PicklingError("not this one")


class ExitsWhilePickled:
    def __reduce__(self):
        raise SystemExit(5)


def returns(value: object) -> object:
    return value


def block_both_workers(app: ts.Application, path: Path) -> list[concurrent.futures.Future]:
    blockers = [app.submit(hold_until, str(path)) for _ in range(2)]
    wait_for(lambda: all(f.running() for f in blockers))
    return blockers


# -- states ------------------------------------------------------------------------------------


def test_a_future_is_running_once_a_worker_began_its_task_and_cancel_then_returns_false(
    app, tmp_path
):
    gate = tmp_path / "gate"
    future = app.submit(hold_until, str(gate))

    wait_for(future.running)
    assert not future.cancel()  # as the stdlib: a running call is not cancelled
    assert future.running() and not future.cancelled()
    touch(str(gate))
    assert future.result(timeout=20) == "released"


def test_a_pending_future_cancels_and_its_task_never_runs(app, tmp_path):
    gate, ran = tmp_path / "gate", tmp_path / "ran"
    blockers = block_both_workers(app, gate)
    waiting = [app.submit(touch, str(ran)) for _ in range(6)]

    assert all(f.cancel() for f in waiting)
    assert all(f.cancelled() and f.done() for f in waiting)
    done, _ = concurrent.futures.wait(waiting, timeout=1)  # waiters hear of it at once
    assert len(done) == len(waiting)

    # Cancelling is asynchronous: a task already on its way to a worker as cancel() was called
    # may still run there (its outcome is dropped). One round trip to the master, which has
    # told the slaves by then, before the workers are let go.
    app.status()
    touch(str(gate))
    assert [f.result(timeout=20) for f in blockers] == ["released", "released"]
    # What ran after the blockers ended on the same workers: never the cancelled tasks.
    assert app.submit(returns, 1).result(timeout=20) == 1
    assert not ran.exists()


def test_app_cancel_stops_a_running_task_on_purpose(app, tmp_path):
    future = app.submit(hold_until, str(tmp_path / "never"))
    wait_for(future.running)

    assert app.cancel(future)
    assert future.cancelled()
    assert app.submit(returns, 2).result(timeout=20) == 2


def test_shutdown_with_cancel_futures_cancels_only_what_no_worker_began(app, tmp_path):
    gate = tmp_path / "gate"
    executor = app.executor()
    blockers = [executor.submit(hold_until, str(gate)) for _ in range(2)]
    wait_for(lambda: all(f.running() for f in blockers))
    waiting = [executor.submit(pow, 2, i) for i in range(20)]

    executor.shutdown(wait=False, cancel_futures=True)
    touch(str(gate))

    assert [f.result(timeout=20) for f in blockers] == ["released", "released"]
    concurrent.futures.wait(waiting, timeout=20)
    assert all(f.cancelled() for f in waiting)
    with pytest.raises(RuntimeError, match="after shutdown"):
        executor.submit(pow, 2, 2)


def test_shutdown_with_cancel_futures_lets_the_begun_calls_finish(app):
    # The stdlib's test_cancel_futures, with the cluster's two workers: some of 50 short
    # calls are begun by the time the executor shuts down, the rest are cancelled.
    executor = app.executor()
    futures = [executor.submit(time.sleep, 0.1) for _ in range(50)]
    executor.shutdown(cancel_futures=True)

    cancelled = [f for f in futures if f.cancelled()]
    others = [f for f in futures if not f.cancelled()]
    assert len(cancelled) > 20
    assert others and all(f.done() and f.exception() is None for f in others)


# -- the executor's calls ----------------------------------------------------------------------


def test_submit_passes_self_fn_and_timeout_to_the_function(app):
    with app.executor() as executor:
        assert executor.submit(capture, 1, self=2, fn=3).result(timeout=20) == (
            (1,),
            {"self": 2, "fn": 3},
        )
        assert executor.submit(capture, timeout=5).result(timeout=20) == ((), {"timeout": 5})
    assert app.submit(capture, fn=1, self=2).result(timeout=20) == ((), {"fn": 1, "self": 2})


def test_map_lets_go_of_each_result_once_it_is_yielded(app):
    with app.executor() as executor:
        for obj in executor.map(make_payload, range(10)):
            ref = weakref.ref(obj)
            del obj
            gc.collect()
            assert ref() is None


def test_nothing_keeps_a_submitted_call_alive_once_its_result_is_in(app):
    holder = Holder()
    collected = []
    ref = weakref.ref(holder, lambda _: collected.append(True))
    with app.executor() as executor:
        future = executor.submit(holder.method)
        del holder
        assert future.result(timeout=20) == 7
        wait_for(lambda: gc.collect() is not None and ref() is None, timeout=10)
    assert collected


def test_futures_done_before_submit_returns_do_not_deadlock_the_executor(app):
    # Once a done-callback fired inline under the executor's own lock: these hung.
    with app.executor() as executor:
        for _ in range(3):
            assert list(executor.map(abs, range(-3000, 0))) == list(range(3000, 0, -1))
        for i in range(200):
            assert executor.submit(abs, -i).result(timeout=20) == i


# -- errors --------------------------------------------------------------------------------------


def test_a_result_that_fails_to_pickle_keeps_its_error_type(app):
    future = app.submit(FailsToPickle)

    error = future.exception(timeout=20)
    assert type(error) is pickle.PicklingError
    assert "not this one" in str(error)


def test_system_exit_while_a_result_is_pickled_is_delivered_and_the_worker_lives(app):
    pids_before = {app.submit(os.getpid).result(timeout=20) for _ in range(20)}

    with pytest.raises(SystemExit) as raised:
        app.submit(ExitsWhilePickled).result(timeout=20)
    assert raised.value.code == 5
    with pytest.raises(SystemExit):
        app.submit(sys.exit, 3).result(timeout=20)

    pids_after = {app.submit(os.getpid).result(timeout=20) for _ in range(20)}
    assert pids_after <= pids_before  # no worker was replaced


def test_a_remote_traceback_is_the_stdlibs_and_shows_the_failing_line(app):
    future = app.submit(pow, "a", 2)

    error = future.exception(timeout=20)
    assert type(error) is TypeError
    assert type(error.__cause__).__name__ == "_RemoteTraceback"
    assert "pow" in error.__cause__.tb


def test_remote_tracebacks_show_the_lines_of_code_sent_by_value(tmp_path, monkeypatch):
    module_file = tmp_path / "remote_lines_sample.py"
    source = textwrap.dedent(
        """
        def explode():
            raise ValueError("boom")  # the line a remote traceback must show
        """
    )
    module_file.write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("remote_lines_sample")
    try:
        payload = pickling.dumps_task(FunctionTask(module.explode))
        # The worker's machine has no such file: its traceback names file and line only...
        module_file.unlink()
        linecache.clearcache()
        pickling._loaded.clear()
        ok, data = run_task_payload(payload)
        # ... and the application's, where it is read, has it.
        module_file.write_text(source)
        error = pickle.loads(data)
    finally:
        sys.modules.pop("remote_lines_sample", None)

    assert not ok and isinstance(error, ValueError)
    assert f'File "{module_file}", line 3, in explode' in error.__cause__.tb
    assert "the line a remote traceback must show" in error.__cause__.tb


def test_an_applications_own_module_travels_with_its_code(tmp_path):
    """A script beside its own helpers.py, on a cluster whose nodes cannot import it."""
    (tmp_path / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    (tmp_path / "sweep.py").write_text(
        textwrap.dedent(
            """
            import sys
            import helpers
            from helpers import triple
            import taskswarm as ts

            def by_module(x):
                return helpers.triple(x)

            def by_name(x):
                return triple(x) + 1

            with ts.connect(sys.argv[1], sys.argv[2]) as app:
                print(app.submit(by_module, 2).result(30), app.submit(by_name, 2).result(30))
            """
        )
    )
    with ts.LocalCluster(slaves=1, workers=1) as cluster:
        done = subprocess.run(
            [sys.executable, "sweep.py", cluster.address, cluster.key_file],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "7"]


# -- the message limit -----------------------------------------------------------------------


@pytest.fixture
def small_limit_app(nodes: Nodes, key_file: str) -> Iterator[ts.Application]:
    """A master and a slave that take messages of at most 1 MiB."""
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("master", "--bind", address, "--key-file", key_file, "--max-message-mib", "1")
    nodes.start("slave", address, "--key-file", key_file, "--workers", "1",
                "--max-message-mib", "1")  # fmt: skip
    with ts.connect(address, key_file) as connection:
        wait_for(lambda: connection.status()["slaves"])
        yield connection


def make_bytes(size: int) -> bytes:
    return b"x" * size


def test_an_argument_over_the_message_limit_fails_at_once_with_size_limit_and_option(
    small_limit_app,
):
    with pytest.raises(ts.MessageTooLarge, match=r"2\.0 MiB.*limit is 1\.0 MiB.*--max-message-mib"):
        small_limit_app.submit(len, b"x" * 2 * 2**20)
    assert small_limit_app.submit(len, b"x" * 1000).result(timeout=20) == 1000


def test_a_result_over_the_message_limit_fails_its_future_and_big_ones_split(small_limit_app):
    with pytest.raises(ts.MessageTooLarge, match=r"result .*2\.0 MiB.*--max-message-mib"):
        small_limit_app.submit(make_bytes, 2 * 2**20).result(timeout=20)
    # Three results that fit one by one but not together all arrive.
    futures = [small_limit_app.submit(make_bytes, 600 * 1024) for _ in range(3)]
    assert [len(f.result(timeout=20)) for f in futures] == [600 * 1024] * 3


def test_a_big_argument_does_not_starve_the_slaves_heartbeats(capfd):
    # A worker reads 300 MiB in about a second; meanwhile the slave's loop goes on beating
    # (the master marks a slave inactive after 2.5 silent beats).
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as connection:
        slave_id = connection.status()["slaves"][0]["id"]
        big = b"x" * 300 * 2**20
        for _ in range(2):
            assert connection.submit(len, big).result(timeout=60) == len(big)
        slaves = connection.status()["slaves"]
    assert [(s["id"], s["state"]) for s in slaves] == [(slave_id, "active")]
    assert "missed its heartbeats" not in capfd.readouterr().err
