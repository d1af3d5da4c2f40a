"""The end of a short-lived process: a dfp command, a pipeline step, the Spark job's driver.

At exit CPython collects every object still alive. With MLflow, Feast, PySpark and the
rest imported that is millions of objects and seconds a process (bench/README.md), spent
freeing memory the OS takes back at once. ``gc.freeze()`` puts them out of the collector's
reach. atexit handlers and module teardown still run, and files are flushed and closed.

Where Triton is loaded (Lightning imports ``torch._dynamo``, which imports it), its nanobind
bindings list every one of their objects the freeze kept alive as "leaked" during the
interpreter's teardown, hundreds of lines on stderr. An entry point that calls
``quiet_teardown_after_exit_handlers`` first can freeze anyway: once every atexit handler
registered after that call has run, the teardown's stderr goes to /dev/null. Elsewhere such a
process keeps Python's own exit.
"""

from __future__ import annotations

import atexit
import gc
import os
import sys

# Extensions whose bindings report objects alive at exit.
REPORT_LEAKS_AT_EXIT = ("triton",)

_state = {"armed": False, "frozen": False}


def quiet_teardown_after_exit_handlers() -> None:
    """Call first in an entry point (atexit runs handlers last in, first out, so this one runs
    after those registered later): a process that then leaves its heap to the OS with Triton
    loaded ends without the teardown's leak report."""
    if not _state["armed"]:
        atexit.register(_silence_teardown)
        _state["armed"] = True


def _silence_teardown() -> None:
    if not _state["frozen"]:
        return
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or gone: nothing left to flush
            pass
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # the exit status is untouched; only the teardown's output goes
    os.close(devnull)


def leave_heap_to_the_os() -> None:
    """Call as a process's last work, never in a process that goes on (a test session, a server)."""
    if any(name in sys.modules for name in REPORT_LEAKS_AT_EXIT) and not _state["armed"]:
        return
    gc.freeze()
    _state["frozen"] = True
