"""Shipped code as it travels: one zip archive, built by the application, opened by the slaves.

::

    app.upload_file(path) --pack--> Archive(name, data) --SHIP--> master --SHIP--> slave
    slave: digest checked (Payload.open) --unpack--> a folder of its own --> workers' sys.path

``pack`` turns what an application ships -- a module (``helpers.py``), a package directory (one
holding ``__init__.py``) or a ``.zip`` of modules and packages -- into one archive, in memory and
deterministic (entries sorted, one timestamp, one file mode), so the same files always make the
same bytes and the same digest: a slave that is sent an archive it already holds (it registered
again) keeps what it unpacked. ``unpack`` is the slave's side, and refuses any entry that could
land outside the folder it is given: an absolute path, a ``..``, a symlink or a device, or an
archive that would unpack past :data:`MAX_UNPACKED_BYTES`. Both ends check names the same way
(``pack`` too, so a bad ``.zip`` is refused where it is shipped, with its entry named).

Pure code over bytes and files, no sockets: both ends and their tests share it.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from ..errors import ShippingError

__all__ = [
    "MAX_SHIPPED_BYTES",
    "MAX_UNPACKED_BYTES",
    "MAX_ENTRIES",
    "Archive",
    "check_name",
    "pack",
    "unpack",
]

#: Most bytes of archives a master keeps at once, all applications' together (each re-upload
#: of a name replaces the one before). What the master holds of shipped code is bounded by it.
MAX_SHIPPED_BYTES = 64 * 1024 * 1024
#: Most bytes one archive may unpack to on a slave (a small zip must not fill its disk).
MAX_UNPACKED_BYTES = 1024 * 1024 * 1024
#: Most entries one archive may hold.
MAX_ENTRIES = 65_536
#: What an archive's name may be: a file name of these characters (``helpers.py``, ``mypkg``).
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}")
#: One timestamp for every entry (the earliest zip allows): the same files, the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
#: Folders a package directory is shipped without: caches, not code.
_SKIPPED_DIRS = frozenset({"__pycache__"})


class Archive(NamedTuple):
    """What ``upload_file`` sends: the name it is kept under (and replaced by the next of that
    name), and the zip."""

    name: str
    data: bytes


def check_name(name: str) -> str:
    """``name`` if it can name an archive (a plain file name); ShippingError otherwise."""
    if not _NAME.fullmatch(name):
        raise ShippingError(
            f"cannot ship under the name {name!r}: a shipped file's name is made of letters, "
            "digits, '_', '.' and '-' (at most 128, not starting with '.' or '-'); rename it"
        )
    return name


# -- the application's side ---------------------------------------------------------------------


def pack(path: str | os.PathLike[str]) -> Archive:
    """The archive for a module file, a package directory or a zip; ShippingError saying what
    to do for anything else."""
    source = Path(path)
    if not source.exists():
        raise ShippingError(
            f"cannot ship {str(path)!r}: no such file or directory (give the path of a module "
            "file, a package directory or a .zip, relative to the current directory "
            f"{os.getcwd()!r} or absolute)"
        )
    name = check_name(source.resolve().name)
    if source.is_dir():
        entries = _package_entries(source.resolve())
    elif source.suffix == ".py":
        _check_importable(source.stem, source)
        entries = {source.name: source.read_bytes()}
    elif zipfile.is_zipfile(source):
        entries = _zip_entries(source)
    else:
        raise ShippingError(
            f"cannot ship {str(path)!r}: it is not a Python module (.py), a package directory "
            "(with an __init__.py) or a .zip of modules and packages"
        )
    return Archive(name, _zip(entries))


def _check_importable(name: str, source: Path) -> None:
    if not name.isidentifier():
        raise ShippingError(
            f"cannot ship {str(source)!r}: {name!r} is not a name Python can import; rename it "
            "to a valid identifier (letters, digits and '_')"
        )


def _package_entries(source: Path) -> dict[str, bytes]:
    """Every file of a package directory, under ``NAME/...``; caches (``__pycache__``,
    ``*.pyc``) and hidden files and folders left out, symlinked folders not followed."""
    if not (source / "__init__.py").is_file():
        raise ShippingError(
            f"cannot ship {str(source)!r}: a directory is shipped as a package and this one has "
            "no __init__.py; add one, or zip the modules it holds and ship the .zip"
        )
    _check_importable(source.name, source)
    entries: dict[str, bytes] = {}
    for folder, dirs, files in os.walk(source):
        dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.startswith(".")]
        for file in files:
            if file.startswith(".") or file.endswith((".pyc", ".pyo")):
                continue
            full = Path(folder) / file
            if full.is_file():
                relative = full.relative_to(source.parent).as_posix()
                entries[relative] = full.read_bytes()
    return entries


def _zip_entries(source: Path) -> dict[str, bytes]:
    """The files of a zip, each entry checked as a slave would check it."""
    where = f"cannot ship {str(source)!r}"
    try:
        with zipfile.ZipFile(source) as given:
            infos = given.infolist()
            _check_entries(infos, where)
            entries = {i.filename: given.read(i) for i in infos if not i.is_dir()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, OSError, EOFError) as exc:
        raise ShippingError(f"{where}: it cannot be read as a zip ({exc})") from exc
    if not entries:
        raise ShippingError(f"{where}: the zip holds no files")
    return entries


def _zip(entries: dict[str, bytes]) -> bytes:
    """One deterministic zip of ``entries`` (names to bytes), in memory."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.create_system = 3  # Unix, wherever it was made: the same bytes everywhere
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, entries[name])
    return buffer.getvalue()


# -- the slave's side -----------------------------------------------------------------------------


def unpack(data: bytes, into: Path) -> None:
    """Unpack an archive into ``into`` (a folder made here, which must not exist), or raise
    ShippingError and leave nothing: every entry is checked before anything is written."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = _check_entries(archive.infolist(), "a shipped archive")
            into.mkdir(mode=0o700)
            try:
                for info, parts in entries:
                    _extract(archive, info, into.joinpath(*parts))
            except BaseException:
                shutil.rmtree(into, ignore_errors=True)
                raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, RuntimeError, OSError, EOFError) as exc:
        raise ShippingError(f"a shipped archive could not be unpacked: {exc}") from exc


def _extract(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path) -> None:
    if info.is_dir():
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        return
    target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # "x": a name met twice (or a file where a folder was) fails instead of overwriting.
    with archive.open(info) as source, open(target, "xb") as out:
        shutil.copyfileobj(source, out, 1024 * 1024)


def _check_entries(
    infos: list[zipfile.ZipInfo], what: str
) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Each entry with its path's parts; ShippingError, for the whole archive, for one entry
    that is not a plain file or folder inside it, or for an archive too big once unpacked."""
    if len(infos) > MAX_ENTRIES:
        raise ShippingError(f"{what}: it holds {len(infos)} entries, more than {MAX_ENTRIES}")
    total = 0
    seen: set[tuple[str, ...]] = set()
    checked = []
    for info in infos:
        name = info.filename
        parts = _parts(name)
        if parts is None:
            raise ShippingError(f"{what}: entry {name!r} could land outside its folder; refused")
        mode = stat.S_IFMT(info.external_attr >> 16)  # 0: not said (zips made elsewhere)
        if mode not in (0, stat.S_IFREG, stat.S_IFDIR):
            kind = "a symlink" if mode == stat.S_IFLNK else "not a plain file"
            raise ShippingError(f"{what}: entry {name!r} is {kind}; refused")
        if info.flag_bits & 0x1:
            raise ShippingError(f"{what}: entry {name!r} is encrypted; refused")
        if parts in seen and not info.is_dir():
            raise ShippingError(f"{what}: entry {name!r} appears twice; refused")
        seen.add(parts)
        checked.append((info, parts))
        total += info.file_size
    if total > MAX_UNPACKED_BYTES:
        raise ShippingError(
            f"{what}: it unpacks to {total:,} bytes, more than the {MAX_UNPACKED_BYTES:,} allowed"
        )
    return checked


def _parts(name: str) -> tuple[str, ...] | None:
    """The path components of an entry's name; None for one that could leave the folder it is
    unpacked into (absolute, with ``..``, a drive or backslashes) or that names nothing."""
    parts = tuple(name.rstrip("/").split("/"))
    unsafe = (
        "\x00" in name
        or "\\" in name
        or PurePosixPath(name).is_absolute()
        or ":" in parts[0]
        or any(p in ("", ".", "..") for p in parts)
    )
    return None if unsafe else parts
