"""How a cluster, an application and their work show in a notebook: ``_repr_html_``.

Jupyter calls ``_repr_html_`` on the kernel's thread each time an object is displayed, so the
classes' methods are one line each and the rendering is here::

    LocalCluster ----+-- status (a connection it made, STATUS_TIMEOUT) -----+
    Application -----+-- status (its own connection, STATUS_TIMEOUT) -------+--> a small table
    SystemHandle ----+-- its meter: counts the master reported (no question asked)
    TaskFuture ------+-- its state and outcome, as held here (a kept result is not fetched)

Nothing here may hang a notebook: what only the master knows (slaves, workers, task counts,
its dashboard's address) is asked for with a short timeout, and a master that does not answer
in time shows as "unreachable". Every text shown is escaped with ``html.escape``: task and
system names, results and errors are the program's own, and a name such as ``<script>`` must
show as text, not run.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import html
import reprlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ClientClosed, TaskswarmError
from .meter import format_seconds

if TYPE_CHECKING:
    from ..local import LocalCluster
    from .application import Application
    from .handles import SystemHandle, TaskFuture

__all__ = [
    "STATUS_TIMEOUT",
    "application_html",
    "cluster_html",
    "future_html",
    "status_rows",
    "system_html",
    "table",
]

#: Seconds a display waits for the master's status before it shows "unreachable".
STATUS_TIMEOUT = 1.0

#: Longest result or error text shown (the rest is cut, as ``reprlib`` does).
TEXT_LIMIT = 200

Row = tuple[str, str]  # (label, value as HTML already escaped)


def cluster_html(cluster: LocalCluster) -> str:
    """A LocalCluster: its state, address, shape, dashboard link and the master's counts."""
    closed = cluster.closed
    layout = f"{_count(cluster.slaves, 'slave')}, {_count(cluster.workers, 'worker')} each"
    rows: list[Row] = [("master", _text(cluster.address)), ("layout", _text(layout))]
    if closed:
        return table("LocalCluster", "closed", rows)
    status = _ask(lambda: _cluster_status(cluster))
    rows += status_rows(status, cluster.dashboard_link)
    return table("LocalCluster", "running" if status is not None else "unreachable", rows)


def application_html(app: Application) -> str:
    """An application connection: its state, what it waits for, and the master's counts."""
    closed = app._link.closed
    waiting = len(app._ledger.tasks)  # a len, not a copy: it may hold a million
    systems = len(app._ledger.unfinished_systems())
    rows: list[Row] = [
        ("master", _text(app.address)),
        ("client id", _text(app.client_id)),
        ("waiting for", _text(f"{_count(waiting, 'task')}, {_count(systems, 'task system')}")),
    ]
    if closed:
        return table("Application", "closed", rows)
    status = _ask(lambda: app.status(STATUS_TIMEOUT))
    rows += status_rows(status)
    return table("Application", "connected" if status is not None else "unreachable", rows)


def future_html(future: TaskFuture) -> str:
    """One task's Future: its task, state and outcome; never a wait, never a fetch."""
    name = "scattered data" if future.scattered else future.name or "task"
    rows: list[Row] = [("task", _text(name)), ("task id", _text(future.task_id))]
    if future.cancelled():
        state = "cancelled"
    elif not future.done():
        # Running once a worker has begun it; pending while it waits (the master's queue, a
        # slave's, or for its inputs).
        state = "running" if future.running() else "pending"
    elif (error := future.exception(0)) is not None:
        state = "error"
        rows.append(("error", _text(_error_text(error))))
    elif future.remote is not None:
        state = "finished"
        rows.append(("result", _text("kept on its slave (result() fetches it)")))
    else:
        state = "finished"
        rows.append(("result", _text(_short(future.result(0)))))
    return table("TaskFuture", state, rows)


def system_html(handle: SystemHandle) -> str:
    """A task system: progress as its master reported it, and its outcome once in."""
    meter = handle.meter
    state = meter.state
    percent = f" ({100 * meter.done // meter.total}%)" if meter.total else ""
    counts = _text(f"{meter.done}/{meter.total or '?'} tasks{percent}")
    bar = f'<progress value="{meter.done}" max="{max(meter.total, 1)}"></progress>'
    progress = f"{bar} {counts}"
    rows: list[Row] = [
        ("task system", _text(meter.label)),
        ("system id", _text(handle.system_id)),
        ("progress", progress),
    ]
    if meter.tasks_failed:
        rows.append(("tasks failed", _text(str(meter.tasks_failed))))
    if meter.finished:
        rows.append(("took", _text(format_seconds(meter.elapsed))))
    else:
        eta = "?" if meter.eta is None else format_seconds(meter.eta)
        rows.append(("rate", _text(f"{meter.rate:.1f} tasks/s, ETA {eta}")))
    if handle.done():
        try:
            rows.append(("result", _text(_short(handle.result(0)))))
        except Exception as error:  # noqa: BLE001 - the system's own error, shown as text
            rows.append(("error", _text(_error_text(error))))
    return table("TaskSystem", state, rows)


# -- pure rendering ------------------------------------------------------------------------------


def status_rows(status: dict[str, Any] | None, dashboard: str | None = None) -> list[Row]:
    """The rows the master's status gives (None: it did not answer in time); ``dashboard``:
    the link when the caller knows it already."""
    if status is None:
        return [("status", _text(f"unreachable (no answer within {STATUS_TIMEOUT:g}s)"))]
    live = [s for s in status.get("slaves", ()) if s.get("state") == "active"]
    tasks = status.get("tasks", {})
    done = sum(int(s.get("done", 0)) for s in live)
    systems = status.get("systems", ())
    running = sum(1 for s in systems if s.get("state") == "running")
    link = dashboard or status.get("master", {}).get("dashboard")
    queued, assigned = tasks.get("queued", 0), tasks.get("assigned", 0)
    return [
        ("slaves", _text(f"{len(live)} active")),
        ("workers", _text(str(sum(int(s.get("workers", 0)) for s in live)))),
        ("tasks", _text(f"{queued} queued, {assigned} running, {done} done")),
        ("task systems", _text(f"{running} running, {len(systems) - running} ended")),
        ("dashboard", _link(link) if link else _text("none")),
    ]


def table(kind: str, state: str, rows: Sequence[Row]) -> str:
    """``kind`` and ``state`` as a heading over a two-column table of ``rows``."""
    body = "".join(
        f'<tr><th style="text-align:left">{label}</th><td style="text-align:left">{value}</td></tr>'
        for label, value in rows
    )
    return (
        f'<div class="taskswarm"><strong>{_text(kind)}</strong> '
        f'<span class="taskswarm-state">{_text(state)}</span>'
        f"<table>{body}</table></div>"
    )


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'' if n == 1 else 's'}"


def _text(value: str) -> str:
    return html.escape(value, quote=True)


def _link(url: str) -> str:
    """A link that opens beside the notebook; only http(s) URLs are made links."""
    if not url.startswith(("http://", "https://")):
        return _text(url)
    return f'<a href="{_text(url)}" target="_blank" rel="noopener">{_text(url)}</a>'


def _short(value: Any) -> str:
    shortener = reprlib.Repr()
    shortener.maxstring = shortener.maxother = TEXT_LIMIT
    return shortener.repr(value)


def _error_text(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= TEXT_LIMIT else text[: TEXT_LIMIT - 3] + "..."


# -- asking the master, briefly ------------------------------------------------------------------


def _ask(question: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    """The master's status, or None when it did not answer within ``STATUS_TIMEOUT``."""
    try:
        return question()
    except (TaskswarmError, TimeoutError, concurrent.futures.TimeoutError, OSError):
        return None


def _cluster_status(cluster: LocalCluster) -> dict[str, Any]:
    """The status through a connection the cluster made (``cluster.connect()``) if one is
    open, else through one of its own, closed at once: reusing one saves a handshake, and the
    master keeps a record of every connection made for a while (``--forget-after``)."""
    for app in cluster._apps:
        if not app._link.closed:
            with contextlib.suppress(ClientClosed):  # closed meanwhile: the next one
                return app.status(STATUS_TIMEOUT)
    from .application import Application

    with Application(cluster.address, cluster.key, connect_timeout=STATUS_TIMEOUT) as app:
        return app.status(STATUS_TIMEOUT)
