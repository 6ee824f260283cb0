"""Schedulers that hand every task to an engine: a Dask distributed cluster or a Ray cluster.

``taskswarm master --scheduler dask --engine tcp://SCHEDULER:8786`` (or ``--scheduler ray
--engine ray://HEAD:10001``) keeps everything that makes a master: the queue, the journal, the
task systems (which still run here, on the master), the applications and their Futures. What
changes is where tasks run. Beside the master's loop this scheduler runs a *bridge*: a slave,
in a thread of the master's process, whose task manager is the engine's
(``taskswarm.engines.managers``). It connects to the master's own socket like any slave, is
sized to the engine's worker count, and stops with the master::

    master loop --TASKS--> bridge slave (thread) --submit--> engine scheduler --> engine workers
    master loop <--RESULTS-- bridge slave <--outcomes-- engine

So the master's code, the protocol and the application's code are the same as with native
slaves (which may still join and share the work). The engine is reached while the master
starts, so a wrong address is reported before it serves; the bridge starts on the loop's first
turn, once the master's address is known.
"""

from __future__ import annotations

import logging
import re
import threading
from typing import Any

from ..scheduling.contracts import MasterView
from ..scheduling.push import PushScheduler

__all__ = ["EngineScheduler", "DaskScheduler", "RayScheduler"]

log = logging.getLogger(__name__)

#: Seconds ``close`` waits for the bridge to say goodbye and disconnect from the engine.
BRIDGE_STOP_TIMEOUT = 15.0


class EngineScheduler(PushScheduler):
    """A push scheduler whose slave is a bridge to an engine; subclasses name the engine."""

    name = "engine"
    #: The task manager the bridge runs (by its ``taskswarm.managers`` name).
    manager_name = ""
    #: Its one option: the engine's address (``--engine ADDRESS`` is
    #: ``--scheduler-option engine=ADDRESS``); none starts a local engine.
    options = frozenset({"engine"})

    def __init__(self, strategy: Any, prefetch: int = 2) -> None:
        super().__init__(strategy, prefetch)
        self.manager: Any = None
        self.bridge: Any = None
        self._thread: threading.Thread | None = None
        self._bridged = self._closed = False

    def setup(self, master: MasterView) -> None:
        from .managers import manager_for

        super().setup(master)
        engine = master.scheduler_options.get("engine") if master is not None else None
        self.manager = manager_for(self.manager_name, None, engine)

    def dispatch(self) -> None:
        if not self._bridged and not self._closed:
            self._bridged = True  # one try: a bridge that cannot start would fail again
            try:
                self._start_bridge()
            except Exception:
                log.exception("cannot start the bridge to the %s", self.manager.engine.describe())
        super().dispatch()

    def close(self) -> None:
        """Stop the bridge and disconnect from the engine (the master calls this as it
        closes); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self.bridge is not None:
            self.bridge.stop()
        if self._thread is not None:
            self._thread.join(BRIDGE_STOP_TIMEOUT)
            if self._thread.is_alive():
                log.warning("the bridge to the engine did not stop within %gs", BRIDGE_STOP_TIMEOUT)
        elif self.manager is not None:
            self.manager.stop()

    def _start_bridge(self) -> None:
        from ..slave.node import Slave

        master = self.master
        assert master is not None, "setup() comes before the first task"
        self.bridge = Slave(
            _reachable(master.address),
            master.keys,  # the bridge is the master's own: it signs with the master's key
            manager=self.manager,
            heartbeat_interval=master.heartbeat_interval,
            # What the engine runs when the master stops is run again when it restarts.
            grace=0.0,
            max_message_bytes=master.max_message_bytes,
        )
        self._thread = threading.Thread(
            target=self._serve_bridge, name=f"taskswarm-{self.manager_name}-bridge", daemon=True
        )
        self._thread.start()

    def _serve_bridge(self) -> None:
        try:
            self.bridge.serve()
        except Exception:
            log.exception("the bridge to the %s stopped", self.manager.engine.describe())


class DaskScheduler(EngineScheduler):
    """Every task runs on a Dask distributed cluster (``--engine tcp://HOST:PORT``; none
    starts a Dask LocalCluster beside the master)."""

    name = "dask"
    manager_name = "dask"


class RayScheduler(EngineScheduler):
    """Every task runs on a Ray cluster (``--engine ray://HOST:PORT``, ``HOST:PORT``,
    ``auto``; none: ``ray.init()`` finds one on this machine or starts one)."""

    name = "ray"
    manager_name = "ray"


_WILDCARD = re.compile(r"^tcp://(\*|0\.0\.0\.0|\[::\])(:\d+)$")


def _reachable(address: str) -> str:
    """The master's own address as a slave on its machine dials it (not a wildcard)."""
    match = _WILDCARD.match(address)
    if match is None:
        return address
    host = "[::1]" if match.group(1) == "[::]" else "127.0.0.1"
    return f"tcp://{host}{match.group(2)}"
