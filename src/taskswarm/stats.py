"""Named measures (count, sum, min, max, average), as the original framework's ``/stats`` kept,
and their Prometheus text form.

Each subsystem of a node adds what it times or counts under a name and optional labels
(``stats.add("task_seconds", 0.02, slave="vm-1")``). Adding is a dict lookup and four
arithmetic operations, so it is cheap enough to do per message; per-task figures are folded in
per batch (``add(value, n)`` with the batch's mean, and ``low``/``high`` for its extremes).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

__all__ = ["Measure", "Stats", "prometheus_text"]

#: What each measure is, for people reading ``/metrics`` (unknown names get a generic line).
HELP = {
    "dispatch_seconds": "Master: time to choose a slave for a task (per scheduling decision).",
    "queue_wait_seconds": "Master: time a task waited in the queue before it was assigned.",
    "send_seconds": "Master: time to encode and send one message of tasks to a slave.",
    "task_seconds": "Master: time from assigning a task to its result, per slave.",
    "messages_rejected": "Messages dropped before use, by reason (bad signature, replay...).",
    "slave_task_seconds": "Slave: time from a task's arrival to its result (queue and run there).",
    "slave_send_seconds": "Slave: time to encode and send one message of results.",
}

_NAME = re.compile(r"[^a-zA-Z0-9_]")


@dataclass(slots=True)
class Measure:
    count: int = 0
    total: float = 0.0
    low: float = math.inf
    high: float = -math.inf

    def add(
        self, value: float, n: int = 1, low: float | None = None, high: float | None = None
    ) -> None:
        self.count += n
        self.total += value * n
        self.low = min(self.low, value if low is None else low)
        self.high = max(self.high, value if high is None else high)

    def summary(self) -> dict[str, float]:
        if not self.count:
            return {"count": 0, "sum": 0.0, "avg": 0.0, "min": 0.0, "max": 0.0}
        return {
            "count": self.count,
            "sum": self.total,
            "avg": self.total / self.count,
            "min": self.low,
            "max": self.high,
        }


class Stats:
    """The measures of one node, keyed by name and labels."""

    def __init__(self) -> None:
        self._measures: dict[tuple[str, tuple[tuple[str, str], ...]], Measure] = {}

    def measure(self, name: str, **labels: str) -> Measure:
        """The measure itself, for a hot path that updates it in place."""
        key = (name, tuple(sorted(labels.items())))
        measure = self._measures.get(key)
        if measure is None:
            measure = self._measures[key] = Measure()
        return measure

    def add(
        self,
        name: str,
        value: float,
        n: int = 1,
        *,
        low: float | None = None,
        high: float | None = None,
        **labels: str,
    ) -> None:
        """Fold in ``n`` observations whose mean is ``value`` (and extremes ``low``/``high``)."""
        self.measure(name, **labels).add(value, n, low, high)

    def snapshot(self) -> list[dict[str, Any]]:
        """Plain data (msgpack/JSON-able): one dict per measure, sorted by name and labels."""
        return [
            {"name": name, "labels": dict(labels), **measure.summary()}
            for (name, labels), measure in sorted(self._measures.items())
        ]


def prometheus_text(snapshot: list[dict[str, Any]], prefix: str = "taskswarm_") -> str:
    """The Prometheus text exposition format (version 0.0.4) of a ``Stats.snapshot()``: each
    measure is a summary (``_count``, ``_sum``) plus ``_min`` and ``_max`` gauges."""
    families: dict[str, list[dict[str, Any]]] = {}
    for row in snapshot:
        families.setdefault(_NAME.sub("_", row["name"]), []).append(row)
    lines = []
    for name, rows in sorted(families.items()):
        full = prefix + name
        help_text = HELP.get(name, f"taskswarm measure {name}.")
        lines += [f"# HELP {full} {help_text}", f"# TYPE {full} summary"]
        for row in rows:
            labels = _labels(row["labels"])
            lines.append(f"{full}_count{labels} {row['count']}")
            lines.append(f"{full}_sum{labels} {_number(row['sum'])}")
        for extreme in ("min", "max"):
            lines += [
                f"# HELP {full}_{extreme} The {extreme}imum of {full}.",
                f"# TYPE {full}_{extreme} gauge",
            ]
            lines += [
                f"{full}_{extreme}{_labels(row['labels'])} {_number(row[extreme])}" for row in rows
            ]
    return "\n".join(lines) + "\n"


def _labels(labels: dict[str, Any]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{_NAME.sub("_", k)}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))
