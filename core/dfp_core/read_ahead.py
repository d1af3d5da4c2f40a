"""Produce the next items of an iterator in a thread while the consumer works on this one.

``dfp score`` reads and types input blocks while its model loads and while the model scores
the block before: pyarrow, numpy and torch release the GIL, so on two cores the two overlap.
"""

from __future__ import annotations

import queue
import threading
from typing import Generic, Iterator, TypeVar

T = TypeVar("T")
_END = object()


class ReadAhead(Generic[T]):
    """The items of ``items``, in order, produced by a background thread that starts at once
    and runs at most ``depth`` items ahead of the consumer (memory holds ``depth + 2`` items).

    An exception in ``items`` is raised by ``next()``, after the items before it. ``close()``
    (or leaving a ``with`` block) stops the producer once its current item is done and closes
    ``items`` in its own thread; call it whether or not the items were consumed.
    """

    def __init__(self, items: Iterator[T], depth: int = 1, name: str = "read-ahead"):
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._items = items
        self._ready: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._done = False
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)
        self._thread.start()

    def _put(self, entry) -> bool:
        while not self._stop.is_set():
            try:
                self._ready.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
            self._put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            self._put((_END, exc))
        finally:
            close = getattr(self._items, "close", None)
            if callable(close):
                close()

    def __iter__(self) -> "ReadAhead[T]":
        return self

    def __next__(self) -> T:
        if self._done:
            raise StopIteration
        item, error = self._ready.get()
        if item is _END:
            self._done = True
            self.close()
            if error is not None:
                raise error
            raise StopIteration
        return item

    def close(self) -> None:
        self._done = True
        self._stop.set()
        self._thread.join()

    def __del__(self) -> None:  # an abandoned iterator's producer stops polling
        stop = getattr(self, "_stop", None)  # None: __init__ refused its arguments
        if stop is not None:
            stop.set()

    def __enter__(self) -> "ReadAhead[T]":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_ahead(items: Iterator[T], depth: int = 1, name: str = "read-ahead") -> ReadAhead[T]:
    """``ReadAhead(items, depth, name)``: its producer starts now."""
    return ReadAhead(items, depth, name)
