"""Every message kind as a typed record: its fields, their types, and what each one means.

A message's header (the msgpack map after the signature, see :mod:`taskswarm.protocol.codec`)
is one of the records below. The codec decodes it in one place, right after the signature
check, with one decoder for all kinds: the header's ``k`` names the record, and a header whose
fields do not fit that record (a required field missing, a field of the wrong type or out of
its range) is refused as :class:`~taskswarm.errors.BadFields`, counted and dropped like any
other :class:`~taskswarm.errors.WireError`. Nodes then read fields by name (``msg.body.credit``)
and never check a peer's types again. Sending works the other way round: a node builds the
record and the codec stamps the envelope on it and encodes it.

Why msgspec (``msgspec.Struct``): its structs decode straight from msgpack into typed objects
and validate while they decode, in C, in one pass, as fast as ``msgpack.unpackb`` makes plain
lists and dicts (a batch of 10,000 tasks' metadata takes about a millisecond either way), so
typed headers cost the master's hot path (SUBMIT and RESULTS batches) nothing; a tagged union
picks the record for the header's ``k`` in that same pass; and the wire stays plain msgpack
(a record is a map, a small per-item record like :class:`TaskMeta` an array), so nothing about
the protocol changes. dataclasses plus hand checks would cost Python code per field and item;
pydantic validates Python objects after a separate msgpack decode, a second pass over each batch.

Policies, the same for every kind:

* **Unknown fields are ignored**, so a newer peer may add an optional field without breaking an
  older one (a field whose absence would mislead needs a new protocol version instead); so are
  extra trailing items of an array-like record (a :class:`TaskMeta` of seven).
* **Absent optional fields** take the default the record declares. ``None`` means "not said",
  where that differs from any value (a HEARTBEAT without ``want`` leaves the master's figure as
  it was).
* **Payload counts**: a record that carries one payload per item (SUBMIT, TASKS, RESULTS) or one
  payload (SYSTEM, SHIP, SCATTER, SYSTEM-DONE with an outcome) is refused when the count
  differs.
* **Task ranges**: a task's numbers (:meth:`TaskMeta.check`) are checked where the master takes
  the batch, not while decoding, so that a batch with one out of range is refused *with a reply*
  (REJECT, naming it) and its submitter's Futures fail instead of waiting.

One kind, RESULTS, has a record for each direction: a slave's outcomes (:class:`Results`, a
status each) and the master's to an application (:class:`Delivery`, ok or not). A node never
receives both, so each decoder knows one: :data:`HEADER` (master and slaves) and
:data:`APPLICATION_HEADER`.

Handlers read fields by name (``msg.read(Results).results[0].status``), typed as declared here.

One module of over 400 lines on purpose: it is the catalogue of the protocol, one short record
per kind, and a reader looking for what a message carries should find every kind in one place.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, ClassVar, Union

import msgspec

__all__ = [
    "PROTOCOL_VERSION",
    "Kind",
    "Header",
    "TaskMeta",
    "Assignment",
    "Outcome",
    "Delivered",
    "Register",
    "Results",
    "Delivery",
    "Hello",
    "Submit",
    "System",
    "SystemQuery",
    "TasksQuery",
    "Status",
    "Resize",
    "Bye",
    "Cancel",
    "ResultsAck",
    "Drain",
    "Released",
    "Welcome",
    "Reregister",
    "Tasks",
    "Ack",
    "Reject",
    "Running",
    "SystemProgress",
    "SystemDone",
    "StatusReply",
    "Shutdown",
    "Steal",
    "Ship",
    "Scatter",
    "Forget",
    "Drop",
    "Fetch",
    "Data",
    "Heartbeat",
    "RECORDS",
    "APPLICATION_RECORDS",
    "HEADER",
    "APPLICATION_HEADER",
    "parse_resources",
    "UNKNOWN_SYSTEM",
    "AMBIGUOUS_SYSTEM",
]

PROTOCOL_VERSION = 1

#: A count: a whole number from 0.
Count = Annotated[int, msgspec.Meta(ge=0)]
#: Seconds or a rate: a number from 0 (NaN is refused).
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
TaskIds = list[str]


class Kind:
    """Message kinds: the ``k`` of a header, and the record (below) each one decodes to."""

    # slave -> master
    REGISTER = "register"
    RESULTS = "results"  # also master -> application
    # application -> master
    HELLO = "hello"
    SUBMIT = "submit"
    SYSTEM = "system"
    SYSTEM_QUERY = "system-query"
    TASKS_QUERY = "tasks-query"
    STATUS = "status"
    RESIZE = "resize"  # also master -> slave
    BYE = "bye"  # any node that leaves on purpose
    CANCEL = "cancel"  # also master -> slave
    RESULTS_ACK = "results-ack"
    DRAIN = "drain"
    RELEASED = "released"
    # master -> nodes
    WELCOME = "welcome"
    REREGISTER = "reregister"
    TASKS = "tasks"
    ACK = "ack"
    REJECT = "reject"
    RUNNING = "running"
    SYSTEM_PROGRESS = "system-progress"
    SYSTEM_DONE = "system-done"
    STATUS_REPLY = "status-reply"
    SHUTDOWN = "shutdown"
    STEAL = "steal"
    # application -> master -> slaves
    SHIP = "ship"
    SCATTER = "scatter"  # application -> master
    FORGET = "forget"  # application -> master
    DROP = "drop"  # master -> slave
    # on a slave's data socket: another slave or an application -> the slave, and back
    FETCH = "fetch"
    DATA = "data"
    # both ways
    HEARTBEAT = "heartbeat"

    #: Kinds that open a conversation, sent before the peer's session is known.
    UNADDRESSED = frozenset({"hello", "register", "fetch"})

    ALL = frozenset(v for k, v in vars().items() if k.isupper() and isinstance(v, str))


# -- what one item of a batch says -------------------------------------------------------------


class _Item(msgspec.Struct, array_like=True, gc=False):
    """A record that travels as a msgpack array: one item of a batch."""


class TaskMeta(_Item):
    """What the master and slaves know of a task without unpickling it (one per SUBMIT payload,
    and what a task system's pushed tasks carry on the master). Built by
    :func:`taskswarm.task.task_meta`; travels as ``[task_id, timeout, max_retries, name,
    priority, resources, deps, keep]``, and a 4-item array reads with the last three at their
    defaults."""

    task_id: str
    #: Seconds the task may run (``Task.timeout``); None: no limit. Checked by :meth:`check`.
    timeout: float | None = None
    #: Times it may run again after raising (``Task.max_retries``), 0 to 2**63-1.
    max_retries: int = 0
    #: ``Task.name``, shown in status and errors.
    name: str = ""
    #: Higher runs first (``Task.priority``), a 64-bit signed number.
    priority: int = 0
    #: What it needs of a slave's declared resources (``Task.resources``), names to amounts.
    resources: dict[str, float] | None = None
    #: The tasks whose results it takes as arguments (their Futures were among its arguments,
    #: pending when it was sent): the master holds it back until each has its outcome.
    deps: TaskIds | None = None
    #: Its result may stay on the slave that makes it, fetched from there when someone needs
    #: it (its application's ``Future.result()``, a task that takes it): the application
    #: does not need it at once (``taskswarm.client.remote``).
    keep: bool = False

    def check(self) -> None:
        """Raise ValueError naming the first number out of range: the journal (SQLite) holds 64
        bits, and a deadline must be a real time."""
        task_id, timeout = self.task_id, self.timeout
        if timeout is not None and not 0 < timeout < math.inf:
            raise ValueError(f"task {task_id}: timeout {timeout!r} is not a positive number")
        if not 0 <= self.max_retries < 2**63:
            raise ValueError(f"task {task_id}: max_retries {self.max_retries} is out of range")
        if not -(2**63) <= self.priority < 2**63:
            raise ValueError(f"task {task_id}: priority {self.priority} does not fit in 64 bits")
        if self.resources is not None:
            parse_resources(self.resources)


class Assignment(_Item):
    """One task of a TASKS message (master -> slave): ``[task_id, timeout, deps, keep]``."""

    task_id: str
    #: Seconds the task may run; None: no limit.
    timeout: float | None = None
    #: The tasks whose results it takes (``TaskMeta.deps``): each is among the message's
    #: ``inputs``, its pickled result among the payloads after the tasks'.
    deps: TaskIds | None = None
    #: Its result, if big (``taskswarm.slave.store.KEEP_BYTES`` or more), stays on this slave:
    #: the RESULTS item says how big (``Outcome.kept``) and carries an empty payload.
    keep: bool = False


class Outcome(_Item):
    """One outcome of a slave's RESULTS (slave -> master): ``[task_id, status, detail, kept,
    worker, began, ended]``; an older slave's shorter array reads with the rest at None."""

    task_id: str
    #: How the run ended: a :class:`taskswarm.task.Status` (``ok``, ``error``, ``retry``,
    #: ``crash``, ``cancelled``); the master treats any other as a failure.
    status: str
    #: How the worker died (``crash``), or the failure's text; None when OK or not said.
    detail: str | None = None
    #: The result stayed on this slave (``Assignment.keep``): its size in bytes; the payload
    #: is empty. Fetched from the slave's data socket (``Register.data``) by whoever needs it.
    kept: Count | None = None
    #: The worker that ran it (its process id), for the dashboard's task stream; None: not
    #: said (an older slave, a task manager without worker processes, a task never run).
    worker: Count | None = None
    #: When it began and ended, Unix time on the slave's clock, as its worker saw it.
    began: float | None = None
    ended: float | None = None


class Delivered(_Item):
    """One outcome of the master's RESULTS to an application: ``[task_id, ok]``."""

    task_id: str
    #: True: the payload is the pickled result; False: the pickled error, or an empty payload
    #: when the task was taken back unrun (its Future ends cancelled).
    ok: bool
    #: The result stayed on a slave: the data socket to fetch it from (the payload is empty).
    #: Sent again, with the new place, when the task had to run again (its slave was lost).
    at: str | None = None


# -- headers ---------------------------------------------------------------------------------


class Header(msgspec.Struct, kw_only=True, tag_field="k", omit_defaults=True):
    """The envelope every header carries, filled in by the codec when it encodes.

    Decoded, ``v``, ``sid`` and ``seq`` are always set (the codec refuses a header without
    them); ``to`` is None only for the opening kinds (``Kind.UNADDRESSED``), which carry ``ts``.
    """

    #: Protocol version of the sender (:data:`PROTOCOL_VERSION`).
    v: int | None = None
    #: The sender's session (random per node process and connection).
    sid: str | None = None
    #: Sequence number, strictly increasing over everything that session sends.
    seq: int | None = None
    #: The session this message is for; None only to open a conversation.
    to: str | None = None
    #: Send time (``time.time()``), on unaddressed messages: valid within the replay window.
    ts: float | None = None
    #: Payload frame layout: one letter per frame, ``p`` packed, ``r`` raw (see the codec).
    pf: str = ""
    #: The BLAKE3 digest of each payload, in order, 32 bytes each: what binds the payloads to
    #: this (signed) header; checked by whoever unpickles a payload (see the codec).
    dg: bytes = b""

    #: The list field with one item per payload, when the kind carries such a batch.
    batch: ClassVar[str | None] = None

    @property
    def kind(self) -> str:
        """The message kind this record is (its ``k`` on the wire)."""
        return type(self).__struct_config__.tag  # type: ignore[return-value]

    def expected_payloads(self) -> int | None:
        """How many payloads this header says follow it: one per item of its batch, none for
        a kind that carries no payloads (None: any number, not checked; no kind says so now).
        A payload where its kind carries none is refused at the door with the header, so an
        altered payload can only ever reach a node where it is checked before it is read."""
        return len(getattr(self, self.batch)) if self.batch else 0


# slave -> master


class Register(Header, tag=Kind.REGISTER):
    """A slave introduces itself; repeated each heartbeat until the master's WELCOME."""

    #: The slave's id (host, pid and a random suffix), unique in the cluster.
    node_id: str
    #: Its host name, shown in status ("?": not said).
    host: str = "?"
    #: Its process id, shown in status (0: not said).
    pid: Count = 0
    #: Worker processes it runs.
    workers: Count = 0
    #: What it offers tasks that declare needs (``--resources``), names to amounts; checked
    #: by the master, which takes a slave whose declaration is wrong as offering none.
    resources: dict[str, Any] | None = None
    #: Seconds between its heartbeats, so the master can tell a slow slave from a lost one
    #: (None, or not a positive number: the master's own).
    heartbeat: float | None = None
    #: Tasks it may be sent now (pull scheduling), may be negative only through ``held``.
    credit: int = 0
    #: Tasks it wants to hold to keep its workers busy (push scheduling).
    want: Count = 0
    #: Its running average of task durations, seconds.
    pace: NonNegative = 0.0
    #: Tasks it still holds from before (a master that restarted keeps them there).
    held: TaskIds = msgspec.field(default_factory=list)
    #: Its data socket (``tcp://IP:PORT``): where the results it keeps are fetched (FETCH).
    data: str | None = None


class Results(Header, tag=Kind.RESULTS):
    """A slave's outcomes, one payload each (the pickled result or error; empty for a crash),
    and how much more it can take. The master's RESULTS to an application, the same kind the
    other way, is :class:`Delivery`."""

    results: list[Outcome]
    #: Tasks a worker began since the last message: their Futures are running.
    started: TaskIds | None = None
    #: Tasks it may be sent beyond what it was (pull scheduling), added to what it had.
    credit: int = 0
    #: Tasks it wants to hold now (push scheduling); None: unchanged.
    want: Count | None = None
    #: Its running average of task durations, seconds; None: unchanged.
    pace: NonNegative | None = None

    batch = "results"


class Delivery(Header, tag=Kind.RESULTS):
    """The master's RESULTS to an application: plain tasks' outcomes, one payload each, kept
    by the master until the application confirms them (RESULTS_ACK). Only an application
    decodes this form (:data:`APPLICATION_HEADER`); the same kind from a slave is
    :class:`Results`."""

    results: list[Delivered]
    #: SUBMITs (their ``rid``) the master accepted since it last said so, to an application
    #: that takes its acknowledgements in batches (``Hello.batched_acks``); None: none.
    acked: list[int] | None = None

    batch = "results"


class Heartbeat(Header, tag=Kind.HEARTBEAT):
    """Both ways: the master's and an application's carry nothing; a slave's says how it is,
    each field only when it has something to say (absent: unchanged)."""

    #: Worker processes it runs now; None: unchanged.
    workers: Count | None = None
    #: Tasks it may be sent beyond what it was (pull scheduling), added to what it had.
    credit: int = 0
    #: Tasks it wants to hold now (push scheduling); None: unchanged.
    want: Count | None = None
    #: Its running average of task durations, seconds; None: unchanged.
    pace: NonNegative | None = None
    #: Messages this slave refused so far (bad signature, replays...), for the status page.
    rejected: Count | None = None
    #: Its own measures (:meth:`taskswarm.stats.Stats.snapshot`).
    stats: list[dict[str, Any]] | None = None
    #: Every task it holds now: the master requeues those it sent and the slave never got.
    held: TaskIds | None = None
    #: Bytes of results it keeps for others to fetch (the data plane); None: not said.
    kept: Count | None = None
    #: CPU its process tree (the slave and its workers) used since its last heartbeat, in
    #: percent of one core (over 100 on several); None: not measured.
    cpu: NonNegative | None = None
    #: Resident memory of that process tree, bytes; None: not measured.
    rss: Count | None = None


class Released(Header, tag=Kind.RELEASED):
    """Unstarted tasks a slave gives back after a STEAL, for idle slaves elsewhere."""

    #: The tasks it gave back, none of them started.
    tasks: TaskIds = msgspec.field(default_factory=list)
    #: Tasks it may be sent beyond what it was (pull scheduling), added to what it had.
    credit: int = 0
    #: Tasks it wants to hold now (push scheduling); None: unchanged.
    want: Count | None = None
    #: Its running average of task durations, seconds; None: unchanged.
    pace: NonNegative | None = None


class Drain(Header, tag=Kind.DRAIN):
    """A slave takes no new tasks (it is stopping)."""


class Bye(Header, tag=Kind.BYE):
    """A node leaves on purpose (a slave, an application, or the master stopping)."""

    #: Tasks a leaving slave handed back unstarted.
    handed_back: Count | None = None


# application -> master


class Hello(Header, tag=Kind.HELLO):
    """An application connects (or reconnects: the master resends what it did not confirm)."""

    #: The application's id, the same across its reconnects.
    client_id: str
    #: Its host name, shown in status ("": not said).
    host: str = ""
    #: Its process id, shown in status (None: not said).
    pid: Count | None = None
    #: It takes the acknowledgements of its SUBMITs in batches, a few milliseconds late: with
    #: its results (``Delivery.acked``) or in an ACK naming several (``Ack.rids``). False (an
    #: older application): an ACK for each SUBMIT, at once.
    batched_acks: bool = False


class Submit(Header, tag=Kind.SUBMIT):
    """Plain tasks, one pickled task per payload; answered by ACK or REJECT with its ``rid``."""

    #: Each task's metadata, in the order of the payloads.
    tasks: list[TaskMeta]
    #: Request id, echoed by the answer (the application keeps the batch until then).
    rid: int | None = None

    batch = "tasks"


class System(Header, tag=Kind.SYSTEM):
    """A task system to run on the master, pickled in the one payload; ACK or REJECT."""

    #: ``TaskSystem.system_id``: a system already known under it is refused.
    system_id: str
    #: Request id, echoed by the answer.
    rid: int | None = None
    #: ``TaskSystem.name``, shown in status, the dashboard and the master's log; one that is
    #: not a name (``taskswarm.system.check_name``) is refused. None: an older application.
    name: str | None = None

    def expected_payloads(self) -> int | None:
        return 1


class SystemQuery(Header, tag=Kind.SYSTEM_QUERY):
    """Asks for a task system's outcome: SYSTEM-DONE now, or when it finishes. With ``rid``,
    only looks it up instead: ``system_id`` may then be a unique prefix of its id, and the
    answer is ACK naming the system (``Ack.system_id``, ``Ack.name``) or REJECT saying why not
    (no such system, or several: ``Reject.error`` tells which), with no SYSTEM-DONE."""

    system_id: str
    #: Request id: look the system up only, and answer with this id.
    rid: int | None = None


class TasksQuery(Header, tag=Kind.TASKS_QUERY):
    """After a reconnect, the plain tasks an application still waits for; those the master no
    longer holds (it restarted with no state directory, their results expired) come back
    failed."""

    tasks: TaskIds


class Status(Header, tag=Kind.STATUS):
    """Asks for the cluster's status; answered by STATUS-REPLY."""

    #: Request id, echoed by the answer.
    rid: int | None = None


class Resize(Header, tag=Kind.RESIZE):
    """Application -> master: resize slave ``slave_id`` (ACK, or REJECT when there is none);
    master -> slave: resize yourself (no ``slave_id``)."""

    #: Worker processes the slave is to run.
    workers: Count
    #: The slave to resize: required from an application (the master drops one without it).
    slave_id: str | None = None
    #: Request id, echoed by the answer.
    rid: int | None = None


class Cancel(Header, tag=Kind.CANCEL):
    """Application -> master: ``tasks`` (and ``soft``, ``rid``) or ``system_id``;
    master -> slave: ``tasks`` and ``soft``. One from an application naming neither tasks nor a
    system is dropped."""

    #: The tasks to stop.
    tasks: TaskIds | None = None
    #: Drop the tasks not started yet, let a running one finish (Future.cancel() raced with
    #: dispatch); with ``rid``, the master answers with the ACK of what it cancelled.
    soft: bool = False
    #: The task system to stop instead (its tasks are cancelled, its result is an error).
    system_id: str | None = None
    #: Request id: answered with an ACK naming the tasks cancelled.
    rid: int | None = None


class ResultsAck(Header, tag=Kind.RESULTS_ACK):
    """An application has these results (the master, and its journal, may let them go)."""

    #: Plain tasks whose outcome it received.
    tasks: TaskIds
    #: Task systems whose outcome it received.
    systems: TaskIds | None = None


# master -> nodes


class Welcome(Header, tag=Kind.WELCOME):
    """The master's answer to REGISTER or HELLO."""

    #: The id the master knows the node by.
    node_id: str | None = None
    #: Seconds between the master's heartbeats (to slaves), so they can tell when it is lost.
    heartbeat: float | None = None
    #: The master's message size limit (``--max-message-mib``); None: unlimited.
    max_bytes: int | None = None


class Reregister(Header, tag=Kind.REREGISTER):
    """The master does not know the sender (it restarted, or lost it): REGISTER or HELLO."""


class Tasks(Header, tag=Kind.TASKS):
    """Tasks for a slave, one pickled task per payload, then one pickled result per input."""

    tasks: list[Assignment]
    #: The tasks whose results some of these take (``Assignment.deps``), each once: their
    #: pickled results follow the tasks' payloads, in this order.
    inputs: TaskIds | None = None
    #: For each input, in the same order: "" when its payload is its result; "+" when it is,
    #: and the slave is to keep it (scattered data, sent to each slave once); or the data
    #: socket of the slave that keeps it (its payload then is empty): the slave fetches it,
    #: or finds it in its own store when that socket is its own.
    at: list[str] | None = None

    batch = "tasks"

    def expected_payloads(self) -> int | None:
        return len(self.tasks) + len(self.inputs or ())


class Ack(Header, tag=Kind.ACK):
    """The master accepted a request (``push_task_response`` in the seed's words)."""

    #: The request's id.
    rid: int | None = None
    #: How many it took.
    n: Count | None = None
    #: A CANCEL with ``rid``: the tasks cancelled.
    tasks: TaskIds | None = None
    #: Text the master adds (a RESIZE's names the slave).
    reason: str | None = None
    #: SUBMITs accepted, by ``rid``, to an application that takes them in batches
    #: (``Hello.batched_acks``); None: only ``rid``.
    rids: list[int] | None = None
    #: A SYSTEM-QUERY with ``rid``: the full id of the system it named, and its name.
    system_id: str | None = None
    name: str | None = None


#: ``Reject.error`` of a SYSTEM-QUERY's look-up that found no system, or several.
UNKNOWN_SYSTEM = "unknown-system"
AMBIGUOUS_SYSTEM = "ambiguous-system"


class Reject(Header, tag=Kind.REJECT):
    """The master refused a request, and why (``push_task_failed``)."""

    #: The request's id: a SUBMIT's batch fails with ``reason``.
    rid: int | None = None
    #: Why, for people: the exception the application raises says it.
    reason: str | None = None
    n: Count | None = None
    #: What went wrong, for the application to raise the right error: "unknown-system" (a
    #: SYSTEM-QUERY named none: UnknownTaskSystem) or "ambiguous-system" (several:
    #: AmbiguousTaskSystem). None: a TaskswarmError.
    error: str | None = None


class Running(Header, tag=Kind.RUNNING):
    """An application's tasks that a worker began (their Futures are running)."""

    #: The tasks begun since the last RUNNING.
    tasks: TaskIds


class SystemProgress(Header, tag=Kind.SYSTEM_PROGRESS):
    """How far a task system has come."""

    system_id: str
    #: Its tasks finished so far.
    done: Count
    #: Its tasks generated so far.
    total: Count
    #: Of those finished, the ones that failed.
    failed: Count = 0
    #: What the first failed task said, traceback and all (sent once).
    first_failure: str | None = None


class SystemDone(Header, tag=Kind.SYSTEM_DONE):
    """A task system's outcome, pickled ``(result, error)`` in the one payload; or, with
    ``unknown``, no payload: the master holds no such system (``reason`` says why)."""

    system_id: str
    #: Its outcome carries an error (it failed, or was cancelled).
    failed: bool = False
    #: The master holds no such system: no payload.
    unknown: bool = False
    #: With ``unknown``: what became of it, when the master still remembers.
    reason: str | None = None

    def expected_payloads(self) -> int | None:
        return 0 if self.unknown else 1


class StatusReply(Header, tag=Kind.STATUS_REPLY):
    """The cluster's status: what ``taskswarm status`` and the dashboard show."""

    #: The STATUS request's id.
    rid: int | None = None
    status: dict[str, Any] = msgspec.field(default_factory=dict)


class Shutdown(Header, tag=Kind.SHUTDOWN):
    """A slave is to stop (it finishes or hands back its tasks, then says BYE)."""


class Steal(Header, tag=Kind.STEAL):
    """Give back up to ``count`` tasks no worker has started (RELEASED), for idle slaves."""

    count: Count = 0


# application -> master -> slaves


class Scatter(Header, tag=Kind.SCATTER):
    """Data put on the cluster once for many tasks (``app.scatter``): the one payload is the
    pickled value, as a task's result would be. The master keeps it under ``data_id`` until
    the application FORGETs it (or leaves) and sends it to each slave once, with the first
    task there that takes it (``Tasks.at`` ``"+"``: the slave keeps a copy for the tasks after
    it, until DROP); answered ACK, or REJECT with the reason."""

    #: The id tasks name it by (``TaskMeta.deps``), unique as a task id is.
    data_id: str
    #: Request id, echoed by the answer.
    rid: int | None = None

    def expected_payloads(self) -> int | None:
        return 1


class Forget(Header, tag=Kind.FORGET):
    """Scattered data its application no longer refers to: the master lets it go once no task
    that takes it is left."""

    data_ids: TaskIds


class Drop(Header, tag=Kind.DROP):
    """Results a slave keeps that no one refers to any more (no Future, no task that takes
    them, nothing that may have to be made again from them): the slave lets them go."""

    data_ids: TaskIds


class Fetch(Header, tag=Kind.FETCH):
    """To a slave's data socket: send these kept results (DATA). Opens a conversation (no
    ``to``), so it is good only within the replay window; its MAC says the asker holds the
    cluster key, as every message's does."""

    data_ids: TaskIds


class Data(Header, tag=Kind.DATA):
    """A data socket's answer to FETCH: the results it keeps, one pickled result per payload,
    and the ids it does not keep (dropped, or never made here)."""

    data_ids: TaskIds
    missing: TaskIds = msgspec.field(default_factory=list)

    batch = "data_ids"


class Ship(Header, tag=Kind.SHIP):
    """Code of an application's own (``app.upload_file``): one zip archive in the one payload,
    bound to this signed header by its digest (:mod:`taskswarm.protocol.archives` says what it
    holds). From an application the master keeps it under ``name`` (replacing one of that
    name) and answers ACK, or REJECT with the reason (over its limit); it sends it on, the same
    payload unopened, to every slave, and to each slave that registers later right after its
    WELCOME. A slave checks the digest, unpacks it and puts it on its workers' ``sys.path``."""

    #: What it is kept and replaced under: the shipped file's name (``helpers.py``, ``mypkg``).
    name: str
    #: Request id, echoed by the master's answer (none to a slave).
    rid: int | None = None

    def expected_payloads(self) -> int | None:
        return 1


#: Every record, by its kind.
RECORDS: dict[str, type[Header]] = {
    cls.__struct_config__.tag: cls  # type: ignore[misc]
    for cls in (
        Register, Results, Heartbeat, Released, Drain, Bye, Hello, Submit, System, SystemQuery,
        TasksQuery, Status, Resize, Cancel, ResultsAck, Welcome, Reregister, Tasks, Ack, Reject,
        Running, SystemProgress, SystemDone, StatusReply, Shutdown, Steal,
        Ship, Scatter, Forget, Drop, Fetch, Data,
    )
}  # fmt: skip
assert set(RECORDS) == Kind.ALL, "one record per kind"

#: What an application receives, by kind: the master's RESULTS is a :class:`Delivery`.
APPLICATION_RECORDS: dict[str, type[Header]] = {**RECORDS, Kind.RESULTS: Delivery}


def _decoder(records: dict[str, type[Header]]) -> msgspec.msgpack.Decoder[Header]:
    return msgspec.msgpack.Decoder(
        Union[tuple(records.values())]  # noqa: UP007 (a union of classes known only here)
    )


#: The one decoder of headers the master and slaves receive: picks the record by ``k`` and
#: checks every field as it reads.
HEADER = _decoder(RECORDS)
#: The same for an application, the one node that receives the master's RESULTS.
APPLICATION_HEADER = _decoder(APPLICATION_RECORDS)


def parse_resources(value: object) -> dict[str, float] | None:
    """``{"gpu": 1}`` as a task needs or a slave offers it: names to amounts >= 0.

    Raises ValueError with what is wrong, so a bad declaration is refused where it is made.
    """
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"resources must be a dict of names to amounts, not {value!r}")
    parsed = {}
    for name, amount in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"resource names must be non-empty strings, not {name!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or not amount >= 0:
            raise ValueError(f"resource {name!r}: the amount must be a number >= 0, not {amount!r}")
        parsed[name] = float(amount)
    return parsed or None
