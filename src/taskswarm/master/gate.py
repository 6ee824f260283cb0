"""The master's front door: which incoming messages get in, and what a refused peer hears.

Every message goes through ``Gate.admit``: the codec verifies it (signature first, nothing is
unpickled), a peer that keeps sending what fails is ignored for a while, and a peer whose key or
protocol version is wrong gets a short unsigned notice (``wire.Notice``) so it can say why instead
of hanging. Refusals are counted by reason and logged as one summary line per interval, so a
flood of garbage cannot flood the log.

What the gate remembers per peer (its session, strikes, bans, notices) is let go once the peer
is gone: ``prune`` (each heartbeat) drops the sessions of identities that are no live peer and
have sent nothing for a while, and ``report`` the strikes, notices and bans that ran out.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Container
from typing import Any

from ..errors import BadSignature, Misdirected, VersionMismatch, WireError
from ..protocol.codec import PROTOCOL_VERSION, Codec, Message, Notice

__all__ = ["Gate"]

log = logging.getLogger(__name__)

#: Refused messages a peer may send within ``STRIKE_WINDOW`` seconds before it is ignored.
STRIKES = 200
STRIKE_WINDOW = 10.0
#: Seconds a peer that kept sending garbage is ignored.
BAN_SECONDS = 30.0
#: Most notices one peer gets per second.
NOTICE_INTERVAL = 1.0


class Gate:
    def __init__(
        self,
        codec: Codec,
        send_raw: Callable[[bytes, list[bytes]], Any],
        on_misdirected: Callable[[bytes, str], Any],
    ) -> None:
        self.codec = codec
        self._send_raw = send_raw
        self._on_misdirected = on_misdirected
        self.sessions: dict[bytes, str] = {}  # peer identity -> its session (to address replies)
        self._seen: dict[bytes, float] = {}  # peer identity -> when it last got in (monotonic)
        self._strikes: dict[bytes, tuple[float, int]] = {}
        self._banned: dict[bytes, float] = {}
        self._noticed: dict[bytes, float] = {}
        self._since_report: Counter[str] = Counter()

    def admit(self, identity: bytes, frames: list[Any]) -> Message | None:
        now = time.monotonic()
        until = self._banned.get(identity)
        if until is not None:
            if until > now:
                self.codec.rejected["ignored-peer"] += 1
                return None
            del self._banned[identity]
        try:
            message = self.codec.decode(frames)
        except Misdirected as exc:
            # Validly signed, for an older session of ours (we restarted): ask it to say HELLO.
            self._since_report[exc.reason] += 1
            if exc.sender:
                self._on_misdirected(identity, exc.sender)
            return None
        except WireError as exc:
            self._refuse(identity, exc, now)
            return None
        self.sessions[identity] = message.sender
        self._seen[identity] = now
        return message

    def _refuse(self, identity: bytes, exc: WireError, now: float) -> None:
        self._since_report[exc.reason] += 1
        log.debug("refused a message from %r: %s", identity[:24], exc)
        if isinstance(exc, (BadSignature, VersionMismatch)):
            self._notify(identity, exc, now)
        started, count = self._strikes.get(identity, (now, 0))
        if now - started > STRIKE_WINDOW:
            started, count = now, 0
        count += 1
        self._strikes[identity] = (started, count)
        if count > STRIKES:
            self._banned[identity] = now + BAN_SECONDS
            self._strikes.pop(identity, None)
            log.warning(
                "peer %r sent %d refused messages in %gs; ignoring it for %gs",
                identity[:24],
                count,
                STRIKE_WINDOW,
                BAN_SECONDS,
            )

    def _notify(self, identity: bytes, exc: WireError, now: float) -> None:
        if now - self._noticed.get(identity, -NOTICE_INTERVAL) < NOTICE_INTERVAL:
            return
        self._noticed[identity] = now
        if isinstance(exc, BadSignature):
            notice = Notice.AUTH_FAILED
        else:
            notice = Notice.VERSION + str(PROTOCOL_VERSION).encode()
        self._send_raw(identity, [notice])

    def forget(self, identity: bytes) -> None:
        self.sessions.pop(identity, None)
        self._seen.pop(identity, None)

    def prune(self, live: Container[bytes], grace: float) -> None:
        """Forget the sessions of identities not in ``live`` that sent nothing for ``grace``
        seconds: closed connections, whose replies have nowhere to go."""
        before = time.monotonic() - grace
        for identity in [i for i, t in self._seen.items() if t < before and i not in live]:
            self.forget(identity)

    def report(self) -> None:
        """Log what was refused since the last report, in one line (called each heartbeat)."""
        if self._since_report:
            summary = ", ".join(f"{n} {reason}" for reason, n in self._since_report.most_common())
            log.warning("refused messages since the last report: %s", summary)
            self._since_report.clear()
        now = time.monotonic()
        for table in (self._strikes, self._noticed):
            for identity in [i for i, v in table.items() if now - _start(v) > STRIKE_WINDOW]:
                del table[identity]
        for identity in [i for i, until in self._banned.items() if until <= now]:
            del self._banned[identity]


def _start(value: tuple[float, int] | float) -> float:
    return value[0] if isinstance(value, tuple) else value
