"""The end of a short-lived process: a dfp command, a pipeline step, the Spark job's driver.

At exit CPython collects every object still alive. With MLflow, Feast, PySpark and the
rest imported that is millions of objects and seconds a process (bench/README.md), spent
freeing memory the OS takes back at once. ``gc.freeze()`` puts them out of the collector's
reach. atexit handlers and module teardown still run, and files are flushed and closed.

Not where Triton is loaded (torch imports it): its nanobind bindings list every one of
their objects still alive at exit as "leaked", hundreds of lines on stderr.
"""

from __future__ import annotations

import gc
import sys

# Extensions whose bindings report objects alive at exit.
REPORT_LEAKS_AT_EXIT = ("triton",)


def leave_heap_to_the_os() -> None:
    """Call as a process's last work, never in a process that goes on (a test session, a server)."""
    if any(name in sys.modules for name in REPORT_LEAKS_AT_EXIT):
        return
    gc.freeze()
