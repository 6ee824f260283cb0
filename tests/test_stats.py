"""Named measures: their arithmetic against a model, their Prometheus text through the
Prometheus project's own parser, and what a real master records while it runs tasks."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

import taskswarm as ts
from taskswarm.stats import Stats, prometheus_text

VALUES = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
LABELS = st.dictionaries(
    st.sampled_from(["slave", "reason"]), st.text(min_size=0, max_size=8), max_size=2
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), VALUES, st.integers(1, 5)), max_size=40))
def test_each_measure_keeps_count_sum_min_max_and_average_of_what_was_added(adds):
    stats = Stats()
    model: dict[str, list[float]] = {}
    for name, value, n in adds:
        stats.add(name, value, n)
        model.setdefault(name, []).extend([value] * n)

    rows = {row["name"]: row for row in stats.snapshot()}

    assert set(rows) == set(model)
    for name, values in model.items():
        row = rows[name]
        assert row["count"] == len(values)
        assert row["sum"] == pytest.approx(math.fsum(values), rel=1e-9, abs=1e-6)
        assert row["min"] == min(values) and row["max"] == max(values)
        assert row["avg"] == pytest.approx(math.fsum(values) / len(values), rel=1e-9, abs=1e-6)


def test_a_batch_folded_in_at_once_keeps_its_own_extremes():
    stats = Stats()
    stats.add("task_seconds", 0.02, 3, low=0.01, high=0.04, slave="s1")
    [row] = stats.snapshot()
    assert row == {
        "name": "task_seconds",
        "labels": {"slave": "s1"},
        "count": 3,
        "sum": pytest.approx(0.06),
        "avg": pytest.approx(0.02),
        "min": 0.01,
        "max": 0.04,
    }


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["wait", "send"]), VALUES, LABELS), max_size=20))
def test_the_prometheus_text_parses_and_says_what_was_measured(adds):
    stats = Stats()
    for name, value, labels in adds:
        stats.add(name, value, **labels)
    snapshot = stats.snapshot()

    families = {f.name: f for f in text_string_to_metric_families(prometheus_text(snapshot))}

    for row in snapshot:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in families.values()
            for s in family.samples
        }
        labels = tuple(sorted(row["labels"].items()))
        full = f"taskswarm_{row['name']}"
        assert samples[(f"{full}_count", labels)] == row["count"]
        assert samples[(f"{full}_sum", labels)] == pytest.approx(row["sum"])
        assert samples[(f"{full}_min", labels)] == row["min"]
        assert samples[(f"{full}_max", labels)] == row["max"]


@pytest.mark.timeout(60)
def test_a_master_times_its_decisions_queue_waits_sends_and_each_slaves_tasks(app):
    n = 200
    futures = app.push_tasks(ts.FunctionTask(abs, -i) for i in range(n))
    assert sorted(f.result(timeout=30) for f in futures) == list(range(n))

    status = app.status()
    rows = status["stats"]
    by_name: dict[str, list[dict]] = {}
    for row in rows:
        by_name.setdefault(row["name"], []).append(row)

    assert by_name["dispatch_seconds"][0]["count"] >= n
    assert by_name["queue_wait_seconds"][0]["count"] >= n
    assert by_name["send_seconds"][0]["count"] >= 1
    per_slave = {row["labels"]["slave"]: row["count"] for row in by_name["task_seconds"]}
    assert set(per_slave) == {slave["id"] for slave in status["slaves"]}
    assert sum(per_slave.values()) >= n
    for row in rows:
        assert 0 <= row["min"] <= row["avg"] <= row["max"]
    assert list(text_string_to_metric_families(prometheus_text(rows)))


def test_a_slaves_reported_measures_keep_only_well_formed_rows_labelled_with_it():
    from taskswarm.master.node import _measures

    good = {"name": "slave_send_seconds", "labels": {}, "count": 2, "sum": 0.5, "avg": 0.25,
            "min": 0.1, "max": 0.4}  # fmt: skip
    rows = _measures(
        [good, {"name": 3}, "junk", {**good, "count": "many"}, {**good, "max": True}], "s1"
    )
    assert rows == [{**good, "labels": {"slave": "s1"}}]
    assert _measures("not a list", "s1") == []
