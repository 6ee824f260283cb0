"""Schedulers (ITaskScheduler) and schedule strategies (ITaskScheduleStrategy), chosen by name.

Both are pure bookkeeping over plain records (``records``): they never touch a socket. The master
asks the scheduler to ``dispatch`` after each turn of its loop and sends what landed in each
slave's outbox as one message per slave.
"""

from __future__ import annotations

from importlib.metadata import entry_points
from typing import Any

from ..errors import ConfigurationError

__all__ = ["load_plugin", "available"]


_KINDS = {
    "taskswarm.schedulers": "scheduler",
    "taskswarm.strategies": "strategy",
    "taskswarm.managers": "task manager",
}


def available(group: str) -> list[str]:
    return sorted(ep.name for ep in entry_points(group=group))


def load_plugin(group: str, name: str) -> Any:
    """Load the class registered under ``name`` in entry-point ``group``."""
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    choices = ", ".join(available(group)) or "none installed"
    kind = _KINDS.get(group, group)
    raise ConfigurationError(f"no {kind} named {name!r}; choose one of: {choices}")
