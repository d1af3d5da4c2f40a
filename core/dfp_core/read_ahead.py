"""Produce the next items of an iterator in a thread while the consumer works on this one.

``dfp score`` reads and types the next input block while the model scores the current one:
pyarrow, numpy and torch release the GIL, so on two cores the two overlap.
"""

from __future__ import annotations

import queue
import threading
from typing import Iterator, TypeVar

T = TypeVar("T")
_END = object()


def read_ahead(items: Iterator[T], depth: int = 1, name: str = "read-ahead") -> Iterator[T]:
    """The items of ``items``, in order, produced by a background thread at most ``depth``
    items ahead of the consumer (so memory holds ``depth + 2`` items at most).

    An exception in ``items`` is raised here, after the items before it. Closing this
    iterator early (a ``break``, an exception in the consumer) stops the producer once its
    current item is done, and closes ``items`` in its own thread."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_END, exc))
        finally:
            close = getattr(items, "close", None)
            if callable(close):
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = ready.get()
            if item is _END:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()
