"""`dfp serve`'s reader of the usual JSON body (dfp_core.ml.json_rows): it takes only the
plain shape, reads it bit for bit as the general reader does, and leaves every other body
to the general reader."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pandas as pd
import pytest

from dfp_core.ml.json_rows import _STAND_IN, read_plain_split
from dfp_core.ml.serve_app import ClientError, parse_json, read_request, typed_rows

FEATURES = [f"f{i}" for i in range(40)]
ID = "sample_id"
JSON = "application/json"


def _general(body: bytes, features=FEATURES):
    return typed_rows(*parse_json(body, JSON)[:2], features, ID)


def _number_texts(rng: np.random.Generator, n: int) -> list[str]:
    """Numbers as clients write them, and the hard cases for a parser's rounding."""
    doubles = np.concatenate([rng.normal(0, 1e3, n), rng.exponential(1e-5, n), rng.integers(-90, 90, n) * 1.0,
                              10.0 ** rng.uniform(-320, 308, n)])
    texts = [repr(float(x)) for x in doubles]                      # shortest round trip (json.dumps, orjson)
    texts += [f"{x:.10g}" for x in doubles[:n]]                      # pandas' to_json precision
    texts += [str(int(x)) for x in rng.integers(-2**62, 2**62, n)]  # integers past 2**53
    texts += ["".join(map(str, rng.integers(0, 10, 30))).lstrip("0") + "." + "".join(map(str, rng.integers(0, 10, 25)))
              for _ in range(n)]                                    # more digits than a double holds
    texts += ["0", "-0", "-0.0", "1e-400", "4.9406564584124654e-324", "2.2250738585072011e-308",
              "1.7976931348623157e308", "0.1e1", "1E+2", "9007199254740993", "18446744073709551615",
              _STAND_IN.decode()]  # the number json_rows reads each null as, in a body with no null
    texts += ["null"] * (n // 4)                                    # missing values
    return texts


def _body(rows: list[list[str]], ids: list[str] | None, columns: list[str], compact: bool, index: bool = False) -> bytes:
    comma = "," if compact else ", "
    cells = [row + ([json.dumps(i, ensure_ascii=False)] if ids else []) for row, i in zip(rows, ids or [None] * len(rows))]
    data = "[" + comma.join("[" + comma.join(c) + "]" for c in cells) + "]"
    head = {"columns": columns, **({"index": list(range(len(rows)))} if index else {})}
    text = json.dumps({"dataframe_split": head}, separators=(",", ":") if compact else None)
    return (text[:-2] + f'{comma}"data":{"" if compact else " "}{data}' + "}}").encode()


@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("with_id", [True, False])
def test_the_usual_body_reads_bit_for_bit_as_the_general_reader_reads_it(compact, with_id):
    rng = np.random.default_rng(7)
    texts = _number_texts(rng, 400)
    rng.shuffle(texts)
    width = len(FEATURES)
    rows = [texts[i:i + width] for i in range(0, len(texts) - width + 1, width)]
    kinds = ["app-{}", "é ünïcode {}", "a], [b{}", "{{x: {}}}", "  spaced {} ", ""]
    ids = [kinds[i % len(kinds)].format(i) for i in range(len(rows))] if with_id else None
    columns = FEATURES + ([ID] if with_id else [])
    for index, missing in ((False, True), (True, True), (False, False)):
        # With nulls, or with the number json_rows reads a null as: both, and it leaves them to the general reader.
        drop = _STAND_IN.decode() if missing else "null"
        body = _body([["1" if t == drop else t for t in row] for row in rows], ids, columns, compact, index)
        plain = read_plain_split(body, FEATURES, ID)
        assert plain is not None, body[:200]
        matrix, got_ids = plain
        expected, expected_ids = _general(body)
        assert matrix.shape == (len(rows), width) and matrix.dtype == np.float64
        assert matrix.tobytes() == expected.tobytes()  # bit for bit, -0.0 and the rounding included
        assert got_ids == expected_ids == ids


def test_the_bodies_clients_write_take_the_plain_reader():
    frame = pd.DataFrame(np.random.default_rng(1).random((30, len(FEATURES))) * 100, columns=FEATURES)
    frame[ID] = [f"{i:064x}" for i in range(30)]
    split = json.loads(frame.to_json(orient="split", index=False))
    for body in (json.dumps({"dataframe_split": split}).encode(), orjson.dumps({"dataframe_split": split}),
                 json.dumps({"dataframe_split": split}, indent=2).encode(),
                 b'{"dataframe_split":' + frame.to_json(orient="split").encode() + b"}"):
        matrix, ids = read_plain_split(body, FEATURES, ID)
        assert matrix.tobytes() == _general(body)[0].tobytes() and ids == frame[ID].tolist()
        request = read_request(body, JSON, FEATURES, ID)
        assert request.matrix.tobytes() == matrix.tobytes() and request.ids == ids and request.explain == 0


def _split(data: str, columns=("a", "b", "c", ID), before: str = "") -> bytes:
    return ('{' + before + '"dataframe_split": {"columns": ' + json.dumps(list(columns)) + ', "data": ' + data
            + '}}').encode()


FEW = ["a", "b", "c"]
LEFT_TO_THE_GENERAL_READER = {
    "rows of other widths that add up": _split('[[1, 2, "x"], [1, 2, 3, 4, "y"]]'),
    "nested arrays that add up": _split('[[1, [], 3, "x"], [[4, 5], 6, 7, "y"]]'),
    "a null and the number a null is read as": _split('[[1, null, ' + _STAND_IN.decode() + ', "x"]]'),
    "a null run into a number": _split('[[1, null1, 3, "x"]]'),
    "a null run into another": _split('[[1, nullnull, 3, "x"]]'),
    "half a null": _split('[[1, nul, 3, "x"]]'),
    "a boolean": _split('[[1, true, 3, "x"]]'),
    "a number as text": _split('[[1, "2", 3, "x"]]'),
    "a number as the id": _split('[[1, 2, 3, "x"], [1, 2, 3, 7]]'),
    "a null id": _split('[[1, 2, 3, null]]'),
    "the id first": _split('[["x", 1, 2, 3]]', (ID, "a", "b", "c")),
    "the id in the middle": _split('[[1, "x", 2, 3]]', ("a", ID, "b", "c")),
    "other columns": _split('[[1, 2, 3, 4, "x"]]', ("a", "b", "c", "d", ID)),
    "an escape in an id": _split('[[1, 2, 3, "x\\"y"]]'),
    "an escaped character anywhere": _split('[[1, 2, 3, "x"]]', ("a", "b", "c", "sample\\u005fid")),
    "a raw tab in an id": _split('[[1, 2, 3, "x\ty"]]'),
    "an id that is not UTF-8": _split('[[1, 2, 3, "x"]]').replace(b'"x"', b'"\xff"'),
    "params": _split('[[1, 2, 3, "x"]]', before='"params": {"explain": 2}, '),
    "a second data key": _split('[[1, 2, 3, "x"]]', before='"other": {"data": []}, '),
    "data before the columns": b'{"dataframe_split": {"data": [[1, 2, 3, "x"]], "columns": ["a", "b", "c", "sample_id"]}}',
    "bytes after the body": _split('[[1, 2, 3, "x"]]') + b"x",
    "an unclosed body": _split('[[1, 2, 3, "x"]]')[:-1],
    "a number past a double": _split('[[1, 2, 1e400, "x"]]'),
    "an integer past 64 bits": _split('[[1, 2, 123456789012345678901234567890, "x"]]'),
    "NaN": _split('[[1, NaN, 3, "x"]]'),
    "no rows": _split("[]"),
    "dataframe_records": b'{"dataframe_records": [{"a": 1, "b": 2, "c": 3}]}',
    "not JSON": b'{"dataframe_split": {"columns": ["a"], "data": [[1,,2]]}}',
}


@pytest.mark.parametrize("case", sorted(LEFT_TO_THE_GENERAL_READER))
def test_any_other_body_is_left_to_the_general_reader(case):
    body = LEFT_TO_THE_GENERAL_READER[case]
    assert read_plain_split(body, FEW, ID) is None
    try:  # and read_request answers as the general reader alone does
        expected = _general(body, FEW)
    except ClientError as exc:
        with pytest.raises(ClientError, match=".") as caught:
            read_request(body, JSON, FEW, ID)
        assert (caught.value.status, str(caught.value)) == (exc.status, str(exc))
    else:
        got = read_request(body, JSON, FEW, ID)
        assert got.matrix.tobytes() == expected[0].tobytes() and got.ids == expected[1]


def test_infinities_in_the_usual_body_are_refused_naming_the_column():
    # JSON has no infinity; 1e400 overflows a double: the general reader names the column.
    with pytest.raises(ClientError, match="infinite value in column"):
        read_request(_split('[[1, 2, -1e400, "x"]]'), JSON, FEW, ID)
