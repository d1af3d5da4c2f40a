"""Batch scoring of KronoDroid-format files with a logged MLflow model.

Every input row gets exactly one output row: ``status="scored"`` with its
reconstruction error and anomaly flag, or ``status="rejected"`` with the
first reason it cannot be scored (the error and flag are then null).
"""

from __future__ import annotations

import contextlib
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from dfp_core.errors import ConfigError, DatasetError
from dfp_core.tracking.registry import load_model, resolve_model_uri
from dfp_core.read_ahead import read_ahead
from dfp_core.summary import Summary

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

OUTPUT_FORMATS = (".csv", ".parquet")
OUTPUT_COLUMNS = (
    "sample_id", "source_file", "source_row", "data_source", "label",
    "reconstruction_error", "anomaly_score", "is_anomaly", "status", "reason",
)
SCORE_COLUMNS = ("reconstruction_error", "anomaly_score", "is_anomaly")
SCORE_DTYPES = {"reconstruction_error": np.float64, "anomaly_score": np.float64, "is_anomaly": bool}
# Key columns carried from a typed frame into score_frame's output, when present.
KEY_COLUMNS = ("sample_id", "source_file", "source_row", "data_source", "label", "sample_year", "dataset_split")
CHUNK_ROWS = 65536


def output_format(out_path: Path) -> str:
    """``csv`` or ``parquet`` from the suffix; ConfigError for anything else."""
    suffix = Path(out_path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ConfigError(
            f"cannot write scores to {out_path}: the output file must end in .csv or .parquet, got {suffix or 'no suffix'!r}"
        )
    return suffix[1:]


def check_output_apart(input_path: Path, out_path: Path) -> None:
    """The output may not be an input, nor inside an input folder (it would replace
    what was scored, or be read as input by the next run)."""
    inp, out = input_path.resolve(), out_path.resolve()
    if out == inp:
        raise ConfigError(f"--out {out_path} is the input file; write the scores to another file")
    if inp.is_dir() and out.is_relative_to(inp):
        raise ConfigError(f"--out {out_path} is inside the input folder {input_path}; write the scores outside it")


def _predict(model: Any, frame: pd.DataFrame) -> pd.DataFrame:
    # Deferred (torch, MLflow): the model's code and torch load with the model, not with the output helpers.
    from dfp_core.serving.scorer import KronodroidScorer

    if isinstance(model, KronodroidScorer):
        return model.predict(None, frame)
    return model.predict(frame)


def frame_scorer(model: Any) -> Any:
    """What ``score_frame`` should call for a loaded pyfunc: its ``KronodroidScorer`` itself when
    the model's signature is ``model_signature()``'s (every feature a double, ``sample_id`` an
    optional string), else the pyfunc.

    ``score_frame`` feeds the model ``as_model_input`` frames, which are that schema by
    construction (float64 features, text ids); MLflow's enforcement of it would change
    nothing but costs a pass per column and block (3 of 15 s for 200,000 rows). The scorer
    still refuses missing or non-numeric feature columns by name. Any other signature (a
    version registered before it was built this way, another model) goes through MLflow."""
    # Deferred (torch, MLflow): the model's code and torch load with the model, not with the output helpers.
    from dfp_core.ml.pyfunc import model_signature
    from dfp_core.serving.scorer import KronodroidScorer

    unwrap = getattr(model, "unwrap_python_model", None)
    metadata = getattr(model, "metadata", None)
    if not callable(unwrap) or metadata is None:
        return model
    try:
        inner = unwrap()
    except Exception:  # noqa: BLE001 - not a python_model flavor
        return model
    if isinstance(inner, KronodroidScorer) and metadata.get_input_schema() == model_signature().inputs:
        return inner
    return model


def score_frame(model: Any, frame: pd.DataFrame, explainer: "Explainer | None" = None) -> pd.DataFrame:
    """Scores for an already-typed frame (every ``schema.FEATURE_COLUMNS`` column):
    its key columns that exist (``KEY_COLUMNS``) plus ``reconstruction_error``,
    ``anomaly_score`` and ``is_anomaly``, one row per input row, same order. Versions
    registered before ``anomaly_score`` existed scored the reconstruction error itself.
    With an ``explainer``, its columns too (the scores are the same).

    ``model``: a loaded MLflow pyfunc (``mlflow.pyfunc.load_model``) or an
    ``KronodroidScorer`` (e.g. ``KronodroidScorer.from_artifacts``).
    """
    # Deferred (torch, MLflow): the model's code and torch load with the model, not with the output helpers.
    from dfp_core.ml.pyfunc import as_model_input

    columns = list(SCORE_COLUMNS) + (list(explainer.columns) if explainer else [])
    keys = frame[[c for c in KEY_COLUMNS if c in frame.columns]].reset_index(drop=True)
    if frame.empty:
        empty = pd.DataFrame({name: pd.Series(dtype=SCORE_DTYPES.get(name, object)) for name in columns})
        return pd.concat([keys, empty], axis=1)
    parts = []
    for start in range(0, len(frame), CHUNK_ROWS):
        chunk = as_model_input(frame.iloc[start:start + CHUNK_ROWS])
        out = explainer.explain(chunk) if explainer else _predict(model, chunk)
        if len(out) != len(chunk):
            raise DatasetError(f"the model returned {len(out)} rows for {len(chunk)} inputs")
        if "anomaly_score" not in out.columns:
            out = out.assign(anomaly_score=out["reconstruction_error"])
        parts.append(out[columns].reset_index(drop=True))
    scores = pd.concat(parts, ignore_index=True)
    return pd.concat([keys, scores.astype(SCORE_DTYPES)], axis=1)


class Explainer:
    """``dfp score --explain K``: per app, the K features that added most to its
    ``grouped_error`` score and each feature group's contribution, signed and in the score's
    units (the groups' add up to the score; ``ErrorScore.contributions``)."""

    def __init__(self, scorer: Any, top: int):
        # Deferred (55 ms of imports): the model's code and torch load with the model, not with the output helpers.
        from dfp_core.ml.fit import feature_groups

        self.scorer, self.top = scorer, top
        # named as training names them, also for versions that did not keep the names
        self.group_names = feature_groups(scorer.preprocessor.features)[0]
        self.columns = scorer.explanation_columns(top, self.group_names)

    def explain(self, chunk: pd.DataFrame) -> pd.DataFrame:
        return self.scorer.explain_frame(chunk, self.top, self.group_names)


def explainer_for(rt: "Runtime", model: Any, model_uri: str, top: int) -> Explainer:
    """The ``Explainer`` of a loaded model, or ConfigError naming the version and why not:
    only ``grouped_error`` versions have per-feature terms."""
    # Deferred (torch, MLflow): the model's code and torch load with the model, not with the output helpers.
    from dfp_core.serving.scorer import KronodroidScorer

    unwrap = getattr(model, "unwrap_python_model", None)
    scorer = unwrap() if callable(unwrap) else model
    if not isinstance(scorer, KronodroidScorer):
        raise ConfigError(f"cannot explain the scores of {model_uri}: it is not this project's autoencoder")
    n_features = len(scorer.preprocessor.features)
    if not 1 <= top <= n_features:
        raise ConfigError(f"--explain takes a number of features from 1 to {n_features}, got {top}")
    kind = scorer.error_score.kind
    if kind != "grouped_error":
        version = resolve_model_uri(rt, model_uri)
        which = f"version {version.version} of {version.name}" if version is not None else model_uri
        raise ConfigError(f"cannot explain the scores of {which}: it scores with {kind} (trained with --score {kind}, "
                          "or before grouped_error was the default), which has no per-feature terms; explain a "
                          "grouped_error version")
    return Explainer(scorer, top)


def model_threshold(model: Any) -> float | None:
    """The anomaly threshold inside a loaded autoencoder pyfunc, when it has one."""
    return _scorer_number(model, "threshold")


def model_target_fpr(model: Any) -> float | None:
    """The benign FPR the threshold inside a loaded autoencoder pyfunc was set for, when it has one."""
    return _scorer_number(model, "target_fpr")


def _scorer_number(model: Any, name: str) -> float | None:
    inner = model
    unwrap = getattr(model, "unwrap_python_model", None)
    if callable(unwrap):
        try:
            inner = unwrap()
        except Exception:  # noqa: BLE001 - not a python_model flavor
            return None
    value = getattr(inner, name, None)
    return None if value is None else float(value)


@dataclass(frozen=True)
class ScoreSummary(Summary):
    """A scored input: the rows read, scored and refused, the apps flagged against the
    threshold's target, where the output went; for a ``lakefs://`` input the commit and
    snapshot read, for files the refused rows by reason."""

    rows_in: int
    scored: int
    rejected: int
    anomalies: int
    threshold: float | None
    target_fpr: float | None
    flagged_share: float | None
    out_path: str
    model_uri: str
    rejected_by_reason: dict[str, int] | None = None  # files only
    lakefs_commit: str | None = None  # lakefs:// only
    iceberg_snapshot_id: str | None = None
    UNSET_LEFT_OUT = ("rejected_by_reason", "lakefs_commit", "iceberg_snapshot_id")  # the other kind of input's


def flagged_summary(model: Any, anomalies: int, scored: int) -> dict:
    """The threshold, the benign FPR it was set for on validation, and the share of this
    input it flagged: well above the target on a mostly benign feed says the operating point
    has moved (new apps score higher than the validation apps did)."""
    return {"threshold": model_threshold(model), "target_fpr": model_target_fpr(model),
            "flagged_share": anomalies / scored if scored else None}


def _scored_rows(valid: pd.DataFrame, scores: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    return pd.DataFrame({
        "input_index": valid["input_index"].to_numpy(),
        "sample_id": valid["sample_id"].to_numpy(),
        "source_file": valid["source_file"].to_numpy(),
        "source_row": pd.array(valid["source_row"], dtype="Int64"),
        "data_source": valid["data_source"].to_numpy(),
        "label": pd.array(valid["label"], dtype="Int64"),
        "reconstruction_error": scores["reconstruction_error"].to_numpy(dtype=np.float64),
        "anomaly_score": scores["anomaly_score"].to_numpy(dtype=np.float64),
        "is_anomaly": pd.array(scores["is_anomaly"].to_numpy(dtype=bool), dtype="boolean"),
        "status": "scored",
        "reason": pd.Series([None] * len(valid), dtype=object),
        **{name: scores[name].to_numpy() for name in extra},
    })


def _rejected_rows(rejected: pd.DataFrame, extra: tuple[str, ...] = ()) -> pd.DataFrame:
    n = len(rejected)
    return pd.DataFrame({
        "input_index": rejected["input_index"].to_numpy(),
        "sample_id": rejected["sample_id"].to_numpy(dtype=object),
        "source_file": rejected["source_file"].to_numpy(dtype=object),
        "source_row": pd.array(rejected["source_row"], dtype="Int64"),
        "data_source": rejected["data_source"].to_numpy(dtype=object),
        "label": pd.array(rejected["label"], dtype="Int64"),
        "reconstruction_error": np.full(n, np.nan),
        "anomaly_score": np.full(n, np.nan),
        "is_anomaly": pd.array([None] * n, dtype="boolean"),
        "status": "rejected",
        "reason": rejected["reason"].to_numpy(dtype=object),
        **{name: np.full(n, np.nan) if _is_share(name) else np.full(n, None, dtype=object) for name in extra},
    })


def _write(frame: pd.DataFrame, out_path: Path, fmt: str) -> None:
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "csv":
        frame.to_csv(out_path, index=False)
    else:
        frame.to_parquet(out_path, index=False, engine="pyarrow")


def _is_share(column: str) -> bool:
    """An explanation column holding a share of the score (a number); the others name a feature or group."""
    return column.endswith("_contribution")


def _output_schema(extra: tuple[str, ...] = ()):
    return pa.schema([
        ("sample_id", pa.string()), ("source_file", pa.string()), ("source_row", pa.int64()),
        ("data_source", pa.string()), ("label", pa.int64()), ("reconstruction_error", pa.float64()),
        ("anomaly_score", pa.float64()), ("is_anomaly", pa.bool_()), ("status", pa.string()), ("reason", pa.string()),
        *((name, pa.float64() if _is_share(name) else pa.string()) for name in extra),
    ])


class _ChunkWriter:
    """Output written piece by piece into a temporary file beside ``out_path``, renamed
    over it only when every row is written: a failed run leaves no partial file."""

    def __init__(self, out_path: Path, fmt: str, extra: tuple[str, ...] = ()):
        out_path.parent.mkdir(parents=True, exist_ok=True)
        self.out_path, self.fmt, self.extra = out_path, fmt, extra
        # Created like any output file (the umask decides its mode), under a name of its own.
        self.tmp = out_path.parent / f".{out_path.name}.{secrets.token_hex(6)}.partial"
        self.tmp.open("x").close()
        self.parquet = None
        self.rows = 0

    def write(self, frame: pd.DataFrame) -> None:
        if self.fmt == "csv":
            frame.to_csv(self.tmp, mode="w" if self.rows == 0 else "a", header=self.rows == 0, index=False)
        else:
            table = pa.Table.from_pandas(frame, schema=_output_schema(self.extra), preserve_index=False)
            if self.parquet is None:
                self.parquet = pq.ParquetWriter(self.tmp, table.schema)
            self.parquet.write_table(table)
        self.rows += len(frame)

    def commit(self) -> None:
        if self.fmt == "csv" and self.rows == 0:
            pd.DataFrame(columns=[*OUTPUT_COLUMNS, *self.extra]).to_csv(self.tmp, index=False)
        if self.fmt == "parquet":
            if self.parquet is None:
                pq.write_table(_output_schema(self.extra).empty_table(), self.tmp)
            else:
                self.parquet.close()
        self.tmp.replace(self.out_path)

    def discard(self) -> None:
        if self.parquet is not None:
            with contextlib.suppress(Exception):
                self.parquet.close()
        self.tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _one_core_for_the_model() -> Iterator[None]:
    """Torch's intra-op threads at 1 for the block (restored after): the reading thread has
    the other core, and two torch threads beside it only contend (200,000 rows: 9.6 s with
    one, 11.3 s with two, on 2 cores; a GEMM splits its output, not its sums, so the bits
    are the same)."""
    # Deferred (torch): the model's code and torch load with the model, not with the output helpers.
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _score_blocks(blocks, scorer, writer: "_ChunkWriter", explainer: Explainer | None = None
                  ) -> tuple[dict, dict[str, int]]:
    """Scores every (valid, rejected) block into ``writer``, in input order; the counts."""
    counts = {"rows_in": 0, "scored": 0, "rejected": 0, "anomalies": 0}
    by_reason: dict[str, int] = {}
    extra = explainer.columns if explainer else ()
    for valid, rejected in blocks:
        scores = score_frame(scorer, valid, explainer)
        frame = pd.concat([_scored_rows(valid, scores, extra), _rejected_rows(rejected, extra)], ignore_index=True)
        frame = frame.sort_values("input_index", kind="stable").drop(columns="input_index")
        writer.write(frame[[*OUTPUT_COLUMNS, *extra]].reset_index(drop=True))
        counts["rows_in"] += len(valid) + len(rejected)
        counts["scored"] += len(valid)
        counts["rejected"] += len(rejected)
        counts["anomalies"] += int(scores["is_anomaly"].sum()) if len(scores) else 0
        for reason, n in rejected["reason"].value_counts().items():
            by_reason[str(reason)] = by_reason.get(str(reason), 0) + int(n)
    return counts, by_reason


def score(rt: "Runtime", model_uri: str, input_path: Path, out_path: Path, explain: int = 0) -> ScoreSummary:
    """Score every row of KronoDroid-format input (a directory, archive or CSV)
    with the model at ``model_uri`` (``models:/name/version``, ``models:/name@alias``,
    ``runs:/...``, a local path ...) and write one output row per input row
    (``OUTPUT_COLUMNS``) to ``out_path`` (``.csv`` or ``.parquet``), in input order.

    The input is streamed one CSV block at a time (``reader.iter_kronodroid``), so memory
    does not grow with its size; the output appears only once it is complete.

    ``explain``: with K > 0, each scored row also names the K features that added most to its
    score and each feature group's contribution (``Explainer``).

    Returns a summary: rows_in, scored, rejected, anomalies, rejected_by_reason,
    threshold and target_fpr (None when the model does not expose them), flagged_share
    (anomalies over scored apps), out_path, model_uri.
    """
    # Deferred (pyarrow): the model's code and torch load with the model, not with the output helpers.
    from dfp_core.kronodroid.reader import input_parts, iter_kronodroid

    out_path = Path(out_path)
    fmt = output_format(out_path)
    check_output_apart(Path(input_path), out_path)
    parts = input_parts(Path(input_path))  # input errors before the (slow) model load
    # Blocks are read and typed in a thread from now on: the first while the model loads,
    # each next one while the one before is scored. Closed on every exit (the thread stops).
    blocks = read_ahead(iter_kronodroid(Path(input_path), parts), name="dfp-score-reader")
    writer = None
    try:
        model = load_model(rt, model_uri)
        scorer = frame_scorer(model)
        explainer = explainer_for(rt, model, model_uri, explain) if explain else None
        writer = _ChunkWriter(out_path, fmt, explainer.columns if explainer else ())
        with _one_core_for_the_model():
            counts, by_reason = _score_blocks(blocks, scorer, writer, explainer)
        writer.commit()
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    finally:
        blocks.close()
    return ScoreSummary(**counts, **flagged_summary(model, counts["anomalies"], counts["scored"]),
                        out_path=str(out_path), model_uri=model_uri, rejected_by_reason=dict(sorted(by_reason.items())))


def lakefs_ref(uri: str) -> tuple[str, str]:
    """(repository, ref) of ``lakefs://<repository>/<branch or commit>``; ConfigError otherwise."""
    parts = uri.removeprefix("lakefs://").strip("/").split("/")
    if not uri.startswith("lakefs://") or len(parts) != 2 or not all(parts):
        raise ConfigError(f"expected lakefs://<repository>/<branch or commit>, got {uri!r}")
    return parts[0], parts[1]


def score_lakefs_ref(rt: "Runtime", model_uri: str, uri: str, out_path: Path, explain: int = 0) -> ScoreSummary:
    """Score every sample of ``kronodroid.fct_training_dataset`` at
    ``lakefs://<repo>/<ref>`` as Feast serves it (all three splits)."""
    out_path = Path(out_path)
    fmt = output_format(out_path)
    data = rt.retrieve_splits(*lakefs_ref(uri))
    model = load_model(rt, model_uri)
    explainer = explainer_for(rt, model, model_uri, explain) if explain else None
    frame = pd.concat(data.frames.values(), ignore_index=True)
    scored = score_frame(frame_scorer(model), frame, explainer)
    _write(scored, out_path, fmt)
    anomalies = int(scored["is_anomaly"].sum())
    return ScoreSummary(rows_in=int(len(frame)), scored=int(len(scored)), rejected=0, anomalies=anomalies,
                        **flagged_summary(model, anomalies, len(scored)), out_path=str(out_path), model_uri=model_uri,
                        lakefs_commit=data.spec.lakefs_commit, iceberg_snapshot_id=data.spec.iceberg_snapshot_id)
