"""`dfp serve`'s REST server: MLflow's scoring contract (``GET /ping``, ``POST /invocations``
with ``dataframe_split`` or ``dataframe_records`` JSON, a CSV with a header row, or a Parquet
file, answered with ``{"predictions": [...]}``) for one loaded model, where a client's mistake is
always a 4xx with a short message.

MLflow's own scoring server answers some malformed requests with 500 (no Content-Type,
deeply nested JSON) and its schema errors carry the whole 476-column schema. Here:

- a missing or other Content-Type is 415; a body over ``--max-body-mb`` is 413 (read no
  further); malformed or too deeply nested JSON, a body that is not CSV or Parquet, an unknown
  payload shape, missing or repeated feature columns (the first few named), a value that is not
  a number or not finite (the column named) are 400;
- the rows go to the model's own scorer as the model's signature types them (float64
  features, ``sample_id`` as text); a missing value is imputed as in training;
- anything else is a 500 that says so in one line (its traceback goes to the server's log).

  python -m dfp_core.ml.serve_app --model-dir DIR [--host 127.0.0.1] [--port 5001]
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import json
import logging
import sys
from collections import Counter
from typing import Any, NamedTuple

import numpy as np
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as csv
import pyarrow.parquet as pq

from dfp_core.errors import DatasetError
from dfp_core.ml.json_rows import read_plain_split

logger = logging.getLogger("dfp.serve")
MAX_BODY_MB = 16
JSON_TYPES = ("application/json",)
CSV_TYPES = ("text/csv",)
PARQUET_TYPES = ("application/vnd.apache.parquet",)  # MLflow's scoring server's name for it
ACCEPTED = "application/json, text/csv or application/vnd.apache.parquet"
SHOWN = 5  # columns named in one message


class ClientError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def _names(columns: list[str]) -> str:
    more = f" and {len(columns) - SHOWN} more" if len(columns) > SHOWN else ""
    return ", ".join(columns[:SHOWN]) + more


def media_type(content_type: str | None) -> str:
    """The request's media type, one the server reads; ClientError 415 otherwise."""
    media = (content_type or "").split(";")[0].strip().lower()
    if not media:
        raise ClientError(415, f"no Content-Type header: send the rows as {ACCEPTED}")
    if media not in JSON_TYPES + CSV_TYPES + PARQUET_TYPES:
        raise ClientError(415, f"Content-Type {media} is not accepted: send the rows as {ACCEPTED}")
    return media


class Request(NamedTuple):
    """A request as the model takes it."""

    matrix: np.ndarray  # float64, the features in order
    ids: list[str | None] | None  # the id column as text, None when the request has none
    explain: int  # MLflow's ``params``: how many top features to name per app (0: none)


def read_request(body: bytes, content_type: str | None, features: list[str], id_column: str) -> Request:
    """A request body as the model's input; ClientError for a client's mistake. CSV and
    Parquet are read column by column with Arrow, and the usual JSON body by simdjson
    (``json_rows``), with no Python object per value; any other JSON body (``params``,
    ``dataframe_records``, missing values, other column orders) is parsed whole."""
    media = media_type(content_type)
    if media in JSON_TYPES:
        plain = read_plain_split(body, features, id_column)
        if plain is not None:  # the usual body, read without a Python object per value
            _refuse_infinities(plain[0], features)
            return Request(*plain, 0)
        columns, rows, params = parse_json(body, content_type)
        return Request(*typed_rows(columns, rows, features, id_column, reuse_rows=True), _explain(params))
    table = read_csv(body, features, id_column) if media in CSV_TYPES else read_parquet(body)
    return Request(*typed_table(table, features, id_column), 0)


def _explain(params: Any) -> int:
    # Deferred (torch, MLflow): the request parsing is tested and timed without it.
    from dfp_core.serving.scorer import EXPLAIN_PARAM, explain_count

    if params is None:
        return 0
    if not isinstance(params, dict):
        raise ClientError(400, f"params must be an object, such as {{\"{EXPLAIN_PARAM}\": 5}}")
    unknown = sorted(set(map(str, params)) - {EXPLAIN_PARAM})
    if unknown:
        raise ClientError(400, f"unknown parameter(s): {_names(unknown)}; this model takes {EXPLAIN_PARAM}")
    try:
        return explain_count(params.get(EXPLAIN_PARAM, 0))
    except DatasetError as exc:
        raise ClientError(400, str(exc)) from None


def parse_payload(body: bytes, content_type: str | None) -> tuple[list[str], list[list[Any]]]:
    """(columns, rows) of an MLflow JSON request; ClientError for a client's mistake."""
    return parse_json(body, content_type)[:2]


def parse_json(body: bytes, content_type: str | None) -> tuple[list[str], list[list[Any]], Any]:
    """(columns, rows, params or None) of an MLflow JSON request; ClientError for a client's mistake."""
    media = media_type(content_type)
    if media not in JSON_TYPES:
        raise ClientError(415, f"Content-Type {media} is not JSON")
    try:
        payload = _loads(body)
    except RecursionError:
        raise ClientError(400, "the JSON body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ClientError(400, f"the body is not valid JSON: {str(exc)[:120]}") from None
    if not isinstance(payload, dict):
        raise ClientError(400, "expected a JSON object with dataframe_split or dataframe_records")
    if "dataframe_split" in payload:
        split = payload["dataframe_split"]
        if not isinstance(split, dict) or not isinstance(split.get("columns"), list) or \
                not isinstance(split.get("data"), list):
            raise ClientError(400, "dataframe_split needs a list of columns and a list of rows (data)")
        columns, rows = [str(c) for c in split["columns"]], split["data"]
        if any(not isinstance(row, list) or len(row) != len(columns) for row in rows):
            raise ClientError(400, f"every row of dataframe_split.data must be a list of {len(columns)} values")
        return columns, rows, payload.get("params")
    if "dataframe_records" in payload:
        records = payload["dataframe_records"]
        if not isinstance(records, list) or any(not isinstance(r, dict) for r in records):
            raise ClientError(400, "dataframe_records must be a list of objects (one per row)")
        columns = list(dict.fromkeys(str(k) for r in records for k in r))
        return columns, [[r.get(c) for c in columns] for r in records], payload.get("params")
    raise ClientError(400, f"expected dataframe_split or dataframe_records, got {_names(sorted(map(str, payload)))}")


def _loads(body: bytes) -> Any:
    """The parsed body. orjson parses a 1,000-row request in a quarter of json's time; it
    refuses what strict JSON does (NaN and Infinity literals, lone surrogates, integers past
    64 bits), which Python's json and MLflow's own server accept: those bodies go to json,
    which decides with its own messages."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return json.loads(body)


def typed_frame(columns: list[str], rows: list[list[Any]], features: list[str], id_column: str) -> pd.DataFrame:
    """The model's input: every feature column as float64 (None -> NaN), ``id_column`` as
    text when given. ClientError naming missing, non-numeric or non-finite columns."""
    matrix, ids = typed_rows(columns, rows, features, id_column)
    frame = pd.DataFrame(matrix, columns=features)
    if ids is not None:
        frame[id_column] = ids
    return frame


def typed_rows(columns: list[str], rows: list[list[Any]], features: list[str], id_column: str,
               reuse_rows: bool = False) -> tuple[np.ndarray, list[str | None] | None]:
    """``typed_frame`` as (a float64 matrix of the ``features`` in order, the ids as text or
    None when the request has no ``id_column``), with the same checks. ``reuse_rows``: the
    row lists are the caller's to give away (they may be cut short)."""
    _check_columns(columns, features, id_column)
    index = {c: i for i, c in enumerate(columns)}
    n = len(features)
    ids = None
    if id_column in index:
        ids = [None if row[index[id_column]] is None else str(row[index[id_column]]) for row in rows]
    if columns == features:
        picked = rows
    elif columns[:n] == features and reuse_rows:  # the features first (as_model_input's frames), lists no one else holds
        for row in rows:  # cutting the tail in place beats a copy a row
            del row[n:]
        picked = rows
    elif columns[:n] == features:
        picked = [row[:n] for row in rows]
    else:
        picked = [[row[index[c]] for c in features] for row in rows]
    try:
        matrix = np.array(picked, dtype=np.float64).reshape(len(rows), len(features))
    except (TypeError, ValueError):
        raise ClientError(400, _first_non_number(picked, features)) from None
    _refuse_infinities(matrix, features)
    return matrix, ids


def _check_columns(columns: list[str], features: list[str], id_column: str) -> None:
    given = set(columns)
    missing = [c for c in features if c not in given]
    if missing:
        known = set(features)
        unknown = [c for c in columns if c not in known and c != id_column]
        also = f"; unknown column(s): {_names(unknown)}" if unknown else ""
        raise ClientError(400, f"missing feature column(s): {_names(missing)}{also}")


def _refuse_infinities(matrix: np.ndarray, features: list[str]) -> None:
    if np.isinf(matrix).any():  # NaN is a missing value (imputed); only infinities are refused
        bad = sorted({features[j] for j in np.argwhere(np.isinf(matrix))[:, 1]})
        raise ClientError(400, f"infinite value in column(s): {_names(bad)}")


def _arrow_message(exc: Exception) -> str:
    return " ".join(str(exc).split())[:120]


def read_csv(body: bytes, features: list[str], id_column: str):
    """A CSV body (a header row, as ``DataFrame.to_csv(index=False)`` writes it) as an Arrow
    table: the features read straight as float64, the id as text; empty, ``NaN``, ``null`` and
    the like are missing values, as pandas reads them. A value Arrow will not read as a number
    sends the body through a second read that names its column."""
    def read(types: dict):
        options = csv.ConvertOptions(column_types=types, strings_can_be_null=True)
        return csv.read_csv(pa.BufferReader(body), convert_options=options)

    try:
        return read({**dict.fromkeys(features, pa.float64()), id_column: pa.string()})
    except pa.ArrowInvalid:
        pass
    try:  # every feature as text: typed_table trims and converts each, naming the first bad value
        return read({**dict.fromkeys(features, pa.string()), id_column: pa.string()})
    except pa.ArrowInvalid as exc:
        raise ClientError(400, f"the body is not valid CSV: {_arrow_message(exc)}") from None


def read_parquet(body: bytes):
    try:
        return pq.read_table(pa.BufferReader(body))
    except (pa.ArrowException, OSError) as exc:
        raise ClientError(400, f"the body is not a valid Parquet file: {_arrow_message(exc)}") from None


def typed_table(table, features: list[str], id_column: str) -> tuple[np.ndarray, list[str | None] | None]:
    """``typed_rows`` for an Arrow table: numbers and booleans as float64 (null -> NaN), text
    trimmed and read as numbers, anything else refused naming its column; the same checks."""
    columns = [str(c) for c in table.column_names]
    _check_columns(columns, features, id_column)
    wanted = {*features, id_column}
    repeated = sorted(c for c, times in Counter(columns).items() if times > 1 and c in wanted)
    if repeated:
        raise ClientError(400, f"column(s) given more than once: {_names(repeated)}")
    numbers = table.select(features)
    if any(field.type != pa.float64() for field in numbers.schema):  # CSV's are read as float64 already
        numbers = pa.table([_float_column(numbers.column(j), name) for j, name in enumerate(features)], names=features)
    # One C++ pass to a row-major float64 matrix, nulls as NaN (a missing value, imputed).
    batches = numbers.combine_chunks().to_batches()
    matrix = np.asarray(batches[0].to_tensor(null_to_nan=True, row_major=True)) if table.num_rows \
        else np.empty((0, len(features)))
    _refuse_infinities(matrix, features)
    ids = table.column(id_column).cast(pa.string()).to_pylist() if id_column in columns else None
    return matrix, ids


def _float_column(column, name: str):
    """``column`` as float64, or ClientError naming it."""
    kind = column.type
    if kind == pa.float64():
        pass
    elif pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            column = pc.utf8_trim_whitespace(column).cast(pa.float64())
        except pa.ArrowInvalid:
            bad = next((v for v in column.to_pylist() if v is not None and not _is_number(v)), None)
            shown = "a value" if bad is None else repr(bad[:40])
            raise ClientError(400, f"column {name}: {shown} is not a number") from None
    elif pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind) or \
            pa.types.is_decimal(kind) or pa.types.is_null(kind):
        column = column.cast(pa.float64())
    else:
        raise ClientError(400, f"column {name}: {kind} values are not numbers")
    return column


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def _first_non_number(rows: list[list[Any]], features: list[str]) -> str:
    for row in rows:
        for name, value in zip(features, row):
            if value is None or isinstance(value, bool):
                continue
            if not _is_number(value):
                return f"column {name}: {str(value)[:40]!r} is not a number"
    return "a value is not a number"


class ScoringApp:
    """A bare ASGI app (no framework on the request path): ping, health and invocations."""

    def __init__(self, scorer, features: list[str], id_column: str = "sample_id", max_body_bytes: int = MAX_BODY_MB << 20):
        self.scorer, self.features, self.id_column, self.max_body = scorer, features, id_column, max_body_bytes
        # The scorer's matrix path skips two 476-column DataFrames a request; a model whose
        # code predates it, or whose signature orders the features otherwise, goes through predict.
        preprocessor = getattr(scorer, "preprocessor", None)
        self.by_matrix = callable(getattr(scorer, "score_matrix", None)) and \
            list(getattr(preprocessor, "features", ())) == list(features)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "lifespan":  # nothing to set up or tear down
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        if path in ("/ping", "/health") and method == "GET":
            return await self._send(send, 200, b"\n", "text/plain")
        if path != "/invocations":
            return await self._error(send, 404, f"no such path {path}: GET /ping, POST /invocations")
        if method != "POST":
            return await self._error(send, 405, "POST the rows to /invocations")
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            body = await self._body(receive, headers)
            request = read_request(body, headers.get("content-type"), self.features, self.id_column)
            out = await asyncio.get_running_loop().run_in_executor(None, self._predict, *request)
        except ClientError as exc:
            return await self._error(send, exc.status, str(exc))
        except Exception as exc:  # noqa: BLE001 - the server's own failure: one line out, the traceback logged
            logger.exception("scoring failed")
            return await self._error(send, 500, f"internal error while scoring: {exc.__class__.__name__}")
        await self._send(send, 200, orjson.dumps({"predictions": out}, option=orjson.OPT_SERIALIZE_NUMPY), "application/json")

    async def _body(self, receive, headers: dict[str, str]) -> bytes:
        """The body, kept only up to the limit: past it the rest is read and dropped, so the
        client, still sending, gets its 413 rather than a reset connection."""
        declared = headers.get("content-length")
        too_big = bool(declared and declared.isdigit() and int(declared) > self.max_body)
        chunks, size = [], 0
        while True:
            message = await receive()
            chunk = message.get("body", b"")
            size += len(chunk)
            too_big = too_big or size > self.max_body
            if not too_big:
                chunks.append(chunk)
            if not message.get("more_body"):
                break
        if too_big:
            raise ClientError(413, f"the body is over {self.max_body >> 20} MB; send fewer rows per request")
        return b"".join(chunks)

    def _predict(self, matrix: np.ndarray, ids: list[str | None] | None, explain: int = 0) -> list[dict]:
        if explain:
            return self._explained(matrix, ids, explain)
        if self.by_matrix:
            errors, scores, flags = self.scorer.score_matrix(matrix)
            records = [{"reconstruction_error": e, "anomaly_score": s, "is_anomaly": f}
                       for e, s, f in zip(errors.tolist(), scores.tolist(), flags.tolist())]
            if ids is not None:
                records = [{self.id_column: i, **record} for i, record in zip(ids, records)]
        else:
            frame = pd.DataFrame(matrix, columns=self.features)
            if ids is not None:
                frame[self.id_column] = ids
            records = self.scorer.predict(None, frame).to_dict(orient="records")
        # orjson writes a score that is not a number as null (JSON has no NaN), numpy's bools as booleans.
        return records

    def _explained(self, matrix: np.ndarray, ids: list[str | None] | None, explain: int) -> list[dict]:
        """The outputs with each app's explanation (``KronodroidScorer.explain_matrix``); a
        version that cannot explain its score is the client's 400, naming why."""
        # Deferred (MLflow): the request parsing is tested and timed without it.
        from mlflow.exceptions import MlflowException

        if not callable(getattr(self.scorer, "explain_matrix", None)):
            raise ClientError(400, "this version's scorer predates explanations (explain); score without params")
        try:
            if self.by_matrix:
                frame = self.scorer.explain_matrix(matrix, explain)
            else:
                model_input = pd.DataFrame(matrix, columns=self.features)
                frame = self.scorer.predict(None, model_input, params={"explain": explain})
        except (DatasetError, MlflowException) as exc:
            raise ClientError(400, getattr(exc, "message", None) or str(exc)) from None
        if ids is not None:
            frame.insert(0, self.id_column, ids)
        return frame.to_dict(orient="records")

    @staticmethod
    async def _send(send, status: int, body: bytes, content_type: str) -> None:
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _error(self, send, status: int, message: str) -> None:
        code = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST", 413: "REQUEST_TOO_LARGE",
                415: "UNSUPPORTED_MEDIA_TYPE"}.get(status, "INTERNAL_ERROR")
        await self._send(send, status, json.dumps({"error_code": code, "message": message}).encode(), "application/json")


def load_app(model_dir: str, max_body_mb: int = MAX_BODY_MB) -> ScoringApp:
    """The app for a model folder (a verified copy): its scorer and its signature's columns."""
    # Deferred (MLflow): the request parsing is tested and timed without it.
    import mlflow.pyfunc

    model = mlflow.pyfunc.load_model(model_dir)
    names = model.metadata.get_input_schema().input_names()
    id_column = "sample_id"
    return ScoringApp(model.unwrap_python_model(), [n for n in names if n != id_column], id_column, max_body_mb << 20)


# glibc's mallopt parameters.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 16 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Let glibc's malloc keep what a request frees for the next one. A 1,000-row request
    allocates a few buffers of 2 to 4 MB (the body, its numbers, the matrix, the scorer's
    copies); by default each is mapped fresh and unmapped after, and the page faults cost about
    5 ms a request, a third of reading the body. Allocations under ``mmap_threshold`` come from
    the heap, which keeps up to ``trim_threshold`` of free memory. False where the C library
    has no ``mallopt`` (not glibc), which changes nothing else."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def main(argv: list[str] | None = None) -> int:
    # Deferred (uvicorn): the request parsing is tested and timed without it.
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--max-body-mb", type=int, default=MAX_BODY_MB)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    keep_freed_memory()
    app = load_app(args.model_dir, args.max_body_mb)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
