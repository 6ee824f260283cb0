"""The `taskswarm` command: its root group, which every subcommand joins.

Built on click (subcommands, --help, and TASKSWARM_* environment defaults without hand-written
parsing). Every option can also come from a TOML file (``--config``, default ``./taskswarm.toml``)
with one table per command, e.g. ``[master] bind = "tcp://0.0.0.0:5555"``. Errors a user can cause
end in a one-line message and exit status 1, never a traceback.

This module is what comes before any command: the options of ``taskswarm`` itself (settings
file, environment, log level), and the errors every command shares. The commands are in their
own modules: the nodes (``cli_nodes``), ``run`` (``cli_run``), the short-lived tools
(``cli_tools``), and what they share (``cli_shared``).
"""

from __future__ import annotations

import os
from typing import Any

import click

from ..errors import TaskswarmError
from .cli_nodes import master, slave
from .cli_run import run
from .cli_tools import config, init, keygen, result, status
from .logs import LEVELS, log_to_stderr
from .settings import CONFIG_FILE, load_settings_file

__all__ = ["cli", "main"]


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
    type=click.Choice(LEVELS, case_sensitive=False),
    help="How much the node logs to stderr.",
)
@click.option(
    "--exit-with-parent",
    type=int,
    default=None,
    hidden=True,
    help="Stop when the process with this pid is gone (used by LocalCluster).",
)
@click.option(
    "--ready-fd",
    type=int,
    default=None,
    hidden=True,
    help="A pipe the node closes once it is ready: a master once it listens, a slave once it "
    "is registered with its workers started (used by LocalCluster).",
)
@click.option(
    "--after-fd",
    type=int,
    default=None,
    hidden=True,
    help="A slave connects once this pipe closes: its master listens (used by LocalCluster).",
)
@click.version_option(package_name="taskswarm")
@click.pass_context
def cli(
    ctx: click.Context,
    config_file: str | None,
    env_dir: str | None,
    log_level: str,
    exit_with_parent: int | None,
    ready_fd: int | None,
    after_fd: int | None,
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
    log_to_stderr(log_level)
    env_dir = ctx.meta.get("taskswarm.env") or env_dir
    if env_dir and ctx.invoked_subcommand != "init":
        env = _open_environment(env_dir, ctx.invoked_subcommand or "taskswarm")
        config_file = config_file or str(env.config)
    ctx.default_map = load_settings_file(config_file, cli)
    ctx.obj = {
        "parent": exit_with_parent,
        "config": config_file,
        "ready_fd": ready_fd,
        "after_fd": after_fd,
    }


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


for command in (keygen, master, slave, run, status, result, init, config):
    cli.add_command(command)


def main() -> None:
    cli(prog_name="taskswarm")
