"""The chaos harness (benchmarks/chaos.py), each scenario once in its quick form.

Nodes are real processes killed with SIGKILL: slaves every second, the master once mid-system.
The task system's result must equal a serial run's, with no task lost and none delivered twice;
a task that kills its worker fails with WorkerCrashed after 3 attempts, one that oversleeps its
timeout with TaskTimeout; a system that completes early leaves no slave holding a task; a full,
read-only, deleted or damaged state directory is a clear refusal that loses no acknowledged work;
an oversized argument or result fails once, saying so.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

from conftest import descendants, wait_for

HARNESS = Path(__file__).resolve().parent.parent / "benchmarks" / "chaos.py"


def _load_harness():
    # The harness imports its sibling ``procs``, as it does when run from benchmarks/.
    if str(HARNESS.parent) not in sys.path:
        sys.path.append(str(HARNESS.parent))
    spec = importlib.util.spec_from_file_location("taskswarm_chaos", HARNESS)
    module = importlib.util.module_from_spec(spec)
    # In sys.modules (so dataclasses and cloudpickle find it); it is no installed package, so
    # its task classes travel to the master and the workers by value.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


chaos = _load_harness()


@pytest.fixture
def no_leftovers():
    """Every process a scenario starts is gone when it returns."""
    before = set(descendants(os.getpid()))
    yield
    wait_for(lambda: set(descendants(os.getpid())) <= before, timeout=10)


def run_quick(name: str):
    outcome = chaos.run_scenario(name, chaos.Options(quick=True, seed=1234, result_timeout=60))
    details = "\n".join(
        [chaos.table_row(outcome), *outcome.log, outcome.details.get("traceback", "")]
    )
    assert outcome.passed, details
    assert "leaked" not in outcome.details, details
    return outcome


def test_the_reference_matches_what_the_workers_compute():
    chaos.self_check()
    task = chaos.Work(7, 1_000)
    assert task() == (7, chaos.fast_value(7, 1_000))
    reference = chaos.serial_reference(50, 1_000, 8)
    assert reference["counts"] == {i: 1 for i in range(50)}
    assert reference["sum"] == sum(chaos.fast_value(i, 1_000) for i in range(50))
    assert chaos.count_deliveries({0: 1, 1: 3, 3: 1}, 4) == (1, 2)


@pytest.mark.timeout(120)
def test_slave_kill_9_every_second_loses_and_duplicates_nothing(no_leftovers):
    outcome = run_quick("slave-kill")
    assert outcome.kills == 3
    assert outcome.correct and outcome.lost == 0 and outcome.duplicates == 0


@pytest.mark.timeout(120)
def test_master_kill_9_mid_system_resumes_from_its_state_dir(no_leftovers):
    outcome = run_quick("master-kill")
    assert outcome.kills == 1
    assert outcome.correct and outcome.lost == 0 and outcome.duplicates == 0
    assert any("task system" in line for line in outcome.details["restore"])


@pytest.mark.timeout(120)
def test_poison_tasks_fail_alone_while_a_thousand_others_complete(no_leftovers):
    outcome = run_quick("poison")
    assert outcome.correct and outcome.lost == 0 and outcome.duplicates == 0
    assert outcome.details["crash"][0] == "WorkerCrashed"
    assert "3 times" in outcome.details["crash"][1]
    assert outcome.details["sleeper"][0] == "TaskTimeout"
    assert "after 3 attempts" in outcome.note


@pytest.mark.timeout(120)
def test_cancel_leaves_no_slave_holding_a_leftover_task(no_leftovers):
    outcome = run_quick("cancel")
    assert outcome.correct
    assert outcome.details["idle"] < 1.0
    assert not outcome.details["late"]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("scenario", ["disk-full", "read-only", "deleted", "corrupt"])
def test_storage_faults_refuse_clearly_and_lose_no_acknowledged_work(scenario, no_leftovers):
    outcome = run_quick(scenario)
    assert outcome.kills == 1
    assert outcome.correct and outcome.lost == 0 and outcome.duplicates == 0


@pytest.mark.timeout(120)
def test_an_oversized_argument_or_result_fails_once_with_its_size(no_leftovers):
    outcome = run_quick("oversize")
    assert "after 1 attempt(s)" in outcome.note
    assert outcome.correct


def test_a_cluster_that_does_not_start_is_a_failed_row_not_a_crash(monkeypatch, no_leftovers):
    made = []

    def no_master(self):
        made.append(self.dir)
        raise RuntimeError("no master today")

    monkeypatch.setattr(chaos.Cluster, "start_master", no_master)
    outcome = chaos.run_scenario("poison", chaos.Options(quick=True))
    assert not outcome.passed
    assert "FAILED: RuntimeError: no master today" in chaos.table_row(outcome)
    assert chaos.summary([outcome], ["poison"]) == ["poison: 0/1 passed"]
    assert made and not made[0].exists()
