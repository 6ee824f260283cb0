"""Progress of task systems: the meter's arithmetic, the board's two faces, and `taskswarm run`."""

from __future__ import annotations

import io
import os
import pty
import select
import subprocess
import sys
import textwrap
import time

import pytest

from taskswarm.ops.progress import Meter, ProgressBoard, installed, progress_display

APP = textwrap.dedent(
    """
    import taskswarm as ts

    class Square(ts.Task):
        def __init__(self, x):
            super().__init__()
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

    class SquaresApp(ts.ApplicationNode):
        def get_task_system(self):
            return SumOfSquares(40)
        def work_finished(self, result, error):
            print("result", result, "meter", self.handle.meter.done, self.handle.meter.total)
    """
)


def test_the_meter_tells_rate_and_eta_from_recent_updates():
    meter = Meter("squares", started=100.0)
    meter.update(0, 100, now=100.0)
    meter.update(10, 100, now=101.0)
    meter.update(30, 100, now=102.0)
    assert meter.rate == pytest.approx(15.0)  # 30 tasks in 2 s
    assert meter.eta == pytest.approx(70 / 15.0)
    meter.update(30, 100, now=200.0)  # a long stall: the old samples leave the window
    assert meter.rate < 1.0
    assert "30/100 tasks (30%)" in meter.describe()


def test_a_meter_with_no_total_yet_has_no_eta():
    meter = Meter("new")
    assert meter.eta is None
    assert "0/? tasks" in meter.describe()


def test_on_a_pipe_the_board_logs_a_line_per_tenth_not_per_task():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=False) as board:
        for done in range(1, 1001):
            board.update("s1", done, 1000, "SumOfSquares s1")
        board.finish("s1")
    lines = stream.getvalue().splitlines()
    assert 10 <= len(lines) <= 12
    assert lines[-1].startswith("SumOfSquares s1: 1000/1000 tasks (100%), done in")
    assert all("tasks/s" in line for line in lines)


def test_on_a_terminal_the_board_draws_a_bar_with_rate_and_eta():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=True) as board:
        board.update("s1", 5, 10, "SumOfSquares s1")
        board.finish("s1")
    text = stream.getvalue()
    assert "SumOfSquares s1" in text and "10" in text and "tasks/s" in text


def test_a_program_drawing_its_own_bar_joins_the_run_board():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=False) as board, installed(board):
        with progress_display("rendering") as callback:
            assert callback is not None and callback.draws_progress
            callback(5, 5)
    assert "rendering: 5/5 tasks (100%), done" in stream.getvalue()


def test_quiet_progress_shows_nothing_even_on_the_run_board():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=False) as board, installed(board):
        with progress_display("rendering", quiet=True) as callback:
            callback(5, 5)
            assert callback.draws_progress  # so a task system it watches is not shown either
    assert stream.getvalue() == ""


def test_a_board_that_first_hears_of_work_under_way_does_not_count_it_as_instant():
    meter = Meter("late", started=100.0)
    meter.update(500, 1000, now=100.01)  # the first report: half done already
    assert meter.rate == 0.0 and meter.eta is None
    meter.update(600, 1000, now=101.01)
    assert meter.rate == pytest.approx(100.0)


def _write_app(tmp_path):
    app = tmp_path / "squares_app.py"
    app.write_text(APP)
    return app


def test_run_logs_each_task_system_on_a_pipe(nodes, tmp_path):
    app = _write_app(tmp_path)
    out = nodes.run("run", str(app), "--slaves", "1", "--workers", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "result 20540 meter 40 40" in out.stdout
    done = [line for line in out.stderr.splitlines() if "SumOfSquares" in line]
    assert done and "40/40 tasks (100%), done in" in done[-1], out.stderr


def test_run_with_no_progress_shows_none(nodes, tmp_path):
    app = _write_app(tmp_path)
    out = nodes.run("run", "--no-progress", str(app), "--slaves", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    assert "SumOfSquares" not in out.stderr


def test_run_draws_a_bar_on_a_terminal(tmp_path):
    app = _write_app(tmp_path)
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "taskswarm", "run", str(app), "--slaves", "1", "--workers", "1"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=follower,
        env={**os.environ, "COLUMNS": "120", "TERM": "xterm"},
    )
    os.close(follower)
    seen = b""
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            ready, _, _ = select.select([leader], [], [], 1.0)
            if not ready:
                if process.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal's other end closed: the run is over
                break
            if not chunk:
                break
            seen += chunk
        stdout, _ = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
        os.close(leader)
    assert process.returncode == 0, seen.decode(errors="replace")
    assert b"result 20540" in stdout
    text = seen.decode(errors="replace")
    assert "SumOfSquares" in text and "40/40" in text and "tasks/s" in text
    assert "\u2501" in text  # the bar itself (rich draws it with heavy horizontals)
