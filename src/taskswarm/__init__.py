"""taskswarm: a distributed task framework for Python 3.

A master schedules tasks onto slaves, each running a pool of worker processes; applications send
it tasks, or whole task systems that run on the master, generate tasks, react to each finished
one, decide when they are complete and gather the result. See DESIGN.md for the contract.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import api
    from .client.aio import AsyncApplication, connect_async
    from .client.application import Application, connect
    from .client.appnode import ApplicationNode
    from .client.handles import SystemHandle, TaskswarmExecutor
    from .errors import (
        AmbiguousTaskSystem,
        AuthenticationFailed,
        ClientClosed,
        ClusterError,
        ConfigurationError,
        DependencyError,
        MasterUnreachable,
        MessageTooLarge,
        ResourceUnavailable,
        ShippingError,
        TaskError,
        TaskswarmError,
        TaskSystemError,
        TaskTimeout,
        UnknownTaskSystem,
        WorkerCrashed,
        WorkerMemoryExceeded,
    )
    from .inputs import ResultRef
    from .local import LocalCluster, connect_or_start
    from .system import TaskSystem
    from .task import FunctionTask, RemoteTraceback, Task

#: Where each public name lives. They are imported on first use, not with the package: every
#: node process (``python -m taskswarm master|slave``, a worker's forkserver) imports this
#: package first, and the application side (the client, its futures, LocalCluster) is most of
#: what importing it all would cost them at start.
_HOMES = {
    "api": ".api",
    "Application": ".client.application",
    "connect": ".client.application",
    "AsyncApplication": ".client.aio",
    "connect_async": ".client.aio",
    "ApplicationNode": ".client.appnode",
    "SystemHandle": ".client.handles",
    "TaskswarmExecutor": ".client.handles",
    "LocalCluster": ".local",
    "connect_or_start": ".local",
    "ResultRef": ".inputs",
    "TaskSystem": ".system",
    "FunctionTask": ".task",
    "RemoteTraceback": ".task",
    "Task": ".task",
    **dict.fromkeys(
        [
            "AmbiguousTaskSystem",
            "AuthenticationFailed",
            "ClientClosed",
            "ClusterError",
            "ConfigurationError",
            "DependencyError",
            "MasterUnreachable",
            "MessageTooLarge",
            "ResourceUnavailable",
            "ShippingError",
            "TaskError",
            "TaskswarmError",
            "TaskSystemError",
            "TaskTimeout",
            "UnknownTaskSystem",
            "WorkerCrashed",
            "WorkerMemoryExceeded",
        ],
        ".errors",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    module = importlib.import_module(home, __name__)
    value = module if name == "api" else getattr(module, name)
    globals()[name] = value  # the next look-up is an ordinary attribute
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))


__version__ = "0.1.0"

__all__ = [
    "api",
    "AmbiguousTaskSystem",
    "Application",
    "ApplicationNode",
    "AsyncApplication",
    "AuthenticationFailed",
    "ClientClosed",
    "ClusterError",
    "ConfigurationError",
    "DependencyError",
    "FunctionTask",
    "LocalCluster",
    "MasterUnreachable",
    "MessageTooLarge",
    "RemoteTraceback",
    "ResourceUnavailable",
    "ResultRef",
    "ShippingError",
    "SystemHandle",
    "Task",
    "TaskError",
    "TaskSystem",
    "TaskSystemError",
    "TaskTimeout",
    "TaskswarmError",
    "TaskswarmExecutor",
    "UnknownTaskSystem",
    "WorkerCrashed",
    "WorkerMemoryExceeded",
    "connect",
    "connect_async",
    "connect_or_start",
]
