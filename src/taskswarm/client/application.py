"""The application node: sends tasks and task systems to a master and receives their outcomes.

Data flow::

    user thread: submit(task) --pickle--> mailbox ---+
                                                     v
    I/O thread: mailbox --(consecutive tasks batched into one SUBMIT)--> dealer --> master
                dealer <-- RESULTS / SYSTEM_DONE / ... --> Future.set_result, task.finished

Only the I/O thread touches the ZeroMQ socket. Tasks are pickled in the caller's thread, so a task
that cannot be pickled fails at ``submit`` with the reason, not later on another node.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import CancelledError, Future, InvalidStateError
from typing import Any, Protocol, cast

import cloudpickle
import zmq

from ..errors import (
    AuthenticationFailed,
    ClientClosed,
    ClusterError,
    MasterUnreachable,
    TaskswarmError,
    TaskSystemError,
    UnknownTaskSystem,
    WireError,
)
from ..ops.progress import ProgressCallback
from ..protocol import pickling
from ..protocol.codec import ENVELOPE, Codec, Kind, Message, Notice, too_large
from ..protocol.keys import ClusterKeys, as_keys, load_keys
from ..protocol.mailbox import Mailbox
from ..protocol.transport import (
    MAX_MESSAGE_BYTES,
    check_address,
    connect_dealer,
    receive_batch,
    try_send,
    unreachable_message,
    unresolvable,
)
from ..task import FunctionTask, Task, load_outcome, task_meta
from .handles import SystemHandle, TaskFuture, TaskswarmExecutor

__all__ = ["Application", "connect"]

log = logging.getLogger(__name__)

#: How often the I/O thread wakes with nothing to do, to re-send HELLO to a silent master.
TICK = 0.5
#: Tasks pickled before they are handed to the I/O thread: the master starts on the first ones
#: while later ones are still being pickled.
CHUNK = 500
#: Most tasks, and most payload bytes, in one SUBMIT message: big ones start moving (and
#: running) while the rest follow.
SUBMIT_BATCH = 5000
SUBMIT_BYTES = 4 * 1024 * 1024
#: Seconds a result's receipt waits to be confirmed with others (off the way of the next task).
ACK_DELAY = 0.005
#: Task ids per TASKS_QUERY after a reconnect (about 40 bytes each: well within any limit).
QUERY_IDS = 20_000


class Application:
    """A connection to a master. Thread-safe; close it (or use ``with``) when done."""

    def __init__(
        self,
        address: str,
        key: bytes | ClusterKeys,
        *,
        connect_timeout: float = 10.0,
        master_timeout: float = 5.0,
    ) -> None:
        self.address = check_address(address)
        if unresolvable(address) is not None:
            # ZeroMQ would retry the name for ever in silence: say so now, not after a timeout.
            raise MasterUnreachable(unreachable_message(address, 0.0))
        self.client_id = uuid.uuid4().hex
        self._hello = {
            "client_id": self.client_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        }
        keys = as_keys(key)
        self.codec = Codec(keys.hmac)
        self.master_timeout = master_timeout
        self._context = zmq.Context()
        self._socket = connect_dealer(
            self._context, address, f"app-{self.client_id}".encode(), keys.curve_public
        )
        self._mailbox = Mailbox()
        self._lock = threading.Lock()
        self._tasks: dict[str, tuple[Task, TaskFuture]] = {}
        self._requests: dict[int, Future[Any]] = {}
        #: What each pending request sent, to send again after a reconnect.
        self._request_messages: dict[int, tuple[str, dict[str, Any], list[bytes]]] = {}
        self._systems: dict[str, SystemHandle] = {}
        self._sent_systems: set[str] = set()  # those this connection sent (not only awaits)
        self._rids = itertools.count(1)
        self._unconfirmed_batches: dict[int, list[tuple[list[Any], bytes]]] = {}  # I/O thread only
        self._acks_due: list[str] = []  # results received, their receipt not yet confirmed
        self._ack_at = 0.0
        self._welcomed = threading.Event()
        self._refused = threading.Event()  # the master answered with a Notice (key, version)
        self._refusal = ""
        self._master_session: str | None = None
        self._closed = False
        self._failure: BaseException | None = None  # why the I/O thread gave up, if it did
        self._last_from_master = 0.0
        #: The master's message limit (its WELCOME says): no payload bigger than fits is sent.
        self._max_bytes = MAX_MESSAGE_BYTES
        #: Called as ``(task, result, error)`` after each plain task's Future is resolved.
        self.on_task_finished: Callable[[Task, Any, BaseException | None], None] | None = None
        self._thread = threading.Thread(target=self._io_loop, name="taskswarm-app-io", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + connect_timeout
        while not self._welcomed.wait(0.05):
            if self._refused.is_set():
                self.close()
                error = AuthenticationFailed if "key" in self._refusal else ClusterError
                raise error(f"{self._refusal} (master {address})")
            if time.monotonic() > deadline:
                break
        if not self._welcomed.is_set():
            self.close()
            raise MasterUnreachable(unreachable_message(address, connect_timeout))
        for watcher in list(_watchers):
            watcher.opened(self)

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
        """
        self._check_open()
        futures: list[TaskFuture] = []
        chunk: list[tuple[Task, TaskFuture, list[Any], bytes]] = []
        size = 0
        paused = _pause_gc()
        try:
            for task in tasks:
                payload = pickling.dumps_task(task)
                if len(payload) > self._max_payload:
                    raise too_large(f"task {task.name!r}", len(payload), self._max_bytes)
                meta = task_meta(task)
                task.client_id = self.client_id
                future = TaskFuture(task.task_id, self._cancel_queued)
                chunk.append((task, future, meta, payload))
                futures.append(future)
                size += len(payload)
                if len(chunk) >= CHUNK or size >= SUBMIT_BYTES:
                    self._post_tasks(chunk)
                    chunk, size = [], 0
        except BaseException:
            self._withdraw(futures[: len(futures) - len(chunk)])
            raise
        finally:
            _resume_gc(paused)
        self._post_tasks(chunk)
        return cast("list[Future[Any]]", futures)  # TaskFutures, typed as the public API says

    def _post_tasks(self, chunk: list[tuple[Task, TaskFuture, list[Any], bytes]]) -> None:
        if not chunk:
            return
        with self._lock:
            for task, future, _, _ in chunk:
                self._tasks[task.task_id] = (task, future)
        self._mailbox.post(("tasks", [(meta, payload) for _, _, meta, payload in chunk]))

    def _withdraw(self, futures: Sequence[TaskFuture]) -> None:
        """Cancel tasks already handed over, in one message."""
        if not futures:
            return
        task_ids = [f.task_id for f in futures]
        with self._lock:
            for task_id in task_ids:
                self._tasks.pop(task_id, None)
        for future in futures:
            future.stop()
        self._post(Kind.CANCEL, {"tasks": task_ids})

    def cancel(self, future_or_task_id: Future[Any] | str) -> bool:
        """Stop a task, queued or running (its worker is replaced); False if already done.

        Unlike ``Future.cancel()``, which as in ``concurrent.futures`` leaves a running task
        alone, this stops running work on purpose: its Future ends cancelled.
        """
        task_id = getattr(future_or_task_id, "task_id", future_or_task_id)
        with self._lock:
            entry = self._tasks.pop(str(task_id), None)
        if entry is None or not entry[1].stop():
            return False
        if not self._closed:
            self._post(Kind.CANCEL, {"tasks": [task_id]})
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
            reply = self._request(Kind.CANCEL, {"tasks": list(waiting), "soft": True}, timeout)
        except (TimeoutError, ClientClosed):
            # No answer: cancel what looks pending from here, as Future.cancel() does.
            return sum(1 for future in waiting.values() if future.cancel())
        cancelled = 0
        for task_id in reply.get("tasks", ()):
            future = waiting.get(str(task_id))
            with self._lock:
                self._tasks.pop(str(task_id), None)
            if future is not None and future.stop():
                cancelled += 1
        return cancelled

    def cancel_system(self, system_id: str) -> None:
        """Stop a task system: its tasks are cancelled and its result is a TaskSystemError."""
        self._check_open()
        self._post(Kind.CANCEL, {"system_id": str(system_id)})

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
        with self._lock:
            for task_id in task_ids:
                self._tasks.pop(task_id, None)
        if not self._closed:
            self._post(Kind.CANCEL, {"tasks": task_ids, "soft": True})

    def _cancel_queued(self, task_id: str) -> None:
        """``Future.cancel()`` of a task not yet running: the master drops it if it still has it
        queued, and leaves it alone if it has meanwhile handed it to a slave (``soft``)."""
        with self._lock:
            self._tasks.pop(task_id, None)
        if not self._closed:
            self._post(Kind.CANCEL, {"tasks": [task_id], "soft": True})

    def executor(self) -> TaskswarmExecutor:
        """A ``concurrent.futures.Executor`` over this connection."""
        return TaskswarmExecutor(self)

    # -- task systems ------------------------------------------------------------------------------

    def submit_system(self, system: Any, progress: ProgressCallback | None = None) -> SystemHandle:
        """Send a task system to the master and return at once; the system lives there."""
        self._check_open()
        try:
            payload = pickling.dumps(system)
        except Exception as exc:
            raise TypeError(
                f"task system {type(system).__name__} could not be pickled: {exc}; every "
                "attribute it holds when sent must be picklable"
            ) from exc
        if len(payload) > self._max_payload:
            raise too_large(f"task system {type(system).__name__}", len(payload), self._max_bytes)
        label = f"{type(system).__name__} {system.system_id[:8]}"
        handle = self._track_system(system.system_id, progress, label)
        self._sent_systems.add(system.system_id)
        # Wait for the master's ACK: once this returns, the system lives on without us.
        try:
            self._request(Kind.SYSTEM, {"system_id": system.system_id}, 30.0, [payload])
        except TaskswarmError as exc:
            # Refused (a full disk on the master, an id taken): nothing lives on to wait for.
            with self._lock:
                if self._systems.get(system.system_id) is handle:
                    del self._systems[system.system_id]
            self._sent_systems.discard(system.system_id)
            handle.set_outcome(error=exc)
            raise
        return handle

    def run_system(
        self, system: Any, progress: ProgressCallback | None = None, timeout: float | None = None
    ) -> Any:
        """Send a task system and wait for its result; raises the error it gathered."""
        return self.submit_system(system, progress).result(timeout)

    def system_result(self, system_id: str, timeout: float | None = None) -> Any:
        """The result of a system sent earlier, by any process, waiting for it if needed."""
        self._check_open()
        handle = self._track_system(str(system_id), None)
        self._post(Kind.SYSTEM_QUERY, {"system_id": str(system_id)})
        return handle.result(timeout)

    def _track_system(
        self, system_id: str, progress: ProgressCallback | None, label: str = ""
    ) -> SystemHandle:
        with self._lock:
            handle = self._systems.get(system_id)
            if handle is None or handle.done():
                handle = self._systems[system_id] = SystemHandle(system_id, progress, label)
            elif progress is not None:
                handle.progress = progress
        return handle

    # -- requests ----------------------------------------------------------------------------------

    def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """The master's view of the cluster: slaves, task systems, task counts."""
        return self._request(Kind.STATUS, {}, timeout)["status"]

    def resize(self, slave_id: str, workers: int, timeout: float = 10.0) -> None:
        """Ask a slave to grow or shrink its pool of workers (``update_pool``)."""
        self._request(Kind.RESIZE, {"slave_id": slave_id, "workers": int(workers)}, timeout)

    def _request(
        self, kind: str, header: dict[str, Any], timeout: float, payloads: Sequence[bytes] = ()
    ) -> dict[str, Any]:
        self._check_open()
        rid = next(self._rids)
        future: Future[Any] = Future()
        with self._lock:
            self._requests[rid] = future
            self._request_messages[rid] = (kind, {**header, "rid": rid}, list(payloads))
        self._post(kind, {**header, "rid": rid}, payloads)
        try:
            return future.result(timeout)
        finally:
            with self._lock:
                self._requests.pop(rid, None)
                self._request_messages.pop(rid, None)

    # -- lifecycle -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the I/O thread; Futures still waiting fail with ClientClosed. Safe twice."""
        if self._closed:
            return
        self._closed = True
        self._mailbox.wake()
        self._thread.join(timeout=5.0)
        self._fail_everything(
            ClientClosed("the application connection was closed before the result came")
        )

    def _fail_everything(self, error: BaseException) -> None:
        """Every Future and system handle still waiting ends with ``error``: nothing waits on
        a connection that will never deliver (closed, or its I/O thread failed)."""
        if not self._closed:
            self._failure = error  # later calls say why the connection is unusable
            self._closed = True
        with self._lock:
            waiting = [f for _, f in self._tasks.values()] + list(self._requests.values())
            systems = list(self._systems.values())
            self._tasks.clear()
        for future in waiting:
            _resolve(future, exception=error)
        for handle in systems:
            handle.set_outcome(error=error)

    def __enter__(self) -> Application:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if isinstance(exc_info[1], KeyboardInterrupt):
            for watcher in list(_watchers):
                watcher.interrupted(self)
        self.close()

    def cancel_all(self) -> tuple[list[SystemHandle], int]:
        """Stop every task system this connection sent and every task it still waits for
        (what Ctrl-C does under `taskswarm run`); returns those systems' handles, which say how
        far each got, and how many tasks were stopped."""
        with self._lock:
            systems = [
                handle
                for system_id, handle in self._systems.items()
                if system_id in self._sent_systems and not handle.done()
            ]
            futures = [future for _, future in self._tasks.values()]
        if self._closed:
            return [], 0
        for handle in systems:
            self._post(Kind.CANCEL, {"system_id": handle.system_id})
        self._withdraw(futures)
        return systems, len(futures)

    def _check_open(self) -> None:
        if self._failure is not None:
            raise ClusterError(str(self._failure))
        if self._closed:
            raise ClientClosed("this application connection is closed; connect again")

    def _post(self, kind: str, header: dict[str, Any], payloads: Sequence[bytes] = ()) -> None:
        self._mailbox.post(("msg", kind, header, payloads))

    # -- the I/O thread ------------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._mailbox.fileno(), zmq.POLLIN)
        handlers: dict[str, Callable[[Message], None]] = {
            Kind.WELCOME: self._on_welcome,
            Kind.RESULTS: self._on_results,
            Kind.RUNNING: self._on_running,
            Kind.ACK: self._on_reply,
            Kind.REJECT: self._on_reply,
            Kind.STATUS_REPLY: self._on_reply,
            Kind.SYSTEM_PROGRESS: self._on_progress,
            Kind.SYSTEM_DONE: self._on_system_done,
            Kind.REREGISTER: self._on_reregister,
            Kind.BYE: self._on_master_bye,
        }
        self._send(Kind.HELLO, self._hello)
        next_hello = time.monotonic() + TICK
        try:
            self._serve(poller, handlers, next_hello)
        except BaseException as exc:  # noqa: BLE001 - nothing may leave a Future waiting
            log.exception("the connection to the master at %s failed", self.address)
            self._fail_everything(
                ClusterError(
                    f"the connection to the master at {self.address} failed ({exc!r}); "
                    "connect again"
                )
            )
        finally:
            # Give what is queued a moment to leave; a master that is gone costs at most this.
            self._socket.close(linger=2000)
            self._context.term()
            self._mailbox.close()

    def _serve(
        self, poller: zmq.Poller, handlers: dict[str, Callable[[Message], None]], next_hello: float
    ) -> None:
        """The I/O thread's loop, until ``close()``."""
        while not self._closed:
            wait = TICK if not self._acks_due else max(0.0, self._ack_at - time.monotonic())
            events = dict(poller.poll(math.ceil(wait * 1000)))
            if self._socket in events:
                self._receive(handlers)
            if self._acks_due and time.monotonic() >= self._ack_at:
                self._send_acks()
            if self._mailbox.fileno() in events:
                self._send_posted(self._mailbox.drain())
            if time.monotonic() >= next_hello:
                self._keep_alive()
                next_hello = time.monotonic() + TICK
        self._send_posted(self._mailbox.drain())  # what was posted before close()
        self._send_acks()
        self._send(Kind.BYE)

    def _receive(self, handlers: dict[str, Callable[[Message], None]]) -> None:
        for frames in receive_batch(self._socket):
            try:
                message = self.codec.decode(frames)
            except WireError as exc:
                refusal = Notice.read(frames)
                if refusal is not None and not self._welcomed.is_set():
                    self._refusal = refusal
                    self._refused.set()
                else:
                    log.debug("dropped a message from the master: %s", exc)
                continue
            self._last_from_master = time.monotonic()
            self._master_session = message.sender
            handler = handlers.get(message.kind)
            if handler is None:
                continue
            try:
                handler(message)
            except Exception:
                # One message that cannot be handled must not take every other Future with it.
                log.exception("a %s message from the master could not be handled", message.kind)

    def _send(
        self, kind: str, header: dict[str, Any] | None = None, payloads: Sequence[Any] = ()
    ) -> bool:
        to = None if kind in Kind.UNADDRESSED else self._master_session
        return try_send(self._socket, self.codec.encode(kind, header, payloads, to=to))

    def _send_posted(self, items: list[tuple[Any, ...]]) -> None:
        """Send what user threads posted, merging runs of task batches into one SUBMIT."""
        batch: list[tuple[list[Any], bytes]] = []
        for item in items:
            if item[0] == "tasks":
                batch.extend(item[1])
                continue
            self._send_tasks(batch)
            batch = []
            _, kind, header, payloads = item
            self._send(kind, header, payloads)
        self._send_tasks(batch)

    def _send_tasks(self, batch: list[tuple[list[Any], bytes]]) -> None:
        part: list[tuple[list[Any], bytes]] = []
        size = 0
        for item in batch:
            part.append(item)
            size += len(item[1])
            if len(part) >= SUBMIT_BATCH or size >= SUBMIT_BYTES:
                self._send_submit(part)
                part, size = [], 0
        if part:
            self._send_submit(part)

    def _send_submit(self, part: list[tuple[list[Any], bytes]]) -> None:
        rid = next(self._rids)
        self._unconfirmed_batches[rid] = part  # until the master ACKs: it may go again
        header = {"tasks": [meta for meta, _ in part], "rid": rid}
        self._send(Kind.SUBMIT, header, [payload for _, payload in part])

    def _send_acks(self) -> None:
        if self._acks_due:
            self._send(Kind.RESULTS_ACK, {"tasks": self._acks_due})
            self._acks_due = []

    def _resync(self) -> None:
        """After a reconnect: send again what the master may not have, ask for what is due."""
        batches, self._unconfirmed_batches = list(self._unconfirmed_batches.values()), {}
        with self._lock:
            waiting = set(self._tasks)
            systems = [h.system_id for h in self._systems.values() if not h.done()]
            requests = list(self._request_messages.values())
        for kind, header, payloads in requests:
            self._send(kind, header, payloads)
        for batch in batches:
            self._send_tasks([(meta, payload) for meta, payload in batch if meta[0] in waiting])
        # Tasks submitted but still waiting here to be sent go first too: the master must have
        # every batch before the question, or it would answer that it does not hold them.
        self._send_posted(self._mailbox.drain())
        # After the batches sent again (the master reads them first): any other task it no
        # longer holds (it restarted with no state directory) comes back failed.
        ids = sorted(waiting)
        for start in range(0, len(ids), QUERY_IDS):
            self._send(Kind.TASKS_QUERY, {"tasks": ids[start : start + QUERY_IDS]})
        for system_id in systems:
            self._send(Kind.SYSTEM_QUERY, {"system_id": system_id})

    def _keep_alive(self) -> None:
        silent = time.monotonic() - self._last_from_master
        if not self._welcomed.is_set() or silent > self.master_timeout:
            self._send(Kind.HELLO, self._hello)
        else:
            self._send(Kind.HEARTBEAT)

    # -- handlers (I/O thread) -------------------------------------------------------------------

    @property
    def _max_payload(self) -> int:
        return self._max_bytes - ENVELOPE

    def _on_welcome(self, msg: Message) -> None:
        limit = msg.get("max_bytes")
        if isinstance(limit, int) and limit > ENVELOPE:
            self._max_bytes = limit
        if self._welcomed.is_set():
            log.info("reconnected to the master at %s", self.address)
            self._resync()
        self._welcomed.set()

    def _on_reregister(self, msg: Message) -> None:
        self._send(Kind.HELLO, self._hello)

    def _on_master_bye(self, msg: Message) -> None:
        log.warning("the master at %s is going away", self.address)
        self._last_from_master = 0.0

    def _on_running(self, msg: Message) -> None:
        with self._lock:
            entries = [self._tasks.get(task_id) for task_id in msg["tasks"]]
        for entry in entries:
            if entry is not None:
                entry[1].mark_running()

    def _on_results(self, msg: Message) -> None:
        results = msg["results"]
        with self._lock:
            entries = [self._tasks.pop(task_id, None) for task_id, _ in results]
        # The master keeps each result (journaled) until told it arrived: say so soon, in bulk.
        if not self._acks_due:
            self._ack_at = time.monotonic() + ACK_DELAY
        self._acks_due.extend(task_id for task_id, _ in results)
        for (_, ok), data, entry in zip(results, msg.payloads, entries, strict=False):
            if entry is not None:
                self._deliver(entry[0], entry[1], ok, data)
        # Nothing here may hold a result once its Future has it: the caller alone decides when
        # it is let go (concurrent.futures' test_free_reference).
        entries = entry = None  # type: ignore[assignment]  # noqa: F841

    def _deliver(self, task: Task, future: TaskFuture, ok: bool, data: bytes) -> None:
        if not ok and not len(data):  # taken back unrun (cancel_queued): no outcome
            future.stop()
            if self.on_task_finished is not None:
                self.on_task_finished(task, None, CancelledError())
            return
        outcome = load_outcome(ok, data, task.name)
        if type(task).finished is not Task.finished:  # most tasks keep the no-op
            try:
                task.finished(*outcome)
            except Exception:
                log.error("%r.finished() raised", task, exc_info=True)
        if self.on_task_finished is not None:
            try:
                self.on_task_finished(task, *outcome)
            except Exception:
                log.error("on_task_finished callback raised", exc_info=True)
        _resolve(future, *outcome)

    def _on_reply(self, msg: Message) -> None:
        batch = self._unconfirmed_batches.pop(msg.get("rid"), None)
        if batch is not None:
            if msg.kind == Kind.REJECT:
                self._fail_tasks([meta[0] for meta, _ in batch], str(msg.get("reason")))
            return
        with self._lock:
            future = self._requests.get(msg.get("rid"))
        if future is None:
            return
        if msg.kind == Kind.REJECT:
            _resolve(future, exception=TaskswarmError(str(msg.get("reason"))))
        else:
            _resolve(future, msg.header)

    def _fail_tasks(self, task_ids: list[str], reason: str) -> None:
        error = TaskswarmError(f"the master refused the tasks: {reason}")
        with self._lock:
            entries = [self._tasks.pop(t, None) for t in task_ids]
        for entry in entries:
            if entry is not None:
                _resolve(entry[1], exception=error)

    def _on_progress(self, msg: Message) -> None:
        handle = self._systems.get(str(msg["system_id"]))
        if handle is not None:
            try:
                handle.set_progress(
                    int(msg["done"]),
                    int(msg["total"]),
                    int(msg.get("failed", 0)),
                    msg.get("first_failure"),
                )
            except Exception:
                log.error("progress callback raised", exc_info=True)

    def _on_system_done(self, msg: Message) -> None:
        system_id = str(msg["system_id"])
        handle = self._systems.get(system_id)
        if handle is None:
            return
        if msg.get("unknown"):
            why = f": {msg['reason']}" if msg.get("reason") else ""
            handle.set_outcome(
                error=UnknownTaskSystem(
                    f"the master at {self.address} holds no task system with id {system_id}{why}"
                )
            )
            return
        # Received: the master may let the result go (older masters ignore ``systems``).
        self._send(Kind.RESULTS_ACK, {"tasks": [], "systems": [system_id]})
        try:
            result, error = cloudpickle.loads(msg.payloads[0])
        except Exception as exc:
            result, error = (
                None,
                TaskswarmError(f"the system's result could not be unpickled: {exc}"),
            )
        if error is not None and not isinstance(error, BaseException):
            error = TaskSystemError(str(error))
        handle.set_outcome(result, error)


_gc_lock = threading.Lock()
_gc_pauses = 0


def _pause_gc() -> bool:
    """Hold off the cyclic garbage collector while a batch of tasks is made.

    Every Future carries a Condition, and Conditions are reference cycles: making tens of
    thousands of them sets off collection after collection, each walking every object still
    alive (all the tasks and futures made so far). Pausing it for the batch made submitting
    a third cheaper; nothing made here is garbage yet, so nothing is held back for long.
    """
    global _gc_pauses
    with _gc_lock:
        if _gc_pauses == 0 and not gc.isenabled():
            return False  # switched off by the program itself: leave it so
        _gc_pauses += 1
        gc.disable()
        return True


def _resume_gc(paused: bool) -> None:
    global _gc_pauses
    if not paused:
        return
    with _gc_lock:
        _gc_pauses -= 1
        if _gc_pauses == 0:
            gc.enable()


def _resolve(
    future: Future[Any], result: Any = None, exception: BaseException | None = None
) -> None:
    try:  # set_* refuse a future already done (cancelled meanwhile): one lock, not two
        if exception is not None:
            future.set_exception(exception)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass  # cancelled by its owner in the meantime


class ApplicationWatcher(Protocol):
    """Told of the connections this process opens (`taskswarm run` watches its program's)."""

    def opened(self, app: Application) -> None:
        """``app`` has connected to its master."""

    def interrupted(self, app: Application) -> None:
        """A KeyboardInterrupt is leaving ``app``'s ``with`` block; it closes next."""


_watchers: list[ApplicationWatcher] = []


@contextlib.contextmanager
def watching(watcher: ApplicationWatcher) -> Iterator[ApplicationWatcher]:
    """Tell ``watcher`` of every connection opened, and every one Ctrl-C leaves, meanwhile."""
    _watchers.append(watcher)
    try:
        yield watcher
    finally:
        _watchers.remove(watcher)


def connect(
    address: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    *,
    key: bytes | ClusterKeys | None = None,
    connect_timeout: float = 10.0,
) -> Application:
    """Connect to a running master; address and key file default to TASKSWARM_MASTER and
    TASKSWARM_KEY_FILE (which `taskswarm run` sets for the program it runs)."""
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
    return Application(address, key, connect_timeout=connect_timeout)
