"""The public surface: ``taskswarm.__all__`` and the seed's four interfaces in ``taskswarm.api``.

Code written against the seed ports by changing imports, so the interfaces keep the seed's class
names, method names and parameter names; taskswarm may add parameters after them, never rename.
Changing the export list is a decision: this file is where it is made.
"""

from __future__ import annotations

import importlib
import inspect

import pytest

import taskswarm as ts
from taskswarm import api
from taskswarm.scheduling.pull import PullScheduler
from taskswarm.scheduling.push import PushScheduler
from taskswarm.scheduling.strategies import LoadStrategy, RoundRobinStrategy
from taskswarm.slave.process_pool import ProcessPoolManager

EXPORTS = [
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

#: The seed's interfaces: each method with the parameters the seed gave it (``self`` left out).
SEED = {
    "ITaskManager": {
        "init": ["identity", "address"],
        "get_num_workers": [],
        "start": [],
        "stop": [],
        "update_pool": ["_num_workers"],
        "push_task": ["task"],
        "wait_for_all": [],
        "get_results_queue": [],
        "create_task": ["task_class"],
        "task_finished": ["task", "result", "error"],
    },
    "ITaskSystem": {
        "init_system": ["master"],
        "get_system_id": [],
        "generate_tasks": ["master"],
        "task_finished": ["master", "task", "result", "error"],
        "gather_result": ["master"],
        "is_complete": ["master"],
    },
    "ITaskScheduleStrategy": {
        "setup": ["scheduler", "master"],
        "rate": ["slave"],
        "get_next_slave": [],
    },
    "ITaskScheduler": {
        "setup": ["master"],
        "rate_slaves": [],
        "start_system": ["task_system"],
        "push_tasks": ["tasks"],
        "push_task": ["task"],
        "handle_task": ["task"],
        "_tasked_pushed": ["slave_id"],
        "task_finished": ["task", "result", "error"],
    },
}

SEED_METHODS = [(cls, method) for cls, methods in SEED.items() for method in methods]


def test_the_export_list_is_exactly_the_public_api():
    assert ts.__all__ == EXPORTS


def test_the_export_list_has_no_duplicates():
    assert len(set(ts.__all__)) == len(ts.__all__)


@pytest.mark.parametrize("name", EXPORTS)
def test_every_exported_name_is_importable_from_taskswarm(name):
    namespace: dict[str, object] = {}
    exec(f"from taskswarm import {name}", namespace)

    assert namespace[name] is getattr(ts, name)


def test_a_star_import_brings_exactly_the_export_list():
    namespace: dict[str, object] = {}
    exec("from taskswarm import *", namespace)

    assert sorted(k for k in namespace if k != "__builtins__") == sorted(EXPORTS)


def test_the_package_has_a_version():
    assert isinstance(ts.__version__, str) and ts.__version__


def test_the_api_module_defines_the_seeds_four_interfaces():
    assert sorted(api.__all__) == sorted(SEED)
    for name in SEED:
        assert inspect.isclass(getattr(api, name))
        assert getattr(api, name).__module__ == "taskswarm.api"


@pytest.mark.parametrize(("interface", "method"), SEED_METHODS)
def test_every_seed_method_keeps_its_name_and_parameters(interface, method):
    function = getattr(getattr(api, interface), method)
    parameters = list(inspect.signature(function).parameters.values())

    assert parameters[0].name == "self"
    positional = [
        p.name for p in parameters[1:] if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    seed = SEED[interface][method]
    assert positional[: len(seed)] == seed
    for extra in parameters[1 + len(seed) :]:  # anything taskswarm added must be optional
        assert extra.default is not extra.empty or extra.kind in (
            extra.VAR_POSITIONAL,
            extra.VAR_KEYWORD,
        ), extra


def test_a_task_systems_id_is_a_read_only_property_like_in_the_seed():
    assert isinstance(api.ITaskSystem.system_id, property)
    assert api.ITaskSystem.system_id.fset is None


def test_every_task_system_gets_its_own_id_at_construction():
    first, second = ts.TaskSystem(), ts.TaskSystem()

    assert first.system_id == first.get_system_id()
    assert first.system_id != second.system_id
    with pytest.raises(AttributeError):
        first.system_id = "mine"


@pytest.mark.parametrize(
    ("implementation", "interface"),
    [
        (ts.TaskSystem, api.ITaskSystem),
        (PushScheduler, api.ITaskScheduler),
        (PullScheduler, api.ITaskScheduler),
        (LoadStrategy, api.ITaskScheduleStrategy),
        (RoundRobinStrategy, api.ITaskScheduleStrategy),
        (ProcessPoolManager, api.ITaskManager),
    ],
    ids=lambda cls: cls.__name__,
)
def test_taskswarms_components_implement_the_seeds_interfaces(implementation, interface):
    assert issubclass(implementation, interface)
    assert not getattr(implementation, "__abstractmethods__", frozenset())


def test_an_implementation_that_forgets_a_method_fails_at_construction():
    class Forgetful(api.ITaskScheduleStrategy):
        def setup(self, scheduler, master):
            pass

        def rate(self, slave):
            return 0.0

    with pytest.raises(TypeError, match="get_next_slave"):
        Forgetful()


EXPORTED_CLASSES = [n for n in EXPORTS if inspect.isclass(getattr(ts, n))]


@pytest.mark.parametrize("name", EXPORTED_CLASSES)
def test_every_exported_class_is_found_under_its_own_module_so_pickle_can_rebuild_it(name):
    cls = getattr(ts, name)

    # RemoteTraceback is the standard library's own class, as ProcessPoolExecutor attaches it.
    home = "concurrent.futures." if name == "RemoteTraceback" else "taskswarm."
    assert cls.__module__.startswith(home)
    assert getattr(importlib.import_module(cls.__module__), cls.__qualname__) is cls
    if issubclass(cls, ts.TaskswarmError):
        assert cls.__module__ == "taskswarm.errors"
