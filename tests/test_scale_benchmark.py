"""benchmarks/scale.py runs end to end at a tiny size, with slaves as processes and as threads of
host processes, prints its tables in their shape and leaves no process behind, also when
interrupted; no timing is checked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from test_scheduling_benchmark import finish, gone

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scale.py"
TINY = ["--tasks", "300", "--repeats", "1", "--idle-seconds", "0.5", "--heartbeat", "0.2"]
TINY += ["--book-slaves", "100"]
IDLE_HEADER = (
    "| slaves | registered in s | master CPU % | loop thread % | alone % | µs per heartbeat "
    "| slaves CPU % | rest of machine % | master RSS MiB | KiB per slave | slave PSS MiB "
    "| status KiB |"
)
TASKS_HEADER = (
    "| slaves | workers | tasks/s | min–max | master µs/task | dispatch µs/decision "
    "| tasks per message |"
)


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # everything it starts stays in this session: `gone` checks it
    )


def run_to_the_end(*args: str) -> tuple[str, str]:
    return finish(start(*args), timeout=100)


def rows_of(stdout: str, header: str) -> list[list[str]]:
    """The cells of each row of the table under ``header``."""
    lines = stdout.split(header + "\n", 1)[1].splitlines()[1:]  # past the alignment line
    rows = []
    for line in lines:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.timeout(150)
def test_a_tiny_run_with_slave_processes_prints_a_row_per_count(tmp_path: Path) -> None:
    report = tmp_path / "scale.json"
    stdout, _ = run_to_the_end(*TINY, "--slaves", "2,4", "--json", str(report))
    idle, tasks = rows_of(stdout, IDLE_HEADER), rows_of(stdout, TASKS_HEADER)
    assert [row[0] for row in idle] == ["2", "4"]
    assert all(len(row) == 12 for row in idle)
    assert [row[:2] for row in tasks] == [["2", "2"], ["4", "4"]]
    assert all(len(row) == 7 for row in tasks)
    assert "### the master's bookkeeping for 100 slaves" in stdout
    figures = json.loads(report.read_text())
    assert sorted(figures["results"]) == ["2", "4"]
    assert all(
        len(r[0]["runs"]) == 1 and len(r[0]["windows"]) == 1 for r in figures["results"].values()
    )
    assert [row["slaves"] for row in figures["rows"]] == [2, 4]


@pytest.mark.timeout(150)
def test_slaves_as_threads_of_host_processes_and_no_workers_skip_the_task_table() -> None:
    stdout, _ = run_to_the_end(*TINY, "--slaves", "3", "--slaves-as", "thread", "--hosts", "2")
    assert [row[:1] for row in rows_of(stdout, TASKS_HEADER)] == [["3"]]
    stdout, _ = run_to_the_end(*TINY, "--slaves", "5", "--slaves-as", "thread", "--workers", "0")
    assert [row[0] for row in rows_of(stdout, IDLE_HEADER)] == ["5"]
    assert TASKS_HEADER not in stdout


@pytest.mark.timeout(150)
def test_total_workers_are_shared_out_among_the_slaves_of_each_count() -> None:
    stdout, _ = run_to_the_end(
        *TINY, "--slaves", "1,3", "--slaves-as", "thread", "--total-workers", "3", "--workers", "0"
    )
    assert [row[:2] for row in rows_of(stdout, TASKS_HEADER)] == [["1", "3"], ["3", "3"]]


@pytest.mark.timeout(90)
def test_ctrl_c_while_the_cluster_idles_stops_every_process_it_started() -> None:
    process = start(*TINY, "--slaves", "3", "--idle-seconds", "60")
    try:
        assert process.stderr is not None
        seen = []
        while not any("slaves registered" in line for line in seen):  # the idle window began
            line = process.stderr.readline()
            assert line, "".join(seen) + process.stderr.read()[-3000:]
            seen.append(line)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        gone(process.pid)
    assert process.returncode == 130


def test_a_count_below_one_is_refused_with_what_to_give() -> None:
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--slaves", "0,10"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "give slave counts of 1 or more" in result.stderr
