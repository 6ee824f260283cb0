"""The application node's public face: ``Application``, what a program calls to use a cluster.

``ts.connect(...)`` (or ``cluster.connect()``) returns one. Through it a program submits tasks
and plain calls (``submit``, ``push_tasks``, ``executor``), sends task systems and collects
their results (``submit_system``, ``run_system``, ``system_result``), stops work (``cancel``,
``cancel_system``) and asks the master about the cluster (``status``). Tasks are pickled in the
caller's thread, so a task that cannot be pickled fails at ``submit`` with the reason, not later
on another node.

What it stands on, each in a module of its own: the link to the master (``link.py``: the I/O
thread, the socket, reconnects), the ledger of what it still waits for (``ledger.py``), how
tasks are pickled and handed to the link (``sending.py``), the Futures, handles and Executor
it returns (``handles.py``), and the watchers that ``taskswarm run`` uses to follow a
program's connections (``watching.py``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from typing import Any, cast

from ..errors import ClientClosed, MasterUnreachable, TaskswarmError, UnknownTaskSystem
from ..protocol import pickling, sharing
from ..protocol.codec import Kind, too_large
from ..protocol.keys import ClusterKeys, as_keys, load_keys
from ..protocol.messages import (
    Ack,
    Cancel,
    Resize,
    Status,
    StatusReply,
    System,
    SystemQuery,
)
from ..protocol.transport import check_address, unreachable_message, unresolvable
from ..system import system_name
from ..task import FunctionTask, Task
from . import html, notebook, shipping
from .handles import SystemHandle, TaskFuture, TaskswarmExecutor
from .ledger import Ledger, TaskFinished
from .link import MasterLink
from .meter import ProgressCallback
from .sending import Sender
from .watching import ApplicationWatcher as ApplicationWatcher
from .watching import watchers
from .watching import watching as watching

__all__ = ["Application", "connect"]


class Application:
    """A connection to a master. Thread-safe; close it (or use ``with``) when done."""

    def __init__(
        self,
        address: str,
        key: bytes | ClusterKeys,
        *,
        connect_timeout: float = 10.0,
        master_timeout: float = 5.0,
        shared_memory: object = None,
        ship: Iterable[str | os.PathLike[str]] = (),
    ) -> None:
        """``shared_memory``: task payloads of this size or more (``"256KiB"``, bytes; True for
        the default, False or ``"off"`` for never; None: as ``TASKSWARM_SHARED_MEMORY`` says,
        else off) go to the workers through shared memory segments instead of messages (see
        ``taskswarm.protocol.sharing``). Only for a cluster whose slaves run on this host.
        ``ship``: paths given to ``upload_file`` once connected, before this returns."""
        self.address = check_address(address)
        if unresolvable(address) is not None:
            # ZeroMQ would retry the name for ever in silence: say so now, not after a timeout.
            raise MasterUnreachable(unreachable_message(address, 0.0))
        #: This application's id: tasks carry it (``Task.client_id``), the master knows it by it.
        self.client_id = uuid.uuid4().hex
        self.master_timeout = master_timeout
        self._ledger = Ledger()
        keys = as_keys(key)
        if shared_memory is None:
            shared_memory = os.environ.get(sharing.ENVVAR)
        #: How this application shares big payloads (None: it sends them in messages).
        self.sharing = sharing.Sharing.of(keys.hmac, shared_memory)
        self._link = MasterLink(self.address, keys, self.client_id, self._ledger, master_timeout)
        self._sender = Sender(
            self.client_id, self._link, self._ledger, self.sharing, self._cancel_queued
        )
        self._link.open(connect_timeout, owner=self)
        try:
            for path in ship:
                self.upload_file(path)
        except BaseException:
            self.close()
            raise
        for watcher in watchers():
            watcher.opened(self)

    @property
    def keep_results(self) -> bool:
        """Whether big results (64 KiB or more) stay on the slaves that made them until a
        Future's ``result()`` fetches them, and go from slave to slave to the tasks that take
        them (the default, as Dask and Ray do); False: every result comes here at once.
        Tasks whose ``finished`` does something, and a connection with ``on_task_finished``,
        always get theirs at once."""
        return self._sender.keep_results

    @keep_results.setter
    def keep_results(self, keep: bool) -> None:
        self._sender.keep_results = bool(keep)

    @property
    def on_task_finished(self) -> TaskFinished | None:
        """Called as ``(task, result, error)`` after each plain task's Future is resolved, on
        the connection's I/O thread (the callback style, ``ApplicationNode``, uses it)."""
        return self._ledger.on_task_finished

    @on_task_finished.setter
    def on_task_finished(self, callback: TaskFinished | None) -> None:
        self._ledger.on_task_finished = callback

    # -- tasks -----------------------------------------------------------------------------------

    def submit(
        self,
        fn: Task | Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> Future[Any]:
        """Run a task (or ``fn(*args, **kwargs)``) on the cluster; returns its Future.

        ``timeout`` (seconds) sets the task's ``Task.timeout``: past it, its worker is replaced
        and the Future fails with TaskTimeout. (To pass a ``timeout`` argument to ``fn`` itself,
        wrap it: ``submit(ts.FunctionTask(fn, timeout=5))``.)
        """
        if isinstance(fn, Task):
            if args or kwargs:
                raise TypeError("submit(task) takes no arguments; give them to the task")
            task = fn
        elif callable(fn):
            task = FunctionTask(fn, *args, **kwargs)
        else:
            raise TypeError(f"submit() needs a ts.Task or a callable, not {type(fn).__name__}")
        if timeout is not None:
            task.timeout = timeout
        return self.push_tasks([task])[0]

    def push_task(self, task: Task) -> Future[Any]:
        return self.push_tasks([task])[0]

    def push_tasks(self, tasks: Iterable[Task]) -> list[Future[Any]]:
        """Send tasks in batches as they are pickled; one Future per task, in order.

        ``tasks`` may be a generator: a million tasks start running while later ones are still
        being made. If one cannot be sent, the ones before it are cancelled and the error says
        which task and why: all or none.

        A task may take Futures of this connection's earlier tasks among its arguments (at any
        depth): it runs once they are done, with their results in their places, and fails with
        ``ts.DependencyError`` (caused by the input's error) if one of them fails.
        """
        self._link.check_open()
        return cast("list[Future[Any]]", self._sender.push(tasks))  # TaskFutures, as typed

    def _withdraw(self, futures: Sequence[TaskFuture]) -> None:
        self._sender.withdraw(futures)

    def cancel(self, future_or_task_id: Future[Any] | str) -> bool:
        """Stop a task, queued or running (its worker is replaced); False if already done.

        Unlike ``Future.cancel()``, which as in ``concurrent.futures`` leaves a running task
        alone, this stops running work on purpose: its Future ends cancelled.
        """
        task_id = str(getattr(future_or_task_id, "task_id", future_or_task_id))
        (entry,) = self._ledger.take([task_id])
        if entry is None or not entry[1].stop():
            return False
        if not self._link.closed:
            self._link.post(Kind.CANCEL, Cancel(tasks=[task_id]))
        return True

    def cancel_queued(self, futures: Iterable[Future[Any]], timeout: float = 10.0) -> int:
        """Cancel those of ``futures`` the master has not handed to a slave yet; the rest run
        to the end (``Executor.shutdown(cancel_futures=True)``). Returns how many it cancelled.

        The master decides, not this process's view of the futures: tasks just sent are still
        pending here while some of them already run there.
        """
        waiting = {f.task_id: f for f in futures if isinstance(f, TaskFuture) and not f.done()}
        if not waiting:
            return 0
        try:
            cancel = Cancel(tasks=list(waiting), soft=True)
            reply = self._link.request(Kind.CANCEL, cancel, timeout, answer=Ack)
        except (TimeoutError, ClientClosed):
            # No answer: cancel what looks pending from here, as Future.cancel() does.
            return sum(1 for future in waiting.values() if future.cancel())
        cancelled = 0
        for task_id in reply.tasks or ():
            future = waiting.get(task_id)
            self._ledger.take([task_id])
            if future is not None and future.stop():
                cancelled += 1
        return cancelled

    def cancel_system(self, system_id: str) -> None:
        """Stop a task system: its tasks are cancelled and its result is a TaskSystemError.

        ``system_id`` may be the first characters of the id, as long as they begin no other
        system's id the master knows: UnknownTaskSystem (AmbiguousTaskSystem, listing them)
        says when they name none (several)."""
        self._link.check_open()
        system_id, _ = self._look_up(str(system_id))
        self._link.post(Kind.CANCEL, Cancel(system_id=system_id))

    def cancel_pending(self, futures: Iterable[Future[Any]]) -> None:
        """``Future.cancel()`` on each of many, told to the master in one message (a map whose
        caller stopped reading: thousands of futures at once)."""
        task_ids = []
        for future in futures:
            if isinstance(future, TaskFuture):
                if future._cancel(running_too=False):
                    task_ids.append(future.task_id)
            else:
                future.cancel()
        if not task_ids:
            return
        self._ledger.take(task_ids)
        if not self._link.closed:
            self._link.post(Kind.CANCEL, Cancel(tasks=task_ids, soft=True))

    def _abandon(self, future: TaskFuture) -> None:
        """No coroutine awaits ``future`` any more (``taskswarm.client.aio``): its task is
        stopped, queued or running, unless a task of this connection takes it as an argument
        and so still needs its result."""
        if not self._ledger.takes(future.task_id):
            self.cancel(future)

    def _cancel_queued(self, task_id: str) -> None:
        """``Future.cancel()`` of a task not yet running: the master drops it if it still has it
        queued, and leaves it alone if it has meanwhile handed it to a slave (``soft``)."""
        self._ledger.take([task_id])
        if not self._link.closed:
            self._link.post(Kind.CANCEL, Cancel(tasks=[task_id], soft=True))

    def executor(self) -> TaskswarmExecutor:
        """A ``concurrent.futures.Executor`` over this connection."""
        return TaskswarmExecutor(self)

    # -- code ------------------------------------------------------------------------------------

    def upload_file(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        """Ship code of the application's own to every slave: those there now, and those that
        join later. Returns once the master has it.

        ``path`` is a module (``helpers.py``), a package directory (with ``__init__.py``) or a
        ``.zip`` of modules and packages. Why: code from ``__main__`` and from the
        application's own files travels with each task *by value* where it can; where it cannot
        -- a module installed on this host but not on the slaves, one whose module-level state
        cannot be pickled (a lock, an open file) -- it travels *by reference*, and the worker
        must import it, or the task fails with ``ModuleNotFoundError``. Shipped, it is on every
        worker's ``sys.path`` (ahead of what is installed) for every task sent after this
        returns. Shipping the same name again (``helpers.py`` edited) replaces it: tasks sent
        after that run the new code, on workers that never imported the old.

        Raises ShippingError, saying what to do, for a path that does not exist, is none of the
        three, holds unsafe entries, or would take the cluster past what it keeps of shipped
        code (``taskswarm.protocol.archives.MAX_SHIPPED_BYTES``, 64 MiB, all names together).
        """
        shipping.upload(self._link, path, timeout)

    def scatter(self, value: Any, timeout: float = 60.0) -> Future[Any]:
        """Put ``value`` on the cluster once for many tasks; returns a Future that tasks take
        as an argument (``app.submit(f, ref, x)``), done at once with ``value`` as its result.

        The value is pickled once, here, and kept by the master (in shared memory on one host)
        for as long as this Future is referred to; every task that takes it gets it without it
        being pickled again per task, as passing ``value`` itself would. Returns once the master
        has it.
        """
        return self._sender.scatter(value, timeout)

    # -- task systems ------------------------------------------------------------------------------

    def submit_system(self, system: Any, progress: ProgressCallback | None = None) -> SystemHandle:
        """Send a task system to the master and return at once; the system lives there.

        Its ``name`` (``TaskSystem.name``: the class's name unless set) must be a str of at
        most 100 printable characters: TypeError or ValueError says what is wrong otherwise."""
        self._link.check_open()
        name = system_name(system)
        try:
            payload = pickling.dumps(system)
        except Exception as exc:
            raise TypeError(
                f"task system {type(system).__name__} could not be pickled: {exc}; every "
                "attribute it holds when sent must be picklable"
            ) from exc
        if len(payload) > self._link.max_payload:
            raise too_large(
                f"task system {type(system).__name__}", len(payload), self._link.max_bytes
            )
        handle = self._track_system(system.system_id, progress, name)
        self._ledger.sent_systems.add(system.system_id)
        # Wait for the master's ACK: once this returns, the system lives on without us.
        try:
            system_message = System(system_id=system.system_id, name=name)
            self._link.request(Kind.SYSTEM, system_message, 30.0, [payload], answer=Ack)
        except TaskswarmError as exc:
            # Refused (a full disk on the master, an id taken): nothing lives on to wait for.
            self._ledger.forget_system(system.system_id, handle)
            handle.set_outcome(error=exc)
            raise
        return handle

    def run_system(
        self, system: Any, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> Any:
        """Send a task system and wait for its result; raises the error it gathered.

        In a notebook (an IPython kernel) the system's progress shows meanwhile, as a table
        redrawn in place, unless ``progress`` draws it already."""
        handle = self.submit_system(system, progress)
        if notebook.shows_progress(progress):
            return notebook.wait_showing(handle, timeout)
        return handle.result(timeout)

    def system_result(self, system_id: str, timeout: float | None = None) -> Any:
        """The result of a system sent earlier, by any process, waiting for it if needed.

        ``system_id`` may be the first characters of the id (as `taskswarm status` shows it),
        as long as they begin no other system's id the master knows: UnknownTaskSystem
        (AmbiguousTaskSystem, listing them) says when they name none (several)."""
        return self._system_handle(str(system_id)).result(timeout)

    def _system_handle(self, system_id: str) -> SystemHandle:
        """The handle that waits for a system sent earlier, the master asked for its outcome
        (``system_result``, and its asyncio twin, which calls this off its loop: a prefix is
        looked up with a round trip)."""
        self._link.check_open()
        system_id, name = self._look_up(system_id)
        ended = self._ledger.ended_system(system_id)
        if ended is not None:  # received here already: the master has let its outcome go
            return ended
        handle = self._track_system(system_id, None, name)
        self._link.post(Kind.SYSTEM_QUERY, SystemQuery(system_id=system_id))
        return handle

    def _look_up(self, given: str, timeout: float = 10.0) -> tuple[str, str]:
        """The full id of the system ``given`` names, and its name: the master looks it up
        among all it knows. A whole id needs no asking (one this connection follows, or any
        uuid as ``TaskSystem`` makes them): so a master from before short ids still answers."""
        if given in self._ledger.systems or _whole_id(given):
            return given, ""
        query = SystemQuery(system_id=given)
        try:
            reply = self._link.request(Kind.SYSTEM_QUERY, query, timeout, answer=Ack)
        except UnknownTaskSystem as exc:  # AmbiguousTaskSystem too: say which master said so
            raise type(exc)(f"the master at {self.address}: {exc}") from None
        return reply.system_id or given, reply.name or ""

    def _track_system(
        self, system_id: str, progress: ProgressCallback | None, name: str = ""
    ) -> SystemHandle:
        handle, new = self._ledger.track_system(system_id, progress, name)
        if new:
            for watcher in watchers():
                watcher.system_tracked(handle)
        return handle

    # -- requests ----------------------------------------------------------------------------------

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The master's view of the cluster: slaves, task systems, task counts."""
        return self._link.request(Kind.STATUS, Status(), timeout, answer=StatusReply).status

    def resize(self, slave_id: str, workers: int, timeout: float = 10.0) -> None:
        """Ask a slave to grow or shrink its pool of workers (``update_pool``)."""
        resize = Resize(slave_id=slave_id, workers=int(workers))
        self._link.request(Kind.RESIZE, resize, timeout, answer=Ack)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the I/O thread; Futures still waiting fail with ClientClosed. Safe twice."""
        self._link.close()

    def _repr_html_(self) -> str:
        return html.application_html(self)

    def __enter__(self) -> Application:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if isinstance(exc_info[1], KeyboardInterrupt):
            for watcher in watchers():
                watcher.interrupted(self)
        self.close()

    def cancel_all(self) -> tuple[list[SystemHandle], int]:
        """Stop every task system this connection sent and every task it still waits for
        (what Ctrl-C does under `taskswarm run`); returns those systems' handles, which say how
        far each got, and how many tasks were stopped."""
        systems = self._ledger.sent_and_unfinished()
        futures = self._ledger.futures()
        if self._link.closed:
            return [], 0
        for handle in systems:
            self._link.post(Kind.CANCEL, Cancel(system_id=handle.system_id))
        self._withdraw(futures)
        return systems, len(futures)


def _whole_id(given: str) -> bool:
    """Whether ``given`` is a whole uuid as ``TaskSystem`` writes them (36 characters)."""
    try:
        return len(given) == 36 and str(uuid.UUID(given)) == given
    except ValueError:
        return False


def connect(
    address: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    *,
    key: bytes | ClusterKeys | None = None,
    connect_timeout: float = 10.0,
    shared_memory: object = None,
    ship: Iterable[str | os.PathLike[str]] = (),
) -> Application:
    """Connect to a running master; address and key file default to TASKSWARM_MASTER and
    TASKSWARM_KEY_FILE (which `taskswarm run` sets for the program it runs). ``ship``: code of
    the application's own to ship to the slaves first (``Application.upload_file``)."""
    from ..errors import ConfigurationError

    address = address or os.environ.get("TASKSWARM_MASTER")
    if not address:
        raise ConfigurationError(
            "no master to connect to: pass its address (tcp://HOST:PORT), set TASKSWARM_MASTER, "
            "or start the program with `taskswarm run`"
        )
    if key is None:
        key_file = key_file or os.environ.get("TASKSWARM_KEY_FILE")
        if not key_file:
            raise ConfigurationError(
                "no key file: pass key_file=, set TASKSWARM_KEY_FILE, or use the file the master "
                "was started with (--key-file)"
            )
        key = load_keys(key_file)
    return Application(
        address, key, connect_timeout=connect_timeout, shared_memory=shared_memory, ship=ship
    )
