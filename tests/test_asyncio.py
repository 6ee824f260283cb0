"""The asyncio client on a real cluster: awaited Futures, ``async with`` connections, completions
in order of arrival, task systems awaited, and cancelling or closing that never hangs nor leaves
a callback behind. Each test is one ``asyncio.run``; a ticker coroutine shows the loop is never
blocked while the application waits for the master."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import taskswarm as ts

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def shared() -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=1, workers=2) as cluster:
        yield cluster


def hold(flag: str, value: Any = None) -> Any:
    """A task that runs until ``flag`` exists (or a minute passes): work the test decides the
    end of, on a worker, with no timing guess."""
    deadline = time.monotonic() + 60.0
    while not os.path.exists(flag) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def add(a: int, b: int) -> int:
    return a + b


def explode(x: int) -> int:
    raise ValueError(f"no good: {x}")


def blob(n: int) -> bytes:
    return b"x" * n


class Held(ts.Task):
    def __init__(self, flag: str) -> None:
        super().__init__(name="held")
        self.flag = flag

    def __call__(self) -> int:
        return hold(self.flag, 7)


class WaitsForFlag(ts.TaskSystem):
    """One task that runs until the flag exists: the system ends only once someone made it."""

    def __init__(self, flag: str) -> None:
        super().__init__()
        self.flag, self.result = flag, None

    def init_system(self, master: Any) -> None:
        pass

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [Held(self.flag)]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        self.result = result

    def is_complete(self, master: Any) -> bool:
        return self.result is not None

    def gather_result(self, master: Any) -> tuple[Any, None]:
        return self.result, None


async def until(condition: Callable[[], object], timeout: float = 20.0) -> None:
    """``conftest.wait_for`` for coroutines: the loop runs on while the condition is polled."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s: {condition}")
        await asyncio.sleep(0.02)


def test_an_awaited_submit_gives_its_result_and_a_connection_opens_with_async_with(shared):
    async def main() -> None:
        async with shared.connect_async() as aapp:
            assert await aapp.submit(pow, 2, 10) == 1024
            assert len(await aapp.status()) > 0

    asyncio.run(main())


def test_connect_async_is_awaitable_and_opens_the_one_link_it_shares(shared):
    async def main() -> None:
        aapp = await ts.connect_async(shared.address, key_file=shared.key_file)
        try:
            assert isinstance(aapp, ts.AsyncApplication)
            assert aapp.app.submit(add, 1, 2).result() == 3  # the same connection, from sync code
            assert await aapp.submit(add, 2, 3) == 5
        finally:
            await aapp.close()
            await aapp.close()  # safe twice
        with pytest.raises(ts.ClientClosed):
            aapp.submit(add, 1, 1)

    asyncio.run(main())


def test_a_connection_used_before_it_opens_says_how_to_open_it(shared):
    aapp = shared.connect_async()
    with pytest.raises(ts.ClientClosed, match="async with"):
        aapp.submit(add, 1, 1)


def test_a_connection_that_cannot_open_says_why_when_awaited(monkeypatch):
    monkeypatch.delenv("TASKSWARM_MASTER", raising=False)

    async def main() -> None:
        aapp = ts.connect_async()  # no address: nothing is tried until it is awaited
        with pytest.raises(ts.ConfigurationError, match="no master to connect to"):
            await aapp

    asyncio.run(main())


def test_two_hundred_concurrent_awaits_all_complete(shared):
    async def main() -> list[int]:
        async with shared.connect_async() as aapp:
            futures = aapp.push_tasks(ts.FunctionTask(add, i, 1) for i in range(200))
            return await asyncio.gather(*futures)

    assert asyncio.run(main()) == [i + 1 for i in range(200)]


def test_futures_are_arguments_of_later_tasks(shared):
    async def main() -> None:
        async with shared.connect_async() as aapp:
            first = aapp.submit(add, 2, 3)
            total = aapp.submit(add, first, 10)
            ref = await aapp.scatter(100)
            assert await total == 15
            assert await aapp.submit(add, ref, first) == 105

    asyncio.run(main())


def test_a_failed_task_raises_its_own_error_with_the_remote_traceback(shared):
    async def main() -> None:
        async with shared.connect_async() as aapp:
            with pytest.raises(ValueError, match="no good: 3") as caught:
                await aapp.submit(explode, 3)
            assert type(caught.value.__cause__).__name__ == "_RemoteTraceback"
            assert "explode" in caught.value.__cause__.tb

    asyncio.run(main())


def test_a_result_kept_on_its_slave_is_fetched_when_awaited(shared):
    async def main() -> None:
        async with shared.connect_async() as aapp:
            future = aapp.submit(blob, 200_000)
            assert await future == b"x" * 200_000
            assert future.remote is None  # fetched (off the loop) and kept here

    asyncio.run(main())


def test_async_for_yields_each_future_as_it_completes(shared, tmp_path: Path):
    flag = tmp_path / "go"

    async def main() -> None:
        async with shared.connect_async() as aapp:
            quick = aapp.push_tasks(ts.FunctionTask(add, i, 0) for i in range(10))
            await asyncio.gather(*quick)
            # Sent once the others are done, so no worker holds one of them behind it.
            slow = aapp.submit(hold, str(flag), "slow")
            seen = []
            async for future in aapp.as_completed([slow, *quick]):
                assert future.done()
                seen.append(await future)
                if len(seen) == 10:
                    flag.touch()  # only now may the slow one end: the done ones come first
            assert seen[-1] == "slow" and sorted(seen[:10]) == list(range(10))

    asyncio.run(main())


def test_the_sync_applications_futures_are_awaitable_too(shared):
    async def main(app: ts.Application) -> None:
        assert await app.submit(pow, 3, 3) == 27
        done = app.submit(add, 1, 1)
        done.result()
        assert await done == 2  # already done: no waiting at all

    with shared.connect() as app:
        asyncio.run(main(app))


def test_run_system_never_blocks_the_loop(shared, tmp_path: Path):
    """The system ends only once a coroutine of this loop has ticked and made the flag: were
    the loop blocked while run_system waits, it would never end."""

    async def ticker(flag: Path) -> None:
        for _ in range(5):
            await asyncio.sleep(0.01)
        flag.touch()

    async def main() -> None:
        async with shared.connect_async() as aapp:
            first, second = tmp_path / "first", tmp_path / "second"
            result, _ = await asyncio.gather(
                aapp.run_system(WaitsForFlag(str(first))), ticker(first)
            )
            assert result == 7
            # Sent, then awaited by id (as any process may), while it cannot end yet.
            handle = await aapp.submit_system(WaitsForFlag(str(second)))
            waited = aapp.system_result(handle.system_id)
            assert (await asyncio.gather(waited, ticker(second)))[0] == 7
            assert await aapp.system_result(handle) == 7

    asyncio.run(main())


def test_cancelling_run_system_cancels_the_system_on_the_master(shared, tmp_path: Path):
    flag = tmp_path / "go"

    async def main() -> None:
        async with shared.connect_async() as aapp:
            system = WaitsForFlag(str(flag))
            running = asyncio.ensure_future(aapp.run_system(system))
            ledger = aapp.app._ledger
            await until(lambda: system.system_id in ledger.systems)
            handle = ledger.systems[system.system_id]  # the ledger lets it go once it ends
            running.cancel()
            with pytest.raises(asyncio.CancelledError):
                await running
            with pytest.raises(ts.TaskSystemError):
                await aapp.system_result(handle)

    try:
        asyncio.run(main())
    finally:
        flag.touch()  # its task, were it still running, ends at once


def test_cancelling_the_awaiting_coroutine_stops_its_task_and_leaves_no_callback(
    shared, tmp_path: Path
):
    flag = str(tmp_path / "never")

    async def main() -> None:
        async with shared.connect_async() as aapp:
            future = aapp.submit(hold, flag)
            await until(future.running)
            waiting = asyncio.ensure_future(future)
            await until(lambda: future._done_callbacks)  # the waiter has hooked on
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            assert future.cancelled()  # stopped on its worker, as app.cancel does
            assert future._done_callbacks == []
            assert await aapp.submit(add, 1, 2) == 3  # the cluster works on

    asyncio.run(main())


def test_a_future_another_coroutine_or_task_still_needs_is_not_cancelled(shared, tmp_path: Path):
    flag = tmp_path / "go"

    async def main() -> None:
        async with shared.connect_async() as aapp:
            first = aapp.submit(hold, str(flag), 1)
            one, two = asyncio.ensure_future(first), asyncio.ensure_future(first)
            await until(lambda: len(first._done_callbacks) == 2)
            one.cancel()
            with pytest.raises(asyncio.CancelledError):
                await one
            assert not first.cancelled()  # ``two`` still awaits it

            taker = aapp.submit(add, first, 1)
            two.cancel()
            with pytest.raises(asyncio.CancelledError):
                await two
            assert not first.cancelled()  # ``taker`` takes it as an argument

            flag.touch()
            assert await taker == 2

    asyncio.run(main())


def test_wait_for_timing_out_cancels_the_task(shared, tmp_path: Path):
    async def main() -> None:
        async with shared.connect_async() as aapp:
            future = aapp.submit(hold, str(tmp_path / "never"))
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(future, 0.05)
            assert future.cancelled()

    asyncio.run(main())


def test_closing_with_awaits_outstanding_raises_client_closed_in_each(shared, tmp_path: Path):
    flag = tmp_path / "go"

    async def main() -> None:
        aapp = await shared.connect_async()
        futures = [aapp.submit(hold, str(flag)) for _ in range(3)]
        waiting = asyncio.gather(*futures, return_exceptions=True)
        await until(lambda: all(f._done_callbacks for f in futures))
        await aapp.close()
        outcomes = await waiting
        assert [type(o) for o in outcomes] == [ts.ClientClosed] * 3

    try:
        asyncio.run(main())
    finally:
        flag.touch()  # the tasks the closed connection left behind end at once
