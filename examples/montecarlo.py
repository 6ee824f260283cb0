"""Estimate pi by stratified Monte Carlo on a taskswarm cluster, with NumPy arrays in and out.

::

    taskswarm run examples/montecarlo.py
    taskswarm run examples/montecarlo.py --grid 2048 --points 1e8 --seed 7
    python examples/montecarlo.py --plain --grid 256

Darts thrown at the unit square land inside the quarter disc ``x*x + y*y <= 1`` with
probability pi/4. Plain Monte Carlo counts the hits; this sample cuts the square into
``grid x grid`` cells (*strata*) and throws a chosen number of darts into each, which removes
all the variance of the cells wholly inside or outside the disc. It runs in two rounds:

1. a *pilot*: ``--pilot`` darts in every cell, to see which cells are mixed;
2. the remaining ``--points`` darts, shared out by Neyman allocation -- each cell gets darts in
   proportion to the standard deviation the pilot saw there -- so the darts go where the
   uncertainty is.

Every task (:class:`StrataTask`) takes a band of rows of the *allocation*, an int64 array of how
many darts go into each cell, and returns the hits per cell, another int64 array: at the
default grid, each round moves 8 MiB of arguments to the workers and 8 MiB of results back.
Each task draws from its own generator, seeded from ``--seed`` and the task's place in the
plan (``SeedSequence(seed, spawn_key=(round, first row))``), so the estimate does not depend on
which worker ran what, or in which order results came back: it equals, bit for bit, the serial
reference computed in this process afterwards -- which the sample checks.

* **task system** (the default): :class:`MonteCarloSystem` runs on the master, computes the
  allocation there when the pilot is in, and pushes the second round itself.
* **plain tasks** (``--plain``): the application does the same, round by round.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import taskswarm as ts
from _common import (
    add_run_options,
    add_seed_option,
    aligned,
    check_positive_ints,
    on_cluster,
    positive_int,
    rescaled,
    run_plain_tasks,
    run_serially,
    run_system,
    sample_parser,
    timed,
    timing_rows,
)
from taskswarm.ops.progress import ProgressCallback

__all__ = [
    "Estimate",
    "MonteCarloSystem",
    "Plan",
    "StrataTask",
    "allocate",
    "build_parser",
    "main",
    "run_plain",
    "run_serial",
    "run_tasks_system",
    "throw",
]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class Plan:
    """The whole computation, fixed before the first dart: same plan, same estimate."""

    seed: int = 2024
    grid: int = 1024
    pilot: int = 4
    points: int = 1 << 27
    rows_per_task: int = 32

    def __post_init__(self) -> None:
        check_positive_ints(self, "grid", "pilot", "points", "rows_per_task")
        if self.seed < 0:
            raise ValueError(f"the seed must be 0 or more, not {self.seed}")

    @property
    def tasks_per_round(self) -> int:
        return -(-self.grid // self.rows_per_task)

    def pilot_counts(self) -> np.ndarray:
        return np.full((self.grid, self.grid), self.pilot, dtype=np.int64)

    def round_tasks(self, round_no: int, counts: np.ndarray) -> list[StrataTask]:
        """One task per band of ``rows_per_task`` rows; each carries its rows of ``counts``."""
        step = self.rows_per_task
        return [
            StrataTask(self.seed, round_no, row0, counts[row0 : row0 + step].copy())
            for row0 in range(0, self.grid, step)
        ]


def throw(seed: int, round_no: int, row0: int, counts: np.ndarray) -> np.ndarray:
    """Throw ``counts[i, j]`` darts into cell ``(row0 + i, j)``; the hits per cell (int64).

    The grid's size is the row length of ``counts``. Rows are drawn in order from one
    generator of the task's own, so the result depends on the arguments alone.

    The row loop works in buffers made once per task. Fresh arrays of a few hundred KiB each
    time are slow in a young worker process: the C allocator hands such blocks back to the
    system on every free, and every new one costs its pages in faults, doubling the time.
    """
    grid = counts.shape[1]
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(seed, spawn_key=(round_no, row0)))
    )
    columns = np.arange(grid)
    hits = np.zeros(counts.shape, dtype=np.int64)
    largest = int(counts.sum(axis=1).max(initial=0))
    u, x, y = np.empty(largest), np.empty(largest), np.empty(largest)
    inside = np.empty(largest, dtype=bool)
    for i, row_counts in enumerate(counts):
        n = int(row_counts.sum())
        if n == 0:
            continue
        cols = np.repeat(columns, row_counts)
        xs, ys, us = x[:n], y[:n], u[:n]
        np.add(cols, rng.random(out=us), out=xs)  # x = (column + uniform) / grid
        xs /= grid
        np.add(row0 + i, rng.random(out=us), out=ys)
        ys /= grid
        xs *= xs
        ys *= ys
        xs += ys
        np.less_equal(xs, 1.0, out=inside[:n])  # in the quarter disc: x*x + y*y <= 1
        hits[i] = np.bincount(cols, weights=inside[:n], minlength=grid)  # exact: sums of 0/1
    return hits


def allocate(counts: np.ndarray, hits: np.ndarray, points: int) -> np.ndarray:
    """Neyman allocation: ``points`` darts shared out in proportion to each cell's standard
    deviation as the pilot saw it; exactly ``points`` in all, the same on any machine.

    The proportion of hits is smoothed (Laplace's rule, ``(h + 1) / (n + 2)``), so a mixed cell
    whose pilot darts happened to land all on one side still gets some of the second round.
    """
    q = (hits + 1.0) / (counts + 2.0)
    weight = np.sqrt(q * (1.0 - q))
    share = points * weight / weight.sum()
    allocation = np.floor(share).astype(np.int64)
    left = points - int(allocation.sum())
    if left > 0:  # the largest remainders get one more, ties broken by position
        order = np.argsort(-(share - allocation), axis=None, kind="stable")[:left]
        allocation.flat[order] += 1
    return allocation


class StrataTask(ts.Task):
    """Throw one band of rows' darts in a worker: ``(round, first row, hits array)``."""

    def __init__(self, seed: int, round_no: int, row0: int, counts: np.ndarray) -> None:
        super().__init__(name=f"strata-r{round_no}-{row0}")
        self.seed, self.round_no, self.row0, self.counts = seed, round_no, row0, counts

    def __call__(self) -> tuple[int, int, np.ndarray]:
        return self.round_no, self.row0, throw(self.seed, self.round_no, self.row0, self.counts)


@dataclass
class Estimate:
    """The darts per cell and the hits per cell, over both rounds, and what they say of pi."""

    counts: np.ndarray
    hits: np.ndarray
    bytes_out: int = 0
    bytes_back: int = 0
    tasks: int = 0

    @property
    def pi(self) -> float:
        """4 x the mean over cells of each cell's proportion of hits (cells have equal area)."""
        return 4.0 * float((self.hits / self.counts).mean())

    @property
    def std_error(self) -> float:
        p = self.hits / self.counts
        return 4.0 / self.counts.size * math.sqrt(float((p * (1.0 - p) / self.counts).sum()))

    @property
    def plain_std_error(self) -> float:
        """What plain Monte Carlo with as many darts would have: the yardstick."""
        p = self.pi / 4.0
        return 4.0 * math.sqrt(p * (1.0 - p) / int(self.counts.sum()))


@dataclass
class _Rounds:
    """The two rounds as a state machine both modes and the serial reference drive alike.

    ``start()`` gives the pilot's tasks; ``add(result)`` stores one result and, when it was
    the pilot's last, gives the second round's tasks. Results land in place by row, so the order
    they come in cannot change the estimate.
    """

    plan: Plan
    round_no: int = 0
    waiting: set[int] = field(default_factory=set)
    counts: np.ndarray | None = None  # darts of the current round
    round_hits: np.ndarray | None = None  # hits of the current round, filled in by row
    total_counts: np.ndarray | None = None
    total_hits: np.ndarray | None = None
    bytes_out: int = 0
    bytes_back: int = 0
    tasks: int = 0

    def start(self) -> list[StrataTask]:
        g = self.plan.grid
        self.total_counts = np.zeros((g, g), dtype=np.int64)
        self.total_hits = np.zeros((g, g), dtype=np.int64)
        return self._round(self.plan.pilot_counts())

    def _round(self, counts: np.ndarray) -> list[StrataTask]:
        self.counts = counts
        self.round_hits = np.zeros_like(counts)
        tasks = self.plan.round_tasks(self.round_no, counts)
        self.waiting = {task.row0 for task in tasks}
        self.bytes_out += sum(task.counts.nbytes for task in tasks)
        self.tasks += len(tasks)
        return tasks

    def add(self, result: tuple[int, int, np.ndarray]) -> list[StrataTask]:
        round_no, row0, hits = result
        if round_no != self.round_no or row0 not in self.waiting:
            return []  # a duplicate: already in place
        self.waiting.discard(row0)
        self.round_hits[row0 : row0 + hits.shape[0]] = hits
        self.bytes_back += hits.nbytes
        if self.waiting:
            return []
        self.total_counts += self.counts
        self.total_hits += self.round_hits
        if self.round_no == 1:
            return []
        self.round_no = 1
        return self._round(allocate(self.counts, self.round_hits, self.plan.points))

    @property
    def done(self) -> bool:
        return self.round_no == 1 and not self.waiting

    def estimate(self) -> Estimate:
        return Estimate(
            self.total_counts, self.total_hits, self.bytes_out, self.bytes_back, self.tasks
        )


class MonteCarloSystem(ts.TaskSystem):
    """Runs on the master: the pilot, then the allocation and the second round, pushed from
    here; the result is the :class:`Estimate` (two grids) and nothing else travels back."""

    def __init__(self, plan: Plan) -> None:
        super().__init__()
        self.plan = plan
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        # Made here, on the master: its arrays would only weigh down the pickled system.
        self.rounds = _Rounds(self.plan)

    def generate_tasks(self, master: Any) -> list[StrataTask]:
        return self.rounds.start()

    def task_finished(
        self, master: Any, task: Any, result: Any, error: BaseException | None
    ) -> None:
        if error is not None:
            self.error = self.error or error
            return
        more = self.rounds.add(result)
        if more and master is not None:
            master.push_tasks(more)

    def is_complete(self, master: Any) -> bool:
        return self.error is not None or self.rounds.done

    def gather_result(self, master: Any) -> tuple[Estimate | None, BaseException | None]:
        if self.error is not None:
            return None, self.error
        return self.rounds.estimate(), None


def run_tasks_system(
    app: ts.Application, plan: Plan, progress: ProgressCallback | None = None
) -> Estimate:
    """Estimate with :class:`MonteCarloSystem` on the master; blocks until it is done."""
    return run_system(app, MonteCarloSystem(plan), rescaled(progress, 2 * plan.tasks_per_round))


def run_plain(
    app: ts.Application, plan: Plan, progress: ProgressCallback | None = None
) -> Estimate:
    """Estimate by pushing the tasks from here; the second round goes out when the pilot's
    last result is in, computed here as the task system computes it on the master."""
    rounds = _Rounds(plan)
    run_plain_tasks(app, rounds.start(), rounds.add, 2 * plan.tasks_per_round, progress)
    return rounds.estimate()


def run_serial(plan: Plan) -> Estimate:
    """The same plan in this process, task after task: the reference to match exactly."""
    rounds = _Rounds(plan)
    run_serially(rounds.start(), rounds.add)
    return rounds.estimate()


# -- command line -------------------------------------------------------------------------------


@dataclass
class MonteCarloReport:
    """What ``main`` prints at the end."""

    plan: Plan
    estimate: Estimate
    mode: str
    slaves: int
    workers: int
    seconds_distributed: float
    seconds_serial: float | None = None
    matches_reference: bool | None = None

    def lines(self) -> list[str]:
        plan, est = self.plan, self.estimate
        pilot_points = plan.pilot * plan.grid * plan.grid
        variance_ratio = (est.plain_std_error / est.std_error) ** 2 if est.std_error else math.inf
        rows = [
            ("estimate of pi", f"{est.pi:.12f}"),
            ("error", f"{est.pi - math.pi:+.3e} (against math.pi)"),
            (
                "standard error",
                f"{est.std_error:.3e} (plain Monte Carlo with as many darts: "
                f"{est.plain_std_error:.3e}, {variance_ratio:,.0f}x the variance)",
            ),
            (
                "darts",
                f"{int(est.counts.sum()):,} in {plan.grid}x{plan.grid} cells: "
                f"{pilot_points:,} pilot + {plan.points:,} allocated by it",
            ),
            ("seed", str(plan.seed)),
            ("mode", self.mode),
            ("tasks", f"{est.tasks} (2 rounds of {plan.tasks_per_round})"),
            (
                "arrays moved",
                f"{est.bytes_out / _MIB:.1f} MiB to workers, {est.bytes_back / _MIB:.1f} MiB "
                f"back ({est.bytes_out / max(1, est.tasks) / 1024:,.0f} KiB of arguments a task)",
            ),
            *timing_rows(
                self.slaves,
                self.workers,
                self.seconds_distributed,
                self.seconds_serial,
                self.matches_reference,
            ),
        ]
        return aligned(rows)


def build_parser() -> argparse.ArgumentParser:
    """The sample's options; cluster options default to what ``taskswarm run`` set up."""
    defaults = Plan()
    parser = sample_parser(
        "montecarlo",
        "Estimate pi by stratified Monte Carlo (a pilot round, then Neyman allocation)\n"
        "on a taskswarm cluster, with NumPy arrays as task arguments and results; then\n"
        "compute it again serially here and check the two agree bit for bit.",
        "The estimate depends on the options alone (same --seed, same digits), never on\n"
        "the cluster. Exit status: 0 when it matches the serial reference (or\n"
        "--no-reference), 1 when it does not.",
        [
            "taskswarm run examples/montecarlo.py",
            "taskswarm run examples/montecarlo.py --grid 2048 --points 1e8 --seed 7",
            "python examples/montecarlo.py --plain --grid 256",
        ],
    )
    work = parser.add_argument_group("the estimate")
    work.add_argument(
        "--grid",
        type=positive_int,
        default=defaults.grid,
        metavar="N",
        help="cut the square into N x N cells; each round moves N*N*8 bytes each way "
        "(default: %(default)s)",
    )
    work.add_argument(
        "--pilot",
        type=positive_int,
        default=defaults.pilot,
        metavar="N",
        help="darts per cell in the pilot round (default: %(default)s)",
    )
    work.add_argument(
        "--points",
        type=positive_int,
        default=defaults.points,
        metavar="N",
        help="darts of the second round, shared out by the pilot (default: %(default)s)",
    )
    add_seed_option(work, defaults.seed)
    run = parser.add_argument_group("how to run")
    run.add_argument(
        "--rows-per-task",
        type=positive_int,
        default=defaults.rows_per_task,
        metavar="N",
        help="rows of cells per task: ceil(grid / N) tasks a round (default: %(default)s)",
    )
    add_run_options(
        parser,
        run,
        plain="push plain tasks from this application, round by round, instead of running a "
        "task system on the master",
        no_reference="skip the serial reference and the bit-for-bit check",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Estimate, check, report. Returns 0 when the estimate matches the serial reference."""
    args = build_parser().parse_args(argv)
    plan = Plan(args.seed, args.grid, args.pilot, args.points, args.rows_per_task)
    run = run_plain if args.plain else run_tasks_system

    with on_cluster(args) as cluster:
        cluster.warm_up("numpy")
        estimate, seconds = cluster.timed(
            "monte carlo", lambda progress: run(cluster.app, plan, progress)
        )

    report = MonteCarloReport(
        plan, estimate, cluster.mode, cluster.slaves, cluster.workers, seconds
    )
    if not args.no_reference:
        reference, report.seconds_serial = timed(lambda: run_serial(plan))
        report.matches_reference = (
            np.array_equal(estimate.counts, reference.counts)
            and np.array_equal(estimate.hits, reference.hits)
            and estimate.pi == reference.pi
        )
    print("\n".join(report.lines()))
    return 1 if report.matches_reference is False else 0


if __name__ == "__main__":
    # Run as a file, the classes above live in __main__ and travel to the master and the
    # workers by value, and so does what they use of _common, this file's sibling module.
    sys.exit(main())
