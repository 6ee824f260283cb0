"""The master's short memory for the dashboard: the task stream and the load's history.

Both are fixed-size rings, so however much work a master has done, they hold the same amount;
the page asks the stream for what it has not seen yet, by number, whatever the slaves' clocks
say. In-process: the rings are plain objects, fed as the master's core feeds them.
"""

from __future__ import annotations

from taskswarm.master.timeline import History, TaskStream
from taskswarm.scheduling.records import SlaveRecord


def ran(stream: TaskStream, count: int, slave: str = "s1", worker: int | None = 7) -> None:
    for i in range(count):
        stream.add((stream.number(), 100.0 + i, 100.5 + i, slave, worker, "work", None, "ok"))


def test_the_stream_keeps_the_newest_tasks_up_to_its_size():
    stream = TaskStream(size=5)

    ran(stream, 12)

    answer = stream.recent()
    assert answer["kept"] == 5 and answer["last"] == 12
    assert [task[0] for task in answer["tasks"]] == [107.0, 108.0, 109.0, 110.0, 111.0]
    assert answer["tasks"][0] == [107.0, 107.5, "s1/7", "work", None, "ok"]


def test_the_stream_gives_only_what_came_after_the_last_number_a_page_has():
    stream = TaskStream(size=100)
    ran(stream, 3)
    first = stream.recent()

    ran(stream, 2, slave="s2", worker=None)  # a task manager that names no worker
    second = stream.recent(after=first["last"])

    assert len(first["tasks"]) == 3 and first["last"] == 3
    assert [task[2] for task in second["tasks"]] == ["s2", "s2"] and second["last"] == 5
    assert stream.recent(after=5)["tasks"] == []
    assert len(stream.recent(after=0, limit=2)["tasks"]) == 2  # the newest two


def test_a_page_far_behind_gets_at_most_what_the_ring_holds():
    stream = TaskStream(size=4)
    ran(stream, 3)
    ran(stream, 10)

    assert len(stream.recent(after=1)["tasks"]) == 4


def test_the_history_keeps_its_last_samples_and_each_slaves_cpu_and_memory():
    history = History(size=3)
    slave = SlaveRecord("s1", b"s1")
    slave.in_flight = {"a", "b"}

    for step in range(5):
        slave.cpu, slave.rss = 10.0 * step, 1000 * step
        history.finished += 4
        history.sample([slave], total_tasks=5)

    series = history.series()
    assert series["kept"] == len(series["time"]) == 3
    assert series["queued"] == [3, 3, 3] and series["running"] == [2, 2, 2]
    assert series["slaves"]["s1"] == {"cpu": [20.0, 30.0, 40.0], "rss": [2000, 3000, 4000]}
    assert all(rate >= 0 for rate in series["rate"])


def test_a_slave_that_came_late_has_no_measures_before_it_came():
    history = History()
    first = SlaveRecord("s1", b"s1", cpu=5.0, rss=10)
    history.sample([first], 0)
    history.sample([first, SlaveRecord("s2", b"s2", cpu=1.0, rss=20)], 0)

    slaves = history.series()["slaves"]

    assert slaves["s2"] == {"cpu": [None, 1.0], "rss": [None, 20]}
    assert slaves["s1"]["cpu"] == [5.0, 5.0]
