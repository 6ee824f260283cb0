"""Safe on a network: replays refused, traffic encrypted, and clear errors for every mistake."""

from __future__ import annotations

import socket
import threading
import time

import pytest
import zmq

import taskswarm as ts
from conftest import free_port, wait_for
from rawpeer import RawPeer
from taskswarm.errors import StaleMessage
from taskswarm.protocol import pickling
from taskswarm.protocol.codec import Codec, Kind
from taskswarm.protocol.keys import load_key
from taskswarm.protocol.messages import Delivery
from taskswarm.task import task_meta


class AppendLine(ts.Task):
    """Leaves a trace of every run, so a test can count how often it really ran."""

    def __init__(self, path: str):
        super().__init__(name="append-line")
        self.path = path

    def __call__(self):
        with open(self.path, "a") as fh:
            fh.write("ran\n")
        return "ran"


def rejected(app, reason: str) -> int:
    return app.status()["master"]["rejected"].get(reason, 0)


@pytest.fixture
def context():
    ctx = zmq.Context()
    try:
        yield ctx
    finally:
        ctx.destroy(linger=0)


def submit_once(peer: RawPeer, path) -> tuple[list[bytes], str]:
    """The SUBMIT message's frames (to replay) and the task's id, once its result is back."""
    task = AppendLine(str(path))
    header = {"tasks": [task_meta(task)], "rid": 1}
    frames = peer.send(Kind.SUBMIT, header, [pickling.dumps(task)])
    assert peer.receive(Kind.RESULTS, timeout=30).read(Delivery).results[0].task_id == task.task_id
    return frames, task.task_id


def test_a_replayed_submission_is_refused_and_the_task_runs_once(cluster, app, context, tmp_path):
    runs = tmp_path / "runs"
    peer, thief = RawPeer(context, cluster.address, cluster.key.hmac), None
    try:
        peer.hello()
        captured, _ = submit_once(peer, runs)
        peer.send_raw(captured)  # the same connection
        thief = RawPeer(context, cluster.address, cluster.key.hmac)
        thief.send_raw(captured)  # another connection
        wait_for(lambda: rejected(app, "replayed") >= 2)
    finally:
        peer.close()
        if thief is not None:
            thief.close()
    assert runs.read_text() == "ran\n"


def test_a_message_replayed_to_another_master_or_a_restarted_one_is_refused(
    nodes, key_file, context, tmp_path
):
    addresses = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
    masters = [
        nodes.start(
            "master",
            "--bind",
            a,
            "--key-file",
            key_file,
            "--state-dir",
            str(tmp_path / f"state{i}"),
        )
        for i, a in enumerate(addresses)
    ]
    for address in addresses:
        nodes.start("slave", address, "--key-file", key_file, "--workers", "1")
    runs = tmp_path / "runs"
    with ts.connect(addresses[0], key_file) as first, ts.connect(addresses[1], key_file) as second:
        wait_for(lambda: all(len(a.status()["slaves"]) == 1 for a in (first, second)))
        peer = RawPeer(context, addresses[0], load_key(key_file))
        try:
            peer.hello()
            captured, task_id = submit_once(peer, runs)
            # Confirm the result, as an application does, so the master that is killed below
            # does not run the task again from its journal (at-least-once after a crash); the
            # status round trip on the same connection comes back after the ack is handled.
            peer.send(Kind.RESULTS_ACK, {"tasks": [task_id]})
            peer.send(Kind.STATUS, {"rid": 2})
            peer.receive(Kind.STATUS_REPLY, timeout=30)
        finally:
            peer.close()
        for target in (addresses[1], addresses[0]):
            thief = RawPeer(context, target, load_key(key_file))
            if target == addresses[0]:  # the first master restarts before this replay
                masters[0].kill()
                masters[0].wait()
                nodes.start(
                    "master",
                    "--bind",
                    target,
                    "--key-file",
                    key_file,
                    "--state-dir",
                    str(tmp_path / "state0"),
                )
            thief.send_raw(captured)
            app = second if target == addresses[1] else first
            wait_for(lambda app=app: rejected(app, "misdirected") >= 1, timeout=30)
            thief.close()
        assert second.status()["slaves"][0]["done"] == 0
    assert runs.read_text() == "ran\n"


def test_an_opening_message_older_than_the_window_is_refused():
    sender, receiver = Codec(b"k" * 32), Codec(b"k" * 32, window=0.05)
    frames = sender.encode(Kind.HELLO, {"client_id": "x"})
    time.sleep(0.1)  # the window itself is what is tested here
    with pytest.raises(StaleMessage, match="clocks differ"):
        receiver.decode(frames)


class Relay:
    """A TCP relay that records every byte between a client and the master."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket) -> None:
        while True:
            try:
                data = source.recv(65536)
                if not data:
                    return
                with self.lock:
                    self.seen += data
                sink.sendall(data)
            except OSError:
                return

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.parametrize("curve", [False, True])
def test_with_curve_a_tasks_payload_never_appears_in_the_traffic(curve):
    marker = b"A-VERY-RECOGNISABLE-PAYLOAD-0451"
    with ts.LocalCluster(slaves=1, workers=1, curve=curve, ipc=False) as cluster:
        relay = Relay(int(cluster.address.rsplit(":", 1)[1]))
        try:
            with ts.connect(f"tcp://127.0.0.1:{relay.port}", key=cluster.key) as app:
                assert app.submit(len, marker).result(timeout=30) == len(marker)
                assert app.status()["master"]["encrypted"] is curve
        finally:
            relay.close()
    with relay.lock:
        assert (marker in relay.seen) is not curve
        assert len(relay.seen) > 1000


# -- clear errors for user mistakes -----------------------------------------------------------


def test_an_unpicklable_task_fails_at_submit_naming_the_attribute(app):
    class HoldsALock(ts.Task):
        def __init__(self):
            super().__init__(name="holds-a-lock")
            self.lock = threading.Lock()

        def __call__(self):
            return 1

    with pytest.raises(TypeError, match=r"'holds-a-lock' cannot be sent: attribute 'lock' "):
        app.submit(HoldsALock())
    with pytest.raises(TypeError, match=r"argument 1 \(_thread.lock\) cannot be pickled"):
        app.submit(print, "fine", threading.Lock())


def test_nothing_listening_is_a_clear_error_after_the_connect_timeout(key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(ts.MasterUnreachable, match=rf"no master answered at {address} within 1s"):
        ts.connect(address, key_file, connect_timeout=1.0)
    assert time.monotonic() - started < 10


def test_a_key_that_does_not_match_is_named_as_such(cluster, key_file):
    with pytest.raises(
        ts.AuthenticationFailed, match="authentication failed: this key does not match the master's"
    ):
        ts.connect(cluster.address, key_file, connect_timeout=10)


def test_a_slave_with_the_wrong_key_exits_saying_why(cluster, nodes, key_file):
    out = nodes.run("slave", cluster.address, "--key-file", key_file, timeout=30)
    assert out.returncode == 1
    assert "authentication failed: this key does not match the master's" in out.stderr


def test_a_protocol_version_mismatch_names_both_versions(cluster, monkeypatch):
    import taskswarm.protocol.codec as wire

    monkeypatch.setattr(wire, "PROTOCOL_VERSION", 99)
    with pytest.raises(
        ts.ClusterError, match="the master speaks version 1, this node speaks version 99"
    ):
        ts.connect(cluster.address, key=cluster.key, connect_timeout=10)


def test_a_task_whose_module_is_missing_on_the_slave_names_the_module(app, tmp_path, monkeypatch):
    module = tmp_path / "only_on_the_app_side.py"
    module.write_text("def work():\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import only_on_the_app_side

    import taskswarm.protocol.pickling as pickling

    # As if the module were installed here and not on the slaves: it travels by reference.
    monkeypatch.setattr(pickling, "_ship_by_value", lambda name: False)
    with pytest.raises(ts.TaskError, match=r"module 'only_on_the_app_side' is not installed there"):
        app.submit(only_on_the_app_side.work).result(timeout=30)


def test_the_key_never_appears_in_logs_or_status(nodes, key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    secret = load_key(key_file).hex()
    master = nodes.start(
        "--log-level",
        "debug",
        "master",
        "--bind",
        address,
        "--key-file",
        key_file,
        "--no-state-dir",
    )
    nodes.start("--log-level", "debug", "slave", address, "--key-file", key_file)
    status = nodes.run("status", "--master", address, "--key-file", key_file, "--json")
    assert status.returncode == 0 and secret not in status.stdout
    master.terminate()
    _, err = master.communicate(timeout=10)
    assert "master listening" in err and secret not in err
