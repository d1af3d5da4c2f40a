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
