"""The master's part in shipping code: keep each application's archives, send them to slaves.

::

    application --SHIP(name, archive)--> on_ship --kept by name--> SHIP --> every slave
    slave --REGISTER--> WELCOME, then every archive kept (before any TASKS for it)

An archive (``app.upload_file``, :mod:`taskswarm.protocol.archives`) is opaque bytes here, as a
plain task is: the master never opens, unpacks, imports or unpickles it, and never hashes it. It
keeps the :class:`~taskswarm.protocol.digests.Payload` it received and sends that same payload
on, under the digest the application's signed header gave, so a slave checks the very digest the
application made. Order does the rest: ZeroMQ keeps the order of one connection, and a slave's
TASKS leave at the end of the master's turn, after the SHIP sent while it was handled, so a task
submitted after ``upload_file`` returned reaches every slave after the code it needs.

Lives on the master's loop thread, and knows the rest of the master only by what it is given:
how to tell an application that is known, which slaves there are, and how to send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import ShippingError
from ..protocol.archives import MAX_SHIPPED_BYTES, check_name
from ..protocol.codec import Kind, Message
from ..protocol.messages import Ack, Reject, Ship
from ..scheduling.records import SlaveRecord
from .edges import Send

__all__ = ["ShippedCode"]

log = logging.getLogger(__name__)


class ShippedCode:
    """The archives applications shipped, by name, and their way to the slaves.

    Bounded, as the master's memory must be by live work and not by history: a name shipped
    again replaces what was kept under it, and all archives together may hold at most
    ``limit`` bytes (:data:`~taskswarm.protocol.archives.MAX_SHIPPED_BYTES`); one that would
    pass it is refused with the reason, and the application raises it. Archives are kept for
    as long as the master runs, not journaled: a slave that joins any time later must get
    them, and a restarted master has none until they are shipped again.
    """

    def __init__(
        self,
        send: Send,
        known_application: Callable[[bytes], Any],
        slaves: Callable[[], Iterable[SlaveRecord]],
        limit: int = MAX_SHIPPED_BYTES,
    ) -> None:
        self.send = send
        #: The application behind an identity, or None (it is then asked to say HELLO again).
        self.known_application = known_application
        #: The slaves registered now.
        self.slaves = slaves
        self.limit = limit
        #: name -> the archive as received (a sealed Payload), oldest first.
        self.archives: dict[str, Any] = {}

    @property
    def held(self) -> int:
        """Bytes of archives kept (what ``limit`` bounds)."""
        return sum(len(payload) for payload in self.archives.values())

    def on_ship(self, identity: bytes, msg: Message) -> None:
        """An application ships an archive: keep it, send it to every slave, ACK; or REJECT."""
        ship = msg.read(Ship)
        client = self.known_application(identity)
        if client is None:
            return
        payload = msg.payloads[0]
        try:
            name = check_name(ship.name)
            self._check_room(name, len(payload))
        except ShippingError as exc:
            log.warning("application %s: %s", client.client_id, exc)
            self.send(identity, Kind.REJECT, Reject(rid=ship.rid, reason=str(exc)))
            return
        self.archives.pop(name, None)  # re-inserted: newest last, as the slaves order them
        self.archives[name] = payload
        slaves = list(self.slaves())
        for slave in slaves:
            self.send(slave.identity, Kind.SHIP, Ship(name=name), [payload])
        log.info(
            "application %s shipped %s (%d bytes) to %d slaves",
            client.client_id,
            name,
            len(payload),
            len(slaves),
        )
        self.send(identity, Kind.ACK, Ack(rid=ship.rid, n=1))

    def welcome(self, identity: bytes) -> None:
        """A slave was just welcomed: every archive kept, in the order they were shipped,
        before anything else is sent to it."""
        for name, payload in self.archives.items():
            self.send(identity, Kind.SHIP, Ship(name=name), [payload])

    def _check_room(self, name: str, size: int) -> None:
        others = self.held - (len(self.archives[name]) if name in self.archives else 0)
        if others + size > self.limit:
            raise ShippingError(
                f"shipping {name} ({_mib(size)}) would make the code this cluster keeps "
                f"{_mib(others + size)}, more than its limit of {_mib(self.limit)}: ship less "
                "(only the modules the tasks import, without data files), or install big "
                "packages on the slaves"
            )


def _mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"
