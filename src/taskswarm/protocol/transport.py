"""ZeroMQ sockets as every node uses them: one ROUTER on the master, one DEALER per other node.

Kept apart from the node loops so socket options (linger, reconnect backoff, mandatory routing)
are set in one place and a send never blocks a loop.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from typing import Any

import zmq

from ..errors import ConfigurationError

__all__ = [
    "check_address",
    "bind_router",
    "connect_dealer",
    "try_send",
    "receive_batch",
    "unresolvable",
    "unreachable_message",
]

_ADDRESS = re.compile(r"^tcp://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+|\*):(\d{1,5})$")
#: A Unix socket (one machine only: what LocalCluster uses, a quarter faster than loopback TCP).
_IPC_ADDRESS = re.compile(r"^ipc:///[^\x00]{1,100}$")
#: Messages read from one socket per turn of a loop, so one busy peer cannot starve the rest.
RECEIVE_BATCH = 1000
#: Largest message a socket accepts by default (ZeroMQ drops the connection beyond it).
MAX_MESSAGE_BYTES = 512 * 1024 * 1024


def check_address(address: str, *, allow_wildcard: bool = False) -> str:
    """Validate ``tcp://HOST:PORT`` (or ``ipc:///PATH``); the error says what a right one
    looks like."""
    if _IPC_ADDRESS.match(address or ""):
        return address
    match = _ADDRESS.match(address or "")
    if not match or int(match.group(2)) > 65535 or (match.group(1) == "*" and not allow_wildcard):
        raise ConfigurationError(
            f"{address!r} is not a master address; write it as tcp://HOST:PORT, "
            "for example tcp://127.0.0.1:5555"
        )
    return address


def unresolvable(address: str) -> str | None:
    """Why the host of ``address`` has no address, if it has none; else None.

    ZeroMQ retries a name it cannot resolve for ever without a word, so a misspelt host looks
    exactly like a master that is not running: nodes ask themselves, once they have waited,
    to tell the two apart. A numeric address and an ``ipc://`` path always "resolve".
    """
    match = _ADDRESS.match(address or "")
    if match is None:
        return None
    host = match.group(1).strip("[]")
    try:
        socket.getaddrinfo(host, int(match.group(2)), type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"the host {host!r} cannot be resolved ({exc.strerror or exc})"
    except (OSError, UnicodeError) as exc:
        return f"the host {host!r} cannot be resolved ({exc})"
    return None


def unreachable_message(address: str, waited: float) -> str:
    """What to tell someone whose node got no answer from ``address`` within ``waited`` s."""
    why = unresolvable(address)
    if why is not None:
        return (
            f"no master at {address}: {why}; check the name in the address (or use the "
            "master's IP address)"
        )
    return (
        f"no master answered at {address} within {waited:g}s: check that `taskswarm master` "
        "is running there and that this node uses the same key file"
    )


def bind_router(
    context: zmq.Context[Any],
    address: str,
    curve_secret: bytes | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> tuple[zmq.Socket[Any], str]:
    """Bind the master's socket; port 0 picks a free port. Returns the socket and its address.

    With ``curve_secret`` the socket is a CurveZMQ server: every connection is encrypted, and
    only clients that know the server's public key can talk to it.
    """
    check_address(address, allow_wildcard=True)
    sock = context.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.MAXMSGSIZE, max_bytes)
    if curve_secret is not None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, curve_secret)
    # Fail loudly on a send to a peer that is gone, instead of dropping the message silently.
    sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
    # A node reconnecting under the same identity (after a network blip) takes over its route.
    sock.setsockopt(zmq.ROUTER_HANDOVER, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if address.startswith("ipc://"):
        try:
            sock.bind(address)
        except zmq.ZMQError as exc:
            sock.close()
            raise ConfigurationError(f"cannot listen on {address}: {exc}") from None
        return sock, address
    host, port = address[len("tcp://") :].rsplit(":", 1)
    if host.startswith("["):
        sock.setsockopt(zmq.IPV6, 1)
    try:
        if port == "0":
            real_port = sock.bind_to_random_port(f"tcp://{host}")
            port = str(real_port)
        else:
            sock.bind(address)
    except zmq.ZMQError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {address}: {exc}") from None
    return sock, f"tcp://{host}:{port}"


def connect_dealer(
    context: zmq.Context[Any],
    address: str,
    identity: bytes,
    curve_server_key: bytes | None = None,
) -> zmq.Socket[Any]:
    """Connect a node to the master; with ``curve_server_key`` the link is encrypted.

    No ZeroMQ size limit here, unlike the master's socket: a connecting socket that receives an
    oversized message drops the connection and never makes it again (libzmq 4.3), which would
    let one bad message cut a node off. The node's decoder enforces the limit instead.
    """
    check_address(address)
    sock: zmq.Socket[Any] = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if curve_server_key is not None:
        public, secret = zmq.curve_keypair()  # this connection's own, short-lived keypair
        sock.setsockopt(zmq.CURVE_SERVERKEY, curve_server_key)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
        sock.setsockopt(zmq.CURVE_SECRETKEY, secret)
    sock.setsockopt(zmq.ROUTING_ID, identity)
    sock.setsockopt(zmq.RECONNECT_IVL, 100)
    sock.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    if address.startswith("tcp://["):
        sock.setsockopt(zmq.IPV6, 1)
    sock.connect(address)
    return sock


def try_send(sock: zmq.Socket[Any], frames: list[Any]) -> bool:
    """Send without blocking; False when the peer is unknown, gone or not keeping up."""
    try:
        sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        return True
    except zmq.ZMQError as exc:
        if exc.errno in (zmq.EAGAIN, zmq.EHOSTUNREACH):
            return False
        raise


def receive_batch(sock: zmq.Socket[Any], limit: int = RECEIVE_BATCH) -> Iterator[list[zmq.Frame]]:
    """Yield the messages waiting on ``sock`` (at most ``limit``), never blocking.

    Asks the socket whether a message waits before each read: cheaper than the exception a
    read of an empty socket raises, once per turn of every loop.
    """
    for _ in range(limit):
        if not int(sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            return
        try:
            yield sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return
