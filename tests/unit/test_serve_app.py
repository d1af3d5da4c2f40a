"""What `dfp serve` makes of a request body before the model sees it: MLflow's two JSON
shapes, typed as the model's signature; every client mistake a ClientError with a 4xx and
one short line."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dfp_core.ml.serve_app import ClientError, parse_payload, typed_frame

FEATURES = ["a", "b", "c"]
JSON = "application/json; charset=utf-8"


def _refused(status: int, words: str, body, content_type: str | None = JSON) -> None:
    with pytest.raises(ClientError) as caught:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode() if not isinstance(body, str) else body.encode()
        columns, rows = parse_payload(raw, content_type)
        typed_frame(columns, rows, FEATURES, "sample_id")
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
    _refused(415, "text/csv is not accepted", ok, "text/csv")
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
