"""benchmarks/floor.py runs end to end at a tiny size and leaves no process behind; no timing
is checked."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import wait_for

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "floor.py"


def floor_processes() -> list[int]:
    """Every live process running floor.py (its forked nodes and workers share its command line)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if str(SCRIPT).encode() in command and state != "Z":
            pids.append(int(entry.name))
    return pids


@pytest.mark.timeout(120)
def test_a_tiny_run_prints_every_table_and_leaves_nothing_running() -> None:
    command = [sys.executable, str(SCRIPT), "--runs", "1", "--tasks", "10"]
    command += ["--round-trips", "20", "--cpu-calls", "4"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = ("bare chain, HMAC per hop", "MAC end-to-end", "MAC none", "| mp.Pool |", "cpu:")
    for line in (*lines, "bare pipe exchange, two processes"):
        assert line in result.stdout
    wait_for(lambda: not floor_processes(), timeout=10)
