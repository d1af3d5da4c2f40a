"""The one printer for people: stage progress, notes, warnings and errors on
stderr, so that stdout stays free for each command's JSON summary."""

from __future__ import annotations

import contextlib
import time
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
    """The one line a failed command ends with."""
    console.print(f"[red]error:[/] {escape(message)}")
