"""`taskswarm run`: an application against a cluster, embedded or running elsewhere.

Apart from the other commands because its command line is its own: options of `run` may stand
anywhere, everything else (a help option after the app included) belongs to the application.
What happens once the program runs (its cluster in the environment, the ApplicationNode it
defines, Ctrl-C) is ``running``.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import click

from ..protocol.sharing import ENVVAR as SHARED_MEMORY_ENVVAR
from .cli_shared import connect, env_option
from .config import RunConfig, options

__all__ = ["run"]

log = logging.getLogger("taskswarm")

#: Stands for the app's own --help while run's options are parsed (run's would win otherwise).
_APP_HELP = "--taskswarm-app-help"


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


@click.command(cls=_RunCommand, context_settings={"ignore_unknown_options": True})
@options(RunConfig)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
@env_option()
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
            _check_master(config.master_address, config.key_file, config.dashboard)
            address, key_file = config.master_address, config.key_file
            sys.exit(_run_app(target, is_module, node, args, address, key_file, config.no_progress))
        from ..local import LocalCluster

        with LocalCluster(
            slaves=config.slaves, workers=config.workers, dashboard=config.dashboard
        ) as cluster:
            log.info(
                "embedded cluster: %d slaves x %d workers at %s",
                cluster.slaves,
                cluster.workers,
                cluster.address,
            )
            if config.dashboard:
                _say_dashboard(cluster.dashboard_link, cluster.key_file, "the embedded cluster")
            # The program's own connections (ts.connect()) share memory as the cluster does.
            os.environ[SHARED_MEMORY_ENVVAR] = str(cluster.shared_memory or "off")
            code = _run_app(
                target, is_module, node, args, cluster.address, cluster.key_file, config.no_progress
            )
    except KeyboardInterrupt:  # before the program started, or while the cluster stopped
        click.echo("interrupted", err=True)
        code = running.interrupted_exit_code()
    sys.exit(code)


def _check_master(address: str, key_file: str, dashboard: bool = False) -> None:
    """Fail before the program starts, in one line, when its master does not answer; with
    ``dashboard``, say where the master's dashboard is."""
    with connect(address, key_file, 5.0) as app:
        if dashboard:
            url = app.status()["master"].get("dashboard")
            _say_dashboard(url, key_file, f"the master at {address}")


def _say_dashboard(url: str | None, key_file: str, whose: str) -> None:
    """The dashboard's link on stderr (the program's stdout is its own), with the token that
    allows actions, as `taskswarm status` prints it; or why there is none."""
    if url is None:
        click.echo(
            f"{whose} serves no dashboard (a master serves one with --dashboard HOST:PORT)",
            err=True,
        )
        return
    from ..protocol.keys import load_keys

    token = load_keys(key_file).dashboard_token()
    click.echo(
        f"dashboard: {url}/?token={token} (the token allows actions: keep it private)", err=True
    )


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
