"""What keeps a task inside its worker: its process group, and the worker's memory limit.

Each worker process leads a process group of its own (``worker_main`` makes it), so whatever a
task starts -- a ``subprocess``, a ``multiprocessing`` pool -- is in that group, and the pool
ends a worker with ``kill_group``: SIGKILL to the whole group, not only the worker. A child that
leaves the group on purpose (``setsid``, ``start_new_session=True``, ``setpgid``) leaves this
containment too; that is the way out for a task that means to start something lasting.

The memory limit is a number of bytes per worker, checked against the worker's resident set
(``/proc/PID/statm``, or psutil where there is no /proc and psutil is installed) a few times a
second while tasks run. As with Dask's nanny, a worker past ``MEMORY_FRACTION`` of its limit is
replaced, and its task counts as one that crashed its worker. By default each worker's limit is
a fair share of the machine: its memory (or the cgroup's limit, if lower) over the number of
workers. Only the worker process itself is measured, not the children of its task. The
default number of workers is likewise what the slave may use, not the whole machine
(``usable_cores``).
"""

from __future__ import annotations

import math
import os
import re
import signal
from functools import cache
from typing import Any

from ..errors import ConfigurationError

__all__ = [
    "AUTO",
    "MEMORY_CHECK_INTERVAL",
    "MEMORY_FRACTION",
    "can_measure",
    "fair_share",
    "format_bytes",
    "kill_group",
    "machine_memory",
    "parse_memory_limit",
    "resident_bytes",
    "usable_cores",
]

#: The default memory limit: a fair share of the machine for each worker.
AUTO = "auto"
#: Share of its limit past which a worker is replaced (Dask's nanny stops at the same 95 %).
MEMORY_FRACTION = 0.95
#: Seconds between two looks at the workers' memory while any of them runs a task: reading a
#: small /proc file per worker costs microseconds, and a task allocating a few GiB a second
#: gets no further than this many seconds' worth past its limit.
MEMORY_CHECK_INTERVAL = 0.25

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_memory_limit(value: str | int | float | None) -> int | str | None:
    """A worker memory limit as given (``--worker-memory-limit``, ``LocalCluster``): bytes,
    ``AUTO`` for a fair share of the machine, or None for no limit.

    ``2GiB``, ``512MiB``, ``1.5GB`` or a plain number of bytes; a fraction from 0 to 1
    (``0.8``) is that share of the machine's memory, for each worker; ``0``, ``none`` or
    ``off`` disables the limit; ``auto`` (and None, the default) is the fair share.
    """
    if value is None:
        return AUTO
    if isinstance(value, bool):
        raise ConfigurationError(f"a worker memory limit is a size such as 2GiB, not {value!r}")
    if isinstance(value, (int, float)):
        return _from_number(float(value), "")
    text = str(value).strip().lower()
    if text == AUTO:
        return AUTO
    if text in ("none", "off", "no", "false"):
        return None
    match = _SIZE.match(text)
    if match is None or match.group(2) not in _UNITS:
        raise ConfigurationError(
            f"a worker memory limit is a size such as 2GiB or 512MiB, a fraction of the "
            f"machine's memory such as 0.5, 0 for none, or auto; not {value!r}"
        )
    return _from_number(float(match.group(1)), match.group(2))


def _from_number(number: float, unit: str) -> int | None:
    if not math.isfinite(number) or number < 0:
        raise ConfigurationError(f"a worker memory limit cannot be {number!r}")
    if number == 0:
        return None
    if not unit and number <= 1:
        return max(1, int(number * machine_memory()))
    return max(1, int(number * _UNITS[unit]))


@cache
def machine_memory() -> int:
    """Bytes of memory this process's machine has for it: the physical memory, or its cgroup's
    limit (systemd's MemoryMax=, a container's --memory) when that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit():
            total = min(total, int(text))
    return total


def fair_share(workers: int, total: int | None = None) -> int | None:
    """Each worker's share of ``total`` bytes (the machine's by default); None for no
    workers, who need no limit."""
    if workers <= 0:
        return None
    return (machine_memory() if total is None else total) // workers


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_bytes(pid: int) -> int | None:
    """The resident set of process ``pid`` in bytes; None when it is gone or cannot be read."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE
    except FileNotFoundError:
        if os.path.isdir("/proc/self"):
            return None  # a /proc without it: the process is gone
    except (OSError, IndexError, ValueError):
        return None
    return _psutil_rss(pid)


def _psutil_rss(pid: int) -> int | None:
    try:
        import psutil  # imported only where there is no /proc to read
    except ImportError:
        return None
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def can_measure() -> bool:
    """Whether ``resident_bytes`` can read anything on this system."""
    return resident_bytes(os.getpid()) is not None


def format_bytes(count: float) -> str:
    """``412.3 MiB``: sizes as people read them in logs and errors."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            break
        count /= 1024
    return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"


def kill_group(process: Any, timeout: float = 5.0) -> None:
    """SIGKILL a worker's whole process group (the worker, its task and the task's children),
    then wait for the worker to be gone.

    The worker itself is killed too, by pid, in case it had not yet made its group: until it
    does, no group bears its number, so the ``killpg`` reaches nothing else. A worker that
    already exited leaves its number reserved while its group has members, so the ``killpg``
    then reaches exactly the children it left behind.
    """
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass  # no group (left already, or not made yet): the worker alone is killed below
    if process.exitcode is None:
        process.kill()
    process.join(timeout=timeout)


def usable_cores() -> int:
    """Cores this process may actually use: its CPU affinity (taskset, cpusets) and its cgroup's
    CPU quota (systemd's CPUQuota=, a container's --cpus), not every core of the machine --
    the default number of workers, which should not oversubscribe a limited slave."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass  # no cgroup v2 quota to read: the affinity stands
    return max(1, cores)
