"""benchmarks/peers.py runs end to end: a smoke run on taskswarm and mp.Pool, no timings checked;
each framework runs in a driver process of its own.

Only the standard library's peer is used, so the test needs nothing from the ``[bench]`` extra.
"""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "peers.py"
FRAMEWORKS = ["taskswarm-push", "mp.Pool"]
WORKLOADS = ["noop", "noop-submit", "latency", "bigresult", "fanout"]


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
    for framework in FRAMEWORKS:
        assert rows[("noop-submit", framework)]["median"]["tasks_per_s"] > 0
        assert rows[("bigresult", framework)]["median"]["mib_per_s"] > 0
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


def load_peers() -> ModuleType:
    """benchmarks/peers.py as a module (it imports ``procs`` from its own folder)."""
    name = "peers_under_test"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look themselves up there
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def test_bigresult_results_are_checked_for_length_and_exactly_once() -> None:
    peers = load_peers()
    results = [peers.big_result(i) for i in range(3)]
    assert all(len(blob) == peers.MIB for blob in results)
    assert results[0][:-8] == results[2][:-8]  # the random bytes are made once per process
    peers.check_big_results(results[::-1], 3)  # any order
    with pytest.raises(peers.WrongResult):
        peers.check_big_results([results[0], results[0], results[2]], 3)  # 1 twice, 0 missing
    with pytest.raises(peers.WrongResult):
        peers.check_big_results([results[0], results[1][:-1], results[2]], 3)  # one short
    with pytest.raises(peers.WrongResult):
        peers.check_big_results(results[:2], 3)  # one missing
