"""Helpers the scheduler's unit tests share: schedulers by name, slave and task records, and
what the master does around the scheduler (one dispatch turn, one result)."""

from __future__ import annotations

import itertools

from taskswarm.scheduling.pull import PullScheduler
from taskswarm.scheduling.push import PushScheduler
from taskswarm.scheduling.records import NodeState, SlaveRecord, TaskRecord
from taskswarm.scheduling.scheduler import BaseScheduler
from taskswarm.scheduling.strategies import (
    LoadStrategy,
    RandomStrategy,
    RoundRobinStrategy,
    ThroughputStrategy,
    TwoChoicesStrategy,
)

SCHEDULERS = {"push": PushScheduler, "pull": PullScheduler}
STRATEGIES = {
    "load": LoadStrategy,
    "round-robin": RoundRobinStrategy,
    "random": RandomStrategy,
    "two-choices": TwoChoicesStrategy,
    "throughput": ThroughputStrategy,
}

_ids = itertools.count()


def make_scheduler(kind: str = "push", strategy: str = "load", prefetch: int = 2) -> BaseScheduler:
    scheduler = SCHEDULERS[kind](STRATEGIES[strategy](), prefetch)
    scheduler.setup(None)
    if hasattr(scheduler.strategy, "random"):
        scheduler.strategy.random.seed(0)  # hypothesis replays each example exactly
    return scheduler


def make_slave(
    slave_id: str,
    workers: int,
    credit: int = 0,
    state: str = NodeState.ACTIVE,
    resources: dict[str, float] | None = None,
    want: int = 0,
    pace: float = 0.0,
) -> SlaveRecord:
    return SlaveRecord(
        slave_id,
        slave_id.encode(),
        workers=workers,
        credit=credit,
        state=state,
        resources=resources,
        want=want,
        pace=pace,
    )


def make_tasks(
    n: int,
    resources: dict[str, float] | None = None,
    priority: int = 0,
    system_id: str | None = None,
) -> list[TaskRecord]:
    return [
        TaskRecord(
            f"t{next(_ids)}",
            b"payload",
            "client",
            system_id,
            priority=priority,
            resources=resources,
        )
        for _ in range(n)
    ]


def dispatch(scheduler: BaseScheduler) -> dict[str, list[str]]:
    """What the master sends after one turn: task ids per slave id."""
    scheduler.dispatch()
    return {
        slave.slave_id: [task.task_id for task in batch]
        for slave, batch in scheduler.take_outboxes()
    }


def finish(
    scheduler: BaseScheduler, slave_id: str | None, task_id: str, error: object = None
) -> TaskRecord | None:
    """What the master does with one result from a slave."""
    record = scheduler.result_arrived(slave_id, task_id)
    if record is not None:
        scheduler.task_finished(record, None, error)
    return record
