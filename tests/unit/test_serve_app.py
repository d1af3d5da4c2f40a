"""What `dfp serve` makes of a request body before the model sees it: MLflow's two JSON
shapes, CSV and Parquet, typed as the model's signature; every client mistake a ClientError
with a 4xx and one short line."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dfp_core.ml.serve_app import ClientError, parse_payload, read_request, typed_frame

FEATURES = ["a", "b", "c"]
JSON = "application/json; charset=utf-8"
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"


def _refused(status: int, words: str, body, content_type: str | None = JSON) -> None:
    with pytest.raises(ClientError) as caught:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        read_request(raw, content_type, FEATURES, "sample_id")
    assert caught.value.status == status and words in str(caught.value), str(caught.value)
    assert "\n" not in str(caught.value) and len(str(caught.value)) < 300


def test_both_json_shapes_give_the_same_typed_rows():
    split = {"dataframe_split": {"columns": ["sample_id", "c", "a", "b", "extra"],
                                 "data": [["x", 3, 1, None, "ignored"], [7, "4", 2.5, True, 0]]}}
    records = {"dataframe_records": [{"sample_id": "x", "c": 3, "a": 1, "b": None, "extra": "ignored"},
                                     {"a": 2.5, "b": True, "c": "4", "sample_id": 7}]}
    frames = [typed_frame(*parse_payload(json.dumps(p).encode(), JSON), FEATURES, "sample_id") for p in (split, records)]
    for frame in frames:
        assert list(frame.columns) == [*FEATURES, "sample_id"]
        assert frame[FEATURES].dtypes.tolist() == [np.float64] * 3
        assert frame["a"].tolist() == [1.0, 2.5] and frame["c"].tolist() == [3.0, 4.0]
        assert math.isnan(frame["b"][0]) and frame["b"][1] == 1.0  # a missing value, imputed later
        assert frame["sample_id"].tolist() == ["x", "7"]


def test_features_first_then_the_id_are_typed_like_any_order():
    rows = [[1, None, "3", "x"], [4.5, 5, 6, None]]
    first = typed_frame([*FEATURES, "sample_id"], rows, FEATURES, "sample_id")
    mixed = typed_frame(["c", "sample_id", "a", "b"], [[r[2], r[3], r[0], r[1]] for r in rows], FEATURES, "sample_id")
    assert first.equals(mixed) and first["sample_id"].tolist() == ["x", None]
    _refused(400, "column b: 'five' is not a number", {"dataframe_split": {"columns": [*FEATURES, "sample_id"],
                                                                          "data": [[1, "five", 3, "x"]]}})


def test_client_mistakes_are_4xx_in_one_line():
    ok = {"dataframe_split": {"columns": FEATURES, "data": [[1, 2, 3]]}}
    _refused(415, "no Content-Type", ok, None)
    _refused(415, "text/plain is not accepted: send the rows as application/json, text/csv", ok, "text/plain")
    _refused(400, "not valid JSON", '{"dataframe_split": {')
    _refused(400, "not valid JSON", b"\xff\xfe")
    _refused(400, "nested too deeply", "[" * 100_000 + "]" * 100_000)
    _refused(400, "dataframe_split or dataframe_records", [1, 2])
    _refused(400, "got inputs", {"inputs": [[1, 2, 3]]})
    _refused(400, "list of columns", {"dataframe_split": {"columns": "a,b,c", "data": []}})
    _refused(400, "list of 3 values", {"dataframe_split": {"columns": FEATURES, "data": [[1, 2]]}})
    _refused(400, "list of objects", {"dataframe_records": [[1, 2, 3]]})
    _refused(400, "missing feature column(s): b, c; unknown column(s): B", {"dataframe_split": {"columns": ["a", "B"],
                                                                                             "data": [[1, 2]]}})
    _refused(400, "column b: 'twelve' is not a number", {"dataframe_split": {"columns": FEATURES, "data": [[1, "twelve", 3]]}})
    _refused(400, "infinite value in column(s): c", '{"dataframe_split": {"columns": ["a", "b", "c"], "data": [[1, 2, -Infinity]]}}')


def test_many_missing_columns_are_counted_not_listed():
    features = [f"f{i}" for i in range(476)]
    with pytest.raises(ClientError) as caught:
        typed_frame(["f0"], [[1]], features, "sample_id")
    assert str(caught.value) == "missing feature column(s): f1, f2, f3, f4, f5 and 470 more"


def test_bodies_strict_json_refuses_read_as_pythons_json_reads_them():
    # orjson parses the usual body; NaN literals (Python's json.dumps writes them for pandas'
    # missing values), lone surrogates and integers past 64 bits go to json and mean what they meant.
    body = '{"dataframe_split": {"columns": ["a", "b", "c", "sample_id"], ' \
           '"data": [[NaN, 0.1, 123456789012345678901234567890, "\\ud800"], [1e-7, -0.0, 2.5e300, "x"]]}}'
    frame = typed_frame(*parse_payload(body.encode(), JSON), FEATURES, "sample_id")
    assert math.isnan(frame["a"][0]) and frame["a"][1] == 1e-7
    assert frame["b"].tolist() == [0.1, -0.0] and math.copysign(1, frame["b"][1]) == -1
    assert frame["c"].tolist() == [1.2345678901234568e29, 2.5e300]
    assert frame["sample_id"].tolist() == ["\ud800", "x"]


def test_a_usual_body_parses_to_the_same_values_either_way():
    rng = np.random.default_rng(3)
    rows = [[float(v) for v in rng.standard_normal(3) * 10.0 ** rng.integers(-8, 8, 3)] + [f"id{i}"] for i in range(200)]
    body = json.dumps({"dataframe_split": {"columns": [*FEATURES, "sample_id"], "data": rows}}).encode()
    fast = typed_frame(*parse_payload(body, JSON), FEATURES, "sample_id")
    assert fast[FEATURES].to_numpy().tolist() == [row[:3] for row in rows]


def _parquet(frame: pd.DataFrame) -> bytes:
    return frame.to_parquet(index=False)


def test_csv_and_parquet_give_the_json_values_bit_for_bit():
    # MLflow's scoring server takes the same three; scores depend only on the matrix and the ids.
    rng = np.random.default_rng(5)
    values = rng.standard_normal((300, 3)) * 10.0 ** rng.integers(-12, 12, (300, 3))
    values[4, 1] = np.nan
    frame = pd.DataFrame(values, columns=FEATURES).assign(sample_id=[f"id{i}" for i in range(300)])
    as_json = json.dumps({"dataframe_split": {"columns": list(frame.columns), "data": frame.values.tolist()}})
    by_json = read_request(as_json.encode(), JSON, FEATURES, "sample_id")
    for body, content_type in ((frame.to_csv(index=False).encode(), CSV), (_parquet(frame), PARQUET)):
        matrix, ids, _ = read_request(body, content_type, FEATURES, "sample_id")
        assert matrix.tobytes() == by_json[0].tobytes() == values.tobytes(), content_type
        assert ids == by_json[1] == frame["sample_id"].tolist()
        assert matrix.flags.c_contiguous and matrix.flags.writeable  # the scorer overwrites its input


def test_columnar_bodies_are_typed_like_json_rows():
    matrix, ids, _ = read_request(b"sample_id,c,zz,a,b\nx,3,hello,1,\n7, 4 ,0,2.5,NaN\n,1,2,3,null\n", CSV, FEATURES, "sample_id")
    assert np.array_equal(matrix, [[1, np.nan, 3], [2.5, np.nan, 4], [3, np.nan, 1]], equal_nan=True)
    assert ids == ["x", "7", None]  # an empty id is missing, as pandas reads it
    frame = pd.DataFrame({"a": [1, None], "b": [True, False], "c": ["1.5", " 2"], "sample_id": [1, 2]})
    matrix, ids, _ = read_request(_parquet(frame), PARQUET, FEATURES, "sample_id")
    assert np.array_equal(matrix, [[1, 1, 1.5], [np.nan, 0, 2]], equal_nan=True) and ids == ["1", "2"]
    matrix, ids, _ = read_request(b"a,b,c\n", CSV, FEATURES, "sample_id")
    assert matrix.shape == (0, 3) and ids is None


def test_columnar_mistakes_are_4xx_in_one_line():
    _refused(400, "missing feature column(s): c", b"a,b\n1,2\n", CSV)
    _refused(400, "column(s) given more than once: a", b"a,b,c,a\n1,2,3,4\n", CSV)
    _refused(400, "column b: 'twelve' is not a number", b"a,b,c\n1,2,3\n1,twelve,3\n", CSV)
    _refused(400, "infinite value in column(s): b", b"a,b,c\n1,-inf,3\n", CSV)
    _refused(400, "not valid CSV: CSV parse error: Expected 3 columns, got 2", b"a,b,c\n1,2\n", CSV)
    _refused(400, "not valid CSV: Empty CSV file", b"", CSV)
    _refused(400, "not valid CSV", b"a,b,c,sample_id\n1,2,3,\xff\n", CSV)
    _refused(400, "not a valid Parquet file", b"a,b,c\n1,2,3\n", PARQUET)
    _refused(400, "column b: list<element: int64> values are not numbers",
             _parquet(pd.DataFrame({"a": [1], "b": [[1, 2]], "c": [3]})), PARQUET)
    _refused(400, "column c: 'x' is not a number", _parquet(pd.DataFrame({"a": [1], "b": [2], "c": ["x"]})), PARQUET)


def test_mlflow_params_ask_for_explanations():
    rows = {"columns": FEATURES, "data": [[1, 2, 3]]}
    for payload, explain in (({"dataframe_split": rows}, 0), ({"dataframe_split": rows, "params": {"explain": 3}}, 3),
                             ({"dataframe_records": [{"a": 1, "b": 2, "c": 3}], "params": {"explain": 0}}, 0)):
        assert read_request(json.dumps(payload).encode(), JSON, FEATURES, "sample_id").explain == explain
    _refused(400, "params must be an object", {"dataframe_split": rows, "params": [3]})
    _refused(400, "unknown parameter(s): top; this model takes explain", {"dataframe_split": rows, "params": {"top": 3}})
    _refused(400, "explain must be a whole number of features, 0 or more, got -1",
             {"dataframe_split": rows, "params": {"explain": -1}})
    _refused(400, "got '3'", {"dataframe_split": rows, "params": {"explain": "3"}})


_FREED = """
import sys, psutil
from dfp_core.ml.serve_app import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else None
rss = lambda: psutil.Process().memory_info().rss
before = rss()
for _ in range(3):  # a request's buffers, a few MB each: allocated, touched, freed
    buffers = [bytearray(4 << 20) for _ in range(4)]
    del buffers
print(kept, (rss() - before) >> 20)
"""


@pytest.mark.parametrize("mode", ["keep", "default"])
def test_the_server_keeps_a_requests_freed_buffers_for_the_next(mode):
    out = subprocess.run([sys.executable, "-c", _FREED, mode], capture_output=True, text=True, check=True).stdout.split()
    kept, grown_mb = out[0], int(out[1])
    if mode == "keep":  # glibc: the 16 MB stay in the heap, ready for the next request
        assert kept == "True" and grown_mb >= 15, out
    else:  # glibc's default maps each such buffer afresh and gives it back
        assert grown_mb <= 2, out
