"""The master node: the socket, the loop and the dashboard around the master's core.

::

    peers --frames--> ROUTER --gate (MAC, session, bans)--> Message --> core.handle
    other threads --Ask / Push / Progress / Done--> mailbox -------------> core / ask
    each turn: core.turn();  each heartbeat: core.tick()
    core --send(identity, kind, header, payloads)--> codec.encode --> ROUTER --> peers

Everything the master decides is in its core (``taskswarm.master.core``), which has no socket.
This module is what is left: it binds the socket, lets messages in through the gate
(``taskswarm.master.gate``), encodes what the core sends, runs the loop (one thread owns the
socket and, through the core, every record), answers questions from other threads (the
dashboard's ``ask``), and stops when told or when its parent process is gone.
"""

from __future__ import annotations

import concurrent.futures
import logging
import math
import os
import socket
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import zmq

from ..dashboard import parse_address
from ..ops.config import MasterConfig
from ..protocol import sharing
from ..protocol.addresses import advertised_address, check_advertise, public_url
from ..protocol.codec import Codec, Kind
from ..protocol.keys import ClusterKeys, as_keys
from ..protocol.lifecycle import NodeLifecycle
from ..protocol.messages import Header, Reregister
from ..protocol.transport import MAX_MESSAGE_BYTES, bind_router, receive_batch, try_send
from ..scheduling.contracts import SchedulerContract
from . import retention
from .core import MasterCore
from .edges import Ask
from .gate import Gate
from .journal import Journal, NullJournal
from .retention import CLIENT_TIMEOUT, FORGET_AFTER, RESULT_CAP, RESULT_TTL, Retention
from .schedulers import load_scheduler
from .slaves import DEPARTED_KEPT, _measures  # noqa: F401 - where tests and tools find them

if TYPE_CHECKING:
    from ..dashboard.server import DashboardServer

__all__ = ["Master"]

log = logging.getLogger(__name__)

MIB = retention.MIB


class Master(NodeLifecycle):
    """Serve one cluster on ``bind`` until ``stop()``; see the module docstring for the flow."""

    @classmethod
    def from_config(cls, config: MasterConfig, key: bytes | ClusterKeys) -> Master:
        """The master ``taskswarm master`` runs, from its settings (:mod:`taskswarm.ops.config`)."""
        # Settings the master takes under their own names; the rest are renamed or converted.
        same = (
            "scheduler", "strategy", "prefetch", "slave_timeout", "max_crashes", "stealing",
            "resource_wait", "advertise", "result_ttl", "client_timeout", "forget_after",
            "scheduler_options",
        )  # fmt: skip
        return cls(
            config.bind,
            key,
            heartbeat_interval=config.heartbeat,
            state_dir=config.journal_dir,
            max_message_bytes=config.max_message_mib * MIB,
            dashboard=config.dashboard_address,
            dashboard_hosts=config.dashboard_host,
            result_cap=config.result_cap_mib * MIB,
            **{name: getattr(config, name) for name in same},
        )

    def __init__(
        self,
        bind: str,
        key: bytes | ClusterKeys,
        *,
        scheduler: str = "push",
        strategy: str = "load",
        prefetch: int = 2,
        heartbeat_interval: float = 1.0,
        slave_timeout: float = 5.0,
        state_dir: str | os.PathLike[str] | None = None,
        max_crashes: int = 3,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        stealing: bool = True,
        resource_wait: float = 10.0,
        dashboard: str | None = None,
        dashboard_hosts: Sequence[str] = (),
        advertise: str | None = None,
        scheduler_options: Mapping[str, str] | None = None,
        result_ttl: float = RESULT_TTL,
        result_cap: int = RESULT_CAP,
        client_timeout: float = CLIENT_TIMEOUT,
        forget_after: float = FORGET_AFTER,
    ) -> None:
        super().__init__()
        #: The cluster's keys. A scheduler plugin that runs its own node in the master's process
        #: (the engine schedulers' bridge) signs with them; nothing else reads them.
        keys = self.keys = as_keys(key)
        self.shared_prefix = sharing.cluster_prefix(keys.hmac)
        retention.tune_malloc()
        self.codec = Codec(keys.hmac, max_bytes=max_message_bytes)
        self.heartbeat_interval = heartbeat_interval
        #: The scheduler's own settings (``--scheduler-option``): it reads them in ``setup``;
        #: the master only checks that the scheduler names each one.
        self.scheduler_options: Mapping[str, str] = dict(scheduler_options or {})
        scheduler_obj = load_scheduler(scheduler, strategy, prefetch, self.scheduler_options)
        scheduler_obj.setup(self)
        self.scheduler_name, self.strategy_name = scheduler, strategy
        journal = Journal(Path(state_dir) / "journal.sqlite3") if state_dir else NullJournal()
        check_advertise(advertise)  # a bad one is a usage error before anything is bound
        self._context = zmq.Context()
        self.router, self.address = bind_router(
            self._context, bind, keys.curve_secret, max_message_bytes
        )
        #: Where others are told to reach this master (status, the dashboard URL): see addresses.
        self.advertised = advertised_address(self.address, advertise)
        self.encrypted = keys.curve
        self.gate = Gate(
            self.codec,
            lambda identity, frames: try_send(self.router, [identity, *frames]),
            self._ask_to_reregister,
        )
        self._poller = zmq.Poller()
        self._poller.register(self.router, zmq.POLLIN)
        self._poller.register(self.mailbox.fileno(), zmq.POLLIN)
        self.dashboard: DashboardServer | None = None
        self.dashboard_url: str | None = None
        #: Every record and every decision: the master without its socket.
        self.core = MasterCore(
            scheduler_obj,
            self.send,
            journal=journal,
            post=self.mailbox.post,
            rejected=self.codec.rejected,
            heartbeat_interval=heartbeat_interval,
            slave_timeout=slave_timeout,
            max_crashes=max_crashes,
            max_message_bytes=max_message_bytes,
            stealing=stealing,
            resource_wait=resource_wait,
            keep=Retention(result_ttl, result_cap, client_timeout, forget_after),
            node_facts=self._facts,
            kept_by_node=self._kept,
        )
        #: Messages and their bytes in and out (``status()["stats"]``: ``wire_bytes``), so that
        #: what passes through the master can be told from what passes beside it.
        self._bytes_in = self.core.stats.measure("wire_bytes", direction="in")
        self._bytes_out = self.core.stats.measure("wire_bytes", direction="out")
        #: Seconds a closed connection's session is kept (see ``retention.SESSION_GRACE``).
        self._session_grace = min(retention.SESSION_GRACE, forget_after)
        self.core.restore()
        if dashboard:
            self._start_dashboard(dashboard, dashboard_hosts)
        log.info(
            "master listening on %s, advertised as %s (scheduler %s, strategy %s, stealing %s, "
            "state %s)",
            self.address,
            self.advertised,
            scheduler,
            strategy,
            "on" if stealing else "off",
            state_dir or "not kept",
        )

    # -- what others read of the master (the dashboard, scheduler plugins, tools) -----------------

    @property
    def scheduler(self) -> SchedulerContract:
        return self.core.scheduler

    @property
    def journal(self) -> Journal | NullJournal:
        return self.core.journal

    @property
    def applications(self) -> Any:
        return self.core.applications

    @property
    def systems(self) -> Any:
        return self.core.systems

    @property
    def peers(self) -> dict[bytes, Any]:
        return self.core.peers

    @property
    def departed(self) -> dict[str, dict[str, Any]]:
        return self.core.slaves.departed

    @property
    def stats(self) -> Any:
        return self.core.stats

    @property
    def max_message_bytes(self) -> int:
        return self.core.max_message_bytes

    def status(self) -> dict[str, Any]:
        """Plain data describing the cluster now; `taskswarm status` prints this."""
        return self.core.status()

    def kept(self) -> dict[str, int]:
        return self.core.kept()

    def cluster_info(self) -> dict[str, int]:
        return self.core.slaves.cluster_info()

    def latest_errors(self, limit: int) -> list[dict[str, Any]]:
        return self.core.latest_errors(limit)

    def resize_slave(self, slave_id: str, workers: int) -> bool:
        return self.core.slaves.resize(slave_id, workers)

    def drain_slave(self, slave_id: str) -> bool:
        """The slave finishes what it runs, hands back what it holds, and leaves."""
        return self.core.slaves.drain(slave_id)

    def cancel_task(self, task_id: str) -> bool:
        """Cancel a live task; its owner gets a TaskError saying so (its Future resolves)."""
        return self.core.cancel_task(task_id)

    def _facts(self) -> dict[str, Any]:
        """The node's part of ``status()["master"]``."""
        return {
            "address": self.advertised,
            "bind": self.address,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "scheduler": self.scheduler_name,
            "strategy": self.strategy_name,
            "dashboard": self.dashboard_url,
            "encrypted": self.encrypted,
        }

    def _kept(self) -> dict[str, int]:
        return {
            "sessions": len(self.gate.sessions),
            # Sessions whose message numbers the codec remembers against replays (it keeps at
            # most wire.MAX_SESSIONS, oldest forgotten first).
            "replay_sessions": len(getattr(self.codec, "_last_seen", ())),
        }

    def _start_dashboard(self, address: str, hosts: Sequence[str]) -> None:
        host, port = parse_address(address)
        advertised = urlsplit(self.advertised).hostname or ""  # the name status's URL shows
        token = self.keys.dashboard_token()
        from ..dashboard.server import DashboardServer  # aiohttp: only for a master serving one

        server = DashboardServer(self.ask, host, port, token, [advertised, *hosts])
        try:
            self.dashboard_url = public_url(server.start(), self.advertised)
        except OSError as exc:
            log.warning(
                "dashboard not started: cannot listen on %s (%s); the master runs without it. "
                "Give another --dashboard HOST:PORT, or --no-dashboard.",
                address,
                exc.strerror or exc,
            )
            return
        self.dashboard = server
        log.info("dashboard and API on %s", self.dashboard_url)

    def ask(self, question: Any) -> concurrent.futures.Future[Any]:
        """Run ``question(master)`` in the master's loop (from any thread): how the dashboard
        reads the records the loop owns. The Future holds its answer or its exception."""
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self.mailbox.post(Ask(question, future))
        return future

    def _answer(self, ask: Ask) -> None:
        if not ask.future.set_running_or_notify_cancel():
            return
        try:
            ask.future.set_result(ask.question(self))
        except Exception as exc:  # noqa: BLE001 - the asker gets it, the loop carries on
            ask.future.set_exception(exc)

    # -- lifecycle -----------------------------------------------------------------------------

    def serve(self, ready_file: str | None = None) -> None:
        """Run the loop until ``stop()``: a short list of named steps per turn."""
        if ready_file:
            Path(ready_file).write_text(self.address)
        core = self.core
        next_beat = time.monotonic()
        try:
            while not self._stopping:
                wake_at = next_beat
                due = core.next_wake()
                if due is not None and due < wake_at:
                    wake_at = due
                wait = max(0.0, wake_at - time.monotonic())
                events = dict(self._poller.poll(math.ceil(wait * 1000)))
                if self.router in events:
                    self._receive_from_nodes()
                if self.mailbox.fileno() in events:
                    self._read_mailbox()
                if time.monotonic() >= next_beat:
                    core.tick()
                    self.gate.report()
                    self._check_parent()
                    self.gate.prune(core.peers, self._session_grace)
                    next_beat = time.monotonic() + self.heartbeat_interval
                core.turn()
        finally:
            self.core.say_goodbye()
            self.close()

    def _read_mailbox(self) -> None:
        """Questions and runners' messages; a function of its own, so that nothing it read (a
        system's outcome can be megabytes) stays referenced by the loop until the next one."""
        for item in self.mailbox.drain():
            if isinstance(item, Ask):
                self._answer(item)
            else:
                self.core.on_runner_message(item)

    def close(self) -> None:
        if not self._first_close():
            return
        if self.dashboard is not None:
            self.dashboard.stop()
        self.scheduler.close()  # an engine scheduler's bridge and its engine connection
        self.core.close()
        self.router.close(linger=0)
        self._context.term()
        self.mailbox.close()
        self.journal.close()
        self.sweep_orphaned()
        log.info("master stopped")

    # -- receiving and sending -----------------------------------------------------------------

    def _receive_from_nodes(self) -> None:
        admit, handle = self.gate.admit, self.core.handle
        received = self._bytes_in
        for frames in receive_batch(self.router):
            received.add(sum(map(len, frames)))
            identity = frames[0].bytes
            message = admit(identity, frames[1:])
            if message is not None:
                handle(identity, message)

    def send(
        self,
        identity: bytes,
        kind: str,
        header: Header | None = None,
        payloads: Sequence[Any] = (),
    ) -> bool:
        frames = self.codec.encode(kind, header, payloads, to=self.gate.sessions.get(identity))
        self._bytes_out.add(sum(map(len, frames)))
        return try_send(self.router, [identity, *frames])

    def _ask_to_reregister(self, identity: bytes, session: str) -> None:
        try_send(
            self.router, [identity, *self.codec.encode(Kind.REREGISTER, Reregister(), to=session)]
        )
