"""CPython's own ``test_concurrent_futures``, run against ``app.executor()`` on a LocalCluster.

The standard library's tests are the definition of what a ``concurrent.futures.Executor`` does,
so taskswarm's Executor is held to them rather than to a paraphrase. Nothing of CPython's is kept
in this repository: the file is fetched at test time for the running Python's major.minor and
cached under ``$XDG_CACHE_HOME/taskswarm/cpython-tests/X.Y/`` (``~/.cache`` by default):

1. from the interpreter's own ``test`` package when it ships the file (python.org builds do);
2. else from Debian's ``libpythonX.Y-testsuite`` (``apt-get download`` + ``dpkg-deb -x``, with an
   ``apt-get update`` first only when the download fails). Its patch release may differ from the
   running one (bookworm ships 3.11.2's file); the tests of one minor release agree.

Where the interpreter ships it, it is imported as itself (``test.test_concurrent_futures``, which
the workers import too); a fetched copy is imported as ``cpython_test_concurrent_futures`` with the
interpreter's own ``test.support``, and to taskswarm it is then application code like any test
module, whose functions and classes travel to the workers by value. 3.11 has one module; 3.12+ a
package (``test_concurrent_futures/``), whose submodules are searched for the same classes.

What runs: the tests of the classes meant for any executor (``ExecutorTest``, ``WaitTests``,
``AsCompletedTests``, ``ExecutorShutdownTest``, ``FutureTests``) and, of the process-pool
classes (``ProcessPoolExecutorTest``, ``ExecutorDeadlockTest``), those that hold for any executor
whose calls run in other processes. ``EXCLUDED`` names every test of these classes that does not
run, with the reason; it holds only tests that cannot apply to a distributed executor, never a
test that fails because of a taskswarm bug. Not run at all: ``ThreadPool*`` classes (thread-pool
only), ``ProcessPoolShutdownTest``'s own tests (each reads the pool's ``_processes``,
``_call_queue`` or ``_executor_manager_thread``), ``InitializerMixin`` and
``FailingInitializerMixin`` (the ``initializer=`` constructor argument, which taskswarm's Executor
does not have). ``FutureTests`` exercise ``concurrent.futures.Future`` itself, the base class of the
futures taskswarm returns; they are counted with the generic classes, as CPython counts them.

How: one LocalCluster (2 slaves x 1 worker) for the module, started before the first test so its
processes and threads are outside every test's leak check (``threading_setup`` and
``reap_children`` in CPython's ``BaseTestCase``); each test gets a fresh ``app.executor()`` through
an executor mixin shaped like CPython's ``ProcessPoolForkMixin`` (``executor_type``,
``worker_count``, ``get_context``). The executor takes and ignores ``max_workers`` and
``mp_context``: the cluster's size is fixed by its slaves. The classes built from CPython's live
in ``Built`` (pytest would collect them at module level). Each CPython test is one pytest test,
run in the main thread as under CPython's regrtest (some tests set signal handlers), under a
watchdog: a hang fails that test with the hung stack and a fresh cluster serves the next one. A
test that leaves threads or child processes behind (CPython's "environment changed") fails too.
Records logged with no handler reach stderr as under regrtest (some tests read it), so pytest's
log capture is lifted while a CPython test runs.

Control: ``TASKSWARM_CONFORMANCE_TARGETS=taskswarm,processpool`` (or ``processpool`` alone) runs the
same selection against the stdlib's ``ProcessPoolExecutor`` through CPython's own
``ProcessPoolForkMixin``; every selected test passes there, which checks the harness itself.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import traceback
import types
import unittest
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts

VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"
MODULE_NAME = "cpython_test_concurrent_futures"
DEBIAN_PACKAGE = f"libpython{VERSION}-testsuite"
SLAVES, WORKERS = 2, 1
#: The harness's deadline for one CPython test. The slowest that pass take ~6 s (a 6 s sleep that
#: tearDown waits for); the crash tests give up on a deadlocked executor after 30 s by themselves.
CASE_TIMEOUT = 45.0
TARGETS = [
    name.strip()
    for name in os.environ.get("TASKSWARM_CONFORMANCE_TARGETS", "taskswarm").split(",")
    if name.strip()
]

GENERIC_CLASSES = ("ExecutorTest", "WaitTests", "AsCompletedTests", "ExecutorShutdownTest")
PROCESS_CLASSES = ("ProcessPoolExecutorTest", "ExecutorDeadlockTest")
FUTURE_CLASSES = ("FutureTests",)

_BY_NAME = "builds `concurrent.futures.<executor_type.__name__>(5)` in a child interpreter: only a "
_BY_NAME += "stdlib executor can be made that way"
_PRIVATE = "reads ProcessPoolExecutor internals ({})"
_CTOR = "a ProcessPoolExecutor constructor argument taskswarm's Executor does not have ({})"
_BROKEN_POOL = (
    "expects BrokenProcessPool, ProcessPoolExecutor's own error for a pool a dead worker breaks; a "
    "taskswarm worker that dies is replaced, and only its task fails ({})"
)

#: Every test of the classes above that does not run, with the reason.
EXCLUDED: dict[str, str] = {
    "ExecutorTest.test_max_workers_negative": _CTOR.format("max_workers"),
    "ExecutorShutdownTest.test_interpreter_shutdown": _BY_NAME,
    "ExecutorShutdownTest.test_submit_after_interpreter_shutdown": _BY_NAME,
    "ExecutorShutdownTest.test_hang_gh83386": _BY_NAME,
    "ProcessPoolExecutorTest.test_max_workers_too_large": _CTOR.format("max_workers; Windows only"),
    "ProcessPoolExecutorTest.test_killed_child": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_map_chunksize": (
        "ProcessPoolExecutor's check of chunksize (ValueError below 1); Executor.map documents "
        "chunksize as having no effect elsewhere"
    ),
    "ProcessPoolExecutorTest.test_ressources_gced_in_workers": (
        "passes a multiprocessing Manager proxy to a task: it authenticates with the parent's "
        "authkey, which only the parent's multiprocessing children share"
    ),
    "ProcessPoolExecutorTest.test_saturation": _PRIVATE.format("_max_workers, _processes"),
    "ProcessPoolExecutorTest.test_idle_process_reuse_one": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_idle_process_reuse_multiple": _PRIVATE.format("_processes"),
    "ProcessPoolExecutorTest.test_max_tasks_per_child": _CTOR.format("max_tasks_per_child"),
    "ProcessPoolExecutorTest.test_max_tasks_per_child_defaults_to_spawn_context": _CTOR.format(
        "max_tasks_per_child"
    ),
    "ProcessPoolExecutorTest.test_max_tasks_early_shutdown": _CTOR.format("max_tasks_per_child"),
    "ExecutorDeadlockTest.test_exit_at_task_unpickle": _BROKEN_POOL.format("exit in unpickling"),
    "ExecutorDeadlockTest.test_error_at_task_unpickle": _BROKEN_POOL.format("error in unpickling"),
    "ExecutorDeadlockTest.test_crash_at_task_unpickle": _BROKEN_POOL.format("segfault"),
    "ExecutorDeadlockTest.test_crash_during_func_exec_on_worker": _BROKEN_POOL.format("segfault"),
    "ExecutorDeadlockTest.test_crash_during_result_pickle_on_worker": _BROKEN_POOL.format(
        "segfault"
    ),
    "ExecutorDeadlockTest.test_error_during_result_unpickle_in_result_handler": _BROKEN_POOL.format(
        "the pool's result-handler thread"
    ),
    "ExecutorDeadlockTest.test_exit_during_result_unpickle_in_result_handler": _BROKEN_POOL.format(
        "the pool's result-handler thread"
    ),
    "ExecutorDeadlockTest.test_shutdown_deadlock": _BROKEN_POOL.format("segfault"),
    "ExecutorDeadlockTest.test_shutdown_deadlock_pickle": _PRIVATE.format(
        "_executor_manager_thread"
    ),
    # Tests that CPython's 3.11 file does not have.
    "ProcessPoolExecutorTest.test_python_finalization_error": _PRIVATE.format(
        "it makes the pool's second thread fail to start, through threading's private hook"
    ),
    "ExecutorDeadlockTest.test_crash_big_data": _BROKEN_POOL.format("segfault"),
}
#: Exclusions that name a test some versions of CPython's file do not have.
NOT_IN_EVERY_VERSION = {
    "ProcessPoolExecutorTest.test_python_finalization_error",
    "ExecutorDeadlockTest.test_crash_big_data",
}


# -- fetching CPython's tests ---------------------------------------------------------------------


class Unavailable(Exception):
    """CPython's test_concurrent_futures could not be found or fetched for this Python."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "taskswarm" / "cpython-tests" / VERSION


def _found_in(folder: Path) -> Path | None:
    """The package (3.12+) or the module (3.11) in a ``test`` folder, if there."""
    package = folder / "test_concurrent_futures"
    if (package / "__init__.py").is_file():
        return package
    module = folder / "test_concurrent_futures.py"
    return module if module.is_file() else None


def _run(command: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


def _from_debian(cache: Path) -> Path:
    apt, dpkg_deb = shutil.which("apt-get"), shutil.which("dpkg-deb")
    if not apt or not dpkg_deb:
        raise Unavailable(f"no apt-get/dpkg-deb here to fetch Debian's {DEBIAN_PACKAGE}")
    with tempfile.TemporaryDirectory(prefix="cpython-tests-") as tmp:
        work = Path(tmp)
        download = _run([apt, "download", DEBIAN_PACKAGE], work, 300)
        if download.returncode != 0 and os.geteuid() == 0:
            _run([apt, "update", "-qq"], work, 600)  # the package lists may be missing or stale
            download = _run([apt, "download", DEBIAN_PACKAGE], work, 300)
        debs = sorted(work.glob("*.deb"))
        if download.returncode != 0 or not debs:
            raise Unavailable(
                f"`apt-get download {DEBIAN_PACKAGE}` failed: {download.stderr.strip()[-500:]}"
            )
        unpacked = _run([dpkg_deb, "-x", str(debs[0]), "root"], work, 300)
        if unpacked.returncode != 0:
            raise Unavailable(f"dpkg-deb -x {debs[0].name}: {unpacked.stderr.strip()[-500:]}")
        found = _found_in(work / "root" / "usr" / "lib" / f"python{VERSION}" / "test")
        if found is None:
            raise Unavailable(f"{debs[0].name} holds no test_concurrent_futures")
        cache.mkdir(parents=True, exist_ok=True)
        # Staged beside the cache and renamed into place: a concurrent run sees all or nothing.
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache))
        try:
            if found.is_dir():
                shutil.copytree(found, staging / found.name)
            else:
                shutil.copy2(found, staging / found.name)
            (cache / "SOURCE").write_text(f"{debs[0].name}\n")
            try:
                os.replace(staging / found.name, cache / found.name)
            except OSError:
                if _found_in(cache) is None:  # not a concurrent run that got there first
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    cached = _found_in(cache)
    assert cached is not None
    return cached


def fetch_cpython_tests() -> Path:
    """The path of test_concurrent_futures (module or package) for the running Python."""
    import test

    own = _found_in(Path(test.__file__).parent)
    if own is not None:
        return own
    cache = cache_dir()
    return _found_in(cache) or _from_debian(cache)


def _import_with_submodules(name: str, path: Path) -> list[types.ModuleType]:
    module = importlib.import_module(name)
    modules = [module]
    if path.is_dir():
        for child in sorted(path.glob("*.py")):
            if child.stem not in ("__init__", "__main__"):
                modules.append(importlib.import_module(f"{name}.{child.stem}"))
    return modules


def import_cpython_tests(path: Path) -> list[types.ModuleType]:
    """Import test_concurrent_futures (and, for a package, all its modules): as
    ``test.test_concurrent_futures`` when the interpreter ships it (its workers import it too),
    else the fetched copy as ``MODULE_NAME`` (application code, which travels by value)."""
    import test

    if path.parent == Path(test.__file__).parent:
        return _import_with_submodules("test.test_concurrent_futures", path)
    if MODULE_NAME not in sys.modules:
        if path.is_dir():
            spec = importlib.util.spec_from_file_location(
                MODULE_NAME, path / "__init__.py", submodule_search_locations=[str(path)]
            )
        else:
            spec = importlib.util.spec_from_file_location(MODULE_NAME, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[MODULE_NAME] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[MODULE_NAME]
            raise
    return _import_with_submodules(MODULE_NAME, path)


# -- the executors under test ---------------------------------------------------------------------


class _Shared:
    """The application the taskswarm executors come from. Travels empty: a CPython test class
    (with its executor factory) is sent to the workers by value when a test submits one of its
    methods, and the connection must not go along."""

    def __init__(self) -> None:
        self.app: ts.Application | None = None

    def __reduce__(self):
        return (_Shared, ())


_SHARED = _Shared()


def _taskswarm_executor(max_workers=None, mp_context=None):
    """``executor_type`` for the CPython mixins: a fresh Executor on the module's cluster.
    ``max_workers`` and ``mp_context`` are taken and ignored: the cluster's slaves fix its size."""
    if _SHARED.app is None:
        raise RuntimeError("no taskswarm cluster is running for the CPython tests")
    return _SHARED.app.executor()


def _no_mp_context(self):
    """No multiprocessing context: the workers are the cluster's, not this process's children."""
    return None


def _find(modules: list[types.ModuleType], name: str) -> type | None:
    for module in modules:
        found = module.__dict__.get(name)
        if isinstance(found, type) and found.__module__ == module.__name__:
            return found
    for module in modules:
        found = module.__dict__.get(name)
        if isinstance(found, type):
            return found
    return None


def _own_tests(cls: type) -> list[str]:
    return sorted(n for n, v in vars(cls).items() if n.startswith("test") and callable(v))


class Built:
    """The TestCase classes this module builds from CPython's, kept here rather than at module
    level (where pytest would collect them) so that pickle still finds them by name."""


def _publish(name: str, bases: tuple[type, ...], namespace: dict) -> type:
    namespace = {"__module__": __name__, "__qualname__": f"Built.{name}", **namespace}
    cls = type(name, bases, namespace)
    setattr(Built, name, cls)
    return cls


def build_cases(modules: list[types.ModuleType]) -> dict[str, dict[str, type]]:
    """``{target: {"Class.test": runnable TestCase class}}`` for the selected tests."""
    base, executor_mixin = _find(modules, "BaseTestCase"), _find(modules, "ExecutorMixin")
    fork_mixin = _find(modules, "ProcessPoolForkMixin")
    missing = [
        n
        for n, c in (
            ("BaseTestCase", base),
            ("ExecutorMixin", executor_mixin),
            ("ProcessPoolForkMixin", fork_mixin),
        )
        if c is None
    ]
    if missing:
        raise Unavailable(f"CPython's test_concurrent_futures has no {', '.join(missing)}")
    taskswarm_mixin = _publish(
        "TaskswarmMixin",
        (executor_mixin,),
        {
            "executor_type": staticmethod(_taskswarm_executor),
            "worker_count": SLAVES * WORKERS,
            "get_context": _no_mp_context,
        },
    )
    mixins = {"taskswarm": taskswarm_mixin, "processpool": fork_mixin}
    cases: dict[str, dict[str, type]] = {target: {} for target in mixins}
    for class_name in GENERIC_CLASSES + PROCESS_CLASSES + FUTURE_CLASSES:
        source = _find(modules, class_name)
        if source is None:
            raise Unavailable(f"CPython's test_concurrent_futures has no {class_name}")
        for target, mixin in mixins.items():
            # As CPython's create_executor_tests combines a test class with an executor mixin.
            runnable = (
                source
                if class_name in FUTURE_CLASSES
                else _publish(f"{target.capitalize()}{class_name}", (source, mixin, base), {})
            )
            for test in _own_tests(source):
                if f"{class_name}.{test}" not in EXCLUDED:
                    cases[target][f"{class_name}.{test}"] = runnable
    return cases


def _load() -> tuple[dict[str, dict[str, type]], list[types.ModuleType], str | None]:
    try:
        modules = import_cpython_tests(fetch_cpython_tests())
        return build_cases(modules), modules, None
    except unittest.SkipTest as skip:
        return {}, [], f"CPython's test_concurrent_futures skips itself here: {skip}"
    except (Unavailable, OSError, subprocess.SubprocessError) as exc:
        return {}, [], f"CPython {VERSION}'s test_concurrent_futures is unavailable: {exc}"


CASES, MODULES, UNAVAILABLE = _load()


def _params() -> list:
    if UNAVAILABLE is not None:
        return [pytest.param(None, None, id="unavailable")]
    unknown = [t for t in TARGETS if t not in CASES]
    if unknown:
        raise ValueError(f"TASKSWARM_CONFORMANCE_TARGETS: unknown {unknown}; use {list(CASES)}")
    return [pytest.param(t, case, id=f"{t}-{case}") for t in TARGETS for case in CASES[t]]


def _unavailable() -> None:
    assert UNAVAILABLE is not None
    if os.environ.get("CI"):
        pytest.fail(UNAVAILABLE + " (CI must be able to fetch it)", pytrace=False)
    pytest.skip(UNAVAILABLE)


# -- running them ---------------------------------------------------------------------------------


class Target:
    """Where the executors of one target come from, started once for the module. The stdlib's
    ProcessPoolExecutor (this base) needs nothing: each test makes its own pool."""

    name = "processpool"

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass

    def damage(self) -> str | None:
        """Why the next test should not run on what this test left, if it should not."""
        return None


class TaskswarmTarget(Target):
    name = "taskswarm"

    def __init__(self) -> None:
        self.cluster: ts.LocalCluster | None = None
        self.app: ts.Application | None = None

    def start(self) -> None:
        self.cluster = ts.LocalCluster(slaves=SLAVES, workers=WORKERS)
        try:
            self.app = self.cluster.connect()
            # A first call starts what starts lazily, so that its threads are outside every test's
            # leak check, as the cluster's processes are: a big argument goes zero-copy, which
            # starts pyzmq's garbage-collector thread (one per process, for good).
            with self.app.executor() as warm_up:
                assert warm_up.submit(len, bytes(1 << 20)).result(timeout=60) == 1 << 20
        except BaseException:
            self.close()
            raise
        _SHARED.app = self.app

    def close(self) -> None:
        _SHARED.app = None
        app, cluster, self.app, self.cluster = self.app, self.cluster, None, None
        try:
            if app is not None:
                app.close()
        finally:
            if cluster is not None:
                cluster.close()

    def damage(self) -> str | None:
        cluster = self.cluster
        if cluster is None or cluster.master_process is None:
            return "no cluster"
        if cluster.master_process.poll() is not None:
            return f"the master exited with code {cluster.master_process.returncode}"
        if len(cluster.live_slaves()) < SLAVES:
            return f"only {len(cluster.live_slaves())} of {SLAVES} slaves are alive"
        return None


@pytest.fixture(scope="module")
def targets() -> Iterator[dict[str, Target]]:
    started: dict[str, Target] = {}
    try:
        yield started
    finally:
        for target in started.values():
            target.close()


def _target(targets: dict[str, Target], name: str) -> Target:
    if name not in targets:
        target = TaskswarmTarget() if name == "taskswarm" else Target()
        target.start()
        targets[name] = target
    return targets[name]


def _restart(targets: dict[str, Target], name: str) -> None:
    target = targets.pop(name)
    target.close()
    _target(targets, name)


@contextlib.contextmanager
def _logging_as_under_regrtest() -> Iterator[None]:
    """No handler on the root logger while a CPython test runs, as under CPython's regrtest:
    records with no handler then reach stderr (logging.lastResort), which some tests read.
    pytest's capturing handlers go back afterwards."""
    root = logging.getLogger()
    saved = root.handlers[:]
    for handler in saved:
        root.removeHandler(handler)
    try:
        yield
    finally:
        for handler in saved:
            root.addHandler(handler)


class Hung(KeyboardInterrupt):
    """Raised in the main thread when a CPython test passes its deadline. A KeyboardInterrupt,
    because unittest lets only that through: any other exception it records and goes on to
    tearDown, which would wait on the hung executor again."""


class Watchdog:
    """Interrupts the main thread (``SIGNAL``) when a CPython test runs past ``CASE_TIMEOUT``,
    keeping its stack. The tests run in the main thread, as under CPython's regrtest (some set
    signal handlers of their own); the handler raises only while a test is being watched."""

    SIGNAL = signal.SIGUSR2

    def __init__(self) -> None:
        self.armed = False
        self.stack: str | None = None
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def handler(self, signum, frame) -> None:
        if self.armed:
            self.armed = False
            raise Hung

    def arm(self, seconds: float) -> None:
        self.stack, self.armed = None, True
        self._done.clear()
        main = threading.main_thread()
        self._watcher = threading.Thread(
            target=self._watch, args=(seconds, main), name="cpython-test-deadline", daemon=True
        )
        self._watcher.start()

    def disarm(self) -> None:
        self.armed = False
        self._done.set()
        if self._watcher is not None:
            self._watcher.join()
            self._watcher = None

    def _watch(self, seconds: float, main: threading.Thread) -> None:
        if self._done.wait(seconds) or not self.armed:
            return
        frame = sys._current_frames().get(main.ident or -1)
        stack = traceback.extract_stack(frame) if frame is not None else []
        # From unittest's TestCase.run on: the frames of pytest and this harness say nothing.
        runs = [i for i, f in enumerate(stack) if f.name == "run" and "unittest" in f.filename]
        self.stack = "".join(traceback.format_list(stack[runs[0] if runs else 0 :])) or "(none)"
        signal.pthread_kill(main.ident or 0, self.SIGNAL)


@pytest.fixture(scope="module")
def watchdog() -> Iterator[Watchdog]:
    dog = Watchdog()
    previous = signal.signal(Watchdog.SIGNAL, dog.handler)
    try:
        yield dog
    finally:
        signal.signal(Watchdog.SIGNAL, previous)


def _run_case(case: unittest.TestCase, dog: Watchdog) -> tuple[unittest.TestResult, str | None]:
    """Run one CPython test; the stack where it hung if it passed the deadline."""
    result = unittest.TestResult()
    with _logging_as_under_regrtest():
        try:
            dog.arm(CASE_TIMEOUT)
            try:
                case.run(result)
            finally:
                dog.disarm()
        except Hung:
            return result, dog.stack or "(none)"
    return result, None


def _report(result: unittest.TestResult, env_changed: bool, damage: str | None) -> None:
    problems = [text for _, text in result.errors + result.failures]
    problems += [f"unexpected success: {case.id()}" for case in result.unexpectedSuccesses]
    if env_changed:
        problems.append(
            "environment changed: the test left threads or child processes behind "
            "(CPython's threading_cleanup/reap_children; their warning is on stderr)"
        )
    if damage is not None:
        problems.append(f"the test left the cluster broken ({damage}); it was restarted")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    if result.skipped:
        pytest.skip(result.skipped[0][1])


@pytest.mark.timeout(CASE_TIMEOUT + 45)
@pytest.mark.parametrize(("target", "case"), _params())
def test_cpython_concurrent_futures(
    targets: dict[str, Target], watchdog: Watchdog, target: str, case: str
) -> None:
    if UNAVAILABLE is not None:
        _unavailable()
    from test import support

    runnable = CASES[target][case]
    _target(targets, target)
    # What earlier tests of the session left to reap is theirs, not this test's leak.
    support.reap_children()
    support.environment_altered = False
    result, hung = _run_case(runnable(case.partition(".")[2]), watchdog)
    env_changed, support.environment_altered = support.environment_altered, False
    if hung is not None:
        if target == "taskswarm":
            _restart(targets, target)  # closing the application fails the futures it waits on
        pytest.fail(f"{case} still running after {CASE_TIMEOUT:g}s; its stack:\n{hung}")
    damage = targets[target].damage()
    if damage is not None:
        _restart(targets, target)
    _report(result, env_changed, damage)


def test_every_exclusion_names_a_test_of_this_python() -> None:
    """A stale exclusion would hide nothing but confuse the count: each must name a real test."""
    if UNAVAILABLE is not None:
        _unavailable()
    known = set()
    for class_name in GENERIC_CLASSES + PROCESS_CLASSES + FUTURE_CLASSES:
        source = _find(MODULES, class_name)
        assert source is not None
        known.update(f"{class_name}.{test}" for test in _own_tests(source))
    assert sorted(set(EXCLUDED) - known - NOT_IN_EVERY_VERSION) == []
