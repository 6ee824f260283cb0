"""benchmarks/peers.py runs end to end: a smoke run on taskswarm and mp.Pool, no timings checked;
each framework runs in a driver process of its own.

Only the standard library's peer is used, so the test needs nothing from the ``[bench]`` extra.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
FRAMEWORKS = ["taskswarm-push", "mp.Pool"]
WORKLOADS = ["noop", "latency", "fanout"]


def running(pid: int) -> bool:
    """The process exists and is not a zombie (Linux /proc; elsewhere, assumed gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


@pytest.mark.timeout(180)
def test_a_quick_run_measures_every_workload_on_taskswarm_and_mp_pool(tmp_path: Path) -> None:
    report_path = tmp_path / "peers.json"
    command = [
        sys.executable,
        str(SCRIPT),
        "--quick",
        "--repeats",
        "1",
        "--frameworks",
        ",".join(FRAMEWORKS),
        "--workloads",
        ",".join(WORKLOADS),
        "--json",
        str(report_path),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # the script shuts every framework down on SIGTERM
        try:
            out, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
        pytest.fail(f"peers.py did not finish within 120 s\n{err[-3000:]}")
    assert process.returncode == 0, err[-3000:]

    report = json.loads(report_path.read_text())
    rows = {(row["workload"], row["framework"]): row for row in report["results"]}
    assert set(rows) == {(w, f) for w in WORKLOADS for f in FRAMEWORKS}
    for (workload, framework), row in rows.items():
        assert row["status"] == "ok", (workload, framework, row["status"])
        assert len(row["runs"]) == 1
    assert rows[("noop", "taskswarm-push")]["median"]["tasks_per_s"] > 0
    assert rows[("latency", "mp.Pool")]["median"]["p99_ms"] > 0
    assert rows[("fanout", "taskswarm-push")]["median"]["tasks_per_s"] > 0
    assert set(report["frameworks"]) == set(FRAMEWORKS)
    # Each framework's client ran in a driver process of its own, not in the orchestrating one,
    # and no driver outlived the run.
    orchestrator = report["environment"]["orchestrator_pid"]
    drivers = [pid for fw in report["frameworks"].values() for pid in fw["driver_pids"]]
    assert len(drivers) == len(FRAMEWORKS), report["frameworks"]
    assert orchestrator not in drivers and len(set(drivers)) == len(drivers)
    assert not [pid for pid in drivers if running(pid)]
    for key in ("python", "platform", "cpu_count", "date"):
        assert report["environment"][key]
    # The markdown tables name every workload and framework.
    for name in WORKLOADS + FRAMEWORKS:
        assert name in out
