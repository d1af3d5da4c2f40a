"""Submitting the transform as a Spark Operator ``SparkApplication`` and waiting
for it, through the official ``kubernetes`` client (in-cluster config, or a
kubeconfig): create, poll ``status.applicationState.state``, report the
driver's error and log tail.

Transient API errors (429, 5xx, a reset connection) are retried with backoff,
so a blip during a long poll does not throw away a finished Spark job.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from dfp_core.errors import DfpError
from dfp_core.params import SparkJobConfig
from dfp_core.progress import note
from dfp_core.settings import LakeFSSettings

GROUP, VERSION, PLURAL = "sparkoperator.k8s.io", "v1beta2", "sparkapplications"
JOB_FILE = "local:///opt/dfp/engines/spark_engine/dfp_spark/kronodroid_iceberg_job.py"
RETRYABLE_STATUS = {429, 500, 502, 503, 504}
TERMINAL_OK = {"COMPLETED"}
TERMINAL_FAILED = {"FAILED", "SUBMISSION_FAILED", "FAILING", "INVALIDATING"}


class SparkApplicationError(DfpError):
    """The SparkApplication failed or did not finish in time."""


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
    spark_version: str = "4.0.5"
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


class SparkApplications:
    """The SparkApplication calls we need, on a ``kubernetes.client.ApiClient``."""

    def __init__(self, api_client, attempts: int = 6, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 sleep: Callable[[float], None] = time.sleep):
        # Deferred (the Kubernetes client): only a cluster needs it.
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.attempts, self.backoff_s, self.max_backoff_s, self.sleep = attempts, backoff_s, max_backoff_s, sleep

    @classmethod
    def from_cluster(cls, **kwargs) -> "SparkApplications":
        """In a pod, its service account; elsewhere, the current kubeconfig context."""
        # Deferred (the Kubernetes client): only a cluster needs it.
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            try:
                config.load_kube_config()
            except (config.ConfigException, OSError) as exc:
                raise SparkApplicationError(
                    f"no Kubernetes configuration: not in a pod and no usable kubeconfig ({exc}); "
                    "set KUBECONFIG or run the pipeline with spark_mode=local"
                ) from None
        return cls(client.ApiClient(), **kwargs)

    @classmethod
    def for_server(cls, host: str, token: str | None = None, **kwargs) -> "SparkApplications":
        # Deferred (the Kubernetes client): only a cluster needs it.
        from kubernetes import client

        configuration = client.Configuration(host=host)
        if token:
            configuration.api_key = {"authorization": token}
            configuration.api_key_prefix = {"authorization": "Bearer"}
        return cls(client.ApiClient(configuration), **kwargs)

    def _call(self, action: str, fn, *args, missing_ok: bool = False, **kwargs):
        """``fn(*args, **kwargs)`` with transient failures retried; our error otherwise."""
        # Deferred (the Kubernetes client, requests): only a cluster needs it.
        from kubernetes.client.exceptions import ApiException
        from urllib3.exceptions import HTTPError

        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, **kwargs)
            except ApiException as exc:
                if missing_ok and exc.status == 404:
                    return None
                if exc.status not in RETRYABLE_STATUS or attempt == self.attempts:
                    raise SparkApplicationError(f"{action}: Kubernetes API answered {exc.status}: {_message(exc)}") from None
                reason = f"HTTP {exc.status}"
            except (HTTPError, ConnectionError) as exc:
                if attempt == self.attempts:
                    raise SparkApplicationError(f"{action}: Kubernetes API unreachable after {attempt} attempts: {exc}") from None
                reason = exc.__class__.__name__
            note(f"{action}: {reason}; retrying in {delay:.0f}s ({attempt}/{self.attempts - 1})")
            self.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")  # pragma: no cover

    def create(self, manifest: dict) -> dict:
        meta = manifest["metadata"]
        return self._call(f"create SparkApplication {meta['name']}", self.custom.create_namespaced_custom_object,
                          GROUP, VERSION, meta["namespace"], PLURAL, manifest)

    def get(self, namespace: str, name: str) -> dict:
        return self._call(f"get SparkApplication {name}", self.custom.get_namespaced_custom_object,
                          GROUP, VERSION, namespace, PLURAL, name)

    def delete(self, namespace: str, name: str) -> None:
        self._call(f"delete SparkApplication {name}", self.custom.delete_namespaced_custom_object,
                   GROUP, VERSION, namespace, PLURAL, name, missing_ok=True)

    def pod_log_tail(self, namespace: str, pod: str, lines: int = 40) -> str:
        try:
            return self._call(f"log of {pod}", self.core.read_namespaced_pod_log, pod, namespace, tail_lines=lines) or ""
        except SparkApplicationError:  # the log is a courtesy; the failure is reported anyway
            return ""


def _message(exc) -> str:
    try:
        return str(json.loads(exc.body).get("message", exc.body))[:300]
    except (TypeError, ValueError):
        return str(exc.body or exc.reason)[:300]


def _tail_line(log: str, lines: int = 3) -> str:
    """The last meaningful lines of a driver log, on one line."""
    kept = [line.strip() for line in log.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def _failure(api: SparkApplications, namespace: str, name: str, status: dict, what: str,
             log: Callable[[str], None]) -> SparkApplicationError:
    """One line naming the state and the driver log's tail; the fuller tail goes to ``log`` first."""
    driver = status.get("driverInfo", {}).get("podName")
    tail = api.pod_log_tail(namespace, driver) if driver else ""
    if tail:
        log(f"driver pod {driver}, last lines of its log:")
        for line in tail.splitlines()[-20:]:
            log(f"  {line}")
    shown = _tail_line(tail) or ("its driver pod left no log" if driver else "no driver pod was started")
    return SparkApplicationError(f"SparkApplication {name} {what}; driver log tail: {shown}")


def wait_for_completion(api: SparkApplications, namespace: str, name: str, timeout_s: float = 3600,
                        poll_s: float = 10, log: Callable[[str], None] = note) -> dict:
    """Poll until COMPLETED (returns the status) or a failure / timeout (raises, in one line
    with the state and the tail of the driver's log)."""
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
            error = status.get("applicationState", {}).get("errorMessage", "") or "no error message"
            # With restartPolicy Never the operator does not retry: FAILING (say, a deleted driver
            # pod) is the failure, only one reconcile before FAILED. Both read the same to a user.
            ended = "FAILED (operator state FAILING)" if state == "FAILING" else state
            raise _failure(api, namespace, name, status, f"ended {ended}: {error}", log)
        if time.monotonic() > deadline:
            raise _failure(api, namespace, name, status,
                           f"did not finish within {timeout_s:.0f}s (last state {state})", log)
        time.sleep(poll_s)


def application_name(run_id: str) -> str:
    return f"kronodroid-{run_id}".lower().replace("_", "-")[:63].rstrip("-")


def run_spark_application(run_id: str, job_args: list[str], lakefs: LakeFSSettings, image: str,
                          spark: SparkJobConfig, api: SparkApplications | None = None,
                          poll_s: float = 10) -> dict:
    """Submit the transform job for ``run_id`` and wait for it to complete. A refusal by the
    API server (schema, RBAC) fails at once with its message; an application that fails or
    runs past ``spark.timeout_seconds``, or a step that is stopped meanwhile, deletes it (and
    with it its pods) before the error goes up."""
    manifest = build_spark_application(SparkAppSpec(
        name=application_name(run_id), namespace=spark.namespace, image=image, arguments=job_args,
        lakefs_endpoint=lakefs.endpoint, lakefs_repository=lakefs.repository,
        service_account=spark.service_account, executor_instances=spark.executor_instances,
    ))
    name = manifest["metadata"]["name"]
    api = api or SparkApplications.from_cluster()
    api.create(manifest)
    try:
        return wait_for_completion(api, spark.namespace, name, timeout_s=spark.timeout_seconds, poll_s=poll_s)
    except BaseException:
        try:
            api.delete(spark.namespace, name)
            note(f"deleted SparkApplication {name} (and its pods)")
        except SparkApplicationError as exc:  # the failure above is what matters
            note(f"could not delete SparkApplication {name}: {exc}")
        raise
