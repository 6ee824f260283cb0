"""The slave's outbox: how many tasks it asks the master to hold, and when its outcomes go back.

The slave's loop feeds it (tasks that arrived, tasks given back) and asks it, each turn, to send
what is worth sending; every message that tells the master how much more to send carries its
window (``want``, ``credit``, ``pace``).

While its tasks are short, a slave asks to hold enough of them for its messages to be worth their
cost (``MESSAGE_TASKS``, up to ``QUEUE_SECONDS`` of its workers' work), and gathers their
outcomes into batches of a ``BATCH_SHARE``-th of that before it sends them (``_worth_sending``);
it sends at once whenever its workers would otherwise run short of tasks, so a lone task's
result never waits, and holds none long (``RESULTS_HOLD``, never over ``SLOW_TASK``) however
few come. That a worker began a task goes with the next outcomes, or alone once it has waited
``STARTED_HOLD``: a task that ends sooner is never reported begun at all.

Lives on the slave's loop thread, and knows the rest of the slave only by what it is given: the
task manager, how to send to the master, the measures and the count of refused messages.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from ..protocol.codec import ENVELOPE, too_large, within
from ..protocol.dataplane import KEEP_BYTES, Store
from ..protocol.messages import Header, Outcome, Results
from ..protocol.sharing import is_reference
from ..stats import Stats
from ..task import REFUSED, Status, dump_error, error_text
from .contracts import TaskManagerContract
from .pacing import SLOW_TASK

__all__ = [
    "BATCH_SHARE",
    "MESSAGE_TASKS",
    "PREFETCH",
    "QUEUE_SECONDS",
    "RESULTS_HOLD",
    "STARTED_HOLD",
    "Outbox",
]

log = logging.getLogger(__name__)

#: Tasks a slave asks to hold per worker: one running, one ready to start.
PREFETCH = 2
#: Outcomes worth one RESULTS message (and the master's TASKS in return): a slave whose tasks
#: are short asks to hold ``BATCH_SHARE`` times as many, up to ``QUEUE_SECONDS`` of its
#: workers' work (what it holds and has not started, the master can take back for idle slaves).
MESSAGE_TASKS = 32
BATCH_SHARE = 4
QUEUE_SECONDS = 0.25
#: Seconds an outcome may wait to be sent with others: at least this, or twice as long as the
#: batch should take to fill at the pace tasks finish, but never more than ``SLOW_TASK``.
RESULTS_HOLD = 0.005
#: Seconds the news that a worker began a task waits to go with an outcome: a short task's
#: outcome says all (no message of its own, no RUNNING to its application), a longer one's
#: ``Future.running()`` turns true this much later.
STARTED_HOLD = 0.01

#: Puts a record and its payloads on their way to the master.
Send = Callable[[Header, Sequence[Any]], object]


class Outbox:
    def __init__(
        self,
        manager: TaskManagerContract,
        send: Send,
        stats: Stats,
        rejected: Counter[str],
        *,
        max_bytes: int,
        store: Store | None = None,
    ) -> None:
        """``stats``: what the slave times (sends, tasks' time here); ``rejected``: its counts
        of refused messages (outcomes refused for their digest are counted there too);
        ``max_bytes``: its own message limit, also the master's until the master says."""
        self.manager = manager
        self._send = send
        self.stats = stats
        self.rejected = rejected
        self.own_max_bytes = max_bytes
        #: Where big results of the tasks in ``keep`` stay (None: every result goes back).
        self.store = store
        #: Tasks whose result may stay here (``Assignment.keep``), until their outcome goes.
        self.keep: set[str] = set()
        #: The master's message limit (its WELCOME says); outcomes must fit in it.
        self.master_max_bytes = max_bytes
        self._arrived: dict[str, float] = {}  # task id -> when it reached this slave
        self._credit_owed = 0
        self._want = 0  # how many tasks the master was last told this slave wants to hold
        #: Outcomes collected and not sent yet (``_worth_sending`` says when they go), and
        #: when they must go at the latest (monotonic; None while there are none).
        self._unsent: list[tuple[Any, ...]] = []
        self._send_by: float | None = None
        #: Tasks a worker began, not told yet (sent with the outcomes gathered, or alone once
        #: the first has waited ``STARTED_HOLD``: by then, monotonic; None while there are none).
        self._began: list[str] = []
        self._began_by: float | None = None

    # -- what the loop feeds it ------------------------------------------------------------------

    def arrived(self, task_ids: list[str]) -> None:
        """The master sent these tasks (their time here is measured from now)."""
        self._arrived.update(dict.fromkeys(task_ids, time.monotonic()))

    def released(self, task_ids: list[str]) -> None:
        """These tasks went back to the master unrun."""
        for task_id in task_ids:
            self._arrived.pop(task_id, None)
            self.keep.discard(task_id)

    def add(self, outcome: tuple[Any, ...]) -> None:
        """An outcome the slave made itself (no worker ran the task), sent with the next."""
        self._unsent.append(outcome)

    def next_deadline(self) -> float | None:
        """When gathered outcomes or starts must go at the latest (monotonic; None: no hurry)."""
        send_by, began_by = self._send_by, self._began_by
        if send_by is None or began_by is None:
            return began_by if send_by is None else send_by
        return min(send_by, began_by)

    # -- the credit window -----------------------------------------------------------------------

    def wanted(self) -> int:
        """Tasks to hold to keep every worker busy (the task manager knows best, if it can say:
        for short tasks that is many more than ``PREFETCH`` per worker), and while tasks are
        short enough to be pipelined (under ``SLOW_TASK``), enough for a batch of ``MESSAGE_TASKS``
        to go each way at a time."""
        workers = self.manager.get_num_workers()
        wanted = max(workers * PREFETCH, self.manager.wanted())
        pace = self.manager.pace
        if 0.0 < pace < SLOW_TASK and workers:
            worth = min(MESSAGE_TASKS * BATCH_SHARE, int(workers * QUEUE_SECONDS / pace))
            wanted = max(wanted, worth)
        return wanted

    def batch(self) -> int:
        """Outcomes worth a RESULTS message of their own: a ``BATCH_SHARE``-th of what this
        slave asks to hold, while that is more than ``PREFETCH`` per worker; else 1."""
        want = self._want
        if want <= self.manager.get_num_workers() * PREFETCH:
            return 1
        return max(1, want // BATCH_SHARE)

    def window(self, finished: int = 0) -> dict[str, Any]:
        """Header fields telling the master how much more to send: ``want`` (push scheduler),
        and ``credit``, one per finished task plus any growth of the want (pull scheduler)."""
        want = self.wanted()
        self._credit_owed += finished + want - self._want
        self._want = want
        fields: dict[str, Any] = {"want": want}
        pace = self.manager.pace
        if pace:
            fields["pace"] = pace
        if self._credit_owed > 0:  # a shrinking want is paid back out of later results
            fields["credit"], self._credit_owed = self._credit_owed, 0
        return fields

    def registering(self, held: int) -> None:
        """The slave registers anew, still holding ``held`` tasks: the master knows of no want
        yet, and the tasks held count against the credit it is to be given."""
        self._want = 0
        self._credit_owed = -held

    # -- the results -----------------------------------------------------------------------------

    def _worth_sending(self, count: int) -> bool:
        """Whether ``count`` gathered outcomes go now: once they make a batch (``batch``), once
        what this slave still holds to run is down to a batch and to ``RESULTS_HOLD`` seconds
        of its workers' work, or leaves a worker idle (the master sends more only as it hears
        of outcomes; a lone task's outcome goes at once), or once the first of them has waited
        ``RESULTS_HOLD``, or twice as long as the batch should take to fill at the tasks' pace
        (at most ``SLOW_TASK``)."""
        batch = self.batch()
        if count >= batch:
            return True
        workers = max(1, self.manager.get_num_workers())
        pace = self.manager.pace
        to_run = len(self._arrived) - count
        if to_run < workers or (to_run <= batch and to_run * pace <= RESULTS_HOLD * workers):
            return True  # its workers would run short
        now = time.monotonic()
        if self._send_by is None:
            hold = max(RESULTS_HOLD, 2 * batch * pace / workers)
            self._send_by = now + min(hold, SLOW_TASK)
        return now >= self._send_by

    def _starts_due(self) -> bool:
        """Whether the tasks begun and not told yet go alone now: once the first of them has
        waited ``STARTED_HOLD`` (a short task's outcome comes first and says all)."""
        now = time.monotonic()
        if self._began_by is None:
            self._began_by = now + STARTED_HOLD
        return now >= self._began_by

    def send_results(self, everything: bool = False) -> None:
        results = self.manager.get_results_queue()
        batch = self._unsent
        get, empty = results.get_nowait, results.empty
        while not empty():
            batch.append(get())
        started = self._began
        started.extend(self.manager.take_started())
        if batch and not everything and not self._worth_sending(len(batch)):
            return  # gathered for a later turn, with the starts of the tasks behind them
        if not batch:
            if started and (everything or self._starts_due()):
                # Begun a while ago and still running: its owner's Future.running() says so.
                self._began, self._began_by = [], None
                self._send(Results(results=[], started=started), ())
            return
        self._unsent, self._send_by, self._began, self._began_by = [], None, [], None
        limit = self._max_payload()
        outcomes, payloads, sizes = self._outcomes(batch, limit)
        if started:  # a task that began and ended since the last message: its outcome says all
            ended = {outcome.task_id for outcome in outcomes}
            started = [task_id for task_id in started if task_id not in ended]
        window = self.window(finished=len(outcomes))
        sent_at = time.monotonic()
        if sum(sizes) <= limit:
            self._send(Results(results=outcomes, started=started or None, **window), payloads)
        else:  # big outcomes: as many messages as it takes for each to fit the master's limit
            for part in within(sizes, limit):
                header = Results(results=outcomes[part], started=started or None, **window)
                started, window = [], {}  # started, credit and want once, with the first part
                self._send(header, payloads[part])
        now = time.monotonic()
        self.stats.add("slave_send_seconds", now - sent_at)
        arrived = self._arrived
        held = [now - arrived.pop(outcome.task_id, now) for outcome in outcomes]
        self.stats.add(
            "slave_task_seconds", sum(held) / len(held), len(held), low=min(held), high=max(held)
        )

    def _outcomes(
        self, batch: list[tuple[Any, ...]], limit: int
    ) -> tuple[list[Outcome], list[Any], list[int]]:
        """Each outcome's header item, payload and size, in one pass (the slave's hot path). A
        crash has no outcome to send, only how the worker died: that goes in the header, as
        does a failure's text (what people read on the master; a manager may give none)."""
        outcomes: list[Outcome] = []
        payloads: list[Any] = []
        sizes: list[int] = []
        refused = 0
        keep, store = self.keep, self.store
        for item in batch:
            if keep and item[0] in keep:
                keep.discard(item[0])
                data = item[2]
                if (
                    item[1] == Status.OK
                    and store is not None
                    and len(data) >= KEEP_BYTES
                    and not is_reference(data)
                ):
                    store.put(item[0], data)  # stays here: its size goes, not its bytes
                    outcomes.append(Outcome(item[0], Status.OK, None, len(data), *item[4:7]))
                    payloads.append(b"")
                    sizes.append(0)
                    continue
            task_id, status, data, *rest = self._fitted(item, limit)
            # Which worker ran it and when (rest[1:4]), where its task manager says so.
            if status == Status.OK:
                outcomes.append(Outcome(task_id, status, None, None, *rest[1:4]))
            elif status == Status.CRASH:
                outcomes.append(Outcome(task_id, status, str(data)))
                data = b""
            else:
                detail = rest[0] if rest else None
                outcomes.append(Outcome(task_id, status, detail, None, *rest[1:4]))
                if detail is not None and detail.startswith(REFUSED):
                    refused += 1  # its payload did not match its signed digest: it never ran
            payloads.append(data)
            sizes.append(len(data))
        if refused:  # counted as any other refused message is (their owners get the error)
            self.rejected["bad-digest"] += refused
        return outcomes, payloads, sizes

    def _max_payload(self) -> int:
        """The largest outcome that fits in one message the master accepts."""
        own = self.own_max_bytes or self.master_max_bytes
        return min(own, self.master_max_bytes) - ENVELOPE

    def _fitted(self, item: tuple[Any, ...], limit: int) -> tuple[Any, ...]:
        """An outcome too big to travel becomes the error saying so, for its owner."""
        task_id, status, data, *rest = item
        if status == Status.CRASH or len(data) <= limit:
            return item
        error = too_large(f"the result of task {task_id}", len(data), limit + ENVELOPE)
        log.error("%s", error)
        return task_id, Status.ERROR, dump_error(error), error_text(error)
