"""benchmarks/soak.py runs end to end at a tiny size, prints its table and the detached-result
check, and leaves no process behind; no figure is checked but its own pass line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from test_scheduling_benchmark import finish

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "soak.py"


@pytest.mark.timeout(150)
def test_a_tiny_soak_prints_its_table_and_the_detached_result_check() -> None:
    process = subprocess.Popen(
        [sys.executable, str(SCRIPT), "--sessions", "30", "--systems", "3", "--mib", "0.1"]
        + ["--ttl", "2", "--settle", "0.5", "--max-rss-growth-mib", "1000"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # everything it starts stays in this session: `finish` checks it
    )
    stdout, _ = finish(process, timeout=120)
    assert "| phase | done | elapsed s |" in stdout
    assert "| settled | 33 |" in stdout
    assert "detached result fetched" in stdout and ": ok" in stdout
    assert "UnknownTaskSystem" in stdout and "expired" in stdout
    assert "PASS" in stdout
