"""A hand-driven peer for security tests: speaks the wire protocol with a socket of its own."""

from __future__ import annotations

import time

import zmq

from taskswarm.protocol.codec import Codec, Kind, Message
from taskswarm.protocol.messages import APPLICATION_HEADER


class RawPeer:
    """A DEALER with a Codec: sends exactly the frames a test builds, reads what comes back."""

    def __init__(self, context: zmq.Context, address: str, key: bytes) -> None:
        self.codec = Codec(key, headers=APPLICATION_HEADER)  # it reads RESULTS as applications do
        self.socket = context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.connect(address)
        self.master_session: str | None = None

    def hello(self, timeout: float = 10.0) -> str:
        self.send(Kind.HELLO, {"client_id": self.codec.session})
        welcome = self.receive(Kind.WELCOME, timeout)
        self.master_session = welcome.sender
        return welcome.sender

    def frames(self, kind: str, header: dict | None = None, payloads=()) -> list[bytes]:
        to = None if kind in Kind.UNADDRESSED else self.master_session
        return self.codec.encode(kind, header, payloads, to=to)

    def send(self, kind: str, header: dict | None = None, payloads=()) -> list[bytes]:
        frames = self.frames(kind, header, payloads)
        self.socket.send_multipart(frames)
        return frames

    def send_raw(self, frames: list[bytes]) -> None:
        self.socket.send_multipart(frames)

    def receive(self, kind: str, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.socket.poll(int(max(0.0, deadline - time.monotonic()) * 1000)):
                try:
                    message = self.codec.decode(self.socket.recv_multipart())
                except Exception:
                    continue
                if message.kind == kind:
                    return message
        raise TimeoutError(f"no {kind} message within {timeout}s")

    def close(self) -> None:
        self.socket.close(linger=0)
