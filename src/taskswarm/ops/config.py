"""The settings of ``taskswarm master``, ``slave`` and ``run``: one frozen record each, one field
per setting, declared once.

Everything else is made from these fields, so it cannot drift from them::

    MasterConfig field ──> click option of `taskswarm master` (options(MasterConfig))
          │                  └──> taskswarm.toml key, TASKSWARM_* variable (settings.py)
          ├──> LocalCluster keyword (local.py: a field's name is the keyword)
          └──> child argv: to_argv(record) ──> `taskswarm master ...`
                 ──> MasterConfig(**click's params) ──> Master.from_config

A field's metadata (:class:`Spec`) says how the command line spells it: flag, help, click type,
metavar, and an environment variable where it is not click's automatic
``TASKSWARM_<COMMAND>_<NAME>``. Values are what the command hands its function: MiB as MiB,
``--no-dashboard`` as its own flag; the nodes' ``from_config`` turn them into their keywords.

One module on purpose: the records and the few functions that turn a field into an option or
an argument are one declaration read from both ends; apart, a new setting would mean editing
two files that must agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import click

from ..errors import ConfigurationError
from ..protocol.sharing import ENVVAR as SHARED_MEMORY_ENVVAR
from ..scheduling.records import format_resources
from .logs import LEVELS

__all__ = [
    "DEFAULT_BIND",
    "MasterConfig",
    "RunConfig",
    "SlaveConfig",
    "Spec",
    "envvar",
    "option",
    "options",
    "spec",
    "to_argv",
]

DEFAULT_BIND = "tcp://127.0.0.1:5555"
_F = TypeVar("_F", bound=Callable[..., Any])


@dataclass(frozen=True)
class Spec:
    """How one setting is spelt on the command line (the metadata of a record's field)."""

    help: str = ""
    flag: str | None = None  # default: --NAME; "--x/--no-x" for a switch with an off-flag
    type: Any = None  # a click type; default: the default's type
    metavar: str | None = None
    envvar: str | None = None  # only where it is not TASKSWARM_<COMMAND>_<NAME>
    multiple: bool = False
    hidden: bool = False
    required: bool = False  # on the command line (a record made in Python may leave it None)
    argument: bool = False  # positional, not an option
    parse: Callable[[Any], Any] | None = None  # text -> value; ValueError means a usage error
    text: Callable[[Any], str] = str  # value -> text, for to_argv


def setting(default: Any = None, help: str = "", **spelling: Any) -> Any:
    """A record field: its default, and how the command line spells it (see :class:`Spec`)."""
    return field(default=default, metadata={"taskswarm": Spec(help=help, **spelling)})


def spec(f: dataclasses.Field[Any]) -> Spec:
    found: Spec = f.metadata["taskswarm"]
    return found


def envvar(command: str, f: dataclasses.Field[Any]) -> str:
    """The environment variable a setting is read from (click's ``auto_envvar_prefix`` rule)."""
    return spec(f).envvar or f"TASKSWARM_{command}_{f.name}".upper()


# -- values the command line parses ------------------------------------------------------------


def parse_resources(value: str | None) -> dict[str, float] | None:
    """``gpu=2,mem=16`` -> ``{"gpu": 2.0, "mem": 16.0}`` (the inverse of ``format_resources``)."""
    if not value:
        return None
    resources: dict[str, float] = {}
    for item in value.split(","):
        name, sep, amount = item.strip().partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError
            resources[name.strip()] = float(amount)
        except ValueError:
            raise ValueError(
                f"{item.strip()!r} is not NAME=AMOUNT; write e.g. --resources gpu=2,mem=16"
            ) from None
        if not resources[name.strip()] >= 0:
            raise ValueError(f"{item.strip()!r}: the amount must be a number >= 0")
    return resources


def check_shared_memory(value: str | None) -> str | None:
    """A shared memory setting that does not parse is refused before anything starts."""
    from ..protocol.sharing import parse_threshold

    if value is not None:
        parse_threshold(value)
    return value


def check_memory_limit(value: str | None) -> str | None:
    """A memory limit that does not parse is refused before anything starts."""
    from ..slave.containment import parse_memory_limit

    if value is not None:
        parse_memory_limit(value)
    return value


# -- settings shared by several commands -------------------------------------------------------


def _key_file(required: bool = True) -> Any:
    return setting(
        None,
        "Cluster key made by `taskswarm keygen` (env TASKSWARM_KEY_FILE).",
        envvar="TASKSWARM_KEY_FILE",
        required=required,
        type=click.Path(dir_okay=False),
    )


def _seconds(default: float, help: str, minimum: float = 0) -> Any:
    """A span of time, in float seconds like every time in taskswarm."""
    return setting(default, help, type=click.FloatRange(minimum), metavar="SECONDS")


def _heartbeat() -> Any:
    return setting(1.0, "Seconds between heartbeats.", type=click.FloatRange(0.05))


def _max_message_mib() -> Any:
    return setting(
        512,
        "Largest message accepted, in MiB (the socket drops a peer that sends more).",
        type=click.IntRange(1),
    )


def _engine(switch: str, started_by: str) -> Any:
    return setting(
        None,
        f"With --{switch} dask: the Dask scheduler, tcp://HOST:PORT. With --{switch} ray: "
        f"ray://HOST:PORT, HOST:PORT or auto. Default: a local one started by the {started_by}.",
        metavar="ADDRESS",
    )


# -- the records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MasterConfig:
    """``taskswarm master``: a master node, which keeps the task queue and runs task systems."""

    COMMAND: ClassVar[str] = "master"

    bind: str = setting(
        DEFAULT_BIND, "Address to listen on; use tcp://0.0.0.0:PORT to accept other machines."
    )
    advertise: str | None = setting(
        None,
        "The address others are told to reach this master at (status, the dashboard URL), "
        "for NAT or a DNS name. Default: the bind address; for a wildcard bind, this host's "
        "primary address (else its name) with the bound port.",
        metavar="tcp://HOST:PORT",
    )
    key_file: str | None = _key_file()
    state_dir: str | None = setting(
        None,
        "Directory for the master's journal, which a restarted master resumes from "
        "(default: a directory per bind address under ~/.local/share/taskswarm).",
        type=click.Path(file_okay=False),
    )
    no_state_dir: bool = setting(False, "Keep no durable state (a restart forgets).")
    max_crashes: int = setting(
        3,
        "Times a task may kill its worker process before it fails with WorkerCrashed.",
        type=click.IntRange(1),
    )
    dashboard: str = setting(
        "127.0.0.1:8787",
        "Serve the HTTP API (/api/...), its OpenAPI document and Prometheus /metrics on "
        "HOST:PORT (port 0: any free one). Busy: the master logs why and runs without it.",
        metavar="HOST:PORT",
    )
    no_dashboard: bool = setting(False, "Serve no HTTP at all.")
    dashboard_host: tuple[str, ...] = setting(
        (),
        "A further name the dashboard answers to in requests' Host header (repeatable), "
        "e.g. a DNS name or a proxy's; loopback names, IP addresses, the bind and advertised "
        "addresses and, beyond loopback, this host's name are always accepted. Others get 421, "
        "so a web page cannot read the dashboard through DNS rebinding.",
        metavar="NAME",
        multiple=True,
    )
    scheduler: str = setting(
        "push",
        "Scheduler by name: push (master sends work), pull (slaves ask for work), or dask / "
        "ray (every task runs on that engine's cluster, see --engine).",
    )
    engine: str | None = _engine("scheduler", "master")
    scheduler_option: tuple[str, ...] = setting(
        (),
        "A setting of the scheduler's own, KEY=VALUE (repeatable): the scheduler reads it, the "
        "master does not. --engine ADDRESS is --scheduler-option engine=ADDRESS.",
        metavar="KEY=VALUE",
        multiple=True,
    )
    strategy: str = setting(
        "load",
        "Schedule strategy by name: load (fewest tasks in flight per worker), throughput "
        "(shortest expected wait, from each slave's measured task durations), two-choices (the "
        "better of two random slaves), random, round-robin, or one a plugin registers.",
    )
    stealing: bool = setting(
        True,
        "Move tasks a busy slave holds but has not started to slaves that sit idle.",
        flag="--stealing/--no-stealing",
    )
    resource_wait: float = _seconds(
        10.0,
        "How long a task may wait for resources (Task.resources) that no slave offers before "
        "it fails with ResourceUnavailable; 'inf' waits for ever.",
    )
    prefetch: int = setting(2, "Tasks a slave may hold per worker.", type=click.IntRange(1))
    heartbeat: float = _heartbeat()
    slave_timeout: float = setting(
        5.0,
        "Seconds of silence after which a slave is lost and its tasks requeued.",
        type=click.FloatRange(0.1),
    )
    client_timeout: float = _seconds(
        10.0,
        "Seconds of silence after which an application (it beats every 0.5s) is lost: its "
        "plain tasks are cancelled, its task systems go on and their results are kept for it.",
        minimum=0.1,
    )
    result_ttl: float = _seconds(
        24 * 3600.0,
        "How long results no application collected are kept (a detached task system's, "
        "or those of an application that went away), counted from when they were made; "
        "then they expire, and system_result(id) says so. A result is let go as soon as an "
        "application confirms it received it.",
    )
    result_cap_mib: int = setting(
        1024,
        "Most MiB of such uncollected results kept (in memory and in the journal); past it "
        "the oldest are dropped first. 0: no cap, only --result-ttl.",
        type=click.IntRange(0),
        metavar="MIB",
    )
    forget_after: float = _seconds(
        300.0,
        "How long departed slaves, gone applications and collected task systems stay in "
        "status before the master forgets them (at most the newest 1000 slaves and 100 collected "
        "systems are kept meanwhile).",
    )
    curve: bool = setting(
        False,
        "Require CurveZMQ encryption (the key file must come from `taskswarm keygen --curve`; "
        "any node given such a file encrypts anyway).",
    )
    max_message_mib: int = _max_message_mib()
    ready_file: str | None = setting(None, type=click.Path(dir_okay=False), hidden=True)
    system_log_level: str | None = setting(
        None,
        "How much of task systems' own logging to show (default: as --log-level); "
        "LocalCluster shows it at info while the nodes log warnings only.",
        type=click.Choice(LEVELS, case_sensitive=False),
        hidden=True,
    )

    @property
    def journal_dir(self) -> str | None:
        """Where the journal goes: ``--state-dir``, none with ``--no-state-dir``, else one
        directory per bind address under the user's data directory (XDG)."""
        if self.no_state_dir:
            return None
        if self.state_dir is not None:
            return self.state_dir
        base = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share")
        name = self.bind.replace("tcp://", "").replace("*", "any").replace(":", "-").strip("[]")
        return str(base / "taskswarm" / f"master-{name}")

    @property
    def dashboard_address(self) -> str | None:
        return None if self.no_dashboard else self.dashboard

    @property
    def scheduler_options(self) -> dict[str, str]:
        """``--scheduler-option`` as a mapping, with ``--engine`` as the ``engine`` one."""
        options: dict[str, str] = {}
        for item in self.scheduler_option:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigurationError(f"--scheduler-option {item!r} is not KEY=VALUE")
            options[key.strip()] = value
        if self.engine is not None:
            options["engine"] = self.engine
        return options


@dataclass(frozen=True)
class SlaveConfig:
    """``taskswarm slave``: a slave node, which runs tasks in its worker processes."""

    COMMAND: ClassVar[str] = "slave"

    master_address: str = setting(
        "", argument=True, metavar="MASTER", envvar="TASKSWARM_MASTER", required=True
    )
    key_file: str | None = _key_file()
    workers: int | None = setting(
        None, "Worker processes (default: one per core).", type=click.IntRange(0)
    )
    manager: str = setting(
        "process-pool",
        "Task manager by name: process-pool, or dask / ray (tasks run on that engine's "
        "cluster, see --engine; --workers then caps how many run at once).",
    )
    engine: str | None = _engine("manager", "slave")
    heartbeat: float = _heartbeat()
    grace: float = setting(
        2.0,
        "On SIGINT/SIGTERM, seconds to let running tasks finish before handing them back.",
        type=click.FloatRange(0),
    )
    resources: Mapping[str, float] | None = setting(
        None,
        "What this slave offers tasks that declare needs (Task.resources), e.g. gpu=2,mem=16: "
        "a task needing gpu=1 runs only where one is free.",
        metavar="NAME=AMOUNT[,...]",
        parse=parse_resources,
        text=format_resources,
    )
    worker_memory_limit: str | None = setting(
        None,
        "Memory each worker process may hold: 2GiB, 512MiB, a fraction of the machine's "
        "memory such as 0.5, or 0 for no limit (default: the machine's memory over the number "
        "of workers). A worker past 95% of it is replaced, and its task counts as one that "
        "crashed its worker: after the master's --max-crashes such runs it fails with "
        "WorkerMemoryExceeded.",
        metavar="SIZE",
        parse=check_memory_limit,
    )
    shared_memory: str = setting(
        "off",
        "Task arguments and results of SIZE or more (256KiB, 1MiB; 'on' is 256KiB, 'off' never) "
        "travel between applications and this slave's workers through shared memory segments "
        "(/dev/shm, mode 0600) instead of messages. Only for a slave on the host of every "
        "application that uses it; LocalCluster turns it on. Applications read the same "
        "variable (or take ts.connect(shared_memory=...)).",
        metavar="SIZE|on|off",
        envvar=SHARED_MEMORY_ENVVAR,
        parse=check_shared_memory,
    )
    max_message_mib: int = _max_message_mib()


@dataclass(frozen=True)
class RunConfig:
    """``taskswarm run``: an application, against a master or an embedded LocalCluster."""

    COMMAND: ClassVar[str] = "run"

    module: str | None = setting(
        None, "Run a module, as `python -m` does.", flag="-m", metavar="MODULE"
    )
    master_address: str | None = setting(
        None,
        "Use the master at tcp://HOST:PORT instead of an embedded local cluster.",
        flag="--master",
        envvar="TASKSWARM_MASTER",
    )
    key_file: str | None = _key_file(required=False)
    slaves: int | None = setting(
        None, "Slaves of the embedded cluster (default 2).", type=click.IntRange(1)
    )
    workers: int | None = setting(
        None,
        "Workers per slave of the embedded cluster (default: cores / slaves).",
        type=click.IntRange(0),
    )
    no_progress: bool = setting(
        False,
        "Show no progress of task systems (by default: a bar each on a terminal, a log line "
        "every tenth of the way otherwise, on stderr).",
    )
    dashboard: bool = setting(
        False,
        "Serve the embedded cluster's dashboard on a free loopback port and print its link "
        "on stderr (with --master: print the link of the master's own, if it serves one).",
    )


# -- what is made from the records -------------------------------------------------------------


def _flag(f: dataclasses.Field[Any]) -> str:
    return spec(f).flag or "--" + f.name.replace("_", "-")


def option(f: dataclasses.Field[Any]) -> Callable[[_F], _F]:
    """The click option (or argument) of one field: its flag, default, help, type, variable."""
    s = spec(f)
    spelling: dict[str, Any] = {"metavar": s.metavar, "required": s.required}
    if s.envvar:
        spelling["envvar"] = s.envvar
    if s.parse is not None:
        spelling["callback"] = _callback(s.parse)
    if s.argument:
        return click.argument(f.name, **spelling)
    if s.type is not None:
        spelling["type"] = s.type
    if f.default is not None and f.default != ():
        spelling["default"] = f.default
        spelling["show_default"] = f.default is not False
    is_flag = isinstance(f.default, bool) and "/" not in _flag(f)
    return click.option(
        _flag(f),
        f.name,
        help=s.help or None,
        multiple=s.multiple,
        hidden=s.hidden,
        is_flag=is_flag or None,
        **spelling,
    )


def _callback(parse: Callable[[Any], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        try:
            return parse(value)
        except (ValueError, ConfigurationError) as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def options(record: type) -> Callable[[_F], _F]:
    """A decorator giving a click command one option per field of ``record``, in field order."""

    def decorate(function: _F) -> _F:
        for f in reversed(dataclasses.fields(record)):
            function = option(f)(function)
        return function

    return decorate


def to_argv(config: Any) -> list[str]:
    """``taskswarm COMMAND ...`` arguments that give a command this record again: each
    setting that differs from its default, positional ones last (after ``--``)."""
    flags: list[str] = []
    positional: list[str] = []
    for f in dataclasses.fields(config):
        value, s = getattr(config, f.name), spec(f)
        if s.argument:
            positional.append(s.text(value))
        elif value == f.default and not s.required:
            continue
        elif value is None:
            raise ValueError(f"{type(config).__name__}.{f.name}: None cannot be written")
        elif isinstance(value, bool):
            on, _, off = _flag(f).partition("/")
            if value or off:
                flags.append(on if value else off)
        elif s.multiple:
            for item in value:
                flags += [_flag(f), s.text(item)]
        else:
            flags += [_flag(f), s.text(value)]
    return [config.COMMAND, *flags, *(["--", *positional] if positional else [])]
