"""The `taskswarm` command: keygen, master, slave, run, status.

Built on click (subcommands, --help, and TASKSWARM_* environment defaults without hand-written
parsing). Every option can also come from a TOML file (``--config``, default ``./taskswarm.toml``)
with one table per command, e.g. ``[master] bind = "tcp://0.0.0.0:5555"``. Errors a user can cause
end in a one-line message and exit status 1, never a traceback.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import signal
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import click

from ..errors import TaskswarmError
from .config import DEFAULT_BIND, MasterConfig, RunConfig, SlaveConfig, option, options
from .settings import CONFIG_FILE, load_settings_file

log = logging.getLogger("taskswarm")


class _Group(click.Group):
    """Turns taskswarm's own errors into one clear line instead of a traceback, and finds a
    command's ``--env DIR`` before the command's defaults are read (they come from it)."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        for i, arg in enumerate(rest):
            if arg == "--":
                break
            if arg == "--env" and i + 1 < len(rest):
                ctx.meta["taskswarm.env"] = rest[i + 1]
            elif arg.startswith("--env="):
                ctx.meta["taskswarm.env"] = arg.partition("=")[2]
        return name, command, rest

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except TaskswarmError as exc:
            raise click.ClickException(str(exc)) from None


@click.group(
    cls=_Group,
    context_settings={"help_option_names": ["-h", "--help"], "auto_envvar_prefix": "TASKSWARM"},
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"TOML file with one table per command (default: ./{CONFIG_FILE} if present).",
)
@click.option(
    "--env",
    "env_dir",
    envvar="TASKSWARM_ENV",
    metavar="DIR",
    type=click.Path(file_okay=False),
    default=None,
    help="Use the environment DIR made by `taskswarm init`: its settings, plugins, logs, state "
    "and key (env TASKSWARM_ENV). Commands take --env DIR too.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="How much the node logs to stderr.",
)
@click.option(
    "--exit-with-parent",
    type=int,
    default=None,
    hidden=True,
    help="Stop when the process with this pid is gone (used by LocalCluster).",
)
@click.version_option(package_name="taskswarm")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    env_dir: str | None,
    log_level: str,
    exit_with_parent: int | None,
) -> None:
    """taskswarm: a master schedules tasks and task systems onto slaves' worker processes.

    \b
    Quick start on one machine:
      taskswarm run examples/mandelbrot.py              # embedded local cluster
    A cluster by hand:
      taskswarm keygen cluster.key
      taskswarm master --key-file cluster.key
      taskswarm slave tcp://127.0.0.1:5555 --key-file cluster.key
      taskswarm run my_app.py --master tcp://127.0.0.1:5555 --key-file cluster.key
      taskswarm status --key-file cluster.key
    """
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    env_dir = ctx.meta.get("taskswarm.env") or env_dir
    if env_dir and ctx.invoked_subcommand != "init":
        env = _open_environment(env_dir, ctx.invoked_subcommand or "taskswarm")
        config_file = config_file or str(env.config)
    ctx.default_map = load_settings_file(config_file, cli)
    ctx.obj = {"parent": exit_with_parent, "config": config_file}


def _open_environment(directory: str, command: str) -> Any:
    """Open the environment, log to its logs/, load its plugins; its nodes' children (a
    LocalCluster's master and slaves) inherit it through TASKSWARM_ENV."""
    from .environment import Environment

    try:
        env = Environment.open(directory)
        env.start(command, log=command in ("master", "slave", "run"))
    except TaskswarmError as exc:
        raise click.ClickException(str(exc)) from None
    os.environ["TASKSWARM_ENV"] = str(env.root)
    return env


def _env_option():
    return click.option(
        "--env",
        metavar="DIR",
        expose_value=False,
        type=click.Path(file_okay=False),
        help="Use the environment DIR made by `taskswarm init` (settings, plugins, logs, state, "
        "key).",
    )


def _key_option():
    """``--key-file`` of commands that are not settings records (status, result)."""
    return option(next(f for f in fields(MasterConfig) if f.name == "key_file"))


def _master_option(help: str):
    """``--master`` and ``--key-file`` of commands that talk to a running master."""

    def decorate(function: Any) -> Any:
        function = _key_option()(function)
        return click.option(
            "--master",
            "master_address",
            envvar="TASKSWARM_MASTER",
            default=DEFAULT_BIND,
            show_default=True,
            help=help,
        )(function)

    return decorate


def _stop_on_signals(node: Any) -> None:
    """SIGINT/SIGTERM stop the node cleanly; so does the death of a LocalCluster's owner."""

    def handler(signum: int, frame: Any) -> None:
        log.info("%s received: stopping", signal.Signals(signum).name)
        node.stop()

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    parent = click.get_current_context().find_root().obj["parent"]
    if parent is not None:
        node.parent_pid = parent


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Replace an existing key file.")
@click.option("--curve", is_flag=True, help="Add a CurveZMQ keypair: every node encrypts traffic.")
def keygen(path: str, force: bool, curve: bool) -> None:
    """Write a new 256-bit cluster key to PATH (mode 0600). Give every node the same file."""
    from ..protocol.keys import generate_key_file

    generate_key_file(path, overwrite=force, curve=curve)
    what = "cluster key with a CurveZMQ keypair" if curve else "cluster key"
    click.echo(f"wrote a new {what} to {path} (mode 0600); copy it to every node")


@cli.command()
@options(MasterConfig)
@_env_option()
def master(**settings: Any) -> None:
    """Run a master node: it keeps the task queue and runs task systems."""
    config = MasterConfig(**settings)
    if config.system_log_level is not None:
        _show_system_logging(config.system_log_level)
    from ..dashboard import parse_address
    from ..dashboard.limits import raise_fd_limit
    from ..master.journal import JournalUnusable
    from ..master.node import Master
    from ..protocol.keys import load_keys

    raise_fd_limit()  # a descriptor per peer: a shell's default 1024 must not cap the cluster
    key = load_keys(_required_key_file(config.key_file))
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
    _stop_on_signals(node)
    _tune_gc()
    node.serve(config.ready_file)


def _show_system_logging(level: str) -> None:
    """Let task systems' own log records through at ``level``, whatever the node's level.

    A task system's callbacks run on its runner thread on the master (``system-...``): what
    they log is the application's output, not the master's chatter. An embedded cluster's
    master logs warnings only, and this is how its systems' info lines still reach the run's
    console (the master's stderr is the run's).
    """
    from ..system import RUNNER_THREAD_PREFIX

    wanted = logging.getLevelName(level.upper())
    root = logging.getLogger()
    node_level = root.level
    root.setLevel(min(node_level, wanted))

    def keep(record: logging.LogRecord) -> bool:
        from_system = (record.threadName or "").startswith(RUNNER_THREAD_PREFIX)
        return record.levelno >= (wanted if from_system else node_level)

    for handler in root.handlers:
        handler.addFilter(keep)


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


def _tune_gc() -> None:
    """A node process holds many long-lived records (a million queued tasks, on a master) and
    makes almost no reference cycles: collect young objects less often, and never walk what
    was loaded at start-up again. Saves a fifth of the master's time per task."""
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)


@cli.command()
@options(SlaveConfig)
@_env_option()
def slave(**settings: Any) -> None:
    """Run a slave node for the master at MASTER (tcp://HOST:PORT)."""
    from ..protocol.keys import load_keys
    from ..slave.node import Slave

    config = SlaveConfig(**settings)
    node = Slave.from_config(config, load_keys(_required_key_file(config.key_file)))
    _stop_on_signals(node)
    _tune_gc()
    node.serve()
    if node.failure:
        raise click.ClickException(f"{node.failure} (key file {config.key_file})")


class _RunCommand(click.Command):
    """``taskswarm run APP.py --help`` is the app's help, not run's: a help option after the
    app (or ``-m MODULE``) is passed on to it."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        valued = {
            name
            for param in self.params
            if isinstance(param, click.Option) and not param.is_flag
            for name in param.opts
        }
        target = _target_index(args, valued)
        if target is not None:
            args = [
                _APP_HELP if i > target and arg in ("-h", "--help") else arg
                for i, arg in enumerate(args)
            ]
        return super().parse_args(ctx, args)


#: Stands for the app's own --help while run's options are parsed (run's would win otherwise).
_APP_HELP = "--taskswarm-app-help"


def _target_index(args: list[str], valued: set[str]) -> int | None:
    """Where the app (APP.py, or MODULE after -m) stands in run's arguments, if anywhere;
    ``valued`` are run's options that take a value (which is not the app)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            return i
        if arg == "-m":
            return i + 1 if i + 1 < len(args) else None
        if arg in valued:
            i += 2
            continue
        if not arg.startswith("-"):
            return i
        i += 1
    return None


@cli.command(cls=_RunCommand, context_settings={"ignore_unknown_options": True})
@options(RunConfig)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@_env_option()
def run(args: tuple[str, ...], **settings: Any) -> None:
    """Run an application (APP.py, APP.py:NODE or -m MODULE, then its ARGS) against a cluster.

    Options of `run` itself may stand anywhere; every other argument goes to the application.
    Put application arguments that share a name with them (--slaves, --workers, --master,
    --key-file, -m) after `--`.

    Without --master an embedded LocalCluster is started for the run and stopped after it.
    The program finds its cluster through TASKSWARM_MASTER / TASKSWARM_KEY_FILE, which
    `ts.connect()` and `ts.connect_or_start()` read. After the program, the ApplicationNode
    subclass it defines runs (NODE names one of several); a program that neither connects
    nor defines one exits 1. Ctrl-C cancels the task systems and tasks the program sent and
    exits 130.
    """
    from . import running

    config = RunConfig(**settings)
    is_module = config.module is not None
    if config.module is None:
        if not args:
            raise click.UsageError("give an app file (APP.py) or a module (-m MODULE) to run")
        target, node = running.split_node(args[0], is_module=False)
        args = args[1:]
        if not Path(target).is_file():
            raise click.UsageError(f"{target}: no such file (for a module, use -m {target})")
    else:
        target, node = running.split_node(config.module, is_module=True)
    if _APP_HELP in args:
        # The app's help: nothing to run it against, so no cluster is started for it.
        args = tuple("--help" if arg == _APP_HELP else arg for arg in args)
        sys.argv = [target, *args]
        sys.exit(running.run_target(target, is_module, node))
    # Ctrl-C and SIGTERM cancel what the program sent before the cluster goes (running.py).
    signal.signal(signal.SIGINT, running.interrupt_once)
    signal.signal(signal.SIGTERM, running.interrupt_once)
    try:
        if config.master_address:
            if not config.key_file:
                raise click.UsageError("--master needs --key-file (or TASKSWARM_KEY_FILE)")
            _check_master(config.master_address, config.key_file)
            address, key_file = config.master_address, config.key_file
            sys.exit(_run_app(target, is_module, node, args, address, key_file, config.no_progress))
        from ..local import LocalCluster

        with LocalCluster(slaves=config.slaves, workers=config.workers) as cluster:
            log.info(
                "embedded cluster: %d slaves x %d workers at %s",
                cluster.slaves,
                cluster.workers,
                cluster.address,
            )
            code = _run_app(
                target, is_module, node, args, cluster.address, cluster.key_file, config.no_progress
            )
    except KeyboardInterrupt:  # before the program started, or while the cluster stopped
        click.echo("interrupted", err=True)
        code = running.interrupted_exit_code()
    sys.exit(code)


def _check_master(address: str, key_file: str) -> None:
    """Fail before the program starts, in one line, when its master does not answer."""
    with _connect(address, key_file, 5.0):
        pass


def _connect(address: str, key_file: str, timeout: float) -> Any:
    """A connection to the master at ``address``; a host name that does not resolve fails at
    once, naming it, instead of after ``timeout`` seconds of silence."""
    from ..client.application import connect
    from ..protocol.transport import unreachable_message, unresolvable

    if unresolvable(address) is not None:
        raise click.ClickException(unreachable_message(address, 0.0))
    return connect(address, key_file, connect_timeout=timeout)


def _run_app(
    target: str,
    is_module: bool,
    node: str | None,
    args: tuple[str, ...],
    address: str,
    key_file: str,
    no_progress: bool = False,
) -> int:
    """Run the app against the master at ``address`` (see :mod:`taskswarm.ops.running`)."""
    from .running import run_app

    os.environ["TASKSWARM_MASTER"], os.environ["TASKSWARM_KEY_FILE"] = address, key_file
    sys.argv = [target, *args]
    return run_app(target, is_module, node, no_progress)


@cli.command()
@_master_option("The master to ask.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw status as JSON.")
@click.option(
    "--watch",
    type=click.FloatRange(0.1),
    default=None,
    metavar="SECONDS",
    help="Refresh the tables every SECONDS until Ctrl-C.",
)
@_env_option()
def status(master_address: str, key_file: str, as_json: bool, watch: float | None) -> None:
    """Show the cluster's slaves and task systems."""
    from .status_view import render_status

    if watch is not None and not as_json:
        try:
            with _connect(master_address, key_file, 5.0) as app:
                _watch_status(app, watch)
        except KeyboardInterrupt:
            pass  # Ctrl-C is how watching ends, whenever it comes
        return
    with _connect(master_address, key_file, 5.0) as app:
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


@cli.command()
@click.argument("system_id")
@_master_option("The master the task system was sent to.")
@click.option(
    "--timeout",
    type=click.FloatRange(0),
    default=None,
    help="Seconds to wait for a system still running (default: wait).",
)
def result(master_address: str, key_file: str, system_id: str, timeout: float | None) -> None:
    """Print the result of the task system SYSTEM_ID (from `app.submit_system`)."""
    from concurrent.futures import TimeoutError as FutureTimeout

    with _connect(master_address, key_file, 10.0) as app:
        try:
            value = app.system_result(system_id, timeout=timeout)
        except FutureTimeout:
            raise click.ClickException(
                f"task system {system_id} is still running after {timeout:g}s"
            ) from None
    click.echo(repr(value))


@cli.command()
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Write the settings file again over an existing one.")
def init(directory: str, force: bool) -> None:
    """Make an environment in DIRECTORY: taskswarm.toml with every setting, plugins/, logs/,
    state/ and a cluster key. Then run commands with --env DIRECTORY."""
    from .environment import Environment
    from .settings import settings_template

    env = Environment.create(directory, settings_template(cli), force)
    click.echo(f"made a taskswarm environment in {env.root}:")
    click.echo(f"  {env.config.name}   every setting, with its default and what it does")
    click.echo("  plugins/         Python files loaded at start (see plugins/README.txt)")
    click.echo("  logs/ state/     each command's log; the master's journal")
    click.echo(f"  {env.key.name}      the cluster key (mode 0600): copy it to every node")
    click.echo("next:")
    click.echo(f"  taskswarm master --env {directory}")
    click.echo(f"  taskswarm slave tcp://127.0.0.1:5555 --env {directory}")
    click.echo(f"  taskswarm status --env {directory}")


@cli.group()
def config() -> None:
    """Settings: the value each has now, and where it came from."""


@config.command("show")
@_env_option()
@click.option("--json", "as_json", is_flag=True, help="Print the settings as JSON.")
def config_show(as_json: bool) -> None:
    """Print every setting of master, slave, run and status: value and source (command-line
    options aside: they win over all of these)."""
    from rich.console import Console
    from rich.table import Table

    from .settings import effective_settings

    root = click.get_current_context().find_root()
    path = root.obj.get("config") or CONFIG_FILE
    file_name = str(Path(path).resolve()) if Path(path).exists() else None
    rows = effective_settings(cli, root.default_map or {})
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


def main() -> None:
    cli(prog_name="taskswarm")


def _required_key_file(path: str | None) -> str:
    """The key file a node cannot run without (click requires it; a settings record built in
    code may still lack it)."""
    if path is None:
        raise click.UsageError("--key-file is required (or TASKSWARM_KEY_FILE)")
    return path
