"""Schedulers (ITaskScheduler) and schedule strategies (ITaskScheduleStrategy), chosen by name.

Both are pure bookkeeping over plain records (``records``): they never touch a socket. The master
asks the scheduler to ``dispatch`` after each turn of its loop and sends what landed in each
slave's outbox as one message per slave.
"""

from __future__ import annotations

from ..plugins import available, load_plugin

__all__ = ["load_plugin", "available"]
