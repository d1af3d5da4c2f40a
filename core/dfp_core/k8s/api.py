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


def waiting_reasons(pods: list[dict], events: list[dict], node: dict | None = None) -> list[str]:
    """Why pods are not Ready, one short line each, from the API's own words: the node's
    pressure conditions and taints, each unready pod's phase and its containers' waiting or
    last-terminated reasons, then the newest Warning events; nothing when all is well."""
    lines = []
    if node:
        pressure = [c["type"] for c in node.get("status", {}).get("conditions", [])
                    if c.get("type") != "Ready" and c.get("status") == "True"]
        taints = [t.get("key", "") for t in node.get("spec", {}).get("taints", [])]
        if pressure or taints:
            lines.append(f"node {node.get('metadata', {}).get('name', '?')}: "
                         + ", ".join([*pressure, *(f"taint {t}" for t in taints)]))
    for pod in pods:
        status = pod.get("status", {})
        if status.get("phase") == "Succeeded" or \
                any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", [])):
            continue  # ready, or a finished job's pod
        said = [status.get("phase", "?")]
        said += [f"{c['reason']}: {c.get('message', '')}".rstrip(": ") for c in status.get("conditions", [])
                 if c.get("status") == "False" and c.get("reason")]
        for container in status.get("initContainerStatuses", []) + status.get("containerStatuses", []):
            state, last = container.get("state", {}), container.get("lastState", {})
            if "waiting" in state:
                said.append(f"{container['name']} {state['waiting'].get('reason', 'waiting')}")
            if "terminated" in last:
                ended = last["terminated"]
                said.append(f"{container['name']} last exited {ended.get('exitCode')} ({ended.get('reason', '')}"
                            f"{': ' + ended['message'].strip() if ended.get('message') else ''}), "
                            f"{container.get('restartCount', 0)} restarts")
        lines.append(f"pod {pod.get('metadata', {}).get('name', '?')}: " + "; ".join(said))
    if not lines:
        return []  # the warnings of a start that recovered (a probe before the server listened) explain nothing
    warnings = sorted((e for e in events if e.get("type") == "Warning"),
                      key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")
    for event in warnings[-3:]:
        lines.append(f"event {event.get('involvedObject', {}).get('name', '?')}: {event.get('reason', '')} "
                     f"{(event.get('message') or '').strip()}")
    return lines


def why_not_ready(settings: NodeSettings, namespace: str) -> str:
    """``waiting_reasons`` for a namespace as one text, or why it could not be read: what an
    error about a rollout that timed out adds, so it names the cause."""
    def items(*args: str) -> list[dict]:
        proc = kubectl(settings, *args, "-o", "json", timeout=30, check=False)
        return json.loads(proc.stdout).get("items", []) if proc.returncode == 0 else []
    try:
        node = [n for n in items("get", "nodes") if n.get("metadata", {}).get("name") == layout.NODE_NAME]
        lines = waiting_reasons(items("-n", namespace, "get", "pods"), items("-n", namespace, "get", "events"),
                                node[0] if node else None)
    except (subprocess.SubprocessError, ValueError, OSError) as exc:
        return f"(the pods' state could not be read: {exc})"
    return " | ".join(lines) if lines else "(every pod is Ready now)"
