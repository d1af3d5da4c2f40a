"""The pipeline's namespace on the node, set up as the README tells a cluster's users to:
the project's RBAC and NetworkPolicy (``orchestration/kubeflow/manifests``) with their
placeholder namespace replaced, the ``lakefs-credentials`` Secret from a key pair, and a
kubeconfig that acts as the pipeline's service account (a token from the TokenRequest API),
for the transform step that runs outside a pod (KFP's DockerRunner)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import yaml

from dfp_core.errors import StackError
from dfp_core.k8s import api
from dfp_core.k8s.layout import NodeSettings
from dfp_core.settings import REPO_ROOT

MANIFESTS = REPO_ROOT / "orchestration" / "kubeflow" / "manifests"
APPLIED = ("spark-rbac.yaml", "pipeline-network-policy.yaml")  # the examples hold placeholders
PIPELINE_ACCOUNT = "dfp-pipeline-runner"  # spark-rbac.yaml: the account the transform step submits as
LAKEFS_SECRET = "lakefs-credentials"
TOKEN_DURATION = "6h"


def manifests(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((MANIFESTS / name).read_text()) if doc]


def in_namespace(docs: list[dict], namespace: str) -> list[dict]:
    """The objects with their placeholder namespace (and their role bindings' subjects') set."""
    out = []
    for doc in docs:
        doc = copy.deepcopy(doc)
        doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
        out.append(doc)
    return out


def lakefs_secret(namespace: str, access_key_id: str, secret_access_key: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": LAKEFS_SECRET, "namespace": namespace,
                         "labels": {"app.kubernetes.io/part-of": "dfp-kronodroid"}},
            "stringData": {"access_key_id": access_key_id, "secret_access_key": secret_access_key}}


def set_up(settings: NodeSettings, namespace: str, lakefs_key_pair: tuple[str, str], out: Path) -> Path:
    """Apply the manifests and the Secret (its values through kubectl's stdin, never its
    command line) into ``namespace``; write a kubeconfig of the pipeline's account to ``out``
    (0600) and return it."""
    api.apply(settings, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])
    api.apply(settings, in_namespace([d for name in APPLIED for d in manifests(name)], namespace))
    api.apply(settings, [lakefs_secret(namespace, *lakefs_key_pair)])
    token = api.kubectl(settings, "-n", namespace, "create", "token", PIPELINE_ACCOUNT,
                        f"--duration={TOKEN_DURATION}").stdout.strip()
    if not token:
        raise StackError(f"the API server gave no token for {namespace}/{PIPELINE_ACCOUNT}")
    admin = yaml.safe_load(settings.paths.admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {"apiVersion": "v1", "kind": "Config", "current-context": "pipeline", "clusters": [cluster],
              "users": [{"name": PIPELINE_ACCOUNT, "user": {"token": token}}],
              "contexts": [{"name": "pipeline", "context": {"cluster": cluster["name"], "user": PIPELINE_ACCOUNT,
                                                            "namespace": namespace}}]}
    out.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(config, indent=2))
    return out
