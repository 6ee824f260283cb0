"""The seed's callback style: an ApplicationNode subclass, run directly and by `taskswarm run`."""

from __future__ import annotations

import taskswarm as ts
from test_contract import Square, SumOfSquares


class SquaresApp(ts.ApplicationNode):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.plain = {}
        self.accepted = []
        self.outcome = None

    def get_task_system(self):
        return SumOfSquares(50)

    def start_processing(self):
        self.push_tasks([Square(i) for i in range(10)])

    def push_task_response(self, task_ids):
        self.accepted.extend(task_ids)

    def task_finished(self, task, result, error):
        self.plain[task.x] = result

    def work_finished(self, result, error):
        self.outcome = (result, error)


def test_an_application_node_sends_a_system_and_plain_tasks_and_hears_back(cluster):
    node = SquaresApp(master=cluster.address, key_file=cluster.key_file)
    assert node.run(timeout=60) == sum(i * i for i in range(50))
    assert node.outcome == (sum(i * i for i in range(50)), None)
    assert node.plain == {i: i * i for i in range(10)}
    assert len(node.accepted) == 10


def test_taskswarm_run_runs_the_application_node_an_app_file_defines(nodes, tmp_path):
    app = tmp_path / "node_app.py"
    app.write_text(
        "import taskswarm as ts\n"
        "class Cube(ts.Task):\n"
        "    def __init__(self, x):\n"
        "        super().__init__()\n"
        "        self.x = x\n"
        "    def __call__(self):\n"
        "        return self.x ** 3\n"
        "class CubesApp(ts.ApplicationNode):\n"
        "    total = 0\n"
        "    def start_processing(self):\n"
        "        self.push_tasks([Cube(i) for i in range(5)])\n"
        "    def task_finished(self, task, result, error):\n"
        "        CubesApp.total += result\n"
        "        print('cube', task.x, result, flush=True)\n"
    )
    out = nodes.run("run", str(app), "--slaves", "1", "--workers", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    assert sorted(line for line in out.stdout.splitlines() if line.startswith("cube")) == [
        f"cube {i} {i**3}" for i in range(5)
    ]


def test_an_app_file_that_runs_its_own_node_is_not_run_twice(nodes, tmp_path):
    app = tmp_path / "self_running_app.py"
    app.write_text(
        "import taskswarm as ts\n"
        "class OnceApp(ts.ApplicationNode):\n"
        "    def start_processing(self):\n"
        "        print('started', flush=True)\n"
        "        self.push_task(ts.FunctionTask(abs, -1))\n"
        "if __name__ == '__main__':\n"
        "    OnceApp().run()\n"
    )
    out = nodes.run("run", str(app), "--slaves", "1", "--workers", "1", timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("started") == 1
