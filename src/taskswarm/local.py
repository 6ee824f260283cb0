"""LocalCluster: a master and slaves as real OS processes on loopback, for one program's run.

Each node is ``python -m taskswarm master|slave`` in its own process, exactly as on a real
cluster, bound to 127.0.0.1 on a free port with a fresh key. The master writes its address to a
"ready file" once it listens; the cluster then waits until every slave is active. ``close()``
stops them with SIGTERM, then SIGKILL after a grace period, and removes the temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import ClusterError, ConfigurationError
from .keys import generate_key_file, load_keys
from .managers.containment import fair_share, parse_memory_limit
from .managers.process_pool import usable_cores
from .nodes.application import Application, connect
from .scheduling import load_plugin

__all__ = ["LocalCluster", "connect_or_start", "default_layout"]


def default_layout(slaves: int | None, workers: int | None) -> tuple[int, int]:
    """Slaves and workers per slave when not given: 2 slaves sharing the machine's cores."""
    cores = usable_cores()
    slaves = slaves if slaves is not None else min(2, cores)
    workers = workers if workers is not None else max(1, cores // max(1, slaves))
    if slaves < 1 or workers < 0:
        raise ConfigurationError("a local cluster needs at least 1 slave and 0 or more workers")
    return slaves, workers


class LocalCluster:
    """``with LocalCluster(slaves=2, workers=1) as cluster: app = cluster.connect()``.

    ``state_dir`` gives the master a journal there (see ``taskswarm master --state-dir``);
    ``ipc=False`` has the nodes talk over loopback TCP instead of a Unix socket. ``stealing``
    and ``resource_wait`` are the master's ``--stealing`` and ``--resource-wait``;
    ``resources`` is what each of the first slaves offers (``taskswarm slave --resources``), and
    ``add_slave(workers, resources=...)`` adds slaves of other shapes. ``dashboard="HOST:PORT"``
    serves the master's HTTP API there (none by default: many local clusters may run at once).
    ``worker_memory_limit`` is each slave's ``--worker-memory-limit`` (``"2GiB"``, a fraction,
    0 for none); by default the slaves share the machine, so each worker's limit is the
    machine's memory over every worker of the cluster.

    The nodes log warnings only (``log_level``), but what task systems log themselves shows
    from ``system_log_level`` up, on this process's stderr, which the nodes share. The nodes
    run in a process group of their own, so a Ctrl-C at the terminal reaches this program
    alone: it decides what to cancel, then stops the slaves before the master.
    """

    def __init__(
        self,
        slaves: int | None = None,
        workers: int | None = None,
        *,
        scheduler: str = "push",
        strategy: str = "load",
        heartbeat: float = 1.0,
        slave_timeout: float = 5.0,
        curve: bool = False,
        start_timeout: float = 30.0,
        log_level: str = "warning",
        system_log_level: str = "info",
        state_dir: str | os.PathLike[str] | None = None,
        ipc: bool = True,
        stealing: bool = True,
        resource_wait: float = 10.0,
        resources: dict[str, float] | None = None,
        dashboard: str | None = None,
        worker_memory_limit: str | int | float | None = None,
    ) -> None:
        self.slaves, self.workers = default_layout(slaves, workers)
        if worker_memory_limit is None:
            share = fair_share(self.slaves * self.workers)
            worker_memory_limit = "auto" if share is None else share
        parse_memory_limit(worker_memory_limit)  # refused here, not as slaves that died
        self.worker_memory_limit = str(worker_memory_limit)
        # A misspelt name is refused here, with the choices, rather than as a master that died.
        load_plugin("taskswarm.schedulers", scheduler)
        load_plugin("taskswarm.strategies", strategy)
        self.scheduler, self.strategy = scheduler, strategy
        self.stealing, self.resource_wait = stealing, resource_wait
        self.resources = resources
        self.dashboard = dashboard
        self.heartbeat, self.slave_timeout = heartbeat, slave_timeout
        self.start_timeout = start_timeout
        self.log_level = log_level
        self.system_log_level = system_log_level
        # No journal unless asked: nothing restarts an embedded master from it (the cluster
        # lives and dies with this program), and journaling costs a third of its speed.
        self.state_dir = state_dir
        # Nodes on one machine talk over a Unix socket: a quarter less latency than loopback TCP.
        self.ipc = ipc
        self.address = ""
        self._dir = Path(tempfile.mkdtemp(prefix="taskswarm-"))
        self.key_file = str(generate_key_file(self._dir / "cluster.key", curve=curve))
        self.key = load_keys(self.key_file)
        self.master_process: subprocess.Popen | None = None
        self.slave_processes: list[subprocess.Popen] = []
        self._apps: list[Application] = []
        self._closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- starting --------------------------------------------------------------------------------

    def _node(self, *args: str) -> subprocess.Popen:
        command = [
            sys.executable,
            "-m",
            "taskswarm",
            "--log-level",
            self.log_level,
            "--exit-with-parent",
            str(os.getpid()),
            *args,
        ]
        # A session of its own: the terminal's Ctrl-C goes to this program only (the nodes
        # still stop with it: --exit-with-parent).
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True)

    def _start(self) -> None:
        ready = self._dir / "master.address"
        self.master_process = self._node(
            "master",
            "--bind",
            f"ipc://{self._dir / 'master.sock'}" if self.ipc else "tcp://127.0.0.1:0",
            "--key-file",
            self.key_file,
            "--scheduler",
            self.scheduler,
            "--strategy",
            self.strategy,
            "--ready-file",
            str(ready),
            "--system-log-level",
            self.system_log_level,
            *(["--state-dir", str(self.state_dir)] if self.state_dir else ["--no-state-dir"]),
            "--heartbeat",
            str(self.heartbeat),
            "--slave-timeout",
            str(self.slave_timeout),
            "--stealing" if self.stealing else "--no-stealing",
            "--resource-wait",
            str(self.resource_wait),
            *(["--dashboard", self.dashboard] if self.dashboard else ["--no-dashboard"]),
        )
        deadline = time.monotonic() + self.start_timeout
        while not ready.exists() or not ready.read_text():
            self._check_alive(self.master_process, "master")
            if time.monotonic() > deadline:
                raise ClusterError(f"the master did not start within {self.start_timeout:g}s")
            time.sleep(0.02)
        self.address = ready.read_text().strip()
        for _ in range(self.slaves):
            self.add_slave(self.workers, wait=False, resources=self.resources)
        self.wait_for_slaves(self.slaves, max(1.0, deadline - time.monotonic()))

    def add_slave(
        self,
        workers: int | None = None,
        wait: bool = True,
        resources: dict[str, float] | None = None,
    ) -> subprocess.Popen:
        """Start one more slave process (it registers by itself), offering ``resources``."""
        offer = ",".join(f"{name}={amount:g}" for name, amount in (resources or {}).items())
        process = self._node(
            "slave",
            self.address,
            "--key-file",
            self.key_file,
            "--workers",
            str(self.workers if workers is None else workers),
            "--heartbeat",
            str(self.heartbeat),
            "--worker-memory-limit",
            self.worker_memory_limit,
            *(["--resources", offer] if offer else []),
        )
        self.slave_processes.append(process)
        if wait:
            self.wait_for_slaves(len(self.live_slaves()), self.start_timeout)
        return process

    def live_slaves(self) -> list[subprocess.Popen]:
        return [p for p in self.slave_processes if p.poll() is None]

    def wait_for_slaves(self, count: int, timeout: float = 30.0) -> list[dict]:
        """Wait until the master reports ``count`` active slaves; returns their summaries."""
        deadline = time.monotonic() + timeout
        with Application(self.address, self.key, connect_timeout=timeout) as app:
            while True:
                active = [s for s in app.status()["slaves"] if s["state"] == "active"]
                if len(active) >= count:
                    return active
                self._check_alive(self.master_process, "master")
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"only {len(active)} of {count} slaves became active within {timeout:g}s"
                    )
                time.sleep(0.05)

    @staticmethod
    def _check_alive(process: subprocess.Popen | None, name: str) -> None:
        if process is not None and process.poll() is not None:
            raise ClusterError(f"the {name} process exited with code {process.returncode}")

    # -- using -----------------------------------------------------------------------------------

    def connect(self, connect_timeout: float = 10.0) -> Application:
        """A new application connection to this cluster's master (closed with the cluster)."""
        app = Application(self.address, self.key, connect_timeout=connect_timeout)
        self._apps.append(app)
        return app

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self, grace: float = 5.0) -> None:
        """Stop every process (SIGTERM, then SIGKILL past ``grace``) and remove temp files."""
        if self._closed:
            return
        self._closed = True
        for app in self._apps:
            app.close()
        # Slaves first, so none of them sees its master vanish and starts waiting for it.
        _terminate(self.slave_processes, grace)
        _terminate([self.master_process] if self.master_process else [], grace)
        shutil.rmtree(self._dir, ignore_errors=True)


def _terminate(processes: list[subprocess.Popen], grace: float) -> None:
    """SIGTERM each process, then SIGKILL whichever is still running after ``grace`` s."""
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def connect_or_start(
    master: str | None = None,
    key_file: str | None = None,
    slaves: int | None = None,
    workers: int | None = None,
) -> Iterator[Application]:
    """Connect to the given master (or TASKSWARM_MASTER), or else run an embedded LocalCluster.

    This is how a program works both under `taskswarm run` and on its own.
    """
    master = master or os.environ.get("TASKSWARM_MASTER")
    if master:
        with connect(master, key_file) as app:
            yield app
        return
    with LocalCluster(slaves=slaves, workers=workers) as cluster, cluster.connect() as app:
        yield app
