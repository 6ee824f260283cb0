"""The short-lived `taskswarm` commands: keygen, init, status, result and config show.

Apart from the node commands and `run` because each of these does one thing and exits: write a
key or an environment, ask a running master something, or show the settings. The commands that
read the whole command line (``init``'s settings template, ``config show``) find it as the root
of their click context, so this module needs no import of the group it belongs to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import click

from .cli_shared import connect, env_option, json_option, master_option, seconds_option
from .settings import CONFIG_FILE

__all__ = ["config", "init", "keygen", "result", "status"]


def _root() -> click.Context:
    return click.get_current_context().find_root()


@click.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@click.option("--curve", is_flag=True, help="Add a CurveZMQ keypair: every node encrypts traffic.")
def keygen(path: str, force: bool, curve: bool) -> None:
    """Write a new 256-bit cluster key to PATH (mode 0600). Give every node the same file."""
    from ..protocol.keys import generate_key_file

    generate_key_file(path, overwrite=force, curve=curve)
    what = "cluster key with a CurveZMQ keypair" if curve else "cluster key"
    click.echo(f"wrote a new {what} to {path} (mode 0600); copy it to every node")


@click.command()
@master_option("The master to ask.")
@json_option("Print the raw status as JSON.")
@seconds_option("--watch", 0.1, "Refresh the tables every SECONDS until Ctrl-C.", "SECONDS")
@env_option()
def status(master_address: str, key_file: str, as_json: bool, watch: float | None) -> None:
    """Show the cluster's slaves and task systems."""
    from .status_view import render_status

    if watch is not None and not as_json:
        try:
            with connect(master_address, key_file, 5.0) as app:
                _watch_status(app, watch)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how watching ends, whenever it comes
        return
    with connect(master_address, key_file, 5.0) as app:
        info = app.status()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    render_status(info)
    url = info["master"].get("dashboard")
    if url:
        from ..protocol.keys import load_keys

        token = load_keys(key_file).dashboard_token()
        click.echo(f"dashboard: {url}/?token={token} (the token allows actions: keep it private)")


def _watch_status(app: Any, seconds: float) -> None:
    """Redraw the status tables in place until Ctrl-C (the caller ends quietly on it)."""
    import time

    from rich.console import Group
    from rich.live import Live

    from .status_view import status_renderables

    def frame() -> Group:
        return Group(*status_renderables(app.status()))

    with Live(frame(), refresh_per_second=4) as live:
        click.echo(f"refreshing every {seconds:g}s; Ctrl-C to stop", err=True)
        while True:
            time.sleep(seconds)  # the refresh period itself, not a synchronisation
            live.update(frame())


@click.command()
@click.argument("system_id")
@master_option("The master the task system was sent to.")
@seconds_option("--timeout", 0, "Seconds to wait for a system still running (default: wait).")
def result(master_address: str, key_file: str, system_id: str, timeout: float | None) -> None:
    """Print the result of the task system SYSTEM_ID (from `app.submit_system`, or as
    `taskswarm status` lists it). Its first few characters will do, as long as no other
    system's id begins with them."""
    from concurrent.futures import TimeoutError as FutureTimeout

    with connect(master_address, key_file, 10.0) as app:
        try:
            value = app.system_result(system_id, timeout=timeout)
        except FutureTimeout:
            raise click.ClickException(
                f"task system {system_id} is still running after {timeout:g}s"
            ) from None
    click.echo(repr(value))


@click.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Write the settings file again over an existing one.")
def init(directory: str, force: bool) -> None:
    """Make an environment in DIRECTORY: taskswarm.toml with every setting, plugins/, logs/,
    state/ and a cluster key. Then run commands with --env DIRECTORY."""
    from .environment import Environment
    from .settings import settings_template

    template = settings_template(cast(click.Group, _root().command))
    env = Environment.create(directory, template, force)
    click.echo(f"made a taskswarm environment in {env.root}:")
    click.echo(f"  {env.config.name}   every setting, with its default and what it does")
    click.echo("  plugins/         Python files loaded at start (see plugins/README.txt)")
    click.echo("  logs/ state/     each command's log; the master's journal")
    click.echo(f"  {env.key.name}      the cluster key (mode 0600): copy it to every node")
    click.echo("next:")
    click.echo(f"  taskswarm master --env {directory}")
    click.echo(f"  taskswarm slave tcp://127.0.0.1:5555 --env {directory}")
    click.echo(f"  taskswarm status --env {directory}")


@click.group()
def config() -> None:
    """Settings: the value each has now, and where it came from."""


@config.command("show")
@env_option()
@json_option("Print the settings as JSON.")
def config_show(as_json: bool) -> None:
    """Print every setting of master, slave, run and status: value and source (command-line
    options aside: they win over all of these)."""
    from rich.console import Console
    from rich.table import Table

    from .settings import effective_settings

    root = _root()
    path = root.obj.get("config") or CONFIG_FILE
    file_name = str(Path(path).resolve()) if Path(path).exists() else None
    rows = effective_settings(cast(click.Group, root.command), root.default_map or {})
    if as_json:
        click.echo(json.dumps([row.__dict__ for row in rows], indent=2, default=str))
        return
    table = Table(title=f"settings (file: {file_name or 'none'}; command-line options win)")
    for column in ("command", "setting", "value", "source"):
        table.add_column(column, overflow="fold")
    for row in rows:
        value = "-" if row.value is None else str(row.value)
        table.add_row(row.command, row.name, value, row.source)
    Console().print(table)
