"""DashboardServer: aiohttp in its own thread; every question is answered by the master's loop.

The server shares the master's process, so it is fenced in (see ``limits`` and ``hosts``): a
capped number of connections, a deadline for request headers, and only the ``Host:`` names it
knows. Bound beyond loopback it says so with a warning: anyone who can reach the port reads the
cluster's state, while actions still need the token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from aiohttp import web

from . import parse_address
from .api import ASK, TOKEN, Question, routes
from .hosts import allowed_hosts, host_check, is_loopback
from .limits import HEADER_TIMEOUT, KEEPALIVE_TIMEOUT, ConnectionGuard, connection_cap
from .page import close_streams
from .page import routes as page_routes

__all__ = ["DashboardServer", "parse_address"]

log = logging.getLogger(__name__)

#: Seconds a request waits for the master's loop before it answers 503.
ANSWER_TIMEOUT = 10.0


class DashboardServer:
    """Serve the API for ``ask``: a function that runs a callable in the master's loop and
    returns a concurrent Future of its result.

    ``hosts`` are names the server answers to beside those ``hosts.allowed_hosts`` gives
    (the advertised name, ``--dashboard-host``); ``max_connections`` defaults to
    ``limits.connection_cap()`` for this process's open-file limit when the server starts.
    """

    def __init__(
        self,
        ask: Callable[[Question], concurrent.futures.Future[Any]],
        host: str,
        port: int,
        token: str,
        hosts: Iterable[str] = (),
        *,
        max_connections: int | None = None,
        header_timeout: float = HEADER_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    ) -> None:
        self.ask = ask
        self.token = token
        self.host, self.port = host, port
        self.allowed = allowed_hosts(host, hosts)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keepalive_timeout = keepalive_timeout
        self.guard: ConnectionGuard | None = None
        self.url = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> str:
        """Bind and serve; returns the URL (port 0 picks a free one). Raises OSError when the
        address cannot be bound."""
        started: concurrent.futures.Future[str] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve, args=(started,), name="taskswarm-dashboard", daemon=True
        )
        self._thread.start()
        self.url = started.result(timeout=30)
        return self.url

    def _serve(self, started: concurrent.futures.Future[str]) -> None:
        loop = self._loop = asyncio.new_event_loop()
        try:
            app = web.Application(middlewares=[host_check(self.allowed)])
            app[ASK] = self._answer
            app[TOKEN] = self.token
            app.add_routes(routes)
            app.add_routes(page_routes)
            app.on_shutdown.append(close_streams)  # open event streams must not hold up stop()
            runner = self._runner = web.AppRunner(
                app, access_log=None, keepalive_timeout=self.keepalive_timeout
            )
            loop.run_until_complete(runner.setup())
            cap = self.max_connections or connection_cap()
            assert runner.server is not None  # set up just above
            guard = self.guard = ConnectionGuard(runner.server, cap, self.header_timeout)
            port = loop.run_until_complete(guard.listen(self.host, self.port))
            self._say_where(port, cap)
            host = f"[{self.host}]" if ":" in self.host else self.host
            started.set_result(f"http://{host}:{port}")
        except BaseException as exc:  # noqa: BLE001 - handed to the starting thread
            started.set_exception(exc)
            loop.close()
            return
        loop.run_forever()
        guard.close()  # no new connections while the open ones are shut
        loop.run_until_complete(runner.cleanup())
        loop.close()

    def _say_where(self, port: int, cap: int) -> None:
        log.debug("dashboard keeps at most %d connections open", cap)
        if not is_loopback(self.host):
            log.warning(
                "the dashboard on %s:%d is reachable from the network: whoever can connect "
                "reads the cluster's status and task errors (tracebacks included); actions "
                "(resize, drain, cancel) need the token. To keep it to this machine, start the "
                "master with --dashboard 127.0.0.1:%d.",
                self.host or "*",
                port,
                port,
            )

    async def _answer(self, question: Question) -> Any:
        future = self.ask(question)
        return await asyncio.wait_for(asyncio.wrap_future(future), ANSWER_TIMEOUT)

    def stop(self) -> None:
        """Stop serving and join the thread; safe to call twice."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
