"""MkDocs hooks: the pages that are generated from the code, so they cannot drift from it.

Both read the click app itself (``taskswarm.ops.cli.cli``), so a new option or command appears here
without anyone writing it down:

- ``<!-- taskswarm:cli -->`` becomes every command's ``--help``, exactly as the terminal shows it,
  under a heading per command (subcommands included);
- ``<!-- taskswarm:settings -->`` becomes one table per command of every setting: the option, its
  key in ``taskswarm.toml``, its environment variables, its default and its help, resolved the way
  ``settings.load_settings_file`` and click resolve them.
"""

from __future__ import annotations

from typing import Any

import click

MARKER = "<!-- taskswarm:settings -->"
CLI_MARKER = "<!-- taskswarm:cli -->"
#: Columns of the rendered --help (what a wide terminal shows).
HELP_WIDTH = 96
PREFIX = "TASKSWARM"
#: click 8.3+ marks "no default" with a sentinel of its own instead of None.
_UNSET = getattr(click.core, "UNSET", None)


def on_page_markdown(markdown: str, page: Any, **kwargs: Any) -> str:
    if MARKER in markdown:
        markdown = markdown.replace(MARKER, settings_markdown())
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_markdown())
    return markdown


def cli_markdown() -> str:
    from taskswarm.ops.cli import cli

    root = click.Context(
        cli, info_name="taskswarm", terminal_width=HELP_WIDTH, max_content_width=HELP_WIDTH
    )
    return "\n".join(_help_sections(cli, root, level=2))


def _help_sections(command: click.Command, ctx: click.Context, level: int) -> list[str]:
    """The command's --help under a heading, then each of its subcommands' one level down."""
    path = ctx.command_path
    parts = [f"{'#' * level} `{path}`\n", f"```text\n{command.get_help(ctx)}\n```\n"]
    if isinstance(command, click.Group):
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            child = click.Context(
                sub,
                info_name=name,
                parent=ctx,
                terminal_width=HELP_WIDTH,
                max_content_width=HELP_WIDTH,
            )
            parts += _help_sections(sub, child, level + 1 if level < 3 else level)
    return parts


def settings_markdown() -> str:
    from taskswarm.ops.cli import cli

    ctx = click.Context(cli, info_name="taskswarm")
    parts = [
        "### Every command (`taskswarm OPTIONS COMMAND`)\n",
        "These come before the command's name. They cannot be set in the file (they say which "
        "file to read), only on the command line or in the environment.\n",
        _table(cli, command=None),
    ]
    for path, command in _commands(cli, ctx, ()):
        table = ".".join(path)
        summary = command.get_short_help_str(limit=200)
        parts += [f"### `taskswarm {' '.join(path)}`\n", f"{summary} Table `[{table}]`.\n"]
        parts.append(_table(command, command="_".join(path)))
    return "\n".join(parts)


def _commands(
    group: click.Group, ctx: click.Context, path: tuple[str, ...]
) -> list[tuple[tuple[str, ...], click.Command]]:
    """Every command that runs something, subcommands of groups included (click looks a
    subcommand's settings up in its group's table, so ``config show`` reads ``[config.show]``)."""
    found = []
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        if command is None or command.hidden:
            continue
        if isinstance(command, click.Group):
            found += _commands(
                command, click.Context(command, info_name=name, parent=ctx), (*path, name)
            )
        else:
            found.append(((*path, name), command))
    return found


def _table(source: click.Command, command: str | None) -> str:
    rows = [
        "| option | in `taskswarm.toml` | environment | default | what it sets |",
        "|---|---|---|---|---|",
    ]
    for param in source.params:
        if not _is_setting(param):
            continue
        rows.append(
            "| {} | {} | {} | {} | {} |".format(
                _flags(param),
                f"`{_key(param)}`" if command else "—",
                "<br>".join(f"`{name}`" for name in _envvars(param, command)) or "—",
                _default(param),
                _cell(getattr(param, "help", None) or "An argument: see the command's `--help`."),
            )
        )
    if len(rows) == 2:
        return "No settings.\n"
    return "\n".join(rows) + "\n"


def _is_setting(param: click.Parameter) -> bool:
    """Options a user sets, and arguments that can come from the environment too."""
    if not param.expose_value or getattr(param, "hidden", False):
        return False
    return isinstance(param, click.Option) or bool(param.envvar)


def _flags(param: click.Parameter) -> str:
    if isinstance(param, click.Argument):
        return f"`{param.human_readable_name}` (argument)"
    names = " / ".join(param.opts + param.secondary_opts)
    if param.is_flag:
        return f"`{names}`"
    if isinstance(param.type, click.Choice):
        metavar = "|".join(str(choice) for choice in param.type.choices)
    else:
        metavar = param.metavar or param.type.name.upper().removesuffix(" RANGE")
    return f"`{names} {metavar}`"


def _key(param: click.Parameter) -> str:
    """An option's key is its long flag (``--master`` -> ``master``); an argument's is its
    parameter name (``MASTER`` of ``slave`` -> ``master-address``)."""
    if isinstance(param, click.Option):
        key = max(param.opts, key=len).lstrip("-")
    else:
        key = param.name.replace("_", "-")
    if isinstance(param, click.Option) and param.is_flag:
        return f"{key} = {'false' if param.default is True else 'true'}"
    return key


def _envvars(param: click.Parameter, command: str | None) -> list[str]:
    """Explicit variables first; options also read ``TASKSWARM_[COMMAND_]NAME`` (click's
    ``auto_envvar_prefix``), as ``Option.resolve_envvar_value`` does."""
    names = [param.envvar] if isinstance(param.envvar, str) else list(param.envvar or [])
    if isinstance(param, click.Option) and param.allow_from_autoenv:
        prefix = f"{PREFIX}_{command.upper().replace('-', '_')}" if command else PREFIX
        auto = f"{prefix}_{param.name.upper()}"
        if auto not in names:
            names.append(auto)
    return names


def _default(param: click.Parameter) -> str:
    if isinstance(param, click.Option) and param.is_flag and not param.secondary_opts:
        return "off"
    default = param.default
    if default is None or default is _UNSET or callable(default):
        return "—"
    if isinstance(default, bool):
        return "on" if default else "off"
    return f"`{default}`"


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
