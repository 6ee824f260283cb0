"""100,000 hostile messages at a running master and a running slave, while they serve work.

Half go straight to the master's port from many rogue connections; half reach the slave through
a man-in-the-middle relay that also passes the real traffic. The mix: random frames, truncated,
unsigned, wrongly signed, bit-flipped (in any frame: the MAC, the signed header or a payload)
and oversized messages, and replays of a valid one, most carrying a canary whose unpickling
would create a file. Both nodes must keep serving task systems correctly, and the canary must
never be unpickled. The counts are written to test-artifacts/fuzz.json (and printed) for the
record.

A message whose payload alone was changed still has a header the key signed. It is refused at
the door when its kind carries no payloads; a TASKS message is refused by a slave as not coming
from its master's session; elsewhere the payload's digest refuses it where it would be
unpickled (tests/test_digests.py has the altered payloads of real traffic).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import pickle
import random
from collections import Counter
from pathlib import Path

import msgpack
import pytest
import zmq

import taskswarm as ts
from conftest import free_port, wait_for
from rawpeer import RawPeer
from relay import Relay
from taskswarm.protocol.codec import Codec, Kind
from taskswarm.protocol.keys import load_key
from test_reliability import SlowSquares

TOTAL = 100_000
OVERSIZE = 1024 * 1024 + 16  # nodes run with --max-message-mib 1
MAX_OVERSIZED = 10


class Canary:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


class Garbage:
    """Hostile messages of every kind, counted as they are made."""

    def __init__(self, key: bytes, canary: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.codec = Codec(key)
        self.stranger = Codec(os.urandom(32))
        self.canary = pickle.dumps(Canary(canary))
        self.oversized = [b"\0" * 32, b"x" * OVERSIZE]
        self.sent: Counter[str] = Counter()
        self.replay: list[bytes] | None = None

    def make(self, to: str | None) -> list[bytes]:
        kind = self.rng.choices(
            ["random", "truncated", "unsigned", "wrong-key", "bit-flip", "replay", "oversized"],
            weights=[25, 15, 15, 15, 15, 14, 1],
        )[0]
        if kind == "replay" and self.replay is None:
            kind = "random"
        if kind == "oversized" and self.sent["oversized"] >= MAX_OVERSIZED:
            kind = "random"  # each one costs its receiver a reconnect: a few make the point
        self.sent[kind] += 1
        return getattr(self, "_" + kind.replace("-", "_"))(to)

    def _random(self, to):
        return [self.rng.randbytes(self.rng.randint(0, 64)) for _ in range(self.rng.randint(1, 4))]

    def _valid(self, to):
        kind = self.rng.choice(sorted(Kind.ALL))
        return self.codec.encode(kind, {"tasks": [["t", None]]}, [self.canary], to=to)

    def _mutable(self, to):
        """A signed message and the frame to change: its MAC, its header or its payload."""
        frames = self._valid(to)
        return frames, self.rng.randrange(len(frames))

    def _truncated(self, to):
        frames, i = self._mutable(to)
        frames[i] = frames[i][: self.rng.randrange(max(1, len(frames[i])))]
        return frames

    def _unsigned(self, to):
        header = msgpack.packb({"v": 1, "k": "tasks", "sid": "x", "seq": 1, "to": to})
        return [b"\0" * 32, header, self.canary]

    def _wrong_key(self, to):
        return self.stranger.encode(Kind.TASKS, {"tasks": [["t", None]]}, [self.canary], to=to)

    def _bit_flip(self, to):
        frames, i = self._mutable(to)
        if not frames[i]:
            return self._random(to)
        data = bytearray(frames[i])
        data[self.rng.randrange(len(data))] ^= 1 << self.rng.randrange(8)
        frames[i] = bytes(data)
        return frames

    def _replay(self, to):
        return self.replay

    def _oversized(self, to):
        return self.oversized


class SlaveRelay(Relay):
    """Stands between a slave and its master, passing real traffic and injecting garbage."""

    def __init__(
        self, context: zmq.Context, master: str, garbage: Garbage, budget: int, per_turn: int = 100
    ) -> None:
        super().__init__(context, master)
        self.garbage, self.budget, self.per_turn = garbage, budget, per_turn
        self.slave_session: str | None = None
        self.injected = 0

    def outward(self, frames: list[bytes]) -> list[bytes]:
        try:
            header = msgpack.unpackb(frames[1])
            self.slave_session = header.get("sid", self.slave_session)
        except Exception:
            pass
        return frames

    def each_turn(self, identity: bytes) -> None:
        for _ in range(min(self.per_turn, self.budget - self.injected)):
            try:
                self.front.send_multipart(
                    [identity, *self.garbage.make(self.slave_session)], flags=zmq.NOBLOCK
                )
            except zmq.ZMQError:
                pass  # the slave dropped the connection (oversized) and is reconnecting
            self.injected += 1


def fuzz_master(context, address, garbage: Garbage, budget: int, sockets: int = 260) -> None:
    """Spread over enough connections that none is ignored for flooding: every message meets
    the decoder (a flooder being ignored is its own test)."""
    peers = [RawPeer(context, address, garbage.codec._key) for _ in range(sockets)]
    try:
        opener = peers[0]
        opener.hello()
        garbage.replay = opener.frames(Kind.HEARTBEAT)  # valid once; every copy is a replay
        opener.send_raw(garbage.replay)
        for peer, _ in zip(itertools.cycle(peers), range(budget)):
            try:
                peer.socket.send_multipart(garbage.make(opener.master_session), flags=zmq.NOBLOCK)
            except zmq.Again:
                garbage.sent["not-sent (reconnecting)"] += 1
    finally:
        for peer in peers:
            peer.close()


@pytest.mark.timeout(300)
def test_a_hundred_thousand_hostile_messages_change_nothing(nodes, key_file, tmp_path):
    canary = tmp_path / "canary"
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start(
        "master",
        "--bind",
        address,
        "--key-file",
        key_file,
        "--no-state-dir",
        "--max-message-mib",
        "1",
    )
    context = zmq.Context()
    key = load_key(key_file)
    relay = SlaveRelay(context, address, Garbage(key, str(canary), 2), TOTAL // 2)
    relay.start()
    try:
        slave = nodes.start(
            "slave",
            f"tcp://127.0.0.1:{relay.port}",
            "--key-file",
            key_file,
            "--workers",
            "2",
            "--max-message-mib",
            "1",
        )
        with ts.connect(address, key_file) as app:
            wait_for(lambda: [s for s in app.status()["slaves"] if s["state"] == "active"])
            during = app.submit_system(SlowSquares(400))
            master_garbage = Garbage(key, str(canary), 1)
            fuzz_master(context, address, master_garbage, TOTAL // 2)
            assert during.result(timeout=120) == sum(i * i for i in range(400))
            wait_for(lambda: relay.injected >= TOTAL // 2, timeout=120)
            assert app.run_system(SlowSquares(100), timeout=120) == sum(i * i for i in range(100))
            wait_for(lambda: app.status()["slaves"][0]["rejected"] > 0, timeout=30)
            status = app.status()
        assert slave.poll() is None
    finally:
        relay.stop.set()
        relay.join(10)
        context.destroy(linger=0)
    assert not canary.exists()
    report = {
        "sent_to_master": dict(master_garbage.sent),
        "master_rejected": status["master"]["rejected"],
        "sent_to_slave": dict(relay.garbage.sent),
        "slave_rejected_total": status["slaves"][0]["rejected"],
        "canary_unpickled": canary.exists(),
    }
    artifacts = Path(__file__).resolve().parent.parent / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    (artifacts / "fuzz.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


class Impostor(Garbage):
    """Well-formed orders for a slave, signed with the cluster key by a session that is not
    its master's: SHUTDOWN, RESIZE to no workers, STEAL, and TASKS carrying the canary (whose
    digest matches: run, it would create its file). (Not a WELCOME: a slave learns which
    session is its master's from the WELCOME that answers its REGISTER, so only a key holder's
    WELCOME that beats the master's could make it take another's orders.)"""

    ORDERS = {Kind.SHUTDOWN: {}, Kind.RESIZE: {"workers": 0}, Kind.STEAL: {"count": 1}}

    def make(self, to: str | None) -> list[bytes]:
        kind = self.rng.choice([*self.ORDERS, Kind.TASKS])
        self.sent[kind] += 1
        if kind == Kind.TASKS:
            return self.codec.encode(kind, {"tasks": [["t", None]]}, [self.canary], to=to)
        return self.codec.encode(kind, self.ORDERS[kind], to=to)


@pytest.mark.timeout(120)
def test_a_slave_takes_orders_only_from_the_master_that_welcomed_it(nodes, key_file, tmp_path):
    canary = tmp_path / "canary"
    address = f"tcp://127.0.0.1:{free_port()}"
    nodes.start("master", "--bind", address, "--key-file", key_file, "--no-state-dir")
    context = zmq.Context()
    impostor = Impostor(load_key(key_file), str(canary), 3)
    # One message per turn of the relay: some reach the slave before its master welcomes it,
    # the rest after.
    relay = SlaveRelay(context, address, impostor, 300, per_turn=1)
    relay.start()
    try:
        slave = nodes.start(
            "slave", f"tcp://127.0.0.1:{relay.port}", "--key-file", key_file, "--workers", "1"
        )
        with ts.connect(address, key_file) as app:
            wait_for(lambda: relay.injected >= 300, timeout=60)
            wait_for(lambda: [s for s in app.status()["slaves"] if s["state"] == "active"])
            assert app.submit(abs, -3).result(timeout=60) == 3
            wait_for(lambda: app.status()["slaves"][0]["rejected"] >= 300, timeout=30)
            assert len(app.status()["slaves"]) == 1
        assert slave.poll() is None  # no SHUTDOWN taken
    finally:
        relay.stop.set()
        relay.join(10)
        context.destroy(linger=0)
    assert impostor.sent[Kind.SHUTDOWN] > 0 and impostor.sent[Kind.TASKS] > 0
    assert not canary.exists()  # no TASKS taken


def test_a_peer_that_keeps_sending_garbage_is_ignored_for_a_while(cluster, app):
    context = zmq.Context()
    flooder = context.socket(zmq.DEALER)
    flooder.setsockopt(zmq.LINGER, 0)
    flooder.connect(cluster.address)
    try:
        for i in range(1000):
            flooder.send_multipart([b"garbage", str(i).encode()])
        wait_for(lambda: app.status()["master"]["rejected"].get("ignored-peer", 0) > 0)
    finally:
        context.destroy(linger=0)
    assert app.submit(abs, -4).result(timeout=30) == 4
