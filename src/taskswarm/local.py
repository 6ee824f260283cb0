"""LocalCluster: a master and slaves as real OS processes on loopback, for one program's run.

Each node is ``python -m taskswarm master|slave`` in its own process, exactly as on a real
cluster, bound to 127.0.0.1 on a free port with a fresh key. The master writes its address to a
"ready file" once it listens; the cluster then waits until every slave is active. ``close()``
stops them with SIGTERM, then SIGKILL after a grace period, and removes the temporary directory.

Over 400 lines on purpose: starting, watching and stopping the nodes of one embedded cluster
(and sweeping what they leave) is one life cycle, read best in one place; the settings it
hands them are generated from ``ops/config.py``, not declared here.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .client import html
from .client.application import Application, connect
from .dashboard import parse_address
from .errors import ClusterError, ConfigurationError
from .ops.config import MasterConfig, SlaveConfig, to_argv
from .protocol import sharing
from .protocol.keys import generate_key_file, load_keys
from .scheduling import load_plugin
from .slave.containment import fair_share, parse_memory_limit, usable_cores

if TYPE_CHECKING:
    from .client.aio import AsyncApplication

__all__ = ["LocalCluster", "connect_or_start", "default_layout"]


def default_layout(slaves: int | None, workers: int | None) -> tuple[int, int]:
    """Slaves and workers per slave when not given: 2 slaves sharing the machine's cores."""
    cores = usable_cores()
    slaves = slaves if slaves is not None else min(2, cores)
    workers = workers if workers is not None else max(1, cores // max(1, slaves))
    if slaves < 1 or workers < 0:
        raise ConfigurationError("a local cluster needs at least 1 slave and 0 or more workers")
    return slaves, workers


#: Settings of ``taskswarm master`` / ``slave`` that are not LocalCluster keywords, and why.
NOT_KEYWORDS = {
    "bind": "the cluster picks its own address (a Unix socket, or a free loopback port: ipc)",
    "advertise": "the nodes share this machine; .address is where to reach the master",
    "key_file": "each cluster makes a fresh key (.key_file)",
    "no_state_dir": "state_dir=None (the default) keeps no journal",
    "no_dashboard": "dashboard=False (the default) serves no HTTP",
    "ready_file": "how the cluster learns its master's address",
    "master_address": "the slaves' master is the cluster's own",
    "workers": "the second argument (add_slave(workers) for other shapes)",
    "engine": "the master's --engine (a scheduler's) and a slave's (a manager's) differ",
}
#: Keywords whose LocalCluster meaning or default differs from the command's (see the class).
OWN_KEYWORDS = (
    "curve",
    "state_dir",
    "dashboard",
    "system_log_level",
    "worker_memory_limit",
    "shared_memory",
)


def _keywords(record: type) -> set[str]:
    return {f.name for f in fields(record)} - set(NOT_KEYWORDS) - set(OWN_KEYWORDS)


#: The settings LocalCluster passes on as they are: a name both nodes have goes to both.
MASTER_KEYWORDS, SLAVE_KEYWORDS = _keywords(MasterConfig), _keywords(SlaveConfig)


class LocalCluster:
    """``with LocalCluster(slaves=2, workers=1) as cluster: app = cluster.connect()``.

    Every other keyword is a setting of ``taskswarm master`` or ``taskswarm slave`` under its
    parameter name, with the command's default: ``scheduler``, ``strategy``, ``stealing``,
    ``resource_wait``, ``slave_timeout``, ``result_ttl``, ``max_crashes``, ... for the master;
    ``resources`` (what each of the first slaves offers), ``grace``, ``manager`` for the
    slaves; ``heartbeat`` and ``max_message_mib`` for both (``NOT_KEYWORDS`` lists those it
    sets itself). ``add_slave(workers, resources=...)`` adds slaves of other shapes.

    These differ from the commands: ``state_dir`` gives the master a journal there (none by
    default); ``dashboard=True`` serves the master's dashboard and HTTP API on a free loopback
    port, ``dashboard="HOST:PORT"`` there (none by default: many local clusters may run at
    once), and ``dashboard_link`` is its URL; ``curve=True`` makes a key with a CurveZMQ keypair;
    ``worker_memory_limit`` is each slave's ``--worker-memory-limit`` (``"2GiB"``, a
    fraction, 0 for none), by default the machine's memory over every worker of the cluster;
    ``ipc=False`` has the nodes talk over loopback TCP instead of a Unix socket;
    ``shared_memory`` is on (task arguments and results of 256 KiB or more travel through
    shared memory segments, see ``taskswarm.protocol.sharing``): a size sets the threshold,
    False turns it off. Every segment left when the cluster closes (or when this program
    dies: its nodes see to it) is freed.

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
        curve: bool = False,
        start_timeout: float = 30.0,
        log_level: str = "warning",
        system_log_level: str = "info",
        state_dir: str | os.PathLike[str] | None = None,
        ipc: bool = True,
        dashboard: bool | str | None = None,
        worker_memory_limit: str | int | float | None = None,
        shared_memory: str | int | bool = True,
        **settings: Any,
    ) -> None:
        self._entered = time.monotonic()
        unknown = sorted(set(settings) - MASTER_KEYWORDS - SLAVE_KEYWORDS)
        if unknown:
            raise TypeError(f"LocalCluster() got unexpected keyword arguments: {unknown}")
        self.slaves, self.workers = default_layout(slaves, workers)
        if worker_memory_limit is None:
            share = fair_share(self.slaves * self.workers)
            worker_memory_limit = "auto" if share is None else share
        parse_memory_limit(worker_memory_limit)  # refused here, not as slaves that died
        self.worker_memory_limit = str(worker_memory_limit)
        # A misspelt name is refused here, with the choices, rather than as a master that died.
        load_plugin("taskswarm.schedulers", settings.get("scheduler", "push"))
        load_plugin("taskswarm.strategies", settings.get("strategy", "load"))
        self.resources = settings.get("resources")
        #: Where the master serves its dashboard (``HOST:PORT``; port 0: a free one), or None.
        self.dashboard = _dashboard_address(dashboard)
        #: The dashboard's URL once the master serves it (``http://127.0.0.1:PORT``), else None.
        self.dashboard_link: str | None = None
        self.start_timeout = start_timeout
        self.log_level = log_level
        # No journal unless asked: nothing restarts an embedded master from it (the cluster
        # lives and dies with this program), and journaling costs a third of its speed.
        self.state_dir = state_dir
        self.address = ""
        self._dir = Path(tempfile.mkdtemp(prefix="taskswarm-"))
        self.key_file = str(generate_key_file(self._dir / "cluster.key", curve=curve))
        self.key = load_keys(self.key_file)
        #: Payloads of this many bytes or more go through shared memory (None: off).
        self.shared_memory = sharing.parse_threshold(shared_memory)
        #: The prefix of this cluster's segment names: what ``close()`` sweeps.
        self.shared_prefix = sharing.cluster_prefix(self.key.hmac)
        # Nodes on one machine talk over a Unix socket: a quarter less latency than loopback TCP.
        bind = f"ipc://{self._dir / 'master.sock'}" if ipc else "tcp://127.0.0.1:0"
        self.master_config = MasterConfig(
            bind=bind,
            key_file=self.key_file,
            curve=curve,
            state_dir=None if state_dir is None else str(state_dir),
            no_state_dir=state_dir is None,
            dashboard=self.dashboard or MasterConfig.dashboard,
            no_dashboard=self.dashboard is None,
            ready_file=str(self._dir / "master.address"),
            system_log_level=system_log_level,
            **{name: value for name, value in settings.items() if name in MASTER_KEYWORDS},
        )
        #: The first slaves' settings; add_slave() fills in the master and its own shape.
        self.slave_config = SlaveConfig(
            key_file=self.key_file,
            workers=self.workers,
            worker_memory_limit=self.worker_memory_limit,
            shared_memory=str(self.shared_memory or "off"),
            **{name: value for name, value in settings.items() if name in SLAVE_KEYWORDS},
        )
        #: Where start-up time went: seconds from LocalCluster() entered to "master listening",
        #: "workers started" (every slave's) and "slaves registered" (every slave welcomed by
        #: the master, its workers started).
        self.startup: dict[str, float] = {}
        self.master_process: subprocess.Popen[bytes] | None = None
        self.slave_processes: list[subprocess.Popen[bytes]] = []
        self._apps: list[Application] = []
        self._closed = False
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    # -- starting --------------------------------------------------------------------------------

    def _node(
        self, config: MasterConfig | SlaveConfig, ready_fd: int, after_fd: int | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a node that closes the pipe ``ready_fd`` once ready (and, with ``after_fd``,
        connects once that pipe closes)."""
        handshake = ["--ready-fd", str(ready_fd)]
        if after_fd is not None:
            handshake += ["--after-fd", str(after_fd)]
        command = [
            sys.executable,
            "-m",
            "taskswarm",
            "--log-level",
            self.log_level,
            "--exit-with-parent",
            str(os.getpid()),
            *handshake,
            *to_argv(config),
        ]
        fds = (ready_fd,) if after_fd is None else (ready_fd, after_fd)
        # A session of its own: the terminal's Ctrl-C goes to this program only (the nodes
        # still stop with it: --exit-with-parent).
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, start_new_session=True, pass_fds=fds
        )

    def _start(self) -> None:
        """Start the master and the slaves at once, and wait for the slaves to say they are
        ready (registered, their workers started).

        The master's address is chosen here, not by the master, so the slaves need not wait
        for it to start: they start beside it (their imports, their workers' forkserver) and
        connect the moment it listens (the ``--after-fd`` pipe closes), never before, which
        would cost a ZeroMQ reconnect interval. Each node closes a pipe when ready, so this
        waits on events with a deadline, not on polls.
        """
        entered = self._entered
        deadline = time.monotonic() + self.start_timeout
        if self.master_config.bind.startswith("tcp://") and self.master_config.bind.endswith(":0"):
            self.master_config = replace(self.master_config, bind=_free_loopback_address())
        self.address = self.master_config.bind
        master_read, master_write = os.pipe()
        try:
            self.master_process = self._node(self.master_config, master_write)
        finally:
            os.close(master_write)
        waiting: dict[int, subprocess.Popen[bytes]] = {}
        try:
            for _ in range(self.slaves):
                fd, process = self._start_slave(self.workers, self.resources, master_read)
                waiting[fd] = process
            self._await_ready(waiting, deadline, master_read, entered)
        finally:
            for fd in waiting:
                os.close(fd)
            os.close(master_read)
        ready = Path(self.master_config.ready_file or "")
        # Written before the master answered anyone: it serves by the time a slave is ready.
        self.address = ready.read_text().strip() or self.address
        status = self._wait_for_status(self.slaves, max(1.0, deadline - time.monotonic()))
        # The master bound the dashboard itself (port 0: no port chosen here that another
        # program could take first) and says where in its status.
        self.dashboard_link = status["master"].get("dashboard") if self.dashboard else None

    def _start_slave(
        self, workers: int, resources: dict[str, float] | None, after_fd: int | None = None
    ) -> tuple[int, subprocess.Popen[bytes]]:
        """Start a slave; returns the pipe it closes once ready, and its process."""
        config = replace(
            self.slave_config,
            master_address=self.address,
            workers=workers,
            resources=resources or None,
        )
        ready_read, ready_write = os.pipe()
        try:
            process = self._node(config, ready_write, after_fd)
        except BaseException:
            os.close(ready_read)
            raise
        finally:
            os.close(ready_write)
        self.slave_processes.append(process)
        return ready_read, process

    def _await_ready(
        self,
        slaves: dict[int, subprocess.Popen[bytes]],
        deadline: float,
        master_fd: int | None = None,
        entered: float | None = None,
    ) -> None:
        """Wait until every slave in ``slaves`` (by the pipe it closes when ready) is ready;
        a ClusterError when one exits first, the master exits, or ``deadline`` passes."""
        waiting, count = dict(slaves), len(slaves)
        master_gone = _exit_event(self.master_process)
        try:
            while waiting:
                watched = [*waiting, *([master_fd] if master_fd is not None else [])]
                if master_gone is not None:
                    watched.append(master_gone)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClusterError(
                        f"only {count - len(waiting)} of {count} slaves became active within "
                        f"{self.start_timeout:g}s"
                    )
                # Without a pidfd to watch, the master's exit is looked for now and then.
                timeout = left if master_gone is not None else min(left, 0.1)
                for fd in select.select(watched, [], [], timeout)[0]:
                    if fd == master_fd:
                        self._note("master listening", time.monotonic(), entered)
                        master_fd = None  # closed by the master: it listens (or it died)
                    elif fd in waiting:
                        process = waiting.pop(fd)
                        said = os.read(fd, 256).split()
                        if said[:1] == [b"ready"]:
                            self._note("slaves registered", time.monotonic(), entered)
                            with contextlib.suppress(IndexError, ValueError):
                                self._note("workers started", float(said[1]), entered)
                        else:  # closed unsaid: the slave exited
                            with contextlib.suppress(subprocess.TimeoutExpired):
                                process.wait(1.0)
                            self._check_alive(self.master_process, "master")
                            raise ClusterError(
                                f"a slave process exited with code {process.poll()} "
                                "before it was ready"
                            )
                self._check_alive(self.master_process, "master")
        finally:
            if master_gone is not None:
                os.close(master_gone)

    def _note(self, phase: str, at: float, entered: float | None) -> None:
        """When the last node reached ``phase`` (``at``, monotonic) during start-up: seconds
        from LocalCluster() ``entered``."""
        if entered is not None:
            self.startup[phase] = max(at - entered, self.startup.get(phase, 0.0))

    def add_slave(
        self,
        workers: int | None = None,
        wait: bool = True,
        resources: dict[str, float] | None = None,
    ) -> subprocess.Popen[bytes]:
        """Start one more slave process (it registers by itself), offering ``resources``."""
        fd, process = self._start_slave(self.workers if workers is None else workers, resources)
        try:
            if wait:
                self._await_ready({fd: process}, time.monotonic() + self.start_timeout)
        finally:
            os.close(fd)
        if wait:
            self.wait_for_slaves(len(self.live_slaves()), self.start_timeout)
        return process

    def live_slaves(self) -> list[subprocess.Popen[bytes]]:
        return [p for p in self.slave_processes if p.poll() is None]

    def wait_for_slaves(self, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Wait until the master reports ``count`` active slaves; returns their summaries.

        The cluster asks once its slaves said they are ready (welcomed, their first heartbeat
        sent), so the first answer almost always has them all; a heartbeat still on its way
        costs a few more milliseconds."""
        status = self._wait_for_status(count, timeout)
        return [s for s in status["slaves"] if s["state"] == "active"]

    def _wait_for_status(self, count: int, timeout: float) -> dict[str, Any]:
        """The master's first status with ``count`` active slaves (``wait_for_slaves``)."""
        deadline = time.monotonic() + timeout
        with Application(self.address, self.key, connect_timeout=timeout) as app:
            while True:
                status = app.status()
                active = [s for s in status["slaves"] if s["state"] == "active"]
                if len(active) >= count:
                    return status
                self._check_alive(self.master_process, "master")
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"only {len(active)} of {count} slaves became active within {timeout:g}s"
                    )
                time.sleep(0.005)

    @staticmethod
    def _check_alive(process: subprocess.Popen[bytes] | None, name: str) -> None:
        if process is not None and process.poll() is not None:
            raise ClusterError(f"the {name} process exited with code {process.returncode}")

    # -- using -----------------------------------------------------------------------------------

    def connect(
        self, connect_timeout: float = 10.0, *, ship: Iterable[str | os.PathLike[str]] = ()
    ) -> Application:
        """A new application connection to this cluster's master (closed with the cluster);
        ``ship``: code of the application's own for the slaves (``Application.upload_file``)."""
        app = Application(
            self.address,
            self.key,
            connect_timeout=connect_timeout,
            shared_memory=self.shared_memory or False,
            ship=ship,
        )
        self._apps.append(app)
        return app

    def connect_async(
        self, connect_timeout: float = 10.0, *, ship: Iterable[str | os.PathLike[str]] = ()
    ) -> AsyncApplication:
        """``connect`` for asyncio programs: ``async with cluster.connect_async() as aapp``
        (or ``await`` it); it opens on a thread of the loop's executor, not on the loop."""
        from .client.aio import AsyncApplication  # asyncio loads only for programs that use it

        return AsyncApplication(lambda: self.connect(connect_timeout, ship=ship))

    @property
    def closed(self) -> bool:
        """Whether ``close()`` was called: its processes are stopped, or stopping."""
        return self._closed

    def _repr_html_(self) -> str:
        return html.cluster_html(self)

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
        # Every node is gone: what shared memory the cluster still holds goes too.
        sharing.sweep(self.shared_prefix)
        shutil.rmtree(self._dir, ignore_errors=True)


def _dashboard_address(dashboard: bool | str | None) -> str | None:
    """``dashboard=`` as the master's ``--dashboard`` address: True is any free loopback port,
    which the master picks as it binds; a malformed address is refused here, not as a master
    that died."""
    if dashboard is True:
        return "127.0.0.1:0"
    if dashboard is None or dashboard is False:
        return None
    parse_address(dashboard)
    return dashboard


def _free_loopback_address() -> str:
    """A ``tcp://127.0.0.1:PORT`` no one listens on now, for a master whose slaves start
    beside it: they must know its address before it binds."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


def _exit_event(process: subprocess.Popen[bytes] | None) -> int | None:
    """A file descriptor readable once ``process`` exits (a Linux pidfd); None where there is
    none to be had."""
    if process is None or not hasattr(os, "pidfd_open"):
        return None
    try:
        return os.pidfd_open(process.pid)
    except OSError:
        return None


def _terminate(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
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
