"""Lineage: the MLflow tag names, stable dataset ids, content hashes and the
hash of the Feast feature definitions. The tags are the minimal footprint
from which ``dfp reproduce`` rebuilds the exact train/val/test data."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

from dfp_core.settings import REPO_ROOT

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TAG_REPOSITORY = "data.lakefs_repository"
TAG_REF = "data.lakefs_ref"
TAG_SOURCE_TABLE = "data.source_table"
TAG_SNAPSHOT = "data.iceberg_snapshot_id"
TAG_FEATURE_VIEW = "feast.feature_view"
TAG_DEFS_SHA = "feast.defs_sha256"
TAG_TRAIN_ID = "dataset.train_id"
TAG_VAL_ID = "dataset.val_id"
TAG_TEST_ID = "dataset.test_id"
LINEAGE_TAGS = (
    TAG_REPOSITORY, TAG_REF, TAG_SOURCE_TABLE, TAG_SNAPSHOT, TAG_FEATURE_VIEW, TAG_DEFS_SHA,
    TAG_TRAIN_ID, TAG_VAL_ID, TAG_TEST_ID,
)
SPLIT_ID_TAGS = {"train": TAG_TRAIN_ID, "val": TAG_VAL_ID, "test": TAG_TEST_ID}
# Extra tags beside the nine: how the splits were drawn, and what they contained.
TAG_SPLIT_SPEC = "dataset.split_spec"
TAG_MAX_ROWS = "dataset.max_rows_per_split"
CONTENT_TAGS = {s: f"dataset.{s}_content_sha256" for s in ("train", "val", "test")}
ROWS_TAGS = {s: f"dataset.{s}_rows" for s in ("train", "val", "test")}

# The files whose content defines the Feast features (hashed into feast.defs_sha256).
FEATURE_DEFINITION_FILES = (
    "feature_stores/feast_store/dfp_feast/kronodroid_features.py",
    "core/dfp_core/kronodroid/schema.py",
    "core/dfp_core/kronodroid/columns.py",
)


def defs_sha256(files: Iterable[str] = FEATURE_DEFINITION_FILES, root: Path | None = None) -> str:
    """SHA-256 over the feature definition files (path and bytes, in order)."""
    root = Path(root) if root is not None else definitions_root()
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode() + b"\0")
        digest.update((root / rel).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def definitions_root() -> Path:
    """Where the definition files are read from: this checkout (or installed tree)."""
    return REPO_ROOT


@dataclass(frozen=True)
class DatasetSpec:
    """Everything that determines the rows and columns of a split."""

    lakefs_repository: str
    lakefs_commit: str
    source_table: str
    iceberg_snapshot_id: str
    feature_view: str
    feast_defs_sha256: str
    split_spec: dict = field(default_factory=dict)
    max_rows_per_split: int = 0

    def canonical(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))


@dataclass
class RetrievedDataset:
    """The splits as served for one spec (the splits reader's result, ``Runtime.retrieve_splits``),
    with each split's dataset id and content hash."""

    spec: DatasetSpec
    frames: dict[str, "pd.DataFrame"]
    dataset_ids: dict[str, str] = field(default_factory=dict)
    content_sha256: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> dict[str, int]:
        return {split: len(frame) for split, frame in self.frames.items()}


@dataclass
class PinnedRows:
    """The splits of one spec as rows still in Spark (``Runtime.split_rows``): ``rows`` is a lazy
    frame with a ``dataset_split`` column; the counts and dataset ids are what
    ``RetrievedDataset`` gives for the same spec."""

    spec: DatasetSpec
    rows: Any  # a pyspark.sql.DataFrame (this module imports no service)
    counts: dict[str, int]
    dataset_ids: dict[str, str]
    # The feature columns ``rows`` holds: the pinned snapshot's own (a table written under other
    # definitions may lack some of today's ``FEATURE_COLUMNS`` or hold others).
    features: tuple[str, ...]


def dataset_id(spec: DatasetSpec, split: str) -> str:
    """Stable id of one split of a dataset spec."""
    return "ds-" + hashlib.sha256(f"{spec.canonical()}|{split}".encode()).hexdigest()[:24]


_HASH_CHUNK_ROWS = 50_000


def content_sha256(frame: "pd.DataFrame", key: str = "sample_id", columns: Iterable[str] | None = None) -> str:
    """Order-independent hash of a split's rows: ``columns`` (default all), sorted by name,
    rows sorted by ``key``. Recorded in lineage tags: the value must not change."""
    # Deferred (pandas): ids and tags need none; only hashing a frame does.
    import pandas as pd

    columns = sorted(frame.columns if columns is None else columns)
    if not frame[key].is_monotonic_increasing:  # a stable sort leaves sorted rows as they are
        frame = frame.sort_values(key, kind="mergesort")
    digest = hashlib.sha256(",".join(columns).encode())
    # Row hashes are independent of each other: hashing a slice of rows at a time gives the
    # same bytes without a copy of the whole selection. index=False: no reset is needed.
    for start in range(0, len(frame), _HASH_CHUNK_ROWS):
        rows = frame.iloc[start:start + _HASH_CHUNK_ROWS][columns]
        digest.update(pd.util.hash_pandas_object(rows, index=False).to_numpy().tobytes())
    return digest.hexdigest()
