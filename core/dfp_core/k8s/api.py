"""The few API-server calls the node itself makes (health, the node's Ready condition) as
the cluster admin, and kubectl for applying manifests (server-side apply)."""

from __future__ import annotations

import json
import subprocess

import requests

from dfp_core.errors import StackError
from dfp_core.k8s import layout
from dfp_core.k8s.layout import NodeSettings
from dfp_core.k8s.pki import api_server_url

FIELD_MANAGER = "dfp-cluster"


def get(settings: NodeSettings, path: str, timeout: float = 5) -> requests.Response:
    p = settings.paths
    return requests.get(api_server_url() + path, timeout=timeout, verify=str(p.cert("ca")),
                        cert=(str(p.cert("admin")), str(p.key("admin"))))


def healthy(settings: NodeSettings) -> bool:
    try:
        return get(settings, "/readyz", timeout=3).status_code == 200
    except (requests.RequestException, OSError):
        return False


def node_ready(settings: NodeSettings) -> bool:
    """Whether the node is registered and its Ready condition is True."""
    try:
        answer = get(settings, f"/api/v1/nodes/{layout.NODE_NAME}", timeout=3)
    except (requests.RequestException, OSError):
        return False
    if answer.status_code != 200:
        return False
    conditions = answer.json().get("status", {}).get("conditions", [])
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def accepts_pods(settings: NodeSettings) -> bool:
    """The default service account exists: until the controller manager makes it, the API
    server refuses pods in the default namespace."""
    try:
        return get(settings, "/api/v1/namespaces/default/serviceaccounts/default", timeout=3).status_code == 200
    except (requests.RequestException, OSError):
        return False


def kubectl(settings: NodeSettings, *args: str, stdin: str | None = None, timeout: float = 120,
            check: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(settings.binary("kubectl")), "--kubeconfig", str(settings.paths.admin_kubeconfig), *args]
    proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise StackError(f"`kubectl {' '.join(args[:3])}` failed: {lines[-1] if lines else proc.returncode}")
    return proc


def apply(settings: NodeSettings, objects: list[dict] | str, timeout: float = 120) -> None:
    """Server-side apply of objects (dicts, or a YAML/JSON text or file path with ``-f``)."""
    body = objects if isinstance(objects, str) else json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    kubectl(settings, "apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-f", "-",
            stdin=body, timeout=timeout)
