"""Porting Concurrent's samples as a new user would: files with several nodes, gather_result
returning a bare value, tasks that all fail, and a task system's own logging."""

from __future__ import annotations

import io
import signal
import textwrap

import pytest

import taskswarm as ts
from conftest import free_port, wait_for
from taskswarm.ops.progress import Meter, ProgressBoard

#: Concurrent's expensive sample kept two ApplicationNode subclasses in one file.
TWO_NODES = textwrap.dedent(
    """
    import taskswarm as ts

    class Echo(ts.Task):
        def __init__(self, text):
            super().__init__(name=f"echo-{text}")
            self.text = text

        def __call__(self):
            return self.text

    class Pair(ts.TaskSystem):
        def __init__(self):
            super().__init__()
            self.seen = []

        def generate_tasks(self, master):
            return [Echo("system-a"), Echo("system-b")]

        def task_finished(self, master, task, result, error):
            self.seen.append(result)

        def is_complete(self, master):
            return len(self.seen) == 2

        def gather_result(self, master):
            return sorted(self.seen), None

    class SystemNode(ts.ApplicationNode):
        def get_task_system(self):
            return Pair()

        def work_finished(self, result, error):
            print("system node:", result, error, flush=True)

    class PlainNode(ts.ApplicationNode):
        def start_processing(self):
            self.push_task(Echo("plain"))

        def task_finished(self, task, result, error):
            print("plain node:", result, flush=True)
    """
)


def run_app(nodes, tmp_path, source: str, *target_and_args: str, name: str = "app.py"):
    (tmp_path / name).write_text(source)
    return nodes.run(
        "run", "--slaves", "1", "--workers", "1", *target_and_args, cwd=tmp_path, timeout=120
    )


def test_a_file_with_two_nodes_runs_neither_and_lists_them(nodes, tmp_path):
    out = run_app(nodes, tmp_path, TWO_NODES, "app.py")
    assert out.returncode != 0
    assert "PlainNode" in out.stderr and "SystemNode" in out.stderr
    assert "taskswarm run app.py:PlainNode" in out.stderr
    assert "node:" not in out.stdout and "Traceback" not in out.stderr


@pytest.mark.parametrize(
    ("node", "printed"),
    [
        ("SystemNode", "system node: ['system-a', 'system-b'] None"),
        ("PlainNode", "plain node: plain"),
    ],
)
def test_app_py_colon_node_runs_the_node_it_names(nodes, tmp_path, node, printed):
    out = run_app(nodes, tmp_path, TWO_NODES, f"app.py:{node}")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [printed]


def test_a_node_name_the_file_does_not_define_is_an_error(nodes, tmp_path):
    out = run_app(nodes, tmp_path, TWO_NODES, "app.py:NoSuchNode")
    assert out.returncode == 1
    assert "no ApplicationNode subclass named 'NoSuchNode'" in out.stderr
    assert "PlainNode, SystemNode" in out.stderr


def test_a_file_that_neither_connects_nor_defines_a_node_exits_non_zero(nodes, tmp_path):
    out = run_app(nodes, tmp_path, "print('hello')\n", "app.py")
    assert out.returncode == 1
    assert "hello" in out.stdout
    assert "nothing ran" in out.stderr and "ApplicationNode" in out.stderr


class Constant(ts.Task):
    def __call__(self):
        return 1.5


class BareGather(ts.TaskSystem):
    """What Concurrent's expensive sample did: gather_result returns the value alone."""

    def __init__(self, gathered):
        super().__init__()
        self.gathered, self.done = gathered, False

    def generate_tasks(self, master):
        return [Constant()]

    def task_finished(self, master, task, result, error):
        self.done = True

    def is_complete(self, master):
        return self.done

    def gather_result(self, master):
        return self.gathered


@pytest.mark.timeout(120)
def test_gather_result_returning_a_bare_value_says_to_return_a_pair(app):
    with pytest.raises(ts.TaskSystemError, match=r"return \(result, None\)") as info:
        app.run_system(BareGather(12.5), timeout=60)
    assert "BareGather.gather_result returned float 12.5" in str(info.value)
    with pytest.raises(ts.TaskSystemError, match=r"return \(\(a, b\), None\)"):
        app.run_system(BareGather((3, 4)), timeout=60)
    assert app.run_system(BareGather((12.5, None)), timeout=60) == 12.5


ALL_FAIL = textwrap.dedent(
    """
    import hashlib

    import taskswarm as ts

    class Md5(ts.Task):
        def __init__(self, number):
            super().__init__(name=f"md5-{number}")
            self.number = number

        def __call__(self):
            return hashlib.md5(str(self.number)).hexdigest()  # Python 2's str: no .encode()

    class Hashes(ts.TaskSystem):
        def __init__(self):
            super().__init__()
            self.finished = 0

        def generate_tasks(self, master):
            return [Md5(n) for n in range(8)]

        def task_finished(self, master, task, result, error):
            self.finished += 1

        def is_complete(self, master):
            return self.finished == 8

        def gather_result(self, master):
            return None, None

    class HashNode(ts.ApplicationNode):
        def get_task_system(self):
            return Hashes()
    """
)


def test_tasks_that_all_fail_show_in_the_progress_with_the_first_traceback(nodes, tmp_path):
    out = run_app(nodes, tmp_path, ALL_FAIL, "app.py")
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    final = [line for line in lines if "8/8 tasks" in line and "done in" in line]
    assert final and "8 failed" in final[-1], out.stderr
    assert "first failure: task 'md5-" in out.stderr
    assert "TypeError: Strings must be encoded before hashing" in out.stderr
    assert "Traceback (most recent call last)" in out.stderr  # the worker's own


def test_a_board_counts_failed_tasks_in_its_lines_and_tells_the_first_failure_once():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=False) as board:
        board.update("s", 1, 4, "squares", failed=1, first_failure="task 'a' failed: boom")
        board.update("s", 4, 4, "squares", failed=3, first_failure="task 'b' failed: later")
        board.finish("s")
    text = stream.getvalue()
    assert text.count("first failure") == 1 and "boom" in text and "later" not in text
    assert "squares: 4/4 tasks (100%), 3 failed, done in" in text
    meter = Meter("m")
    meter.update(2, 2, failed=0)
    assert "failed" not in meter.describe()


LOGGING_SYSTEM = textwrap.dedent(
    """
    import logging

    import taskswarm as ts

    log = logging.getLogger("expensive")

    class Nap(ts.Task):
        def __call__(self):
            return 0

    class Logs(ts.TaskSystem):
        def __init__(self):
            super().__init__()
            self.done = False

        def generate_tasks(self, master):
            log.info("the system made its tasks on the master")
            return [Nap()]

        def task_finished(self, master, task, result, error):
            self.done = True

        def is_complete(self, master):
            return self.done

        def gather_result(self, master):
            log.info("calculated in no time")
            return 0, None

    class LogNode(ts.ApplicationNode):
        def get_task_system(self):
            return Logs()
    """
)


def test_a_task_systems_logging_reaches_the_console_of_an_embedded_run(nodes, tmp_path):
    out = run_app(nodes, tmp_path, LOGGING_SYSTEM, "app.py")
    assert out.returncode == 0, out.stderr
    assert "expensive: the system made its tasks on the master" in out.stderr
    assert "expensive: calculated in no time" in out.stderr


def test_a_task_systems_logging_goes_to_the_log_of_a_master_started_by_hand(
    nodes, key_file, tmp_path
):
    address = f"tcp://127.0.0.1:{free_port()}"
    master = nodes.start("master", "--bind", address, "--key-file", key_file, "--no-dashboard")
    nodes.start("slave", address, "--key-file", key_file, "--workers", "1")
    wait_for_slaves(address, key_file, 1)
    (tmp_path / "app.py").write_text(LOGGING_SYSTEM)
    out = nodes.run(
        "run", "app.py", "--master", address, "--key-file", key_file, cwd=tmp_path, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert "calculated in no time" not in out.stderr  # the run's console is not the master's
    master.send_signal(signal.SIGTERM)
    _, master_log = master.communicate(timeout=30)
    assert "expensive: the system made its tasks on the master" in master_log
    assert "expensive: calculated in no time" in master_log


def wait_for_slaves(address: str, key_file: str, count: int) -> None:
    with ts.connect(address, key_file, connect_timeout=30) as app:
        wait_for(
            lambda: sum(s["state"] == "active" for s in app.status()["slaves"]) >= count,
            timeout=30,
        )


def test_a_node_that_sends_nothing_exits_non_zero(nodes, tmp_path):
    source = textwrap.dedent(
        """
        import taskswarm as ts

        class CamelCaseNode(ts.ApplicationNode):
            def getTaskSystem(self):  # not a hook: nothing calls it
                raise AssertionError("never called")
        """
    )
    out = run_app(nodes, tmp_path, source, "app.py")
    assert out.returncode == 1
    assert "nothing ran: CamelCaseNode.get_task_system returned None" in out.stderr


def test_a_terminal_board_shows_failed_tasks_and_a_cancelled_system():
    stream = io.StringIO()
    with ProgressBoard(stream, interactive=True) as board:
        board.update("s", 2, 5, "squares", failed=2, first_failure="task 'a' failed: [boom]")
        assert board.cancel("s").cancelled
        board.finish("s")  # the outcome that follows a cancellation changes nothing
    text = stream.getvalue()
    assert "2 failed" in text and "cancelled" in text and "[boom]" in text
