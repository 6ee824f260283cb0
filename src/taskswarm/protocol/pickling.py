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

Just over 400 lines: the fast task pickler and the by-value rules it must agree with are one
concern.
"""

from __future__ import annotations

import collections
import functools
import io
import logging
import os
import pickle
import sys
import sysconfig
import threading
import types
from collections.abc import Callable
from importlib.metadata import packages_distributions
from typing import Any

import cloudpickle

from ..inputs import DependencyFailed
from ..task import FunctionTask
from . import sharing

__all__ = ["dumps", "dumps_task", "loads"]

log = logging.getLogger(__name__)
loads = cloudpickle.loads
#: Blobs kept per process (either side); past this many the cache starts afresh.
BLOB_CACHE = 512
_blobs: dict[int, tuple[Any, bytes | None]] = {}  # id(obj) -> (obj, blob), on the pickling side
_loaded: dict[bytes, Any] = {}  # blob -> obj, on the unpickling side


@functools.lru_cache(maxsize=1)
def _installed_top_levels() -> frozenset[str]:
    return frozenset(packages_distributions())


_by_value_modules: dict[str, bool] = {}  # module name -> travels by value (decided once)


def _ship_by_value(module_name: str) -> bool:
    decided = _by_value_modules.get(module_name)
    if decided is None:
        decided = _by_value_modules[module_name] = _decide_by_value(module_name)
    return decided


def _decide_by_value(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    if module_name == "__main__" or top in sys.stdlib_module_names or top == "builtins":
        return False  # __main__ already travels by value; the stdlib is everywhere
    if top in _installed_top_levels():
        return False
    module = sys.modules.get(module_name)
    path = getattr(module, "__file__", None)
    if module is None or path is None or _installed_path(path):
        return False
    cloudpickle.register_pickle_by_value(module)
    return True


def _installed_path(path: str) -> bool:
    """A file of the interpreter's own library or site-packages: installed where it runs."""
    return os.path.abspath(path).startswith(_library_roots())


@functools.lru_cache(maxsize=1)
def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    return tuple(os.path.join(os.path.abspath(root), "") for root in roots)


def _keep_by_reference(module_name: str) -> None:
    """A module whose contents cannot travel by value (a lock, an open file at module level)
    goes back to travelling by reference: the slaves must have it installed, as before."""
    _by_value_modules[module_name] = False
    module = sys.modules.get(module_name)
    if module is not None:
        try:
            cloudpickle.unregister_pickle_by_value(module)
        except ValueError:
            pass  # it was not registered


# -- what code an object brings with it --------------------------------------------------------

_Walked = set[int]


def _needed_code(obj: Any, seen: _Walked, modules: set[str]) -> None:
    """Register by value every module of the application's own that ``obj``'s code reaches
    (a ``helpers.py`` beside the script, imported as a module or by name); collect their
    names in ``modules``."""
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, types.ModuleType):
            reached = _module_reaches(item, modules)
        elif isinstance(item, types.FunctionType):
            reached = _function_reaches(item, modules)
        else:
            reached = _class_reaches(item)
        stack.extend(value for value in reached if isinstance(value, _CODE_OR_MODULE))


def _module_reaches(module: types.ModuleType, modules: set[str]) -> list[Any]:
    if not _ship_by_value(module.__name__):
        return []
    modules.add(module.__name__)
    return list(vars(module).values())


def _function_reaches(fn: types.FunctionType, modules: set[str]) -> list[Any]:
    if not _by_value(fn):
        return []
    if fn.__module__ not in (None, "__main__"):
        modules.add(fn.__module__)
    namespace = fn.__globals__
    reached = [namespace.get(name) for name in _global_names(fn.__code__)]
    for cell in fn.__closure__ or ():
        try:
            reached.append(cell.cell_contents)
        except ValueError:
            pass  # an empty cell
    return reached


def _class_reaches(cls: type) -> list[Any]:
    if not _by_value(cls):
        return []
    members = [getattr(value, "__func__", value) for value in vars(cls).values()]
    return members + list(cls.__mro__[1:])


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _code_keeping_its_file(code: types.CodeType) -> Any:
    """cloudpickle's reduction of a code object, but with the file name kept: cloudpickle
    writes ``<dynamic-code>`` instead (for byte-identical pickles), which leaves a remote
    traceback with neither the file nor, so, its lines."""
    cls, args = _cloudpickle_code_reduce(code)
    return cls, tuple(code.co_filename if arg == _DYNAMIC else arg for arg in args)


_DYNAMIC = "<dynamic-code>"
# Private to cloudpickle (checked by the tests, which fail should it move).
_cloudpickle_code_reduce = cloudpickle.cloudpickle._code_reduce


class _CodePickler(cloudpickle.Pickler):  # type: ignore[misc]  # cloudpickle ships no types
    dispatch_table = collections.ChainMap(
        {types.CodeType: _code_keeping_its_file}, cloudpickle.Pickler.dispatch_table
    )


def cloud_dumps(obj: Any, buffer_callback: Callable[[Any], Any] | None = None) -> bytes:
    """``cloudpickle.dumps``, keeping the file names of code that travels by value."""
    buffer = io.BytesIO()
    _CodePickler(buffer, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=buffer_callback).dump(
        obj
    )
    return buffer.getvalue()


def dumps(obj: Any, buffer_callback: Callable[[Any], Any] | None = None) -> bytes:
    """cloudpickle ``obj``, first marking the modules of app code it carries to go by value
    (out-of-band buffers to ``buffer_callback``, when given: see ``sharing``)."""
    seen: _Walked = set()
    for code in _code_objects(obj):
        _needed_code(code, seen, set())
    return cloud_dumps(obj, buffer_callback)


def _code_objects(obj: Any) -> list[Any]:
    """The classes and functions an object is made of: its class, a wrapped function's, and
    those of its attributes (one level down: a task holding a helper object)."""
    found: list[Any] = [type(obj)]
    for value in [getattr(obj, "fn", None), *getattr(obj, "__dict__", {}).values()]:
        value = getattr(value, "__func__", value)  # a bound method: its function's code
        if isinstance(value, _CODE_OR_MODULE):
            found.append(value)
        elif value is not None:
            found.append(type(value))
    return found


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
    blob = _code_blob(obj) if _by_value(obj) else None
    _blobs[id(obj)] = (obj, blob)
    return blob


def _code_blob(obj: Any) -> bytes:
    """A function or class by value, with the application modules it uses (by value too). A
    module that cannot travel by value is left to travel by reference, as it did before it was
    found. (Its source lines do not travel: every task carries this blob, so the application
    fills them into remote tracebacks instead; see ``task.with_source_lines``.)"""
    modules: set[str] = set()
    _needed_code(obj, set(), modules)
    try:
        return cloud_dumps(obj)
    except Exception:
        if not modules:
            raise
    for name in modules:
        _keep_by_reference(name)
    return cloud_dumps(obj)


def load_by_value(blob: bytes) -> Any:
    """The unpickling side of a by-value function or class: built once per process."""
    obj = _loaded.get(blob)
    if obj is None:
        if len(_loaded) >= BLOB_CACHE:
            _loaded.clear()
        obj = _loaded[blob] = cloudpickle.loads(blob)
    return obj


_CODE_TYPES = (types.FunctionType, type)
_CODE_OR_MODULE = (types.FunctionType, type, types.ModuleType)


def load_function_task(fn: Any, state: dict[str, Any]) -> FunctionTask:
    """Rebuild a FunctionTask pickled by ``_TaskPickler``; ``fn`` may be a by-value blob."""
    task = FunctionTask.__new__(FunctionTask)
    task.__dict__.update(state)
    task.fn = load_by_value(fn) if isinstance(fn, bytes) else fn
    return task


class _TaskPickler(pickle.Pickler):
    #: With sharing: arguments of this many bytes or more go out of band (``sharing.wrap_big``).
    big: int | None = None

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is FunctionTask:  # the common case, in one global instead of three
            state = dict(obj.__dict__)
            fn = state.pop("fn")
            if self.big is not None:
                state["args"] = sharing.wrap_big(state["args"], self.big)
                state["kwargs"] = sharing.wrap_big(state["kwargs"], self.big)
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
        self.reset()

    def reset(self) -> None:
        self.buffer = io.BytesIO()
        self.pickler = _TaskPickler(self.buffer, protocol=pickle.HIGHEST_PROTOCOL)
        self.shared_buffer = io.BytesIO()
        self.collector = sharing.Collector(0)
        self.shared_pickler = _TaskPickler(
            self.shared_buffer, protocol=pickle.HIGHEST_PROTOCOL, buffer_callback=self.collector
        )


_picklers = _Picklers()


def _fast_dumps(obj: Any, big: int | None = None) -> bytes:
    local = _picklers
    if big is None:
        buffer, pickler = local.buffer, local.pickler
    else:
        buffer, pickler = local.shared_buffer, local.shared_pickler
        pickler.big = local.collector.minimum = big
    try:
        pickler.dump(obj)
    except BaseException:
        # A failed dump may leave the pickler half-way: start the next one afresh.
        local.reset()
        raise
    data = buffer.getvalue()
    # The memo refers to everything just pickled: cleared now, not before the next dump, so
    # the last task's arguments are not kept alive by the pickler (test_no_stale_references).
    pickler.clear_memo()
    buffer.seek(0)
    buffer.truncate()
    return data


class UnpicklableTask(TypeError):
    """A task that cannot be pickled; the pickler's own error is its ``__cause__``."""


def dumps_task(task: Any, share: sharing.Sharing | None = None) -> bytes:
    """Pickle a task for the trip to a worker; an error names what cannot be pickled.

    With ``share``, a task of its threshold or more goes into a shared memory segment, its big
    buffers out of band, and what returns is the reference (see ``sharing``); the caller frees
    it (``sharing.free``) when the task is settled.
    """
    if not isinstance(getattr(task, "task_id", None), str):
        raise TypeError(
            f"{task!r} has no task_id: subclass ts.Task and call super().__init__() in __init__"
        )
    if share is not None:
        return _dumps_shared(task, share)
    try:
        return _fast_dumps(task)
    except DependencyFailed:
        raise  # an input already failed: the task is not sent at all
    except Exception:
        pass  # something only cloudpickle can do (or a real error, which it will raise)
    return _cloud_dumps_task(task)


def _dumps_shared(task: Any, share: sharing.Sharing) -> bytes:
    collector = _picklers.collector
    collector.clear()
    try:
        try:
            data = _fast_dumps(task, share.threshold)
        except DependencyFailed:
            raise
        except Exception:
            collector.clear()
            collector.minimum = share.threshold
            data = _cloud_dumps_task(task, collector)
        try:
            return sharing.seal(share, "a", task.task_id, data, collector.buffers)
        except OSError as exc:
            log.warning("no shared memory segment for task %s (%s): sent inline", task.name, exc)
    finally:
        collector.clear()  # the buffers refer to the task's data: let it go
    return dumps_task(task)


def _cloud_dumps_task(task: Any, buffer_callback: Callable[[Any], Any] | None = None) -> bytes:
    try:
        return dumps(task, buffer_callback)
    except DependencyFailed:
        raise
    except Exception as exc:
        raise UnpicklableTask(
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
