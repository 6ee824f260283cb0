"""What the samples share: their common options, the cluster and the timing of a run on it,
warm-up and the summary table.

The samples are files run by path (``taskswarm run examples/NAME.py``), and this module is
their sibling, imported as ``_common``: ``taskswarm run`` (like ``python FILE``) puts the file's
directory on ``sys.path``. Neither is installed where the master and the slaves run, so the
classes and functions of both travel there by value (see ``taskswarm.protocol.pickling``).

Each sample stays a readable program of its own -- its tasks, its task system, its report --
and only the parts that would otherwise be copied word for word into every one of them live
here. The skeleton of a sample's ``main``::

    args = build_parser().parse_args(argv)      # sample_parser(...), add_run_options(...)
    with on_cluster(args) as cluster:           # connect, or start an embedded cluster
        cluster.warm_up("numpy")                # the libraries its tasks use
        result, seconds = cluster.timed("title", lambda progress: run(cluster.app, progress))
    if not args.no_reference:
        reference, seconds_serial = timed(lambda: run_serial(...))
    summary = aligned([..., *timing_rows(...)])  # printed line by line
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import taskswarm as ts
from taskswarm.ops.progress import ProgressCallback, progress_display

__all__ = [
    "SampleCluster",
    "add_cluster_options",
    "add_run_options",
    "add_seed_option",
    "aligned",
    "cancel_all",
    "check_positive_ints",
    "cluster_size",
    "non_negative_int",
    "on_cluster",
    "positive_float",
    "positive_int",
    "rescaled",
    "run_plain_tasks",
    "run_serially",
    "run_system",
    "sample_parser",
    "timed",
    "timing_rows",
    "warm_up",
]

T = TypeVar("T")
_N = TypeVar("_N", int, float)


# -- command line -------------------------------------------------------------------------------


def _checked(
    text: str, convert: Callable[[str], _N], kind: str, accept: Callable[[_N], bool], rule: str
) -> _N:
    """``convert(text)`` when it is a ``kind`` that ``accept`` takes; otherwise the usage error
    argparse shows, saying which of the two was wrong."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {kind}") from None
    if not accept(value):
        raise argparse.ArgumentTypeError(f"{text!r} {rule}")
    return value


def _whole_number(text: str) -> int:
    """``1_000_000`` and ``1e6`` alike: counts of darts or candidates are written both ways."""
    try:
        return int(text.replace("_", ""))
    except ValueError:
        number = float(text)
        if not number.is_integer():
            raise ValueError(f"{text!r} is not a whole number") from None
        return int(number)


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` and ``1e6`` both accepted)."""
    return _checked(text, _whole_number, "an integer", lambda n: n >= 1, "must be at least 1")


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of 0 or more (a seed, say)."""
    return _checked(text, int, "an integer", lambda n: n >= 0, "must be 0 or more")


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    rule = "must be a finite number greater than 0"
    return _checked(text, float, "a number", lambda x: 0 < x < math.inf, rule)


def check_positive_ints(plan: object, *names: str) -> None:
    """Refuse a plan whose named fields are not positive ints, naming the field: caught when
    the plan is made, not as a puzzling NumPy error in some worker later."""
    for name in names:
        value = getattr(plan, name)
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{type(plan).__name__}.{name} must be a positive int, not {value!r}")


def sample_parser(
    name: str, description: str, notes: str, examples: Sequence[str]
) -> argparse.ArgumentParser:
    """The parser of ``NAME.py``: its description, then ``notes`` and the
    example command lines under the options, with the line breaks as written."""
    return argparse.ArgumentParser(
        prog=f"{name}.py",
        description=description,
        epilog=notes + "\n\nExamples:\n" + "\n".join(f"  {line}" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_seed_option(group: argparse._ArgumentGroup, default: int) -> None:
    """``--seed``: a sample whose result depends on its options alone takes its seed here."""
    group.add_argument(
        "--seed", type=non_negative_int, default=default, help="the seed (default: %(default)s)"
    )


def add_run_options(
    parser: argparse.ArgumentParser,
    run: argparse._ArgumentGroup,
    *,
    plain: str,
    no_reference: str | None = None,
) -> None:
    """The options every sample ends with, in one order: ``--plain`` (help ``plain``),
    ``--no-reference`` (help ``no_reference``; only a sample with a serial reference has it)
    and ``--quiet`` in its ``run`` group, then the cluster group."""
    run.add_argument("--plain", action="store_true", help=plain)
    if no_reference is not None:
        run.add_argument("--no-reference", action="store_true", help=no_reference)
    run.add_argument(
        "--quiet", "-q", action="store_true", help="no progress display; print only the summary"
    )
    add_cluster_options(parser)


def add_cluster_options(parser: argparse.ArgumentParser) -> None:
    """The ``cluster`` group every sample has; ``taskswarm run`` fills it in through the
    environment, so the options matter only when a sample runs with plain ``python``."""
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--master",
        metavar="tcp://HOST:PORT",
        default=None,
        help="connect to this master (default: TASKSWARM_MASTER, else start "
        "an embedded local cluster)",
    )
    cluster.add_argument(
        "--key-file", metavar="PATH", default=None, help="the cluster key for --master"
    )
    cluster.add_argument(
        "--slaves",
        type=positive_int,
        default=None,
        metavar="N",
        help="slaves of an embedded cluster (default: 2)",
    )
    cluster.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        metavar="N",
        help="workers per slave of an embedded cluster "
        "(default: CPU count split across the slaves)",
    )


# -- the summary --------------------------------------------------------------------------------


def aligned(rows: Sequence[tuple[str, str]]) -> list[str]:
    """``name: value`` lines with the values in one column: a summary a person can scan and a
    test (or ``grep``) can match line by line."""
    width = max(len(name) for name, _ in rows)
    return [f"{name + ':':<{width + 1}} {value}" for name, value in rows]


def timing_rows(
    slaves: int,
    workers: int,
    seconds_distributed: float,
    seconds_serial: float | None = None,
    matches_reference: bool | None = None,
) -> list[tuple[str, str]]:
    """The summary's rows on the cluster and its time; with ``seconds_serial`` (a timed serial
    reference) also what distribution bought, and whether it changed the answer (it must not)."""
    rows = [
        ("slaves", str(slaves)),
        ("workers", str(workers)),
        ("seconds distributed", f"{seconds_distributed:.3f}"),
    ]
    if seconds_serial is not None:
        speedup = seconds_serial / seconds_distributed if seconds_distributed > 0 else None
        rows += [
            ("seconds serial", f"{seconds_serial:.3f}"),
            ("speedup", "n/a" if speedup is None else f"{speedup:.2f}x"),
            ("matches serial reference", "yes" if matches_reference else "no"),
        ]
    return rows


# -- the cluster --------------------------------------------------------------------------------


def cluster_size(app: ts.Application) -> tuple[int, int]:
    """(active slaves, their workers) as the master reports them right now."""
    slaves = [s for s in app.status().get("slaves", []) if s.get("state") == "active"]
    return len(slaves), sum(int(s.get("workers", 0) or 0) for s in slaves)


def _import(*modules: str) -> int:
    for module in modules:
        importlib.import_module(module)
    return os.getpid()


def warm_up(app: ts.Application, workers: int, *modules: str) -> None:
    """Have the workers import ``modules`` (NumPy, say) and load this module's code before the
    clock starts, so the timing measures the work and not start-up; two tasks a worker reach
    them all. (The sample itself is no module the workers could import: its code travels with
    its first tasks.)"""
    futures = app.push_tasks(ts.FunctionTask(_import, *modules) for _ in range(2 * max(1, workers)))
    for future in futures:
        future.result()


def timed(work: Callable[[], T]) -> tuple[T, float]:
    """``work()``'s result and the seconds it took."""
    started = time.perf_counter()
    result = work()
    return result, time.perf_counter() - started


@dataclass
class SampleCluster:
    """The cluster a sample runs on, with what its summary says of it: the size when the run
    started and the mode (``task system`` or ``plain tasks``) the options chose."""

    app: ts.Application
    slaves: int
    workers: int
    mode: str
    quiet: bool = False

    def warm_up(self, *modules: str) -> None:
        """:func:`warm_up` for this cluster's workers."""
        warm_up(self.app, self.workers, *modules)

    def timed(self, title: str, work: Callable[[ProgressCallback | None], T]) -> tuple[T, float]:
        """``work(progress)``, shown as ``title (mode)`` unless ``--quiet``: its result and the
        seconds it took, the display's own start and end left out."""
        with progress_display(f"{title} ({self.mode})", quiet=self.quiet) as progress:
            return timed(lambda: work(progress))


@contextlib.contextmanager
def on_cluster(args: argparse.Namespace) -> Iterator[SampleCluster]:
    """The cluster the options name, or an embedded one for the length of the ``with``."""
    with ts.connect_or_start(
        master=args.master, key_file=args.key_file, slaves=args.slaves, workers=args.workers
    ) as app:
        slaves, workers = cluster_size(app)
        mode = "plain tasks" if args.plain else "task system"
        yield SampleCluster(app, slaves, workers, mode, args.quiet)


# -- running work -------------------------------------------------------------------------------


def rescaled(progress: ProgressCallback | None, total: int) -> ProgressCallback | None:
    """A callback that reports ``(done, total)`` against a fixed ``total``.

    A task system that pushes its tasks a window at a time reports ``(done, generated so far)``;
    the sample knows the real total and shows that instead. The wrapper keeps the marker that
    tells ``taskswarm run``'s board this callback draws by itself, so nothing shows twice.
    """
    if progress is None:
        return None

    def report(done: int, _generated: int) -> None:
        progress(min(done, total), total)

    report.draws_progress = getattr(progress, "draws_progress", False)  # type: ignore[attr-defined]
    return report


def run_system(
    app: ts.Application, system: ts.TaskSystem, progress: ProgressCallback | None = None
) -> Any:
    """``app.run_system``, except that Ctrl-C stops the system on the master too.

    A task system outlives its application by design; one the user interrupts should not go on
    using the cluster, so it is cancelled (``app.cancel_system``) before the interrupt goes on.
    """
    handle = app.submit_system(system, progress)
    try:
        return handle.result()
    except KeyboardInterrupt:
        app.cancel_system(handle.system_id)
        raise


def cancel_all(futures: Iterable[concurrent.futures.Future[Any]]) -> int:
    """Cancel every future not yet done (queued tasks are dropped by the master); how many."""
    return sum(1 for future in futures if future.cancel())


def run_plain_tasks(
    app: ts.Application,
    tasks: list[ts.Task],
    on_result: Callable[[Any], list[ts.Task]],
    total: int,
    progress: ProgressCallback | None = None,
) -> None:
    """The plain-task way of doing what a task system does: push ``tasks``, hand each result to
    ``on_result`` as it comes, push the tasks it returns, until none is left.

    ``total`` is the number of tasks expected in all, for the progress display. A task's
    error is raised here (with its remote traceback); an error or Ctrl-C cancels what is left.
    """
    done = 0
    if progress is not None:
        progress(0, total)  # the display's clock starts now, not at the first result
    pending = set(app.push_tasks(tasks))
    try:
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, return_when=concurrent.futures.FIRST_COMPLETED
            )
            more: list[ts.Task] = []
            for future in finished:
                more += on_result(future.result())
                done += 1
            if progress is not None:
                progress(done, total)
            if more:
                pending |= set(app.push_tasks(more))
    finally:
        cancel_all(pending)


def run_serially(tasks: list[ts.Task], on_result: Callable[[Any], list[ts.Task]]) -> None:
    """The same in this process, one task after another: how a serial reference is made."""
    while tasks:
        tasks = [more for task in tasks for more in on_result(task())]
