"""Pluggable parts (schedulers, schedule strategies, task managers), found by name.

Two ways in, as the seed's pluggable components are done in Python today:

- an installed package registers a class under an entry point (``taskswarm.schedulers``,
  ``taskswarm.strategies``, ``taskswarm.managers``), as taskswarm's own parts are;
- a Python file in an environment's ``plugins/`` directory (``taskswarm init``) registers one
  with :func:`register` when it is loaded at start -- no packaging needed to try an idea::

      from taskswarm.plugins import register
      from taskswarm.scheduling.strategies import LoadStrategy

      @register("strategy", "newest-slave-first")
      class NewestSlaveFirst(LoadStrategy): ...

A name registered by a file wins over an installed one, so a local experiment can stand in for
a part while it is being changed.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, TypeVar

from .errors import ConfigurationError

__all__ = ["GROUPS", "available", "load_plugin", "load_plugin_files", "register"]

#: What each kind of part is called, and its entry-point group.
GROUPS = {
    "scheduler": "taskswarm.schedulers",
    "strategy": "taskswarm.strategies",
    "manager": "taskswarm.managers",
}
_KINDS = {group: kind for kind, group in GROUPS.items()}
_KINDS["taskswarm.managers"] = "task manager"

_registered: dict[str, dict[str, Any]] = {group: {} for group in GROUPS.values()}

T = TypeVar("T")


def register(kind: str, name: str) -> Callable[[T], T]:
    """Class decorator: make ``name`` choose this class as a ``kind`` (scheduler, strategy,
    manager) in this process."""
    if kind not in GROUPS:
        raise ConfigurationError(f"no kind of plugin named {kind!r}; choose one of: {_choices()}")

    def decorate(cls: T) -> T:
        _registered[GROUPS[kind]][name] = cls
        return cls

    return decorate


def available(group: str) -> list[str]:
    """Every name that chooses a part of ``group``: installed and registered."""
    return sorted({ep.name for ep in entry_points(group=group)} | set(_registered.get(group, {})))


def load_plugin(group: str, name: str) -> Any:
    """The class registered under ``name`` in ``group``; a clear error naming the choices."""
    if name in _registered.get(group, {}):
        return _registered[group][name]
    for ep in entry_points(group=group):
        if ep.name == name:
            return ep.load()
    choices = ", ".join(available(group)) or "none installed"
    kind = _KINDS.get(group, group)
    raise ConfigurationError(f"no {kind} named {name!r}; choose one of: {choices}")


def load_plugin_files(directory: str | Path) -> list[Path]:
    """Run every ``*.py`` in ``directory`` (in name order) once, so its ``register`` calls take
    effect; returns the files loaded. A file that fails is a ConfigurationError naming it."""
    loaded = []
    for path in sorted(Path(directory).glob("*.py")):
        module_name = f"taskswarm_plugins.{path.stem}"
        if module_name in sys.modules:
            loaded.append(path)
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ConfigurationError(f"plugin {path} cannot be loaded as a Python module")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigurationError(
                f"plugin {path} failed to load: {type(exc).__name__}: {exc}; fix it or move it "
                f"out of {directory}"
            ) from exc
        loaded.append(path)
    return loaded


def _choices() -> str:
    return ", ".join(GROUPS)
