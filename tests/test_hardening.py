"""One bad message, number or outcome fails only itself: the master stays up for every other peer,
and no Future waits for ever."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import msgspec
import pytest
import zmq

import taskswarm as ts
from conftest import wait_for
from rawpeer import RawPeer
from taskswarm.protocol import pickling
from taskswarm.protocol.codec import Kind
from taskswarm.protocol.messages import Reject
from taskswarm.task import FunctionTask, task_meta

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def shared() -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=1, workers=1, state_dir=None) as cluster:
        yield cluster


@pytest.fixture
def app(shared: ts.LocalCluster) -> Iterator[ts.Application]:
    with shared.connect() as connection:
        yield connection


@pytest.fixture
def peer(shared: ts.LocalCluster) -> Iterator[RawPeer]:
    context = zmq.Context()
    raw = RawPeer(context, shared.address, shared.key.hmac)
    try:
        yield raw
    finally:
        raw.close()
        context.destroy(linger=0)


class ExitsWhenUnpickled:
    """Unpickles fine on a worker, raises SystemExit on the application's side."""

    def __reduce__(self):
        return _exit_here_unless_worker, (os.getpid(),)


def _exit_here_unless_worker(sender_pid: int) -> object:
    if os.getpid() == sender_pid:
        return "built where it was made"
    raise SystemExit("not here")


def make_exiting() -> ExitsWhenUnpickled:
    return ExitsWhenUnpickled()


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("priority", 2**64, "priority must be a whole number that fits in 64 bits"),
        ("priority", 2**63, "priority must be a whole number that fits in 64 bits"),
        ("max_retries", 2**63, "max_retries must be a whole number from 0 to 2\\*\\*63-1"),
        ("timeout", math.inf, "timeout must be a positive, finite number"),
        ("timeout", math.nan, "timeout must be a positive, finite number"),
    ],
)
def test_a_task_number_out_of_range_is_refused_at_submit_and_the_connection_lives(
    app, field, value, says
):
    task = FunctionTask(pow, 2, 3)
    setattr(task, field, value)

    with pytest.raises(ValueError, match=says):
        app.submit(task)
    assert app.submit(pow, 2, 4).result(timeout=30) == 16


def test_a_batch_with_a_number_out_of_range_is_refused_by_the_master_which_stays_up(app, peer):
    peer.hello()
    task = FunctionTask(pow, 2, 5)
    meta = msgspec.to_builtins(task_meta(task))[:4] + [2**63, None]  # past what the journal holds
    peer.send(Kind.SUBMIT, {"tasks": [meta], "rid": 7}, [pickling.dumps_task(task)])

    reject = peer.receive(Kind.REJECT, timeout=30).read(Reject)
    assert reject.rid == 7 and "does not fit in 64 bits" in reject.reason
    assert app.submit(pow, 2, 5).result(timeout=30) == 32


def test_a_heartbeat_with_an_absurd_number_is_dropped_and_the_master_stays_up(app, peer):
    peer.send(
        Kind.REGISTER,
        {"node_id": "bad-slave", "host": "h", "pid": 1, "workers": 1, "heartbeat": 1.0},
    )
    peer.master_session = peer.receive(Kind.WELCOME, timeout=30).sender
    peer.send(Kind.HEARTBEAT, {"workers": math.inf, "want": math.inf})

    wait_for(lambda: app.status()["master"]["rejected"].get("bad-fields", 0) >= 1)
    assert app.submit(pow, 3, 2).result(timeout=30) == 9


def test_a_result_that_raises_system_exit_when_unpickled_fails_only_its_future(app):
    broken = app.submit(make_exiting)
    fine = app.submit(pow, 2, 6)

    with pytest.raises(ts.TaskError, match="could not be unpickled here: SystemExit"):
        broken.result(timeout=30)
    assert fine.result(timeout=30) == 64
    assert app.submit(pow, 2, 7).result(timeout=30) == 128


def test_if_the_io_thread_fails_every_waiting_future_fails_with_the_reason(shared, tmp_path):
    app = shared.connect()
    try:
        gate = tmp_path / "never"
        waiting = app.submit(os.path.exists, str(gate))  # done quickly; the next one is not
        waiting.result(timeout=30)
        held = app.submit(_wait_for_file, str(gate))
        wait_for(held.running)

        def broken_keep_alive() -> None:
            raise SystemExit("the I/O thread stops here")

        app._link._keep_alive = broken_keep_alive  # runs in the I/O thread within half a second
        with pytest.raises(ts.ClusterError, match="the I/O thread stops here"):
            held.result(timeout=30)
        with pytest.raises(ts.ClusterError, match="connect again"):
            app.submit(pow, 2, 2)
    finally:
        app.close()


def _wait_for_file(path: str) -> bool:
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return True


def test_a_task_cancelled_by_another_application_ends_its_owners_future(shared, tmp_path):
    with shared.connect() as owner, shared.connect() as other:
        held = owner.submit(_wait_for_file, str(tmp_path / "never"))
        wait_for(held.running)

        other._link.post(Kind.CANCEL, {"tasks": [held.task_id]})  # as by an id from /api/tasks

        with pytest.raises(ts.TaskError, match=f"was cancelled by application {other.client_id}"):
            held.result(timeout=30)
        assert owner.submit(pow, 2, 8).result(timeout=30) == 256


def test_departed_slaves_are_kept_only_as_a_bounded_recent_list(app, peer):
    from taskswarm.master.node import DEPARTED_KEPT

    # Each REGISTER under a new name from the same socket replaces the slave before it, which
    # departs: a cluster whose slaves come and go (spot instances, autoscaling) for months.
    count = DEPARTED_KEPT + 150
    for n in range(count):
        peer.send(
            Kind.REGISTER,
            {"node_id": f"passing-{n}", "host": "h", "pid": 1, "workers": 1, "heartbeat": 1.0},
        )
    wait_for(lambda: any(s["id"] == f"passing-{count - 1}" for s in app.status()["slaves"]))
    wait_for(lambda: app.status()["master"]["kept"]["departed_slaves"] <= DEPARTED_KEPT)
    names = {s["id"] for s in app.status()["slaves"]}
    assert len(names) <= DEPARTED_KEPT + 2  # the kept departed, the last one and the real slave
    assert "passing-0" not in names and f"passing-{count - 2}" in names  # the oldest go first


def _start_master(nodes, key_file: str, address: str, ready) -> None:
    ready.unlink(missing_ok=True)
    nodes.start(
        "master", "--bind", address, "--key-file", key_file, "--no-state-dir",
        "--no-dashboard", "--heartbeat", "0.2", "--ready-file", str(ready),
    )  # fmt: skip
    wait_for(lambda: ready.exists() and ready.read_text())


def test_a_master_restarted_without_its_state_fails_the_futures_it_forgot(
    nodes, key_file, tmp_path
):
    from conftest import free_port

    address = f"tcp://127.0.0.1:{free_port()}"
    ready = tmp_path / "ready"
    _start_master(nodes, key_file, address, ready)
    with ts.connect(address, key_file=key_file) as app:
        queued = app.submit(pow, 2, 10)  # no slave: it stays queued on the master
        wait_for(lambda: app.status()["tasks"]["queued"] == 1)
        # ... and the master said it holds it (its ACK may wait a few ms for results to ride
        # with): a SUBMIT not acknowledged yet would go again, to the new master, unfailed.
        wait_for(lambda: not app._link._unconfirmed_batches)
        nodes.processes[-1].kill()
        nodes.processes[-1].wait(timeout=10)
        _start_master(nodes, key_file, address, ready)  # same address, nothing saved
        with pytest.raises(ts.TaskError, match="no longer holds this task.*--state-dir"):
            queued.result(timeout=30)
        # The connection goes on with the new master.
        assert app.status()["tasks"]["queued"] == 0


def test_a_welcome_while_tasks_wait_to_be_sent_fails_none_of_them(app):
    """A second WELCOME (a HELLO answered twice, on a loaded machine) makes the application
    resync; a task submitted but not yet sent must reach the master before the question of
    which tasks it holds, or the master answers that it does not hold it."""
    import threading

    welcomed_again, go = threading.Event(), threading.Event()

    def on_io_thread(_future) -> None:
        # Runs on the application's I/O thread: say HELLO again and hold the thread until the
        # master's WELCOME is waiting on the socket and the next task waits in the mailbox.
        app._link.send(Kind.HELLO, app._link.hello)
        app._link.socket.poll(10_000)
        welcomed_again.set()
        go.wait(10)

    first = app.submit(pow, 2, 3)
    first.add_done_callback(on_io_thread)
    assert welcomed_again.wait(30)
    second = app.submit(pow, 3, 3)  # posted while the I/O thread is held
    go.set()
    assert first.result(timeout=30) == 8
    assert second.result(timeout=30) == 27
