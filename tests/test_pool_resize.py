"""update_pool on a live slave: the pool grows and shrinks mid-run, every result arrives once."""

from __future__ import annotations

import collections
import time

import taskswarm as ts
from conftest import wait_for


class Nap(ts.Task):
    def __init__(self, i: int):
        super().__init__(name=f"nap-{i}")
        self.i = i

    def __call__(self):
        time.sleep(0.005)
        return self.i


def test_update_pool_grows_and_shrinks_mid_run_without_losing_a_result():
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        slave_id = app.status()["slaves"][0]["id"]
        delivered = collections.Counter()
        app.on_task_finished = lambda task, result, error: delivered.update([task.task_id])
        futures = app.push_tasks([Nap(i) for i in range(300)])

        def workers():
            return app.status()["slaves"][0]["workers"]

        wait_for(lambda: sum(f.done() for f in futures) >= 20)
        app.resize(slave_id, 3)
        wait_for(lambda: workers() == 3)
        futures += app.push_tasks([Nap(i) for i in range(300, 600)])
        wait_for(lambda: sum(f.done() for f in futures) >= 350)
        app.resize(slave_id, 1)
        wait_for(lambda: workers() == 1)
        futures += app.push_tasks([Nap(i) for i in range(600, 700)])
        assert [f.result(timeout=60) for f in futures] == list(range(700))
        assert len(delivered) == 700 and set(delivered.values()) == {1}
        assert app.status()["slaves"][0]["done"] == 700


def test_resizing_an_unknown_slave_is_refused(app):
    import pytest

    with pytest.raises(ts.TaskswarmError, match="no slave nope"):
        app.resize("nope", 2)
