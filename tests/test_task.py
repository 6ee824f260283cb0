"""Tasks and their outcomes: what a worker sends back, and what the owner's node makes of it.

``run_task_payload`` is the whole of a worker's job (unpickle, call, clean up, pickle the outcome)
and never raises; ``load_outcome`` turns the outcome back into ``(result, error)``. A failed task
comes back as its own exception with the worker's traceback as ``__cause__``, or as a
``TaskError`` carrying the type name and traceback when the exception cannot make the trip.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
from pathlib import Path

import cloudpickle
import pytest

import taskswarm as ts
from taskswarm.errors import TaskError, TaskTimeout, WorkerCrashed
from taskswarm.task import FunctionTask, RemoteTraceback, Task, load_outcome, run_task_payload


def run(task: object, name: str = "task") -> tuple[object, BaseException | None]:
    """What a worker and then the owner's node do with a task, in one process."""
    ok, data = run_task_payload(cloudpickle.dumps(task))
    assert isinstance(ok, bool)
    assert isinstance(data, bytes)
    return load_outcome(ok, data, name)


def explode_with_value_error() -> None:
    raise ValueError("the value was wrong")


class Explodes(Task):
    def __call__(self):
        explode_with_value_error()


class LockedError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_locked_error() -> None:
    raise LockedError("holding a lock")


class RaisesUnpicklable(Task):
    def __call__(self):
        raise_locked_error()


class ReturnsALock(Task):
    def __call__(self):
        return threading.Lock()


class NeedsTwoArguments(Exception):
    """Pickles fine, but cannot be rebuilt: pickle calls it with ``args``, which holds one."""

    def __init__(self, what: str, why: str) -> None:
        super().__init__(f"{what}: {why}")


def raise_needs_two_arguments() -> None:
    raise NeedsTwoArguments("this", "that")


class RaisesUnrebuildable(Task):
    def __call__(self):
        raise_needs_two_arguments()


class Journals(Task):
    """Writes what runs to a file: the task that runs is a copy, so its attributes do not tell."""

    def __init__(self, path: Path, fail: bool) -> None:
        super().__init__()
        self.path, self.fail = path, fail

    def __call__(self):
        with open(self.path, "a") as journal:
            journal.write("call\n")
        if self.fail:
            raise RuntimeError("call failed")
        return "called"

    def clean_up(self) -> None:
        with open(self.path, "a") as journal:
            journal.write("clean_up\n")


class Doubles(Task):
    def __init__(self, x: int) -> None:
        super().__init__(name=f"double-{x}")
        self.x = x

    def __call__(self):
        return 2 * self.x


# -- results --------------------------------------------------------------------------------------


def test_a_task_result_comes_back_as_it_was_returned():
    assert run(Doubles(21)) == (42, None)


def test_a_function_task_passes_its_positional_and_keyword_arguments():
    task = FunctionTask(int, "ff", base=16)

    assert run(task) == (255, None)
    assert task.name == "int"


def test_a_function_task_runs_a_closure_defined_anywhere():
    offset = 10

    assert run(FunctionTask(lambda x, y=0: x + y + offset, 1, y=2)) == (13, None)


def test_a_result_that_cannot_be_pickled_comes_back_as_the_pickling_error_naming_the_task():
    task = ReturnsALock(name="lock-maker")

    result, error = run(task, task.name)

    assert result is None
    assert type(error) is TypeError  # its own type, as concurrent.futures delivers it
    assert "cannot pickle" in str(error)
    assert any("pickling the result of task 'lock-maker'" in n for n in error.__notes__)


# -- errors --------------------------------------------------------------------------------------


def test_a_task_that_raises_comes_back_as_the_same_exception_with_the_remote_traceback_as_cause():
    result, error = run(Explodes())

    assert result is None
    assert type(error) is ValueError
    assert str(error) == "the value was wrong"
    assert isinstance(error.__cause__, RemoteTraceback)
    remote = str(error.__cause__)
    assert "explode_with_value_error" in remote
    assert "ValueError: the value was wrong" in remote
    assert "Traceback (most recent call last)" in remote


def test_an_unpicklable_exception_comes_back_as_a_task_error_with_its_type_and_traceback():
    result, error = run(RaisesUnpicklable())

    assert result is None
    assert type(error) is TaskError
    assert error.type_name == "LockedError"
    assert "LockedError" in str(error)
    assert "holding a lock" in str(error)
    assert "raise_locked_error" in error.remote_traceback
    assert isinstance(error.__cause__, RemoteTraceback)
    assert "raise_locked_error" in str(error.__cause__)


def check_unrebuildable_exception_comes_back_as_a_task_error() -> None:
    result, error = run(RaisesUnrebuildable())

    assert result is None
    assert isinstance(error, TaskError)
    assert error.type_name == "NeedsTwoArguments"
    assert "raise_needs_two_arguments" in error.remote_traceback


def test_an_unrebuildable_exception_comes_back_as_a_task_error_with_its_type_and_traceback():
    # In a fresh process: importing dask's distributed (as the engine tests do) teaches pickle
    # to rebuild any exception, and this is about a worker where nothing has.
    code = "import test_task; test_task.check_unrebuildable_exception_comes_back_as_a_task_error()"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).parent, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_a_task_that_exits_fails_with_system_exit_instead_of_ending_the_worker():
    result, error = run(FunctionTask(sys.exit, 3))

    assert result is None
    assert type(error) is SystemExit
    assert error.code == 3


def test_a_task_without_call_fails_with_not_implemented_error():
    result, error = run(Task(name="empty"))

    assert result is None
    assert isinstance(error, NotImplementedError)
    assert "__call__" in str(error)


@pytest.mark.parametrize(
    "payload",
    [b"not a pickle", b"", b"cno_such_module_for_taskswarm_tests\nThing\n.", pickle.dumps(5)],
    ids=["garbage", "empty", "missing-module", "not-a-task"],
)
def test_a_payload_that_cannot_be_run_comes_back_as_an_error_not_a_crash(payload):
    ok, data = run_task_payload(payload)

    assert ok is False
    result, error = load_outcome(ok, data, "broken")
    assert result is None
    assert isinstance(error, BaseException)
    assert isinstance(error.__cause__, RemoteTraceback)


def test_an_outcome_that_cannot_be_unpickled_comes_back_as_a_task_error_naming_the_task():
    for ok in (True, False):
        result, error = load_outcome(ok, b"not a pickle", "lost-in-transit")

        assert result is None
        assert isinstance(error, TaskError)
        assert "lost-in-transit" in str(error)


def test_a_failure_outcome_that_is_not_an_exception_becomes_a_task_error():
    result, error = load_outcome(False, cloudpickle.dumps("just a string"), "odd")

    assert result is None
    assert isinstance(error, TaskError)
    assert "odd" in str(error)


# -- the task's life cycle -----------------------------------------------------------------------


@pytest.mark.parametrize("fail", [False, True], ids=["returns", "raises"])
def test_clean_up_runs_after_call_whether_it_returned_or_raised(tmp_path, fail):
    journal = tmp_path / "journal"

    result, error = run(Journals(journal, fail))

    assert journal.read_text() == "call\nclean_up\n"
    if fail:
        assert (result, type(error)) == (None, RuntimeError)
    else:
        assert (result, error) == ("called", None)


def test_every_task_gets_a_unique_task_id():
    tasks = [Doubles(i) for i in range(1000)] + [FunctionTask(abs, -1) for _ in range(1000)]

    ids = [task.task_id for task in tasks]
    assert len(set(ids)) == len(ids)
    assert all(isinstance(task_id, str) and task_id for task_id in ids)


def test_a_task_keeps_its_identity_and_owner_fields_across_pickling():
    task = Doubles(3)
    task.system_id, task.client_id, task.slave_id = "system", "client", "slave"

    copy = cloudpickle.loads(cloudpickle.dumps(task))

    assert (copy.task_id, copy.name, copy.system_id, copy.client_id, copy.slave_id) == (
        task.task_id,
        "double-3",
        "system",
        "client",
        "slave",
    )


def test_a_task_is_named_after_its_class_unless_given_a_name():
    assert Task(name=None).name == "Task"
    assert Explodes().name == "Explodes"
    assert Explodes(name="boom").name == "boom"


def test_the_reserved_reliability_fields_have_harmless_defaults():
    assert Task.timeout is None
    assert Task.max_retries == 0
    assert ts.Task is Task


@pytest.mark.parametrize("cls", [TaskError, TaskTimeout, WorkerCrashed])
def test_a_task_error_survives_pickling_with_its_fields(cls):
    error = cls("task t1 failed", "KeyError", 'Traceback...\nKeyError: "x"')

    for dumps, loads in ((pickle.dumps, pickle.loads), (cloudpickle.dumps, cloudpickle.loads)):
        copy = loads(dumps(error))

        assert type(copy) is cls
        assert str(copy) == "task t1 failed"
        assert copy.type_name == "KeyError"
        assert copy.remote_traceback == 'Traceback...\nKeyError: "x"'


def test_a_remote_traceback_reads_as_the_traceback_text():
    remote = RemoteTraceback("Traceback (most recent call last):\n  ...")

    assert str(remote) == "Traceback (most recent call last):\n  ..."
    assert remote.tb == str(remote)
