"""asyncio over an application connection: ``await`` a task's Future, ``async with`` a connection.

Data flow::

    coroutine: aapp.submit(...)   --> Application.push_tasks: pickled here, handed to the I/O thread
               await future       --> a waiter on the running loop; the Future's done-callback,
                                      called on the I/O thread, wakes it (call_soon_threadsafe)
               await aapp.status(), scatter, upload_file, submit_system, close, connecting
                                  --> a thread of the loop's executor: they wait for the master

An ``AsyncApplication`` wraps one thread-safe ``Application`` and shares its link: one socket,
one I/O thread, however many coroutines await. What ``submit`` returns is the connection's own
``TaskFuture`` (awaitable, as Dask's Futures and Ray's ``ObjectRef`` are), so it is also an
argument of later tasks, and ``result()`` still works from a thread.

Cancelling, decided as Dask does: when the asyncio task awaiting a Future is cancelled (or
``asyncio.wait_for`` gives up on it) and no other coroutine awaits that Future, its task is
stopped, queued or running, as ``app.cancel(future)`` would -- unless a task of its connection
takes the Future as an argument, which still needs its result. ``asyncio.shield(future)`` keeps it
running. A cancelled waiter takes its done-callback back, so nothing calls into its loop later.
Cancelling ``run_system`` cancels its task system; cancelling ``system_result`` only stops
waiting (the system lives on the master, for any process to collect).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import threading
from collections.abc import AsyncIterator, Callable, Generator, Iterable
from concurrent.futures import Future
from concurrent.futures._base import PENDING, RUNNING
from typing import Any, TypeVar, cast

from ..errors import ClientClosed, TaskswarmError
from ..protocol.keys import ClusterKeys
from ..task import Task
from .application import Application, connect
from .handles import SystemHandle, TaskFuture
from .meter import ProgressCallback

__all__ = ["AsyncApplication", "as_completed", "connect_async", "outcome"]

T = TypeVar("T")
F = TypeVar("F", bound="Future[Any]")

#: How many coroutines (on any loop, in any thread) await each Future now: the last one
#: cancelled abandons it. A Future leaves when no one awaits it, so this holds nothing for long.
_awaiting: dict[Future[Any], int] = {}
_awaiting_lock = threading.Lock()


async def outcome(future: Future[Any]) -> Any:
    """``await future``: its result, or its task's exception raised (with the remote traceback
    as ``__cause__``, as ``result()`` raises it), waited for without blocking the loop.

    A cancelled Future raises ``asyncio.CancelledError``, as awaiting a cancelled asyncio Future
    does. A result kept on its slave is fetched on a thread of the loop's executor."""
    if not future.done():
        await _until_done(future, _abandon)
    if isinstance(future, TaskFuture) and future.remote is not None:
        return await asyncio.get_running_loop().run_in_executor(None, future.result)
    if future.cancelled():
        raise asyncio.CancelledError()
    return future.result()


async def as_completed(futures: Iterable[F]) -> AsyncIterator[F]:
    """Yield each of ``futures`` as it completes (those already done first), as
    ``concurrent.futures.as_completed`` does, without blocking the loop; ``await`` each one
    for its result. Leaving the loop early abandons none of them."""
    loop = asyncio.get_running_loop()
    pending = set(futures)
    finished: asyncio.Queue[F] = asyncio.Queue()

    def arrived(future: Any) -> None:  # on whichever thread resolved it
        with contextlib.suppress(RuntimeError):  # the loop closed: no one is left to tell
            loop.call_soon_threadsafe(finished.put_nowait, future)

    try:
        for future in pending:
            future.add_done_callback(arrived)
        for _ in range(len(pending)):
            yield await finished.get()
    finally:
        for future in pending:
            _unhook(future, arrived)


class AsyncApplication:
    """An application connection for asyncio programs: ``async with ts.connect_async(...) as
    aapp`` (or ``aapp = await ts.connect_async(...)``), then ``await aapp.submit(f, x)``.

    It wraps one ``Application`` (``app``, thread-safe, for code in other threads) and shares
    its one link. Nothing here blocks the event loop: calls that wait for the master run on a
    thread of the loop's executor, and Futures wake their awaiters from the I/O thread.
    ``submit`` and ``push_tasks`` return at once (they only pickle), as Dask's do. Closing it
    closes the ``Application`` too; Futures still awaited then raise ``ClientClosed``.
    """

    def __init__(self, app: Application | Callable[[], Application]) -> None:
        """``app``: a connection to wrap, or a function that opens one (called on a thread of the
        loop's executor when this is first awaited or entered)."""
        self._app: Application | None = None
        self._open: Callable[[], Application] | None = None
        if isinstance(app, Application):
            self._app = app
        else:
            self._open = app
        self._opening: asyncio.Future[Application] | None = None
        self._closed = False
        self._lock = threading.Lock()  # orders a connection that opens against close()

    @property
    def app(self) -> Application:
        """The ``Application`` this wraps."""
        if self._app is None:
            if self._closed:
                raise ClientClosed("this connection was closed before it opened; connect again")
            raise ClientClosed(
                "this connection is not open yet: `await` it (aapp = await ts.connect_async(...))"
                " or use `async with ts.connect_async(...) as aapp:`"
            )
        return self._app

    # -- tasks ------------------------------------------------------------------------------------

    def submit(
        self,
        fn: Task | Callable[..., Any],
        /,
        *args: Any,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> TaskFuture:
        """``Application.submit``; ``await`` the Future it returns for the result."""
        return cast(TaskFuture, self.app.submit(fn, *args, timeout=timeout, **kwargs))

    def push_tasks(self, tasks: Iterable[Task]) -> list[TaskFuture]:
        """``Application.push_tasks``: one awaitable Future per task, in order."""
        return cast("list[TaskFuture]", self.app.push_tasks(tasks))

    async def scatter(self, value: Any, timeout: float = 60.0) -> TaskFuture:
        """``Application.scatter``: returns once the master has the value."""
        return cast(TaskFuture, await _off_loop(self.app.scatter, value, timeout))

    async def cancel(self, future_or_task_id: Future[Any] | str) -> bool:
        """``Application.cancel``: stop a task, queued or running; False if already done."""
        return self.app.cancel(future_or_task_id)

    def as_completed(self, futures: Iterable[F]) -> AsyncIterator[F]:
        """``async for future in aapp.as_completed(futures)``: each as it completes."""
        return as_completed(futures)

    async def upload_file(self, path: str | os.PathLike[str], timeout: float = 60.0) -> None:
        """``Application.upload_file``: returns once the master has the code."""
        await _off_loop(self.app.upload_file, path, timeout)

    async def status(self, timeout: float = 10.0) -> dict[str, Any]:
        """``Application.status``: the master's view of the cluster."""
        return await _off_loop(self.app.status, timeout)

    # -- task systems ------------------------------------------------------------------------------

    async def submit_system(
        self, system: Any, progress: ProgressCallback | None = None
    ) -> SystemHandle:
        """``Application.submit_system``: returns once the master has the system, which lives
        on there; ``await aapp.system_result(handle)`` for its result. ``progress`` is called on
        the connection's I/O thread."""
        return await _off_loop(self.app.submit_system, system, progress)

    async def run_system(self, system: Any, progress: ProgressCallback | None = None) -> Any:
        """Send a task system and await its result; raises the error it gathered. Cancelling
        this (``asyncio.wait_for`` too) cancels the system on the master."""
        app = self.app
        sending = asyncio.get_running_loop().run_in_executor(
            None, app.submit_system, system, progress
        )
        try:
            handle = await asyncio.shield(sending)
            return await _system_outcome(handle)
        except asyncio.CancelledError:
            # No one waits for it any more: stop it, once the master has it.
            sending.add_done_callback(functools.partial(_cancel_sent, app))
            raise

    async def system_result(self, system: SystemHandle | str) -> Any:
        """The result of a task system, by its handle or its ``system_id`` (sent by any
        process); cancelling this only stops waiting."""
        if isinstance(system, SystemHandle):
            handle = system
        else:
            loop = asyncio.get_running_loop()  # a short id is looked up with a round trip
            handle = await loop.run_in_executor(None, self.app._system_handle, str(system))
        return await _system_outcome(handle)

    async def cancel_system(self, system_id: str) -> None:
        """``Application.cancel_system``: its tasks are cancelled, its result is an error."""
        self.app.cancel_system(system_id)

    # -- lifecycle --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Close the connection (and the ``Application`` it wraps); Futures still awaited raise
        ``ClientClosed``. Safe twice."""
        with self._lock:
            self._closed = True
            app = self._app
        if app is not None:
            await _off_loop(app.close)

    async def _connect(self) -> AsyncApplication:
        if self._app is not None:
            return self
        if self._closed or self._open is None:
            raise ClientClosed("this connection was closed before it opened; connect again")
        if self._opening is None:
            self._opening = asyncio.get_running_loop().run_in_executor(None, self._opened)
        try:
            await asyncio.shield(self._opening)
        except asyncio.CancelledError:
            # No one is left to close what opens: it closes itself (``_opened``), or is
            # closed now if it opened meanwhile.
            with self._lock:
                self._closed = True
                app = self._app
            if app is not None:
                asyncio.get_running_loop().run_in_executor(None, app.close)
            raise
        return self

    def _opened(self) -> Application:
        """Open the connection (a thread of the loop's executor); close it at once if this
        was closed (or its opening abandoned) meanwhile."""
        assert self._open is not None
        app = self._open()
        with self._lock:
            if not self._closed:
                self._app = app
                return app
        app.close()
        raise ClientClosed("the connection was closed while it was being opened")

    def __await__(self) -> Generator[Any, None, AsyncApplication]:
        return self._connect().__await__()

    async def __aenter__(self) -> AsyncApplication:
        return await self._connect()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        if self._app is None:
            return f"<AsyncApplication {'closed' if self._closed else 'not connected yet'}>"
        return f"<AsyncApplication of {self._app.address}>"


def connect_async(
    address: str | None = None,
    key_file: str | os.PathLike[str] | None = None,
    *,
    key: bytes | ClusterKeys | None = None,
    connect_timeout: float = 10.0,
    shared_memory: object = None,
    ship: Iterable[str | os.PathLike[str]] = (),
) -> AsyncApplication:
    """``ts.connect`` for asyncio programs: ``async with ts.connect_async(...) as aapp`` or
    ``aapp = await ts.connect_async(...)``. The same arguments and defaults (TASKSWARM_MASTER,
    TASKSWARM_KEY_FILE); the connection opens on a thread of the loop's executor when awaited,
    and its errors (no master, a wrong key) are raised there."""
    return AsyncApplication(
        functools.partial(
            connect,
            address,
            key_file,
            key=key,
            connect_timeout=connect_timeout,
            shared_memory=shared_memory,
            ship=tuple(ship),
        )
    )


# -- waiting without blocking the loop -------------------------------------------------------------


async def _off_loop(call: Callable[..., T], *args: Any) -> T:
    """``call(*args)``, which waits for the master, on a thread of the loop's executor."""
    return await asyncio.get_running_loop().run_in_executor(None, call, *args)


async def _system_outcome(handle: SystemHandle) -> Any:
    future = handle._future
    if not future.done():
        await _until_done(future, None)
    return handle.result()


async def _until_done(future: Future[Any], abandon: Callable[[Future[Any]], None] | None) -> None:
    """Wait for ``future`` on the running loop; if this waiter is cancelled and was the last
    one, ``abandon(future)``."""
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(_: Future[Any]) -> None:  # on whichever thread resolved it
        with contextlib.suppress(RuntimeError):  # the loop closed: no one is left to wake
            loop.call_soon_threadsafe(_set_done, waiter)

    _count(future, 1)
    try:
        future.add_done_callback(wake)
        await waiter
    except asyncio.CancelledError:
        last = _leave(future, wake)
        if last and abandon is not None and not future.done():
            abandon(future)
        raise
    except BaseException:
        _leave(future, wake)
        raise
    _leave(future, wake)


def _set_done(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():  # cancelled meanwhile
        waiter.set_result(None)


def _count(future: Future[Any], step: int) -> int:
    with _awaiting_lock:
        left = _awaiting.get(future, 0) + step
        if left > 0:
            _awaiting[future] = left
        else:
            _awaiting.pop(future, None)
        return left


def _leave(future: Future[Any], callback: Callable[[Future[Any]], object]) -> bool:
    """One waiter leaves: its callback taken back; whether it was the last."""
    _unhook(future, callback)
    return _count(future, -1) == 0


def _unhook(future: Future[Any], callback: Callable[[Future[Any]], object]) -> None:
    """Take back a done-callback not called yet (the stdlib has no call for it): a waiter that
    left must leave nothing behind that would call into its loop later. Only while the Future
    is pending: once it is done, its callbacks are being called and their list is not touched."""
    with future._condition:
        if future._state in (PENDING, RUNNING):
            with contextlib.suppress(ValueError):
                future._done_callbacks.remove(callback)  # type: ignore[attr-defined]


def _abandon(future: Future[Any]) -> None:
    """No coroutine awaits ``future`` any more: its task is stopped, unless a task of its
    connection takes it as an argument."""
    # The connection a TaskFuture belongs to is the one its cancel() reports to.
    app = getattr(getattr(future, "_on_cancel", None), "__self__", None)
    if isinstance(app, Application) and isinstance(future, TaskFuture):
        app._abandon(future)
    else:
        future.cancel()


def _cancel_sent(app: Application, sending: asyncio.Future[SystemHandle]) -> None:
    """A task system that ``run_system`` no longer awaits: cancelled once the master has it."""
    if sending.cancelled() or sending.exception() is not None:
        return  # never reached the master
    handle = sending.result()
    if not handle.done():
        with contextlib.suppress(TaskswarmError):  # the connection closed meanwhile
            app.cancel_system(handle.system_id)
