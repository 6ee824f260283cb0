"""Tasks: the unit of work a worker process runs, and how their results and errors travel.

A task is pickled (cloudpickle) on the node that creates it, travels through the master as opaque
bytes, is unpickled and called in a worker process, and its outcome comes back as one pickled
*outcome*: either the result, or the exception wrapped so that it is rebuilt on the other side with
the worker's traceback as ``__cause__`` (the way ``concurrent.futures`` does it). When the
exception itself cannot be pickled, or cannot be unpickled where it lands, a ``TaskError`` carrying
its type name and traceback text takes its place.

Over 400 lines on purpose: the task classes and the two ends of a task's run (the worker's
``run_task*`` and the owner's ``load_outcome``) share one format of outcome, which stays
trustworthy only while both ends are read side by side.
"""

from __future__ import annotations

import contextlib
import itertools
import linecache
import math
import os
import pickle
import re
import secrets
import traceback
from collections.abc import Callable, Iterator, Sequence

# The stdlib's own remote-traceback class (a plain Exception subclass with ``.tb``).
from concurrent.futures.process import _RemoteTraceback
from typing import Any

import cloudpickle

from .errors import BadDigest, DependencyError, TaskError
from .inputs import giving
from .protocol import sharing
from .protocol.digests import Payload, opened
from .protocol.messages import TaskMeta, parse_resources

__all__ = [
    "Task",
    "FunctionTask",
    "RemoteTraceback",
    "ExceptionWithTraceback",
    "Status",
    "new_task_id",
    "task_meta",
]


_ids: Iterator[str] = iter(())


def _reset_ids() -> None:
    """A random prefix per process and a counter: unique across the cluster, and a hundred
    times cheaper than a uuid4 (no system call per id). A forked child gets its own prefix."""
    global _ids
    prefix = secrets.token_hex(8)
    _ids = (f"{prefix}{n:x}" for n in itertools.count())


_reset_ids()
os.register_at_fork(after_in_child=_reset_ids)


def new_task_id() -> str:
    return next(_ids)


class Task:
    """One piece of work. Subclass it and implement ``__call__``, which runs in a worker process.

    ``finished(result, error)`` runs where the task's owner lives: on the master for a task
    system's tasks (as in the seed), on the application node for plain tasks.
    """

    #: Seconds the task may run before its worker is replaced and it fails with TaskTimeout.
    timeout: float | None = None
    #: How often a task that raised may be run again; worker or slave loss never counts.
    max_retries: int = 0
    #: Which exceptions a retry is for (with ``max_retries`` > 0).
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    #: Higher runs first; tasks of one priority run in the order they were sent.
    priority: int = 0
    #: What the task needs of a slave, e.g. ``{"gpu": 1}``: it only goes to a slave started
    #: with ``--resources gpu=N`` that has that much free, and holds it while it runs.
    resources: dict[str, float] | None = None

    def __init__(
        self, name: str | None = None, system_id: str | None = None, client_id: str | None = None
    ) -> None:
        self.name = name if name is not None else type(self).__name__
        self.task_id = new_task_id()
        self.system_id = system_id
        self.client_id = client_id
        self.slave_id: str | None = None

    def __call__(self) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement __call__(self)")

    def clean_up(self) -> None:
        """Runs in the worker after ``__call__``, whether it returned or raised."""

    def finished(self, result: Any, error: BaseException | None) -> None:
        """Runs on the owner's node once the task's outcome is in; the default does nothing."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} id={getattr(self, 'task_id', '?')}>"


class FunctionTask(Task):
    """A plain callable with its arguments, so ``app.submit(pow, 2, 10)`` needs no subclass."""

    def __init__(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> None:
        super().__init__(name=getattr(fn, "__qualname__", None) or repr(fn))
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self) -> Any:
        return self.fn(*self.args, **self.kwargs)


# -- outcomes: what a worker sends back ----------------------------------------------------------


#: The worker's formatted traceback, attached as ``__cause__`` of a re-raised task error: the
#: very class ``concurrent.futures.ProcessPoolExecutor`` attaches, so code (and tests) written
#: against the standard library see the same thing (``.tb`` is the text).
RemoteTraceback = _RemoteTraceback


def _rebuild_exception(exc: BaseException, tb: str) -> BaseException:
    # The stdlib's class takes the traceback's text (its stub says otherwise).
    exc.__cause__ = RemoteTraceback(with_source_lines(tb))  # type: ignore[arg-type]
    return exc


_FRAME_LINE = re.compile(r'^(\s*)File "([^"]+)", line (\d+), in ')


def with_source_lines(tb: str) -> str:
    """Fill in, from this process's own files, the source lines a worker could not show.

    Code sent by value runs on machines that lack its file (a script, a notebook cell), so
    the worker's traceback names file and line only. Where the traceback is read -- the node
    that sent the code, in the usual case -- the file is there: its lines go in beneath.
    """
    lines = tb.split("\n")
    out: list[str] = []
    for index, line in enumerate(lines):
        out.append(line)
        frame = _FRAME_LINE.match(line)
        if frame is None:
            continue
        following = lines[index + 1] if index + 1 < len(lines) else ""
        if following.startswith(frame.group(1) + "  ") and not _FRAME_LINE.match(following):
            continue  # the worker had the line
        source = linecache.getline(frame.group(2), int(frame.group(3))).strip()
        if source:
            out.append(f"{frame.group(1)}  {source}")
    return "\n".join(out)


class ExceptionWithTraceback:
    """Pickles as "rebuild this exception with this traceback text as its cause"."""

    def __init__(self, exc: BaseException, tb: str) -> None:
        self.exc, self.tb = exc, tb

    def __reduce__(self) -> tuple[Any, ...]:
        return _rebuild_exception, (self.exc, self.tb)


def format_remote_traceback(exc: BaseException) -> str:
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return f'\n"""\n{text}"""'


def dump_error(exc: BaseException, context: str = "") -> bytes:
    """Pickle an exception for the trip back; falls back to a TaskError that keeps its text."""
    tb = format_remote_traceback(exc)
    try:
        data: bytes = cloudpickle.dumps(ExceptionWithTraceback(exc, tb))
        # Some exceptions pickle but cannot be rebuilt (an __init__ that does not take its own
        # args): find out here, where the type name and traceback can still be kept.
        cloudpickle.loads(data)
        return data
    except BaseException:  # noqa: BLE001 - even a SystemExit from a __reduce__ is the task's
        prefix = f"{context}: " if context else ""
        fallback = TaskError(
            f"{prefix}{type(exc).__qualname__}: {exc} (the exception could not be pickled)",
            type(exc).__qualname__,
            tb,
        )
        pickled: bytes = cloudpickle.dumps(ExceptionWithTraceback(fallback, tb))
        return pickled


def failure(error: BaseException) -> bytes:
    """An outcome the master makes itself (cancelled, lost, no slave offers what it needs):
    the error pickled as a task's would be, with no worker traceback to carry."""
    pickled: bytes = cloudpickle.dumps(ExceptionWithTraceback(error, ""))
    return pickled


def task_meta(task: Task) -> TaskMeta:
    """What the master and slaves need to know of a task without unpickling it, checked here
    where a mistake is made: a :class:`taskswarm.protocol.messages.TaskMeta`."""
    if task.timeout is None and task.max_retries == 0 and task.priority == 0 and not task.resources:
        return TaskMeta(task.task_id, None, 0, str(task.name))  # the defaults: nothing to check
    return TaskMeta(
        task.task_id,
        _checked_timeout(task),
        _checked_retries(task),
        str(task.name),
        _checked_priority(task),
        _checked_resources(task),
    )


#: Whole numbers in task metadata fit in 64 bits: the wire (msgpack) and the journal (SQLite)
#: carry no more, so a bigger one is refused at submit, where the mistake is made.
INT64 = range(-(2**63), 2**63)


def _checked_priority(task: Task) -> int:
    priority = task.priority
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise ValueError(f"task {task.name!r}: priority must be a whole number, not {priority!r}")
    if priority not in INT64:
        raise ValueError(
            f"task {task.name!r}: priority must be a whole number that fits in 64 bits "
            f"(-2**63 to 2**63-1), not {priority!r}"
        )
    return priority


def _checked_resources(task: Task) -> dict[str, float] | None:
    try:
        return parse_resources(task.resources)
    except ValueError as exc:
        raise ValueError(f"task {task.name!r}: {exc}") from None


def _checked_timeout(task: Task) -> float | None:
    timeout = task.timeout
    if timeout is None:
        return None
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout < math.inf
    ):
        raise ValueError(
            f"task {task.name!r}: timeout must be a positive, finite number of seconds, "
            f"not {timeout!r}"
        )
    return float(timeout)


def _checked_retries(task: Task) -> int:
    retries = task.max_retries
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries < 2**63:
        raise ValueError(
            f"task {task.name!r}: max_retries must be a whole number from 0 to 2**63-1, "
            f"not {retries!r}"
        )
    return retries


class Status:
    """How a task's run ended, as the slave reports it (plain strings on the wire)."""

    OK = "ok"
    ERROR = "error"  # the task raised; the outcome is the exception
    RETRY = "retry"  # the task raised an exception its ``retry_on`` names
    CRASH = "crash"  # the worker process died running it
    TIMEOUT = "timeout"  # it ran past its ``timeout``; the worker was replaced
    CANCELLED = "cancelled"  # stopped on request; there is no outcome
    LOST_INPUT = "lost-input"  # an input kept on another slave could not be fetched; unrun


#: How the detail of a ``Status.CRASH`` begins when the slave replaced the worker for passing its
#: memory limit: a crash like any other (it costs an attempt), except that the master fails the
#: task with ``WorkerMemoryExceeded`` when the last attempt ended so.
MEMORY_EXCEEDED = "WorkerMemoryExceeded: "


#: How the failure text of a task whose payload was refused begins (it did not match the digest
#: its signed header gave: altered on the way); the slave counts these as ``bad-digest``.
REFUSED = BadDigest.__qualname__ + ": "


def run_task(payload: bytes | Payload) -> tuple[str, bytes]:
    """Unpickle a task, run it, and return ``(status, pickled outcome)``; never raises.

    This is the whole of what a worker process does with a task, kept here so the same rules
    (what counts as an error, how it is pickled) hold for every task manager.
    """
    status, outcome, _ = run_task_reporting(payload)
    return status, outcome


def run_task_reporting(
    payload: bytes | Payload, inputs: Sequence[Sequence[Any]] | None = None
) -> tuple[str, bytes, str | None]:
    """``run_task``, plus for a failure :func:`error_text`: the master shows it to people
    (latest errors on the dashboard) without unpickling the outcome, which it never does for
    plain tasks.

    A payload as received (a :class:`~taskswarm.protocol.digests.Payload`) is checked against
    the digest its signed header gave, here, right before it is unpickled: one that does not
    match is not unpickled, and the task fails with ``BadDigest`` (its text begins with
    :data:`REFUSED`).

    ``inputs``: the results of the tasks whose Futures this one took as arguments, each
    ``[task_id, pickled result, digest]`` (digest None for bytes made on this host), checked
    and unpickled here, then put in their placeholders' places (``taskswarm.inputs``)."""
    try:
        data = opened(payload)
        values = _load_inputs(inputs) if inputs else None
    except BadDigest as exc:
        exc.add_note(f"(the task was refused unrun on slave host {_hostname()})")
        return Status.ERROR, dump_error(exc), REFUSED + str(exc)
    except DependencyError as exc:
        return Status.ERROR, dump_error(exc), error_text(exc)
    try:
        with giving(values) if values is not None else _NO_INPUTS:
            task = sharing.load(data) if sharing.is_reference(data) else pickle.loads(data)
    except BaseException as exc:  # noqa: BLE001 - any unpickling failure is the task's failure
        error = _unpickling_error(exc)
        return Status.ERROR, dump_error(error), error_text(error)
    try:
        try:
            result = task()
        finally:
            task.clean_up()
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a task is its error too
        retry = getattr(task, "max_retries", 0) > 0 and isinstance(exc, _retry_on(task))
        return (Status.RETRY if retry else Status.ERROR), dump_error(exc), error_text(exc)
    try:
        share = sharing.configured()
        if share is not None and getattr(task, "system_id", None) is None:
            # A plain task's result goes to its application, on this host: shared if big.
            return Status.OK, dump_shared_result(result, share, task.task_id), None
        return Status.OK, dump_result(result), None
    except BaseException as exc:  # noqa: BLE001 - a SystemExit from __reduce__ too: delivered
        # The pickling error itself, as concurrent.futures delivers it (its type kept), with a
        # note saying whose result it was.
        if hasattr(exc, "add_note"):
            exc.add_note(f"(raised pickling the result of task {getattr(task, 'name', '?')!r})")
        return Status.ERROR, dump_error(exc), error_text(exc)


#: Most characters of a traceback sent along for people to read (its end: where it failed).
ERROR_TEXT_LIMIT = 4000


def error_text(exc: BaseException) -> str:
    """``Type: message`` on the first line, then the traceback (its last ``ERROR_TEXT_LIMIT``
    characters), as plain text any node can show without unpickling anything."""
    head = f"{type(exc).__qualname__}: {exc}"
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > ERROR_TEXT_LIMIT:
        tb = "...\n" + tb[-ERROR_TEXT_LIMIT:]
    return f"{head[:500]}\n{tb}"


def dump_result(result: Any) -> bytes:
    """The plain pickler first (several times faster); cloudpickle for what it cannot do, such
    as an instance of a class the task brought with it by value."""
    try:
        return pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:
        pickled: bytes = cloudpickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        return pickled


def dump_shared_result(result: Any, share: sharing.Sharing, task_id: str) -> bytes:
    """``dump_result``, with big buffers out of band and, past the threshold, the whole in a
    shared memory segment: its reference is what travels (the application frees it)."""
    collector = sharing.Collector(share.threshold)
    wrapped = sharing.wrap_big(result, share.threshold)
    try:
        data = pickle.dumps(wrapped, protocol=5, buffer_callback=collector)
    except Exception:
        collector.clear()
        data = cloudpickle.dumps(wrapped, protocol=5, buffer_callback=collector)
    try:
        return sharing.seal(share, "r", task_id, data, collector.buffers)
    except OSError:
        return dump_result(result)  # no room in /dev/shm: the slow road


#: What a task that takes no inputs is unpickled under.
_NO_INPUTS = contextlib.nullcontext()


def _load_inputs(inputs: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """The inputs' values by task id, each checked against its digest before it is unpickled
    (an altered one raises ``BadDigest``); each is ``[task_id, bytes, digest]`` (digest None:
    made on this host) or ``[task_id, Payload]`` (an engine's worker gets it so). A result in
    shared memory is mapped, not copied, and not freed: its application frees it once every task
    that takes it is done."""
    values = {}
    for task_id, data, *sealed in inputs:
        digest = sealed[0] if sealed else None
        pickled = opened(Payload(data, digest) if digest is not None else data)
        try:
            if sharing.is_reference(pickled):
                values[task_id] = sharing.load(pickled, cloudpickle.loads)
            else:
                values[task_id] = cloudpickle.loads(pickled)
        except Exception as exc:
            raise DependencyError(
                f"the result of task {task_id}, an input of this task, could not be unpickled "
                f"on slave host {_hostname()}: {type(exc).__name__}: {exc}",
                type(exc).__qualname__,
                dependency=task_id,
            ) from exc
    return values


def _unpickling_error(exc: BaseException) -> TaskError:
    """Say what to do when a worker cannot rebuild a task: usually a module it cannot import."""
    import socket

    if isinstance(exc, DependencyError):
        return exc  # an input that did not come: it says so itself

    where = f"on slave host {socket.gethostname()}"
    if isinstance(exc, sharing.SegmentMissing):
        text = f"the task could not be unpickled {where}: {exc}"
    elif isinstance(exc, ImportError) and exc.name:
        text = (
            f"the task could not be unpickled {where}: module {exc.name!r} is not installed "
            "there; install it on every slave, or ship it from the application with "
            "app.upload_file(PATH) (modules of the application's own, beside its script, "
            "travel with its tasks unless they hold something that cannot be pickled, such as "
            "a lock or an open file at module level)"
        )
    else:
        text = f"the task could not be unpickled {where}: {type(exc).__name__}: {exc}"
    error = TaskError(text, type(exc).__qualname__, format_remote_traceback(exc))
    error.__cause__ = exc
    return error


def _retry_on(task: Any) -> tuple[type[BaseException], ...]:
    retry_on = getattr(task, "retry_on", (Exception,))
    return retry_on if isinstance(retry_on, tuple) else (retry_on,)


def _hostname() -> str:
    import socket

    return socket.gethostname()


def run_task_payload(payload: bytes | Payload) -> tuple[bool, bytes]:
    """``run_task`` as ``(ok, pickled outcome)``."""
    status, data = run_task(payload)
    return status == Status.OK, data


def load_outcome(
    ok: bool, data: bytes | Payload, task_name: str = "?", free: bool = True
) -> tuple[Any, BaseException | None]:
    """Turn a pickled outcome back into ``(result, error)`` on the owner's node. A payload as
    received is checked against its digest first: one altered on the way is not unpickled,
    and the outcome is a ``BadDigest`` error naming the task. A result in shared memory is
    freed once read unless ``free`` is False (tasks that take it as an input still need it)."""
    try:
        pickled = opened(data)
    except BadDigest as exc:
        exc.add_note(f"(the outcome of task {task_name!r} was refused, not unpickled)")
        return None, exc
    try:
        if sharing.is_reference(pickled):
            try:
                value = sharing.load(pickled, cloudpickle.loads)
            finally:
                if free:
                    sharing.free(pickled)  # read: its segment goes (a mapping lives while used)
        else:
            value = cloudpickle.loads(pickled)
    except BaseException as exc:  # noqa: BLE001 - a SystemExit from a __setstate__ too: this
        # task's outcome is broken, not the connection that carries every other one.
        what = "result" if ok else "error"
        return None, TaskError(
            f"the {what} of task {task_name!r} could not be unpickled here: "
            f"{type(exc).__name__}: {exc}",
            type(exc).__qualname__,
        )
    if ok:
        return value, None
    if not isinstance(value, BaseException):
        return None, TaskError(f"task {task_name!r} failed: {value!r}")
    return None, value
