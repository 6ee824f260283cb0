"""Task systems by name and by a short id: ``TaskSystem.name`` shown in status, `taskswarm
status`, the API, progress and the journal; ids given by a unique prefix, as git takes short
hashes, to ``system_result``, ``cancel_system``, `taskswarm result` and the API.

One small cluster for the module (with its dashboard); each test makes the systems it needs.
"""

from __future__ import annotations

import json
import sqlite3
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console

import taskswarm as ts
from conftest import Nodes
from taskswarm.master.journal import Journal
from taskswarm.master.system_ids import LISTED, look_up, matching
from taskswarm.ops.status_view import FINISHED_SHOWN, render_status
from taskswarm.protocol.codec import Kind
from taskswarm.protocol.messages import Ack, System

pytestmark = pytest.mark.usefixtures("tasks_travel_by_value")


class Square(ts.Task):
    def __init__(self, x: int) -> None:
        super().__init__(name=f"square-{x}")
        self.x = x

    def __call__(self) -> int:
        return self.x * self.x


class Nap(ts.Task):
    """Keeps its system running until it is cancelled (which replaces the worker)."""

    def __call__(self) -> None:
        time.sleep(60)


class Squares(ts.TaskSystem):
    def __init__(self, n: int = 3, system_id: str | None = None) -> None:
        super().__init__()
        if system_id is not None:
            self._system_id = system_id
        self.n, self.total, self.seen = n, 0, 0

    def generate_tasks(self, master):
        return [Square(i) for i in range(self.n)]

    def task_finished(self, master, task, result, error):
        self.total += result
        self.seen += 1

    def is_complete(self, master):
        return self.seen == self.n

    def gather_result(self, master):
        return (self.total, None)


class Sweep(Squares):
    name = "my-sweep"


class Held(Squares):
    name = "held-open"

    def generate_tasks(self, master):
        return [Nap()]


@pytest.fixture(scope="module")
def cluster() -> Iterator[ts.LocalCluster]:
    # Three workers: a held system's task keeps one, the others run the rest.
    with ts.LocalCluster(slaves=1, workers=3, dashboard="127.0.0.1:0") as local:
        yield local


@pytest.fixture(scope="module")
def app(cluster: ts.LocalCluster) -> Iterator[ts.Application]:
    with cluster.connect() as connection:
        yield connection


@pytest.fixture(scope="module")
def url(app: ts.Application) -> str:
    return str(app.status()["master"]["dashboard"])


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def post(url: str, token: str) -> tuple[int, str]:
    request = urllib.request.Request(url, data=b"", method="POST")
    request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def listed(app: ts.Application, system_id: str) -> dict:
    (found,) = [s for s in app.status()["systems"] if s["id"] == system_id]
    return found


# -- names ----------------------------------------------------------------------------------------


def test_a_system_is_named_after_its_class_unless_it_says_otherwise():
    assert Squares.name == "Squares" and Squares().name == "Squares"
    assert Sweep.name == "my-sweep" and Sweep().name == "my-sweep"
    named = Squares()
    named.name = "tonight's run"
    assert named.name == "tonight's run" and Squares().name == "Squares"


@pytest.mark.parametrize(
    "name, error, says",
    [
        (42, TypeError, "must be a str, not int"),
        ("", ValueError, "must not be empty"),
        ("x" * 101, ValueError, "at most 100 characters, not 101"),
        ("two\nlines", ValueError, r"one line of printable text; 'two\\nlines' holds '\\n'"),
        ("bell\x07", ValueError, "a control character"),
    ],
)
def test_a_bad_name_is_refused_at_submit_system_saying_what_is_wrong(app, name, error, says):
    system = Squares()
    system.name = name
    with pytest.raises(error, match=says):
        app.submit_system(system)
    assert all(s["id"] != system.system_id for s in app.status()["systems"])


def test_the_master_refuses_a_bad_name_from_an_application_that_did_not_check(app):
    # What an older or rogue application could send: the master checks names too.
    bad = System(system_id="unchecked-name", name="a\x1b[2Jb")
    with pytest.raises(ts.TaskswarmError, match="one line of printable text"):
        app._link.request(Kind.SYSTEM, bad, 10.0, [b"never unpickled"], answer=Ack)
    assert all(s["id"] != "unchecked-name" for s in app.status()["systems"])


def test_the_name_shows_in_status_the_api_taskswarm_status_and_progress(
    cluster, app, url, nodes: Nodes
):
    handle = app.submit_system(Sweep(4))
    assert handle.result(timeout=30) == 14
    assert handle.name == "my-sweep" and handle.meter.label == f"my-sweep {handle.system_id[:8]}"
    assert listed(app, handle.system_id)["name"] == "my-sweep"
    default = app.submit_system(Squares(2))
    default.result(timeout=30)
    assert listed(app, default.system_id)["name"] == "Squares"

    code, body = get(url + "/api/systems")
    assert code == 200
    assert {s["id"]: s["name"] for s in json.loads(body)}[handle.system_id] == "my-sweep"
    code, body = get(f"{url}/api/systems/{handle.system_id}")
    assert code == 200 and json.loads(body)["name"] == "my-sweep"

    out = nodes.run("status", "--master", cluster.address, "--key-file", cluster.key_file)
    assert out.returncode == 0, out.stderr
    (row,) = [line for line in out.stdout.splitlines() if handle.system_id in line]
    assert "my-sweep" in row and "complete" in row


def test_running_systems_come_first_then_finished_ones_newest_first(app, url):
    held = app.submit_system(Held())
    older = app.submit_system(Squares(1))
    older.result(timeout=30)
    newer = app.submit_system(Squares(1))
    newer.result(timeout=30)
    try:
        for systems in (app.status()["systems"], json.loads(get(url + "/api/systems")[1])):
            states = [s["state"] for s in systems]
            running = states.count("running")
            assert "running" not in states[running:]  # every running one before any finished
            ids = [s["id"] for s in systems]
            assert ids.index(held.system_id) < running
            assert ids.index(newer.system_id) < ids.index(older.system_id)
    finally:
        app.cancel_system(held.system_id)


def test_taskswarm_status_shows_the_newest_finished_systems_and_counts_the_rest():
    def system(i: int, state: str) -> dict:
        names = {"id": f"id-{i:02d}", "name": f"name-{i:02d}", "state": state}
        return names | {"done": 1, "total": 1, "elapsed": 1.0, "eta": None}

    info = {
        "master": {
            "address": "tcp://127.0.0.1:5555",
            "pid": 1,
            "host": "here",
            "scheduler": "push",
            "strategy": "load",
            "uptime": 1.0,
        },
        "tasks": {"queued": 0, "assigned": 0},
        "slaves": [],
        "systems": [system(0, "running")] + [system(i, "complete") for i in range(1, 16)],
    }
    console = Console(width=200, record=True)
    render_status(info, console)
    text = console.export_text()

    assert "name-00" in text  # running: always shown
    assert all(f"name-{i:02d}" in text for i in range(1, FINISHED_SHOWN + 1))
    assert not any(f"name-{i:02d}" in text for i in range(FINISHED_SHOWN + 1, 16))
    assert f"{15 - FINISHED_SHOWN} more finished" in text


# -- ids by a unique prefix ---------------------------------------------------------------------


def test_system_result_and_cancel_system_take_a_unique_prefix(cluster, app):
    with cluster.connect() as gone:  # detached: no one else collects its result
        system_id = gone.submit_system(Held()).system_id
    # As another process would, knowing only the short id `taskswarm status` showed.
    app.cancel_system(system_id[:13])
    with pytest.raises(ts.TaskSystemError, match=f"held-open \\({system_id}\\) was cancelled"):
        app.system_result(system_id[:13], timeout=30)


def test_an_ambiguous_prefix_lists_its_candidates_and_an_unknown_one_says_so(app):
    for suffix in ("1", "2"):
        app.submit_system(Sweep(1, system_id=f"names-ab-{suffix}")).result(timeout=30)

    with pytest.raises(ts.AmbiguousTaskSystem) as ambiguous:
        app.system_result("names-ab")
    assert "'names-ab' begins the ids of 2 task systems" in str(ambiguous.value)
    assert "names-ab-1 (my-sweep, complete), names-ab-2 (my-sweep, complete)" in str(
        ambiguous.value
    )
    assert "give more of the id" in str(ambiguous.value)
    with pytest.raises(ts.AmbiguousTaskSystem):
        app.cancel_system("names-ab")
    with pytest.raises(ts.UnknownTaskSystem, match="no task system with id names-zz, nor one"):
        app.system_result("names-zz")
    with pytest.raises(ts.UnknownTaskSystem, match="no task system with id names-zz"):
        app.cancel_system("names-zz")


def test_taskswarm_result_takes_a_prefix_and_explains_a_wrong_one(cluster, app, nodes: Nodes):
    with cluster.connect() as gone:  # detached: its result waits on the master
        handle = gone.submit_system(Sweep(5, system_id="names-cli-only"))
    app.submit_system(Sweep(1, system_id="names-cli-other")).result(timeout=30)
    where = ("--master", cluster.address, "--key-file", cluster.key_file)
    cwd = str(Path(__file__).parent)

    out = nodes.run("result", "names-cli-on", *where, "--timeout", "60", cwd=cwd)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "30" and handle.system_id == "names-cli-only"

    out = nodes.run("result", "names-cli", *where, cwd=cwd)
    assert out.returncode == 1
    assert "names-cli-only (my-sweep, " in out.stderr and "names-cli-other (" in out.stderr
    assert "Traceback" not in out.stderr


def test_the_api_takes_a_prefix_409s_an_ambiguous_one_and_404s_an_unknown_one(cluster, app, url):
    held = app.submit_system(Held(system_id="names-api-held"))
    app.submit_system(Sweep(1, system_id="names-api-done")).result(timeout=30)
    token = cluster.key.dashboard_token()

    code, body = get(url + "/api/systems/names-api-h")
    assert code == 200 and json.loads(body)["id"] == "names-api-held"
    code, body = get(url + "/api/systems/names-api")
    assert code == 409 and "names-api-done (my-sweep, complete)" in body
    assert "names-api-held (held-open, running)" in body
    code, body = get(url + "/api/systems/names-api-x")
    assert code == 404 and "no task system with id names-api-x" in body

    assert post(url + "/api/systems/names-api/cancel", token)[0] == 409
    assert post(url + "/api/systems/names-api-x/cancel", token)[0] == 404
    assert post(url + "/api/systems/names-api-h/cancel", token) == (200, '{"ok": true}')
    with pytest.raises(ts.TaskSystemError, match="cancelled"):
        held.result(timeout=30)


ids = st.lists(st.text("ab-1", min_size=1, max_size=5), max_size=8, unique=True)


@given(known=ids, given_id=st.text("ab-1", max_size=5))
def test_a_prefix_names_the_one_id_it_begins_or_an_exact_id(known, given_id):
    found = look_up(given_id, known, lambda system_id: "state")
    fits = [i for i in known if i.startswith(given_id)] if given_id else []
    if given_id in known:
        assert matching(given_id, known) == [given_id] and found.system_id == given_id
    elif len(fits) == 1:
        assert found.system_id == fits[0]
    else:
        assert found.system_id is None
        assert found.error == ("ambiguous-system" if fits else "unknown-system")
        assert all(f"{i} (state)" in found.reason for i in sorted(fits)[:LISTED])


# -- the journal -----------------------------------------------------------------------------


def test_the_journal_keeps_a_systems_name(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite3")
    journal.add_system("s1", "app", b"system", "my-sweep")
    journal.close()
    again = Journal(tmp_path / "journal.sqlite3")
    try:
        (saved,) = again.load().systems
    finally:
        again.close()
    assert (saved.system_id, saved.name) == ("s1", "my-sweep")


def test_a_journal_from_before_names_gets_the_column_and_its_systems_no_name(tmp_path):
    path = tmp_path / "journal.sqlite3"
    with sqlite3.connect(path) as db:  # the systems table as an earlier taskswarm made it
        db.execute(
            "CREATE TABLE systems (system_id TEXT PRIMARY KEY, client_id TEXT NOT NULL,"
            " snapshot BLOB NOT NULL, restored INTEGER NOT NULL DEFAULT 0,"
            " applied_seq INTEGER NOT NULL DEFAULT 0, outcome BLOB,"
            " failed INTEGER NOT NULL DEFAULT 0, ended_at REAL)"
        )
        db.execute("INSERT INTO systems (system_id, client_id, snapshot) VALUES ('old', 'a', x'')")
    db.close()
    journal = Journal(path)
    try:
        journal.add_system("new", "a", b"system", "named")
        names = {s.system_id: s.name for s in journal.load().systems}
    finally:
        journal.close()
    assert names == {"old": "", "new": "named"}
