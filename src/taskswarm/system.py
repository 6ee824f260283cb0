"""Task systems: the base class users subclass.

A task system is application logic that runs on the master: it generates tasks, hears of each
finished one and decides when it is done. The master drives each live system in a runner thread
of its own (``taskswarm.master.runner``), so a system's callbacks run serially.
"""

from __future__ import annotations

import unicodedata
from typing import TYPE_CHECKING, Any

from .api import ITaskSystem

__all__ = ["MAX_NAME", "TaskSystem", "check_name", "system_name"]

#: Most characters in a task system's name: it is a label for a column and a log line.
MAX_NAME = 100


class _ClassName:
    """The default ``name``: the class's own name. A non-data descriptor, so a subclass's
    ``name = "my-sweep"`` and an instance's ``self.name = ...`` both simply take its place."""

    def __get__(self, instance: object, owner: type | None = None) -> str:
        return (owner or type(instance)).__name__


class TaskSystem(ITaskSystem):
    """Base for task systems: ``super().__init__()`` gives the system its id (a uuid).

    Implement ``generate_tasks``, ``task_finished``, ``is_complete`` and ``gather_result``;
    ``init_system`` is optional here (most systems set themselves up in ``__init__``).

    ``name`` is what people see it as (status, the dashboard, progress, the master's log);
    the class's name unless a subclass or instance sets another. Names need not be unique:
    the id tells systems apart.
    """

    if TYPE_CHECKING:
        name: str
    else:
        name = _ClassName()

    def init_system(self, master: Any) -> None:
        """Runs on the master before ``generate_tasks``; the default does nothing."""


def system_name(system: Any) -> str:
    """The name a system is shown by: its ``name``, checked (a system of the seed's
    ``ITaskSystem`` that has none is named after its class)."""
    name = getattr(system, "name", None)
    return check_name(type(system).__name__ if name is None else name)


def check_name(name: object) -> str:
    """``name`` if it can be shown as one line of a table; else ValueError (TypeError for one
    that is not a str) saying what is wrong with it. The master checks names sent to it too."""
    if not isinstance(name, str):
        raise TypeError(f"a task system's name must be a str, not {type(name).__name__}")
    if not name.strip():
        raise ValueError(
            "a task system's name must not be empty; leave it unset to get the class's name"
        )
    if len(name) > MAX_NAME:
        raise ValueError(
            f"a task system's name must be at most {MAX_NAME} characters, not {len(name)}: "
            f"{name[:20]!r}..."
        )
    for char in name:
        category = unicodedata.category(char)
        if category[0] == "C" or category in ("Zl", "Zp"):
            what = unicodedata.name(char, "a control character")
            raise ValueError(
                f"a task system's name must be one line of printable text; {name!r} holds "
                f"{char!r} ({what})"
            )
    return name
