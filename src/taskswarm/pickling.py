"""Pickling of application code: what travels by value, what by reference.

cloudpickle sends a class or function *by reference* (module + name) whenever its module can be
imported where it is pickled. The master and the slaves, though, can only import what is
installed there. So code from modules that belong to no installed distribution (an app's own
files, a test module, a notebook's helpers) is registered to travel *by value*, and code from
installed packages (taskswarm itself, numpy, the user's pip-installed libraries) by reference.

Tasks take a faster road (``dumps_task``): the standard C pickler, which hands each function and
class it meets to ``reducer_override``; one that must travel by value is pickled by cloudpickle
*once* and sent as that blob, cached on both sides. A batch of 10,000 tasks calling one function
from ``__main__`` pickles that function once, not 10,000 times, and a worker rebuilds it once.
Like Dask's function cache, this means a function's global *values* are those of its first
submission in this process: define a new function (or pass the value as an argument) to change
one. Whatever the fast pickler cannot do falls back to plain cloudpickle.
"""

from __future__ import annotations

import functools
import io
import pickle
import sys
import threading
import types
from importlib.metadata import packages_distributions
from typing import Any

import cloudpickle

from .task import FunctionTask

__all__ = ["dumps", "dumps_task", "loads"]

loads = cloudpickle.loads
#: Blobs kept per process (either side); past this many the cache starts afresh.
BLOB_CACHE = 512
_blobs: dict[int, tuple[Any, bytes]] = {}  # id(obj) -> (obj, blob), on the pickling side
_loaded: dict[bytes, Any] = {}  # blob -> obj, on the unpickling side


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


def _by_value(obj: Any) -> bool:
    """Whether a function or class must travel as code: it lives in ``__main__`` or in app
    files, or it cannot be found again by name (a lambda, a function defined in a function)."""
    module = getattr(obj, "__module__", None)
    if module is None:
        return True
    if module == "__main__" or _ship_by_value(module):
        return True
    qualname = getattr(obj, "__qualname__", "")
    return "<" in qualname


def _blob(obj: Any) -> bytes | None:
    """The by-value pickle of a function or class, or None when it travels by reference;
    decided and made once per object."""
    entry = _blobs.get(id(obj))
    if entry is not None and entry[0] is obj:
        return entry[1]
    if len(_blobs) >= BLOB_CACHE:
        _blobs.clear()
    blob = cloudpickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if _by_value(obj) else None
    _blobs[id(obj)] = (obj, blob)
    return blob


def load_by_value(blob: bytes) -> Any:
    """The unpickling side of a by-value function or class: built once per process."""
    obj = _loaded.get(blob)
    if obj is None:
        if len(_loaded) >= BLOB_CACHE:
            _loaded.clear()
        obj = _loaded[blob] = cloudpickle.loads(blob)
    return obj


_CODE_TYPES = (types.FunctionType, type)


def load_function_task(fn: Any, state: dict[str, Any]) -> FunctionTask:
    """Rebuild a FunctionTask pickled by ``_TaskPickler``; ``fn`` may be a by-value blob."""
    task = FunctionTask.__new__(FunctionTask)
    task.__dict__.update(state)
    task.fn = load_by_value(fn) if isinstance(fn, bytes) else fn
    return task


class _TaskPickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is FunctionTask:  # the common case, in one global instead of three
            state = dict(obj.__dict__)
            fn = state.pop("fn")
            blob = _blob(fn) if isinstance(fn, _CODE_TYPES) else None
            return load_function_task, (fn if blob is None else blob, state)
        if isinstance(obj, _CODE_TYPES):
            blob = _blob(obj)
            if blob is not None:
                return load_by_value, (blob,)
        return NotImplemented


class _Picklers(threading.local):
    """One pickler per thread, reused: making one costs as much as pickling a small task."""

    def __init__(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _TaskPickler(self.buffer, protocol=pickle.HIGHEST_PROTOCOL)


_picklers = _Picklers()


def _fast_dumps(obj: Any) -> bytes:
    local = _picklers
    buffer, pickler = local.buffer, local.pickler
    buffer.seek(0)
    buffer.truncate()
    pickler.clear_memo()
    try:
        pickler.dump(obj)
    except BaseException:
        # A failed dump may leave the pickler half-way: start the next one afresh.
        local.__init__()
        raise
    return buffer.getvalue()


def dumps_task(task: Any) -> bytes:
    """Pickle a task for the trip to a worker; an error names what cannot be pickled."""
    if not isinstance(getattr(task, "task_id", None), str):
        raise TypeError(
            f"{task!r} has no task_id: subclass ts.Task and call super().__init__() in __init__"
        )
    try:
        return _fast_dumps(task)
    except Exception:
        pass  # something only cloudpickle can do (or a real error, which it will raise)
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
