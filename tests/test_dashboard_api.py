"""The master's HTTP API against a real LocalCluster: the same numbers as `taskswarm status
--json`, Prometheus text the Prometheus parser reads, clear 400s, and a master that runs on
when its dashboard port is taken."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

import taskswarm as ts
from conftest import Nodes, free_port, wait_for
from taskswarm.protocol.keys import load_keys


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ts.LocalCluster, ts.Application, str]]:
    with ts.LocalCluster(slaves=2, workers=1, dashboard="127.0.0.1:0") as cluster:
        app = cluster.connect()
        futures = app.push_tasks(ts.FunctionTask(abs, -i) for i in range(50))
        assert sorted(f.result(timeout=30) for f in futures) == list(range(50))
        url = app.status()["master"]["dashboard"]
        assert url and url.startswith("http://127.0.0.1:")
        assert cluster.dashboard_link == url
        # A slave's measures come with its next heartbeat: the cluster is idle once they have.
        wait_for(lambda: _measured(app.status()), timeout=30)
        yield cluster, app, url


def _measured(status: dict) -> bool:
    """Every slave that ran tasks has reported its measures of them."""
    ran = {s["id"] for s in status["slaves"] if s["done"]}
    reported = {
        row["labels"].get("slave") for row in status["stats"] if row["name"] == "slave_task_seconds"
    }
    return bool(ran) and ran <= reported


def comparable(status: dict) -> dict:
    """What two reads of an idle cluster must agree on (uptime and timings move on)."""
    return {
        "slaves": sorted(
            (s["id"], s["state"], s["workers"], s["in_flight"], s["done"], s["failed"])
            for s in status["slaves"]
        ),
        "tasks": status["tasks"],
        "systems": status["systems"],
        "errors": status["errors"],
        "counts": sorted((row["name"], json.dumps(row["labels"])) for row in status["stats"]),
    }


@pytest.mark.timeout(60)
def test_the_api_and_status_json_report_the_same_numbers(served, nodes: Nodes):
    cluster, _, url = served
    code, kind, body = get(url + "/api/status")
    assert code == 200 and kind.startswith("application/json")
    cli = nodes.run("status", "--master", cluster.address, "--key-file", cluster.key_file, "--json")
    assert cli.returncode == 0, cli.stderr

    api, printed = json.loads(body), json.loads(cli.stdout)

    assert comparable(api) == comparable(printed)

    def connected(info: dict) -> set[str]:
        return {a["id"] for a in info["applications"] if a["state"] == "connected"}

    assert len(connected(printed) - connected(api)) == 1  # the status command itself
    assert sum(s["done"] for s in api["slaves"]) >= 50


@pytest.mark.timeout(60)
def test_metrics_parse_as_prometheus_text_and_agree_with_the_api(served):
    _, _, url = served
    code, kind, body = get(url + "/metrics")
    assert code == 200 and kind.startswith("text/plain")

    families = {f.name: f for f in text_string_to_metric_families(body)}

    assert families["taskswarm_slaves_active"].samples[0].value == 2
    assert families["taskswarm_tasks_queued"].samples[0].value == 0
    per_slave = {
        s.labels["slave"]: s.value
        for s in families["taskswarm_task_seconds"].samples
        if s.name == "taskswarm_task_seconds_count"
    }
    _, _, stats = get(url + "/api/stats")
    expected = {
        row["labels"]["slave"]: row["count"]
        for row in json.loads(stats)
        if row["name"] == "task_seconds"
    }
    assert per_slave == expected and sum(per_slave.values()) >= 50


@pytest.mark.timeout(60)
def test_every_documented_path_answers_what_its_document_promises(served):
    _, _, url = served
    code, _, body = get(url + "/api/openapi.json")
    assert code == 200
    document = json.loads(body)
    assert document["openapi"].startswith("3.")
    for path, operations in document["paths"].items():
        if "get" not in operations:
            continue  # actions: see the tests below
        if "{" in path:
            continue  # one of many, by its id: see test_system_names.py
        code, kind, body = get(url + path)
        assert code == 200, path
        schema = operations["get"]["responses"]["200"]["content"]
        if "application/json" in schema:
            value = json.loads(body)
            for key in schema["application/json"]["schema"].get("required", []):
                assert key in value, (path, key)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "query, says",
    [
        ("limit=lots", "limit must be a whole number"),
        ("limit=0", "limit must be between 1 and 1000"),
        ("offset=-1", "offset must be between"),
        ("state=running", "state must be one of queued, assigned"),
    ],
)
def test_a_malformed_query_gets_a_400_that_says_what_is_wrong(served, query, says):
    _, _, url = served
    code, _, body = get(f"{url}/api/tasks?{query}")
    assert code == 400
    assert says in body


@pytest.mark.timeout(60)
def test_tasks_are_listed_by_state_and_paged(served):
    _, app, url = served
    gate = app.submit(__import__("time").sleep, 3)  # holds one worker while we look
    try:
        wait_for(lambda: json.loads(get(url + "/api/tasks?state=assigned")[2])["total"] >= 1)
        _, _, body = get(url + "/api/tasks?state=assigned&limit=1&offset=0")
        page = json.loads(body)
        assert page["limit"] == 1 and len(page["tasks"]) == 1
        assert page["tasks"][0]["state"] == "assigned" and page["tasks"][0]["slave"]
    finally:
        gate.result(timeout=30)


@pytest.mark.timeout(60)
def test_a_master_whose_dashboard_port_is_taken_runs_without_it(nodes: Nodes, key_file: str):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        address = f"tcp://127.0.0.1:{free_port()}"
        master = nodes.start(
            "master", "--bind", address, "--key-file", key_file, "--no-state-dir",
            "--dashboard", f"127.0.0.1:{busy}",
        )  # fmt: skip
        with ts.Application(address, load_keys(key_file), connect_timeout=20) as app:
            assert app.status()["master"]["dashboard"] is None
        master.terminate()
        _, err = master.communicate(timeout=20)
    assert f"dashboard not started: cannot listen on 127.0.0.1:{busy}" in err
    assert "Traceback" not in err


def test_a_malformed_dashboard_address_is_refused_before_anything_starts(
    nodes: Nodes, key_file: str
):
    out = nodes.run(
        "master", "--bind", f"tcp://127.0.0.1:{free_port()}", "--key-file", key_file,
        "--no-state-dir", "--dashboard", "localhost",
    )  # fmt: skip
    assert out.returncode != 0
    assert "dashboard address 'localhost' is not HOST:PORT" in out.stderr
    assert "Traceback" not in out.stderr


def post(url: str, body: object = None, token: str | None = None) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST")
    request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("token", [None, "wrong", ""])
def test_an_action_without_the_right_token_is_refused_and_says_how_to_get_it(served, token):
    cluster, app, url = served
    slave = app.status()["slaves"][0]
    code, body = post(f"{url}/api/slaves/{slave['id']}/resize", {"workers": 2}, token)
    assert code == 401
    assert "Authorization: Bearer" in body and "taskswarm status" in body
    assert app.status()["slaves"][0]["workers"] == slave["workers"]


@pytest.mark.timeout(60)
def test_resize_with_the_token_changes_the_slaves_pool(served):
    cluster, app, url = served
    token = cluster.key.dashboard_token()
    slave_id = app.status()["slaves"][0]["id"]

    def workers() -> int:
        return next(s["workers"] for s in app.status()["slaves"] if s["id"] == slave_id)

    try:
        assert post(f"{url}/api/slaves/{slave_id}/resize", {"workers": 2}, token)[0] == 200
        wait_for(lambda: workers() == 2)
    finally:
        post(f"{url}/api/slaves/{slave_id}/resize", {"workers": 1}, token)
        wait_for(lambda: workers() == 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "path, body, code, says",
    [
        ("/api/slaves/nobody/resize", {"workers": 1}, 404, "no slave 'nobody'"),
        ("/api/slaves/{slave}/resize", {"workers": -1}, 400, "workers must be a whole number"),
        ("/api/slaves/{slave}/resize", {"workers": "two"}, 400, "workers must be a whole number"),
        ("/api/slaves/{slave}/resize", None, 400, '{"workers": 4}'),
        ("/api/tasks/nothing/cancel", None, 404, "no live task 'nothing'"),
        ("/api/systems/nothing/cancel", None, 404, "no running task system 'nothing'"),
        ("/api/slaves/nobody/drain", None, 404, "no slave 'nobody'"),
    ],
)
def test_a_bad_action_gets_an_error_that_says_what_is_wrong(served, path, body, code, says):
    cluster, app, url = served
    slave = app.status()["slaves"][0]["id"]
    answer = post(url + path.format(slave=slave), body, cluster.key.dashboard_token())
    assert answer[0] == code
    assert says in answer[1]


@pytest.mark.timeout(60)
def test_a_task_cancelled_through_the_api_fails_its_future_with_a_task_error(served):
    cluster, app, url = served
    gate = app.submit(__import__("time").sleep, 30)
    task_id = wait_for(
        lambda: next(
            (t["id"] for t in json.loads(get(url + "/api/tasks?state=assigned")[2])["tasks"]),
            None,
        )
    )
    assert post(f"{url}/api/tasks/{task_id}/cancel", None, cluster.key.dashboard_token())[0] == 200
    with pytest.raises(ts.TaskError, match="cancelled through the master's API"):
        gate.result(timeout=20)


@pytest.mark.timeout(60)
def test_a_drained_slave_leaves_and_the_other_takes_the_work():
    with ts.LocalCluster(slaves=2, workers=1, dashboard="127.0.0.1:0") as cluster:
        app = cluster.connect()
        url = app.status()["master"]["dashboard"]
        first, second = (s["id"] for s in app.status()["slaves"])

        answer = post(f"{url}/api/slaves/{first}/drain", None, cluster.key.dashboard_token())

        assert answer[0] == 200
        wait_for(
            lambda: [s["id"] for s in app.status()["slaves"] if s["state"] == "active"] == [second]
        )
        futures = app.push_tasks(ts.FunctionTask(abs, -i) for i in range(20))
        assert sorted(f.result(timeout=30) for f in futures) == list(range(20))


@pytest.mark.timeout(60)
def test_status_prints_the_dashboard_url_with_its_token(served, nodes: Nodes):
    cluster, _, url = served
    out = nodes.run("status", "--master", cluster.address, "--key-file", cluster.key_file)
    assert out.returncode == 0, out.stderr
    assert f"{url}/?token={cluster.key.dashboard_token()}" in out.stdout.replace("\n", "")


def explode(x: int) -> None:
    raise ValueError(f"bad input {x}")


@pytest.mark.timeout(60)
def test_a_failed_task_shows_with_its_remote_traceback_in_api_and_status(served, nodes: Nodes):
    cluster, app, url = served
    with pytest.raises(ValueError, match="bad input 7"):
        app.submit(explode, 7).result(timeout=30)

    code, _, body = get(url + "/api/errors?limit=5")
    assert code == 200
    newest = json.loads(body)[0]
    assert newest["error"] == "ValueError: bad input 7"
    assert newest["status"] == "error" and newest["application_id"] == app.client_id
    assert "in explode" in newest["traceback"] and newest["slave_id"]

    printed = nodes.run("status", "--master", cluster.address, "--key-file", cluster.key_file)
    assert printed.returncode == 0, printed.stderr
    assert "latest errors" in printed.stdout and "ValueError: bad input 7" in printed.stdout


@pytest.mark.timeout(60)
def test_nodes_are_slaves_and_applications_each_with_its_kind(served):
    _, app, url = served
    code, _, body = get(url + "/api/nodes")
    assert code == 200
    nodes = json.loads(body)
    assert {s["kind"] for s in nodes["slaves"]} == {"slave"}
    mine = [a for a in nodes["applications"] if a["id"] == app.client_id]
    assert mine and mine[0]["kind"] == "application" and mine[0]["state"] == "connected"
    assert mine[0]["done"] >= 50 and mine[0]["host"] and mine[0]["pid"]


@pytest.mark.timeout(60)
def test_slaves_report_their_own_measures_labelled_with_the_slave(served):
    _, app, url = served

    def slave_rows() -> list[dict] | None:
        rows = [r for r in app.status()["stats"] if r["name"] == "slave_task_seconds"]
        return rows if sum(r["count"] for r in rows) >= 50 else None

    rows = wait_for(slave_rows, timeout=30)
    slaves = {s["id"] for s in app.status()["slaves"]}
    assert {r["labels"]["slave"] for r in rows} <= slaves
    assert all(0 <= r["min"] <= r["avg"] <= r["max"] for r in rows)
    code, _, text = get(url + "/metrics")
    assert code == 200 and 'taskswarm_slave_task_seconds_count{slave="' in text


def first_events(url: str, count: int) -> list[dict]:
    """The first ``count`` status events of one /api/events stream."""
    found = []
    with urllib.request.urlopen(url + "/api/events", timeout=10) as stream:
        for raw in stream:
            line = raw.decode().strip()
            if line.startswith("data: "):
                found.append(json.loads(line[len("data: ") :]))
                if len(found) == count:
                    return found
    return found


@pytest.mark.timeout(60)
def test_pages_open_at_once_each_get_their_own_live_stream(served):
    from concurrent.futures import ThreadPoolExecutor

    _, _, url = served
    with ThreadPoolExecutor(4) as pool:
        streams = list(pool.map(lambda _: first_events(url, 3), range(4)))
    for events in streams:
        assert len(events) == 3
        uptimes = [event["master"]["uptime"] for event in events]
        assert uptimes == sorted(uptimes) and uptimes[0] < uptimes[-1]  # live, not one replayed


@pytest.mark.timeout(60)
def test_the_task_stream_says_which_worker_ran_each_task_and_when(served):
    _, app, url = served
    slaves = {s["id"] for s in app.status()["slaves"]}

    code, _, body = get(url + "/api/stream")
    stream = json.loads(body)

    assert code == 200 and stream["kept"] == len(stream["tasks"]) >= 50
    for began, ended, worker, _, _, status in stream["tasks"]:
        slave, _, pid = worker.rpartition("/")
        assert slave in slaves and int(pid) > 0
        assert began <= ended and status in ("ok", "error", "cancelled", "crash", "retry")
    assert sum(1 for task in stream["tasks"] if task[3] == "abs") >= 50
    # A page asks only for what it has not seen: the tasks numbered after its last one (the
    # cluster is idle meanwhile: nothing else runs tasks on it while this test runs).
    _, _, body = get(f"{url}/api/stream?after={stream['last']}")
    assert json.loads(body)["tasks"] == []
    _, _, body = get(url + "/api/stream?limit=3")
    assert json.loads(body)["tasks"] == stream["tasks"][-3:]


@pytest.mark.timeout(60)
def test_the_history_has_a_sample_per_heartbeat_with_each_slaves_cpu_and_memory(served):
    _, app, url = served

    def history() -> dict | None:
        value = json.loads(get(url + "/api/history")[2])
        measured = all(s["rss"][-1] for s in value["slaves"].values())
        return value if value["kept"] >= 2 and len(value["slaves"]) >= 2 and measured else None

    value = wait_for(history, timeout=30)

    columns = ("time", "rate", "queued", "running")
    assert {len(value[c]) for c in columns} == {value["kept"]}
    assert value["time"] == sorted(value["time"])
    assert all(rate >= 0 for rate in value["rate"])
    for series in value["slaves"].values():
        assert len(series["cpu"]) == len(series["rss"]) == value["kept"]
    slaves = {s["id"]: s for s in app.status()["slaves"] if s["state"] == "active"}
    assert set(slaves) <= set(value["slaves"])
    for slave in slaves.values():  # what status shows, as the heartbeat measured it
        assert slave["rss"] > 1_000_000 and slave["cpu"] >= 0


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "query, says",
    [
        ("after=-1", "after must be between 0 and"),
        ("after=newest", "after must be a whole number"),
        ("limit=0", "limit must be between 1 and 2000"),
        ("limit=2001", "limit must be between 1 and 2000"),
    ],
)
def test_a_malformed_stream_query_gets_a_400_that_says_what_is_wrong(served, query, says):
    _, _, url = served
    code, _, body = get(f"{url}/api/stream?{query}")
    assert code == 400 and says in body
