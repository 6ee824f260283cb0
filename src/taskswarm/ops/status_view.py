"""`taskswarm status` as tables (rich), from the master's status data."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .progress import format_seconds

#: Columns of output that goes to a pipe or a file.
WIDE = 200

_STATE_STYLE = {"active": "green", "pending": "yellow", "inactive": "yellow", "lost": "red"}
#: Finished task systems the table shows (the newest); `--json` and the API list them all.
FINISHED_SHOWN = 10


def render_status(info: dict[str, Any], console: Console | None = None) -> None:
    if console is None:
        # A pipe or a log has no width to fit: use a wide one rather than squeeze the tables.
        console = Console() if sys.stdout.isatty() else Console(width=WIDE)
    for renderable in status_renderables(info):
        console.print(renderable)


def status_renderables(info: dict[str, Any]) -> list[Any]:
    """The header line and tables `taskswarm status` prints (``--watch`` redraws them)."""
    master = info["master"]
    tasks = info["tasks"]
    out: list[Any] = []
    out.append(
        f"master {master['address']} (pid {master['pid']} on {master['host']}, "
        f"scheduler {master['scheduler']}/{master['strategy']}"
        f"{', stealing' if master.get('stealing') else ''}, up {master['uptime']:.0f}s); "
        f"tasks queued {tasks['queued']}, assigned {tasks['assigned']}"
    )
    if master.get("degraded"):
        out.append(f"[bold red]refusing new work:[/] {escape(master['degraded'])}")
    out.append(_slaves_table(info["slaves"]))
    if info.get("applications"):
        out.append(_applications_table(info["applications"]))
    if info["systems"]:
        out.append(_systems_table(info["systems"]))
    if info.get("errors"):
        out.append(_errors_table(info["errors"]))
    return out


def _slaves_table(slaves: list[dict[str, Any]]) -> Table:
    table = Table(title="slaves")
    # Columns that would be all zeros or empty are left out, so the table fits a terminal.
    stolen = any(slave.get("stolen") for slave in slaves)
    kept = any(slave.get("kept_results") for slave in slaves)
    resources = any(slave.get("resources") for slave in slaves)
    numbers = (
        "workers", "in flight", "rating", "done", "failed",
        *(["stolen"] if stolen else []), *(["kept"] if kept else []),
    )  # fmt: skip
    columns = ("id", "host", "state", *numbers, *(["resources"] if resources else []), "heard")
    for column in columns:
        table.add_column(column, justify="right" if column in (*numbers, "heard") else "left")
    for slave in slaves:
        style = _STATE_STYLE.get(slave["state"], "")
        rating = "-" if slave["rating"] is None else f"{slave['rating']:.2f}"
        cells = [
            slave["id"],
            slave["host"],
            f"[{style}]{slave['state']}[/]",
            str(slave["workers"]),
            str(slave["in_flight"]),
            rating,
            str(slave["done"]),
            str(slave.get("failed", 0)),
        ]
        if stolen:
            cells.append(str(slave.get("stolen", 0)))
        if kept:  # results it keeps for others to fetch, and their bytes
            cells.append(f"{slave.get('kept_results', 0)} ({_size(slave.get('kept_bytes', 0))})")
        if resources:
            offer = slave.get("resources") or {}
            cells.append(",".join(f"{k}={v:g}" for k, v in sorted(offer.items())) or "-")
        cells.append(_ago(slave.get("last_heartbeat")))
        table.add_row(*cells)
    return table


def _applications_table(applications: list[dict[str, Any]]) -> Table:
    table = Table(title="applications")
    numbers = ("in flight", "done", "failed", "heard")
    for column in ("id", "host", "pid", "state", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for app in applications:
        table.add_row(
            app["id"],
            app.get("host") or "-",
            str(app.get("pid") or "-"),
            app["state"],
            str(app["in_flight"]),
            str(app["done"]),
            str(app["failed"]),
            _ago(app.get("last_heartbeat")),
        )
    return table


def _systems_table(systems: list[dict[str, Any]]) -> Table:
    """Every running system, then the newest finished ones (the master sends them in that
    order); the older finished ones are counted in the title, not listed."""
    running = [s for s in systems if s["state"] == "running"]
    finished = [s for s in systems if s["state"] != "running"]
    hidden = len(finished) - FINISHED_SHOWN
    more = f"{hidden} more finished (taskswarm status --json lists them all)"
    table = Table(title="task systems", caption=more if hidden > 0 else None)
    numbers = ("done", "total", "failed", "elapsed", "eta")
    for column in ("id", "name", "state", *numbers):
        table.add_column(column, justify="right" if column in numbers else "left")
    for system in running + finished[:FINISHED_SHOWN]:
        eta = system.get("eta")
        table.add_row(
            system["id"],
            escape(system.get("name") or "-"),
            system["state"],
            str(system["done"]),
            str(system["total"]),
            str(system.get("tasks_failed", 0)),
            format_seconds(system.get("elapsed", 0.0)),
            "-" if eta is None else format_seconds(eta),
        )
    return table


def _errors_table(errors: list[dict[str, Any]]) -> Table:
    table = Table(title="latest errors (newest first; the dashboard shows their tracebacks)")
    for column in ("time", "task", "slave", "error"):
        table.add_column(column, overflow="fold")
    for error in errors:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(error["time"])),
            error.get("name") or error["task_id"],
            error.get("slave_id") or "-",
            error["error"],
        )
    return table


def _ago(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}s ago"


def _size(size: int) -> str:
    """Bytes as people read them: ``512 B``, ``3.2 MiB``."""
    if size < 1024:
        return f"{size} B"
    amount = size / 1024
    for unit in ("KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"
