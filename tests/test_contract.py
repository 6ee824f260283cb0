"""The public contract of DESIGN.md, run as written there."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import taskswarm as ts


class Square(ts.Task):  # ts.Task: name, task_id (unique str), system_id,
    def __init__(self, x):  #   client_id, slave_id; __call__, clean_up, finished
        super().__init__(name=f"square-{x}")
        self.x = x

    def __call__(self):  # runs in a worker process on some slave
        return self.x * self.x


class SumOfSquares(ts.TaskSystem):  # ts.TaskSystem implements taskswarm.api.ITaskSystem
    def __init__(self, n):
        super().__init__()  # sets system_id (a uuid)
        self.n, self.total, self.seen = n, 0, 0

    def init_system(self, master):
        pass

    def generate_tasks(self, master):  # initial tasks
        return [Square(i) for i in range(self.n)]

    def task_finished(self, master, task, result, error):
        self.total += result
        self.seen += 1  # may call master.push_task(t) / master.push_tasks(ts)

    def is_complete(self, master):
        return self.seen == self.n

    def gather_result(self, master):
        return (self.total, None)  # (result, error) as in the seed


def test_the_design_example_runs_as_written():
    with ts.LocalCluster(slaves=2, workers=1) as cluster:  # embedded default: master + slaves are
        with cluster.connect() as app:  # separate OS processes on loopback
            assert app.run_system(SumOfSquares(100)) == 328350  # blocks; raises if error is set
            fut = app.submit(Square(3))  # concurrent.futures.Future
            assert fut.result() == 9
            assert app.submit(pow, 2, 10).result() == 1024  # plain callables too
            with app.executor() as ex:  # a concurrent.futures.Executor
                assert list(ex.map(abs, [-1, -2])) == [1, 2]
        assert cluster.dashboard_link is None  # a dashboard only when asked: dashboard=True


def test_a_detached_system_result_is_fetched_later_from_another_process(cluster):
    app = ts.connect(cluster.address, key_file=cluster.key_file)
    handle = app.submit_system(SumOfSquares(200))  # returns at once; lives on the master
    system_id = handle.system_id
    app.close()  # the application may exit now
    script = textwrap.dedent(
        f"""
        import taskswarm as ts
        app = ts.connect({cluster.address!r}, key_file={cluster.key_file!r})
        print(app.system_result({system_id!r}, timeout=60))
        app.close()
        """
    )
    # The system class lives in this test module: the other process must be able to import it.
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=str(__import__("pathlib").Path(__file__).parent),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(sum(i * i for i in range(200)))


def test_system_result_for_an_unknown_id_says_so(app):
    import pytest

    with pytest.raises(ts.UnknownTaskSystem, match="no task system with id nope"):
        app.system_result("nope", timeout=10)
