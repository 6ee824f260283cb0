"""Where a node's log goes: stderr at the chosen level, and task systems' own records apart.

Apart from the commands because two of them need it at different moments: the root group sets
the node's level before any command runs, and ``taskswarm master --system-log-level`` lets
what task systems log through at a level of its own.
"""

from __future__ import annotations

import logging
import sys

__all__ = ["LEVELS", "log_to_stderr", "show_system_logging"]

#: The levels ``--log-level`` (and ``--system-log-level``) take.
LEVELS = ("debug", "info", "warning", "error")


def log_to_stderr(level: str) -> None:
    """The node's log records at ``level`` and above, to stderr, one line each."""
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )


def show_system_logging(level: str) -> None:
    """Let task systems' own log records through at ``level``, whatever the node's level.

    A task system's callbacks run on its runner thread on the master (``system-...``): what
    they log is the application's output, not the master's chatter. An embedded cluster's
    master logs warnings only, and this is how its systems' info lines still reach the run's
    console (the master's stderr is the run's).
    """
    from ..master.runner import RUNNER_THREAD_PREFIX

    wanted = logging.getLevelName(level.upper())
    root = logging.getLogger()
    node_level = root.level
    root.setLevel(min(node_level, wanted))

    def keep(record: logging.LogRecord) -> bool:
        from_system = (record.threadName or "").startswith(RUNNER_THREAD_PREFIX)
        return record.levelno >= (wanted if from_system else node_level)

    for handler in root.handlers:
        handler.addFilter(keep)
