"""The process tree from /proc, shared by the benchmark scripts (Linux only).

The scripts run as ``python benchmarks/NAME.py``, so this module sits beside them on sys.path.
"""

from __future__ import annotations

from pathlib import Path


def proc_stat(pid: int) -> tuple[int, str] | None:
    """(parent pid, state) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[1]), fields[0]
    except (IndexError, ValueError):
        return None


def descendants(pid: int) -> list[int]:
    """Every live (not zombie) process below ``pid``, parents before their children."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat is not None and stat[1] not in ("Z", "X"):
                children.setdefault(stat[0], []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found
