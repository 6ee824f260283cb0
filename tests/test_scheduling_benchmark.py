"""benchmarks/scheduling.py runs end to end at a tiny size and leaves no process behind (its
clusters, their workers, the CPU hog), also when interrupted; no timing is checked."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import descendants, proc_stat, wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "scheduling.py"
TINY = ["--tasks", "40", "--repeats", "1", "--slaves", "10,100", "--sim-decisions", "2000"]
TINY += ["--sim-repeats", "1", "--stealing", "on,off"]


def session_processes(session: int) -> list[int]:
    """Every live process the script started: those in its session (the script runs in a
    session of its own, and so does the CPU hog it starts), and those below it (a
    LocalCluster's nodes run in sessions of their own, so Ctrl-C at a terminal reaches only
    the program, which stops them), remembered once seen (with their start time, so a reused
    pid is not taken for one): a node whose parent died is no longer below it, and must be
    gone all the same."""
    seen = _SEEN.setdefault(session, set())
    below = set(descendants(session))
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = proc_stat(int(entry.name))
            if fields and (int(fields[3]) == session or int(entry.name) in below):
                seen.add((int(entry.name), fields[19]))
    return sorted(pid for pid, started in seen if (proc_stat(pid) or [None] * 20)[19] == started)


_SEEN: dict[int, set[tuple[int, str]]] = {}


def gone(session: int) -> None:
    """Wait until nothing of ``session`` is left; kill what is (and fail)."""
    try:
        wait_for(lambda: not session_processes(session), timeout=15)
    finally:
        for pid in session_processes(session):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def finish(process: subprocess.Popen, timeout: float) -> tuple[str, str]:
    """Its output once it has ended successfully; whatever happens, nothing of it is left."""
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        gone(process.pid)
    assert process.returncode == 0, stderr[-3000:]
    return stdout, stderr


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *args],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pins two slaves to two CPUs")
@pytest.mark.timeout(150)
def test_a_tiny_run_prints_both_tables_and_leaves_nothing_running(tmp_path: Path) -> None:
    report = tmp_path / "scheduling.json"
    process = start(*TINY, "--strategies", "load,round-robin", "--json", str(report))
    stdout, _ = finish(process, timeout=120)
    assert "| strategy | stealing | makespan s | lower bound s | ratio |" in stdout
    assert "| strategy | 10 slaves | 100 slaves | drop 10 → 100 |" in stdout
    for row in ("| load | on |", "| load | off |", "| round-robin | on |", "| round-robin | off |"):
        assert row in stdout
    figures = json.loads(report.read_text())
    assert len(figures["heterogeneous"]["runs"]) == 4
    assert all(sum(run["tasks"].values()) == 40 for run in figures["heterogeneous"]["runs"])
    assert {row["strategy"] for row in figures["simulated"]["rows"]} == {"load", "round-robin"}
    assert not figures["problems"]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pins two slaves to two CPUs")
@pytest.mark.timeout(90)
def test_ctrl_c_mid_run_stops_every_process_it_started() -> None:
    process = start(*TINY, "--tasks", "400", "--strategies", "load", "--stealing", "on")
    try:
        assert process.stderr is not None
        line = process.stderr.readline()  # "calibrated: ...": the hog and a cluster follow
        assert line.startswith("calibrated"), line + process.stderr.read()[-3000:]
        # The script, the hog, a master, slaves A and B with their forkservers, resource
        # trackers and 1 + 3 workers: 13 once the first cluster is up; a second later its
        # ~4 s of tasks are running.
        wait_for(lambda: len(session_processes(process.pid)) >= 12, timeout=30)
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal sends
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        gone(process.pid)
    assert process.returncode == 130
