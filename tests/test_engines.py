"""Engines as schedulers: the same task systems and application code on a Dask distributed
cluster and on a Ray cluster, with the same results and the same errors as on native slaves.

Each engine is started once for the module, small (a Dask LocalCluster of threads in this
process; Ray with one CPU), and a master runs with ``--scheduler dask|ray --engine ADDRESS`` as
a real process. A test skips, saying why, when the engine's extra is not installed.
"""

from __future__ import annotations

import copyreg
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import Nodes, free_port, wait_for
from taskswarm.engines.clients import require
from taskswarm.engines.managers import DaskManager, manager_for
from taskswarm.errors import ConfigurationError
from taskswarm.protocol.keys import generate_key_file
from taskswarm.protocol.pickling import dumps_task
from taskswarm.slave.process_pool import WorkItem
from taskswarm.task import RemoteTraceback, Status, load_outcome
from test_contract import Square, SumOfSquares  # DESIGN.md's task system, as written there

pytestmark = pytest.mark.timeout(120)

N = 60
EXPECTED = sum(i * i for i in range(N))


# -- what runs on the engines' workers (module level: it travels by value) -----------------------


class Boom(ts.Task):
    def __call__(self):
        raise ValueError(f"boom in {self.name}")


class ErrorsSeen(ts.TaskSystem):
    """Collects what ``task_finished`` is given for tasks that raise."""

    def __init__(self, n):
        super().__init__()
        self.n, self.errors = n, []

    def init_system(self, master):
        pass

    def generate_tasks(self, master):
        return [Boom(name=f"boom-{i}") for i in range(self.n)]

    def task_finished(self, master, task, result, error):
        self.errors.append((type(error).__name__, str(error), type(error.__cause__).__name__))

    def is_complete(self, master):
        return len(self.errors) == self.n

    def gather_result(self, master):
        return (sorted(self.errors), None)


def sleep_then(seconds, marker, value):
    Path(marker).touch()
    time.sleep(seconds)  # the task's own work: long enough to be cancelled or timed out
    return value


def exit_worker():
    os._exit(3)


# -- the engines and the masters in front of them --------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def pickling_as_it_was() -> Iterator[None]:
    """Importing dask registers, for the whole process, its own way of pickling every exception
    (tblib's): a SystemExit comes back without its code, and an exception that cannot be
    rebuilt comes back rebuilt. Undo that when this module is done, so the rest of the suite
    pickles as a worker that never imported dask does."""
    before = dict(copyreg.dispatch_table)
    yield
    copyreg.dispatch_table.clear()
    copyreg.dispatch_table.update(before)


@pytest.fixture(scope="module")
def dask_address() -> Iterator[str]:
    distributed = pytest.importorskip(
        "distributed", reason="the dask extra is not installed: pip install 'taskswarm[dask]'"
    )
    # Threads in this process, so the two cores are spared a worker process and a nanny.
    with distributed.LocalCluster(
        n_workers=1,
        threads_per_worker=2,
        processes=False,
        protocol="tcp://",
        host="127.0.0.1",
        dashboard_address="127.0.0.1:0",  # not 8787: other tests' dashboards use it
    ) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="module")
def ray_address() -> Iterator[str]:
    ray = pytest.importorskip(
        "ray", reason="the ray extra is not installed: pip install 'taskswarm[ray]'"
    )
    handler = signal.getsignal(signal.SIGTERM)
    context = ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    signal.signal(signal.SIGTERM, handler)  # ray.init replaces it with one that exits
    try:
        yield context.address_info["address"]
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(generate_key_file(tmp_path_factory.mktemp("engines") / "cluster.key"))


class EngineMaster:
    """A master process with an engine scheduler, and an application connected to it."""

    def __init__(self, scheduler: str, engine: str, key_file: str, ready: Path) -> None:
        self.nodes = Nodes()
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.process = self.nodes.start(
            "master", "--bind", self.address, "--key-file", key_file, "--no-state-dir",
            "--no-dashboard", "--scheduler", scheduler, "--engine", engine,
            "--max-crashes", "1", "--ready-file", str(ready),
        )  # fmt: skip
        try:
            wait_for(lambda: ready.exists() or self.process.poll() is not None, timeout=60)
            assert self.process.poll() is None, self.process.communicate()[1]
            self.app = ts.connect(self.address, key_file=key_file)
            self.slaves = wait_for(lambda: active_slaves(self.app), timeout=60)
        except BaseException:
            self.nodes.close()
            raise

    def close(self) -> tuple[int | None, str]:
        """Stop the master as a user would (SIGTERM): it stops its bridge to the engine."""
        try:
            self.app.close()
            self.process.send_signal(signal.SIGTERM)
            _, err = self.process.communicate(timeout=30)
            return self.process.returncode, err
        finally:
            self.nodes.close()


def active_slaves(app: ts.Application) -> list[dict]:
    return [s for s in app.status()["slaves"] if s["state"] == "active"]


def _engine_master(scheduler: str, address: str, key: str, tmp: Path):
    master = EngineMaster(scheduler, address, key, tmp / f"{scheduler}.address")
    yield master
    code, err = master.close()
    assert code == 0, err
    assert "Traceback" not in err, err


@pytest.fixture(scope="module")
def dask_master(dask_address, key, tmp_path_factory) -> Iterator[EngineMaster]:
    yield from _engine_master("dask", dask_address, key, tmp_path_factory.mktemp("d"))


@pytest.fixture(scope="module")
def ray_master(ray_address, key, tmp_path_factory) -> Iterator[EngineMaster]:
    yield from _engine_master("ray", ray_address, key, tmp_path_factory.mktemp("r"))


@pytest.fixture(scope="module")
def native() -> Iterator[ts.Application]:
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        yield app


@pytest.fixture(params=["native", "dask", "ray"])
def app(request) -> ts.Application:
    """An application connected to a native cluster, or to a master with an engine scheduler:
    each test that takes it runs, unchanged, on all three."""
    if request.param == "native":
        return request.getfixturevalue("native")
    return request.getfixturevalue(f"{request.param}_master").app


# -- the same application code on every scheduler ----------------------------------------------


def test_sum_of_squares_gives_the_same_result_on_the_native_dask_and_ray_schedulers(request):
    results = {}
    for scheduler in ("native", "dask", "ray"):
        try:
            app = (
                request.getfixturevalue("native")
                if scheduler == "native"
                else request.getfixturevalue(f"{scheduler}_master").app
            )
        except pytest.skip.Exception:
            continue  # that engine's extra is missing; the others still agree
        results[scheduler] = app.run_system(SumOfSquares(N), timeout=60)
    assert results["native"] == EXPECTED
    assert set(results.values()) == {EXPECTED}, results


def test_plain_tasks_and_callables_return_their_results(app):
    assert app.submit(Square(7)).result(timeout=30) == 49
    assert app.submit(pow, 2, 10).result(timeout=30) == 1024
    with app.executor() as ex:
        assert list(ex.map(abs, range(-20, 0))) == list(range(20, 0, -1))


def test_a_task_takes_another_tasks_result_on_every_engine(app):
    first = app.submit(pow, 2, 10)
    assert app.submit(divmod, first, 1000).result(timeout=60) == (1, 24)


def test_a_task_that_raises_reaches_its_future_with_the_remote_traceback(app):
    future = app.submit(Boom(name="boom-plain"))
    with pytest.raises(ValueError, match="boom in boom-plain") as caught:
        future.result(timeout=30)
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "in __call__" in str(cause) and "ValueError: boom in boom-plain" in str(cause)


def test_a_task_system_gets_the_exception_in_task_finished(app):
    errors = app.run_system(ErrorsSeen(3), timeout=60)
    assert errors == [("ValueError", f"boom in boom-{i}", "_RemoteTraceback") for i in range(3)]


def test_a_task_past_its_timeout_fails_with_task_timeout(app, tmp_path):
    marker = tmp_path / "started"
    future = app.submit(sleep_then, 3.0, str(marker), "late", timeout=0.5)
    with pytest.raises(ts.TaskTimeout, match="timeout"):
        future.result(timeout=30)
    assert app.submit(Square(5)).result(timeout=30) == 25  # the engine runs on


def test_a_cancelled_running_task_frees_its_place_for_the_next(app, tmp_path):
    marker = tmp_path / "started"
    future = app.submit(sleep_then, 3.0, str(marker), "never")
    wait_for(marker.exists, timeout=30)
    assert app.cancel(future)  # Future.cancel() leaves running work alone, as the stdlib's
    assert future.cancelled()
    assert app.submit(Square(6)).result(timeout=30) == 36


def test_the_bridge_is_one_slave_sized_to_the_engine(dask_master, request):
    assert [s["workers"] for s in dask_master.slaves] == [2]  # the LocalCluster's 2 threads
    ray_master = request.getfixturevalue("ray_master")
    assert [s["workers"] for s in ray_master.slaves] == [1]  # ray.init(num_cpus=1)


def test_a_task_that_kills_its_ray_worker_fails_with_worker_crashed(ray_master):
    # The master was started with --max-crashes 1: the first lost run is the last.
    with pytest.raises(ts.WorkerCrashed, match="killed its worker"):
        ray_master.app.submit(exit_worker).result(timeout=60)
    assert ray_master.app.submit(Square(4)).result(timeout=60) == 16


# -- a slave of a native master whose tasks run on an engine ------------------------------------


def test_a_slave_with_the_dask_manager_serves_a_native_master(dask_address, key, tmp_path):
    nodes = Nodes()
    try:
        address = f"tcp://127.0.0.1:{free_port()}"
        ready = tmp_path / "master.address"
        nodes.start(
            "master", "--bind", address, "--key-file", key, "--no-state-dir", "--no-dashboard",
            "--ready-file", str(ready),
        )  # fmt: skip
        wait_for(ready.exists, timeout=30)
        slave = nodes.start(
            "slave", address, "--key-file", key, "--manager", "dask", "--engine", dask_address
        )
        with ts.connect(address, key_file=key) as app:
            assert [s["workers"] for s in wait_for(lambda: active_slaves(app))] == [2]
            assert app.run_system(SumOfSquares(N), timeout=60) == EXPECTED
        slave.send_signal(signal.SIGTERM)
        _, err = slave.communicate(timeout=30)
        assert slave.returncode == 0, err
    finally:
        nodes.close()


def test_the_dask_manager_runs_pushed_tasks_as_a_process_pool_does(dask_address):
    manager = DaskManager(engine=dask_address)
    manager.init("test-engine", "tcp://127.0.0.1:0")
    manager.start()
    try:
        tasks = [Square(i) for i in range(5)] + [Boom(name="boom-direct")]
        manager.push_tasks([WorkItem(t.task_id, dumps_task(t)) for t in tasks])
        assert manager.wait_for_all(timeout=30)
        results = manager.get_results_queue()
        outcomes = {}
        while not results.empty():
            task_id, status, data, _detail = results.get_nowait()
            outcomes[task_id] = (status, load_outcome(status == Status.OK, data))
    finally:
        manager.stop()
        manager.stop()  # safe twice
    assert [outcomes[t.task_id] for t in tasks[:5]] == [
        (Status.OK, (i * i, None)) for i in range(5)
    ]
    status, (_, error) = outcomes[tasks[5].task_id]
    assert status == Status.ERROR and isinstance(error, ValueError)


# -- what a user is told -----------------------------------------------------------------------


def test_a_missing_engine_package_names_the_extra_that_installs_it():
    with pytest.raises(ConfigurationError, match=r"pip install 'taskswarm\[dask\]'"):
        require("taskswarm_no_such_engine_package", "dask")


def test_an_unreachable_dask_scheduler_is_reported_with_what_to_do(monkeypatch):
    from taskswarm.engines import clients as engine_clients

    pytest.importorskip("distributed", reason="the dask extra is not installed")
    monkeypatch.setattr(engine_clients, "CONNECT_TIMEOUT", 1.0)
    nowhere = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(ConfigurationError, match="cannot reach the Dask scheduler") as caught:
        manager_for("dask", None, nowhere)
    assert nowhere in str(caught.value) and "--engine" in str(caught.value)


def test_engine_with_a_scheduler_or_manager_that_takes_none_is_a_usage_error(key):
    nodes = Nodes()
    try:
        master = nodes.run(
            "master", "--bind", f"tcp://127.0.0.1:{free_port()}", "--key-file", key,
            "--no-state-dir", "--no-dashboard", "--engine", "tcp://127.0.0.1:8786",
        )  # fmt: skip
        slave = nodes.run(
            "slave", "tcp://127.0.0.1:5555", "--key-file", key, "--engine", "tcp://x:8786"
        )
    finally:
        nodes.close()
    assert master.returncode == 1 and "--scheduler dask or --scheduler ray" in master.stderr
    assert slave.returncode == 1 and "--manager dask or --manager ray" in slave.stderr
    assert "Traceback" not in master.stderr + slave.stderr


def test_the_engine_packages_are_imported_only_when_an_engine_is_used():
    code = (
        "import sys; from taskswarm.scheduling import load_plugin; "
        "[load_plugin(g, n) for g in ('taskswarm.schedulers', 'taskswarm.managers') "
        "for n in ('dask', 'ray')]; "
        "print(sorted(m for m in ('distributed', 'dask', 'ray') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
