"""Fault injection for the fault tests: points in the transform where a test can have
the process killed (SIGKILL: no cleanup runs, as with a lost pod or `kill -9`).

Off unless the variable ``DFP_FAULT_KILL_AT`` names a phase in the process's
environment (the fault suite sets it for the one `dfp transform` it kills). It is read
when a phase is reached, never at import, and is the one setting that bypasses the
runtime context: a test hook, not configuration.
"""

from __future__ import annotations

import os
import signal
import threading

ENV = "DFP_FAULT_KILL_AT"
PHASES = ("upload", "spark-write", "after-commit", "between-delete-and-tag", "inside-merge")


def reached(phase: str) -> None:
    """Kill this process now if the fault suite asked for ``phase``."""
    if os.environ.get(ENV) == phase:
        os.kill(os.getpid(), signal.SIGKILL)


def kill_soon(phase: str, delay_s: float = 0.005) -> None:
    """For a phase inside a call (the merge request in flight): kill after ``delay_s``."""
    if os.environ.get(ENV) == phase:
        threading.Timer(delay_s, os.kill, (os.getpid(), signal.SIGKILL)).start()
