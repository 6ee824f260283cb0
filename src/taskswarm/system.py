"""Task systems: the base class users subclass.

A task system is application logic that runs on the master: it generates tasks, hears of each
finished one and decides when it is done. The master drives each live system in a runner thread
of its own (``taskswarm.master.runner``), so a system's callbacks run serially.
"""

from __future__ import annotations

from typing import Any

from .api import ITaskSystem

__all__ = ["TaskSystem"]


class TaskSystem(ITaskSystem):
    """Base for task systems: ``super().__init__()`` gives the system its id (a uuid).

    Implement ``generate_tasks``, ``task_finished``, ``is_complete`` and ``gather_result``;
    ``init_system`` is optional here (most systems set themselves up in ``__init__``).
    """

    def init_system(self, master: Any) -> None:
        """Runs on the master before ``generate_tasks``; the default does nothing."""
