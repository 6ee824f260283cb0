"""Ctrl-C during `taskswarm run`: the run's work is cancelled, every view calls it cancelled, the
command exits 130 and leaves no process behind. Ctrl-C is sent as a terminal sends it: SIGINT to
the whole foreground process group."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap

import pytest

import taskswarm as ts
from conftest import alive, descendants, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

SLOW_SYSTEM = textwrap.dedent(
    """
    import time

    import taskswarm as ts

    class Slow(ts.Task):
        def __call__(self):
            time.sleep(0.2)  # the work itself, not a synchronisation
            return 1

    class SlowSystem(ts.TaskSystem):
        def __init__(self):
            super().__init__()
            self.done = 0

        def generate_tasks(self, master):
            return [Slow() for _ in range(400)]

        def task_finished(self, master, task, result, error):
            self.done += 1

        def is_complete(self, master):
            return self.done == 400

        def gather_result(self, master):
            return self.done, None

    class SlowNode(ts.ApplicationNode):
        def get_task_system(self):
            return SlowSystem()

        def system_progress(self, done, total):
            if done:
                print("under way", flush=True)  # the test presses Ctrl-C once it reads this
    """
)


def start_run(tmp_path, *args: str) -> subprocess.Popen:
    """`taskswarm run` in a process group of its own, as a shell runs a foreground job."""
    (tmp_path / "app.py").write_text(SLOW_SYSTEM)
    return subprocess.Popen(
        [sys.executable, "-m", "taskswarm", "run", "--no-progress", "app.py", *args],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def press_ctrl_c(run: subprocess.Popen) -> tuple[str, str]:
    assert run.stdout.readline().strip() == "under way"  # the test's timeout guards this
    family = descendants(run.pid)
    os.killpg(run.pid, signal.SIGINT)
    try:
        out, err = run.communicate(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
    wait_for(lambda: not [pid for pid in family if alive(pid)], timeout=20)
    return out, err


def cancelled_system_id(err: str) -> str:
    match = re.search(
        r"cancelled task system SlowSystem \w+ at (\d+)/400 tasks done \(id ([\w-]+)\)", err
    )
    assert match, err
    assert 0 < int(match.group(1)) < 400
    return match.group(2)


def test_ctrl_c_on_an_embedded_cluster_cancels_the_system_and_exits_130(tmp_path):
    run = start_run(tmp_path, "--slaves", "1", "--workers", "1")
    out, err = press_ctrl_c(run)
    assert run.returncode == 130, err
    assert "interrupted (Ctrl-C)" in err
    cancelled_system_id(err)
    for noise in ("Aborted!", "Traceback", "going away", "waiting for it to come back"):
        assert noise not in err


def test_ctrl_c_against_a_master_started_by_hand_is_cancelled_in_every_view(
    nodes, key_file, tmp_path
):
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("master", "--bind", address, "--key-file", key_file, "--no-dashboard")
    nodes.start("slave", address, "--key-file", key_file, "--workers", "2")
    with ts.connect(address, key_file, connect_timeout=30) as app:
        wait_for(lambda: any(s["state"] == "active" for s in app.status()["slaves"]), timeout=30)
        run = start_run(tmp_path, "--master", address, "--key-file", key_file)
        out, err = press_ctrl_c(run)
        assert run.returncode == 130, err
        system_id = cancelled_system_id(err)

        def system_state() -> str:
            return next(s["state"] for s in app.status()["systems"] if s["id"] == system_id)

        wait_for(lambda: system_state() != "running", timeout=20)
        assert system_state() == "cancelled"
        assert app.status()["tasks"]["queued"] == 0
    status = nodes.run("status", "--master", address, "--key-file", key_file, "--json")
    systems = json.loads(status.stdout)["systems"]
    assert [s["state"] for s in systems if s["id"] == system_id] == ["cancelled"]
    result = nodes.run("result", system_id, "--master", address, "--key-file", key_file)
    assert result.returncode == 1
    assert "was cancelled" in result.stderr and "Traceback" not in result.stderr


def test_a_program_that_leaves_its_connection_open_ends_without_warnings(nodes, tmp_path):
    (tmp_path / "app.py").write_text(
        "import taskswarm as ts\napp = ts.connect()\nprint(app.submit(abs, -5).result())\n"
    )
    out = nodes.run("run", "--slaves", "1", "--workers", "1", "app.py", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "5"
    assert "WARNING" not in out.stderr and "going away" not in out.stderr
