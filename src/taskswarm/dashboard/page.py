"""The dashboard page: one screen that follows the cluster live, served by the master itself.

Why it is built this way:

* every asset (HTML, CSS, JS, and the charting library uPlot in ``static/vendor/``) ships in
  ``static/`` inside the package, so a master on a machine without internet access still shows
  its page and no CDN learns who watches the cluster;
* the page follows ``/api/events``, a Server-Sent Events stream with one ``status`` event a
  second, instead of polling: one long response rather than a request a second, and the
  browser's EventSource reconnects by itself when a stream ends or the master restarts;
* each event asks the master's loop for ``master.status()``, as every API handler does, so the
  dashboard's thread never touches the master's records; the streams open at once share one
  question per second;
* a stream never holds the server up when it stops: it ends on a client that went away, on a
  master that does not answer within ``ASK_TIMEOUT`` (the master's loop is busy stopping the
  dashboard) and at once when ``close_streams`` runs as an ``on_shutdown`` hook.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

from aiohttp import web

from .api import ASK

__all__ = ["STATIC", "close_streams", "routes"]

routes = web.RouteTableDef()

#: The page's files: index.html, dashboard.css, dashboard.js; vendor/: uPlot and its licence.
STATIC = Path(__file__).with_name("static")
#: Seconds between two ``status`` events.
EVENT_INTERVAL = 1.0
#: Seconds a stream waits for the master's answer before it ends (the browser reconnects).
ASK_TIMEOUT = 2.0
#: Milliseconds the browser waits before it reconnects to a stream that ended.
RETRY_MS = 1500
#: A static file's name: no folders, no dot files.
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
#: The page loads only its own files and talks only to its own master.
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    # The page URL may carry ?token=...: never send it on in a Referer header.
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

#: Stop events of the open streams, by id() of their application.
_streams: dict[int, set[asyncio.Event]] = {}
#: The latest status question per application: (loop time asked, its future).
_latest: dict[int, tuple[float, asyncio.Future[Any]]] = {}


@routes.get("/")
async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html", headers=_HEADERS)


@routes.get("/static/{name}")
async def static(request: web.Request) -> web.FileResponse:
    return _file(STATIC, request.match_info["name"])


@routes.get("/static/vendor/{name}")
async def vendor(request: web.Request) -> web.FileResponse:
    """Third-party files as their authors published them (uPlot), each with its licence."""
    return _file(STATIC / "vendor", request.match_info["name"])


def _file(folder: Path, name: str) -> web.FileResponse:
    path = folder / name
    if not _NAME.fullmatch(name) or not path.is_file():
        raise web.HTTPNotFound(text=f"no dashboard file {name!r}")
    return web.FileResponse(path, headers=_HEADERS)


async def close_streams(app: web.Application) -> None:
    """End every open event stream of ``app`` now; meant for ``app.on_shutdown``."""
    for stop in _streams.get(id(app), ()):
        stop.set()
    _latest.pop(id(app), None)


def _event(name: str, data: Any) -> bytes:
    text = json.dumps(data, separators=(",", ":"), default=str)
    return f"event: {name}\ndata: {text}\n\n".encode()


def _shared_ask(app: web.Application) -> asyncio.Future[Any]:
    """The master's status, asked at most once per half ``EVENT_INTERVAL`` for all the open
    streams of ``app``: ten open pages cost the master one status a second, not ten (a big
    cluster's status is megabytes)."""
    now = asyncio.get_running_loop().time()
    latest = _latest.get(id(app))
    if latest is not None:
        asked, ask = latest
        failed = ask.done() and (ask.cancelled() or ask.exception() is not None)
        if now - asked < EVENT_INTERVAL / 2 and not failed:
            return ask
    ask = asyncio.ensure_future(app[ASK](lambda master: master.status()))
    ask.add_done_callback(lambda f: f.cancelled() or f.exception())  # read here, not lost
    _latest[id(app)] = (now, ask)
    return ask


async def _status(request: web.Request, stop: asyncio.Event) -> Any:
    """The master's status; None when the master does not answer within ``ASK_TIMEOUT`` or the
    stream is told to stop first (the master's loop may be the one stopping the server)."""
    ask = _shared_ask(request.app)
    halt = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({ask, halt}, timeout=ASK_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
        if ask.done() and not ask.cancelled() and ask.exception() is None:
            return ask.result()
        return None  # a timeout, the master's error, or a stop: end; the page reconnects
    finally:
        halt.cancel()  # not the ask: other streams may be waiting on it


@routes.get("/api/events")
async def events(request: web.Request) -> web.StreamResponse:
    """One ``status`` event (the JSON of ``master.status()``) a second, until the client goes,
    the master stops answering, or the server shuts down."""
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # a proxy in front must not hold the events back
        }
    )
    stop = asyncio.Event()
    streams = _streams.setdefault(id(request.app), set())
    streams.add(stop)
    try:
        await response.prepare(request)
        await response.write(f"retry: {RETRY_MS}\n\n".encode())
        while not stop.is_set():
            info = await _status(request, stop)
            if info is None:
                break
            await response.write(_event("status", info))
            try:
                await asyncio.wait_for(stop.wait(), EVENT_INTERVAL)
            except asyncio.TimeoutError:
                pass
    except ConnectionResetError:
        pass  # the browser went away (aiohttp's ClientConnectionResetError is one)
    # asyncio.CancelledError (the server gave up waiting for this stream) is left to aiohttp,
    # which expects it back; the finally below is all the tidying there is.
    finally:
        streams.discard(stop)
        if not streams:
            _streams.pop(id(request.app), None)
            _latest.pop(id(request.app), None)
    return response
