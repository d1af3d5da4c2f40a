"""The runtime context: what one command works with, built once by its entry
point (CLI command, KFP step, Spark job main) from its arguments, the
environment and ``stack.env``, and passed down to the use cases.

It holds the settings, a lakeFS client, a Spark session made on demand, and an
MLflow client. Nothing here reads or writes ``os.environ``.
"""

from __future__ import annotations

import contextlib
import json
from functools import cache, cached_property
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

from dfp_core.settings import Settings
from dfp_core.errors import ConfigError, DfpError
from dfp_core.kronodroid.schema import TRANSFORM_SUMMARY_PATH
from dfp_core.spark import spark_session
from dfp_core.tracking import auth as tracking_auth

if TYPE_CHECKING:  # pragma: no cover
    from mlflow import MlflowClient
    from pyspark.sql import SparkSession

    from dfp_core.lakefs_ops import LakeFS
    from dfp_core.lineage import PinnedRows, RetrievedDataset

# Retrieval hands Spark's Arrow batches to pandas.
ARROW_CONF = {"spark.sql.execution.arrow.pyspark.enabled": "true"}
# The entry point groups of the plugin that serves the splits (dfp_feast's): Feast's retrieval,
# and the same rows left in Spark.
SPLITS_READER_GROUP = "dfp.splits_reader"
SPLIT_ROWS_GROUP = "dfp.split_rows"


@cache
def _plugin(group: str) -> Callable:
    """The one installed entry point of ``group``."""
    found = list(entry_points(group=group))
    if len(found) != 1:
        have = ", ".join(f"{e.name} = {e.value}" for e in found) or "none"
        raise ConfigError(f"expected one entry point in group {group}, found {have}; "
                          "install the project with its Feast extra (`make setup`)")
    return found[0].load()


def splits_reader() -> Callable[..., "RetrievedDataset"]:
    """The installed splits reader (``SPLITS_READER_GROUP``)."""
    return _plugin(SPLITS_READER_GROUP)


class Runtime:
    """Settings plus the clients built from them, each made once, when first used."""

    def __init__(self, settings: Settings, spark: "SparkSession | None" = None, app_name: str = "dfp"):
        self.settings = settings
        self.app_name = app_name
        self._spark = spark
        self._own_spark = False
        if settings.mlflow.username and settings.mlflow.password:
            # MLflow's client takes credentials from os.environ only; ours come from the settings.
            tracking_auth.activate(self, settings.mlflow.username, settings.mlflow.password)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, app_name: str = "dfp", **overrides) -> "Runtime":
        """``Settings.from_env(env)`` with ``overrides`` (``lakefs=``, ``mlflow=``, ``spark=``,
        ``stack=`` mappings of command-line values; None values are ignored)."""
        return cls(Settings.from_env(env).override(**overrides), app_name=app_name)

    @cached_property
    def lakefs(self) -> "LakeFS":
        # Deferred (the lakeFS SDK, requests): each client loads on first use; a command that needs none never imports it.
        from dfp_core.lakefs_ops import LakeFS

        return LakeFS(self.settings.lakefs)

    def spark(self, input_rows: int | None = None) -> "SparkSession":
        """The Spark session (local mode unless SPARK_MASTER says otherwise), started on first use.
        ``input_rows``: the rows of the job the first use starts it for, where known; they settle
        how a local driver JVM compiles (``SparkSettings.for_input_rows``)."""
        if self._spark is None:
            settings = self.settings.spark.for_input_rows(input_rows)
            self._spark = spark_session(self.app_name, self.settings.lakefs, settings, ARROW_CONF)
            self._own_spark = True
        return self._spark

    @cached_property
    def mlflow(self) -> "MlflowClient":
        # Deferred (MLflow): each client loads on first use; a command that needs none never imports it.
        from mlflow import MlflowClient

        tracking_auth.load_request_header_plugins()
        uri = self.settings.mlflow.tracking_uri
        return MlflowClient(tracking_uri=uri, registry_uri=uri)

    @contextlib.contextmanager
    def tracking(self) -> Iterator["MlflowClient"]:
        """MLflow's fluent API (``mlflow.start_run``, ``log_model``) pointed at this
        runtime's server for the block; the server is checked first."""
        # Deferred (requests, psutil): each client loads on first use; a command that needs none never imports it.
        from dfp_core import stack
        from dfp_core.tracking.server import check_tracking_server, use_tracking_server

        client = self.mlflow  # before any MLflow request: see tracking_auth.load_request_header_plugins
        # This home's MLflow may still be starting (`dfp quickstart` starts it beside the transform).
        stack.await_service(self.settings.stack, "mlflow", self.settings.mlflow.tracking_uri)
        check_tracking_server(self.settings.mlflow.tracking_uri)
        with use_tracking_server(self.settings.mlflow.tracking_uri):
            yield client

    def retrieve_splits(self, repo: str, ref: str, snapshot_id: str | int | None = None,
                        max_rows_per_split: int = 0, feature_view: str | None = None) -> "RetrievedDataset":
        """Train/val/test frames of the fct table at ``repo``@``ref`` (resolved to a
        commit), pinned to an Iceberg snapshot, served by Feast (``splits_reader``)."""
        return splits_reader()(self._spark_for(repo, ref), self.lakefs, repo, ref, snapshot_id, max_rows_per_split,
                               feature_view=feature_view)

    def split_rows(self, repo: str, ref: str, snapshot_id: str | int | None = None,
                   max_rows_per_split: int = 0, feature_view: str | None = None) -> "PinnedRows":
        """The rows ``retrieve_splits`` serves for the same arguments, left in Spark
        (``SPLIT_ROWS_GROUP``)."""
        return _plugin(SPLIT_ROWS_GROUP)(self._spark_for(repo, ref), self.lakefs, repo, ref, snapshot_id,
                                         max_rows_per_split, feature_view=feature_view)

    def _spark_for(self, repo: str, ref: str) -> "SparkSession":
        """The session, started (where not yet) for the rows of the fct table at ``repo``@``ref``
        as the transform that wrote it counted them (its summary beside the tables); where that
        cannot be read, the rows are not known and the read that follows says what is wrong."""
        if self._spark is not None:
            return self._spark
        try:
            summary = json.loads(self.lakefs.read_bytes(repo, ref, TRANSFORM_SUMMARY_PATH))
            rows = int(summary["fct_rows"])
        except (DfpError, ValueError, KeyError, TypeError):
            rows = None
        return self.spark(input_rows=rows)

    def close(self) -> None:
        """Stop the Spark session if this runtime started it; stop sending its MLflow credentials."""
        tracking_auth.deactivate(self)
        if self._own_spark and self._spark is not None:
            self._spark.stop()
            self._spark, self._own_spark = None, False

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
