"""The `taskswarm` command with real processes: keygen, master, slaves, run, status, signals."""

from __future__ import annotations

import json
import os
import signal
import stat
import time

import numpy as np
import pytest
from PIL import Image

from conftest import EXAMPLES, alive, descendants, free_port, wait_for
from taskswarm.protocol.keys import load_key


def start_cluster(nodes, key_file, slaves=2, workers=1, *master_args):
    address = f"tcp://127.0.0.1:{free_port()}"
    master = nodes.start("master", "--bind", address, "--key-file", key_file, *master_args)
    slave_processes = [
        nodes.start("slave", address, "--key-file", key_file, "--workers", str(workers))
        for _ in range(slaves)
    ]
    return address, master, slave_processes


def status_json(nodes, address, key_file):
    out = nodes.run("status", "--master", address, "--key-file", key_file, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def active_slaves(nodes, address, key_file, count):
    def enough():
        slaves = status_json(nodes, address, key_file)["slaves"]
        active = [s for s in slaves if s["state"] == "active"]
        return active if len(active) >= count else None

    return wait_for(enough, timeout=30, interval=0.2)


def test_keygen_writes_a_key_only_its_owner_can_read(nodes, tmp_path):
    path = tmp_path / "k.key"
    out = nodes.run("keygen", str(path))
    assert out.returncode == 0, out.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(load_key(path)) == 32
    again = nodes.run("keygen", str(path))
    assert again.returncode == 1
    assert "already exists" in again.stderr
    assert "Traceback" not in again.stderr


def test_three_shells_master_two_slaves_and_a_run(nodes, key_file, tmp_path):
    address, _, _ = start_cluster(nodes, key_file, 2, 1)
    active_slaves(nodes, address, key_file, 2)
    image = tmp_path / "m.png"
    out = nodes.run(
        "run",
        str(EXAMPLES / "mandelbrot.py"),
        "--master",
        address,
        "--key-file",
        key_file,
        "--output",
        str(image),
        "--width",
        "96",
        "--height",
        "64",
        "--quiet",
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "matches serial reference: yes" in out.stdout
    from mandelbrot import ImageSpec, render_serial

    spec = ImageSpec.fit(96, 64, 256)
    assert np.array_equal(np.asarray(Image.open(image)), render_serial(spec))

    table = nodes.run("status", "--master", address, "--key-file", key_file)
    assert table.returncode == 0, table.stderr
    for column in ("id", "host", "state", "workers", "in flight", "rating", "done"):
        assert column in table.stdout
    slaves = status_json(nodes, address, key_file)["slaves"]
    assert len([s for s in slaves if s["state"] == "active"]) == 2
    assert all(s["workers"] == 1 and s["rating"] is not None for s in slaves)
    assert sum(s["done"] for s in slaves) > 0
    for slave in slaves:
        assert slave["id"] in table.stdout


@pytest.mark.parametrize("node", ["master", "slave"])
def test_sigint_stops_a_node_within_5s_with_no_child_left(nodes, key_file, node):
    address, master, slaves = start_cluster(nodes, key_file, 1, 2)
    active_slaves(nodes, address, key_file, 1)
    target = master if node == "master" else slaves[0]
    children = descendants(target.pid)
    if node == "slave":
        assert len(children) >= 2  # its workers (and the forkserver) are running
    target.send_signal(signal.SIGINT)
    started = time.monotonic()
    target.wait(timeout=10)
    assert time.monotonic() - started < 5
    wait_for(lambda: not [p for p in children if alive(p)], timeout=5)


def test_a_slave_started_before_its_master_waits_and_registers(nodes, key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("slave", address, "--key-file", key_file, "--workers", "1")
    nodes.start("master", "--bind", address, "--key-file", key_file)
    active_slaves(nodes, address, key_file, 1)


def test_a_restarted_master_gets_its_slaves_back(nodes, key_file):
    address, master, _ = start_cluster(nodes, key_file, 1, 1)
    active_slaves(nodes, address, key_file, 1)
    master.send_signal(signal.SIGTERM)
    master.wait(timeout=10)
    nodes.start("master", "--bind", address, "--key-file", key_file)
    active_slaves(nodes, address, key_file, 1)


def test_a_missing_key_file_is_a_one_line_error(nodes, tmp_path):
    out = nodes.run("master", "--key-file", str(tmp_path / "nope.key"))
    assert out.returncode == 1
    assert "does not exist" in out.stderr and "taskswarm keygen" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_key_file_others_can_read_is_refused(nodes, key_file):
    os.chmod(key_file, 0o644)
    out = nodes.run("slave", "tcp://127.0.0.1:5555", "--key-file", key_file)
    assert out.returncode == 1
    assert "chmod 600" in out.stderr and "Traceback" not in out.stderr


def test_a_bad_master_address_is_a_one_line_error(nodes, key_file):
    out = nodes.run("slave", "localhost:5555", "--key-file", key_file)
    assert out.returncode == 1
    assert "tcp://HOST:PORT" in out.stderr and "Traceback" not in out.stderr


def test_status_with_no_master_listening_says_so(nodes, key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    out = nodes.run("status", "--master", address, "--key-file", key_file, timeout=30)
    assert out.returncode == 1
    assert "no master answered" in out.stderr and "Traceback" not in out.stderr


def test_python_dash_m_taskswarm_is_the_same_command(nodes):
    out = nodes.run("--help")
    assert out.returncode == 0
    for command in ("keygen", "master", "slave", "run", "status"):
        assert command in out.stdout


def test_run_starts_an_embedded_cluster_for_an_app_file(nodes, tmp_path):
    app = tmp_path / "my_app.py"
    app.write_text(
        "import taskswarm as ts\n"
        "class Double(ts.Task):\n"
        "    def __init__(self, x):\n"
        "        super().__init__()\n"
        "        self.x = x\n"
        "    def __call__(self):\n"
        "        return 2 * self.x\n"
        "with ts.connect() as app:\n"
        "    print(sum(f.result() for f in app.push_tasks([Double(i) for i in range(10)])))\n"
    )
    out = nodes.run("run", str(app), "--slaves", "1", "--workers", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("90")


def test_run_passes_arguments_and_exit_code_through(nodes, tmp_path):
    app = tmp_path / "exit_app.py"
    app.write_text("import sys\nprint(sys.argv[1:])\nsys.exit(3)\n")
    out = nodes.run("run", str(app), "--slaves", "1", "a", "--b", timeout=120)
    assert out.returncode == 3, out.stderr
    assert "['a', '--b']" in out.stdout


def test_run_without_a_target_explains_usage(nodes):
    out = nodes.run("run")
    assert out.returncode == 2
    assert "APP.py" in out.stderr


def test_options_come_from_a_toml_file_and_environment(nodes, key_file, tmp_path):
    address = f"tcp://127.0.0.1:{free_port()}"
    config = tmp_path / "taskswarm.toml"
    config.write_text(f'[master]\nbind = "{address}"\n')
    env = {**os.environ, "TASKSWARM_KEY_FILE": key_file}
    nodes.start("--config", str(config), "master", env=env)
    nodes.start("slave", address, "--workers", "1", env=env)
    active_slaves(nodes, address, key_file, 1)


@pytest.mark.timeout(60)
def test_status_watch_redraws_until_ctrl_c_and_leaves_quietly(cluster, app, nodes):
    def connected() -> int:
        return sum(a["state"] == "connected" for a in app.status()["applications"])

    before = connected()
    watcher = nodes.start(
        "status", "--master", cluster.address, "--key-file", cluster.key_file, "--watch", "0.2"
    )
    wait_for(lambda: connected() > before)  # it is connected
    first = watcher.stderr.readline()  # once its first frame is drawn (the test's timeout guards)
    assert "Ctrl-C to stop" in first
    watcher.send_signal(signal.SIGINT)
    out, err = watcher.communicate(timeout=20)
    assert watcher.returncode == 0, err
    assert "slaves" in out and "Traceback" not in err


def test_help_after_the_app_is_the_apps_own_and_starts_no_cluster(nodes, tmp_path):
    app = tmp_path / "helpful_app.py"
    app.write_text(
        "import argparse, os\n"
        "parser = argparse.ArgumentParser(description='the app itself')\n"
        "parser.parse_args()\n"
        "print('no help asked', os.environ.get('TASKSWARM_MASTER'))\n"
    )
    out = nodes.run("run", str(app), "--help", timeout=60)
    assert out.returncode == 0, out.stderr
    assert "the app itself" in out.stdout and "embedded cluster" not in out.stderr
    assert "Run an application" in nodes.run("run", "--help").stdout  # run's own, before the app
    module = nodes.run("run", "--slaves", "1", str(EXAMPLES / "expensive.py"), "-h")
    assert module.returncode == 0 and "--duration" in module.stdout
