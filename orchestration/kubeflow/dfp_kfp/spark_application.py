"""Submitting the transform as a Spark Operator ``SparkApplication`` and waiting
for it, over the Kubernetes REST API (in-cluster service account, no client
library): create, poll ``status.applicationState.state``, report the driver's
error, delete."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import requests

from dfp_core.errors import DfpError

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
JOB_FILE = "local:///opt/dfp/engines/spark_engine/dfp_spark/kronodroid_iceberg_job.py"
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TERMINAL_OK = {"COMPLETED"}
TERMINAL_FAILED = {"FAILED", "SUBMISSION_FAILED", "FAILING", "INVALIDATING"}


class SparkApplicationError(DfpError):
    """The SparkApplication failed or did not finish in time."""


def in_cluster() -> bool:
    return bool(os.environ.get("KUBERNETES_SERVICE_HOST"))


@dataclass
class SparkAppSpec:
    name: str
    namespace: str
    image: str
    arguments: list[str]
    lakefs_endpoint: str
    lakefs_repository: str
    credentials_secret: str = "lakefs-credentials"
    service_account: str = "spark"
    spark_version: str = "4.0.1"
    driver_cores: int = 1
    driver_memory: str = "2g"
    executor_instances: int = 2
    executor_cores: int = 1
    executor_memory: str = "2g"
    main_file: str = JOB_FILE
    labels: dict[str, str] = field(default_factory=dict)


def _secret_env(secret: str) -> list[dict]:
    refs = {
        "LAKEFS_ACCESS_KEY_ID": "access_key_id", "LAKEFS_SECRET_ACCESS_KEY": "secret_access_key",
        # Hadoop 3.4 S3A (AWS SDK v2) reads these through its environment provider.
        "AWS_ACCESS_KEY_ID": "access_key_id", "AWS_SECRET_ACCESS_KEY": "secret_access_key",
    }
    return [{"name": k, "valueFrom": {"secretKeyRef": {"name": secret, "key": v}}} for k, v in refs.items()]


def build_spark_application(spec: SparkAppSpec) -> dict[str, Any]:
    """The SparkApplication manifest; credentials only as Secret references."""
    labels = {"app.kubernetes.io/name": "kronodroid-iceberg", "app.kubernetes.io/part-of": "dfp-kronodroid", **spec.labels}
    secure = spec.lakefs_endpoint.startswith("https://")
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "SparkApplication",
        "metadata": {"name": spec.name, "namespace": spec.namespace, "labels": labels},
        "spec": {
            "type": "Python",
            "mode": "cluster",
            "sparkVersion": spec.spark_version,
            "image": spec.image,
            "imagePullPolicy": "IfNotPresent",
            "mainApplicationFile": spec.main_file,
            "arguments": list(spec.arguments),
            "sparkConf": {
                "spark.sql.extensions": "org.apache.iceberg.spark.extensions.IcebergSparkSessionExtensions",
                "spark.sql.session.timeZone": "UTC",
                "spark.pyspark.python": "/opt/venv/bin/python",
                "spark.pyspark.driver.python": "/opt/venv/bin/python",
            },
            "hadoopConf": {
                "fs.s3a.impl": "org.apache.hadoop.fs.s3a.S3AFileSystem",
                "fs.s3a.endpoint": spec.lakefs_endpoint,
                "fs.s3a.endpoint.region": "us-east-1",
                "fs.s3a.path.style.access": "true",
                "fs.s3a.connection.ssl.enabled": str(secure).lower(),
                "fs.s3a.aws.credentials.provider": "software.amazon.awssdk.auth.credentials.EnvironmentVariableCredentialsProvider",
                "fs.s3a.bucket.probe": "0",
            },
            "restartPolicy": {"type": "Never"},
            "timeToLiveSeconds": 86400,
            "driver": {
                "cores": spec.driver_cores,
                "memory": spec.driver_memory,
                "serviceAccount": spec.service_account,
                "labels": {**labels, "app.kubernetes.io/component": "driver"},
                "env": [
                    {"name": "LAKEFS_ENDPOINT", "value": spec.lakefs_endpoint},
                    {"name": "LAKEFS_REPOSITORY", "value": spec.lakefs_repository},
                    {"name": "SPARK_MASTER", "value": "k8s://https://kubernetes.default.svc:443"},
                    {"name": "DFP_SPARK_DRIVER_MEMORY", "value": spec.driver_memory},
                    {"name": "DFP_SPARK_JARS_PROVIDED", "value": "1"},
                    *_secret_env(spec.credentials_secret),
                ],
            },
            "executor": {
                "instances": spec.executor_instances,
                "cores": spec.executor_cores,
                "memory": spec.executor_memory,
                "deleteOnTermination": True,
                "labels": {**labels, "app.kubernetes.io/component": "executor"},
                "env": [e for e in _secret_env(spec.credentials_secret) if e["name"].startswith("AWS_")],
            },
        },
    }


class KubernetesApi:
    """The few calls we need, against an API server URL with a bearer token."""

    def __init__(self, server: str, token: str | None, ca_cert: str | bool = True, timeout: float = 30):
        self.server = server.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.session.verify = ca_cert
        self.timeout = timeout

    @classmethod
    def in_cluster(cls) -> "KubernetesApi":
        host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        token = (SERVICE_ACCOUNT_DIR / "token").read_text().strip()
        return cls(f"https://{host}:{port}", token, str(SERVICE_ACCOUNT_DIR / "ca.crt"))

    def _url(self, namespace: str, name: str = "") -> str:
        base = f"{self.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
        return f"{base}/{name}" if name else base

    def _check(self, resp: requests.Response, action: str) -> dict:
        if resp.status_code >= 300:
            try:
                message = resp.json().get("message", resp.text)
            except ValueError:
                message = resp.text
            raise SparkApplicationError(f"{action}: Kubernetes API answered {resp.status_code}: {message[:300]}")
        return resp.json() if resp.content else {}

    def create(self, manifest: dict) -> dict:
        ns = manifest["metadata"]["namespace"]
        return self._check(self.session.post(self._url(ns), json=manifest, timeout=self.timeout),
                           f"create SparkApplication {manifest['metadata']['name']}")

    def get(self, namespace: str, name: str) -> dict:
        return self._check(self.session.get(self._url(namespace, name), timeout=self.timeout), f"get SparkApplication {name}")

    def delete(self, namespace: str, name: str) -> None:
        resp = self.session.delete(self._url(namespace, name), timeout=self.timeout)
        if resp.status_code not in (200, 202, 404):
            self._check(resp, f"delete SparkApplication {name}")

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 40) -> str:
        resp = self.session.get(f"{self.server}/api/v1/namespaces/{namespace}/pods/{pod}/log",
                                params={"tailLines": lines}, timeout=self.timeout)
        return resp.text if resp.status_code == 200 else ""


def wait_for_completion(api: KubernetesApi, namespace: str, name: str, timeout_s: float = 3600,
                        poll_s: float = 10, log: Callable[[str], None] = print) -> dict:
    """Poll until COMPLETED (returns the status) or a failure / timeout (raises)."""
    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        status = api.get(namespace, name).get("status", {})
        # A just-created application has no state yet (or an empty one).
        state = status.get("applicationState", {}).get("state") or "PENDING"
        if state != last:
            log(f"SparkApplication {name}: {state}")
            last = state
        if state in TERMINAL_OK:
            return status
        if state in TERMINAL_FAILED:
            error = status.get("applicationState", {}).get("errorMessage", "")
            driver = status.get("driverInfo", {}).get("podName")
            tail = api.pod_log_tail(namespace, driver) if driver else ""
            detail = f"; driver log tail:\n{tail}" if tail else ""
            raise SparkApplicationError(f"SparkApplication {name} ended {state}: {error or 'no error message'}{detail}")
        if time.monotonic() > deadline:
            raise SparkApplicationError(f"SparkApplication {name} did not finish within {timeout_s:.0f}s (last state {state})")
        time.sleep(poll_s)
