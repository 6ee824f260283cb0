"""The master's HTTP side: a JSON API (with its OpenAPI document) and Prometheus metrics.

``DashboardServer`` runs an aiohttp application in a thread of its own. It never touches the
master's records: each request is a function posted to the master's mailbox and run by the
master's loop between two turns, so what it answers is one consistent moment of the master.
"""

from .server import DashboardServer, parse_address

__all__ = ["DashboardServer", "parse_address"]
