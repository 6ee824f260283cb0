"""`taskswarm status` as tables (rich), from the master's status data."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_STATE_STYLE = {"active": "green", "pending": "yellow", "inactive": "yellow", "lost": "red"}


def render_status(info: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
    master = info["master"]
    tasks = info["tasks"]
    console.print(
        f"master {master['address']} (pid {master['pid']} on {master['host']}, "
        f"scheduler {master['scheduler']}/{master['strategy']}, up {master['uptime']:.0f}s); "
        f"tasks queued {tasks['queued']}, assigned {tasks['assigned']}"
    )
    table = Table(title="slaves")
    for column in ("id", "host", "state", "workers", "in flight", "rating", "done"):
        table.add_column(
            column,
            justify="right" if column in ("workers", "in flight", "rating", "done") else "left",
        )
    for slave in info["slaves"]:
        style = _STATE_STYLE.get(slave["state"], "")
        rating = "-" if slave["rating"] is None else f"{slave['rating']:.2f}"
        table.add_row(
            slave["id"],
            slave["host"],
            f"[{style}]{slave['state']}[/]",
            str(slave["workers"]),
            str(slave["in_flight"]),
            rating,
            str(slave["done"]),
        )
    console.print(table)
    if info["systems"]:
        systems = Table(title="task systems")
        for column in ("id", "state", "done", "total"):
            systems.add_column(column)
        for system in info["systems"]:
            systems.add_row(
                system["id"], system["state"], str(system["done"]), str(system["total"])
            )
        console.print(systems)
