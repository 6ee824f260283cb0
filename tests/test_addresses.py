"""Where a master can be reached: IPv6, wildcard binds, and the address it tells others.

Slaves and applications only ever connect out to the master, so the master's address is the one
others must know: ``status`` (and the dashboard link) report the address given with
``--advertise``, else the bind address, else, for a wildcard bind, this host's primary address
with the port really bound. A firewalled slave host is in tests/multihost/.
"""

from __future__ import annotations

import json
import socket
import urllib.request
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import Nodes, wait_for
from taskswarm.protocol.addresses import advertised_address, primary_host, public_url


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


needs_ipv6 = pytest.mark.skipif(
    not _has_ipv6_loopback(), reason="IPv6 is off on this kernel's loopback (no ::1 to bind)"
)


class SumOfSquares(ts.TaskSystem):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.total, self.seen = n, 0, 0

    def init_system(self, master) -> None:
        pass

    def generate_tasks(self, master) -> list:
        return [ts.FunctionTask(pow, i, 2) for i in range(self.n)]

    def task_finished(self, master, task, result, error) -> None:
        self.total += result
        self.seen += 1

    def is_complete(self, master) -> bool:
        return self.seen == self.n

    def gather_result(self, master):
        return self.total, None


def start_master(nodes: Nodes, key_file: str, tmp_path: Path, bind: str, *args: str) -> str:
    """A master on ``bind`` (port 0: any free one); returns the address it bound."""
    ready = tmp_path / f"master-{len(nodes.processes)}.address"
    nodes.start(
        "master", "--bind", bind, "--key-file", key_file, "--no-state-dir",
        "--ready-file", str(ready), *args,
    )  # fmt: skip
    return wait_for(lambda: ready.exists() and ready.read_text(), timeout=30)


def port_of(address: str) -> str:
    return address.rsplit(":", 1)[1]


@needs_ipv6
def test_a_cluster_on_ipv6_loopback_runs_tasks_and_serves_its_dashboard(
    nodes: Nodes, key_file: str, tmp_path: Path
) -> None:
    address = start_master(nodes, key_file, tmp_path, "tcp://[::1]:0", "--dashboard", "[::1]:0")
    assert address.startswith("tcp://[::1]:")
    nodes.start("slave", address, "--key-file", key_file, "--workers", "1")
    with ts.connect(address, key_file, connect_timeout=30) as app:
        assert app.submit(pow, 2, 10).result(timeout=60) == 1024
        assert app.run_system(SumOfSquares(20), timeout=60) == sum(i * i for i in range(20))
        status = app.status()
    assert status["master"]["address"] == status["master"]["bind"] == address
    assert [slave["state"] for slave in status["slaves"]] == ["active"]
    url = status["master"]["dashboard"]
    assert url.startswith("http://[::1]:")
    with urllib.request.urlopen(f"{url}/api/status", timeout=10) as response:
        assert json.load(response)["master"]["address"] == address


@needs_ipv6
def test_a_master_bound_to_every_ipv6_interface_takes_ipv4_clients_too(
    nodes: Nodes, key_file: str, tmp_path: Path
) -> None:
    bound = start_master(nodes, key_file, tmp_path, "tcp://[::]:0", "--no-dashboard")
    port = port_of(bound)
    for address in (f"tcp://[::1]:{port}", f"tcp://127.0.0.1:{port}"):
        with ts.connect(address, key_file, connect_timeout=30) as app:
            assert app.status()["master"]["bind"] == f"tcp://[::]:{port}"


def test_status_reports_the_advertised_address_beside_the_bound_one(
    nodes: Nodes, key_file: str, tmp_path: Path
) -> None:
    advertised = "tcp://master.example.org:7000"
    bound = start_master(
        nodes, key_file, tmp_path, "tcp://127.0.0.1:0",
        "--advertise", advertised, "--dashboard", "127.0.0.1:0",
    )  # fmt: skip
    with ts.connect(bound, key_file, connect_timeout=30) as app:
        master = app.status()["master"]
    assert master["address"] == advertised
    assert master["bind"] == bound
    # The dashboard listens on one address of its own: its link keeps that address.
    assert master["dashboard"].startswith("http://127.0.0.1:")
    out = nodes.run("status", "--master", bound, "--key-file", key_file)
    assert out.returncode == 0, out.stderr
    assert f"master {advertised} " in out.stdout


def test_a_wildcard_bind_advertises_this_hosts_primary_address_and_the_real_port(
    nodes: Nodes, key_file: str, tmp_path: Path
) -> None:
    bound = start_master(nodes, key_file, tmp_path, "tcp://0.0.0.0:0", "--dashboard", "0.0.0.0:0")
    port = port_of(bound)
    with ts.connect(f"tcp://127.0.0.1:{port}", key_file, connect_timeout=30) as app:
        master = app.status()["master"]
    host = primary_host()
    assert master["bind"] == bound == f"tcp://0.0.0.0:{port}"
    assert master["address"] == f"tcp://{host}:{port}"
    assert master["dashboard"].startswith(f"http://{host}:")  # a link that can be followed


@pytest.mark.parametrize(
    ("advertise", "message"),
    [
        ("tcp://0.0.0.0:5555", "--advertise tcp://0.0.0.0:5555 names every interface"),
        ("10.0.0.5:5555", "'10.0.0.5:5555' is not a master address; write it as tcp://HOST:PORT"),
    ],
)
def test_an_advertised_address_nobody_could_dial_is_refused_saying_why(
    nodes: Nodes, key_file: str, advertise: str, message: str
) -> None:
    out = nodes.run(
        "master", "--bind", "tcp://127.0.0.1:0", "--key-file", key_file, "--no-state-dir",
        "--no-dashboard", "--advertise", advertise,
    )  # fmt: skip
    assert out.returncode == 1
    assert message in out.stderr
    assert "Traceback" not in out.stderr


def test_advertised_addresses_without_a_master() -> None:
    assert advertised_address("tcp://10.0.0.5:5555") == "tcp://10.0.0.5:5555"
    assert advertised_address("tcp://[fd00::5]:5555") == "tcp://[fd00::5]:5555"
    assert advertised_address("ipc:///run/taskswarm.sock") == "ipc:///run/taskswarm.sock"
    assert (
        advertised_address("tcp://0.0.0.0:5555", "tcp://nat.example:80") == "tcp://nat.example:80"
    )
    assert advertised_address("tcp://0.0.0.0:5555") == f"tcp://{primary_host()}:5555"
    assert advertised_address("tcp://*:5555") == f"tcp://{primary_host()}:5555"
    assert advertised_address("tcp://[::]:5555") == f"tcp://{primary_host(ipv6=True)}:5555"


def test_a_dashboard_link_on_a_wildcard_takes_the_advertised_host() -> None:
    assert public_url("http://0.0.0.0:8787", "tcp://10.0.0.5:5555") == "http://10.0.0.5:8787"
    assert public_url("http://[::]:8787", "tcp://[fd00::5]:5555") == "http://[fd00::5]:8787"
    assert public_url("http://127.0.0.1:8787", "tcp://10.0.0.5:5555") == "http://127.0.0.1:8787"
    assert public_url("http://0.0.0.0:8787", "ipc:///x") == f"http://{primary_host()}:8787"
