"""`taskswarm status` as tables (rich), from the master's status data."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

_STATE_STYLE = {"active": "green", "pending": "yellow", "inactive": "yellow", "lost": "red"}


def render_status(info: dict[str, Any], console: Console | None = None) -> None:
    console = console or Console()
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
    table = Table(title="slaves")
    # Columns that would be all zeros or empty are left out, so the table fits a terminal.
    slaves = info["slaves"]
    stolen = any(slave.get("stolen") for slave in slaves)
    resources = any(slave.get("resources") for slave in slaves)
    numbers = ("workers", "in flight", "rating", "done", *(["stolen"] if stolen else []))
    for column in ("id", "host", "state", *numbers, *(["resources"] if resources else [])):
        table.add_column(column, justify="right" if column in numbers else "left")
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
        ]
        if stolen:
            cells.append(str(slave.get("stolen", 0)))
        if resources:
            offer = slave.get("resources") or {}
            cells.append(",".join(f"{k}={v:g}" for k, v in sorted(offer.items())) or "-")
        table.add_row(*cells)
    out.append(table)
    if info["systems"]:
        systems = Table(title="task systems")
        for column in ("id", "state", "done", "total"):
            systems.add_column(column)
        for system in info["systems"]:
            systems.add_row(
                system["id"], system["state"], str(system["done"]), str(system["total"])
            )
        out.append(systems)
    return out
