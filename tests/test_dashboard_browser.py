"""The dashboard page in a real browser against a real LocalCluster.

Why a browser: the page is JavaScript (its charts uPlot's) following a Server-Sent Events
stream and polling the API, and only a browser runs it. Playwright drives the system's chromium
(Debian's package, installed by .ci/run; `playwright install` is never needed), headless. The
test waits on what the page shows (both slaves as rows with their CPU and memory, a task system
at 100 % under its name, a running one listed first, the task stream's rows and bars, the
history charts of a page opened after the work, a resized pool, no request answered with an
error status) and never sleeps. A screenshot of the final screen is kept under the test's
tmp_path and copied to ``$TASKSWARM_ARTIFACTS`` (or ``test-artifacts/`` in the repository) for
people to look at.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from typing import Any

import pytest

import taskswarm as ts

REPO = Path(__file__).resolve().parent.parent
TASKS = 20
#: Seconds each task takes: long enough for the page to show the system running.
TASK_SECONDS = 0.1
#: Milliseconds Playwright waits for the page to show something.
WAIT_MS = 30_000


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Nap(ts.Task):
    def __init__(self, index: int) -> None:
        super().__init__(name=f"nap-{index}")
        self.index = index

    def __call__(self) -> int:
        time.sleep(TASK_SECONDS)
        return self.index


class Naps(ts.TaskSystem):
    """TASKS tasks of TASK_SECONDS each: a system the page can watch move to 100 %."""

    def __init__(self) -> None:
        super().__init__()
        self.finished = 0

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [Nap(i) for i in range(TASKS)]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        assert error is None
        self.finished += 1

    def is_complete(self, master: Any) -> bool:
        return self.finished == TASKS

    def gather_result(self, master: Any) -> tuple[int, None]:
        return self.finished, None


def divide(x: int, y: int) -> float:
    return x / y


class WaitForFile(ts.Task):
    """Runs until ``path`` exists (the test makes it): a task system that is still running
    while the test looks at the page, with no sleep on the test's side."""

    def __init__(self, path: str) -> None:
        super().__init__(name="wait-for-file")
        self.path = path

    def __call__(self) -> bool:
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            time.sleep(0.02)
        return True


class Holding(ts.TaskSystem):
    """One task that waits for a file: running until the test says."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path, self.finished = path, False

    def generate_tasks(self, master: Any) -> list[ts.Task]:
        return [WaitForFile(self.path)]

    def task_finished(self, master: Any, task: Any, result: Any, error: Any) -> None:
        self.finished = True

    def is_complete(self, master: Any) -> bool:
        return self.finished

    def gather_result(self, master: Any) -> tuple[bool, None]:
        return True, None


def shown_name(app: ts.Application, system_id: str) -> str:
    """What the page shows a system as: its name, the class name by default."""
    summary = next(s for s in app.status()["systems"] if s["id"] == system_id)
    assert summary["name"] == "Naps"
    return "Naps"


def keep_screenshot(path: Path) -> Path:
    """Copy the screenshot where people look for it; returns the copy's path."""
    folder = Path(os.environ.get("TASKSWARM_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "dashboard.png"
    shutil.copyfile(path, target)
    return target


@pytest.mark.timeout(120)
def test_the_dashboard_follows_slaves_a_task_system_and_a_resize(tmp_path: Path) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is not installed: pip install -e '.[dev]'"
    )
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH: apt-get install chromium (.ci/run does)")
    expect = sync_api.expect

    with ts.LocalCluster(slaves=2, workers=1, dashboard="127.0.0.1:0") as cluster:
        app = cluster.connect()
        url = app.status()["master"]["dashboard"]
        assert url, "the master started no dashboard"
        token = cluster.key.dashboard_token()
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, headless=True, args=["--no-sandbox"]
            )
            try:
                page = browser.new_page(viewport={"width": 1280, "height": 1000})
                errors: list[str] = []
                failed: list[str] = []  # requests answered 4xx/5xx (a favicon's 404...)
                page.on("pageerror", lambda error: errors.append(str(error)))
                page.on(
                    "response",
                    lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"),
                )
                page.goto(f"{url}/?token={token}")

                rows = page.locator("tr.slave")
                expect(rows).to_have_count(2, timeout=WAIT_MS)
                active = page.locator("tr.slave[data-state=active]")
                expect(active).to_have_count(2, timeout=WAIT_MS)
                expect(page.locator("#master-scheduler")).not_to_have_text("…")

                handle = app.submit_system(Naps())
                system = page.locator(f'.system[data-id="{handle.system_id}"]')
                expect(system).to_be_visible(timeout=WAIT_MS)
                assert handle.result(timeout=60) == TASKS
                expect(system.locator(".percent")).to_have_text("100%", timeout=WAIT_MS)
                expect(system).to_have_attribute("data-state", "complete")
                assert system.locator("progress").evaluate("p => p.value / p.max") == 1

                expect(system.locator(".name")).to_have_text(
                    shown_name(app, handle.system_id), timeout=WAIT_MS
                )
                expect(page.locator("#chart canvas").first).to_be_visible()
                page.wait_for_function(
                    "() => Number(document.querySelector('#chart').dataset.points) >= 3",
                    timeout=WAIT_MS,
                )
                expect(page.locator("#sum-done")).to_have_text(str(TASKS), timeout=WAIT_MS)

                # The task stream: a row per worker that ran tasks (one each), a bar per task.
                page.wait_for_function(
                    "() => { const s = document.querySelector('#stream-chart').dataset;"
                    " return Number(s.rows) >= 2 && Number(s.bars) >= 2; }",
                    timeout=WAIT_MS,
                )
                expect(page.locator("#stream-legend")).to_contain_text(
                    shown_name(app, handle.system_id)
                )
                # Each slave's CPU and memory, as its heartbeat measured them.
                for cell in rows.locator("td.memory").all():
                    expect(cell).to_have_text(re.compile(r"^[\d.,]+ (KiB|MiB|GiB)$"))
                for cell in rows.locator("td.cpu").all():
                    expect(cell).to_have_text(re.compile(r"^[\d,]+$"))
                page.wait_for_function(
                    "() => Number(document.querySelector('#usage-chart').dataset.points) >= 3",
                    timeout=WAIT_MS,
                )

                # A running system is listed first; finished ones fold under a <details>.
                release = tmp_path / "release"
                holding = app.submit_system(Holding(str(release)))
                running = page.locator(f'#system-list .system[data-id="{holding.system_id}"]')
                expect(running).to_be_visible(timeout=WAIT_MS)
                expect(page.locator("#finished-list .system")).to_have_count(1)
                expect(system).to_be_hidden()  # folded
                page.locator("#finished-systems summary").click()
                expect(system).to_be_visible()
                release.touch()
                assert holding.result(timeout=60) is True
                expect(page.locator("#finished-list .system")).to_have_count(2, timeout=WAIT_MS)

                # The resize control: the page sends the token from its own URL.
                first = rows.first
                slave_id = first.get_attribute("data-id")
                first.locator("input.workers-input").fill("2")
                first.locator("button.resize-button").click()
                row = page.locator(f'tr.slave[data-id="{slave_id}"]')
                expect(row.locator("td.workers")).to_have_text("2", timeout=WAIT_MS)
                expect(page.locator("#action-message")).not_to_have_class("message bad")

                # A task that fails: its error, then its remote traceback on a click.
                with pytest.raises(ZeroDivisionError):
                    app.submit(divide, 1, 0).result(timeout=30)
                failure = page.locator("#error-list li.error").first
                expect(failure.locator(".message")).to_have_text(
                    "ZeroDivisionError: division by zero", timeout=WAIT_MS
                )
                failure.locator("summary").click()
                expect(failure.locator("pre.traceback")).to_contain_text("in divide")
                expect(page.locator("tr.application")).to_have_count(1)

                shot = tmp_path / "dashboard.png"
                page.screenshot(path=str(shot), full_page=True)
                kept = keep_screenshot(shot)
                print(f"dashboard screenshot: {shot} (copied to {kept})")

                # A page opened after the work still draws it: the master kept the history.
                late = browser.new_page(viewport={"width": 1280, "height": 1000})
                late.on("pageerror", lambda error: errors.append(str(error)))
                late.on(
                    "response",
                    lambda r: r.status >= 400 and failed.append(f"{r.status} {r.url}"),
                )
                late.goto(url)
                late.wait_for_function(
                    "() => Number(document.querySelector('#chart').dataset.points) >= 3"
                    " && Number(document.querySelector('#stream-chart').dataset.bars) >= 2",
                    timeout=WAIT_MS,
                )
                expect(late.locator("#chart canvas").first).to_be_visible()
                assert not errors, f"the page raised: {errors}"
                assert not failed, f"requests that failed: {failed}"
            finally:
                browser.close()
