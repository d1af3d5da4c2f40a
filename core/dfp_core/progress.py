"""The one printer for people: stage progress, notes, warnings and errors on
stderr, so that stdout stays free for each command's JSON summary."""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.markup import escape

console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def stage(index: int, total: int, title: str) -> Iterator[None]:
    started = time.monotonic()
    console.print(f"[bold cyan]==> [{index}/{total}][/] {escape(title)}")
    try:
        yield
    except BaseException:
        console.print(f"    [red]failed[/] after {time.monotonic() - started:.1f}s")
        raise
    console.print(f"    done in {time.monotonic() - started:.1f}s")


def note(message: str) -> None:
    # Messages name paths and refs with brackets in them; they are text, not markup.
    console.print(f"    {escape(message)}")


def show(message: str) -> None:
    """A line of a table for people (a status), unindented."""
    console.print(escape(message))


def warn(message: str) -> None:
    console.print(f"    [yellow]warning:[/] {escape(message)}")


def error(message: str) -> None:
    """The one line a failed command ends with. A message of several lines (a server's own,
    such as lakeFS's "write ...: no space left on device" then "failed to write to storage")
    is joined into it."""
    one_line = "; ".join(line.strip() for line in str(message).splitlines() if line.strip())
    console.print(f"[red]error:[/] {escape(one_line)}")


# A line worth showing from a failed stage's log: not blank, not only rules.
_MEANINGFUL = re.compile(r"[A-Za-z0-9]")
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
TAIL_LINES = 20


class _LogSink(io.TextIOBase):
    """A stage's log as Python's stdout and stderr: a full disk costs log lines, never the stage
    (a transform on a filled DFP_HOME must fail for its own reason, in one line)."""

    def __init__(self, file):
        self.file = file

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with contextlib.suppress(OSError):
            self.file.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(OSError):
            self.file.flush()

    def fileno(self) -> int:
        return self.file.fileno()


@contextlib.contextmanager
def quiet_stage(index: int, total: int, title: str, log: Path, verbose: bool = False,
                retry_hint: str = "") -> Iterator[None]:
    """A stage whose output goes to ``log``, not the terminal: one line with a spinner and the
    time taken. Everything the stage writes lands in the log: this process's stdout and stderr
    at the descriptor level, so the JVM, KFP's executors and the steps' subprocesses too. On
    failure the log's last meaningful lines, its path and ``retry_hint`` are shown. ``verbose``:
    the output streams to the terminal as a plain ``stage`` does."""
    if verbose:
        with stage(index, total, title):
            yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    terminal = Console(file=os.fdopen(os.dup(saved[2]), "w"), highlight=False, soft_wrap=True)
    label = f"[bold cyan][{index}/{total}][/] {escape(title)}"
    started = time.monotonic()
    file = open(log, "a", buffering=1)
    try:
        sink = _LogSink(file)
        sink.write(f"\n==> [{index}/{total}] {title}\n")
        try:
            with terminal.status(label, spinner="dots"):
                for fd in (1, 2):  # children and the JVM write to the descriptors
                    os.dup2(sink.fileno(), fd)
                try:  # and Python's own streams may not be the descriptors (a notebook, pytest)
                    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                        yield
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    for fd, copy in saved.items():
                        os.dup2(copy, fd)
        except BaseException:
            terminal.print(f"{label}: [red]failed[/] after {time.monotonic() - started:.1f}s")
            for line in failure_tail(log):
                terminal.print(f"    {escape(line)}")
            terminal.print(f"    full log: {escape(str(log))}" + (f"; {escape(retry_hint)}" if retry_hint else ""))
            raise
        terminal.print(f"{label}: done in {time.monotonic() - started:.1f}s")
    finally:
        with contextlib.suppress(OSError):  # a full disk: the stage's own error is the one to see
            file.close()
        for copy in saved.values():
            os.close(copy)
        terminal.file.close()


def plain(text: str) -> str:
    """``text`` without terminal colours (KFP colours its log lines and messages)."""
    return _ANSI.sub("", text)


def command_log(home: Path, command: str) -> Path:
    """Where a quiet command writes its output this time: ``DFP_HOME/logs/<command>-<time>.log``."""
    return home / "logs" / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}.log"


def failure_tail(log: Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` meaningful lines of a stage's log, without terminal colours."""
    text = plain(log.read_text(errors="replace"))
    # KFP's executor input and outputs are JSON dumps: their lines say nothing a person needs.
    kept = [line.rstrip() for line in text.splitlines()
            if _MEANINGFUL.search(line) and not line.lstrip().startswith(('"', "{", "}", "[", "]"))]
    return kept[-lines:]
