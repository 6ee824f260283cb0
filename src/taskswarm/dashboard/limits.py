"""What the dashboard's port may cost the master: a few file descriptors, never the router.

The dashboard's server runs in the master's process, so every connection it holds is a file
descriptor the master's ZeroMQ socket can no longer use for a slave or an application: a
thousand connections that never finish their request would exhaust a process started with
``ulimit -n 1024``, and then the master accepts no new peer (with an ``ipc://`` bind libzmq
even aborts). So, in front of aiohttp's own protocol:

* ``ConnectionGuard`` accepts the connections, counts those open and answers any past its cap
  with a ``503`` and closes it at once, so the descriptor is freed as soon as it was taken;
* each connection's first request must have all its headers within ``HEADER_TIMEOUT``, or it
  is answered ``408`` and closed (aiohttp's ``keepalive_timeout`` closes a connection that sits
  idle between requests, or has half sent a later one);
* a request whose headers are complete is aiohttp's: an event stream (``/api/events``) lives as
  long as it is being written to, and counts against the cap while it does.

``raise_fd_limit`` lifts the process's soft limit on open files to the hard one when the
master starts, which is what the cap is then computed from.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable
from typing import Any

__all__ = [
    "HEADER_TIMEOUT",
    "KEEPALIVE_TIMEOUT",
    "MAX_CONNECTIONS",
    "ConnectionGuard",
    "connection_cap",
    "raise_fd_limit",
]

log = logging.getLogger(__name__)

#: Most connections the dashboard keeps open. A page holds one event stream and a browser at
#: most six connections per server, so this serves dozens of people watching at once.
MAX_CONNECTIONS = 256
#: ... and never more than this fraction of the process's open-file limit, so at least three
#: quarters of the descriptors stay for the router's peers, the journal and shared memory.
FD_SHARE = 4
#: Seconds a new connection has to send its first request's headers (a browser or curl sends
#: them at once; a connection that trickles them is holding a descriptor, not asking).
HEADER_TIMEOUT = 5.0
#: Seconds an idle keep-alive connection is kept between two requests.
KEEPALIVE_TIMEOUT = 10.0
#: Connections the kernel queues before the dashboard accepts them (they cost no descriptor
#: of the master's), and the most it accepts in one go.
LISTEN_BACKLOG = 128
#: Seconds between two warnings that connections are being refused.
_REFUSAL_LOG_INTERVAL = 60.0


def _answer(status: str, text: str = "") -> bytes:
    """A whole HTTP answer that closes the connection, written before aiohttp sees it."""
    body = text.encode()
    head = f"HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: text/plain; charset=utf-8\r\nRetry-After: 5\r\n"
    return head.encode() + b"\r\n" + body


_BUSY = _answer(
    "503 Service Unavailable",
    "the dashboard has as many connections open as it keeps; retry in a few seconds\n",
)
_TOO_SLOW = _answer("408 Request Timeout")


def raise_fd_limit() -> int | None:
    """Raise this process's soft limit on open files to its hard limit, so the master's peers
    (one descriptor each) are not capped by a shell's default of 1024; returns the soft limit
    now (None where there is no such limit, as on Windows)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as exc:  # e.g. macOS refuses an unlimited soft limit
            log.debug("open-file limit left at %d: cannot raise it to %d (%s)", soft, hard, exc)
            return soft
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    log.debug("open-file limit: %d (hard limit %d)", soft, hard)
    return soft


def connection_cap(limit: int | None = None) -> int:
    """The dashboard's cap for a process whose soft open-file limit is ``limit`` (default:
    this process's now): ``MAX_CONNECTIONS``, or a ``FD_SHARE``-th of the limit if less."""
    if limit is None:
        try:
            import resource
        except ImportError:  # pragma: no cover - Windows
            return MAX_CONNECTIONS
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if limit == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, limit // FD_SHARE))


class ConnectionGuard:
    """The dashboard's listening sockets and their accept loop: aiohttp's protocol
    (``make_handler``, the runner's server) behind a cap on open connections and a deadline
    for headers.

    It accepts connections itself rather than through ``loop.create_server``, whose accept
    loop takes up to a backlog of connections (each a descriptor) before any protocol sees
    them: here a connection past the cap is answered and closed in the same call that accepted
    it, so the dashboard never holds more than ``cap`` descriptors besides its listeners.
    """

    def __init__(
        self,
        make_handler: Callable[[], asyncio.Protocol],
        cap: int,
        header_timeout: float = HEADER_TIMEOUT,
    ) -> None:
        self.make_handler = make_handler
        self.cap = cap
        self.header_timeout = header_timeout
        self.open: set[_Connection] = set()
        #: Connections answered 503 (over the cap) and 408 (headers too slow), since start.
        self.refused = 0
        self.timed_out = 0
        self._starting = 0  # accepted, not yet open: counted against the cap all the same
        self._listeners: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._refused_logged = 0
        self._next_refusal_log = 0.0

    async def listen(self, host: str, port: int) -> int:
        """Bind every address ``host`` names (all interfaces for ``""``) and start accepting;
        returns the port bound (port 0: a free one). Raises OSError when it cannot bind."""
        loop = self._loop = asyncio.get_running_loop()
        found = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _, address in dict.fromkeys(found):
                listener = socket.socket(family, kind, proto)
                self._listeners.append(listener)
                listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:  # "" gives both families: one socket each
                    listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                listener.bind(address)
                listener.listen(LISTEN_BACKLOG)
                listener.setblocking(False)
        except OSError:
            self.close()
            raise
        for listener in self._listeners:
            loop.add_reader(listener.fileno(), self._accept, listener)
        bound: int = self._listeners[0].getsockname()[1]
        return bound

    def close(self) -> None:
        """Stop accepting (the open connections are aiohttp's to close); safe to call twice."""
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            if self._loop is not None and listener.fileno() >= 0:
                self._loop.remove_reader(listener.fileno())
            listener.close()

    def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(LISTEN_BACKLOG):
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors or memory: wait, as asyncio does
                log.warning("dashboard cannot accept connections for now: %s", exc)
                loop.remove_reader(listener.fileno())
                loop.call_later(1.0, self._resume, listener)
                return
            if len(self.open) + self._starting >= self.cap:
                self._refuse(conn)
                continue
            self._starting += 1
            loop.create_task(self._open(conn))

    def _resume(self, listener: socket.socket) -> None:
        if listener in self._listeners:
            asyncio.get_running_loop().add_reader(listener.fileno(), self._accept, listener)

    async def _open(self, conn: socket.socket) -> None:
        """Set an accepted socket up; until it is open (``_Connection.connection_made``) it
        counts as starting, and from then on as open: never as both, or a connection accepted
        in between would be refused with the cap not reached."""
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(self))
            return made[-1]

        try:
            loop = asyncio.get_running_loop()
            await loop.connect_accepted_socket(protocol, conn)
        except OSError:
            conn.close()  # the peer left before its connection was set up
        finally:
            if not (made and made[0].counted):
                self._starting -= 1

    def _refuse(self, conn: socket.socket) -> None:
        """Answer 503 if the socket takes it at once, and close it: the descriptor goes now.
        Counted first: whoever reads the count after the answer arrived finds it counted."""
        self.refused += 1
        try:
            conn.setblocking(False)
            conn.send(_BUSY)
        except OSError:
            pass
        conn.close()
        now = time.monotonic()
        if now >= self._next_refusal_log:  # warn at most once a minute, with the count since
            self._next_refusal_log = now + _REFUSAL_LOG_INTERVAL
            log.warning(
                "dashboard refused %d connection(s): it keeps at most %d open (the master's "
                "own connections are not affected)",
                self.refused - self._refused_logged,
                self.cap,
            )
            self._refused_logged = self.refused


class _Connection(asyncio.Protocol):
    """One connection under the cap: aiohttp's protocol, with a timer that closes it unless
    its first request's headers end in time."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.guard = guard
        self.handler: asyncio.Protocol | None = None
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, for a blank line split over two reads
        self.counted = False  # among the guard's open connections, no longer starting

    def connection_made(self, transport: Any) -> None:
        self.guard.open.add(self)
        self.guard._starting -= 1
        self.counted = True
        self.transport = transport
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(self.guard.header_timeout, self._headers_too_slow)
        self.handler = self.guard.make_handler()
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.handler is None:
            return
        if self.timer is not None:
            seen = self._tail + data
            if b"\n\r\n" in seen or b"\n\n" in seen:  # the blank line that ends the headers
                self.timer.cancel()
                self.timer = None
            else:
                self._tail = seen[-2:]
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received() if self.handler is not None else None

    def pause_writing(self) -> None:
        if self.handler is not None:
            self.handler.pause_writing()

    def resume_writing(self) -> None:
        if self.handler is not None:
            self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.handler is None:
            return
        self.guard.open.discard(self)
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        handler, self.handler = self.handler, None
        handler.connection_lost(exc)

    def _headers_too_slow(self) -> None:
        self.timer = None
        self.guard.timed_out += 1
        log.debug("dashboard closed a connection: no request headers within %gs",
                  self.guard.header_timeout)  # fmt: skip
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_TOO_SLOW)
            self.transport.close()
