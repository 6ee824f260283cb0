"""Environments: one directory that holds a node's settings, plugins, logs, state and key.

``taskswarm init DIR`` makes one; ``taskswarm master|slave|run|status --env DIR`` (or
``TASKSWARM_ENV=DIR``) uses it. What the original framework kept in its sandbox directory, in
the layout people expect of a service::

    DIR/taskswarm.toml   every setting, with its default and what it does (one table per command)
    DIR/plugins/*.py     loaded at start: they may register schedulers, strategies, task managers
    DIR/logs/            each command's log (COMMAND.log), beside stderr
    DIR/state/           the master's journal
    DIR/cluster.key      the cluster key (mode 0600); copy it to every node

Relative paths in ``taskswarm.toml`` are relative to DIR, so the directory can move.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigurationError

__all__ = ["Environment", "CONFIG_NAME"]

CONFIG_NAME = "taskswarm.toml"
KEY_NAME = "cluster.key"


@dataclass(frozen=True)
class Environment:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def plugins(self) -> Path:
        return self.root / "plugins"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def key(self) -> Path:
        return self.root / KEY_NAME

    @classmethod
    def open(cls, directory: str | Path) -> Environment:
        """An environment ``taskswarm init`` made; a clear error when it is not one."""
        env = cls(Path(directory).expanduser().resolve())
        if not env.config.is_file():
            raise ConfigurationError(
                f"{directory} is not a taskswarm environment (no {CONFIG_NAME} in it); "
                f"make one with `taskswarm init {directory}`"
            )
        return env

    @classmethod
    def create(cls, directory: str | Path, template: str, force: bool = False) -> Environment:
        """Make the directory, its settings file from ``template``, its folders and its key."""
        from ..protocol.keys import generate_key_file

        env = cls(Path(directory).expanduser().resolve())
        if env.config.exists() and not force:
            raise ConfigurationError(
                f"{env.config} exists already; use --force to write the settings file again "
                "(the key, plugins, logs and state are kept)"
            )
        for folder in (env.root, env.plugins, env.logs, env.state):
            folder.mkdir(parents=True, exist_ok=True)
        env.config.write_text(template)
        example = env.plugins / "README.txt"
        if not example.exists():
            example.write_text(PLUGINS_README)
        if not env.key.exists():
            generate_key_file(str(env.key))
        return env

    def start(self, command: str, log: bool = True) -> list[Path]:
        """What a command does first in this environment: log to logs/COMMAND.log (a node's
        command; not a one-off like ``config show``) and load the plugins. Returns the plugin
        files loaded."""
        from ..plugins import load_plugin_files

        if log:
            self._log_to_file(command)
        loaded = load_plugin_files(self.plugins) if self.plugins.is_dir() else []
        for path in loaded:
            logging.getLogger("taskswarm").info("plugin %s loaded", path.name)
        return loaded

    def _log_to_file(self, command: str) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.logs / f"{command}.log")
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(process)d %(name)s: %(message)s")
        )
        logging.getLogger().addHandler(handler)


PLUGINS_README = """\
Python files here are loaded when a taskswarm command starts with --env pointing at this
environment (in name order). A file registers parts by name, which taskswarm.toml (or the
command line) then chooses, e.g. `[master] strategy = "newest-slave-first"`:

    from taskswarm.plugins import register
    from taskswarm.scheduling.strategies import LoadStrategy

    @register("strategy", "newest-slave-first")
    class NewestSlaveFirst(LoadStrategy):
        ...

Kinds: "scheduler" (ITaskScheduler), "strategy" (ITaskScheduleStrategy), "manager"
(ITaskManager, for slaves). See docs/scheduling.md.
"""
