"""read_ahead: the items in order, the producer's error where it happened, a bounded lead
from the start, and a producer that stops (and closes its source) when the consumer closes
it, early or before the first item."""

from __future__ import annotations

import threading
import time

import pytest

from dfp_core.read_ahead import read_ahead


def test_items_come_in_order_from_another_thread():
    threads = set()

    def numbers():
        for i in range(50):
            threads.add(threading.current_thread().name)
            yield i

    assert list(read_ahead(numbers(), depth=3, name="reader-x")) == list(range(50))
    assert threads == {"reader-x"}


def test_the_producers_error_is_raised_after_the_items_before_it():
    def failing():
        yield 1
        yield 2
        raise ValueError("block 3 is not a CSV")

    seen = []
    with pytest.raises(ValueError, match="block 3 is not a CSV"):
        for item in read_ahead(failing()):
            seen.append(item)
    assert seen == [1, 2]


def test_the_producer_runs_at_most_depth_items_ahead():
    produced = []

    def counted():
        for i in range(100):
            produced.append(i)
            yield i

    with read_ahead(counted(), depth=2) as items:
        time.sleep(0.3)
        # Started before the first next(): 2 waiting in the queue, 1 made and waiting for room.
        assert len(produced) == 3
        assert next(items) == 0
        time.sleep(0.3)
        assert len(produced) == 4


def test_leaving_early_stops_the_producer_and_closes_its_source():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with read_ahead(endless()) as items:
        for item in items:
            if item == 3:
                break
    assert closed.is_set()
    assert not any(t.name == "read-ahead" for t in threading.enumerate())


def test_closing_before_the_first_item_stops_the_producer():
    closed = threading.Event()

    def slow():
        try:
            for i in range(1000):
                time.sleep(0.01)
                yield i
        finally:
            closed.set()

    read_ahead(slow(), name="never-read").close()
    assert closed.is_set() and not any(t.name == "never-read" for t in threading.enumerate())


def test_a_depth_below_one_is_refused():
    with pytest.raises(ValueError, match="depth must be at least 1"):
        list(read_ahead(iter([1]), depth=0))
