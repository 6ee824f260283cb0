"""Pickling of application code: what travels by value, what by reference.

cloudpickle sends a class or function *by reference* (module + name) whenever its module can be
imported where it is pickled. The master and the slaves, though, can only import what is
installed there. So code from modules that belong to no installed distribution (an app's own
files, a test module, a notebook's helpers) is registered to travel *by value*, and code from
installed packages (taskswarm itself, numpy, the user's pip-installed libraries) by reference.
"""

from __future__ import annotations

import functools
import sys
from importlib.metadata import packages_distributions
from typing import Any

import cloudpickle

from .task import FunctionTask

__all__ = ["dumps", "dumps_task", "loads"]

loads = cloudpickle.loads


@functools.lru_cache(maxsize=1)
def _installed_top_levels() -> frozenset[str]:
    return frozenset(packages_distributions())


@functools.lru_cache(maxsize=1024)
def _ship_by_value(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    if module_name == "__main__" or top in sys.stdlib_module_names or top == "builtins":
        return False  # __main__ already travels by value; the stdlib is everywhere
    if top in _installed_top_levels():
        return False
    module = sys.modules.get(module_name)
    if module is None or getattr(module, "__file__", None) is None:
        return False
    cloudpickle.register_pickle_by_value(module)
    return True


def _code_modules(obj: Any) -> set[str]:
    """Modules whose code ``obj`` needs: its class and base classes, a wrapped function's, and
    those of the classes of its attributes (one level down: a task holding a helper object)."""
    modules = {cls.__module__ for cls in type(obj).__mro__}
    fn = getattr(obj, "fn", None)
    if fn is not None:
        modules.add(getattr(fn, "__module__", None) or "builtins")
    for value in getattr(obj, "__dict__", {}).values():
        modules.update(cls.__module__ for cls in type(value).__mro__)
        if isinstance(value, type):
            modules.update(cls.__module__ for cls in value.__mro__)
    return modules


def dumps(obj: Any) -> bytes:
    """cloudpickle ``obj``, first marking the modules of app code it carries to go by value."""
    for name in _code_modules(obj):
        _ship_by_value(name)
    return cloudpickle.dumps(obj)


def dumps_task(task: Any) -> bytes:
    """Pickle a task for the trip to a worker; an error names what cannot be pickled."""
    if not isinstance(getattr(task, "task_id", None), str):
        raise TypeError(
            f"{task!r} has no task_id: subclass ts.Task and call super().__init__() in __init__"
        )
    try:
        return dumps(task)
    except Exception as exc:
        raise TypeError(
            f"task {task.name!r} cannot be sent: {_unpicklable_part(task)} cannot be pickled "
            f"({type(exc).__name__}: {exc}); everything a task holds must be picklable to travel "
            "to a worker: create such objects inside __call__ instead"
        ) from exc


def _unpicklable_part(task: Any) -> str:
    """Name what in a task cannot be pickled: an attribute, an argument, or the task itself."""
    parts = dict(vars(task))
    if isinstance(task, FunctionTask):
        parts.pop("args", None)
        parts.pop("kwargs", None)
        parts.update({f"argument {i}": a for i, a in enumerate(task.args)})
        parts.update({f"argument {k!r}": v for k, v in task.kwargs.items()})
    for name, value in parts.items():
        try:
            dumps(value)
        except Exception:
            label = name if name.startswith("argument") else f"attribute {name!r}"
            return f"{label} ({type(value).__module__}.{type(value).__qualname__})"
    return "the task"
