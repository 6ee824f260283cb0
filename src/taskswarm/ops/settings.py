"""Every setting of every command, read off the command line's own definitions.

The options of ``taskswarm master``, ``slave``, ``run`` and ``status`` are the one list of
settings: ``taskswarm init`` writes them into an environment's ``taskswarm.toml`` with their
defaults and help, and ``taskswarm config show`` tells the value each one has right now and
where it came from -- so neither can drift from what the commands accept.

Precedence is click's: the command line, then the environment variable, then the settings
file (:func:`load_settings_file`, which the ``taskswarm`` group hands click as its
``default_map``), then the default.
"""

from __future__ import annotations

import json
import math
import os
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

__all__ = [
    "COMMANDS",
    "CONFIG_FILE",
    "Setting",
    "effective_settings",
    "load_settings_file",
    "settings_template",
]

#: The settings file read when none is named (``--config``, ``--env``).
CONFIG_FILE = "taskswarm.toml"

#: The commands whose options a settings file may give (one table each).
COMMANDS = ("master", "slave", "run", "status")
#: Options that are not settings: what to run, or one-off switches.
_NOT_SETTINGS = {"help", "env", "ready_file", "force"}
#: What a new environment sets instead of the built-in default (paths relative to it).
ENV_VALUES = {
    ("master", "key_file"): "cluster.key",
    ("master", "state_dir"): "state",
    ("slave", "key_file"): "cluster.key",
    ("run", "key_file"): "cluster.key",
    ("status", "key_file"): "cluster.key",
}


@dataclass(frozen=True)
class Setting:
    command: str
    name: str  # as in the settings file and after -- on the command line
    value: Any
    source: str  # "default", "file" (the settings file), "env NAME"


def _options(command: click.Command) -> list[click.Option]:
    return [
        p
        for p in command.params
        if isinstance(p, click.Option) and not p.hidden and p.name not in _NOT_SETTINGS
    ]


def _default(option: click.Option) -> Any:
    """The built-in default: a plain flag's unset default is False; a computed one is None."""
    value = option.default
    if callable(value):
        return None
    if value is None or type(value).__name__ == "Sentinel":  # click's UNSET
        return False if option.is_flag and option.is_bool_flag else None
    return value


def _key(option: click.Option) -> str:
    return max(option.opts, key=len).lstrip("-")


def parameter_names(command: click.Command) -> dict[str, str]:
    """Settings-file key -> the command's parameter: ``master`` and ``master_address`` both
    name ``--master``; ``json`` names ``--json`` (``as_json``)."""
    names = {}
    for option in _options(command):
        for spelling in (_key(option), option.name or ""):
            names[spelling] = names[spelling.replace("-", "_")] = option.name or ""
    for argument in command.params:
        if isinstance(argument, click.Argument) and argument.name:  # slave's MASTER
            names[argument.name] = names[argument.name.replace("_", "-")] = argument.name
    return names


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def settings_template(group: click.Group) -> str:
    """A settings file with every setting at the value a new environment uses, each with its
    help; settings with no default are left commented out."""
    lines = [
        "# taskswarm settings: one table per command; `taskswarm COMMAND --help` says more.",
        "# Precedence: command line, then TASKSWARM_* environment variables, then this file.",
        "# Relative paths are relative to this file's directory.",
    ]
    for name in COMMANDS:
        command = group.commands[name]
        lines += ["", f"[{name}]"]
        for option in _options(command):
            help_text = " ".join((option.help or "").split())
            lines += [f"# {line}" for line in textwrap.wrap(help_text, 96)]
            value = ENV_VALUES.get((name, option.name), _default(option))
            if value is None:
                lines.append(f"# {_key(option)} =")
            else:
                lines.append(f"{_key(option)} = {_toml(value)}")
    return "\n".join(lines) + "\n"


def _envvars(command: str, option: click.Option) -> list[str]:
    if option.envvar:
        return [option.envvar] if isinstance(option.envvar, str) else list(option.envvar)
    return [f"TASKSWARM_{command}_{option.name}".upper().replace("-", "_")]


def effective_settings(
    group: click.Group,
    file_values: Mapping[str, Mapping[str, Any]],
    environ: Mapping[str, str] | None = None,
) -> list[Setting]:
    """The value each setting has for a command started now (without command-line options)."""
    environ = os.environ if environ is None else environ
    rows = []
    for name in COMMANDS:
        table = file_values.get(name, {})
        for option in _options(group.commands[name]):
            found = [var for var in _envvars(name, option) if var in environ]
            if found:
                value, source = environ[found[0]], f"env {found[0]}"
            elif option.name in table:
                value, source = table[option.name], "file"
            else:
                value, source = _default(option), "default"
            rows.append(Setting(name, _key(option), value, source))
    return rows


#: Settings that name files: relative ones are relative to the settings file naming them.
PATH_SETTINGS = ("key_file", "state_dir")


def load_settings_file(path: str | None, group: click.Group) -> dict[str, Any]:
    """The settings file at ``path`` (else ./taskswarm.toml, if there is one) as click's
    ``default_map``: a table per command, keyed by parameter name, relative paths made
    relative to the file. A missing named file, bad TOML or an unknown key is a usage error."""
    file = Path(path) if path else Path(CONFIG_FILE)
    if not file.exists():
        if path:
            raise click.BadParameter(f"config file {path} does not exist", param_hint="--config")
        return {}
    try:
        data = tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(
            f"{file} is not valid TOML: {exc}", param_hint="--config"
        ) from None
    tables = {
        command: _parameters(file, group, command, table)
        for command, table in data.items()
        if isinstance(table, dict)
    }
    for table in tables.values():
        for name in PATH_SETTINGS:
            if isinstance(table.get(name), str):
                table[name] = str(file.parent / Path(table[name]).expanduser())
    return tables


def _parameters(
    file: Path, group: click.Group, command: str, table: dict[str, Any]
) -> dict[str, Any]:
    """A settings table's keys as the command's parameter names; an unknown one is an error
    that says where it is and how to see the known ones."""
    if command not in COMMANDS:
        raise click.BadParameter(
            f"{file}: [{command}] is not a command with settings; use one of "
            f"{', '.join(f'[{c}]' for c in COMMANDS)}",
            param_hint="--config",
        )
    names = parameter_names(group.commands[command])
    unknown = sorted(key for key in table if key not in names)
    if unknown:
        raise click.BadParameter(
            f"{file}: [{command}] has no setting {', '.join(map(repr, unknown))}; "
            "`taskswarm config show` lists every setting",
            param_hint="--config",
        )
    return {names[key]: value for key, value in table.items()}
