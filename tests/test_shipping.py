"""Code of the application's own, shipped to the slaves: ``app.upload_file(path)``.

The modules here are written into a folder only the test process has on its ``sys.path``
(``AppCode``), as a module installed on an application's host and nowhere else would be. Each
holds a lock at module level, so its code cannot travel by value (cloudpickle cannot pickle a
lock): its functions go by reference, and a worker must import the module, which it can only
once it is shipped. The slaves of every cluster here keep their temporary files under a folder
of the test's (``TMPDIR``), so the tests also see that a slave leaves none behind.
"""

from __future__ import annotations

import importlib
import sys
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

import taskswarm as ts
from conftest import wait_for
from taskswarm.protocol.codec import Kind
from taskswarm.protocol.messages import Ack, Ship

pytestmark = pytest.mark.timeout(120)

MODULE = '''\
"""Helpers of the application's own: {name}, version {version}."""

import os
import threading
import time
from pathlib import Path

_LOCK = threading.Lock()  # cannot be pickled: this module's code travels by reference
VERSION = {version!r}


def compute(x):
    with _LOCK:
        return VERSION, x * 2


def worker_pid():
    return os.getpid()


def wait_for_file(path, timeout=60.0):
    """Runs until ``path`` exists (the test's gate); then says which version ran."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.01)
    return compute(0)
'''

PACKAGE_INIT = '''\
"""A package of the application's own, with a submodule and a data file."""

from .core import table
'''

PACKAGE_CORE = """\
import threading
from pathlib import Path

_LOCK = threading.Lock()


def table():
    with _LOCK:
        return (Path(__file__).with_name("table.txt")).read_text()
"""


class AppCode:
    """Modules and packages in a folder on this process's ``sys.path`` alone, each under a
    name of its own (no test sees another's, in ``sys.modules`` or in the pickler's records)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()
        self.paths = [str(folder)]
        self.names: list[str] = []
        sys.path.insert(0, str(folder))

    def name(self, stem: str = "helpers") -> str:
        name = f"{stem}_{uuid.uuid4().hex[:8]}"
        self.names.append(name)
        return name

    def module(self, name: str, version: str) -> Path:
        path = self.folder / f"{name}.py"
        path.write_text(MODULE.format(name=name, version=version))
        return path

    def package(self, name: str, table: str) -> Path:
        package = self.folder / name
        package.mkdir()
        (package / "__init__.py").write_text(PACKAGE_INIT)
        (package / "core.py").write_text(PACKAGE_CORE)
        (package / "table.txt").write_text(table)
        return package

    def on_path(self, path: Path) -> None:
        sys.path.insert(0, str(path))
        self.paths.append(str(path))

    def load(self, name: str):
        importlib.invalidate_caches()
        return importlib.import_module(name)

    def close(self) -> None:
        for path in self.paths:
            sys.path.remove(path)
        for name in self.names:
            for loaded in [m for m in sys.modules if m == name or m.startswith(f"{name}.")]:
                del sys.modules[loaded]
        importlib.invalidate_caches()


@pytest.fixture
def code(tmp_path: Path) -> Iterator[AppCode]:
    made = AppCode(tmp_path / "only_here")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def slave_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The temporary folder of the nodes a test starts: empty again once they are gone."""
    folder = tmp_path / "node-tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    yield folder
    assert list(folder.iterdir()) == [], "a node left temporary files behind"


@pytest.fixture
def cluster(slave_tmp: Path) -> Iterator[ts.LocalCluster]:
    with ts.LocalCluster(slaves=2, workers=1) as local:
        yield local


def shelves(slave_tmp: Path) -> list[Path]:
    """The folders the slaves unpack shipped code into."""
    return sorted(slave_tmp.glob("taskswarm-code-*"))


# -- shipping makes code importable ---------------------------------------------------------------


def test_a_module_only_the_application_has_fails_on_the_slaves_until_it_is_shipped(
    cluster, code, slave_tmp
):
    name = code.name()
    path = code.module(name, "v1")
    helpers = code.load(name)
    with cluster.connect() as app:
        with pytest.raises(ts.TaskError, match=f"module '{name}' is not installed there") as err:
            app.submit(helpers.compute, 1).result(timeout=30)
        assert err.value.type_name == "ModuleNotFoundError"
        assert "app.upload_file(PATH)" in str(err.value)

        assert app.upload_file(path) is None

        futures = [app.submit(helpers.compute, i) for i in range(20)]
        assert [f.result(timeout=30) for f in futures] == [("v1", 2 * i) for i in range(20)]
        assert app.status()["master"]["kept"]["shipped_bytes"] > 0
        assert len(shelves(slave_tmp)) == 2  # one per slave, each its own
    cluster.close()
    assert shelves(slave_tmp) == []


def test_a_package_directory_travels_with_its_submodules_and_data_files(cluster, code):
    name = code.name("tables")
    package = code.package(name, "rows and columns")
    tables = code.load(name)
    with cluster.connect() as app:
        app.upload_file(package)

        assert app.submit(tables.table).result(timeout=30) == "rows and columns"


def test_a_zip_of_modules_is_shipped_as_the_modules_it_holds(cluster, code, tmp_path):
    name = code.name("zipped")
    bundle = tmp_path / "bundle.zip"
    with zipfile.ZipFile(bundle, "w") as archive:
        archive.writestr(f"{name}.py", MODULE.format(name=name, version="from a zip"))
    code.on_path(bundle)  # imported here from the zip itself (zipimport)
    zipped = code.load(name)
    with cluster.connect() as app:
        app.upload_file(str(bundle))

        assert app.submit(zipped.compute, 4).result(timeout=30) == ("from a zip", 8)


def test_code_shipped_again_under_its_name_runs_in_every_later_task(slave_tmp, code):
    """One worker, busy with a task of the first version while the second is shipped: that
    task finishes on the old code, every task sent after the second runs the new."""
    name = code.name()
    path = code.module(name, "v1")
    helpers = code.load(name)
    gate = slave_tmp.parent / "gate"
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        app.upload_file(path)
        assert app.submit(helpers.compute, 1).result(timeout=30) == ("v1", 2)
        first_worker = app.submit(helpers.worker_pid).result(timeout=30)
        busy = app.submit(helpers.wait_for_file, str(gate))
        wait_for(busy.running)

        code.module(name, "v2")  # the file changes; this process still has v1 imported
        app.upload_file(path)
        later = [app.submit(helpers.compute, i) for i in range(5)]
        gate.touch()

        assert busy.result(timeout=30) == ("v1", 0)
        assert [f.result(timeout=30) for f in later] == [("v2", 2 * i) for i in range(5)]
        assert app.submit(helpers.worker_pid).result(timeout=30) != first_worker


def test_code_can_be_shipped_as_the_application_connects(cluster, code):
    names = [code.name(), code.name()]
    paths = [code.module(name, f"at connect {i}") for i, name in enumerate(names)]
    first, second = (code.load(name) for name in names)

    with cluster.connect(ship=[paths[0]]) as app:
        assert app.submit(first.compute, 1).result(timeout=30) == ("at connect 0", 2)
    with ts.connect(cluster.address, cluster.key_file, ship=[str(paths[1])]) as app:
        assert app.submit(second.compute, 2).result(timeout=30) == ("at connect 1", 4)


def test_a_slave_that_joins_after_the_code_was_shipped_gets_it_too(slave_tmp, code, nodes):
    name = code.name()
    path = code.module(name, "late")
    helpers = code.load(name)
    with ts.LocalCluster(slaves=1, workers=1) as cluster, cluster.connect() as app:
        app.upload_file(path)
        cluster.add_slave(workers=1, resources={"joined-later": 1})
        task = ts.FunctionTask(helpers.compute, 5)
        task.resources = {"joined-later": 1}  # runs on that slave alone
        assert app.submit(task).result(timeout=30) == ("late", 10)

        # A slave started on its own (`taskswarm slave`, in another folder) gets it as well.
        cli_slave = nodes.start(
            "slave", cluster.address, "--key-file", cluster.key_file, "--workers", "1",
            "--resources", "from-the-cli=1", "--heartbeat", "0.2",
            cwd=str(slave_tmp.parent),
        )  # fmt: skip
        assert cli_slave.pid in [s["pid"] for s in cluster.wait_for_slaves(3)]
        task = ts.FunctionTask(helpers.compute, 6)
        task.resources = {"from-the-cli": 1}
        assert app.submit(task).result(timeout=30) == ("late", 12)
        cli_slave.terminate()  # SIGTERM: it stops cleanly, and removes what it unpacked
        assert cli_slave.wait(timeout=30) == 0


# -- what is refused ------------------------------------------------------------------------------


def test_paths_that_cannot_be_shipped_are_refused_and_the_connection_goes_on(
    cluster, code, tmp_path
):
    (tmp_path / "notes.txt").write_text("not code")
    (tmp_path / "plain").mkdir()
    with cluster.connect() as app:
        with pytest.raises(ts.ShippingError, match="no such file or directory"):
            app.upload_file(tmp_path / "missing.py")
        with pytest.raises(ts.ShippingError, match=r"not a Python module \(\.py\)"):
            app.upload_file(tmp_path / "notes.txt")
        with pytest.raises(ts.ShippingError, match="no __init__.py; add one, or zip"):
            app.upload_file(tmp_path / "plain")

        assert app.submit(abs, -1).result(timeout=30) == 1
    with pytest.raises(ts.ShippingError, match="no such file or directory"):
        cluster.connect(ship=[tmp_path / "missing.py"])


def test_code_past_the_clusters_limit_is_refused_by_the_master(cluster, code, monkeypatch):
    """Each upload fits, the two together do not: the master says so, and keeps the first."""
    import os

    from taskswarm.protocol import archives

    big = [code.folder / f"{code.name('blob')}.py" for _ in range(2)]
    for path in big:  # random bytes (never imported): they do not compress
        path.write_bytes(os.urandom(33 * 1024 * 1024))
    with cluster.connect() as app:
        app.upload_file(big[0])
        with pytest.raises(ts.ShippingError, match="the master refused .* more than its limit"):
            app.upload_file(big[1])
        app.upload_file(big[0])  # the same name again replaces it: no more room needed
        assert app.status()["master"]["kept"]["shipped_bytes"] < archives.MAX_SHIPPED_BYTES

        monkeypatch.setattr(archives, "MAX_SHIPPED_BYTES", 1024)  # this process's check
        with pytest.raises(ts.ShippingError, match="a cluster keeps of shipped code"):
            app.upload_file(big[1])


def test_an_archive_with_an_unsafe_entry_is_refused_by_the_slaves(cluster, slave_tmp):
    """Past an application that does not check (this one sends bytes of its own making): the
    master routes them, each slave refuses them unopened and writes nothing."""
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("../evil.py", "raise SystemExit('owned')\n")
    with cluster.connect() as app:
        app._link.request(Kind.SHIP, Ship(name="evil.zip"), 10.0, [buffer.getvalue()], answer=Ack)

        def refused_by_both() -> bool:
            return [s["rejected"] for s in app.status()["slaves"]] == [1, 1]

        wait_for(refused_by_both)
        assert app.submit(abs, -2).result(timeout=30) == 2
    assert not any(p.name == "evil.py" for p in slave_tmp.rglob("*"))


def test_nodes_given_no_code_make_no_folder_for_it(cluster, slave_tmp):
    with cluster.connect() as app:
        assert app.submit(abs, -3).result(timeout=30) == 3
    assert shelves(slave_tmp) == []
