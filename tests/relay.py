"""A man in the middle for security tests: a thread between nodes and their master.

Each node that connects to the relay gets a DEALER of its own towards the master, with the
node's routing identity, so the master sees the same peers it would without the relay. A test
subclasses it to look at what nodes send (``outward``), change what the master sends back
(``inward``) or add traffic of its own once per turn (``each_turn``).
"""

from __future__ import annotations

import threading

import zmq


class Relay(threading.Thread):
    """Passes every message both ways until ``stop`` is set; closes its sockets on the way out."""

    def __init__(self, context: zmq.Context, master: str) -> None:
        super().__init__(daemon=True)
        self.context, self.master = context, master
        self.front = context.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.front.setsockopt(zmq.ROUTER_HANDOVER, 1)
        self.port = self.front.bind_to_random_port("tcp://127.0.0.1")
        self.backs: dict[bytes, zmq.Socket] = {}
        self.stop = threading.Event()

    def outward(self, frames: list[bytes]) -> list[bytes]:
        """What a node sends, on its way to the master."""
        return frames

    def inward(self, frames: list[bytes]) -> list[bytes]:
        """What the master sends, on its way to a node."""
        return frames

    def each_turn(self, identity: bytes) -> None:
        """Called after every poll once some node has spoken (``identity`` is the last one)."""

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.front, zmq.POLLIN)
        identity = None
        try:
            while not self.stop.is_set():
                for sock, _ in poller.poll(5):
                    if sock is self.front:
                        identity, *frames = self.front.recv_multipart()
                        self._back(identity, poller).send_multipart(self.outward(frames))
                    else:
                        ident = next(i for i, s in self.backs.items() if s is sock)
                        self.front.send_multipart([ident, *self.inward(sock.recv_multipart())])
                if identity is not None:
                    self.each_turn(identity)
        finally:
            for sock in [self.front, *self.backs.values()]:
                sock.close(linger=0)

    def _back(self, identity: bytes, poller: zmq.Poller) -> zmq.Socket:
        if identity not in self.backs:
            back = self.context.socket(zmq.DEALER)
            back.setsockopt(zmq.LINGER, 0)
            back.setsockopt(zmq.ROUTING_ID, identity)
            back.connect(self.master)
            poller.register(back, zmq.POLLIN)
            self.backs[identity] = back
        return self.backs[identity]
