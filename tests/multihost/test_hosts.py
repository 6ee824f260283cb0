"""A cluster spread over hosts (Linux network namespaces on one switch), driven like a real one.

Each node is a `taskswarm` process inside its own host; they reach each other only over the
hosts' network (10.231.7.0/24), which the tests cut and mend with `ip link set`. See conftest.py
for the topology. Tasks here wait at a gate the test opens step by step, so every action happens
at a known point of the run, without sleeping.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, wait_for
from mandelbrot import ImageSpec, render_serial

from .conftest import MASTER_PORT, Gate, Host, HostNodes, Network
from .netapp import RESULT_TIMEOUT

ROWS = 32


def slave_record(status: dict, pid: int, state: str = "active") -> dict | None:
    """The master's record of the slave with this pid, if it is in that state."""
    for record in status["slaves"]:
        if record["pid"] == pid and record["state"] == state:
            return record
    return None


def until(condition, timeout: float = 30.0):
    """``wait_for`` at a pace that suits asking the cluster for its status."""
    return wait_for(condition, timeout=timeout, interval=0.1)


def finished(status: dict, total: int) -> int:
    """Tasks the master has results for (once all ``total`` tasks have been pushed)."""
    return total - status["tasks"]["queued"] - status["tasks"]["assigned"]


def test_the_mandelbrot_sample_renders_the_serial_image_across_hosts(
    network: Network, host_nodes: HostNodes, tmp_path
) -> None:
    """A master bound to every interface of its host, two slave hosts and an application host
    running the sample; the master advertises its host's primary address."""
    master, app_host = network.add_host("master"), network.add_host("app")
    slaves = [network.add_host(f"slave-{name}") for name in "ab"]
    master.add_default_route()
    host_nodes.master(master, bind=f"tcp://0.0.0.0:{MASTER_PORT}")
    for host in slaves:
        host_nodes.slave(host, master)
    address = f"tcp://{master.address}:{MASTER_PORT}"

    def status() -> dict:
        out = app_host.run(
            sys.executable, "-m", "taskswarm", "status",
            "--master", address, "--key-file", host_nodes.key_file, "--json",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def both_active() -> dict | None:
        info = status()
        return info if [s["state"] for s in info["slaves"]] == ["active"] * 2 else None

    info = until(both_active)
    assert info["master"]["address"] == address  # a wildcard bind advertises a dialable address
    assert info["master"]["bind"] == f"tcp://0.0.0.0:{MASTER_PORT}"

    output = tmp_path / "mandelbrot.png"
    out = app_host.run(
        sys.executable, str(EXAMPLES / "mandelbrot.py"),
        "--master", address, "--key-file", host_nodes.key_file,
        "--output", str(output), "--width", "96", "--height", "64", "--max-iter", "64",
        "--band-rows", "4", "--quiet",
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "matches serial reference: yes" in out.stdout
    with Image.open(output) as png:
        image = np.asarray(png.convert("RGB"))
    assert np.array_equal(image, render_serial(ImageSpec.fit(96, 64, 64)))
    # A slave listens on its data socket alone (kept results are fetched there), on the
    # address it reaches the master from, as status says.
    data = {s["data"] for s in status()["slaves"]}
    for host in slaves:
        (listening,) = host.listening_tcp_ports()
        assert f"tcp://{host.address}:{listening}" in data, (data, host.address, listening)


def test_a_slave_cut_off_mid_run_loses_its_tasks_to_others_then_rejoins_and_a_new_one_helps(
    network: Network, host_nodes: HostNodes, tmp_path
) -> None:
    master, app_host = network.add_host("master"), network.add_host("app")
    a, b, d = (network.add_host(f"slave-{name}") for name in "abd")
    host_nodes.master(master)
    slave_a, slave_b = host_nodes.slave(a, master), host_nodes.slave(b, master)
    app = host_nodes.app(app_host, master)
    until(lambda: all(slave_record(app.status(), p.pid) for p in (slave_a, slave_b)))

    gate = Gate(tmp_path / "gate")
    gate.open_to(3)
    system_id = app.ask(
        "submit", width=48, height=ROWS, max_iter=64, band_rows=1, gate=str(gate.root)
    )

    # Rows 0-3 pass; each slave then sits in a row past the gate.
    def running_past(limit: int, host: Host) -> set[int]:
        return {row for row, name in gate.started() if name == host.name and row > limit}

    wait_for(lambda: running_past(3, a) and running_past(3, b))
    cut_off_rows = running_past(3, b)
    stalled = b.connections_to(master, MASTER_PORT)
    assert len(stalled) == 1

    b.set_link(up=False)
    until(lambda: slave_record(app.status(), slave_b.pid, state="lost"))
    gate.open_to(11)
    until(lambda: finished(app.status(), ROWS) >= 12)  # rows 0-11, all while b is away
    # Past its master timeout, b gives up the connection stalled in TCP's retransmission
    # backoff (which would hold it back for as long again after the network returns).
    until(lambda: not b.connections_to(master, MASTER_PORT) & stalled)

    b.set_link(up=True)
    until(lambda: slave_record(app.status(), slave_b.pid))
    assert not b.connections_to(master, MASTER_PORT) & stalled  # it came back on a new one
    until(lambda: running_past(11, b))  # work given to b since it came back

    slave_d = host_nodes.slave(d, master)
    until(lambda: slave_record(app.status(), slave_d.pid))
    until(lambda: running_past(11, d))

    gate.open_to(ROWS)
    saved = tmp_path / "image.npy"
    ran_on = app.ask("result", timeout=RESULT_TIMEOUT + 30, system_id=system_id, save_to=str(saved))
    assert np.array_equal(np.load(saved), render_serial(ImageSpec.fit(48, ROWS, 64, 1)))
    assert sorted(map(int, ran_on)) == list(range(ROWS))
    for row in cut_off_rows:
        assert ran_on[str(row)] != b.name, f"row {row} waited for the slave that was cut off"
    assert b.name in {ran_on[str(row)] for row in running_past(11, b)}
    assert d.name in ran_on.values()


@pytest.mark.skipif(shutil.which("nft") is None, reason="needs nftables' `nft` to firewall a host")
def test_a_slave_whose_host_drops_every_inbound_connection_still_works(
    network: Network, host_nodes: HostNodes, tmp_path
) -> None:
    """Slaves only ever connect out to the master: a host that refuses every new inbound
    connection (as behind NAT or a default-deny firewall) can still be one."""
    master, app_host, walled = (network.add_host(n) for n in ("master", "app", "slave-f"))
    rules = (
        "add table inet walled; "
        "add chain inet walled input { type filter hook input priority 0; policy accept; }; "
        "add rule inet walled input iif lo accept; "
        "add rule inet walled input ct state new counter drop"
    )
    out = walled.run("nft", rules)
    assert out.returncode == 0, out.stderr
    # The wall holds: a listener on the walled host cannot be reached from the master's host.
    listener = host_nodes.start_python(
        walled, "-c", "import signal, socket; s = socket.create_server(('', 7070)); signal.pause()"
    )
    until(lambda: 7070 in walled.listening_tcp_ports())
    probe = master.run(
        sys.executable,
        "-c",
        f"import socket; socket.create_connection(('{walled.address}', 7070), 1)",
    )
    assert probe.returncode != 0 and "timed out" in probe.stderr, probe.stderr
    listener.kill()

    host_nodes.master(master)
    slave = host_nodes.slave(walled, master)
    app = host_nodes.app(app_host, master)
    until(lambda: slave_record(app.status(), slave.pid))
    system_id = app.ask("submit", width=48, height=16, max_iter=64, band_rows=4)
    saved = tmp_path / "image.npy"
    app.ask("result", timeout=RESULT_TIMEOUT + 30, system_id=system_id, save_to=str(saved))
    assert np.array_equal(np.load(saved), render_serial(ImageSpec.fit(48, 16, 64, 1)))
    assert slave_record(app.status(), slave.pid)  # the only slave, and still there
    counters = walled.run("nft", "list", "chain", "inet", "walled", "input").stdout
    assert "counter packets 0 " not in counters  # the probe's connection attempt was dropped


#: A module of the application's own, in a folder on the application host's path alone. Its
#: lock keeps its code from travelling by value: tasks need the module itself on every slave.
MEETING_MODULE = '''\
import os
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()


def host():
    with _LOCK:
        return os.environ.get("TASKSWARM_TEST_HOST", "?")


def meet(room, hosts, timeout=30.0):
    """Wait in ``room`` until tasks on ``hosts`` different hosts are there; say where I ran."""
    me = host()
    (Path(room) / f"{me}-{os.getpid()}").touch()
    deadline = time.monotonic() + timeout
    while len({p.name.rsplit("-", 1)[0] for p in Path(room).iterdir()}) < hosts:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{me} met only {sorted(p.name for p in Path(room).iterdir())}")
        time.sleep(0.02)
    return me
'''


def test_code_the_application_ships_runs_on_every_slave_including_one_that_joins_later(
    network: Network, host_nodes: HostNodes, tmp_path
) -> None:
    master, app_host = network.add_host("master"), network.add_host("app")
    a, b, c = (network.add_host(f"slave-{name}") for name in "abc")
    app_only, room = tmp_path / "app-only", tmp_path / "room"
    app_only.mkdir()
    room.mkdir()
    (app_only / "meeting.py").write_text(MEETING_MODULE)
    elsewhere, slave_tmp = tmp_path / "slave-cwd", tmp_path / "slave-tmp"
    elsewhere.mkdir()
    slave_tmp.mkdir()
    # The slaves run in another folder, with the module's folder nowhere on their path.
    on_slaves = {"env": {"TMPDIR": str(slave_tmp)}, "cwd": elsewhere}
    host_nodes.master(master)
    slaves = [host_nodes.slave(host, master, **on_slaves) for host in (a, b)]
    app = host_nodes.app(app_host, master)
    until(lambda: all(slave_record(app.status(), p.pid) for p in slaves))

    def call(function: str, *calls: list) -> list:
        outcomes = app.ask(
            "call", folder=str(app_only), module="meeting", function=function, calls=list(calls)
        )
        return outcomes

    ((status, said),) = call("host", [])
    assert status == "error" and "(ModuleNotFoundError)" in said, said
    assert "module 'meeting' is not installed there" in said

    assert app.ask("ship", path=str(app_only / "meeting.py")) is None
    slaves.append(host_nodes.slave(c, master, **on_slaves))
    until(lambda: slave_record(app.status(), slaves[-1].pid))

    outcomes = call("meet", *[[str(room), 3]] * 9)
    assert [status for status, _ in outcomes] == ["ok"] * 9, outcomes
    assert {where for _, where in outcomes} == {"slave-a", "slave-b", "slave-c"}
    for process in slaves:  # stopped as an operator would: each removes what it unpacked
        process.terminate()
        assert process.wait(timeout=30) == 0
    assert list(slave_tmp.glob("taskswarm-code-*")) == []


def test_a_task_graph_across_hosts_gives_the_right_answer_with_a_slave_killed(
    network: Network, host_nodes: HostNodes
) -> None:
    """Sums that take their inputs' Futures run on other hosts than their inputs were made on
    (each input fetched from the slave that keeps it, not through the master); a chain loses
    the slave running it, then one whose big results stay on the slave keeping them loses that
    slave, and both go on (the lost results are made again)."""
    master, app_host = network.add_host("master"), network.add_host("app")
    host_nodes.master(master)
    slaves = [host_nodes.slave(network.add_host(f"slave-{n}"), master) for n in "abc"]
    app = host_nodes.app(app_host, master)
    until(lambda: all(slave_record(app.status(), p.pid) for p in slaves))

    reduced = app.ask("tree", timeout=RESULT_TIMEOUT, leaves=32, size=1 << 17)  # 1 MiB each
    assert reduced["first"] == sum(range(32)) and reduced["size"] == 1 << 17
    assert len(reduced["hosts"]) >= 2, reduced  # sums took inputs made on other hosts
    produced = 63 * (1 << 17) * 8
    assert reduced["through_master"] < produced / 100, reduced  # slave to slave, not via it
    kept = app.ask("status")["master"]["kept"]
    assert kept["waiting_tasks"] == 0 and kept["input_results"] == 0

    assert app.ask("chain", steps=8, seconds=0.4) is None
    busy = until(
        lambda: [
            p for p in slaves if (r := slave_record(app.ask("status"), p.pid)) and r["in_flight"]
        ]
    )
    busy[0].kill()  # -9: the task it runs goes to another slave, with its input
    assert app.ask("chain-result", timeout=RESULT_TIMEOUT) == 8

    alive = [p for p in slaves if p is not busy[0]]
    assert app.ask("chain", steps=8, seconds=0.4, size=1 << 15) is None
    busy = until(
        lambda: [
            p for p in alive if (r := slave_record(app.ask("status"), p.pid)) and r["in_flight"]
        ]
    )
    busy[0].kill()  # it keeps the step before the one it runs: made again elsewhere
    assert app.ask("chain-result", timeout=RESULT_TIMEOUT) == 8.0
