"""Shipped code as it travels: the archive an application packs, and how a slave opens it.

``archives.pack`` makes one deterministic zip of a module, a package directory or a zip;
``archives.unpack`` refuses, whole and before writing anything, an archive with an entry that
could land outside its folder. ``slave.shipping.Shelf`` keeps what a slave unpacked, by name;
``master.shipping.ShippedCode`` keeps the archives within the cluster's limit and routes them.
No sockets and no processes: pure code over bytes and folders.
"""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from collections import Counter
from pathlib import Path

import pytest

import taskswarm as ts
from taskswarm.master.shipping import ShippedCode
from taskswarm.protocol import archives
from taskswarm.protocol.codec import Kind, Message
from taskswarm.protocol.digests import Payload, digest
from taskswarm.protocol.messages import Ship
from taskswarm.slave.shipping import Shelf

pytestmark = pytest.mark.timeout(30)


def zip_of(entries: dict[str, bytes], modes: dict[str, int] | None = None) -> bytes:
    """A zip holding ``entries`` as they are named, whatever the names say."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (modes or {}).get(name, stat.S_IFREG | 0o644) << 16
            archive.writestr(info, data)
    return buffer.getvalue()


def names_in(data: bytes) -> list[str]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return archive.namelist()


def files_under(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


# -- what an application packs ----------------------------------------------------------------


def test_a_module_packs_as_itself_under_its_file_name(tmp_path):
    module = tmp_path / "helpers.py"
    module.write_text("VALUE = 1\n")

    archive = archives.pack(module)

    assert archive.name == "helpers.py"
    assert names_in(archive.data) == ["helpers.py"]


def test_a_package_packs_with_its_files_and_without_its_caches(tmp_path):
    package = tmp_path / "mypkg"
    (package / "sub" / "__pycache__").mkdir(parents=True)
    (package / ".git").mkdir()
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "core.py").write_text("X = 1\n")
    (package / "data.txt").write_text("table")
    (package / "sub" / "__pycache__" / "core.cpython-311.pyc").write_bytes(b"cache")
    (package / ".git" / "HEAD").write_text("ref")
    (package / "stale.pyc").write_bytes(b"cache")

    archive = archives.pack(package)

    assert archive.name == "mypkg"
    assert names_in(archive.data) == [
        "mypkg/__init__.py",
        "mypkg/data.txt",
        "mypkg/sub/__init__.py",
        "mypkg/sub/core.py",
    ]


def test_the_same_files_pack_to_the_same_bytes_whenever_they_were_written(tmp_path):
    package = tmp_path / "mypkg"
    package.mkdir()
    (package / "__init__.py").write_text("from .b import B\n")
    (package / "b.py").write_text("B = 2\n")
    first = archives.pack(package)
    os.utime(package / "b.py", (time.time() + 3600, time.time() + 3600))
    (package / "b.py").chmod(0o600)

    assert archives.pack(package) == first


def test_a_zip_is_packed_again_with_its_entries(tmp_path):
    given = tmp_path / "bundle.zip"
    given.write_bytes(zip_of({"zmod.py": b"Z = 1\n", "zpkg/__init__.py": b"", "zpkg/": b""}))

    archive = archives.pack(given)

    assert archive.name == "bundle.zip"
    assert names_in(archive.data) == ["zmod.py", "zpkg/__init__.py"]


@pytest.mark.parametrize(
    "make, says",
    [
        (lambda p: p / "missing.py", "no such file or directory"),
        (lambda p: _write(p / "notes.txt", b"text"), "not a Python module"),
        (lambda p: _mkdir(p / "plain"), "has no __init__.py; add one, or zip"),
        (lambda p: _write(p / "my-helpers.py", b""), "not a name Python can import"),
        (lambda p: _write(p / "e.zip", zip_of({"../evil.py": b""})), "'../evil.py' could land"),
        (lambda p: _write(p / "a.zip", zip_of({"/etc/x.py": b""})), "'/etc/x.py' could land"),
        (lambda p: _write(p / "w.zip", zip_of({"..\\x.py": b""})), "could land outside"),
        (lambda p: _write(p / "empty.zip", zip_of({})), "the zip holds no files"),
        (
            lambda p: _write(p / "l.zip", zip_of({"x.py": b"/etc"}, {"x.py": stat.S_IFLNK})),
            "'x.py' is a symlink",
        ),
    ],
    ids=["missing", "not-code", "not-a-package", "bad-name", "dotdot", "absolute", "backslash",
         "empty", "symlink"],
)  # fmt: skip
def test_what_cannot_be_shipped_is_refused_saying_why(tmp_path, make, says):
    with pytest.raises(ts.ShippingError, match=says) as caught:
        archives.pack(make(tmp_path))

    assert isinstance(caught.value, ts.TaskswarmError)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# -- what a slave unpacks -----------------------------------------------------------------------


def test_an_archive_unpacks_into_its_own_folder(tmp_path):
    data = zip_of({"pkg/__init__.py": b"", "pkg/core.py": b"X = 1\n", "top.py": b"T = 2\n"})

    archives.unpack(data, tmp_path / "one")

    assert files_under(tmp_path / "one") == {
        "pkg/__init__.py": b"",
        "pkg/core.py": b"X = 1\n",
        "top.py": b"T = 2\n",
    }


@pytest.mark.parametrize(
    "entries, modes",
    [
        ({"ok.py": b"", "../evil.py": b"owned"}, None),
        ({"ok.py": b"", "pkg/../../evil.py": b"owned"}, None),
        ({"/tmp/evil.py": b"owned"}, None),
        ({"C:/evil.py": b"owned"}, None),
        ({"ok.py": b"", "link": b"../../evil.py"}, {"link": stat.S_IFLNK | 0o777}),
        ({"fifo": b""}, {"fifo": stat.S_IFIFO | 0o644}),
    ],
    ids=["dotdot", "dotdot-inside", "absolute", "drive", "symlink", "fifo"],
)
def test_an_archive_with_an_entry_that_could_leave_its_folder_is_refused_whole(
    tmp_path, entries, modes
):
    into = tmp_path / "shelf" / "1-evil.zip"
    into.parent.mkdir()

    with pytest.raises(ts.ShippingError, match="refused"):
        archives.unpack(zip_of(entries, modes), into)

    assert list(tmp_path.rglob("*")) == [tmp_path / "shelf"]  # nothing written, anywhere


def test_an_archive_that_would_unpack_past_the_limit_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(archives, "MAX_UNPACKED_BYTES", 1000)

    with pytest.raises(ts.ShippingError, match="unpacks to 2,000 bytes"):
        archives.unpack(zip_of({"big.py": b"#" * 2000}), tmp_path / "one")

    assert not (tmp_path / "one").exists()


def test_what_is_not_a_zip_is_refused(tmp_path):
    with pytest.raises(ts.ShippingError, match="could not be unpacked"):
        archives.unpack(b"not a zip at all", tmp_path / "one")


# -- a slave's shelf ----------------------------------------------------------------------------


def test_a_shelf_keeps_the_latest_of_each_name_first_and_the_one_before_it(tmp_path):
    shelf = Shelf(tmp_path)
    v1, v2, v3 = (zip_of({"helpers.py": b"V = %d\n" % n}) for n in (1, 2, 3))
    other = zip_of({"other.py": b""})

    first = shelf.take("helpers.py", v1, digest(v1))
    assert first is not None and len(first) == 1
    assert shelf.take("helpers.py", v1, digest(v1)) is None  # sent again (a re-registration)
    with_other = shelf.take("other.zip", other, digest(other))
    assert with_other is not None and with_other[1:] == first  # the latest first
    second = shelf.take("helpers.py", v2, digest(v2))
    assert second is not None and (Path(second[0]) / "helpers.py").read_bytes() == b"V = 2\n"
    assert Path(first[0]).exists()  # the version before stays, for tasks begun with it
    third = shelf.take("helpers.py", v3, digest(v3))
    assert third is not None and not Path(first[0]).exists()  # older ones go
    assert Path(second[0]).exists()

    root = shelf.root
    assert root is not None and stat.S_IMODE(root.stat().st_mode) == 0o700
    shelf.close()
    shelf.close()
    assert not root.exists()


def test_a_shelf_counts_and_drops_an_archive_altered_on_the_way(tmp_path):
    class Manager:
        shipped: list[list[str]] = []

        def code_shipped(self, paths: list[str]) -> None:
            self.shipped.append(paths)

    shelf, manager, rejected = Shelf(tmp_path), Manager(), Counter()
    good = zip_of({"helpers.py": b"V = 1\n"})
    altered = Message(Kind.SHIP, Ship(name="helpers.py"), [Payload(good + b"x", digest(good))])
    unsafe_zip = zip_of({"../evil.py": b""})
    unsafe = Message(Kind.SHIP, Ship(name="e.zip"), [Payload(unsafe_zip, digest(unsafe_zip))])
    sound = Message(Kind.SHIP, Ship(name="helpers.py"), [Payload(good, digest(good))])

    shelf.receive(altered, manager, rejected)  # type: ignore[arg-type]
    shelf.receive(unsafe, manager, rejected)  # type: ignore[arg-type]
    shelf.receive(sound, manager, rejected)  # type: ignore[arg-type]

    assert rejected == {"bad-digest": 1, "bad-archive": 1}
    assert len(manager.shipped) == 1 and len(manager.shipped[0]) == 1
    shelf.close()


# -- the master's store -------------------------------------------------------------------------


class App:
    client_id = "app-1"


def test_the_master_keeps_archives_within_its_limit_and_sends_them_to_every_slave():
    sent: list[tuple[bytes, str, object, list[object]]] = []

    def send(identity, kind, header=None, payloads=()):
        sent.append((identity, kind, header, list(payloads)))
        return True

    class Slave:
        def __init__(self, identity: bytes) -> None:
            self.identity = identity

    slaves = [Slave(b"s1"), Slave(b"s2")]
    store = ShippedCode(send, lambda identity: App(), lambda: slaves, limit=100)

    def ship(name: str, size: int, rid: int) -> None:
        data = b"x" * size
        message = Message(Kind.SHIP, Ship(name=name, rid=rid), [Payload(data, digest(data))])
        store.on_ship(b"app", message)

    ship("a.py", 60, 1)
    assert [(i, k) for i, k, _, _ in sent] == [(b"s1", "ship"), (b"s2", "ship"), (b"app", "ack")]
    assert sent[0][3] == sent[1][3] and type(sent[0][3][0]) is Payload  # forwarded, unopened
    sent.clear()

    ship("b.py", 50, 2)  # 110 bytes in all: refused, sent to no one
    assert [(i, k) for i, k, _, _ in sent] == [(b"app", "reject")]
    assert "more than its limit" in sent[0][2].reason  # type: ignore[union-attr]
    sent.clear()

    ship("a.py", 90, 3)  # replaces the 60 bytes kept under that name
    ship("../x", 1, 4)
    assert [k for _, k, _, _ in sent] == ["ship", "ship", "ack", "reject"]
    assert store.held == 90 and list(store.archives) == ["a.py"]
    sent.clear()

    store.welcome(b"s3")  # a slave that registers later
    assert [(i, k, h.name) for i, k, h, _ in sent] == [(b"s3", "ship", "a.py")]  # type: ignore
