"""The master's core, driven in memory: no socket, no thread, a fake clock.

``MasterCore`` takes decoded messages and sends through a callable; here that callable is a
``Wire`` that keeps every message as an ``Outgoing`` record, and the peers are played by the
test. A hypothesis state machine has applications submit plain tasks (opaque bytes: the master
never unpickles them), slaves register, beat, receive tasks and return results (sometimes twice,
sometimes late, for tasks already cancelled, or after they were lost), slaves vanish (their
silence outlasts the timeout on the fake clock), and applications cancel tasks. After every step
it checks DESIGN.md's invariants: a task is in one state at a time, and no result reaches its
application twice; at the end, every task not cancelled by its owner has reached it exactly once,
whatever slaves were lost on the way.
"""

from __future__ import annotations

import itertools
import threading
from collections import Counter, defaultdict
from typing import Any

import hypothesis.strategies as st
import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, settings
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskswarm.errors import ConfigurationError, DependencyError
from taskswarm.master.core import MasterCore
from taskswarm.master.edges import Outgoing
from taskswarm.master.journal import Journal
from taskswarm.master.results import ACK_DELAY
from taskswarm.master.retention import Retention
from taskswarm.master.schedulers import load_scheduler
from taskswarm.ops.config import MasterConfig
from taskswarm.protocol.codec import Kind, Message
from taskswarm.protocol.messages import RECORDS, Header
from taskswarm.scheduling.records import TaskState
from taskswarm.task import Status, failure, load_outcome

SLAVE_TIMEOUT = 5.0
HEARTBEAT = 1.0


class Clock:
    """The core's clock, moved by the test only."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Wire:
    """The in-memory transport: what the core sent, per peer, in order."""

    def __init__(self) -> None:
        self.sent: list[Outgoing] = []

    def send(self, identity: bytes, kind: str, header: Header | None = None, payloads=()) -> bool:
        assert header is None or header.kind == kind
        self.sent.append(Outgoing(identity, kind, plain(header), list(payloads)))
        return True

    def take(self) -> list[Outgoing]:
        sent, self.sent = self.sent, []
        return sent


def make_core(wire: Wire, clock: Clock, **options: Any) -> MasterCore:
    scheduler = load_scheduler("push", "load", 2)
    scheduler.setup(None)
    return MasterCore(
        scheduler,
        wire.send,
        heartbeat_interval=HEARTBEAT,
        slave_timeout=SLAVE_TIMEOUT,
        # Applications beat on the real clock in real life; here they stay connected.
        keep=Retention(client_timeout=1e9),
        clock=clock,
        **options,
    )


def plain(header: Header | None) -> dict:
    """A record as the map it travels as, less its kind (and its envelope, never filled in)."""
    fields = msgspec.to_builtins(header) if header is not None else {}
    fields.pop("k", None)
    return fields


def message(kind: str, header: dict | None = None, payloads: list | None = None) -> Message:
    """A message as the codec hands it over: the plain map a peer sent, as its kind's record."""
    body = msgspec.convert({**(header or {}), "k": kind}, RECORDS[kind])
    return Message(kind, body, payloads or [], sender="peer-session")


def task_meta(task_id: str) -> list:
    return [task_id, None, 0, "opaque"]


def payload(task_id: str) -> bytes:
    # Not a pickle at all: the master must route it untouched.
    return b"\x00not a pickle\xff" + task_id.encode()


def result_of(task_id: str) -> bytes:
    return b"\x00result\xff" + task_id.encode()


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """The core must not make a ZeroMQ context (so no socket), nor start a thread."""

    def refuse(*args, **kwargs):
        raise AssertionError("the master core made a ZeroMQ context")

    monkeypatch.setattr(zmq.Context, "__init__", refuse)
    threads = threading.active_count()
    yield
    assert threading.active_count() == threads


class CoreMachine(RuleBasedStateMachine):
    applications = Bundle("applications")

    def __init__(self) -> None:
        super().__init__()
        self.threads = threading.active_count()
        self.clock = Clock()
        self.wire = Wire()
        self.core = make_core(self.wire, self.clock)
        self.ids = itertools.count()
        self.owner: dict[str, bytes] = {}  # task id -> its application's identity
        self.withdrawn: set[str] = set()  # cancelled by their owner: no outcome expected
        self.delivered: Counter[str] = Counter()  # task id -> RESULTS that carried it
        self.unacked: dict[bytes, list[str]] = defaultdict(list)
        self.alive: dict[bytes, str] = {}  # slave identity -> slave id, while it answers
        self.holds: dict[bytes, set[str]] = defaultdict(set)  # what each slave was sent
        self.returned: list[tuple[bytes, str]] = []  # results sent, to send again
        self.lost_holds: list[tuple[bytes, str]] = []  # what vanished slaves still held
        self.acks: list[Outgoing] = []
        self.takers: dict[str, list[str]] = {}  # task id -> the tasks whose results it takes
        # The data plane: tasks whose big result stays on the slave (its RESULTS says so),
        # what each slave keeps, where each application was told a result is, what it let go.
        self.big: set[str] = set()
        self.stores: dict[bytes, set[str]] = defaultdict(set)
        self.places: dict[str, str] = {}
        self.let_go: set[str] = set()
        self.fetching: dict[str, list[str]] = {}  # task id -> inputs it must fetch

    # -- the peers' side ----------------------------------------------------------------------

    def handle(self, identity: bytes, kind: str, header: dict | None = None, payloads=None):
        self.core.handle(identity, message(kind, header, payloads))

    def read_wire(self) -> None:
        """Take what the core sent: tasks to slaves, results to applications."""
        for out in self.wire.take():
            if out.kind == Kind.TASKS:
                self._read_tasks(out)
            elif out.kind == Kind.RESULTS:
                self._read_results(out)
            elif out.kind == Kind.ACK:
                self.acks.append(out)
            elif out.kind == Kind.DROP:
                self.stores[out.identity].difference_update(out.header["data_ids"])

    def _read_tasks(self, out: Outgoing) -> None:
        tasks, inputs = out.header["tasks"], out.header.get("inputs", [])
        at = out.header.get("at") or [""] * len(inputs)
        assert len(out.payloads) == len(tasks) + len(inputs)
        remote = set()
        for dep, data, where in zip(inputs, out.payloads[len(tasks) :], at, strict=True):
            if where:  # kept on a slave: its place, not its bytes
                assert data == b"" and where.startswith("tcp://"), (dep, where)
                remote.add(dep)
            else:
                assert data == result_of(dep)  # an input's result, as its slave sent it
        for (task_id, _, deps, _), data in zip(tasks, out.payloads, strict=False):
            assert data == payload(task_id)  # routed as the bytes that came in
            assert set(deps or ()) <= set(inputs)  # its inputs came with it
            self.holds[out.identity].add(task_id)
            self.fetching[task_id] = sorted(remote & set(deps or ()))

    def _read_results(self, out: Outgoing) -> None:
        for (task_id, ok, where), data in zip(out.header["results"], out.payloads, strict=True):
            assert self.owner[task_id] == out.identity, "a result went to another app"
            if task_id in self.places and (where is not None or not ok):
                assert self.delivered[task_id] == 1  # made again (its new place), or lost
                assert task_id not in self.let_go
                self.places[task_id] = where
                continue
            self.delivered[task_id] += 1
            assert self.delivered[task_id] == 1, f"{task_id} delivered twice"
            if where is not None:
                assert ok and data == b""
                self.places[task_id] = where
            elif ok:
                assert data == result_of(task_id)
            self.unacked[out.identity].append(task_id)

    def turn(self) -> None:
        self.core.turn()
        self.read_wire()

    # -- rules ---------------------------------------------------------------------------------

    @initialize(target=applications)
    def first_application(self):
        return self.hello()

    @initialize()
    def first_slave(self):
        self.register(2)

    @precondition(lambda self: len(self.owner) < 60)
    @rule(target=applications)
    def hello(self):
        identity = f"app-{next(self.ids)}".encode()
        self.handle(identity, Kind.HELLO, {"client_id": identity.decode(), "pid": 1})
        assert self.wire.take()[-1].kind == Kind.WELCOME
        return identity

    @precondition(lambda self: len(self.owner) < 60)
    @rule(app=applications, count=st.integers(1, 4), big=st.booleans())
    def submit(self, app, count, big):
        task_ids = [f"task-{next(self.ids)}" for _ in range(count)]
        for task_id in task_ids:
            self.owner[task_id] = app
        if big:  # results its slaves keep
            self.big.update(task_ids)
        metas = [[*task_meta(t), 0, None, None, big] for t in task_ids]
        header = {"tasks": metas, "rid": 7}
        self.handle(app, Kind.SUBMIT, header, [payload(t) for t in task_ids])
        self.turn()
        assert [(o.identity, o.header) for o in self.acks] == [(app, {"rid": 7, "n": count})]
        self.acks.clear()

    @precondition(lambda self: len(self.owner) < 60)
    @rule(app=applications, data=st.data())
    def submit_taker(self, app, data):
        self._submit_taker(app, data)

    def _submit_taker(self, app, data):
        """A task that takes one or two earlier tasks' results (Futures as arguments), in
        whatever state those are: queued, running, done, acknowledged, cancelled."""
        mine = sorted(t for t, owner in self.owner.items() if owner == app)
        if not mine:
            return
        deps = data.draw(st.lists(st.sampled_from(mine), min_size=1, max_size=2, unique=True))
        task_id = f"task-{next(self.ids)}"
        self.owner[task_id] = app
        self.takers[task_id] = deps
        big = data.draw(st.booleans())
        if big:
            self.big.add(task_id)
        meta = [task_id, None, 0, "opaque", 0, None, deps, big]
        self.handle(app, Kind.SUBMIT, {"tasks": [meta], "rid": 7}, [payload(task_id)])
        self.turn()
        self.acks.clear()

    @precondition(lambda self: len(self.alive) < 4)
    @rule(workers=st.integers(1, 3))
    def register(self, workers):
        identity = f"slave-{next(self.ids)}".encode()
        header = {"node_id": identity.decode(), "host": "h", "pid": 2, "workers": workers}
        header["data"] = f"tcp://{identity.decode()}:1"
        self.handle(identity, Kind.REGISTER, header | {"heartbeat": HEARTBEAT, "want": 0})
        assert self.wire.take()[-1].kind == Kind.WELCOME
        self.alive[identity] = identity.decode()
        self.handle(identity, Kind.HEARTBEAT, {"workers": workers})
        self.turn()

    def holding(self) -> list[bytes]:
        return sorted(slave for slave in self.alive if self.holds[slave])

    @precondition(lambda self: self.holding())
    @rule(data=st.data())
    def return_result(self, data):
        """A batch of results, as a slave sends them."""
        slave = data.draw(st.sampled_from(self.holding()))
        held = sorted(self.holds[slave])
        task_ids = data.draw(st.lists(st.sampled_from(held), min_size=1, unique=True))
        self.holds[slave].difference_update(task_ids)
        self._send_results(slave, task_ids)
        self.returned.extend((slave, task_id) for task_id in task_ids)

    @precondition(lambda self: self.returned)
    @rule(data=st.data())
    def return_result_again(self, data):
        slave, task_id = data.draw(st.sampled_from(self.returned))
        self._send_results(slave, [task_id])

    @precondition(lambda self: self.lost_holds)
    @rule(data=st.data())
    def late_result_from_a_lost_slave(self, data):
        slave, task_id = data.draw(st.sampled_from(self.lost_holds))
        self._send_results(slave, [task_id])

    def _send_results(self, slave: bytes, task_ids: list[str]) -> None:
        big = [t in self.big for t in task_ids]
        for task_id, kept in zip(task_ids, big, strict=True):
            if kept:
                self.stores[slave].add(task_id)
        header = {
            "results": [
                [task_id, Status.OK, None, 100 if kept else None]
                for task_id, kept in zip(task_ids, big, strict=True)
            ],
            "credit": len(task_ids),
            "started": task_ids,
        }
        payloads = [b"" if kept else result_of(t) for t, kept in zip(task_ids, big, strict=True)]
        self.handle(slave, Kind.RESULTS, header, payloads)
        self.turn()

    @precondition(lambda self: any(self.fetching.get(t) for s in self.alive for t in self.holds[s]))
    @rule(data=st.data())
    def fetch_fails(self, data):
        """A slave could not fetch a task's input from the slave said to keep it."""
        held = [
            (s, t)
            for s in sorted(self.alive)
            for t in sorted(self.holds[s])
            if self.fetching.get(t)
        ]
        slave, task_id = data.draw(st.sampled_from(held))
        self.holds[slave].discard(task_id)
        detail = f"{self.fetching[task_id][0]} the slave did not answer"
        header = {"results": [[task_id, Status.LOST_INPUT, detail]], "credit": 1}
        self.handle(slave, Kind.RESULTS, header, [b""])
        self.turn()

    @rule(app=applications, data=st.data())
    def let_go(self, app, data):
        """Futures of kept results are garbage-collected: the application says FORGET."""
        mine = sorted(t for t in self.places if self.owner[t] == app and t not in self.let_go)
        if not mine:
            return
        task_ids = data.draw(st.lists(st.sampled_from(mine), min_size=1, unique=True))
        self.let_go.update(task_ids)
        self.handle(app, Kind.FORGET, {"data_ids": task_ids})
        self.turn()

    @precondition(lambda self: self.alive)
    @rule(data=st.data())
    def vanish(self, data):
        """A slave goes silent; the others beat while the clock passes its timeout."""
        slave = data.draw(st.sampled_from(sorted(self.alive)))
        del self.alive[slave]
        self.lost_holds.extend((slave, t) for t in sorted(self.holds.pop(slave, ())))
        self.clock.now += SLAVE_TIMEOUT + HEARTBEAT
        for other in self.alive:
            self.handle(other, Kind.HEARTBEAT, {})
        self.core.tick()
        assert self.core.slaves.known(slave) is None
        assert self.alive.keys() <= set(self.core.slaves.peers)
        self.turn()

    @rule(app=applications, data=st.data())
    def cancel(self, app, data):
        mine = sorted(t for t, owner in self.owner.items() if owner == app)
        if not mine:
            return
        task_id = data.draw(st.sampled_from(mine))
        live = self.core.scheduler.tasks
        if task_id not in live and task_id not in self.core.dependencies.waiting:
            return  # finished already: its result is on its way or arrived
        self.withdrawn.add(task_id)
        self.handle(app, Kind.CANCEL, {"tasks": [task_id]})
        for slave in list(self.holds):
            self.holds[slave].discard(task_id)  # told to stop it (its result may still come)
        self.turn()

    @rule(app=applications)
    def acknowledge(self, app):
        task_ids, self.unacked[app] = self.unacked[app], []
        self.handle(app, Kind.RESULTS_ACK, {"tasks": task_ids})
        self.turn()
        assert not set(task_ids) & set(self.core.applications.records[app.decode()].unconfirmed)

    @rule()
    def tick(self):
        for slave in self.alive:
            self.handle(slave, Kind.HEARTBEAT, {})
        self.core.tick()
        self.turn()

    # -- invariants -------------------------------------------------------------------------------

    @invariant()
    def each_task_is_in_one_state(self):
        scheduler = self.core.scheduler
        holders: dict[str, list[str]] = defaultdict(list)
        for slave in scheduler.slaves.values():
            for task_id in slave.in_flight:
                holders[task_id].append(slave.slave_id)
        for task_id, task in scheduler.tasks.items():
            assert task.state in (TaskState.QUEUED, TaskState.ASSIGNED), task
            if task.state == TaskState.ASSIGNED:
                assert holders[task_id] == [task.slave_id], (task, holders[task_id])
            else:
                assert task.slave_id is None or not holders[task_id], (task, holders[task_id])
            if self.delivered[task_id]:  # only a kept result lost with its slave runs again
                assert task_id in self.core.dependencies.kept.entries, task_id
        assert all(len(h) <= 1 for h in holders.values()), holders

    @invariant()
    def no_result_is_delivered_twice(self):
        assert all(n == 1 for n in self.delivered.values())

    @invariant()
    def kept_results_are_on_live_slaves(self):
        slaves = self.core.scheduler.slaves
        for task_id, entry in self.core.dependencies.kept.entries.items():
            if entry.ref is not None:
                assert entry.ref.slave_id in slaves, (task_id, entry)
                identity = slaves[entry.ref.slave_id].identity
                assert task_id in self.stores[identity], (task_id, entry)

    @invariant()
    def inputs_are_kept_only_while_a_task_takes_them(self):
        table, live = self.core.dependencies, self.core.scheduler.tasks
        assert set(table.held) <= set(table.dependents) | set(table.scattered)
        for task_id, (task, missing) in table.waiting.items():
            assert task_id not in live
            assert not self.delivered[task_id] or task_id in table.kept.entries  # made again
            assert missing and missing <= set(task.deps or ())
            assert all(dep in live or dep in table.waiting for dep in missing), missing

    def teardown(self) -> None:
        """Nothing is lost: a fresh slave runs all that is left, and every task not withdrawn
        by its owner reaches it exactly once."""
        identity = b"last-slave"
        header = {"node_id": "last-slave", "workers": 4, "heartbeat": HEARTBEAT}
        self.handle(identity, Kind.REGISTER, header | {"data": "tcp://last-slave:1"})
        self.alive[identity] = "last-slave"
        for _ in range(60):
            self.clock.now += SLAVE_TIMEOUT + HEARTBEAT  # everyone else is lost now
            self.handle(identity, Kind.HEARTBEAT, {})
            self.core.tick()
            self.turn()
            held, self.holds[identity] = sorted(self.holds[identity]), set()
            if held:
                self._send_results(identity, held)
            if not self.core.scheduler.tasks and not self.core.dependencies.waiting:
                break
        self.turn()
        self.core.tick()  # the sweep: nothing is kept for tasks that are gone
        table = self.core.dependencies
        assert not table.waiting and not table.held and not table.dependents
        # Every kept result let go: nothing of them is left, on the master or a live slave.
        for app in {self.owner[t] for t in self.places}:
            task_ids = sorted(t for t in self.places if self.owner[t] == app)
            self.handle(app, Kind.FORGET, {"data_ids": task_ids})
        self.turn()
        assert not table.kept.entries, table.kept.entries
        known = [slave for slave in self.alive if self.core.slaves.known(slave) is not None]
        assert not any(self.stores[slave] for slave in known), dict(self.stores)
        expected = {t for t in self.owner if t not in self.withdrawn}
        missing = {t for t in expected if self.delivered[t] != 1}
        assert not missing, f"never delivered: {sorted(missing)}"
        assert all(self.delivered[t] <= 1 for t in self.withdrawn)
        assert threading.active_count() == self.threads


CoreMachine.TestCase.settings = settings(
    max_examples=80,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

TestCoreMachine = CoreMachine.TestCase


# -- examples --------------------------------------------------------------------------------


def connected_core(workers: int = 1) -> tuple[MasterCore, Wire]:
    """A core with an application ``app`` and a slave ``s1`` of ``workers`` workers."""
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app"}))
    core.handle(b"slave", message(Kind.REGISTER, {"node_id": "s1", "workers": workers}))
    core.handle(b"slave", message(Kind.HEARTBEAT, {}))
    wire.take()
    return core, wire


def test_a_task_goes_from_application_to_slave_and_its_result_back():
    core, wire = connected_core()
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("t1")]}, [b"opaque"]))
    core.turn()
    tasks, ack = wire.take()
    assert tasks == Outgoing(
        b"slave", Kind.TASKS, {"tasks": [["t1", None, None, False]]}, [b"opaque"]
    )
    assert ack.kind == Kind.ACK and ack.identity == b"app"

    core.handle(b"slave", message(Kind.RESULTS, {"results": [["t1", "ok", None]]}, [b"42"]))
    core.turn()
    (results,) = wire.take()
    assert results == Outgoing(b"app", Kind.RESULTS, {"results": [["t1", True, None]]}, [b"42"])
    assert core.status()["tasks"] == {"queued": 0, "assigned": 0}
    assert core.applications.records["app"].done == 1


def test_a_submit_is_acknowledged_with_its_results_to_an_application_taking_batched_acks():
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app", "batched_acks": True}))
    core.handle(b"slave", message(Kind.REGISTER, {"node_id": "s1", "workers": 1}))
    core.handle(b"slave", message(Kind.HEARTBEAT, {}))
    wire.take()
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("t1")], "rid": 7}, [b"x"]))
    core.turn()
    assert [o.kind for o in wire.take()] == [Kind.TASKS]  # no ACK of its own on the way
    assert core.next_wake() == clock.now + ACK_DELAY

    core.handle(b"slave", message(Kind.RESULTS, {"results": [["t1", "ok", None]]}, [b"42"]))
    core.turn()
    (results,) = wire.take()
    assert results == Outgoing(
        b"app", Kind.RESULTS, {"results": [["t1", True, None]], "acked": [7]}, [b"42"]
    )
    assert core.next_wake() is None
    clock.now += ACK_DELAY
    core.turn()
    assert wire.take() == []  # said once


def test_a_batched_ack_goes_alone_when_no_result_comes_in_time():
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app", "batched_acks": True}))
    wire.take()
    for rid in (1, 2):  # no slave: the tasks wait in the queue
        batch = {"tasks": [task_meta(f"t{rid}")], "rid": rid}
        core.handle(b"app", message(Kind.SUBMIT, batch, [b"x"]))
        core.turn()
    assert wire.take() == []

    clock.now += ACK_DELAY
    core.turn()
    (ack,) = wire.take()
    assert ack == Outgoing(b"app", Kind.ACK, {"rid": 1, "rids": [1, 2]}, [])
    assert core.next_wake() is None


def test_a_lost_slaves_task_runs_again_and_is_delivered_once():
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app"}))
    core.handle(b"s1", message(Kind.REGISTER, {"node_id": "s1", "workers": 1}))
    core.handle(b"s1", message(Kind.HEARTBEAT, {}))
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("t1")]}, [b"x"]))
    core.turn()
    assert [o.identity for o in wire.take() if o.kind == Kind.TASKS] == [b"s1"]

    clock.now += SLAVE_TIMEOUT + 1
    core.tick()
    assert core.status()["slaves"][0]["state"] == "lost"
    core.handle(b"s2", message(Kind.REGISTER, {"node_id": "s2", "workers": 1}))
    core.handle(b"s2", message(Kind.HEARTBEAT, {}))
    core.turn()
    assert [o.identity for o in wire.take() if o.kind == Kind.TASKS] == [b"s2"]

    for slave in (b"s2", b"s1", b"s2"):  # the lost one's late result, and a duplicate
        core.handle(slave, message(Kind.RESULTS, {"results": [["t1", "ok", None]]}, [b"r"]))
    core.turn()
    results = [o for o in wire.take() if o.kind == Kind.RESULTS]
    assert results == [Outgoing(b"app", Kind.RESULTS, {"results": [["t1", True, None]]}, [b"r"])]


def test_an_ill_formed_message_is_counted_and_dropped():
    core = make_core(Wire(), Clock())
    # Well typed (the codec refuses any other), but not what an application's RESIZE must say.
    core.handle(b"app", message(Kind.RESIZE, {"workers": 1}))  # no slave_id
    assert core.rejected["bad-fields"] == 1
    assert core.status()["slaves"] == []


def test_a_task_cancelled_by_another_application_fails_for_its_owner():
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    for app in (b"owner", b"other"):
        core.handle(app, message(Kind.HELLO, {"client_id": app.decode()}))
    core.handle(b"owner", message(Kind.SUBMIT, {"tasks": [task_meta("t1")]}, [b"x"]))
    core.handle(b"other", message(Kind.CANCEL, {"tasks": ["t1"]}))
    core.turn()
    (results,) = [o for o in wire.take() if o.kind == Kind.RESULTS]
    assert results.identity == b"owner" and results.header == {"results": [["t1", False, None]]}
    assert b"cancelled by application other" in results.payloads[0]


def test_with_a_journal_an_accepted_task_outlives_the_core(tmp_path):
    path = tmp_path / "journal.sqlite3"
    core = make_core(Wire(), Clock(), journal=Journal(path))
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app"}))
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("t1")]}, [b"x"]))
    core.turn()
    core.close()
    core.journal.close()

    wire = Wire()
    again = make_core(wire, Clock(), journal=Journal(path))
    again.restore()
    assert set(again.scheduler.tasks) == {"t1"}
    again.handle(b"s1", message(Kind.REGISTER, {"node_id": "s1", "workers": 1}))
    again.handle(b"s1", message(Kind.HEARTBEAT, {}))
    again.turn()
    (tasks,) = [o for o in wire.take() if o.kind == Kind.TASKS]
    assert tasks.payloads == [b"x"]
    again.journal.close()


# -- tasks that take other tasks' results (Futures as arguments) -------------------------------


def taking(task_id: str, *inputs: str) -> list:
    """The metadata of a task whose arguments held the Futures of ``inputs``."""
    return [task_id, None, 0, "opaque", 0, None, list(inputs)]


def sent(wire: Wire, kind: str) -> list[Outgoing]:
    return [out for out in wire.take() if out.kind == kind]


def result(core: MasterCore, task_id: str, status: str = "ok") -> None:
    outcome = result_of(task_id) if status == "ok" else failure(ValueError(task_id))
    core.handle(b"slave", message(Kind.RESULTS, {"results": [[task_id, status, None]]}, [outcome]))
    core.turn()


def test_a_task_taking_anothers_result_waits_for_it_then_goes_with_it():
    core, wire = connected_core(workers=2)
    metas, payloads = [task_meta("a"), taking("b", "a")], [payload("a"), payload("b")]
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": metas}, payloads))
    core.turn()
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.header == {"tasks": [["a", None, None, False]]}  # b waits
    assert core.status()["tasks"] == {"queued": 0, "assigned": 1}
    assert core.status()["master"]["kept"]["waiting_tasks"] == 1

    result(core, "a")
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.header == {"tasks": [["b", None, ["a"], False]], "inputs": ["a"]}
    assert tasks.payloads == [payload("b"), result_of("a")]  # routed as it came in
    assert core.dependencies.held == {"a": result_of("a")}

    result(core, "b")
    # Nothing is kept once no task takes it: the master follows live work.
    assert not core.dependencies.held and not core.dependencies.dependents
    assert core.status()["master"]["kept"]["input_results"] == 0


def test_an_input_done_before_its_taker_came_goes_with_it_at_once():
    core, wire = connected_core(workers=2)
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("a")]}, [payload("a")]))
    core.turn()
    result(core, "a")  # delivered, not yet confirmed: the application holds its confirmation
    wire.take()
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [taking("b", "a")]}, [payload("b")]))
    core.turn()
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.payloads == [payload("b"), result_of("a")]


def test_a_failed_input_fails_what_takes_it_and_what_takes_that():
    core, wire = connected_core(workers=2)
    metas = [task_meta("a"), taking("b", "a"), taking("c", "b"), task_meta("d")]
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": metas}, [payload(t) for t in "abcd"]))
    core.turn()
    wire.take()
    result(core, "a", Status.ERROR)
    (delivery,) = sent(wire, Kind.RESULTS)
    names = [r[0] for r in delivery.header["results"]]
    outcomes = dict(zip(names, delivery.payloads, strict=True))
    assert set(outcomes) == {"a", "b", "c"}
    for taker, dep in (("b", "a"), ("c", "b")):
        _, error = load_outcome(False, outcomes[taker])
        assert isinstance(error, DependencyError) and error.dependency == dep
        assert "did not run" in str(error)
    assert not core.dependencies.waiting and not core.dependencies.held


def test_a_cancelled_input_fails_what_waits_for_it_and_a_cancelled_taker_stops_waiting():
    core, wire = connected_core(workers=2)
    metas = [task_meta("a"), taking("b", "a"), taking("c", "a")]
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": metas}, [payload(t) for t in "abc"]))
    core.turn()
    core.handle(b"app", message(Kind.CANCEL, {"tasks": ["c"]}))
    assert set(core.dependencies.waiting) == {"b"}
    core.handle(b"app", message(Kind.CANCEL, {"tasks": ["a"]}))
    core.turn()
    (delivery,) = sent(wire, Kind.RESULTS)
    assert [r[0] for r in delivery.header["results"]] == ["b"]
    _, error = load_outcome(False, delivery.payloads[0])
    assert isinstance(error, DependencyError) and "was cancelled" in str(error)
    assert not core.dependencies.waiting and not core.dependencies.dependents


def test_an_input_the_master_does_not_know_fails_its_taker_saying_why():
    core, wire = connected_core(workers=2)
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [taking("b", "ghost")]}, [payload("b")]))
    core.turn()
    (delivery,) = sent(wire, Kind.RESULTS)
    _, error = load_outcome(False, delivery.payloads[0])
    assert isinstance(error, DependencyError) and "not known to the master" in str(error)
    assert not core.dependencies.held and not core.dependencies.dependents


def test_an_input_is_sent_once_per_message_however_many_tasks_take_it():
    core, wire = connected_core(workers=2)
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [task_meta("a")]}, [payload("a")]))
    core.turn()
    result(core, "a")
    wire.take()
    metas = [taking("b", "a"), taking("c", "a")]
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": metas}, [payload("b"), payload("c")]))
    core.turn()
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.header["inputs"] == ["a"]
    assert tasks.payloads == [payload("b"), payload("c"), result_of("a")]


def test_scattered_data_is_kept_for_its_takers_until_forgotten():
    core, wire = connected_core(workers=2)
    core.handle(b"app", message(Kind.SCATTER, {"data_id": "d", "rid": 1}, [b"value"]))
    (ack,) = sent(wire, Kind.ACK)
    assert ack.header["rid"] == 1
    core.handle(b"app", message(Kind.SUBMIT, {"tasks": [taking("t", "d")]}, [payload("t")]))
    core.turn()
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.header["inputs"] == ["d"] and tasks.payloads == [payload("t"), b"value"]
    result(core, "t")
    assert len(core.dependencies.held["d"]) == len(b"value")  # still referred to: kept
    core.handle(b"app", message(Kind.SCATTER, {"data_id": "d", "rid": 2}, [b"again"]))
    (reject,) = sent(wire, Kind.REJECT)
    assert "already in use" in reject.header["reason"]

    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["d"]}))
    assert not core.dependencies.held and not core.dependencies.scattered


def test_scattered_data_goes_with_its_application():
    core, _ = connected_core(workers=2)
    core.handle(b"app", message(Kind.SCATTER, {"data_id": "d"}, [b"value"]))
    core.handle(b"app", message(Kind.BYE, {}))
    assert not core.dependencies.held and not core.dependencies.scattered


# -- scheduler options: the scheduler's own, passed on, never read by the core -----------------


def test_a_scheduler_option_the_scheduler_does_not_name_is_refused_with_who_takes_it():
    with pytest.raises(ConfigurationError, match="--scheduler dask or --scheduler ray"):
        load_scheduler("push", "load", 2, {"engine": "tcp://127.0.0.1:8786"})
    with pytest.raises(ConfigurationError, match="no installed scheduler takes it"):
        load_scheduler("pull", "load", 2, {"no-such-option": "1"})
    assert "engine" in load_scheduler("dask", "load", 2, {"engine": "tcp://x:1"}).options


def test_engine_is_the_engine_schedulers_option_in_the_settings():
    config = MasterConfig(scheduler="dask", engine="tcp://x:1", scheduler_option=("a=b=c",))
    assert config.scheduler_options == {"a": "b=c", "engine": "tcp://x:1"}
    with pytest.raises(ConfigurationError, match="is not KEY=VALUE"):
        _ = MasterConfig(scheduler_option=("no-equals",)).scheduler_options


# -- results kept on slaves (the data plane) ---------------------------------------------------


def kept_core() -> tuple[MasterCore, Wire]:
    """A core with an application ``app`` and two slaves of one worker, each with a data
    socket: ``s1`` (identity b"slave") and ``s2`` (b"slave2")."""
    clock, wire = Clock(), Wire()
    core = make_core(wire, clock)
    core.handle(b"app", message(Kind.HELLO, {"client_id": "app"}))
    for identity, name in ((b"slave", "s1"), (b"slave2", "s2")):
        register = {"node_id": name, "workers": 1, "data": f"tcp://{name}:1"}
        core.handle(identity, message(Kind.REGISTER, register))
        core.handle(identity, message(Kind.HEARTBEAT, {}))
    wire.take()
    return core, wire


def keeping(task_id: str, *inputs: str) -> list:
    """The metadata of a task whose big result may stay on its slave."""
    return [task_id, None, 0, "opaque", 0, None, list(inputs) or None, True]


def kept_result(core: MasterCore, task_id: str, size: int = 1 << 20) -> None:
    slave = core.scheduler.tasks[task_id].slave_id
    identity = b"slave" if slave == "s1" else b"slave2"
    header = {"results": [[task_id, "ok", None, size]]}
    core.handle(identity, message(Kind.RESULTS, header, [b""]))
    core.turn()


def submit(core: MasterCore, *metas: list) -> None:
    core.handle(
        b"app", message(Kind.SUBMIT, {"tasks": list(metas)}, [payload(m[0]) for m in metas])
    )
    core.turn()


def test_a_kept_result_is_delivered_as_its_place_and_dropped_once_let_go():
    core, wire = kept_core()
    submit(core, keeping("a"))
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.header["tasks"][0][3] is True  # the slave may keep its result
    slave = core.scheduler.tasks["a"].slave_id
    kept_result(core, "a")
    (results,) = sent(wire, Kind.RESULTS)
    assert results.header["results"] == [["a", True, f"tcp://{slave}:1"]]
    assert results.payloads == [b""]  # its bytes never came here
    assert core.status()["master"]["kept"]["kept_results"] == 1
    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["a"]}))
    (drop,) = sent(wire, Kind.DROP)
    assert drop.header == {"data_ids": ["a"]}
    assert core.status()["master"]["kept"]["kept_results"] == 0


def test_a_task_taking_a_kept_result_is_sent_where_it_is_with_its_place():
    core, wire = kept_core()
    submit(core, keeping("a"), keeping("b", "a"))
    wire.take()
    holder = core.scheduler.tasks["a"].slave_id
    kept_result(core, "a")
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.identity == (b"slave" if holder == "s1" else b"slave2")  # near its input
    assert tasks.header["inputs"] == ["a"] and tasks.header["at"] == [f"tcp://{holder}:1"]
    assert tasks.payloads == [payload("b"), b""]
    kept_result(core, "b")
    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["a"]}))
    # a's bytes go (no Future, no taker left), but its lineage stays while b's result may
    # have to be made again from it.
    (drop,) = sent(wire, Kind.DROP)
    assert drop.header == {"data_ids": ["a"]}
    assert set(core.dependencies.kept.entries) == {"a", "b"}
    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["b"]}))
    assert not core.dependencies.kept.entries and not core.dependencies.held


def test_kept_results_lost_with_their_slave_are_made_again_inputs_first():
    core, wire = kept_core()
    submit(core, keeping("a"))
    kept_result(core, "a")
    holder = core.scheduler.slaves[core.dependencies.kept.entries["a"].ref.slave_id]
    submit(core, keeping("b", "a"))
    assert core.scheduler.tasks["b"].slave_id == holder.slave_id  # where its input is
    kept_result(core, "b")
    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["a"]}))  # a: lineage only
    wire.take()
    submit(core, taking("c", "b"))
    wire.take()
    core.slaves.lose(holder, "test")  # with b's bytes (and c, which it ran)
    core.turn()
    # b must be made again, and a before it; c waits for b.
    other = next(iter(core.scheduler.slaves.values()))
    (tasks,) = sent(wire, Kind.TASKS)
    assert [t[0] for t in tasks.header["tasks"]] == ["a"]
    assert core.dependencies.waiting.keys() == {"b", "c"}
    kept_result(core, "a")
    (tasks,) = sent(wire, Kind.TASKS)
    assert [t[0] for t in tasks.header["tasks"]] == ["b"]
    assert tasks.header["at"] == [f"tcp://{other.slave_id}:1"]
    kept_result(core, "b")
    out = wire.take()
    (tasks,) = [o for o in out if o.kind == Kind.TASKS]
    assert [t[0] for t in tasks.header["tasks"]] == ["c"]
    # The application hears where b is now (its Future fetches it from there); not of a,
    # which it let go.
    (results,) = [o for o in out if o.kind == Kind.RESULTS]
    assert results.header["results"] == [["b", True, f"tcp://{other.slave_id}:1"]]
    result(core, "c")


def test_a_task_whose_input_could_not_be_fetched_waits_for_it_made_again():
    core, wire = kept_core()
    submit(core, keeping("a"))
    kept_result(core, "a")
    holder = core.dependencies.kept.entries["a"].ref.slave_id
    other = b"slave2" if holder == "s1" else b"slave"
    full = core.scheduler.slaves[holder]
    full.in_flight.update({"busy", "busier"})  # the holder has no room: b goes elsewhere
    core.scheduler.refresh(full)
    wire.take()
    submit(core, taking("b", "a"))
    (tasks,) = sent(wire, Kind.TASKS)
    assert tasks.identity == other
    detail = f"a the slave at tcp://{holder}:1 did not answer"
    core.handle(other, message(Kind.RESULTS, {"results": [["b", "lost-input", detail]]}, [b""]))
    core.turn()
    out = wire.take()
    (drop,) = [o for o in out if o.kind == Kind.DROP]
    assert drop.header == {"data_ids": ["a"]}
    (tasks,) = [o for o in out if o.kind == Kind.TASKS]
    assert [t[0] for t in tasks.header["tasks"]] == ["a"]  # made again; b waits for it
    assert "b" in core.dependencies.waiting
    assert not [o for o in out if o.kind == Kind.RESULTS]  # nothing failed
    kept_result(core, "a")
    (tasks,) = sent(wire, Kind.TASKS)
    assert [t[0] for t in tasks.header["tasks"]] == ["b"]


def test_scattered_data_crosses_to_each_slave_once_and_its_copies_go_with_it():
    core, wire = kept_core()
    core.handle(b"app", message(Kind.SCATTER, {"data_id": "d", "rid": 1}, [b"value"]))
    wire.take()
    places, reused = {}, 0
    for n in range(4):  # one at a time: each its own TASKS message
        submit(core, taking(f"t{n}", "d"))
        (tasks,) = sent(wire, Kind.TASKS)
        slave = core.scheduler.tasks[f"t{n}"].slave_id
        if slave not in places:  # the first there carries it, to keep
            assert tasks.header["at"] == ["+"] and tasks.payloads[1] == b"value"
            places[slave] = tasks.identity
        else:  # later ones name the slave's own copy
            assert tasks.header["at"] == [f"tcp://{slave}:1"] and tasks.payloads[1] == b""
            reused += 1
        result(core, f"t{n}")
    assert reused == 4 - len(places) >= 2
    core.handle(b"app", message(Kind.FORGET, {"data_ids": ["d"]}))
    drops = sent(wire, Kind.DROP)
    assert {d.identity for d in drops} == set(places.values())
    assert all(d.header == {"data_ids": ["d"]} for d in drops)
    assert not core.dependencies.held
