"""The MLflow tracking server a command talks to: is it up, and MLflow's fluent API pointed at it."""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import requests

from dfp_core.errors import TrackingError


@contextlib.contextmanager
def use_tracking_server(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's fluent API (and the registry, which follows it) at
    ``tracking_uri`` for the block.

    ``mlflow.set_tracking_uri`` also exports MLFLOW_TRACKING_URI for child
    processes; MLflow's own scoped setter restores its previous state, and the
    variable is put back as it was, so the process environment is unchanged.
    """
    # Deferred (MLflow): MLflow loads on first use.
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
