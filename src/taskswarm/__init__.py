"""taskswarm: a distributed task framework for Python 3.

A master schedules tasks onto slaves, each running a pool of worker processes; applications send
it tasks, or whole task systems that run on the master, generate tasks, react to each finished
one, decide when they are complete and gather the result. See DESIGN.md for the contract.
"""

from __future__ import annotations

from . import api
from .client.application import Application, connect
from .client.appnode import ApplicationNode
from .client.handles import SystemHandle, TaskswarmExecutor
from .errors import (
    AuthenticationFailed,
    ClientClosed,
    ClusterError,
    ConfigurationError,
    MasterUnreachable,
    MessageTooLarge,
    ResourceUnavailable,
    TaskError,
    TaskswarmError,
    TaskSystemError,
    TaskTimeout,
    UnknownTaskSystem,
    WorkerCrashed,
    WorkerMemoryExceeded,
)
from .local import LocalCluster, connect_or_start
from .system import TaskSystem
from .task import FunctionTask, RemoteTraceback, Task

__version__ = "0.1.0"

__all__ = [
    "api",
    "Application",
    "ApplicationNode",
    "AuthenticationFailed",
    "ClientClosed",
    "ClusterError",
    "ConfigurationError",
    "FunctionTask",
    "LocalCluster",
    "MasterUnreachable",
    "MessageTooLarge",
    "RemoteTraceback",
    "ResourceUnavailable",
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
    "connect_or_start",
]
