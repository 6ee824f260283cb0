"""A master that is not there yet, or a host name that does not resolve: every node says which,
in words, instead of waiting in silence or blaming a master that was never reachable."""

from __future__ import annotations

import time

import pytest

import taskswarm as ts
from conftest import free_port
from taskswarm.protocol.transport import unreachable_message, unresolvable

NOWHERE = "tcp://no-such-host.invalid:5555"

pytestmark = pytest.mark.timeout(120)


def read_until(stream, text: str) -> list[str]:
    """Lines of a node's log up to the first that holds ``text`` (the test's timeout guards)."""
    lines = []
    for line in stream:
        lines.append(line)
        if text in line:
            return lines
    raise AssertionError(f"the log ended without {text!r}:\n{''.join(lines)}")


def test_a_slave_says_it_waits_for_its_master_and_when_it_got_through(nodes, key_file):
    address = f"tcp://127.0.0.1:{free_port()}"
    slave = nodes.start("slave", address, "--key-file", key_file, "--workers", "1")
    waited = read_until(slave.stderr, "waiting for the master at")
    assert f"waiting for the master at {address}: no answer yet" in waited[-1]
    nodes.start("master", "--bind", address, "--key-file", key_file, "--no-dashboard")
    connected = read_until(slave.stderr, "connected to the master")
    assert f"connected to the master at {address} after waiting" in connected[-1]


def test_a_slave_names_a_host_that_does_not_resolve_and_keeps_trying(nodes, key_file):
    slave = nodes.start("slave", NOWHERE, "--key-file", key_file, "--workers", "1")
    line = read_until(slave.stderr, "waiting for the master")[-1]
    assert "'no-such-host.invalid' cannot be resolved" in line and "trying again" in line
    assert slave.poll() is None  # it keeps trying: the name may come to resolve


def test_status_and_run_name_a_host_that_does_not_resolve(nodes, key_file, tmp_path):
    status = nodes.run("status", "--master", NOWHERE, "--key-file", key_file)
    assert status.returncode == 1
    assert "'no-such-host.invalid' cannot be resolved" in status.stderr
    assert "Traceback" not in status.stderr
    (tmp_path / "app.py").write_text("raise SystemExit('the program must not start')\n")
    run = nodes.run("run", "app.py", "--master", NOWHERE, "--key-file", key_file, cwd=tmp_path)
    assert run.returncode == 1
    assert "'no-such-host.invalid' cannot be resolved" in run.stderr
    assert "must not start" not in run.stderr


def test_connect_names_a_host_that_does_not_resolve_at_once(key_file):
    started = time.monotonic()
    with pytest.raises(ts.MasterUnreachable, match="'no-such-host.invalid' cannot be resolved"):
        ts.connect(NOWHERE, key_file, connect_timeout=30)
    assert time.monotonic() - started < 30  # not after waiting its whole timeout


def test_a_resolvable_host_with_no_master_is_told_apart():
    assert unresolvable("tcp://127.0.0.1:5555") is None
    assert unresolvable("tcp://localhost:5555") is None
    assert unresolvable("ipc:///tmp/x.sock") is None
    message = unreachable_message("tcp://127.0.0.1:5555", 5.0)
    assert "no master answered at tcp://127.0.0.1:5555 within 5s" in message
