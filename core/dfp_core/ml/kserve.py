"""A KServe ``InferenceService`` for a registered model version, on KServe's MLflow
runtime (MLServer, Open Inference Protocol v2).

``storageUri`` is where the version's files are: MLflow's download URI for the version,
with ``mlflow-artifacts:/`` (artifacts proxied by the tracking server) mapped onto the
server's ``--artifacts-destination``. KServe's storage initializer reads S3, GCS, Azure,
HTTP(S), PVCs and OCI, not a folder on the MLflow host: a version stored on local disk
is refused, naming the URI. The predictor runs as a non-root user with requests and
limits. Checked against KServe's CRD (``KSERVE_VERSION``) by the tests.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dfp_core.errors import ConfigError

if TYPE_CHECKING:  # pragma: no cover
    from dfp_core.runtime import Runtime

# The KServe release whose InferenceService CRD the manifests are validated against.
KSERVE_VERSION = "v0.20.0"
RUNTIME = "kserve-mlserver"
# URI schemes KServe's storage initializer downloads from.
STORAGE_SCHEMES = ("s3", "gs", "https", "http", "pvc", "hdfs", "webhdfs", "oci", "hf")
# MLServer's image user (seldonio/mlserver runs as 1000).
SERVING_USER = 1000
# What KServe's kserve-mlserver runtime runs for ``modelFormat: mlflow``: MLServer with its MLflow
# runtime, configured by environment, serving the files KServe put in /mnt/models. These are the
# releases checked against the model here (test_model_artifact.py); MLServer 1.7.1 is the first
# whose MLflow runtime installs beside MLflow 3.17. uvloop 0.22 and later kill MLServer's
# inference workers at start (SeldonIO/MLServer#2286, still open; MLflow's own MLServer extra
# pins it below 0.22 too). Its image needs the scorer's own pins as well
# (``pyfunc.SCORER_DISTRIBUTIONS``: mlflow, torch, numpy, pandas, from the model's requirements.txt).
MLSERVER_REQUIREMENTS = ("mlserver==1.7.1", "mlserver-mlflow==1.7.1", "uvloop==0.21.0")
MLSERVER_IMPLEMENTATION = "mlserver_mlflow.MLflowRuntime"


@dataclass(frozen=True)
class InferenceServiceSpec:
    name: str
    namespace: str
    storage_uri: str
    model_name: str
    model_version: str
    service_account: str | None = None
    image: str | None = None
    cpu: tuple[str, str] = ("500m", "1")  # request, limit
    memory: tuple[str, str] = ("1Gi", "2Gi")
    annotations: dict[str, str] = field(default_factory=dict)


def service_name(model_name: str, version: str) -> str:
    """A DNS-1035 label for the model version: lowercase letters, digits and '-',
    starting with a letter, at most 45 characters (KServe appends its own suffixes)."""
    base = re.sub(r"[^a-z0-9-]+", "-", model_name.lower()).strip("-") or "model"
    if not base[0].isalpha():
        base = f"m-{base}"
    suffix = f"-v{version}"
    return base[:45 - len(suffix)].rstrip("-") + suffix


def storage_uri_of(download_uri: str, artifacts_destination: str | None) -> str:
    """Where KServe reads the version from; ConfigError when it cannot."""
    uri = download_uri
    if uri.startswith("mlflow-artifacts:"):
        if not artifacts_destination:
            raise ConfigError(
                f"the version's files are behind the MLflow server ({download_uri}); pass --artifacts-destination "
                "(the server's --artifacts-destination, e.g. s3://mlflow-artifacts) or --storage-uri"
            )
        path = re.sub(r"^mlflow-artifacts:(//[^/]*)?", "", uri).lstrip("/")
        uri = f"{artifacts_destination.rstrip('/')}/{path}"
    scheme = uri.split("://", 1)[0] if "://" in uri else ""
    if scheme not in STORAGE_SCHEMES:
        raise ConfigError(
            f"KServe cannot read {uri}: its storage initializer reads {', '.join(s + '://' for s in STORAGE_SCHEMES)}; "
            "keep MLflow's artifacts in an object store (mlflow server --artifacts-destination s3://...) or pass --storage-uri"
        )
    return uri


def inference_service(spec: InferenceServiceSpec) -> dict[str, Any]:
    """The manifest: no credentials (S3 access comes from the service account's secret)."""
    labels = {"app.kubernetes.io/name": spec.name, "app.kubernetes.io/part-of": "dfp-kronodroid",
              "app.kubernetes.io/component": "predictor"}
    model: dict[str, Any] = {
        "modelFormat": {"name": "mlflow"},
        "protocolVersion": "v2",
        "runtime": RUNTIME,
        "storageUri": spec.storage_uri,
        "resources": {"requests": {"cpu": spec.cpu[0], "memory": spec.memory[0]},
                      "limits": {"cpu": spec.cpu[1], "memory": spec.memory[1]}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "runAsNonRoot": True,
                            "runAsUser": SERVING_USER, "capabilities": {"drop": ["ALL"]}},
    }
    if spec.image:
        model["image"] = spec.image
    predictor: dict[str, Any] = {
        "model": model,
        "securityContext": {"runAsNonRoot": True, "runAsUser": SERVING_USER, "runAsGroup": SERVING_USER,
                            "fsGroup": SERVING_USER, "seccompProfile": {"type": "RuntimeDefault"}},
    }
    if spec.service_account:
        predictor["serviceAccountName"] = spec.service_account
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": spec.name, "namespace": spec.namespace, "labels": labels,
            "annotations": {"dfp.kronodroid/model-name": spec.model_name, "dfp.kronodroid/model-version": spec.model_version,
                            **spec.annotations},
        },
        "spec": {"predictor": predictor},
    }


def inference_service_for_version(rt: "Runtime", model_name: str, version: str | None = None, alias: str | None = None,
                                  namespace: str = "kubeflow-user", storage_uri: str | None = None,
                                  artifacts_destination: str | None = None, service_account: str | None = None,
                                  image: str | None = None) -> dict[str, Any]:
    """The InferenceService of a registered version (by number or alias)."""
    # Deferred (52 ms of imports): only the manifest's and the request's builders need it.
    from dfp_core.tracking.registry import resolve_model_uri

    if (version is None) == (alias is None):
        raise ConfigError("give exactly one of --version and --alias")
    uri = f"models:/{model_name}@{alias}" if alias else f"models:/{model_name}/{version}"
    found = resolve_model_uri(rt, uri)
    if storage_uri is None:
        download = rt.mlflow.get_model_version_download_uri(model_name, found.version)
        storage_uri = storage_uri_of(download, artifacts_destination)
    annotations = {key: found.tags[tag] for key, tag in (("dfp.kronodroid/lakefs-ref", "data.lakefs_ref"),
                                                        ("dfp.kronodroid/lakefs-repository", "data.lakefs_repository"))
                   if tag in found.tags}
    return inference_service(InferenceServiceSpec(
        name=service_name(model_name, str(found.version)), namespace=namespace, storage_uri=storage_uri,
        model_name=model_name, model_version=str(found.version), service_account=service_account, image=image,
        annotations=annotations,
    ))


def mlserver_requirements(model_requirements: str) -> list[str]:
    """What an MLServer environment for the model installs: ``MLSERVER_REQUIREMENTS`` and the
    scorer's own pins from the model's ``requirements.txt`` text (not all of it: it pins MLflow's
    whole closure, whose FastAPI MLServer cannot run with). ConfigError if a pin is missing."""
    # Deferred (torch, MLflow): only the manifest's and the request's builders need it.
    from dfp_core.ml.pyfunc import SCORER_DISTRIBUTIONS

    pins = {line.split("==")[0].strip().lower(): line.strip() for line in model_requirements.splitlines()
            if "==" in line and not line.lstrip().startswith("#")}
    missing = [name for name in SCORER_DISTRIBUTIONS if name not in pins]
    if missing:
        raise ConfigError(f"the model's requirements.txt pins no {', '.join(missing)}")
    return [*MLSERVER_REQUIREMENTS, *(pins[name] for name in SCORER_DISTRIBUTIONS)]


def mlserver_environment(model_dir: str, name: str, http_port: int = 8080, grpc_port: int = 8081,
                         metrics_port: int = 8082) -> dict[str, str]:
    """The environment KServe's MLServer runtime gives ``mlserver start <model_dir>`` for this
    model (``name``: the InferenceService's name, the one its V2 paths use)."""
    return {"MLSERVER_MODEL_NAME": name, "MLSERVER_MODEL_URI": model_dir, "MLSERVER_MODEL_IMPLEMENTATION":
            MLSERVER_IMPLEMENTATION, "MLSERVER_HTTP_PORT": str(http_port), "MLSERVER_GRPC_PORT": str(grpc_port),
            "MLSERVER_METRICS_PORT": str(metrics_port), "MLSERVER_LOAD_MODELS_AT_STARTUP": "true"}


def v2_request(frame) -> dict[str, Any]:
    """An Open Inference Protocol (V2) request for model-input rows (``pyfunc.as_model_input``:
    float64 features, ``sample_id`` as text): one input per column, decoded back into a
    DataFrame by MLServer (``content_type`` "pd"). JSON has no NaN: a missing value is refused
    here, naming the column, rather than sent as something else."""
    # Deferred (torch, MLflow): only the manifest's and the request's builders need it.
    from dfp_core.serving.scorer import ID_COLUMN

    inputs = []
    for column in frame.columns:
        values = frame[column]
        if column == ID_COLUMN:
            inputs.append({"name": column, "shape": [len(values), 1], "datatype": "BYTES",
                           "parameters": {"content_type": "str"}, "data": [str(v) for v in values]})
            continue
        if values.isna().any():
            raise ConfigError(f"column {column} has missing values, which a V2 JSON request cannot carry")
        inputs.append({"name": column, "shape": [len(values), 1], "datatype": "FP64",
                       "data": values.astype(float).tolist()})
    return {"inputs": inputs, "parameters": {"content_type": "pd"}}


def v2_outputs(response: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a V2 response (one output per column), as ``dfp serve`` answers them."""
    columns = {output["name"]: output["data"] for output in response["outputs"]}
    rows = len(next(iter(columns.values()))) if columns else 0
    return [{name: values[i] for name, values in columns.items()} for i in range(rows)]
