"""What the samples share: cluster options, the connection, warm-up, the summary table, and
running a sample file as ``__main__`` with its classes still travelling by reference.

Each sample stays a readable program of its own; only the parts that would otherwise be copied
word for word into every one of them live here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import importlib
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import taskswarm as ts
from taskswarm.progress import ProgressCallback

__all__ = [
    "add_cluster_options",
    "aligned",
    "cancel_all",
    "cluster_size",
    "connect",
    "non_negative_int",
    "positive_float",
    "positive_int",
    "rescaled",
    "run_as_main",
    "run_plain_tasks",
    "run_serially",
    "run_system",
    "warm_up",
]


# -- command line -------------------------------------------------------------------------------


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``1_000_000`` and ``1e6`` both accepted)."""
    try:
        value = int(text.replace("_", ""))
    except ValueError:
        try:
            number = float(text)
        except ValueError:
            number = 0.5
        if not number.is_integer():
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        value = int(number)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of 0 or more (a seed, say)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be 0 or more")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number greater than 0")
    return value


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


def connect(args: argparse.Namespace) -> contextlib.AbstractContextManager[ts.Application]:
    """The cluster the options name, or an embedded one for the length of the run."""
    return ts.connect_or_start(
        master=args.master, key_file=args.key_file, slaves=args.slaves, workers=args.workers
    )


def aligned(rows: Sequence[tuple[str, str]]) -> list[str]:
    """``name: value`` lines with the values in one column: a summary a person can scan and a
    test (or ``grep``) can match line by line."""
    width = max(len(name) for name, _ in rows)
    return [f"{name + ':':<{width + 1}} {value}" for name, value in rows]


# -- the cluster --------------------------------------------------------------------------------


def cluster_size(app: ts.Application) -> tuple[int, int]:
    """(active slaves, their workers) as the master reports them right now."""
    slaves = [s for s in app.status().get("slaves", []) if s.get("state") == "active"]
    return len(slaves), sum(int(s.get("workers", 0) or 0) for s in slaves)


def _import(module: str) -> int:
    importlib.import_module(module)
    return os.getpid()


def warm_up(app: ts.Application, module: str, workers: int) -> None:
    """Have the workers import the sample (and NumPy with it) before the clock starts, so the
    timing measures the work and not interpreter start-up; two tasks a worker reach them all."""
    futures = app.push_tasks(ts.FunctionTask(_import, module) for _ in range(2 * max(1, workers)))
    for future in futures:
        future.result()


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


# -- running a sample file ----------------------------------------------------------------------


def run_as_main(module: str, file: str, main: Callable[[], int]) -> int:
    """Run ``main`` from the importable module when the file being run *is* that module.

    Run as a script (``python -m`` or a file path), a sample's classes live in ``__main__`` and
    cloudpickle would ship them by value in every task. Importing the module under its real
    name makes them travel by reference instead -- smaller, and the same code the workers
    import. If the name resolves to a different file (another checkout), the file's own
    ``main`` runs, so what runs is always what was asked for.
    """
    try:
        imported = importlib.import_module(module)
        same_file = Path(imported.__file__ or "").resolve() == Path(file).resolve()
    except (ImportError, OSError):
        return main()
    return imported.main() if same_file else main()
