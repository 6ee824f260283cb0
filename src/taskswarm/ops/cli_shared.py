"""What the `taskswarm` commands share: their common options, and how a node's process behaves.

One declaration of each option several commands take (``--env``, ``--master`` with
``--key-file``, ``--json``), so their spelling and help cannot drift apart; and what every node
command does the same way: stop cleanly on SIGINT/SIGTERM (or when a LocalCluster's owner dies),
tune the garbage collector for many long-lived records, refuse to start without a key file.
"""

from __future__ import annotations

import gc
import logging
import os
import select
import signal
import time
from collections.abc import Callable
from dataclasses import fields
from typing import Any

import click

from .config import DEFAULT_BIND, MasterConfig, option

__all__ = [
    "announce_ready",
    "connect",
    "env_option",
    "json_option",
    "master_option",
    "required_key_file",
    "seconds_option",
    "stop_on_signals",
    "tune_gc",
    "wait_for_master",
]

log = logging.getLogger("taskswarm")

_Decorator = Callable[[Any], Any]


def env_option() -> _Decorator:
    """``--env DIR`` of a command (the root group finds it before the command's defaults are
    read, since they come from it; here it only documents and accepts it)."""
    return click.option(
        "--env",
        metavar="DIR",
        expose_value=False,
        type=click.Path(file_okay=False),
        help="Use the environment DIR made by `taskswarm init` (settings, plugins, logs, state, "
        "key).",
    )


def json_option(help: str) -> _Decorator:
    """``--json``: print what the command shows as JSON (``as_json``)."""
    return click.option("--json", "as_json", is_flag=True, help=help)


def seconds_option(flag: str, least: float, help: str, metavar: str | None = None) -> _Decorator:
    """An optional number of seconds, at least ``least`` (None when not given)."""
    return click.option(
        flag, type=click.FloatRange(least), default=None, metavar=metavar, help=help
    )


def master_option(help: str) -> _Decorator:
    """``--master`` and ``--key-file`` of commands that talk to a running master; the key
    file's option is the master setting's own."""
    key_option = option(next(f for f in fields(MasterConfig) if f.name == "key_file"))

    def decorate(function: Any) -> Any:
        function = key_option(function)
        return click.option(
            "--master",
            "master_address",
            envvar="TASKSWARM_MASTER",
            default=DEFAULT_BIND,
            show_default=True,
            help=help,
        )(function)

    return decorate


def required_key_file(path: str | None) -> str:
    """The key file a node cannot run without (click requires it; a settings record built in
    code may still lack it)."""
    if path is None:
        raise click.UsageError("--key-file is required (or TASKSWARM_KEY_FILE)")
    return path


def connect(address: str, key_file: str, timeout: float) -> Any:
    """A connection to the master at ``address``; a host name that does not resolve fails at
    once, naming it, instead of after ``timeout`` seconds of silence."""
    from ..client.application import connect
    from ..protocol.transport import unreachable_message, unresolvable

    if unresolvable(address) is not None:
        raise click.ClickException(unreachable_message(address, 0.0))
    return connect(address, key_file, connect_timeout=timeout)


def stop_on_signals(node: Any) -> None:
    """SIGINT/SIGTERM stop the node cleanly; so does the death of a LocalCluster's owner."""

    def handler(signum: int, frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        node.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    parent = click.get_current_context().find_root().obj["parent"]
    if parent is not None:
        node.parent_pid = parent


def tune_gc() -> None:
    """A node process holds many long-lived records (a million queued tasks, on a master) and
    makes almost no reference cycles: collect young objects less often, and never walk what
    was loaded at start-up again. Saves a fifth of the master's time per task."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


def _root_option(name: str) -> Any:
    return click.get_current_context().find_root().obj[name]


def announce_ready(*details: float) -> None:
    """Tell whoever started this node that it is ready, by closing the pipe it gave
    (``--ready-fd``; LocalCluster waits on it, as on an event, instead of polling), after a
    line ``ready`` with ``details`` (a slave: when its workers were started, monotonic)."""
    fd = _root_option("ready_fd")
    if fd is not None:
        with _quietly():
            os.write(fd, " ".join(["ready", *map(repr, details)]).encode() + b"\n")
        with _quietly():
            os.close(fd)


def wait_for_master(timeout: float = 30.0) -> None:
    """Return once the pipe ``--after-fd`` closes (its master listens, or died), or after
    ``timeout``: a slave that connected first would only try again ZeroMQ's reconnect
    interval later (100 ms and more), a third of a LocalCluster's start-up."""
    fd = _root_option("after_fd")
    if fd is None:
        return
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            if select.select([fd], [], [], left)[0] and not os.read(fd, 4096):
                return  # closed by every writer: the master listens (or is gone)
    except OSError:
        return
    finally:
        with _quietly():
            os.close(fd)


def _quietly() -> Any:
    import contextlib

    return contextlib.suppress(OSError)
