"""The commands that run a node: `taskswarm master` and `taskswarm slave`.

Apart from the other commands because these two are long-lived processes: they build the node
from its settings record, take over SIGINT/SIGTERM, tune the garbage collector, and serve until
stopped. Their options are the records' fields (``config.py``), not declared here.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .cli_shared import (
    announce_ready,
    env_option,
    required_key_file,
    stop_on_signals,
    tune_gc,
    wait_for_master,
)
from .config import MasterConfig, SlaveConfig, options
from .logs import show_system_logging

__all__ = ["master", "slave"]


@click.command()
@options(MasterConfig)
@env_option()
def master(**settings: Any) -> None:
    """Run a master node: it keeps the task queue and runs task systems."""
    config = MasterConfig(**settings)
    if config.system_log_level is not None:
        show_system_logging(config.system_log_level)
    from ..dashboard import parse_address
    from ..dashboard.limits import raise_fd_limit
    from ..master.journal import JournalUnusable
    from ..master.node import Master
    from ..protocol.keys import load_keys

    raise_fd_limit()  # a descriptor per peer: a shell's default 1024 must not cap the cluster
    key = load_keys(required_key_file(config.key_file))
    if config.curve and not key.curve:
        raise click.ClickException(
            f"--curve needs a key file with a CurveZMQ keypair; make one with "
            f"`taskswarm keygen --curve {config.key_file}`"
        )
    parse_address(config.dashboard)  # a malformed address is a usage error before anything starts
    try:
        node = Master.from_config(config, key)
    except JournalUnusable as exc:
        # A restart cannot fix a full, read-only or damaged state directory: exit 2, which the
        # shipped systemd unit does not retry (RestartPreventExitStatus=2).
        click.echo(f"taskswarm master: {exc}", err=True)
        sys.exit(2)
    announce_ready()  # it listens: its slaves may connect (it answers once it serves)
    stop_on_signals(node)
    tune_gc()
    node.serve(config.ready_file)


@click.command()
@options(SlaveConfig)
@env_option()
def slave(**settings: Any) -> None:
    """Run a slave node for the master at MASTER (tcp://HOST:PORT)."""
    from ..protocol.keys import load_keys
    from ..slave.node import Slave

    config = SlaveConfig(**settings)
    node = Slave.from_config(
        config, load_keys(required_key_file(config.key_file)), before_connect=wait_for_master
    )
    node.on_ready = lambda: announce_ready(node.workers_started or 0.0)
    stop_on_signals(node)
    tune_gc()
    node.serve()
    if node.failure:
        raise click.ClickException(f"{node.failure} (key file {config.key_file})")
