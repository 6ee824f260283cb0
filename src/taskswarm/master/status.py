"""What ``status`` shows of the master: plain data, for `taskswarm status`, the API and the page.

The core knows its records; the node adds what only it knows (its address, its sessions)
through the callables it gave the core (``node_facts``, ``kept_by_node``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .core import MasterCore

__all__ = ["ERRORS_IN_STATUS", "describe", "kept"]

#: The newest task failures ``status`` (and so the live page) carries.
ERRORS_IN_STATUS = 10


def kept(core: MasterCore) -> dict[str, int]:
    """How much the master holds of each kind of record: what should follow live work."""
    by_node = core.kept_by_node()
    return {
        "applications": len(core.applications.records),
        "sessions": by_node.get("sessions", 0),
        "departed_slaves": len(core.slaves.departed),
        "systems": len(core.systems.records),
        "forgotten_systems": len(core.systems.forgotten),
        "shipped_bytes": core.shipping.held,
        "uncollected_bytes": core.applications.retained_bytes() + core.systems.held,
        "waiting_tasks": len(core.dependencies.waiting),
        "input_results": len(core.dependencies.held),
        "input_bytes": core.dependencies.held_bytes(),
        "scattered": len(core.dependencies.scattered),
        "kept_results": len(core.dependencies.kept),
        "kept_bytes": core.dependencies.kept.kept_bytes(),
        **by_node,
    }


def describe(core: MasterCore) -> dict[str, Any]:
    """Plain data describing the cluster now; `taskswarm status` prints this."""
    live = [s.summary() for s in core.scheduler.slaves.values()]
    return {
        "master": {
            **core.node_facts(),
            "uptime": round(time.time() - core.started, 3),
            "stealing": core.scheduler.stealing,
            "rejected": dict(core.rejected),
            "kept": core.kept(),
            # Why new work is refused (the journal cannot be written), or null.
            "degraded": core.journal.fault,
            "journal_failed_writes": core.journal.failed_writes,
        },
        "slaves": live + list(core.slaves.departed.values()),
        "applications": core.applications.summaries(),
        "systems": core.systems.summaries(),
        "tasks": core.scheduler.counts(),
        "errors": core.latest_errors(ERRORS_IN_STATUS),
        "stats": core.stats.snapshot()
        + [row for slave in core.scheduler.slaves.values() for row in slave.stats]
        + [
            {"name": "messages_rejected", "labels": {"reason": reason}, "count": n, "sum": n}
            | {"avg": 1.0, "min": 1.0, "max": 1.0}
            for reason, n in sorted(core.rejected.items())
        ],
    }
