"""A task's result that stayed on its slave: fetched when its Future's ``result()`` asks.

A plain task's big result stays on the slave that made it (the data plane,
:mod:`taskswarm.protocol.dataplane`) unless its application needs it at once: a ``Task`` whose
``finished`` does something, or a connection with an ``on_task_finished`` callback (the callback
style). Its Future is done as soon as the task is (``done()``, callbacks, ``wait``,
``as_completed`` behave as ever), holding a :class:`Remote` where the result would be; the first
``result()`` fetches the bytes from the slave's data socket on the calling thread's own socket,
unpickles them, and keeps the value, as Dask's ``Future.result()`` gathers from its worker.
Passed to another task, the Future travels as a reference and its result goes from slave to
slave, never through the master or this process.

Once fetched, or once its Future is garbage-collected, the application tells the master
(FORGET), which lets the slave drop it when no task needs it: the value lives on in the Future,
and a task given the Future later takes that value.
If that slave is lost, the master makes the result again and tells the application where it
is now (``Delivered.at``): a fetch that found no one waits for that word (``MOVE_WAIT``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from ..errors import TaskError
from ..protocol.dataplane import FETCH_TIMEOUT, FetchFailed, fetch
from ..protocol.digests import opened
from ..protocol.keys import ClusterKeys
from ..task import load_outcome

__all__ = ["MOVE_WAIT", "Remote"]

#: Seconds a fetch that found no one waits for the master to say where the result is now (it
#: takes its slave for lost within its slave timeout, then runs the task again).
MOVE_WAIT = 60.0


class Remote:
    """Where a kept result is, and what fetching it takes; the value once fetched."""

    __slots__ = ("address", "error", "keys", "lock", "moved", "name", "release", "task_id")

    def __init__(self, task_id: str, address: str, keys: ClusterKeys, name: str) -> None:
        self.task_id, self.address, self.keys, self.name = task_id, address, keys, name
        #: Set when it cannot be had any more (lost and not to be made again).
        self.error: BaseException | None = None
        #: Notified when the master says it moved (or is lost for good).
        self.moved = threading.Condition()
        #: Held by the thread fetching it: the others wait for its value.
        self.lock = threading.Lock()
        #: Tells the master its slave may let it go (once fetched, or its Future is gone).
        self.release: Callable[[], object] | None = None

    def __repr__(self) -> str:
        return f"<result of task {self.task_id} kept at {self.address}>"

    def move(self, address: str | None, error: BaseException | None = None) -> None:
        """The master says where it is now (it was made again), or that it is lost."""
        with self.moved:
            if address is not None:
                self.address = address
            self.error = error
            self.moved.notify_all()

    def get(self, timeout: float | None) -> Any:
        """Fetch and unpickle it (the task's own error if unpickling fails); raises TaskError
        when it cannot be had, TimeoutError past ``timeout``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self.moved:
                if self.error is not None:
                    raise self.error
                address = self.address
            left = FETCH_TIMEOUT if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError()
            try:
                payload = fetch(address, [self.task_id], self.keys, min(left, FETCH_TIMEOUT))
            except FetchFailed as exc:
                if not self._wait_for_move(address, deadline):
                    if deadline is not None and time.monotonic() >= deadline:
                        raise TimeoutError() from None
                    raise TaskError(
                        f"the result of task {self.name!r} ({self.task_id}) could not be "
                        f"fetched: {exc}"
                    ) from None
                continue
            result, error = load_outcome(True, opened(payload[self.task_id]), self.name)
            if error is not None:
                raise error
            return result

    def _wait_for_move(self, address: str, deadline: float | None) -> bool:
        wait = MOVE_WAIT if deadline is None else min(MOVE_WAIT, deadline - time.monotonic())
        with self.moved:
            return self.moved.wait_for(
                lambda: self.address != address or self.error is not None, max(0.0, wait)
            )
