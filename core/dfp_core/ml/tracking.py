"""MLflow pieces of training: reachability check, lakeFS-pinned dataset inputs,
and registration of a model version *together with* its lineage tags."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

import requests
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.pandas_dataset import PandasDataset

from dfp_core.errors import TrackingError

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


@contextlib.contextmanager
def use_tracking_server(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (and the registry, which follows it) at
    ``tracking_uri`` for the block.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI for child
    processes; MLflow's own scoped setter restores its previous state, and the
    variable is put back as it was, so the process environment is unchanged.
    """
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def check_tracking_server(tracking_uri: str, timeout: float = 5.0) -> None:
    """Fail early and clearly when an HTTP tracking server does not answer."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    try:
        resp = requests.get(tracking_uri.rstrip("/") + "/health", timeout=timeout)
    except requests.RequestException as exc:
        raise TrackingError(
            f"MLflow tracking server at {tracking_uri} is unreachable ({exc.__class__.__name__}); "
            "start it (`dfp stack up` for the local one) or set MLFLOW_TRACKING_URI"
        ) from None
    if resp.status_code != 200:
        raise TrackingError(f"MLflow tracking server at {tracking_uri} is unhealthy: HTTP {resp.status_code}")


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


def register_with_lineage(client, model_uri: str, name: str, tags: dict[str, str], alias: str | None = None,
                          description: str | None = None) -> str:
    """Create a model version whose lineage tags arrive in the same request.

    ``mlflow.register_model(..., tags=...)`` sends the tags with the version's
    create call, so a version never exists without them. Call it inside
    ``use_tracking_server``; ``client`` (same server) sets the description and the
    alias. Returns the version.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        version = mlflow.register_model(model_uri, name, tags=tags)
        if description:
            client.update_model_version(name, version.version, description=description)
        if alias:
            client.set_registered_model_alias(name, alias, version.version)
    except MlflowException as exc:
        raise TrackingError(f"registering {name!r} in the MLflow Model Registry failed: {exc.message}") from None
    return str(version.version)


def run_json(client, run_id: str, path: str) -> Any | None:
    """The JSON artifact ``path`` of run ``run_id``; None when the run has none (a run from
    before it was kept) or it cannot be read."""
    with tempfile.TemporaryDirectory(prefix="dfp-run-json-") as tmp:
        try:
            return json.loads(Path(client.download_artifacts(run_id, path, tmp)).read_text())
        except Exception:  # noqa: BLE001 - absent or unreadable: the caller says what that means
            return None
