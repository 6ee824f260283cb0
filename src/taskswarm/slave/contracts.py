"""What a slave needs of its task manager, as a Protocol, and a base class with its defaults.

The seed's ``ITaskManager`` (``taskswarm.api``) is the seed's user-facing interface, kept with
its names. It is not all a slave calls: the slave runs one loop over its master's socket *and
the task manager's file descriptors*, so a task manager must say which descriptors to poll,
collect what is ready on them, hand back tasks it has not started, and report what it holds.
This module states that contract exactly, so that a task manager from another package can be
written against it alone::

    Slave(..., manager=NAME)  ->  load_plugin("taskswarm.managers", NAME)(workers)
    init -> start -> loop: poll(master socket + fds()) -> collect(fd) -> check_timeouts
                           -> drain get_results_queue() -> RESULTS to the master
    master TASKS -> push_tasks      CANCEL -> cancel / cancel_unstarted    STEAL -> release
           SHIP -> (unpacked by the slave) code_shipped
    stop: take_queued (handed back), wait while busy, stop

Everything is called from the slave's one loop thread, never concurrently. A task reaches the
manager as a ``WorkItem``: its id and its payload, the task still pickled and not yet checked;
run it with ``taskswarm.task.run_task_reporting(payload)``, in whatever process or thread, which
checks the payload's digest, unpickles and runs it, and returns ``(status, outcome, text)``
ready to report. A task manager never unpickles a payload itself.

``TaskManagerBase`` gives the optional members documented defaults; a task manager may
inherit it and write the rest. The in-tree ones (``process_pool.ProcessPoolManager``, the
engine managers) derive from it through ``queued.QueuedManager``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

__all__ = ["ResultsQueue", "TaskManagerBase", "TaskManagerContract", "TaskOutcome", "WorkItem"]

_log = logging.getLogger(__name__)


@dataclass(slots=True)
class WorkItem:
    """A task as a slave holds it: its id and its still-pickled payload."""

    task_id: str
    #: a ``taskswarm.protocol.digests.Payload`` as received (its bytes unchecked, with the
    #: digest its signed header gave), or bytes made on this host; ``run_task_reporting``
    #: checks the former right before it unpickles it, wherever it runs (a Payload pickles
    #: as its bytes and digest)
    payload: Any
    timeout: float | None = None
    #: The results of the tasks it takes as inputs, ``(task id, payload)`` each (a Payload as
    #: received, checked where they are unpickled); None for most tasks, which take none.
    inputs: list[tuple[str, Any]] | None = None
    cancelled: bool = False  # cancelled while in a worker's pipeline: its outcome is dropped


#: One finished task as the slave reads it from the results queue: ``(task_id, status,
#: outcome, text)``. ``status`` is a ``taskswarm.task.Status``; ``outcome`` the pickled result
#: or exception (bytes, sent on as they are), or for ``Status.CRASH`` a short text saying how
#: the worker died; ``text`` the failure as text for people (None for OK), which the master
#: shows without unpickling anything. ``run_task_reporting`` returns the last three. A manager
#: with worker processes may add ``(worker, began, ended)``: the worker's pid and when the task
#: ran (Unix time), which the master's task stream shows (``Outcome.worker``).
TaskOutcome = tuple[str, str, Any, str | None] | tuple[str, str, Any, str | None, int, float, float]


@runtime_checkable
class ResultsQueue(Protocol):
    """The queue the slave reads finished tasks from (``queue.SimpleQueue`` will do)."""

    def empty(self) -> bool: ...

    def get_nowait(self) -> TaskOutcome: ...


@runtime_checkable
class TaskManagerContract(Protocol):
    """Everything a slave calls on its task manager, and when.

    A task manager runs the tasks a slave is sent and hands their outcomes back. The slave
    builds it by name through the ``taskswarm.managers`` entry points, calling the class with
    one argument, the ``--workers`` asked for (None: the manager decides); a caller may also
    build one and pass it to ``Slave(manager=...)``. Every call comes from the slave's one
    loop thread; none may block for long (the slave's heartbeats wait on it).

    Every task pushed must come out of ``get_results_queue`` exactly once (finished, failed,
    crashed, timed out or cancelled), unless it is given back by ``release`` or
    ``take_queued``; the master requeues what a slave loses.

    ``taskswarm.api.ITaskManager`` is the seed's interface for the same part; a class may
    implement both, as the in-tree ones do, but only this contract is needed to plug in. The
    members marked *default* are provided by ``TaskManagerBase``.
    """

    # -- lifecycle ------------------------------------------------------------------------------

    def init(self, identity: str, address: str) -> None:
        """Called once, right after construction: the slave's id and its master's address."""
        ...

    def start(self) -> None:
        """Start running tasks (workers, threads, a connection): called once, as the slave's
        loop starts. Tasks pushed before wait."""
        ...

    def stop(self) -> None:
        """Stop everything started, leaving no process or thread behind; called once as the
        slave closes (after ``take_queued`` and a grace period while ``busy``). Safe twice."""
        ...

    def get_num_workers(self) -> int:
        """How many tasks run at once: sent to the master, which rates the slave by it and
        sends about twice as many (``wanted`` may ask for more)."""
        ...

    def update_pool(self, _num_workers: int) -> None:
        """Resize to this many workers while running (the master's RESIZE), losing and
        repeating no task; ``get_num_workers`` says the new size from now on."""
        ...

    # -- polling --------------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """*Default 0.* A number that changes whenever ``fds()`` would return another set: the
        slave builds its poller again then."""
        ...

    def fds(self) -> Iterable[int]:
        """The file descriptors the slave polls for reading beside its master's socket; when
        one is readable the slave calls ``collect(fd)``. A manager running tasks in threads
        can give the read end of a pipe its threads write a byte to."""
        ...

    def collect(self, fd: int) -> None:
        """``fd`` (one of ``fds()``) is readable: read it and put what finished on the results
        queue; a good moment to start queued tasks."""
        ...

    def next_deadline(self) -> float | None:
        """*Default None.* When ``check_timeouts`` has something to do (``time.monotonic()``),
        such as the earliest running task's timeout; the slave's poll wakes up by then."""
        ...

    def check_timeouts(self) -> None:
        """*Default: nothing.* Called every turn of the slave's loop: stop tasks past their
        ``WorkItem.timeout`` (they fail with ``taskswarm.TaskTimeout``) and do timed work."""
        ...

    # -- tasks in -------------------------------------------------------------------------------

    def push_task(self, task: WorkItem) -> None:
        """Take one task (from the master's TASKS); returns at once."""
        ...

    def push_tasks(self, tasks: list[WorkItem]) -> None:
        """*Default: ``push_task`` for each.* Take a batch at once, in order."""
        ...

    def cancel(self, task_ids: set[str]) -> None:
        """Stop these tasks, queued or running (ids not held are ignored); each one held
        comes out of the results queue as ``Status.CANCELLED`` with an empty outcome."""
        ...

    def cancel_unstarted(self, task_ids: set[str]) -> None:
        """*Default: ``cancel``.* A soft cancel (``Future.cancel()`` crossing the task on its
        way here): cancel these unless one already runs; a running one finishes."""
        ...

    def code_shipped(self, paths: list[str]) -> None:
        """*Default: a warning that tasks here cannot import shipped code.* An application
        shipped code (``app.upload_file``), which the slave unpacked: ``paths`` are folders,
        the latest first, that every task pushed from now on must find on its ``sys.path``
        (ahead of what is installed), replacing any earlier version of the same modules."""
        ...

    # -- tasks out ------------------------------------------------------------------------------

    def get_results_queue(self) -> ResultsQueue:
        """Where finished tasks wait for the slave, as ``TaskOutcome`` tuples; the slave
        drains it every turn of its loop and sends what it found as one message."""
        ...

    def take_started(self) -> list[str]:
        """*Default ``[]``.* Ids of tasks that began running since the last call: their owners'
        ``Future.running()`` turns True. Optional: without it they turn True at the result."""
        ...

    def release(self, count: int) -> list[WorkItem]:
        """*Default ``[]``.* Give back up to ``count`` tasks no worker has started (the master
        moves them to idle slaves: work stealing); they are no longer held here."""
        ...

    def take_queued(self) -> list[WorkItem]:
        """*Default ``[]``.* The slave is stopping: give back every task not started, for the
        master to run elsewhere; they are no longer held here."""
        ...

    # -- what the master is told ----------------------------------------------------------------

    @property
    def busy(self) -> int:
        """How many tasks run now (truthy while any does): a stopping slave waits for them."""
        ...

    def held(self) -> list[WorkItem]:
        """Every task pushed and not finished nor given back, running ones first: a slave that
        registers again tells the master, which leaves them here instead of re-running them."""
        ...

    def wanted(self) -> int:
        """*Default 0.* How many tasks to hold to keep every worker busy; the slave asks the
        master for at least two per worker whatever this says."""
        ...

    @property
    def pace(self) -> float:
        """*Default 0.0 (not known).* Running average of task durations in seconds: the
        master's ``throughput`` strategy rates by it and stealing takes only real work."""
        ...


class TaskManagerBase:
    """Documented defaults for the optional members of ``TaskManagerContract``.

    A task manager from another package may inherit this and write the required members:
    ``init``, ``start``, ``stop``, ``get_num_workers``, ``update_pool``, ``fds``, ``collect``,
    ``push_task``, ``cancel``, ``get_results_queue``, ``busy`` and ``held``. The defaults
    describe a manager that runs tasks as they come and keeps no queue of its own: nothing to
    give back, no timeouts of its own, no say in how many tasks it is sent, an unknown pace.
    """

    #: Changes when ``fds()`` would return another set (a subclass assigns its own).
    generation: int = 0

    if TYPE_CHECKING:  # required of a subclass; the defaults below call them

        def push_task(self, task: WorkItem) -> None: ...

        def cancel(self, task_ids: set[str]) -> None: ...

    def push_tasks(self, tasks: list[WorkItem]) -> None:
        """One ``push_task`` per task, in order."""
        for task in tasks:
            self.push_task(task)

    def cancel_unstarted(self, task_ids: set[str]) -> None:
        """No way to tell started from unstarted: cancel them all."""
        self.cancel(task_ids)

    def next_deadline(self) -> float | None:
        """No deadline of its own."""
        return None

    def check_timeouts(self) -> None:
        """Nothing timed."""

    def code_shipped(self, paths: list[str]) -> None:
        """Where tasks run is this manager's business: it is warned, once, that they cannot
        import shipped code (a task that needs it fails with ModuleNotFoundError)."""
        if not getattr(self, "_warned_shipped", False):
            self._warned_shipped = True
            _log.warning(
                "code was shipped to this slave, but its task manager %s does not put it on "
                "its tasks' import path: tasks that import it fail",
                type(self).__name__,
            )

    def take_started(self) -> list[str]:
        """Not reported: Futures turn running when their result comes."""
        return []

    def release(self, count: int) -> list[WorkItem]:
        """Nothing to give back: no task is stolen from this slave."""
        return []

    def take_queued(self) -> list[WorkItem]:
        """Nothing to hand back: the tasks held finish, or the master requeues them."""
        return []

    def wanted(self) -> int:
        """No say: the slave asks for two tasks per worker."""
        return 0

    @property
    def pace(self) -> float:
        """Not known."""
        return 0.0
