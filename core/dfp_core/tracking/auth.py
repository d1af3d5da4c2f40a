"""Basic-auth credentials for MLflow's client, from the runtime context rather than the process
environment.

MLflow's client reads basic-auth credentials only from MLFLOW_TRACKING_USERNAME/PASSWORD in
``os.environ`` (or ``~/.mlflow/credentials``), while our commands find the stack's credentials in
``$DFP_HOME/stack.env`` and never write ``os.environ``. A runtime built with credentials
activates them here, and MLflow's request-header plugin below (entry point
``mlflow.request_header_provider``) sends them with each request of the process. MLflow
imports it while it loads, and a runtime without MLflow work imports it too: it imports
nothing (MLflow calls the provider's two methods; it needs no base class).
"""

from __future__ import annotations

import base64
import sys

# Activation order: the latest activation is sent; a closed runtime takes its own back.
_active: list[tuple[object, str]] = []


def activate(owner: object, username: str, password: str) -> None:
    """Send ``username``/``password`` with this process's MLflow requests until ``deactivate(owner)``."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    _active.append((owner, f"Basic {token}"))


def deactivate(owner: object) -> None:
    _active[:] = [entry for entry in _active if entry[0] is not owner]


class BasicAuthHeaderProvider:
    """MLflow's RequestHeaderProvider interface: the ``Authorization`` header of the active
    credentials, when a runtime activated some."""

    def in_context(self) -> bool:
        return bool(_active)

    def request_headers(self) -> dict[str, str]:
        return {"Authorization": _active[-1][1]} if _active else {}


# Request-header plugins our processes leave out, by the start of their entry point's value.
SKIPPED_HEADER_PLUGINS = ("feast.",)
_REGISTRY = "mlflow.tracking.request_header.registry"


def load_request_header_plugins() -> None:
    """Import MLflow's request-header registry, which loads every installed
    ``mlflow.request_header_provider`` plugin, without those in ``SKIPPED_HEADER_PLUGINS``.

    Feast (0.67) installs one. It adds a bearer token only inside the request scope of Feast's
    own feature server, which no process of ours runs, and loading it imports all of Feast,
    whose typeguard-instrumented classes cost about 5 s of a 2-core machine in every process
    that talks to MLflow: ``dfp score`` and ``dfp serve`` included (bench/README.md). MLflow
    has no switch for its plugins, so the entry points are filtered while the registry
    imports (once; MLflow imports it on its first REST call)."""
    if _REGISTRY in sys.modules:
        return
    # Deferred (MLflow): MLflow's plugins load with MLflow.
    from mlflow.utils import plugins

    listed = plugins._get_entry_points

    def without_skipped(group: str):
        found = listed(group)
        if group != "mlflow.request_header_provider":
            return found
        return [entry for entry in found if not entry.value.startswith(SKIPPED_HEADER_PLUGINS)]

    plugins._get_entry_points = without_skipped
    try:
        __import__(_REGISTRY)
    finally:
        plugins._get_entry_points = listed
