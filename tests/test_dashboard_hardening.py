"""The dashboard's port cannot hurt the router: it keeps a capped number of connections, closes
the ones that never finish their headers or sit idle, answers only to the Host names it knows,
never fails with a 500 on a malformed header, and says so when it is bound beyond loopback.

Most tests run a ``DashboardServer`` in this process against a stand-in master, with short
timeouts; the last runs a real master under ``ulimit -n 1024`` against 1,100 half-sent requests.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import taskswarm as ts
from conftest import Nodes, free_port, wait_for
from taskswarm.dashboard import DashboardServer
from taskswarm.dashboard.limits import connection_cap
from taskswarm.protocol.addresses import primary_host

pytestmark = pytest.mark.timeout(60)

TOKEN = "0123456789abcdef0123456789abcdef"
ACTIONS = [
    "/api/slaves/s1/resize",
    "/api/slaves/s1/drain",
    "/api/tasks/t1/cancel",
    "/api/systems/y1/cancel",
]


class StandIn:
    """Answers the dashboard's questions like a master with nothing in it, and remembers every
    action that reached it."""

    def __init__(self) -> None:
        self.actions: list[str] = []
        self.systems = self
        self.scheduler = SimpleNamespace(tasks={})

    def status(self) -> dict[str, Any]:
        tasks = {"queued": 0, "assigned": 0}
        return {"slaves": [], "applications": [], "stats": [], "tasks": tasks}

    def latest_errors(self, limit: int) -> list[dict[str, Any]]:
        return []

    def resize_slave(self, slave_id: str, workers: int) -> bool:
        self.actions.append("resize")
        return False

    def drain_slave(self, slave_id: str) -> bool:
        self.actions.append("drain")
        return False

    def cancel_task(self, task_id: str) -> bool:
        self.actions.append("cancel task")
        return False

    def cancel(self, system_id: str) -> bool:
        self.actions.append("cancel system")
        return False


@contextmanager
def serving(host: str = "127.0.0.1", **options: Any) -> Iterator[tuple[DashboardServer, int]]:
    """A dashboard on ``host`` (a free port) for a ``StandIn``; stopped whatever happens."""
    master = StandIn()

    def ask(question: Any) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.set_result(question(master))
        return future

    server = DashboardServer(ask, host, 0, TOKEN, **options)
    server.master = master  # type: ignore[attr-defined]
    url = server.start()
    try:
        yield server, int(url.rsplit(":", 1)[1])
    finally:
        server.stop()


def exchange(port: int, request: bytes, timeout: float = 5.0, host: str = "127.0.0.1") -> bytes:
    """Send ``request`` raw and read the answer until the server closes the connection."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(request)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def get(port: int, path: str, host_header: str | None, extra: str = "") -> int:
    host_line = f"Host: {host_header}\r\n" if host_header is not None else ""
    request = f"GET {path} HTTP/1.1\r\n{host_line}{extra}Connection: close\r\n\r\n"
    return status_of(exchange(port, request.encode()))


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


# -- Host names --------------------------------------------------------------------------------


def test_a_request_naming_an_unknown_host_is_refused_with_what_to_do():
    with serving() as (_, port):
        answer = exchange(port, b"GET /api/status HTTP/1.1\r\nHost: rebound.example:8787\r\n"
                                b"Connection: close\r\n\r\n")  # fmt: skip
        assert status_of(answer) == 421
        assert b"rebound.example" in answer and b"--dashboard-host" in answer
        assert b"localhost" in answer
        for path in ("/", "/api/errors", "/metrics", "/static/dashboard.js", "/api/events"):
            assert get(port, path, "rebound.example") == 421, path


def test_loopback_names_ip_addresses_and_no_host_at_all_are_served():
    with serving() as (_, port):
        for name in ("127.0.0.1", f"127.0.0.1:{port}", "localhost", f"LocalHost.:{port}",
                     "[::1]", f"[::1]:{port}", "app.localhost", "10.1.2.3:80"):  # fmt: skip
            assert get(port, "/api/status", name) == 200, name
        old = exchange(port, b"GET /api/status HTTP/1.0\r\n\r\n")  # HTTP/1.0 sends no Host
        assert status_of(old) == 200


def test_extra_names_are_served_and_others_still_refused():
    with serving(hosts=["dash.example.org", "Proxy.Example"]) as (_, port):
        assert get(port, "/api/status", "dash.example.org") == 200
        assert get(port, "/api/status", f"DASH.example.org.:{port}") == 200
        assert get(port, "/api/status", "proxy.example") == 200
        assert get(port, "/api/status", "evil.example.org") == 421


# -- malformed headers ---------------------------------------------------------------------------


def test_a_token_that_is_not_ascii_is_a_401_and_logs_no_error(caplog):
    caplog.set_level(logging.INFO)
    with serving() as (server, port):
        for path in ACTIONS:
            request = (
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\n"
                "Connection: close\r\n"
            ).encode() + "Authorization: Bearer é\r\n\r\n".encode()
            answer = exchange(port, request)
            assert status_of(answer) == 401, (path, answer)
        assert server.master.actions == []  # type: ignore[attr-defined]
    assert errors_logged(caplog) == []
    assert "Traceback" not in caplog.text


@pytest.mark.parametrize(
    "header",
    [
        "Authorization: Bearer \xff\xfe",
        "Authorization: Basic é",
        "Range: bytes=é-",
        "Range: bytes=9-1",
        "If-Modified-Since: not a date é",
        'If-None-Match: "é',
        "Accept-Encoding: é;q=x",
        "Cookie: é=é",
        "Content-Type: é/é",
    ],
)
def test_no_malformed_header_gets_a_server_error(header, caplog):
    caplog.set_level(logging.INFO)
    with serving() as (_, port):
        for path in ("/", "/static/dashboard.css", "/api/status", "/api/tasks", "/metrics"):
            request = f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            answer = exchange(port, request.encode() + header.encode() + b"\r\n\r\n")
            assert status_of(answer) < 500, (path, answer[:200])
        body = b'{"workers": 1}'
        request = (
            f"POST /api/slaves/s1/resize HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: {len(body)}\r\n"
        )
        answer = exchange(port, request.encode() + header.encode() + b"\r\n\r\n" + body)
        assert status_of(answer) < 500, answer[:200]
    assert errors_logged(caplog) == []


# -- timeouts ------------------------------------------------------------------------------------


def test_a_half_sent_request_is_closed_after_the_header_timeout():
    with serving(header_timeout=0.5) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # no blank line
            started = time.monotonic()
            assert get(port, "/api/status", "127.0.0.1") == 200  # others are served meanwhile
            answer = read_to_end(slow)
            waited = time.monotonic() - started
        assert status_of(answer) == 408
        assert 0.3 < waited < 5


def test_a_trickled_request_is_closed_after_the_header_timeout_too():
    with serving(header_timeout=0.5) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            started = time.monotonic()
            slow.sendall(b"GET /api/status HTTP/1.1\r\n")
            slow.settimeout(0.1)
            answer = None
            while answer is None and time.monotonic() - started < 5:
                try:
                    slow.sendall(b"X-Slow: 1\r\n")  # a header line every 0.1s, never the last
                    answer = slow.recv(100)
                except TimeoutError:
                    continue
                except OSError:  # closed, and reset by the line sent after: closed all the same
                    answer = b""
            waited = time.monotonic() - started
        assert answer is not None, "the connection was still open after 5s"
        assert answer == b"" or answer.startswith(b"HTTP/1.1 408")
        assert 0.3 < waited < 3


def test_an_idle_keep_alive_connection_is_closed():
    with serving(keepalive_timeout=0.5) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as idle:
            idle.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            started = time.monotonic()
            answer = read_to_end(idle)  # the answer, then the close
            assert status_of(answer) == 200 and b'"slaves"' in answer
            assert time.monotonic() - started < 5


def test_an_event_stream_outlives_both_timeouts():
    with serving(header_timeout=0.3, keepalive_timeout=0.3) as (_, port):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stream:
            stream.sendall(b"GET /api/events HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            seen = b""
            started = time.monotonic()
            while seen.count(b"event: status") < 3:  # one a second: past both timeouts
                chunk = stream.recv(65536)
                assert chunk, f"the stream ended after {time.monotonic() - started:.1f}s"
                seen += chunk
            assert seen.startswith(b"HTTP/1.1 200")


# -- the connection cap --------------------------------------------------------------------------


def test_connections_past_the_cap_are_answered_503_and_closed_at_once():
    with serving(max_connections=5, header_timeout=30) as (server, port), ExitStack() as stack:
        held = [
            stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=10))
            for _ in range(5)
        ]
        wait_for(lambda: server.guard is not None and len(server.guard.open) == 5, timeout=5)
        started = time.monotonic()
        excess = [exchange(port, b"") for _ in range(15)]
        assert time.monotonic() - started < 5
        assert all(answer.startswith(b"HTTP/1.1 503") for answer in excess)
        assert server.guard is not None and server.guard.refused == 15
        assert len(server.guard.open) == 5
        for sock in held:
            sock.close()
        wait_for(lambda: get(port, "/api/status", "127.0.0.1") == 200, timeout=10)


def test_the_cap_is_a_quarter_of_the_open_file_limit_at_most():
    assert connection_cap(1024) == 256
    assert connection_cap(256) == 64
    assert connection_cap(1_000_000) == 256
    assert connection_cap(3) == 1


# -- bound beyond loopback -------------------------------------------------------------------------


def test_a_dashboard_bound_beyond_loopback_warns_and_actions_still_need_the_token(caplog):
    caplog.set_level(logging.INFO)
    with serving("0.0.0.0") as (server, port):
        warnings = [
            r.getMessage()
            for r in caplog.records
            if r.levelno == logging.WARNING and r.name.startswith("taskswarm.dashboard")
        ]
        assert len(warnings) == 1, caplog.text
        assert "reachable from the network" in warnings[0]
        assert "token" in warnings[0] and "--dashboard 127.0.0.1:" in warnings[0]
        # Reach it the way another machine would, where this one has such an address.
        address = primary_host()
        address = address if address[0].isdigit() else "127.0.0.1"
        for path in ACTIONS:
            for authorization in ("", "Authorization: Bearer wrong\r\n",
                                  "Authorization: Basic " + TOKEN + "\r\n"):  # fmt: skip
                request = (
                    f"POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
                    f"{authorization}Content-Type: application/json\r\n"
                    'Content-Length: 14\r\n\r\n{"workers": 1}'
                )
                answer = exchange(port, request.encode(), host=address)
                assert status_of(answer) == 401, (path, authorization, answer[:200])
        assert server.master.actions == []  # type: ignore[attr-defined]
        request = (
            f"POST /api/slaves/s1/drain HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
        )
        assert status_of(exchange(port, request.encode(), host=address)) == 404
        assert server.master.actions == ["drain"]  # type: ignore[attr-defined]


def test_a_dashboard_on_loopback_does_not_warn(caplog):
    caplog.set_level(logging.INFO)
    with serving("127.0.0.1"):
        pass
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# -- a real master under attack ------------------------------------------------------------------

#: The open-file limit the master runs under, as a shell's ``ulimit -n 1024`` gives.
FD_LIMIT = 1024
#: Half-sent requests held open at once: more than the master could hold without the cap.
FLOOD = 1100
#: Caps on what they may cost the master: its own descriptors (about 30 when idle) plus the
#: dashboard's 256, with room to spare, and its memory.
MAX_MASTER_FDS = 600
MAX_MASTER_RSS_MIB = 400
#: Start a command with soft and hard open-file limits of ``FD_LIMIT``, so the master's
#: raising of its soft limit to the hard one stays under the cap (``prlimit`` without util-linux).
_LIMITED = (
    "import resource, runpy, sys; "
    f"resource.setrlimit(resource.RLIMIT_NOFILE, ({FD_LIMIT}, {FD_LIMIT})); "
    "runpy.run_module('taskswarm', run_name='__main__', alter_sys=True)"
)


def master_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def master_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def half_sent_requests(port: int, count: int, stack: ExitStack) -> list[socket.socket]:
    """Open up to ``count`` connections, each with a request line and no end of headers; stops
    early when the server accepts no more (as one out of file descriptors does)."""
    opened = []
    for _ in range(count):
        try:
            sock = stack.enter_context(socket.create_connection(("127.0.0.1", port), timeout=3))
        except OSError:
            break
        opened.append(sock)
        try:
            sock.sendall(b"GET /api/status HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        except OSError:
            pass  # answered and closed already: the cap at work
    return opened


def still_held(sock: socket.socket) -> bool:
    """Whether the server still holds ``sock`` open: it has neither answered (503 over the cap,
    408 past the header timeout) nor closed it."""
    sock.setblocking(False)
    try:
        sock.recv(64)
    except BlockingIOError:
        return True
    except OSError:
        pass
    return False


@pytest.fixture
def many_files() -> Iterator[None]:
    """This test process may open the flood's sockets (a soft limit of 1024 would stop it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = FLOOD + 200
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the open-file hard limit ({hard}) is below the {wanted} this test needs")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, wanted), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_under_1100_half_open_connections_the_master_still_runs_a_task(
    many_files, nodes: Nodes, key_file: str, tmp_path: Path
):
    address = f"tcp://127.0.0.1:{free_port()}"
    dashboard_port = free_port()
    ready = tmp_path / "ready"
    with open(tmp_path / "master.log", "w") as log_file:
        master = subprocess.Popen(
            [sys.executable, "-c", _LIMITED, "master", "--bind", address,
             "--key-file", key_file, "--no-state-dir", "--ready-file", str(ready),
             "--dashboard", f"127.0.0.1:{dashboard_port}", "--dashboard-host", "dash.example"],
            stdin=subprocess.DEVNULL, stdout=log_file, stderr=log_file,
        )  # fmt: skip
    nodes.processes.append(master)  # killed and reaped by the fixture, whatever happens
    wait_for(lambda: ready.exists() or master.poll() is not None, timeout=30)
    assert master.poll() is None, (tmp_path / "master.log").read_text()
    limits = Path(f"/proc/{master.pid}/limits").read_text()
    assert f"Max open files            {FD_LIMIT}                 {FD_LIMIT}" in limits
    nodes.start("slave", address, "--key-file", key_file, "--workers", "1")

    peak_fds, rss = 0, 0.0
    with ExitStack() as stack:
        started = time.monotonic()
        held = half_sent_requests(dashboard_port, FLOOD, stack)
        flooded = time.monotonic() - started
        peak_fds = master_fds(master.pid)
        with ts.connect(address, key_file=key_file, connect_timeout=10) as app:
            assert app.submit(pow, 2, 10).result(timeout=30) == 1024
        peak_fds = max(peak_fds, master_fds(master.pid))
        rss = master_rss_mib(master.pid)
        open_now = sum(map(still_held, held))
        print(f"{len(held)} half-sent requests in {flooded:.1f}s: the master had {peak_fds} fds "
              f"and {rss:.0f} MiB RSS, and held {open_now} of them")  # fmt: skip
        assert len(held) == FLOOD  # the dashboard kept accepting, and closing
        assert open_now <= 256
        assert peak_fds < MAX_MASTER_FDS
        assert rss < MAX_MASTER_RSS_MIB
        # The half-sent ones time out, and the dashboard serves again, by the names it knows.
        url = f"http://127.0.0.1:{dashboard_port}/api/status"
        wait_for(lambda: served(url) == 200, timeout=20, interval=0.2)
    assert served(url, "dash.example") == 200
    assert served(url, "rebound.example") == 421
    log_text = (tmp_path / "master.log").read_text()
    assert "Traceback" not in log_text and "ERROR" not in log_text, log_text[-2000:]


def served(url: str, host: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return 0
