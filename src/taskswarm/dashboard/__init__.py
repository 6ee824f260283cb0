"""The master's HTTP side: a JSON API (with its OpenAPI document) and Prometheus metrics.

``DashboardServer`` runs an aiohttp application in a thread of its own. It never touches the
master's records: each request is a function posted to the master's mailbox and run by the
master's loop between two turns, so what it answers is one consistent moment of the master.

aiohttp is imported only with ``DashboardServer``, when a master serves a dashboard: it is most
of what a master without one would spend starting (a LocalCluster's master, by default).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from .server import DashboardServer

__all__ = ["ERRORS_KEPT", "HISTORY_SAMPLES", "STREAM_TASKS", "DashboardServer", "parse_address"]

#: The latest task failures the master keeps for people to read (``/api/errors``).
ERRORS_KEPT = 50
#: The latest tasks that ran the master keeps for the task stream (``/api/stream``).
STREAM_TASKS = 2000
#: Samples of the cluster's load the master keeps, one per heartbeat (``/api/history``): ten
#: minutes at the default heartbeat of a second.
HISTORY_SAMPLES = 600


def parse_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8787`` for IPv6) -> (host, port); a clear error otherwise."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigurationError(
            f"dashboard address {value!r} is not HOST:PORT; write e.g. 127.0.0.1:8787"
        )
    return host.strip("[]"), int(port)


def __getattr__(name: str) -> Any:
    if name == "DashboardServer":
        from .server import DashboardServer

        return DashboardServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
