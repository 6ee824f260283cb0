"""``taskswarm run``: a program run against a cluster, from its first line to Ctrl-C.

What the command does around the program itself::

    APP.py[:NODE] | -m MODULE[:NODE]
        -> run as __main__ (its connections watched: RunWatch)
        -> then the ApplicationNode it defines (or the one NODE names), unless it ran one
        -> exit status: the program's; 1 when it neither connected nor defined a node to run
    Ctrl-C (or SIGTERM) -> KeyboardInterrupt in the program
        -> every connection it leaves (or still holds) cancels the task systems it sent and
           the tasks it waits for -> a line per cancelled thing -> exit 128 + signal (130)

A file may define several ApplicationNode subclasses (Concurrent's samples chose one in their
config): ``app.py:ClassName`` names the one to run, and naming none is an error that lists them.
"""

from __future__ import annotations

import logging
import runpy
import signal
import sys
import weakref
from pathlib import Path
from typing import Any

import click

from ..client.application import Application
from ..client.watching import ApplicationWatcher, watching
from .progress import ProgressBoard, active, installed

__all__ = ["RunWatch", "interrupt_once", "run_app", "run_target", "split_node"]

log = logging.getLogger(__name__)


def split_node(target: str, is_module: bool) -> tuple[str, str | None]:
    """``app.py:Node`` -> ``("app.py", "Node")``; a target without a node name keeps None.

    A path may hold a colon itself, so a file's name is split only when the whole of it is
    not a file and the part before the last colon is one.
    """
    head, sep, node = target.rpartition(":")
    if not sep or not node.isidentifier():
        return target, None
    if is_module or (not Path(target).is_file() and Path(head).is_file()):
        return head, node
    return target, None


class RunWatch(ApplicationWatcher):
    """What the program did with the cluster: how many connections it opened, which are still
    open, and what Ctrl-C cancelled (a line each, printed once the run's display is down)."""

    def __init__(self) -> None:
        self.connections = 0
        self.live: weakref.WeakSet[Application] = weakref.WeakSet()
        self.cancelled: list[str] = []
        self._seen: set[str] = set()

    def opened(self, app: Application) -> None:
        self.connections += 1
        self.live.add(app)

    def interrupted(self, app: Application) -> None:
        """Cancel what ``app`` sent and still waits for, and note how far each system got."""
        try:
            systems, tasks = app.cancel_all()
        except Exception:  # noqa: BLE001 - a broken connection must not hide the interrupt
            log.debug("could not cancel the work of %s", app.client_id, exc_info=True)
            return
        board = active()
        for handle in systems:
            if handle.system_id in self._seen:
                continue
            self._seen.add(handle.system_id)
            meter = board.cancel(handle.system_id) if board is not None else None
            meter = meter or handle.meter
            failed = f", {meter.tasks_failed} failed" if meter.tasks_failed else ""
            self.cancelled.append(
                f"cancelled task system {meter.label} at {meter.done}/{meter.total or '?'} "
                f"tasks done{failed} (id {handle.system_id})"
            )
        if tasks:
            self.cancelled.append(f"cancelled {tasks} task{'s' if tasks != 1 else ''} not done")

    def interrupt_all(self) -> None:
        """Cancel the work of connections the program left open, and close them so the
        cancellations leave before the process does."""
        for app in list(self.live):
            self.interrupted(app)
            app.close()

    def close_all(self) -> None:
        """Close the connections the program left open once it is done: their master (an
        embedded one stops next) must not be seen going away by a connection still listening.
        Closing cancels nothing: a task system sent lives on."""
        for app in list(self.live):
            app.close()

    def report(self, signum: int) -> None:
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        click.echo(f"interrupted ({name})", err=True)
        for line in self.cancelled or ["nothing was running on the cluster"]:
            click.echo(f"  {line}", err=True)


#: The signal that interrupted the run (SIGINT unless SIGTERM came first), once one has.
_interrupted_by: list[int] = []


def interrupt_once(signum: int, frame: Any) -> None:
    """The first SIGINT/SIGTERM interrupts the program; later ones are told to wait, so the
    cancelling and the embedded cluster's shutdown (a few seconds at most) are not cut short
    and leave no process behind."""
    if _interrupted_by:
        print("taskswarm run: stopping; wait a moment", file=sys.stderr, flush=True)
        return
    _interrupted_by.append(signum)
    raise KeyboardInterrupt


def interrupted_exit_code() -> int:
    """What the shell expects of a program a signal stopped: 128 + the signal's number."""
    return 128 + (_interrupted_by[0] if _interrupted_by else signal.SIGINT)


def run_app(target: str, is_module: bool, node: str | None, no_progress: bool) -> int:
    """Run the program with its task systems on one progress board (stderr) and its
    connections watched; the exit status it should end with."""
    watch = RunWatch()
    board = None if no_progress else ProgressBoard()
    try:
        with watching(watch):
            if board is None:
                code = run_target(target, is_module, node, watch)
            else:
                with installed(board):
                    code = run_target(target, is_module, node, watch)
        return code
    except KeyboardInterrupt:
        watch.interrupt_all()
        if board is not None:
            board.close()
        watch.report(_interrupted_by[0] if _interrupted_by else signal.SIGINT)
        return interrupted_exit_code()
    finally:
        watch.close_all()
        if board is not None:
            board.close()


def run_target(
    target: str, is_module: bool, node: str | None = None, watch: RunWatch | None = None
) -> int:
    """Run the app as ``__main__``; then run the ApplicationNode it defines (or ``node``), if it
    has not run one itself. With ``watch``, a program that sent nothing is an error."""
    try:
        if is_module:
            namespace = runpy.run_module(target, run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(target).resolve().parent))
            namespace = runpy.run_path(target, run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    chosen = _choose_node(target, namespace, node)
    if chosen is not None and not getattr(chosen, "_taskswarm_ran", False):
        instance = chosen()
        instance.run()
        if watch is not None and instance.handle is None and not instance.tasks_sent:
            raise click.ClickException(
                f"nothing ran: {chosen.__name__}.get_task_system returned None and its "
                "start_processing pushed no task (check the hooks' names and signatures)"
            )
        return 0
    if watch is not None and chosen is None and watch.connections == 0:
        raise click.ClickException(
            f"nothing ran: {target} defines no ApplicationNode subclass and did not connect to "
            "the cluster; define one (taskswarm run runs it), or connect with ts.connect()"
        )
    return 0


def _choose_node(target: str, namespace: dict[str, Any], node: str | None) -> type | None:
    """The ApplicationNode class to run: the one named, else the only one the file defines
    (one it imported is not its own); several and none named is an error that lists them."""
    from ..client.appnode import ApplicationNode

    def is_node(value: Any) -> bool:
        return (
            isinstance(value, type)
            and issubclass(value, ApplicationNode)
            and value is not ApplicationNode
        )

    defined = [v for v in namespace.values() if is_node(v) and v.__module__ == "__main__"]
    if node is not None:
        chosen = namespace.get(node)
        if not is_node(chosen):
            known = ", ".join(sorted(v.__name__ for v in defined)) or "none"
            raise click.ClickException(
                f"{target} has no ApplicationNode subclass named {node!r} "
                f"(the ones it defines: {known})"
            )
        return chosen
    if len(defined) > 1:
        if any(getattr(v, "_taskswarm_ran", False) for v in defined):
            return None  # the file chose and ran one itself
        names = sorted(v.__name__ for v in defined)
        raise click.ClickException(
            f"{target} defines {len(names)} ApplicationNode subclasses ({', '.join(names)}); "
            f"name the one to run: taskswarm run {target}:{names[0]}"
        )
    return defined[0] if defined else None
