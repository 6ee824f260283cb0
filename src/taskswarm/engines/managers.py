"""Task managers whose workers are an engine's: a Dask distributed cluster or a Ray cluster.

Data flow (the slave's loop thread, plus the engine client's own threads)::

    push_task --> queue --feed--> engine.submit(payload) ==> an engine worker runs it
    engine client thread --done--> mailbox --collect: outcomes fetched together--> task_finished
        --> results queue

A slave started with ``--manager dask`` or ``--manager ray`` is an ordinary slave to its master:
it registers, heartbeats and returns results in the same messages; only where its tasks run
differs. Its size is the engine's: as many tasks run at once as the engine has worker threads
(Dask) or CPUs (Ray), looked up again every ``SLOTS_REFRESH`` seconds so a cluster that grows
or shrinks is used as it is (``--workers N`` caps it at N).

How many tasks the engine is handed at once is measured, as a process pool's pipelines are:
one per slot while tasks are slow (what the slave still holds can go back to the master for
other slaves), a few per slot while they are short, so the engine never waits a round trip
between two (``depth``, from how long tasks took on the engine's workers). A task with a
timeout is handed over only into a free slot, so it starts at once and its timeout counts
from then.

Failures keep the process pool's meaning: a task that raised comes back with its exception
(the engine's worker encodes it exactly as a pool worker does: ``task.run_task_reporting``); a
run the engine lost (its worker or node died) is a crash, which the master runs again up to
``--max-crashes`` times; any other engine error fails the task with a TaskError saying why.
A timed-out or cancelled task's run is cancelled on the engine: Ray kills its worker process,
Dask cannot stop a running thread, so there the run goes on and its outcome is dropped.

One module on purpose: the Dask and Ray managers are the one ``EngineManager`` given a
different client (``clients``), and what is left here is that manager's flow, read as a whole.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigurationError, TaskError
from ..protocol.digests import Payload
from ..protocol.mailbox import Mailbox
from ..scheduling import load_plugin
from ..slave.contracts import TaskManagerContract
from ..slave.pacing import depth, folded
from ..slave.queued import QueuedManager, WorkItem
from ..task import Status, dump_error, error_text, format_remote_traceback
from .clients import DaskEngine, EngineClient, Outcome, RayEngine, Reported

__all__ = ["EngineManager", "DaskManager", "RayManager", "manager_for"]

log = logging.getLogger(__name__)

#: Seconds between two looks at how many workers the engine has.
SLOTS_REFRESH = 5.0
#: Seconds of work handed to each engine slot ahead, at the pace tasks have been running.
LOOKAHEAD_SECONDS = 0.05
#: Most tasks handed to the engine per slot.
MAX_DEPTH = 16


class _Lost(Exception):
    """A run whose outcome the engine could not give: lost, like a crashed worker's."""


@dataclass(eq=False)
class _Run:
    """A task handed to the engine: what the outcome is matched against when it comes."""

    item: WorkItem
    started: float
    handle: Any = None

    @property
    def deadline(self) -> float | None:
        return None if self.item.timeout is None else self.started + self.item.timeout


class EngineManager(QueuedManager):
    """ITaskManager over an engine's workers; see the module docstring for the flow."""

    #: The engine client this manager drives (a subclass names one).
    engine_class: type[EngineClient] = EngineClient

    def __init__(self, num_workers: int | None = None, engine: str | None = None) -> None:
        if num_workers is not None and num_workers < 0:
            raise ValueError("the number of workers cannot be negative")
        super().__init__()
        self._cap = num_workers
        self.engine = self.engine_class(engine, num_workers)
        self._running: dict[str, _Run] = {}
        self._mailbox: Mailbox | None = None
        self._lock = threading.Lock()  # between engine threads posting and stop() closing
        self._connected = self._started = False
        self._pace = 0.0
        self._slots, self._slots_at = 0, 0.0
        self.generation = 0  # bumped when the set of fds to poll changes (the slave re-polls)
        self.identity = self.address = ""

    # -- ITaskManager ------------------------------------------------------------------------------

    def init(self, identity: str, address: str) -> None:
        self.identity, self.address = identity, address

    def connect(self) -> None:
        """Reach the engine now (``start`` does it too): a master calls this before it serves,
        so an unreachable engine is reported at once, not after the first task."""
        if not self._connected:
            self.engine.connect()
            self._connected = True
            self._refresh_slots(force=True)

    def get_num_workers(self) -> int:
        if self._connected:
            self._refresh_slots()
        return self._slots if self._cap is None else min(self._cap, self._slots)

    def start(self) -> None:
        self.connect()
        with self._lock:
            self._mailbox = Mailbox()
        self._started = True
        self.generation += 1
        self._feed()

    def stop(self) -> None:
        self._started = False
        if self._connected:
            self._connected = False
            if self.engine.usable():
                self._forget(list(self._running.values()))
            try:
                self.engine.close()
            except Exception as exc:  # noqa: BLE001 - stopping goes on: nothing is left to do
                _warn(f"cannot close the connection to the {self.engine.describe()}", exc)
        self._running.clear()
        with self._lock:
            mailbox, self._mailbox = self._mailbox, None
        if mailbox is not None:
            mailbox.close()
            self.generation += 1

    def update_pool(self, _num_workers: int) -> None:
        """Cap how many tasks the engine runs at once (never more than it has workers)."""
        if _num_workers < 0:
            raise ValueError("the number of workers cannot be negative")
        self._cap = _num_workers
        self._feed()

    def wait_for_all(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._pending:
            if self._mailbox is None:
                return False  # not started: nothing could ever finish them
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            fd = self._mailbox.fileno()
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                self.collect(fd)
        return True

    def task_finished(
        self, task: WorkItem, result: Any, error: Any, detail: str | None = None
    ) -> None:
        """Queue ``(task_id, status, outcome, detail)`` as the process pool does: ``error`` is
        the Status (None for OK), ``result`` the pickled outcome, or for a crash what happened;
        ``detail`` the failure as text for people."""
        self._pending -= 1
        self._results.put((task.task_id, error or Status.OK, result, detail))

    # -- what the slave's loop calls ---------------------------------------------------------

    def fds(self) -> list[int]:
        return [self._mailbox.fileno()] if self._mailbox is not None else []

    @property
    def busy(self) -> int:
        return len(self._running)

    @property
    def pace(self) -> float:
        """Running average of how long tasks ran on the engine's workers, in seconds (0 until
        one has finished): the master rates slaves by it and steals only real work."""
        return self._pace

    def depth(self) -> int:
        """Tasks handed to the engine per slot: one while tasks are slow (or not yet timed),
        more while they are short, so no slot waits for the next task's round trip."""
        return depth(self._pace, LOOKAHEAD_SECONDS, MAX_DEPTH, unknown=1)

    def wanted(self) -> int:
        """Tasks this slave would like to hold: what the engine is handed, twice over."""
        return self.get_num_workers() * 2 * self.depth()

    def held(self) -> list[WorkItem]:
        """Every task pushed and not finished: those the engine runs first, then the rest."""
        return [run.item for run in self._running.values()] + list(self._queue)

    def next_deadline(self) -> float | None:
        deadlines = [run.deadline for run in self._running.values() if run.deadline is not None]
        return min(deadlines, default=None)

    def check_timeouts(self) -> None:
        """Cancel every run past its task's timeout; the task fails with TaskTimeout. (Called
        every turn of the slave's loop, so it also hands over what waited for the engine.)"""
        now = time.monotonic()
        expired = [
            run
            for run in self._running.values()
            if run.deadline is not None and run.deadline <= now
        ]
        if not expired:
            self._feed()
            return
        self._forget(expired)
        for run in expired:
            item = run.item
            self._timed_out(item, f" on the {self.engine.describe()}", "its run was cancelled")
        self._feed()

    def cancel(self, task_ids: set[str]) -> None:
        """Forget queued tasks and cancel their runs on the engine."""
        self._cancel_queued(task_ids)
        runs = [run for task_id, run in self._running.items() if task_id in task_ids]
        self._forget(runs)
        for run in runs:
            self.task_finished(run.item, b"", Status.CANCELLED)
        self._feed()

    def collect(self, fd: int) -> None:
        """Take the outcomes the engine's threads posted, then hand the engine more tasks."""
        mailbox = self._mailbox
        if mailbox is None or fd != mailbox.fileno():
            return
        ended: list[_Run] = []
        for posted in mailbox.drain():
            task_id = posted.item.task_id
            current = self._running.get(task_id)
            # The others timed out or were cancelled meanwhile: reported then.
            if current is not None and current is posted:
                del self._running[task_id]
                ended.append(current)
        outcomes = self._outcomes(ended)
        for run, outcome in zip(ended, outcomes, strict=True):
            settled: Reported | BaseException
            if isinstance(outcome, BaseException):
                settled = outcome
            else:
                seconds, settled = outcome
                self._pace = folded(self._pace, seconds)
            status, data, text = self._settle(run.item, settled)
            self.task_finished(run.item, data, None if status == Status.OK else status, text)
        self._feed()

    # -- internals -------------------------------------------------------------------------------

    def _refresh_slots(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._slots_at < SLOTS_REFRESH:
            return
        self._slots_at = now
        if not self.engine.usable():
            # No workers: the master keeps the tasks (as with no slave at all) until it is back.
            if self._slots:
                log.warning(
                    "the %s is unreachable; no tasks go to it until it is back (looking every %gs)",
                    self.engine.describe(),
                    SLOTS_REFRESH,
                )
            self._slots = 0
            self.engine.recover()
            return
        try:
            # At least one, so that an engine that scales on demand (Dask's adaptive
            # clusters, Ray's autoscaler) is given the task that makes it grow.
            slots = max(1, self.engine.slots())
        except Exception as exc:  # noqa: BLE001 - keep the last count; the engine may be back
            _warn("cannot count the engine's workers", exc)
            return
        if not self._slots:
            log.info("the %s is reachable, with %d workers", self.engine.describe(), slots)
        self._slots = slots

    def _feed(self) -> None:
        if not self._started or not self.engine.usable():
            return
        slots = self.get_num_workers()
        room = slots * self.depth() - len(self._running)
        while room > 0 and self._queue:
            if self._queue[0].timeout is not None and len(self._running) >= slots:
                break  # it waits for a free slot: its timeout must count from its start
            item = self._queue.popleft()
            run = _Run(item, time.monotonic())
            self._running[item.task_id] = run
            try:
                run.handle = self.engine.submit(_portable_item(item), self._poster(run))
            except Exception as exc:  # noqa: BLE001 - the engine refused it: a lost run
                del self._running[item.task_id]
                _warn(f"the engine refused task {item.task_id}", exc)
                self.task_finished(item, f"the engine refused it: {exc}", Status.CRASH)
            room -= 1

    def _poster(self, run: _Run) -> Callable[[], None]:
        """The callback an engine thread calls when a run has ended: into the mailbox, which
        wakes the slave's loop (unless the manager stopped meanwhile)."""

        def post() -> None:
            with self._lock:
                if self._mailbox is not None:
                    self._mailbox.post(run)

        return post

    def _outcomes(self, runs: list[_Run]) -> list[Outcome]:
        if not runs:
            return []
        try:
            return self.engine.outcomes([run.handle for run in runs])
        except Exception as exc:  # noqa: BLE001 - the engine went away: the runs are lost
            _warn("cannot fetch outcomes from the engine", exc)
            lost = _Lost(f"its outcome could not be fetched: {type(exc).__name__}: {exc}")
            return [lost] * len(runs)

    def _settle(
        self, item: WorkItem, outcome: Reported | BaseException
    ) -> tuple[str, bytes | str, str | None]:
        """``(status, outcome, text)`` as a pool worker reports it, from what the engine
        returned."""
        if not isinstance(outcome, BaseException):
            return outcome
        if isinstance(outcome, _Lost) or self.engine.is_crash(outcome):
            return Status.CRASH, f"the {self.engine.describe()} lost it: {outcome}", None
        hint = ""
        if isinstance(outcome, ImportError):
            hint = (
                "; every worker of the engine needs taskswarm (and what the task imports) installed"
            )
        error = TaskError(
            f"the {self.engine.describe()} could not run task {item.task_id}: "
            f"{type(outcome).__name__}: {outcome}{hint}",
            type(outcome).__qualname__,
            format_remote_traceback(outcome),
        )
        return Status.ERROR, dump_error(error), error_text(error)

    def _forget(self, runs: list[_Run]) -> None:
        """Drop runs whose outcome is no longer wanted, and cancel them on the engine."""
        for run in runs:
            self._running.pop(run.item.task_id, None)
        handles = [run.handle for run in runs if run.handle is not None]
        if handles:
            try:
                self.engine.cancel(handles)
            except Exception as exc:  # noqa: BLE001 - their outcomes are ignored anyway
                _warn("cannot cancel runs on the engine", exc)


def _portable(payload: Any) -> Any:
    """A task as the engine ships it to its worker: a received payload pickles as its bytes
    and digest (checked there, right before it is unpickled), bytes made here as they are."""
    return payload if type(payload) is Payload else bytes(payload)


def _portable_item(item: WorkItem) -> Any:
    """A task with the results it takes as inputs (``run_timed`` unpacks them), or alone."""
    if item.inputs is None:
        return _portable(item.payload)
    return _portable(item.payload), [[dep, _portable(data)] for dep, data in item.inputs]


def _warn(what: str, exc: BaseException) -> None:
    log.warning("%s: %s: %s", what, type(exc).__name__, exc)


class DaskManager(EngineManager):
    """Runs a slave's tasks on a Dask distributed cluster (``--engine tcp://HOST:PORT``)."""

    engine_class = DaskEngine


class RayManager(EngineManager):
    """Runs a slave's tasks on a Ray cluster (``--engine ray://HOST:PORT``, ``auto``, or none:
    a Ray started on this machine)."""

    engine_class = RayEngine


def manager_for(
    name: str, workers: int | None, engine: str | None, memory_limit: str | None = None
) -> str | TaskManagerContract:
    """What a slave is given for ``--manager NAME [--engine ADDRESS]``: an engine's task manager,
    built and connected (so an unreachable engine is reported before the node starts), a
    process pool built with ``--worker-memory-limit``, or the name of any other manager.
    ``--engine`` or ``--worker-memory-limit`` with a manager that takes none is refused."""
    cls = load_plugin("taskswarm.managers", name)
    if memory_limit is not None:
        from ..slave.process_pool import ProcessPoolManager

        if not (isinstance(cls, type) and issubclass(cls, ProcessPoolManager)):
            raise ConfigurationError(
                f"--worker-memory-limit limits the process pool's workers (--manager "
                f"process-pool); {name!r} runs tasks elsewhere"
            )
        return cls(workers, memory_limit=memory_limit)
    if isinstance(cls, type) and issubclass(cls, EngineManager):
        manager = cls(workers, engine=engine)
        manager.connect()
        return manager
    if engine is not None:
        raise ConfigurationError(
            f"--engine {engine} needs a task manager that runs tasks on an engine "
            f"(--manager dask or --manager ray), not {name!r}"
        )
    return name
