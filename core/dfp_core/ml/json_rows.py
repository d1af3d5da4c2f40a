"""The usual ``dataframe_split`` body read straight into the model's float64 matrix.

A 1,000-row JSON request is 2.5 MB of numbers. Parsing it into Python objects (orjson) and
building the matrix from the lists takes about 22 ms, more than the model takes to score the
rows. simdjson parses numbers into a C buffer in a quarter of that, but only from an array of
numbers alone, and each row of the usual body ends with its id as text. So the ids are cut
out of the bytes first, with checks that make the cut exact.

``read_plain_split`` takes only the shape a client writes with pandas and ``json.dumps`` or
orjson: ``{"dataframe_split": {"columns": [...], ["index": ...,] "data": [[...], ...]}}``,
the columns the features in the model's order, with or without the id column last, every
value a number or ``null`` (a missing value), ``data`` the last key, and no escaped
character anywhere. Anything else returns None and goes through the general reader, which
decides with its own messages: nothing this reader accepts is read differently there (a test
compares them bit for bit).
"""

from __future__ import annotations

import re
import threading

import numpy as np
import orjson
import simdjson

_DATA_KEY = re.compile(rb'"data"\s*:\s*(?=\[)')
_WS = b" \t\r\n"  # JSON's whitespace, no more
_CONTROL = re.compile(rb"[\x00-\x1f]")  # not allowed unescaped in a JSON string
_PARSE_ERRORS = (ValueError, RuntimeError, TypeError)  # simdjson's: syntax, numbers past 64 bits, types
# simdjson's buffer takes numbers only, so each ``null`` is parsed as this number (as long,
# so it is written in place), then made NaN (a missing value, as the general reader makes it).
# A body that holds the number itself is told apart by the count and goes to the general reader.
_NULL = b"null"
_STAND_IN = b"-9e9"
_STAND_IN_VALUE = float(_STAND_IN)
_BEFORE_VALUE = np.frombuffer(b",[" + _WS, np.uint8)
_AFTER_VALUE = np.frombuffer(b",]" + _WS, np.uint8)
# One parser a thread, kept: a new one maps its buffers afresh each request, and the page
# faults took longer than the parse (16 ms against 6 for a 1,000-row body). A parser holds
# its buffers at the largest body's size, so no more than the server's body limit.
_parsers = threading.local()


def read_plain_split(body: bytes, features: list[str], id_column: str) -> tuple[np.ndarray, list[str] | None] | None:
    """(the float64 matrix of ``features``, the ids or None) of a plain ``dataframe_split``
    body, or None when the body is anything else. Infinities are the caller's to refuse."""
    # With no backslash, every quote opens or closes a string: a quote count finds the strings.
    if b"\\" in body:
        return None
    found = _DATA_KEY.search(body)
    if found is None or _DATA_KEY.search(body, found.end()) is not None:
        return None
    with_id = _columns_before_data(body[:found.end()], features, id_column)
    if with_id is None:
        return None
    tail = body[found.end():]
    if with_id:
        cut = _cut_ids(tail)
        if cut is None:
            return None
        numbers, raw_ids = cut
    else:
        numbers, raw_ids = _closed_twice(tail), None
        if numbers is None or b'"' in numbers:
            return None
    matrix = _number_rows(numbers, len(features))
    if matrix is None or (raw_ids is not None and len(raw_ids) != len(matrix)):
        return None
    if raw_ids is None:
        return matrix, None
    joined = b"".join(raw_ids)
    if _CONTROL.search(joined):
        return None
    try:
        return matrix, [raw.decode() for raw in raw_ids]
    except UnicodeDecodeError:
        return None


def _columns_before_data(head: bytes, features: list[str], id_column: str) -> bool | None:
    """True when the body up to ``data``'s value names the features then the id, False for
    the features alone, None otherwise. It is parsed with an empty ``data`` in place, so
    it is valid JSON exactly when the body around the data is."""
    try:
        payload = orjson.loads(head + b"[]}}")
    except orjson.JSONDecodeError:
        return None
    split = payload.get("dataframe_split") if isinstance(payload, dict) and len(payload) == 1 else None
    if not isinstance(split, dict) or split.get("data") != [] or not set(split) <= {"columns", "index", "data"}:
        return None
    columns = split.get("columns")
    if columns == features:
        return False
    if columns == [*features, id_column]:
        return True
    return None


def _closed_twice(tail: bytes) -> bytes | None:
    """``tail`` without the two braces (and whitespace) that must close the body."""
    for _ in range(2):
        tail = tail.rstrip(_WS)
        if not tail.endswith(b"}"):
            return None
        tail = tail[:-1]
    return tail


def _cut_ids(tail: bytes) -> tuple[bytes, list[bytes]] | None:
    """(``data``'s array with each row's last value cut out, those values' bytes), when each
    row ends ``, "<id>" ]`` and nothing else is text. Between two ids lies ``], [`` and a
    row's numbers, then the comma before the next id."""
    parts = tail.split(b'"')
    if len(parts) < 3:  # no id at all
        return None
    closing = _closed_twice(parts[-1])
    if closing is None or closing.translate(None, _WS) != b"]]":
        return None
    pieces = []
    for i, outside in enumerate(parts[:-1:2]):
        if i and not outside.lstrip(_WS).startswith(b"]"):  # the id ended its row
            return None
        piece = outside.rstrip(_WS)
        if not piece.endswith(b","):  # the id followed a value of the row
            return None
        pieces.append(piece[:-1])
    pieces.append(b"]]")
    return b"".join(pieces), parts[1::2]


def _nulls_stood_in(numbers: bytes) -> tuple[np.ndarray, int] | None:
    """(``numbers`` with each ``null`` written as the stand-in, how many), or None when an
    ``n`` does not start a ``null`` standing alone as a value."""
    text = np.frombuffer(numbers, np.uint8)
    starts = np.flatnonzero(text == ord("n"))  # no text is left: only null has an n
    ends = starts + len(_NULL)
    if starts[0] == 0 or ends[-1] >= len(text):
        return None
    cells = starts[:, None] + np.arange(len(_NULL))
    if not ((text[cells] == np.frombuffer(_NULL, np.uint8)).all() and np.isin(text[starts - 1], _BEFORE_VALUE).all()
            and np.isin(text[ends], _AFTER_VALUE).all()):
        return None
    stood_in = text.copy()
    stood_in[cells] = np.frombuffer(_STAND_IN, np.uint8)
    return stood_in, len(starts)


def _number_rows(numbers: bytes, width: int) -> np.ndarray | None:
    """``numbers`` parsed as an array of rows of ``width`` numbers (or nulls: NaN) each, or None."""
    brackets = numbers.count(b"[")
    stood_in = _nulls_stood_in(numbers) if b"n" in numbers else (numbers, 0)
    if stood_in is None:
        return None
    source, nulls = stood_in
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:  # no document of it outlives this call, so the next call may reuse it
        rows = parser.parse(source)
        if not isinstance(rows, simdjson.Array) or not len(rows):
            return None
        count = len(rows)
        # The buffer flattens nested arrays: one bracket a row (no text is left to hold one)
        # and the width of each row keep the matrix's rows the body's rows.
        if brackets != count + 1 or any(len(row) != width for row in rows):
            return None
        flat = np.frombuffer(rows.as_buffer(of_type="d"), dtype=np.float64)
    except _PARSE_ERRORS:  # not numbers alone (booleans), or not JSON: the general reader decides
        return None
    if flat.size != count * width:
        return None
    if nulls:
        missing = flat == _STAND_IN_VALUE
        if np.count_nonzero(missing) != nulls:
            return None
        flat[missing] = np.nan
    return flat.reshape(count, width)
