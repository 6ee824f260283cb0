"""Hosts on one switched network, made of Linux network namespaces, and nodes started on them.

Topology of one test (names carry the test run's pid and a random tag)::

    namespace <tag>-sw:      bridge br0 <- one veth end per host (p-master, p-slave-a, ...)
    namespace <tag>-master:  eth0 10.231.7.1/24   the other end of p-master
    namespace <tag>-slave-a: eth0 10.231.7.2/24   ...

The addresses exist only inside those namespaces: nothing is created, changed or routed in the
namespace the tests run in, so the machine's own network is never touched and concurrent runs
cannot collide. A node runs as ``ip netns exec NS python -m taskswarm ...``; the test process
cannot reach 10.231.7.0/24 itself, so it talks to the cluster through an application node that
runs in a namespace too (``netapp.py``, driven over its stdin and stdout).

Where namespaces cannot be made (not root, no ``ip``, no kernel support), every test here is
skipped, saying which of those it was.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import socket
import struct
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from conftest import Nodes

#: The /24 the test hosts share; it exists only inside the test's namespaces.
SUBNET = "10.231.7"
#: Where every master in these tests listens, inside its own namespace.
MASTER_PORT = 5555
#: A copy of the application node's script: run by path, so what it defines travels by value.
NETAPP = Path(__file__).with_name("netapp.py")


def _ip(*args: str) -> None:
    """Run one iproute2 command; a failure says which command and why."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def _why_no_namespaces() -> str | None:
    """Why network namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "multi-host tests need root to create network namespaces (ip netns add)"
    if shutil.which("ip") is None:
        return "multi-host tests need iproute2's `ip` command (apt-get install iproute2)"
    probe = f"tsw{os.getpid()}-probe-{uuid.uuid4().hex[:6]}"
    try:
        _ip("netns", "add", probe)
    except RuntimeError as exc:
        return f"cannot create network namespaces here: {exc}"
    _ip("netns", "del", probe)
    return None


@pytest.fixture(scope="session")
def namespaces_possible() -> None:
    reason = _why_no_namespaces()
    if reason is not None:
        pytest.skip(reason)


class Host:
    """One namespace on the switch, with one interface (eth0) and one IPv4 address."""

    def __init__(self, network: Network, name: str, index: int) -> None:
        self.name = name
        self.ns = f"{network.tag}-{name}"
        self.address = f"{SUBNET}.{index}"
        self.port = f"p-{name}"  # its veth's other end, on the switch
        _ip("netns", "add", self.ns)
        network.namespaces.append(self.ns)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        _ip(
            "-n", network.switch, "link", "add", self.port, "type", "veth",
            "peer", "name", "eth0", "netns", self.ns,
        )  # fmt: skip
        _ip("-n", network.switch, "link", "set", self.port, "master", "br0", "up")
        _ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")

    def argv(self, *command: str) -> list[str]:
        """``command`` as run inside this host."""
        return ["ip", "netns", "exec", self.ns, *command]

    def run(self, *command: str, timeout: float = 30.0) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(*command), capture_output=True, text=True, timeout=timeout)

    def set_link(self, up: bool) -> None:
        """Cut this host off the network, or connect it again: its own interface goes down, as
        when a cable is pulled (the kernel drops the routes through it until it is back up;
        addresses and open sockets stay)."""
        _ip("-n", self.ns, "link", "set", "eth0", "up" if up else "down")

    def add_default_route(self) -> None:
        """A default route out of eth0, so this host has a *primary* address."""
        _ip("-n", self.ns, "route", "add", "default", "dev", "eth0")

    def tcp_sockets(self) -> list[TcpSocket]:
        """Every TCP socket in this namespace (/proc/net/tcp* as seen from inside it)."""
        out = self.run("cat", "/proc/net/tcp", "/proc/net/tcp6")
        assert out.returncode == 0, out.stderr
        sockets = []
        for line in out.stdout.splitlines():
            fields = line.split()
            if len(fields) > 3 and fields[0].endswith(":"):  # not a header line
                state = _TCP_STATES.get(fields[3], fields[3])
                sockets.append(TcpSocket(_endpoint(fields[1]), _endpoint(fields[2]), state))
        return sockets

    def listening_tcp_ports(self) -> set[int]:
        return {sock.local[1] for sock in self.tcp_sockets() if sock.state == "listen"}

    def connections_to(self, host: Host, port: int) -> set[int]:
        """Local ports of this host's established TCP connections to ``host:port``."""
        return {
            sock.local[1]
            for sock in self.tcp_sockets()
            if sock.state == "established" and sock.remote == (host.address, port)
        }


class TcpSocket(NamedTuple):
    local: tuple[str, int]
    remote: tuple[str, int]
    state: str


_TCP_STATES = {"01": "established", "0A": "listen"}


def _endpoint(field: str) -> tuple[str, int]:
    """``0107E70A:15B3`` -> ``("10.231.7.1", 5555)``; IPv6 hosts stay in hex."""
    host, port = field.split(":")
    if len(host) == 8:
        host = socket.inet_ntoa(struct.pack("<I", int(host, 16)))
    return host, int(port, 16)


class Network:
    """A switch (a bridge in a namespace of its own) and the hosts plugged into it."""

    def __init__(self) -> None:
        self.tag = f"tsw{os.getpid()}-{uuid.uuid4().hex[:4]}"
        self.namespaces: list[str] = []
        self.hosts: dict[str, Host] = {}
        self.switch = f"{self.tag}-sw"

    def start(self) -> None:
        """Make the switch: kept out of ``__init__`` so whatever it made is deleted if it fails
        half way."""
        _ip("netns", "add", self.switch)
        self.namespaces.append(self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")

    def add_host(self, name: str) -> Host:
        host = self.hosts[name] = Host(self, name, len(self.hosts) + 1)
        return host

    def close(self) -> None:
        """Delete every namespace; their veths go with them. Safe to call twice."""
        errors = []
        for ns in reversed(self.namespaces):
            try:
                _ip("netns", "del", ns)
            except RuntimeError as exc:
                errors.append(str(exc))
        self.namespaces.clear()
        if errors:
            raise RuntimeError("; ".join(errors))


@pytest.fixture
def network(namespaces_possible: None) -> Iterator[Network]:
    net = Network()
    try:
        net.start()
        yield net
    finally:
        net.close()


class NetApp:
    """The application node in its namespace (``netapp.py``): one JSON request per line on its
    stdin, one JSON reply per line on its stdout."""

    def __init__(self, process: subprocess.Popen) -> None:
        self.process = process

    def ask(self, op: str, timeout: float = 30.0, **fields: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"op": op, **fields}) + "\n")
        self.process.stdin.flush()
        # One request, one line back: nothing is ever left in the pipe's buffer to miss.
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"the application node gave no answer to {op!r} within {timeout}s")
        line = self.process.stdout.readline()
        if not line:
            pytest.fail(f"the application node exited (status {self.process.poll()}) on {op!r}")
        reply = json.loads(line)
        if "error" in reply:
            pytest.fail(f"the application node failed {op!r}: {reply['error']}")
        return reply["ok"]

    def status(self) -> dict[str, Any]:
        return self.ask("status")


class HostNodes(Nodes):
    """`taskswarm` nodes started inside hosts; logs go to files, shown when a test fails."""

    def __init__(self, log_dir: Path, key_file: str) -> None:
        super().__init__()
        self.log_dir, self.key_file = log_dir, key_file
        self.logs: list[Path] = []

    def start_on(
        self, host: Host, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        """``taskswarm ARGS`` on ``host``."""
        return self.start_python(host, "-m", "taskswarm", *args, env=env, cwd=cwd)

    def start_python(
        self, host: Host, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ):
        """``python ARGS`` on ``host`` (in the folder ``cwd``), its output logged."""
        log = self.log_dir / f"{host.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with open(log, "w") as out:
            process = subprocess.Popen(
                host.argv(sys.executable, *args),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
            )
        self.processes.append(process)
        return process

    def master(self, host: Host, *args: str, bind: str | None = None) -> subprocess.Popen:
        return self.start_on(
            host,
            "master",
            "--bind", bind or f"tcp://{host.address}:{MASTER_PORT}",
            "--key-file", self.key_file,
            "--no-dashboard", "--no-state-dir",
            "--heartbeat", "0.25", "--slave-timeout", "2.5",
            *args,
        )  # fmt: skip

    def slave(
        self, host: Host, master: Host, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> subprocess.Popen:
        """A slave of one worker; its tasks can tell where they ran (TASKSWARM_TEST_HOST)."""
        return self.start_on(
            host,
            "slave", f"tcp://{master.address}:{MASTER_PORT}",
            "--key-file", self.key_file, "--workers", "1", "--heartbeat", "0.25",
            env={"TASKSWARM_TEST_HOST": host.name, **(env or {})},
            cwd=cwd,
        )  # fmt: skip

    def app(self, host: Host, master: Host) -> NetApp:
        log = self.log_dir / f"{host.name}-app.log"
        self.logs.append(log)
        with open(log, "w") as err:
            process = subprocess.Popen(
                host.argv(
                    sys.executable,
                    str(NETAPP),
                    f"tcp://{master.address}:{MASTER_PORT}",
                    self.key_file,
                ),  # fmt: skip
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
            )
        self.processes.append(process)
        return NetApp(process)

    def tail(self, lines: int = 40) -> str:
        """The end of every node's log, for a failing test's report."""
        parts = []
        for log in self.logs:
            text = log.read_text(errors="replace").splitlines()[-lines:] if log.exists() else []
            parts.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(parts)


@pytest.fixture
def host_nodes(
    network: Network, key_file: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[HostNodes]:
    """Nodes on the network's hosts, killed and reaped before the network goes."""
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    started = HostNodes(log_dir, key_file)
    try:
        yield started
    finally:
        started.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(started.tail())  # pytest shows it under the failure


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """Keep each phase's report on the test item, so fixtures can tell a failed test."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


class Gate:
    """How far the gated tasks may go: task ``i`` starts its work once ``limit >= i``. Each
    task also leaves a mark ``started/i-HOST`` when it starts, so the test sees where tasks run."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "started").mkdir(parents=True)
        self.open_to(-1)

    def open_to(self, limit: int) -> None:
        tmp = self.root / "limit.tmp"
        tmp.write_text(str(limit))
        tmp.replace(self.root / "limit")  # atomic: a task never reads half a number

    def started(self) -> list[tuple[int, str]]:
        marks = [p.name.split("-", 1) for p in (self.root / "started").iterdir()]
        return sorted((int(index), host) for index, host in marks)
