"""What a training run records beyond MLflow's own: its splits as dataset inputs pinned to a
lakeFS commit (without a copy of their rows), and JSON artifacts read back."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.pandas_dataset import PandasDataset

# Rows the logged schema of a split is inferred from: its types are the frame's columns'.
SCHEMA_ROWS = 1_000


class SplitDataset(PandasDataset):
    """A training split as MLflow's run inputs record it (name, digest, lakeFS source,
    schema, profile) without a copy of its rows: the frame it holds is the split's first
    ``SCHEMA_ROWS`` rows with the features typed as doubles, as the model's signature
    types them, and the profile counts every row of the split."""

    def __init__(self, frame, feature_columns, source: DatasetSource, name: str, digest: str, targets: str = "label"):
        columns = ["sample_id", targets, *feature_columns]
        typed = frame.head(SCHEMA_ROWS)[columns].astype({c: "float64" for c in feature_columns})  # rows first: no copy of all
        super().__init__(df=typed, source=source, targets=targets, name=name, digest=digest)
        self._rows, self._columns = len(frame), len(columns)

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self._rows, "num_elements": self._rows * self._columns}


class LakeFSDatasetSource(DatasetSource):
    """A dataset read from a table at a lakeFS commit: ``lakefs://<repo>/<commit>/<path>``."""

    def __init__(self, uri: str):
        if not uri.startswith("lakefs://"):
            raise ValueError(f"not a lakefs:// URI: {uri}")
        self._uri = uri

    @property
    def uri(self) -> str:
        return self._uri

    @staticmethod
    def _get_source_type() -> str:
        return "lakefs"

    def load(self, **kwargs: Any) -> str:
        """The URI itself: rebuild the data with ``dfp reproduce``, which reads it through Feast."""
        return self._uri

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return isinstance(raw_source, str) and raw_source.startswith("lakefs://")

    @classmethod
    def _resolve(cls, raw_source: Any) -> "LakeFSDatasetSource":
        return cls(raw_source)

    def to_dict(self) -> dict[str, Any]:
        return {"uri": self._uri}

    @classmethod
    def from_dict(cls, source_dict: dict[str, Any]) -> "LakeFSDatasetSource":
        return cls(source_dict["uri"])


def run_json(client, run_id: str, path: str) -> Any | None:
    """The JSON artifact ``path`` of run ``run_id``; None when the run has none (a run from
    before it was kept) or it cannot be read."""
    with tempfile.TemporaryDirectory(prefix="dfp-run-json-") as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
        except Exception:  # noqa: BLE001 - absent or unreadable: the caller says what that means
            return None
