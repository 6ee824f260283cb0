"""Requests to the master that wait for their reply, matched by request id (``rid``).

A user thread that must hear the master's answer (``status``, ``submit_system``'s ACK, a soft
CANCEL) opens a request: a Future under a fresh ``rid`` that the message carries, and the
message itself, kept so that a reconnect can send it again. The I/O thread answers the Future
when a reply with that ``rid`` arrives; the user thread closes the request however it ends
(reply, timeout, closed connection).
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import TYPE_CHECKING

from .ledger import resolve

if TYPE_CHECKING:
    from ..protocol.messages import Header
    from .link import PostedMessage

__all__ = ["Requests"]


class Requests:
    """The open requests of one link. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._futures: dict[int, Future[Header]] = {}
        self._messages: dict[int, PostedMessage] = {}

    def open(self, rid: int, message: PostedMessage) -> Future[Header]:
        """A Future for the reply to ``message`` (whose header carries ``rid``)."""
        future: Future[Header] = Future()
        with self._lock:
            self._futures[rid] = future
            self._messages[rid] = message
        return future

    def close(self, rid: int) -> None:
        with self._lock:
            self._futures.pop(rid, None)
            self._messages.pop(rid, None)

    def answer(
        self, rid: int | None, header: Header | None = None, error: BaseException | None = None
    ) -> None:
        """The reply to ``rid`` came: its header (the record), or the error a refusal means."""
        if rid is None:
            return  # not an answer to a request
        with self._lock:
            future = self._futures.get(rid)
        if future is not None:
            resolve(future, header, error)

    def messages(self) -> list[PostedMessage]:
        """What every open request sent (to send again after a reconnect)."""
        with self._lock:
            return list(self._messages.values())

    def fail_all(self, error: BaseException) -> None:
        with self._lock:
            futures = list(self._futures.values())
        for future in futures:
            resolve(future, exception=error)
