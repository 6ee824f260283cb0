"""An application's link to its master: the I/O thread, the only one that touches the socket.

Data flow::

    user threads: post(...) / post_tasks(...) / request(...) --> mailbox ---+
                                                                            v
    I/O thread: mailbox --(consecutive task batches merged into one SUBMIT)--> dealer --> master
                dealer <-- RESULTS / RUNNING / ACK / SYSTEM_DONE / ... <-- master
                        --> the Ledger: Future.set_result, task.finished, handle.set_outcome

What user threads hand the I/O thread (the mailbox's items) are two records, ``PostedTasks``
and ``PostedMessage``. A request (``request``) is a message whose reply is matched to its
sender by a request id (``rid``, ``requests.py``); a SUBMIT batch is kept under its ``rid``
until the master's ACK. The link reads each message's header; what an outcome settles is the
ledger's business (``ledger.py``).

The link says HELLO until the master WELCOMEs it and HEARTBEATs while the master answers; a
master silent for ``master_timeout`` is greeted again. A second WELCOME means a reconnect (the
master restarted, or lost this application): the link then resyncs -- it sends again the
requests and batches not yet acknowledged and what still waits in the mailbox, then asks which
tasks and systems the master still holds (TASKS_QUERY, SYSTEM_QUERY), so no Future waits for
ever on work the master forgot.

One module of over 400 lines on purpose: the resync logic reads and writes the socket's own
state (what was sent, what the master acknowledged), so cutting it away from the socket would
spread one conversation over two modules.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import cloudpickle
import zmq

from ..errors import (
    AmbiguousTaskSystem,
    AuthenticationFailed,
    BadDigest,
    ClientClosed,
    ClusterError,
    MasterUnreachable,
    TaskswarmError,
    TaskSystemError,
    UnknownTaskSystem,
    WireError,
)
from ..protocol.codec import ENVELOPE, Codec, Kind, Message, Notice
from ..protocol.keys import ClusterKeys
from ..protocol.mailbox import Mailbox
from ..protocol.messages import (
    AMBIGUOUS_SYSTEM,
    APPLICATION_HEADER,
    UNKNOWN_SYSTEM,
    Ack,
    Bye,
    Cancel,
    Delivery,
    Forget,
    Header,
    Heartbeat,
    Hello,
    Reject,
    Resize,
    ResultsAck,
    Running,
    Scatter,
    Ship,
    Status,
    StatusReply,
    Submit,
    System,
    SystemDone,
    SystemProgress,
    SystemQuery,
    TaskMeta,
    TasksQuery,
    Welcome,
)
from ..protocol.transport import (
    MAX_MESSAGE_BYTES,
    connect_dealer,
    receive_batch,
    try_send,
    unreachable_message,
)
from .ledger import Ledger
from .requests import Requests

__all__ = ["MasterLink", "PostedMessage", "PostedTasks"]

log = logging.getLogger(__name__)

#: How often the I/O thread wakes with nothing to do, to re-send HELLO to a silent master.
TICK = 0.5
#: Most tasks, and most payload bytes, in one SUBMIT message: big ones start moving (and
#: running) while the rest follow.
SUBMIT_BATCH = 5000
SUBMIT_BYTES = 4 * 1024 * 1024
#: Seconds a result's receipt waits to be confirmed with others (off the way of the next task).
ACK_DELAY = 0.005
#: Task ids per TASKS_QUERY after a reconnect (about 40 bytes each: well within any limit).
QUERY_IDS = 20_000

#: One task as it travels in a SUBMIT: its metadata (``task_meta``) and its pickled payload.
Submission = tuple[TaskMeta, bytes]
#: A message the master answers, matched by its ``rid``.
Request = Cancel | Resize | Ship | Status | System | SystemQuery | Scatter
#: The error a REJECT raises, by its ``error`` (any other: TaskswarmError).
_REJECTIONS: dict[str, type[TaskswarmError]] = {
    UNKNOWN_SYSTEM: UnknownTaskSystem,
    AMBIGUOUS_SYSTEM: AmbiguousTaskSystem,
}
#: What the master answers a request with (a REJECT raises instead).
A = TypeVar("A", Ack, StatusReply)


class PostedTasks(NamedTuple):
    """Tasks to submit (a user thread pickled them); runs of these go out as one SUBMIT."""

    submissions: list[Submission]
    #: The inputs these tasks name (``TaskMeta.deps``), pinned until this SUBMIT has left.
    pinned: Sequence[str] = ()


class PostedMessage(NamedTuple):
    """One message to send as it is."""

    kind: str
    header: Header
    payloads: Sequence[bytes] = ()


class MasterLink:
    """The socket to one master, the I/O thread that owns it, and the mailbox that feeds it."""

    def __init__(
        self,
        address: str,
        keys: ClusterKeys,
        application_id: str,
        ledger: Ledger,
        master_timeout: float = 5.0,
    ) -> None:
        self.address = address
        self.ledger = ledger
        ledger.keys, ledger.wake = keys, self._wake  # kept results: fetched, let go
        self.codec = Codec(keys.hmac, headers=APPLICATION_HEADER)
        self.master_timeout = master_timeout
        self.hello = Hello(
            client_id=application_id,
            host=socket.gethostname(),
            pid=os.getpid(),
            batched_acks=True,
        )
        self.context = zmq.Context()
        self.socket = connect_dealer(
            self.context, address, f"app-{application_id}".encode(), keys.curve_public
        )
        self.mailbox = Mailbox()
        #: The master's message limit (its WELCOME says): no payload bigger than fits is sent.
        self.max_bytes = MAX_MESSAGE_BYTES
        self.closed = False
        self.failure: BaseException | None = None  # why the I/O thread gave up, if it did
        self._rids = itertools.count(1)
        self._requests = Requests()
        self._unconfirmed_batches: dict[int, list[Submission]] = {}  # I/O thread only
        self._acks_due: list[str] = []  # results received, their receipt not yet confirmed
        self._ack_at = 0.0
        self._welcomed = threading.Event()
        self._refused = threading.Event()  # the master answered with a Notice (key, version)
        self._refusal = ""
        self._master_session: str | None = None
        self._last_from_master = 0.0
        self._thread = threading.Thread(target=self._io_loop, name="taskswarm-app-io", daemon=True)
        #: What this link serves, held while the I/O thread runs: a connection the program drops
        #: unclosed lives on, still delivering, until it is closed (``taskswarm run`` closes it).
        self._owner: object = None

    @property
    def max_payload(self) -> int:
        """The most bytes one pickled task or system may take and still fit in a message."""
        return self.max_bytes - ENVELOPE

    # -- user threads ------------------------------------------------------------------------------

    def open(self, connect_timeout: float, owner: object = None) -> None:
        """Start the I/O thread and wait for the master's WELCOME; close and raise if none
        comes in time, or if the master refuses this application (wrong key, version).
        ``owner`` is kept alive until the link closes."""
        self._owner = owner
        self._thread.start()
        deadline = time.monotonic() + connect_timeout
        while not self._welcomed.wait(0.05):
            if self._refused.is_set():
                self.close()
                error = AuthenticationFailed if "key" in self._refusal else ClusterError
                raise error(f"{self._refusal} (master {self.address})")
            if time.monotonic() > deadline:
                break
        if not self._welcomed.is_set():
            self.close()
            raise MasterUnreachable(unreachable_message(self.address, connect_timeout))

    def post(self, kind: str, header: Header, payloads: Sequence[bytes] = ()) -> None:
        """Send a message, from any thread."""
        self.mailbox.post(PostedMessage(kind, header, payloads))

    def post_tasks(self, submissions: list[Submission], pinned: Sequence[str] = ()) -> None:
        """Submit tasks, from any thread (their Futures are in the ledger already); ``pinned``:
        the inputs they name, unpinned once they have left (``taskswarm.inputs``)."""
        self.mailbox.post(PostedTasks(submissions, pinned))

    def request(
        self,
        kind: str,
        header: Request,
        timeout: float,
        payloads: Sequence[bytes] = (),
        *,
        answer: type[A],
    ) -> A:
        """Send a message and wait for the master's reply to it, an ``answer``; a REJECT raises
        TaskswarmError with the master's reason. Sent again after a reconnect."""
        self.check_open()
        rid = header.rid = next(self._rids)
        message = PostedMessage(kind, header, list(payloads))
        future = self._requests.open(rid, message)
        self.mailbox.post(message)
        try:
            reply = future.result(timeout)
        finally:
            self._requests.close(rid)
        if type(reply) is not answer:
            raise ClusterError(f"the master answered a {kind} message with {reply.kind}")
        return reply

    def check_open(self) -> None:
        if self.failure is not None:
            raise ClusterError(str(self.failure))
        if self.closed:
            raise ClientClosed("this application connection is closed; connect again")

    def close(self) -> None:
        """Stop the I/O thread; Futures still waiting fail with ClientClosed. Safe twice."""
        if self.closed:
            return
        self.closed = True
        self.ledger.wake = None
        self.mailbox.wake()
        self._thread.join(timeout=5.0)
        self.fail_everything(
            ClientClosed("the application connection was closed before the result came")
        )
        self.ledger.lose_remote(
            ClientClosed(
                "the application connection was closed before this result was fetched from "
                "the slave keeping it: call result() before closing (or set "
                "app.keep_results = False to have every result come at once)"
            )
        )

    def _wake(self) -> None:
        if not self.closed:
            self.mailbox.wake()

    def fail_everything(self, error: BaseException) -> None:
        """Every Future and system handle still waiting ends with ``error``: nothing waits on
        a connection that will never deliver (closed, or its I/O thread failed)."""
        if not self.closed:
            self.failure = error  # later calls say why the connection is unusable
            self.closed = True
        self.ledger.fail_all(error)
        self._requests.fail_all(error)

    # -- the I/O thread ----------------------------------------------------------------------------

    def _io_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.mailbox.fileno(), zmq.POLLIN)
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
        self.send(Kind.HELLO, self.hello)
        next_hello = time.monotonic() + TICK
        try:
            self._serve(poller, handlers, next_hello)
        except BaseException as exc:  # noqa: BLE001 - nothing may leave a Future waiting
            log.exception("the connection to the master at %s failed", self.address)
            self.fail_everything(
                ClusterError(
                    f"the connection to the master at {self.address} failed ({exc!r}); "
                    "connect again"
                )
            )
        finally:
            # Give what is queued a moment to leave; a master that is gone costs at most this.
            self.socket.close(linger=2000)
            self.context.term()
            self.mailbox.close()
            self._owner = None

    def _serve(
        self, poller: zmq.Poller, handlers: dict[str, Callable[[Message], None]], next_hello: float
    ) -> None:
        """The I/O thread's loop, until ``close()``."""
        while not self.closed:
            wait = TICK if not self._acks_due else max(0.0, self._ack_at - time.monotonic())
            events = dict(poller.poll(math.ceil(wait * 1000)))
            if self.socket in events:
                self._receive(handlers)
            if self._acks_due and time.monotonic() >= self._ack_at:
                self._send_acks()
            if self.mailbox.fileno() in events:
                self._send_posted(self.mailbox.drain())
            if self.ledger.forgotten:
                self._send_forgotten()
            if time.monotonic() >= next_hello:
                self._keep_alive()
                next_hello = time.monotonic() + TICK
        self._send_posted(self.mailbox.drain())  # what was posted before close()
        self._send_acks()
        self.send(Kind.BYE, Bye())

    def _receive(self, handlers: dict[str, Callable[[Message], None]]) -> None:
        for frames in receive_batch(self.socket):
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

    def send(self, kind: str, header: Header, payloads: Sequence[Any] = ()) -> bool:
        """Send at once (I/O thread only)."""
        to = None if kind in Kind.UNADDRESSED else self._master_session
        return try_send(self.socket, self.codec.encode(kind, header, payloads, to=to))

    def _send_posted(self, items: list[PostedTasks | PostedMessage]) -> None:
        """Send what user threads posted, merging runs of task batches into one SUBMIT."""
        batch: list[Submission] = []
        pinned: list[str] = []
        for item in items:
            if type(item) is PostedTasks:
                batch.extend(item.submissions)
                if item.pinned:
                    pinned.extend(item.pinned)
                continue
            self._send_tasks(batch)
            batch = []
            self.send(*item)
        self._send_tasks(batch)
        if pinned:  # their SUBMITs are out: the inputs' outcomes may be confirmed now
            self.ledger.unpin(pinned)

    def _send_tasks(self, batch: list[Submission]) -> None:
        part: list[Submission] = []
        size = 0
        for item in batch:
            part.append(item)
            size += len(item[1])
            if len(part) >= SUBMIT_BATCH or size >= SUBMIT_BYTES:
                self._send_submit(part)
                part, size = [], 0
        if part:
            self._send_submit(part)

    def _send_submit(self, part: list[Submission]) -> None:
        rid = next(self._rids)
        self._unconfirmed_batches[rid] = part  # until the master ACKs: it may go again
        header = Submit(tasks=[meta for meta, _ in part], rid=rid)
        self.send(Kind.SUBMIT, header, [payload for _, payload in part])

    def _send_forgotten(self) -> None:
        """Scattered data and kept results no Future refers to any more: a segment (if it is
        in one) is freed once no task here takes it, and the master may let them go."""
        forgotten = self.ledger.forgotten
        data_ids = []
        while forgotten:
            data_ids.append(forgotten.popleft())
        for data_id in data_ids:
            self.ledger.forget_scattered(data_id)
        self.send(Kind.FORGET, Forget(data_ids=data_ids))

    def _send_acks(self) -> None:
        due = self._acks_due
        if not due:
            return
        self._acks_due = []
        pins = self.ledger.pins
        if pins:
            # Inputs of tasks not sent yet: the master must meet those tasks first.
            held = [task_id for task_id in due if task_id in pins]
            if held:
                due = [task_id for task_id in due if task_id not in pins]
                self._acks_due, self._ack_at = held, time.monotonic() + ACK_DELAY
        if due:
            self.send(Kind.RESULTS_ACK, ResultsAck(tasks=due))

    def _resync(self) -> None:
        """After a reconnect: send again what the master may not have, ask for what is due."""
        batches, self._unconfirmed_batches = list(self._unconfirmed_batches.values()), {}
        waiting = self.ledger.waiting()
        systems = self.ledger.unfinished_systems()
        for message in self._requests.messages():
            self.send(*message)
        for batch in batches:
            self._send_tasks([(m, payload) for m, payload in batch if m.task_id in waiting])
        # Tasks submitted but still waiting here to be sent go first too: the master must have
        # every batch before the question, or it would answer that it does not hold them.
        self._send_posted(self.mailbox.drain())
        # After the batches sent again (the master reads them first): any other task it no
        # longer holds (it restarted with no state directory) comes back failed.
        ids = sorted(waiting)
        for start in range(0, len(ids), QUERY_IDS):
            self.send(Kind.TASKS_QUERY, TasksQuery(tasks=ids[start : start + QUERY_IDS]))
        for system_id in systems:
            self.send(Kind.SYSTEM_QUERY, SystemQuery(system_id=system_id))

    def _keep_alive(self) -> None:
        silent = time.monotonic() - self._last_from_master
        if not self._welcomed.is_set() or silent > self.master_timeout:
            self.send(Kind.HELLO, self.hello)
        else:
            self.send(Kind.HEARTBEAT, Heartbeat())

    # -- handlers (I/O thread) ---------------------------------------------------------------------

    def _on_welcome(self, msg: Message) -> None:
        limit = msg.read(Welcome).max_bytes
        if limit is not None and limit > ENVELOPE:
            self.max_bytes = limit
        if self._welcomed.is_set():
            log.info("reconnected to the master at %s", self.address)
            self._resync()
        self._welcomed.set()

    def _on_reregister(self, msg: Message) -> None:
        self.send(Kind.HELLO, self.hello)

    def _on_master_bye(self, msg: Message) -> None:
        log.warning("the master at %s is going away", self.address)
        self._last_from_master = 0.0

    def _on_running(self, msg: Message) -> None:
        self.ledger.mark_running(msg.read(Running).tasks)

    def _on_results(self, msg: Message) -> None:
        delivery = msg.read(Delivery)
        results = delivery.results
        if delivery.acked:  # SUBMITs the master accepted: their batches need not go again
            for rid in delivery.acked:
                self._unconfirmed_batches.pop(rid, None)
        # The master keeps each result (journaled) until told it arrived: say so soon, in bulk.
        if not self._acks_due:
            self._ack_at = time.monotonic() + ACK_DELAY
        self._acks_due.extend([result.task_id for result in results])
        refused = self.ledger.settle(results, msg.payloads)
        if refused:  # altered on the way: counted as any refused message is
            self.codec.rejected["bad-digest"] += refused

    def _on_reply(self, msg: Message) -> None:
        reply = msg.body
        if not isinstance(reply, (Ack, Reject, StatusReply)):
            return  # not a kind this handler is given
        if isinstance(reply, Ack) and reply.rids:  # several SUBMITs accepted at once
            for rid in reply.rids:
                self._unconfirmed_batches.pop(rid, None)
            return
        batch = self._unconfirmed_batches.pop(reply.rid, None) if reply.rid is not None else None
        if batch is not None:
            if isinstance(reply, Reject):
                error = TaskswarmError(f"the master refused the tasks: {reply.reason}")
                self.ledger.fail([meta.task_id for meta, _ in batch], error)
            return
        if isinstance(reply, Reject):
            why = reply.reason or "the master refused it"
            raised = _REJECTIONS.get(reply.error or "", TaskswarmError)
            self._requests.answer(reply.rid, error=raised(why))
        else:
            self._requests.answer(reply.rid, reply)

    def _on_progress(self, msg: Message) -> None:
        progress = msg.read(SystemProgress)
        self.ledger.progress(
            progress.system_id,
            progress.done,
            progress.total,
            progress.failed,
            progress.first_failure,
        )

    def _on_system_done(self, msg: Message) -> None:
        done = msg.read(SystemDone)
        system_id = done.system_id
        if system_id not in self.ledger.systems:
            return
        if done.unknown:
            why = f": {done.reason}" if done.reason else ""
            self.ledger.system_ended(
                system_id,
                error=UnknownTaskSystem(
                    f"the master at {self.address} holds no task system with id {system_id}{why}"
                ),
            )
            return
        # Received: the master may let the result go (older masters ignore ``systems``).
        self.send(Kind.RESULTS_ACK, ResultsAck(tasks=[], systems=[system_id]))
        try:
            result, error = cloudpickle.loads(msg.payloads[0].open())  # its digest checked
        except BadDigest as exc:
            self.codec.rejected[exc.reason] += 1
            result, error = None, exc
        except Exception as exc:
            result, error = (
                None,
                TaskswarmError(f"the system's result could not be unpickled: {exc}"),
            )
        if error is not None and not isinstance(error, BaseException):
            error = TaskSystemError(str(error))
        self.ledger.system_ended(system_id, result, error)
