"""What distribution buys: many tasks of a known cost, timed on the cluster against one process.

::

    taskswarm run examples/expensive.py
    taskswarm run examples/expensive.py --count 64 --duration 0.5
    python examples/expensive.py --how sleep --count 100 --duration 0.2 --workers 10

Every task (:class:`ExpensiveTask`) costs the same, ``--duration`` seconds, spent one of two
ways: ``busy`` burns that much CPU time of its worker (so workers beyond the cores gain
nothing, as with real number crunching), ``sleep`` waits that long (like a task that waits on a
disk or a web service, where workers beyond the cores still help). A single process would need
exactly ``count * duration`` seconds for them: the *ideal serial time*. The sample times the
cluster, and reports the speedup over that ideal, the efficiency against the best a cluster of
this many workers could do (``ceil(count / workers) * duration``), and the improvement: how much
less time than serial it took, in percent. What is missing from a perfect score is the
framework's overhead: sending, scheduling, collecting.

* **task system** (the default): :class:`ExpensiveSystem` runs on the master, sends every task
  and collects what each one measured.
* **plain tasks** (``--plain``): the application pushes the tasks and waits on their futures.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import taskswarm as ts
from _common import (
    add_run_options,
    aligned,
    on_cluster,
    positive_float,
    positive_int,
    run_plain_tasks,
    run_system,
    sample_parser,
    timing_rows,
)
from taskswarm.ops.progress import ProgressCallback

__all__ = [
    "HOW",
    "ExpensiveSystem",
    "ExpensiveTask",
    "Timing",
    "TaskRun",
    "build_parser",
    "main",
    "run_plain",
    "run_tasks_system",
]

#: How a task spends its time: CPU time of its worker, or waiting.
HOW = ("busy", "sleep")


@dataclass(frozen=True)
class TaskRun:
    """What a worker measured of one task: where it ran and how long it took (wall clock)."""

    index: int
    host: str
    pid: int
    seconds: float


def burn(seconds: float) -> None:
    """Use ``seconds`` of this thread's CPU time.

    CPU time, not wall-clock time: on a machine with more busy workers than cores, each task
    then takes longer, exactly as real computation would, and the speedup tells the truth.
    """
    deadline = time.thread_time() + seconds
    x = 1.0
    while time.thread_time() < deadline:
        for _ in range(2000):  # some arithmetic between clock reads, which are system calls
            x = x * 1.000001 + 1e-9
    if x < 0:  # never true; keeps the loop from being a pure clock poll
        raise AssertionError


class ExpensiveTask(ts.Task):
    """A task of a known cost: ``seconds`` of CPU (``busy``) or of waiting (``sleep``)."""

    def __init__(self, index: int, seconds: float, how: str = "busy") -> None:
        if how not in HOW:
            raise ValueError(f"how must be one of {HOW}, not {how!r}")
        super().__init__(name=f"expensive-{index}")
        self.index, self.seconds, self.how = index, seconds, how

    def __call__(self) -> TaskRun:
        started = time.perf_counter()
        if self.how == "sleep":
            time.sleep(self.seconds)
        else:
            burn(self.seconds)
        return TaskRun(self.index, socket.gethostname(), os.getpid(), time.perf_counter() - started)


class ExpensiveSystem(ts.TaskSystem):
    """Runs on the master: sends ``count`` tasks, keeps what each measured, done when all are."""

    def __init__(self, count: int, seconds: float, how: str = "busy") -> None:
        super().__init__()
        self.count, self.seconds, self.how = count, seconds, how
        self.runs: dict[int, TaskRun] = {}  # by index: a result delivered twice counts once
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        """Nothing to prepare."""

    def generate_tasks(self, master: Any) -> list[ExpensiveTask]:
        return [ExpensiveTask(i, self.seconds, self.how) for i in range(self.count)]

    def task_finished(
        self, master: Any, task: Any, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            self.error = self.error or error
            return
        self.runs[result.index] = result

    def is_complete(self, master: Any) -> bool:
        return self.error is not None or len(self.runs) == self.count

    def gather_result(self, master: Any) -> tuple[list[TaskRun] | None, BaseException | None]:
        if self.error is not None:
            return None, self.error
        return [self.runs[i] for i in sorted(self.runs)], None


def run_tasks_system(
    app: ts.Application,
    count: int,
    seconds: float,
    how: str = "busy",
    progress: ProgressCallback | None = None,
) -> list[TaskRun]:
    """Run the tasks through :class:`ExpensiveSystem` on the master; what each measured."""
    return run_system(app, ExpensiveSystem(count, seconds, how), progress)


def run_plain(
    app: ts.Application,
    count: int,
    seconds: float,
    how: str = "busy",
    progress: ProgressCallback | None = None,
) -> list[TaskRun]:
    """Push the tasks from here and wait on their futures; what each measured, by index."""
    runs: dict[int, TaskRun] = {}

    def keep(run: TaskRun) -> list[ts.Task]:
        runs[run.index] = run
        return []

    tasks = [ExpensiveTask(i, seconds, how) for i in range(count)]
    run_plain_tasks(app, tasks, keep, count, progress)
    return [runs[i] for i in sorted(runs)]


# -- command line -------------------------------------------------------------------------------


@dataclass
class Timing:
    """The figures of one run: measured time against the ideal ones."""

    count: int
    seconds_per_task: float
    workers: int
    seconds_distributed: float

    @property
    def seconds_serial(self) -> float:
        """The ideal serial time: one process, each task exactly its cost, no overhead."""
        return self.count * self.seconds_per_task

    @property
    def seconds_best(self) -> float:
        """The best this many workers can do: ``ceil(count / workers)`` rounds of tasks."""
        return math.ceil(self.count / max(1, self.workers)) * self.seconds_per_task

    @property
    def speedup(self) -> float:
        return self.seconds_serial / self.seconds_distributed

    @property
    def ideal_speedup(self) -> float:
        return self.seconds_serial / self.seconds_best

    @property
    def efficiency(self) -> float:
        """Speedup as a fraction of the ideal speedup for this many workers."""
        return self.seconds_best / self.seconds_distributed

    @property
    def improvement(self) -> float:
        """How much less time than the ideal serial run, in percent (negative: more)."""
        return 100.0 * (1.0 - self.seconds_distributed / self.seconds_serial)


@dataclass
class ExpensiveReport:
    """What ``main`` prints at the end."""

    timing: Timing
    how: str
    mode: str
    slaves: int
    runs: list[TaskRun]

    @property
    def complete(self) -> bool:
        """Every task ran, and each exactly once."""
        return sorted(run.index for run in self.runs) == list(range(self.timing.count))

    def lines(self) -> list[str]:
        t = self.timing
        per_worker = Counter((run.host, run.pid) for run in self.runs)
        hosts = len({host for host, _ in per_worker})
        task_seconds = [run.seconds for run in self.runs] or [0.0]
        rows = [
            ("tasks", f"{t.count} x {t.seconds_per_task:.3f} s ({self.how})"),
            ("tasks run", f"{len(self.runs)}{'' if self.complete else ' (NOT all of them)'}"),
            ("mode", self.mode),
            *timing_rows(self.slaves, t.workers, t.seconds_distributed),
            ("seconds serial (ideal)", f"{t.seconds_serial:.3f} (count x duration)"),
            (
                "seconds best possible",
                f"{t.seconds_best:.3f} (ceil(count / workers) x duration)",
            ),
            ("speedup", f"{t.speedup:.2f}x (ideal {t.ideal_speedup:.2f}x)"),
            ("efficiency", f"{100 * t.efficiency:.1f}% of the ideal for {t.workers} workers"),
            ("improvement", _improvement(t.improvement)),
            (
                "task seconds in workers",
                f"min {min(task_seconds):.3f}, mean {sum(task_seconds) / len(task_seconds):.3f}, "
                f"max {max(task_seconds):.3f}",
            ),
            (
                "tasks per worker",
                f"{', '.join(str(n) for n in sorted(per_worker.values(), reverse=True))} "
                f"({len(per_worker)} worker processes on {hosts} host{'s' * (hosts != 1)})",
            ),
        ]
        return aligned(rows)


def _improvement(percent: float) -> str:
    if percent >= 0:
        return f"{percent:.1f}% less time than serial"
    return f"{-percent:.1f}% more time than serial (the cluster cost more than it gave)"


def build_parser() -> argparse.ArgumentParser:
    """The sample's options; cluster options default to what ``taskswarm run`` set up."""
    parser = sample_parser(
        "expensive",
        "Run COUNT tasks of DURATION seconds each on a taskswarm cluster and compare the\n"
        "time with the ideal serial time (COUNT x DURATION): speedup, efficiency against\n"
        "the best the cluster's workers could do, and improvement in percent.",
        "busy tasks use DURATION seconds of CPU each: more workers than cores gain nothing.\n"
        "sleep tasks wait DURATION seconds: more workers than cores still help.\n"
        "Exit status: 0 when every task ran exactly once.",
        [
            "taskswarm run examples/expensive.py",
            "taskswarm run examples/expensive.py --count 64 --duration 0.5 --plain",
            "python examples/expensive.py --how sleep --count 100 --duration 0.2 --workers 10",
        ],
    )
    work = parser.add_argument_group("the work")
    work.add_argument(
        "--count",
        type=positive_int,
        default=32,
        metavar="N",
        help="how many tasks (default: %(default)s)",
    )
    work.add_argument(
        "--duration",
        type=positive_float,
        default=0.25,
        metavar="SECONDS",
        help="what each task costs (default: %(default)s)",
    )
    work.add_argument(
        "--how",
        choices=HOW,
        default="busy",
        help="busy: use that much CPU time; sleep: wait that long (default: %(default)s)",
    )
    run = parser.add_argument_group("how to run")
    add_run_options(
        parser,
        run,
        plain="push plain tasks from this application instead of running a task system "
        "on the master",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run, time, report. Returns 0 when every task ran exactly once, else 1."""
    args = build_parser().parse_args(argv)
    run = run_plain if args.plain else run_tasks_system

    with on_cluster(args) as cluster:
        cluster.warm_up()
        runs, seconds = cluster.timed(
            "expensive tasks",
            lambda progress: run(cluster.app, args.count, args.duration, args.how, progress),
        )

    timing = Timing(args.count, args.duration, cluster.workers, seconds)
    report = ExpensiveReport(timing, args.how, cluster.mode, cluster.slaves, runs)
    print("\n".join(report.lines()))
    return 0 if report.complete else 1


if __name__ == "__main__":
    # Run as a file, the classes above live in __main__ and travel to the master and the
    # workers by value, and so does what they use of _common, this file's sibling module.
    sys.exit(main())
