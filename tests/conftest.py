"""Fixtures that start real nodes and always stop them, and helpers to wait without sleeping."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import cloudpickle
import pytest

import taskswarm as ts
from taskswarm.slave.process_pool import ProcessPoolManager

# A suite started in the background (``make test &``, ``nohup``) inherits SIGINT ignored, and
# so would every node and script it starts: the tests that press Ctrl-C on one need it back.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

#: The examples are programs run by path, outside the package: the tests import them by name
#: (``import mandelbrot``), as a file run from that folder imports its sibling ``_common``.
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))

#: The quick tier (``make test-fast``, ``pytest -m fast``): unit and in-process tests, and the
#: public contract on one small cluster. Together well under a minute on two cores; a module
#: joins only once measured (``pytest --durations=0 tests/test_X.py``) to keep it so.
FAST_MODULES = frozenset(
    {
        "test_addresses",
        "test_config",
        "test_contract",
        "test_deploy_files",
        "test_layout",
        "test_makefile",
        "test_mandelbrot_render",
        "test_master_core",
        "test_messages",
        "test_progress",
        "test_public_api",
        "test_scheduling",
        "test_scheduling_strategies",
        "test_stats",
        "test_task",
        "test_task_systems",
        "test_timeline",
        "test_wire",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests of the modules in FAST_MODULES ``fast``."""
    for item in items:
        if item.path.stem in FAST_MODULES:
            item.add_marker(pytest.mark.fast)


def wait_for(condition: Callable[[], object], timeout: float = 20.0, interval: float = 0.02):
    """Poll ``condition`` until it is truthy; fail the test with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {condition}")
        time.sleep(interval)


def proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/PID/stat`` after the command name (state, ppid, pgrp, session,
    ...); None when the process is gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields if fields[0] != "Z" else None


def alive(pid: int) -> bool:
    return proc_stat(pid) is not None


def descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (read from /proc, so no extra dependency)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = proc_stat(int(entry.name))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


class Nodes:
    """Starts `taskswarm` CLI processes for a test and kills whatever is left at the end."""

    def __init__(self) -> None:
        self.processes: list[subprocess.Popen] = []

    def start(self, *args: str, **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(
            [sys.executable, "-m", "taskswarm", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            **kwargs,
        )
        self.processes.append(process)
        return process

    def run(self, *args: str, timeout: float = 60.0, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "taskswarm", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                for pid in descendants(process.pid):
                    _kill(pid)
                process.kill()
            process.communicate(timeout=10)


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def nodes() -> Iterator[Nodes]:
    started = Nodes()
    try:
        yield started
    finally:
        started.close()


@pytest.fixture
def cluster() -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=2, workers=1) as local:
        yield local


@pytest.fixture
def app(cluster: ts.LocalCluster) -> Iterator[ts.Application]:
    with cluster.connect() as connection:
        yield connection


@pytest.fixture
def key_file(tmp_path: Path) -> str:
    from taskswarm.protocol.keys import generate_key_file

    return str(generate_key_file(tmp_path / "cluster.key"))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(autouse=True, scope="session")
def _private_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Masters started without --state-dir keep their journal under XDG_DATA_HOME: keep the
    suite's journals out of the user's home, and apart from earlier runs."""
    old = os.environ.get("XDG_DATA_HOME")
    os.environ["XDG_DATA_HOME"] = str(tmp_path_factory.mktemp("xdg-data"))
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = old


@pytest.fixture
def make_pool() -> Iterator[Callable[[int], ProcessPoolManager]]:
    """Process-pool task managers (not started), each with a unique identity (its workers'
    name), always stopped at the end of the test."""
    pools: list[ProcessPoolManager] = []

    def make(workers: int) -> ProcessPoolManager:
        pool = ProcessPoolManager(workers)
        pool.init(f"test-{uuid.uuid4().hex[:8]}", "tcp://127.0.0.1:0")
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            pool.stop()


@pytest.fixture(scope="module")
def tasks_travel_by_value(request: pytest.FixtureRequest) -> Iterator[None]:
    """The test module's own functions and classes are pickled by value, as an application's
    would be, so a worker that cannot import the test module still runs them. Modules opt in
    with ``pytestmark = pytest.mark.usefixtures("tasks_travel_by_value")``."""
    module = request.module
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def importable(folder: Path, package: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Make a third-party package in ``folder`` importable here and in every node a test starts
    (PYTHONPATH), as an installed plugin is; undone afterwards. For a fixture to yield from."""
    path = str(folder)
    existing = [p for p in [os.environ.get("PYTHONPATH")] if p]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([path, *existing]))
    monkeypatch.syspath_prepend(path)  # also invalidates the import caches
    try:
        yield folder
    finally:
        sys.modules.pop(package, None)
