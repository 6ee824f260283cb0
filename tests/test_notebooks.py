"""Notebooks: ``_repr_html_`` of the cluster, an application, a Future and a task system's
handle, ``LocalCluster(dashboard=True)`` with its ``dashboard_link``, ``taskswarm run
--dashboard``, and a real notebook run by a real kernel (nbclient).

The notebook test reaps what the kernel started even when a cell fails: it notes the kernel's
descendants (the cluster's nodes and their workers) before the kernel is shut down, and kills
any left once it is.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import textwrap
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import alive, descendants, wait_for
from taskswarm.client import html
from taskswarm.client.handles import SystemHandle, TaskFuture
from taskswarm.errors import ConfigurationError

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def answers(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status


@pytest.fixture(scope="module")
def cluster() -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=1, workers=1, dashboard=True) as local:
        yield local


@pytest.fixture(scope="module")
def app(cluster: ts.LocalCluster) -> Iterator[ts.Application]:
    with cluster.connect() as connection:
        yield connection


# -- LocalCluster(dashboard=True) ------------------------------------------------------------------


def test_a_cluster_with_a_dashboard_gives_its_link_and_the_link_answers(cluster):
    link = cluster.dashboard_link
    assert link is not None and re.fullmatch(r"http://127\.0\.0\.1:\d+", link)
    assert not link.endswith(":0")  # the port the master bound, not the one asked for
    assert answers(link + "/") == 200


def test_a_malformed_dashboard_address_is_refused_before_anything_starts():
    with pytest.raises(ConfigurationError, match="is not HOST:PORT"):
        ts.LocalCluster(slaves=1, workers=0, dashboard="localhost")


# -- _repr_html_ ---------------------------------------------------------------------------------


def test_a_running_cluster_shows_its_slaves_workers_and_dashboard_link(cluster):
    shown = cluster._repr_html_()
    assert "LocalCluster" in shown and "running" in shown
    assert "1 active" in shown  # slaves
    assert f'href="{cluster.dashboard_link}"' in shown


def test_displaying_the_cluster_again_and_again_leaves_the_master_no_records(cluster, app):
    def kept() -> int:  # records of applications, connected or gone
        return app.status()["master"]["kept"]["applications"]

    known = kept()  # ``app`` is a connection the cluster made: the displays ask through it
    for _ in range(3):
        assert "running" in cluster._repr_html_()
    assert kept() == known


def test_an_application_shows_its_state_the_clusters_counts_and_the_link(cluster, app):
    assert app.submit(pow, 2, 3).result(timeout=30) == 8
    shown = app._repr_html_()
    assert "Application" in shown and "connected" in shown
    assert app.client_id in shown and "0 tasks" in shown  # none waited for
    assert "1 active" in shown and cluster.dashboard_link in shown


def test_a_closed_application_says_so_without_asking_the_master(cluster):
    connection = cluster.connect()
    connection.close()
    shown = connection._repr_html_()
    assert "closed" in shown and "active" not in shown


def test_a_master_that_does_not_answer_shows_as_unreachable():
    (row,) = html.status_rows(None)
    assert row[0] == "status" and "unreachable" in row[1]


def test_a_future_shows_its_task_escaped_and_its_outcome(app):
    task = ts.FunctionTask(pow, 2, 10)
    task.name = SCRIPT
    future = app.submit(task)
    assert future.result(timeout=30) == 1024
    shown = future._repr_html_()
    assert ESCAPED in shown and "<script>" not in shown
    assert "finished" in shown and "1024" in shown


def test_a_failed_future_shows_its_error_escaped(app):
    future = app.submit(int, SCRIPT)
    with pytest.raises(ValueError):
        future.result(timeout=30)
    shown = future._repr_html_()
    assert "error" in shown and "ValueError" in shown and "<script>" not in shown


def test_a_pending_and_a_cancelled_future_say_so():
    future = TaskFuture("t-1", lambda task_id: None)
    assert "pending" in future._repr_html_()
    assert future.cancel()
    assert "cancelled" in future._repr_html_()


def test_a_system_handle_shows_its_progress_and_result_escaped():
    handle = SystemHandle("s-1", label=SCRIPT)
    handle.set_progress(3, 4)
    running = handle._repr_html_()
    assert ESCAPED in running and "<script>" not in running
    assert '<progress value="3" max="4">' in running and "3/4 tasks (75%)" in running
    handle.set_progress(4, 4)
    handle.set_outcome(SCRIPT)
    done = handle._repr_html_()
    assert "done" in done and "&#x27;&lt;script&gt;" in done and "<script>" not in done


def test_a_failed_system_handle_shows_its_error():
    handle = SystemHandle("s-2", label="sweep")
    handle.set_outcome(error=ts.TaskSystemError(SCRIPT))
    shown = handle._repr_html_()
    assert "failed" in shown and "TaskSystemError" in shown and "<script>" not in shown


# -- taskswarm run --dashboard -------------------------------------------------------------------


PRINT_LINK = """\
import urllib.request
import taskswarm as ts
with ts.connect() as app:
    url = app.status()["master"]["dashboard"]
    with urllib.request.urlopen(url + "/", timeout=10) as response:
        print(url, response.status)
"""


def test_run_with_dashboard_serves_the_embedded_clusters_and_prints_its_link(nodes, tmp_path):
    program = tmp_path / "app.py"
    program.write_text(PRINT_LINK)
    out = nodes.run("run", "--dashboard", "--slaves", "1", "--workers", "0", str(program))
    assert out.returncode == 0, out.stderr
    url, status = out.stdout.split()
    assert status == "200"
    assert re.search(rf"dashboard: {re.escape(url)}/\?token=[0-9a-f]{{32}} ", out.stderr)


def test_run_with_dashboard_and_a_master_prints_the_masters_link(nodes, cluster, tmp_path):
    program = tmp_path / "app.py"
    program.write_text("import taskswarm as ts\nts.connect().close()\n")
    out = nodes.run(
        "run", "--dashboard", "--master", cluster.address, "--key-file", cluster.key_file,
        str(program),
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert f"dashboard: {cluster.dashboard_link}/?token=" in out.stderr


# -- a real notebook -----------------------------------------------------------------------------


CELLS = [
    """
    import taskswarm as ts

    class Square(ts.Task):
        def __init__(self, x):
            super().__init__(name=f"square-{x}")
            self.x = x

        def __call__(self):
            return self.x * self.x

    class SumOfSquares(ts.TaskSystem):
        def __init__(self, n):
            super().__init__()
            self.n, self.total, self.seen = n, 0, 0

        def generate_tasks(self, master):
            return [Square(i) for i in range(self.n)]

        def task_finished(self, master, task, result, error):
            self.total += result
            self.seen += 1

        def is_complete(self, master):
            return self.seen == self.n

        def gather_result(self, master):
            return (self.total, None)
    """,
    "cluster = ts.LocalCluster(slaves=1, workers=1, dashboard=True)\ncluster",
    "app = cluster.connect()\napp",
    "future = app.submit(pow, 2, 10)\nfuture.result(timeout=30)\nfuture",
    "app.run_system(SumOfSquares(20), timeout=60)",
    "handle = app.submit_system(SumOfSquares(5))\nhandle.result(timeout=60)\nhandle",
    "cluster.close()\ncluster",
]


def html_of(cell) -> list[str]:
    return [o["data"]["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]


def run_notebook(path: Path, work: Path) -> tuple[object, str | None, list[tuple[int, str]]]:
    """Run the notebook at ``path`` cell by cell in a fresh kernel; returns it with its cells'
    outputs, the dashboard link its cluster showed (checked while the cluster ran), and the
    kernel's messages (cell index, message type) as they came."""
    import nbformat
    from jupyter_client import KernelManager
    from nbclient import NotebookClient

    messages: list[tuple[int, str]] = []

    class Recording(NotebookClient):
        def process_message(self, msg, cell, cell_index):
            messages.append((cell_index, msg["msg_type"]))
            return super().process_message(msg, cell, cell_index)

    notebook = nbformat.read(path, as_version=4)
    # Sockets and the connection file in the test's own folder, nothing left elsewhere.
    kernel = KernelManager(
        kernel_name="python3",
        transport="ipc",
        ip=str(work / "kernel"),
        connection_file=str(work / "kernel.json"),
    )
    client = Recording(notebook, km=kernel, timeout=60, shutdown_kernel="immediate", resources={})
    link = None
    left: list[int] = []
    try:
        # cleanup_kc: shut the kernel down at the end, though the test made its manager.
        with client.setup_kernel(cwd=str(work), cleanup_kc=True):
            pid = kernel.provisioner.pid
            left = [pid]
            try:
                for index, cell in enumerate(notebook.cells):
                    client.execute_cell(cell, index)
                    if index == 1:  # the cluster is up: its link must answer now
                        link = re.search(r'href="([^"]+)"', html_of(cell)[0]).group(1)
                        assert answers(link + "/") == 200
            finally:
                if descendants(pid):  # a cell failed before the last one closed the cluster
                    close_in_kernel(client)
                left = [pid, *descendants(pid)]  # before the kernel goes and they are reparented
    finally:
        reap(left)  # the kernel is shut down by now: only what it left is killed
    assert left[1:] == [], "the notebook's final cell closed its cluster: nothing should be left"
    return notebook, link, messages


def close_in_kernel(client) -> None:
    """Have the kernel close its cluster, so the nodes stop cleanly and its files go; what is
    still running after is killed (``reap``)."""
    import nbformat

    client.timeout = 15
    cell = nbformat.v4.new_code_cell("if 'cluster' in globals():\n    cluster.close()")
    with contextlib.suppress(Exception):  # the test's own failure is the one to report
        client.execute_cell(cell, len(client.nb.cells))


def reap(pids: list[int]) -> None:
    for pid in pids:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not any(alive(pid) for pid in pids), timeout=10)


def test_a_notebook_shows_the_cluster_application_future_and_progress(tmp_path):
    pytest.importorskip("nbclient")
    import nbformat

    path = tmp_path / "cluster.ipynb"
    cells = [nbformat.v4.new_code_cell(textwrap.dedent(source).strip()) for source in CELLS]
    nbformat.write(nbformat.v4.new_notebook(cells=cells), path)
    notebook, link, messages = run_notebook(path, tmp_path)
    setup, cluster, app, future, run, handle, closed = notebook.cells
    assert "running" in html_of(cluster)[0] and "1 active" in html_of(cluster)[0]
    assert link is not None and link.startswith("http://127.0.0.1:")
    assert "connected" in html_of(app)[0] and link in html_of(app)[0]
    assert "finished" in html_of(future)[0] and "1024" in html_of(future)[0]
    # One progress display, redrawn in place (at least once: at the end), then the result.
    (progress,) = html_of(run)
    assert (4, "update_display_data") in messages
    assert "TaskSystem" in progress and "20/20 tasks (100%)" in progress and "done" in progress
    assert run.outputs[-1]["data"]["text/plain"] == str(sum(i * i for i in range(20)))
    assert "5/5 tasks" in html_of(handle)[0] and "done" in html_of(handle)[0]
    assert "closed" in html_of(closed)[0]
