"""Find where a bacterial genome's replication starts, from its GC-skew curve, on a taskswarm
cluster, in rounds of ever larger payloads -- and watch the master's memory while it runs.

::

    taskswarm run examples/dnacurve.py
    taskswarm run examples/dnacurve.py --rounds 7 --tasks 64
    python examples/dnacurve.py --plain --first-kib 64

In a bacterial chromosome the strand copied continuously (the *leading* strand) carries more
G than C, from the origin of replication to its terminus; the other half carries more C. The
cumulative GC skew, the running sum of ``(G - C)`` along the sequence, therefore falls to its
minimum at the origin and climbs to its maximum at the terminus: a classic way to find both.

Each round analyses a synthetic genome with an origin and a terminus planted in it, cut into
``--tasks`` chunks of DNA (:func:`make_chunk`; deterministic from the seed). A task
(:class:`ProfileTask`) carries its chunk -- bytes, the payload -- and returns the base counts of
every window of ``--window`` bases. Chunks double in size every round, so the payloads grow from
kilobytes to megabytes: a stress test of how the framework carries data, and of whether the
master keeps any of it. The master's resident memory is read before and after the run (from
``/proc``, when the master runs on this machine), and after every round. In the plain mode the
master only routes the chunks, as bytes it never unpickles, and its memory should stay flat.

* **task system** (the default): :class:`GenomeSystem` runs *on the master*: it makes each
  round's chunks there, pushes the next round when one is in, and reads the master's memory
  itself at every round's end (so that figure is known even for a master on another machine).
* **plain tasks** (``--plain``): the application makes the chunks and pushes them; every byte
  goes through the master to a slave.

Afterwards (unless ``--no-reference``) every round is computed again in this process and the
window counts compared, exactly.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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
)
from taskswarm.ops.progress import ProgressCallback

__all__ = [
    "GenomePlan",
    "GenomeSystem",
    "ProfileTask",
    "RoundResult",
    "build_parser",
    "find_origin",
    "main",
    "make_chunk",
    "master_memory",
    "profile",
    "run_plain",
    "run_serial",
    "run_tasks_system",
]

_KIB, _MIB = 1024, 1024 * 1024
_BASES = np.frombuffer(b"ATGC", dtype=np.uint8)

#: Where replication starts and ends, as fractions of the genome's length.
ORIGIN, TERMINUS = 0.3, 0.8


@dataclass(frozen=True)
class GenomePlan:
    """Every round's genome and how it is cut: all a task, the system or the reference needs."""

    seed: int = 1953
    rounds: int = 6
    tasks: int = 48
    first_chunk: int = 16 * _KIB  # bases of one chunk in the first round; doubles each round
    window: int = 1024
    skew: float = 0.1  # how much more G than C the leading strand carries (0.1: 55% vs 45%)

    def __post_init__(self) -> None:
        check_positive_ints(self, "rounds", "tasks", "first_chunk", "window")
        if self.first_chunk % self.window:
            raise ValueError(
                f"a chunk of {self.first_chunk} bases is not a whole number of windows of "
                f"{self.window}: make the first chunk a multiple of the window"
            )
        if not 0.0 <= self.skew <= 1.0:
            raise ValueError(f"the skew must be between 0 and 1, not {self.skew}")

    def chunk_length(self, round_no: int) -> int:
        return self.first_chunk << round_no

    def genome_length(self, round_no: int) -> int:
        return self.tasks * self.chunk_length(round_no)

    def planted(self, round_no: int) -> tuple[int, int]:
        """(origin, terminus) of a round's genome, in bases."""
        length = self.genome_length(round_no)
        return int(ORIGIN * length), int(TERMINUS * length)

    def round_tasks(self, round_no: int) -> list[ProfileTask]:
        return [
            ProfileTask(round_no, i, make_chunk(self, round_no, i), self.window)
            for i in range(self.tasks)
        ]

    @property
    def total_tasks(self) -> int:
        return self.rounds * self.tasks


def make_chunk(plan: GenomePlan, round_no: int, index: int) -> bytes:
    """Chunk ``index`` of round ``round_no``'s genome, as ASCII bases; the same everywhere.

    GC content is 50%; between origin and terminus a G is ``1 + skew`` times as likely as
    usual and a C ``1 - skew`` times, and the other way round on the rest of the circle.
    """
    n = plan.chunk_length(round_no)
    origin, terminus = plan.planted(round_no)
    rng = np.random.Generator(
        np.random.PCG64(np.random.SeedSequence(plan.seed, spawn_key=(round_no, index)))
    )
    position = index * n + np.arange(n)
    leading = (position >= origin) & (position < terminus)
    g_or_c = 0.5 + 0.25 * (1.0 + np.where(leading, plan.skew, -plan.skew))
    u = rng.random(n)
    code = (u >= 0.25).astype(np.uint8) + (u >= 0.5) + (u >= g_or_c)  # A, T, G, C
    return _BASES[code].tobytes()


def profile(sequence: bytes, window: int) -> np.ndarray:
    """Counts of A, C, G and T in every window: an int32 array of shape (windows, 4)."""
    bases = np.frombuffer(sequence, dtype=np.uint8).reshape(-1, window)
    return np.stack([(bases == ord(b)).sum(axis=1) for b in "ACGT"], axis=1).astype(np.int32)


def find_origin(counts: np.ndarray, window: int) -> tuple[int, int]:
    """(origin, terminus) in bases: where the cumulative GC skew is lowest and highest."""
    curve = np.cumsum(counts[:, 2].astype(np.int64) - counts[:, 1])
    return (int(np.argmin(curve)) + 1) * window, (int(np.argmax(curve)) + 1) * window


class ProfileTask(ts.Task):
    """Count the bases of each window of one chunk: ``(round, index, counts)``."""

    def __init__(self, round_no: int, index: int, sequence: bytes, window: int) -> None:
        super().__init__(name=f"dna-r{round_no}-{index}")
        self.round_no, self.index, self.sequence, self.window = round_no, index, sequence, window

    def __call__(self) -> tuple[int, int, np.ndarray]:
        return self.round_no, self.index, profile(self.sequence, self.window)


# -- memory ------------------------------------------------------------------------------------


def _memory(pid: int | str) -> tuple[int, int] | None:
    """(resident, peak resident) bytes of a process on this machine, from /proc; or None."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    try:
        return int(fields["VmRSS"].split()[0]) * _KIB, int(fields["VmHWM"].split()[0]) * _KIB
    except (KeyError, ValueError, IndexError):
        return None


def _own_memory() -> tuple[int, int] | None:
    """This process's memory: what the task system reads, running on the master."""
    return _memory("self")


def master_memory(app: ts.Application) -> tuple[int, int] | None:
    """The master's (resident, peak) bytes, when it runs on this machine; None otherwise.

    The master's status names its host and pid; the pid is only trusted when the host is
    this one and that process really is a taskswarm master.
    """
    info = app.status().get("master", {})
    pid = info.get("pid")
    if not pid or info.get("host") != socket.gethostname():
        return None
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    if b"taskswarm" not in b" ".join(command) or b"master" not in command:
        return None
    return _memory(pid)


# -- the rounds ---------------------------------------------------------------------------------


@dataclass
class RoundResult:
    """One round: its genome's window counts, how long it took, the master's memory after."""

    round_no: int
    counts: np.ndarray
    seconds: float = 0.0
    master_rss: int | None = None


@dataclass
class _Rounds:
    """The rounds as a state machine both modes and the reference drive alike.

    ``start()`` gives the first round's tasks; ``add(result)`` stores one result and, when it
    was its round's last, closes the round (time, memory) and gives the next round's tasks.
    """

    plan: GenomePlan
    memory: Callable[[], tuple[int, int] | None] | None = None
    round_no: int = 0
    waiting: set[int] = field(default_factory=set)
    parts: dict[int, np.ndarray] = field(default_factory=dict)
    results: list[RoundResult] = field(default_factory=list)
    payload_bytes: int = 0
    started: float = 0.0

    def start(self) -> list[ProfileTask]:
        return self._round(0)

    def _round(self, round_no: int) -> list[ProfileTask]:
        self.round_no, self.parts, self.started = round_no, {}, time.perf_counter()
        tasks = self.plan.round_tasks(round_no)
        self.waiting = {task.index for task in tasks}
        self.payload_bytes += sum(len(task.sequence) for task in tasks)
        return tasks

    def add(self, result: tuple[int, int, np.ndarray]) -> list[ProfileTask]:
        round_no, index, counts = result
        if round_no != self.round_no or index not in self.waiting:
            return []  # a duplicate: already counted
        self.waiting.discard(index)
        self.parts[index] = counts
        if self.waiting:
            return []
        memory = self.memory() if self.memory is not None else None
        self.results.append(
            RoundResult(
                round_no,
                np.concatenate([self.parts[i] for i in range(self.plan.tasks)]),
                time.perf_counter() - self.started,
                None if memory is None else memory[0],
            )
        )
        self.parts = {}  # let the round's arrays go before the next round's chunks are made
        if round_no + 1 == self.plan.rounds:
            return []
        return self._round(round_no + 1)

    @property
    def done(self) -> bool:
        return len(self.results) == self.plan.rounds


class GenomeSystem(ts.TaskSystem):
    """Runs on the master: makes each round's chunks there, pushes the next round when one is
    in, and reads the master's own memory at every round's end."""

    def __init__(self, plan: GenomePlan) -> None:
        super().__init__()
        self.plan = plan
        self.error: BaseException | None = None

    def init_system(self, master: Any) -> None:
        self.rounds = _Rounds(self.plan, memory=_own_memory)

    def generate_tasks(self, master: Any) -> list[ProfileTask]:
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

    def gather_result(self, master: Any) -> tuple[list[RoundResult] | None, BaseException | None]:
        if self.error is not None:
            return None, self.error
        return self.rounds.results, None


def run_tasks_system(
    app: ts.Application, plan: GenomePlan, progress: ProgressCallback | None = None
) -> list[RoundResult]:
    """Analyse every round with :class:`GenomeSystem` on the master."""
    return run_system(app, GenomeSystem(plan), rescaled(progress, plan.total_tasks))


def run_plain(
    app: ts.Application, plan: GenomePlan, progress: ProgressCallback | None = None
) -> list[RoundResult]:
    """Make the chunks here and push them round by round; the master's memory is read from
    here at every round's end, when it runs on this machine."""
    rounds = _Rounds(plan, memory=lambda: master_memory(app))
    run_plain_tasks(app, rounds.start(), rounds.add, plan.total_tasks, progress)
    return rounds.results


def run_serial(plan: GenomePlan) -> list[RoundResult]:
    """Every round in this process: the reference the cluster's counts must equal."""
    rounds = _Rounds(plan)
    run_serially(rounds.start(), rounds.add)
    return rounds.results


# -- command line -------------------------------------------------------------------------------


def _mib(value: int | None) -> str:
    return "unknown" if value is None else f"{value / _MIB:.1f} MiB"


@dataclass
class GenomeReport:
    """What ``main`` prints at the end."""

    plan: GenomePlan
    results: list[RoundResult]
    mode: str
    slaves: int
    workers: int
    seconds: float
    memory_before: tuple[int, int] | None
    memory_after: tuple[int, int] | None
    matches_reference: bool | None = None

    def round_line(self, result: RoundResult) -> tuple[str, str]:
        plan, r = self.plan, result.round_no
        payload = plan.genome_length(r)
        origin, terminus = find_origin(result.counts, plan.window)
        planted_origin, planted_terminus = plan.planted(r)
        rate = payload / _MIB / result.seconds if result.seconds > 0 else 0.0
        return (
            f"round {r + 1}",
            f"{plan.tasks} x {plan.chunk_length(r) / _KIB:,.0f} KiB, {result.seconds:.2f} s, "
            f"{rate:.1f} MiB/s; origin {origin:,} (planted {planted_origin:,}), terminus "
            f"{terminus:,} (planted {planted_terminus:,}); master RSS {_mib(result.master_rss)}",
        )

    def lines(self) -> list[str]:
        plan = self.plan
        payload = sum(plan.genome_length(r) for r in range(plan.rounds))
        before, after = self.memory_before, self.memory_after
        if before is None or after is None:
            memory = "before unknown, after unknown (the master runs on another machine)"
        else:
            memory = (
                f"before {_mib(before[0])}, after {_mib(after[0])} "
                f"({(after[0] - before[0]) / _MIB:+.1f} MiB); peak {_mib(after[1])}"
            )
            if self.mode == "task system":
                memory += " (running the system has the master import NumPy: about 15 MiB)"
        rows = [
            (
                "rounds",
                f"{plan.rounds} of {plan.tasks} tasks; chunks from "
                f"{plan.chunk_length(0) / _KIB:,.0f} KiB, doubling every round",
            ),
            *(self.round_line(result) for result in self.results),
            ("payload sent", f"{payload / _MIB:.1f} MiB of DNA in {plan.total_tasks} tasks"),
            ("mode", self.mode),
            ("slaves", str(self.slaves)),
            ("workers", str(self.workers)),
            ("seconds", f"{self.seconds:.3f} ({payload / _MIB / self.seconds:.1f} MiB/s)"),
            ("master RSS", memory),
        ]
        if self.matches_reference is not None:
            rows.append(("matches serial reference", "yes" if self.matches_reference else "no"))
        return aligned(rows)


def build_parser() -> argparse.ArgumentParser:
    """The sample's options; cluster options default to what ``taskswarm run`` set up."""
    defaults = GenomePlan()
    parser = sample_parser(
        "dnacurve",
        "Locate the origin and terminus of replication of synthetic bacterial genomes\n"
        "from their cumulative GC-skew curve, on a taskswarm cluster, in rounds whose\n"
        "DNA chunks double in size; report the master's memory before, during and after.",
        "The master's memory is read from /proc when it runs on this machine; in the\n"
        "task-system mode the system reads it on the master itself at each round's end.\n"
        "Exit status: 0 when every round's counts match the serial reference (or\n"
        "--no-reference), 1 when one does not.",
        [
            "taskswarm run examples/dnacurve.py",
            "taskswarm run examples/dnacurve.py --rounds 7 --tasks 64",
            "python examples/dnacurve.py --plain --first-kib 64",
        ],
    )
    work = parser.add_argument_group("the genomes")
    work.add_argument(
        "--rounds",
        type=positive_int,
        default=defaults.rounds,
        metavar="N",
        help="rounds, each with chunks twice the size of the last (default: %(default)s)",
    )
    work.add_argument(
        "--tasks",
        type=positive_int,
        default=defaults.tasks,
        metavar="N",
        help="chunks (tasks) per round (default: %(default)s)",
    )
    work.add_argument(
        "--first-kib",
        type=positive_int,
        default=defaults.first_chunk // _KIB,
        metavar="KIB",
        help="size of a chunk in the first round, in KiB of bases (default: %(default)s)",
    )
    work.add_argument(
        "--window",
        type=positive_int,
        default=defaults.window,
        metavar="BASES",
        help="bases per window of the profile; must divide the chunk size (default: %(default)s)",
    )
    add_seed_option(work, defaults.seed)
    run = parser.add_argument_group("how to run")
    add_run_options(
        parser,
        run,
        plain="make the chunks here and push plain tasks, instead of running a task system "
        "on the master",
        no_reference="skip the serial reference and the check of every round's counts",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Analyse, check, report. Returns 0 when every round matches the serial reference."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        plan = GenomePlan(args.seed, args.rounds, args.tasks, args.first_kib * _KIB, args.window)
    except ValueError as exc:
        parser.error(str(exc))
    run = run_plain if args.plain else run_tasks_system

    with on_cluster(args) as cluster:
        cluster.warm_up("numpy")
        before = master_memory(cluster.app)
        results, seconds = cluster.timed(
            "dna curve", lambda progress: run(cluster.app, plan, progress)
        )
        after = master_memory(cluster.app)

    report = GenomeReport(
        plan, results, cluster.mode, cluster.slaves, cluster.workers, seconds, before, after
    )
    if not args.no_reference:
        reference = run_serial(plan)
        report.matches_reference = len(reference) == len(results) and all(
            np.array_equal(ours.counts, theirs.counts)
            for ours, theirs in zip(results, reference, strict=False)
        )
    print("\n".join(report.lines()))
    return 1 if report.matches_reference is False else 0


if __name__ == "__main__":
    # Run as a file, the classes above live in __main__ and travel to the master and the
    # workers by value, and so does what they use of _common, this file's sibling module.
    sys.exit(main())
