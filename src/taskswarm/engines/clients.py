"""Clients of the engines a slave can hand its tasks to: a Dask distributed cluster, a Ray cluster.

Both run ``taskswarm.task.run_task_reporting`` on the engine's workers (timed, ``run_timed``):
the very function a process pool's worker runs, so a task's outcome comes back in the same
form, ``(status, pickled outcome, failure text)``, whatever ran it, and neither the master nor
the application can tell the difference. The payload travels as the opaque bytes the slave
received, with the digest its signed header gave; only the engine's worker unpickles it, after
checking that digest.

An engine reports its own failures (a worker that died, a task it lost) as exceptions of its
own; ``is_crash`` tells those apart from the rest, so the master re-runs a task whose worker
died and reports every other failure to the task's owner. The engine's package is imported
only when a client connects, so taskswarm installs and runs without it.
"""

from __future__ import annotations

import contextlib
import importlib
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

from ..errors import ConfigurationError
from ..task import run_task_reporting

__all__ = [
    "DaskEngine",
    "RayEngine",
    "EngineClient",
    "Outcome",
    "Reported",
    "require",
    "run_timed",
]

#: What a task's run reports, as a pool worker does: ``(status, pickled outcome, failure text)``.
Reported = tuple[str, bytes, str | None]
#: What ``run_timed`` returned on the engine's worker, or the engine's own exception.
Outcome = tuple[float, Reported] | BaseException
#: Seconds to wait for a Dask scheduler to answer before telling the user it is unreachable.
CONNECT_TIMEOUT = 10.0


def run_timed(payload: Any) -> tuple[float, Reported]:
    """What an engine's worker runs: the task, and how long it took there. The manager paces
    itself by that time, which (unlike the time until the outcome is back) does not grow with
    the tasks waiting in the engine. ``payload``: the task's, or ``(payload, inputs)`` for a
    task that takes other tasks' results."""
    start = time.perf_counter()
    inputs = None
    if type(payload) is tuple:
        payload, inputs = payload
    outcome = run_task_reporting(payload, inputs)
    return time.perf_counter() - start, outcome


def require(module: str, extra: str) -> ModuleType:
    """Import an engine's package, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {extra} engine needs the {module!r} package, which cannot be imported here "
            f"({exc}); install it with: pip install 'taskswarm[{extra}]'"
        ) from None


class EngineClient:
    """What an engine-backed task manager needs of an engine; one subclass per engine."""

    #: The engine's name, as in ``--manager`` and ``--scheduler``.
    name = "engine"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        #: Where the engine is; None starts a small one on this machine.
        self.address = address
        #: How many workers such a local engine gets (None: the engine's default).
        self.workers = workers

    def connect(self) -> None:
        """Reach the engine; a ConfigurationError says what to do when it cannot be reached."""
        raise NotImplementedError

    def slots(self) -> int:
        """How many tasks the engine runs at once now (its workers can come and go)."""
        raise NotImplementedError

    def usable(self) -> bool:
        """Whether tasks can be handed over now (False: the connection is lost for good)."""
        return True

    def recover(self) -> None:
        """Start connecting again, in the background, after the connection was lost."""

    def submit(self, payload: Any, done: Callable[[], None]) -> Any:
        """Run one task's payload; ``done()`` is called once it has ended, from a thread of the
        engine's client. Returns the engine's handle of the run."""
        raise NotImplementedError

    def outcomes(self, handles: list[Any]) -> list[Outcome]:
        """The outcomes of ended runs, fetched together (one round trip where the engine
        allows it: fetching them one by one caps a Dask client at a few dozen a second)."""
        raise NotImplementedError

    def cancel(self, handles: list[Any]) -> None:
        """Stop runs that are no longer wanted (their outcomes are ignored anyway)."""
        raise NotImplementedError

    def is_crash(self, exc: BaseException) -> bool:
        """Whether an engine exception means the run was lost (its worker or node died), so
        that running the task again is the right answer."""
        raise NotImplementedError

    def close(self) -> None:
        """Disconnect, and stop an engine this client started; safe to call twice."""
        raise NotImplementedError

    def describe(self) -> str:
        return (
            f"{self.name} engine at {self.address}" if self.address else f"local {self.name} engine"
        )


def _settled(future: Any) -> Outcome:
    """A finished future's value, or the exception it holds."""
    try:
        outcome: Outcome = future.result()
    except BaseException as exc:  # noqa: BLE001 - it is handed on as the outcome
        return exc
    return outcome


class DaskEngine(EngineClient):
    """A Dask distributed scheduler at ``tcp://HOST:PORT`` (or a LocalCluster started here)."""

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        super().__init__(address, workers)
        self._client: Any = None
        self._cluster: Any = None
        self._scheduler = address
        self._crashes: tuple[type[BaseException], ...] = ()
        self._slots = 0
        self._lock = threading.Lock()  # the client, between close() and a reconnecting thread
        self._reconnecting: threading.Thread | None = None
        self._closed = False

    def connect(self) -> None:
        distributed = require("distributed", "dask")
        from distributed.client import FutureCancelledError

        # A run the scheduler cancelled by itself (it lost the client's connection, or a
        # worker's data) is lost like a crashed worker's: run it again.
        self._crashes = (distributed.KilledWorker, FutureCancelledError)
        if self.address is None:
            # Its dashboard on a free port: Dask's default, 8787, is the master's dashboard's.
            self._cluster = distributed.LocalCluster(
                n_workers=self.workers, threads_per_worker=1, dashboard_address="127.0.0.1:0"
            )
            self._scheduler = self._cluster.scheduler_address
        try:
            self._client = self._new_client()
        except (OSError, ValueError, TypeError) as exc:
            self.close()
            raise ConfigurationError(
                f"cannot reach the Dask scheduler at {self._scheduler!r} ({exc}); start one "
                "with `dask scheduler` (and `dask worker ADDRESS`) and give its address, "
                "e.g. --engine tcp://127.0.0.1:8786"
            ) from None

    def _new_client(self) -> Any:
        import distributed

        # distributed leaves Client.__init__ unannotated.
        return distributed.Client(  # type: ignore[no-untyped-call]
            self._scheduler, timeout=CONNECT_TIMEOUT, set_as_default=False
        )

    def slots(self) -> int:
        # While the client reconnects by itself a request would wait for it: keep the count.
        if self._client.status == "running":
            self._slots = sum(self._client.nthreads().values())
        return self._slots

    def usable(self) -> bool:
        # A Dask client that lost its scheduler tries again for a while ("connecting"), then
        # closes for good: anything submitted to it then would wait for ever.
        client = self._client
        return client is not None and client.status not in ("closing", "closed")

    def recover(self) -> None:
        with self._lock:
            if self._closed or (self._reconnecting and self._reconnecting.is_alive()):
                return
            self._reconnecting = threading.Thread(
                target=self._reconnect, name="taskswarm-dask-reconnect", daemon=True
            )
            self._reconnecting.start()

    def _reconnect(self) -> None:
        """One try (connecting blocks for up to CONNECT_TIMEOUT: never in the slave's loop)."""
        try:
            client = self._new_client()
        except (OSError, ValueError, TypeError):
            return  # the next look at the engine tries again
        with self._lock:
            if not self._closed:
                client, self._client = self._client, client
        client.close()  # the closed one it replaced, or the new one if this engine was closed

    def submit(self, payload: Any, done: Callable[[], None]) -> Any:
        future = self._client.submit(run_timed, payload, pure=False)
        future.add_done_callback(lambda _: done())
        return future

    def outcomes(self, handles: list[Any]) -> list[Outcome]:
        finished = [i for i, future in enumerate(handles) if future.status == "finished"]
        values: dict[int, Outcome] = {}
        if finished:
            try:
                gathered = self._client.gather([handles[i] for i in finished])
                values = dict(zip(finished, gathered, strict=True))
            except Exception:  # noqa: BLE001 - one was lost meanwhile: ask each for its own
                values = {}
        return [values[i] if i in values else _settled(f) for i, f in enumerate(handles)]

    def cancel(self, handles: list[Any]) -> None:
        # Dask cannot interrupt a running task: its thread runs on, and its result is dropped.
        self._client.cancel(handles)

    def is_crash(self, exc: BaseException) -> bool:
        return isinstance(exc, self._crashes)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            client, self._client = self._client, None
            cluster, self._cluster = self._cluster, None
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


@contextlib.contextmanager
def _keeping_sigterm_handler() -> Iterator[None]:
    """``ray.init`` replaces the process's SIGTERM handler with one that exits at once: keep
    the node's own, which stops it cleanly (and so disconnects from Ray as well)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handler = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, handler)


class RayEngine(EngineClient):
    """A Ray cluster: ``ray://HOST:PORT`` (Ray Client), ``HOST:PORT`` or ``auto`` (a cluster
    this machine belongs to), or none: ``ray.init()`` finds one here or starts one."""

    name = "ray"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        super().__init__(address, workers)
        self._ray: Any = None
        self._remote: Any = None
        self._owned = False
        self._crashes: tuple[type[BaseException], ...] = ()

    def connect(self) -> None:
        ray = require("ray", "ray")
        errors = ray.exceptions
        self._crashes = (
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.ObjectLostError,
            errors.LocalRayletDiedError,
        )
        if not ray.is_initialized():
            options: dict[str, Any] = {"address": self.address}
            if self.address is None:
                options.update(include_dashboard=False, num_cpus=self.workers)
            try:
                with _keeping_sigterm_handler():
                    ray.init(**options)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigurationError(
                    f"cannot reach the Ray cluster at {self.address!r} ({exc}); start one "
                    "with `ray start --head` and give its address (ray://HOST:10001, or "
                    "auto on one of its machines), or give no --engine to start one here"
                ) from None
            self._owned = True
        self._ray = ray
        # The master decides what a lost run means (it re-runs a crash up to --max-crashes
        # times), so Ray must not re-run it behind the master's back.
        self._remote = ray.remote(max_retries=0)(run_timed)

    def slots(self) -> int:
        return int(self._ray.cluster_resources().get("CPU", 0))

    def submit(self, payload: Any, done: Callable[[], None]) -> Any:
        ref = self._remote.remote(payload)
        future = ref.future()  # resolved with the value itself: nothing left to fetch
        future.add_done_callback(lambda _: done())
        return ref, future

    def outcomes(self, handles: list[Any]) -> list[Outcome]:
        return [_settled(future) for _, future in handles]

    def cancel(self, handles: list[Any]) -> None:
        # force: a running task's worker process is killed, as a process pool's would be.
        for ref, _ in handles:
            self._ray.cancel(ref, force=True)

    def is_crash(self, exc: BaseException) -> bool:
        return isinstance(exc, self._crashes)

    def close(self) -> None:
        ray, self._ray = self._ray, None
        if ray is not None and self._owned:
            ray.shutdown()
        self._owned = False
