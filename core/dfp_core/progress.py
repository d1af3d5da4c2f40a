"""Stage progress on stderr, so stdout stays free for the JSON summary."""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Iterator

from rich.console import Console

console = Console(stderr=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def stage(index: int, total: int, title: str) -> Iterator[None]:
    started = time.monotonic()
    console.print(f"[bold cyan]==> [{index}/{total}][/] {title}")
    try:
        yield
    except BaseException:
        console.print(f"    [red]failed[/] after {time.monotonic() - started:.1f}s")
        raise
    console.print(f"    done in {time.monotonic() - started:.1f}s")


def note(message: str) -> None:
    console.print(f"    {message}")


def warn(message: str) -> None:
    console.print(f"    [yellow]warning:[/] {message}")


def plain(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
