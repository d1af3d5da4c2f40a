"""The end of a short-lived process: a dfp command, a pipeline step, the Spark job's driver.

At exit CPython collects every object still alive. With torch, MLflow, Feast and PySpark
imported that is millions of objects and 3 to 4 s a process (bench/README.md), spent
freeing memory the OS takes back at once. ``gc.freeze()`` puts them out of the collector's
reach. atexit handlers and module teardown still run, and files are flushed and closed.
"""

from __future__ import annotations

import gc


def leave_heap_to_the_os() -> None:
    """Call as a process's last work, never in a process that goes on (a test session, a server)."""
    gc.freeze()
